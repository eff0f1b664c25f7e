import RunContract
import RunTestSupport
import RunWorkerTestKit
import Testing

/// The test kit's guarantee that blocking waits never run on the cooperative pool: the guard
/// tells pool threads from test threads, and `.ownThread` gives every test a thread of its own.
@Suite struct BlockingGuardTests {
    /// In a test process the guard is on, and an async test without `.ownThread` runs on a
    /// pool thread that may not block: a kit wait there would stop the process.
    @Test func poolThreadsMayNotBlock() async {
        #expect(BlockingGuard.enforced)
        #expect(!BlockingGuard.currentThreadMayBlock)
    }

    /// A blocking call from async code goes to a thread of its own, which may block.
    @Test func onOwnThreadMayBlock() async throws {
        let mayBlock = try await BlockingGuard.onOwnThread { BlockingGuard.currentThreadMayBlock }
        #expect(mayBlock)
    }
}

@Suite(.ownThread) struct OwnThreadTests {
    /// A synchronous test with `.ownThread` runs on its own thread, where blocking is allowed.
    @Test func syncTestsRunOnTheirOwnThread() {
        #expect(BlockingGuard.currentThreadMayBlock)
    }

    /// An async test stays on its own thread across suspension points and in child tasks.
    @Test func asyncTestsStayOnTheirOwnThread() async throws {
        #expect(BlockingGuard.currentThreadMayBlock)
        try await Task.sleep(for: .milliseconds(1))
        #expect(BlockingGuard.currentThreadMayBlock)
        async let child = BlockingGuard.currentThreadMayBlock
        #expect(await child)
        // A blocking wait of the kit is allowed here (it would stop the process on the pool).
        try waitUntil("at once", timeout: 1) { true }
    }
}

@Suite struct ManualClockTests {
    /// Sleepers wake when the clock is moved past their deadline, and not before.
    @Test func sleepersWakeWhenAdvancedPastTheirDeadline() async throws {
        let clock = ManualClock()
        let start = clock.now
        let sleeper = Task { try await clock.sleep(until: start.advanced(by: .seconds(10)), tolerance: nil) }
        try await eventually("the task sleeps", timeout: 10) { clock.sleepers == 1 }
        clock.advance(by: .seconds(9))
        #expect(clock.sleepers == 1)
        clock.advance(by: .seconds(1))
        try await sleeper.value
        #expect(clock.sleepers == 0)
        #expect(clock.read() == Timestamp(milliseconds: 1_000_000 + 10_000))
    }

    /// A sleep whose deadline has passed returns at once; a cancelled sleeper throws and leaves.
    @Test func pastDeadlinesAndCancellation() async throws {
        let clock = ManualClock(start: Timestamp(milliseconds: 5_000))
        try await clock.sleep(until: clock.now, tolerance: nil)
        let sleeper = Task { try await clock.sleep(until: clock.now.advanced(by: .seconds(1)), tolerance: nil) }
        try await eventually("the task sleeps", timeout: 10) { clock.sleepers == 1 }
        sleeper.cancel()
        await #expect(throws: CancellationError.self) { try await sleeper.value }
        #expect(clock.sleepers == 0)
        clock.set(Timestamp(milliseconds: 4_000))
        #expect(clock.read() == Timestamp(milliseconds: 5_000), "set never moves the clock back")
    }
}

@Suite struct SplitMixTests {
    /// The generator is a pure function of its seed (SplitMix64's published first output for 0).
    @Test func deterministic() {
        var a = SplitMix(seed: 0)
        var b = SplitMix(seed: 0)
        #expect(a.next() == 0xE220_A839_7B1D_CDAF)
        #expect(b.next() == 0xE220_A839_7B1D_CDAF)
        #expect(a.next() == b.next())
    }
}
