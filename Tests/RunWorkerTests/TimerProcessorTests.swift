import RunContract
import RunStateMachine
import RunStore
import Synchronization
import RunTestSupport
import Testing

@testable import RunApply
@testable import RunWorker

func timedProcessor(_ store: any RunStore, _ clock: ManualClock) -> BatchApplier {
    BatchApplier(store: store, processor: CommandProcessor(machine: RunStateMachine()), clock: { clock.read() })
}

@Suite struct TimerProcessorTests {
    /// The sweep fires a run's timeout once it is due, and only then; firing again is a no-op.
    @Test func sweepFiresOnceWhenDue() async throws {
        let store = InMemoryRunStore()
        let clock = ManualClock()
        let p = timedProcessor(store, clock)
        _ = try await p.process([inbound(["command": "start", "run_id": "r1", "config": ["timeout_s": 2]], id: "c1")])
        clock.advance(seconds: 1.999)
        #expect(try await store.runsDue(at: clock.read(), partitions: nil, limit: 10).isEmpty)
        clock.advance(seconds: 0.001)
        let due = try await store.runsDue(at: clock.read(), partitions: nil, limit: 10)
        #expect(due == ["r1"])
        let fired = try await p.fireTimers(runIDs: due)
        #expect(try events(fired).map(\.type) == [.timedOut])
        #expect(try events(fired).first?.stopReason == .timeout)
        #expect(try await store.run("r1")?.status == .failed)
        #expect(try await p.fireTimers(runIDs: due).messages.isEmpty)
        #expect(try await store.runsDue(at: clock.read(), partitions: nil, limit: 10).isEmpty)
    }

    /// A deadline that elapsed before a command arrives fires first: `complete` after the
    /// timeout finds the run failed and is refused.
    @Test func dueDeadlineFiresBeforeCommand() async throws {
        let store = InMemoryRunStore()
        let clock = ManualClock()
        let p = timedProcessor(store, clock)
        _ = try await p.process([inbound(["command": "start", "run_id": "r1", "config": ["timeout_s": 1]], id: "c1")])
        clock.advance(seconds: 1.5)
        let batch = try await p.process([inbound(["command": "complete", "run_id": "r1"], id: "c2")])
        #expect(try events(batch).map(\.type) == [.timedOut])
        #expect(try replies(batch).first?.error?.code == .invalidTransition)
        #expect(try await store.run("r1")?.stopReason == .timeout)
    }

    /// A timer for a run that completed in time is no longer due: nothing fires.
    @Test func lateTimerAfterCompletionIsNoOp() async throws {
        let store = InMemoryRunStore()
        let clock = ManualClock()
        let p = timedProcessor(store, clock)
        _ = try await p.process([
            inbound(["command": "start", "run_id": "r1", "config": ["timeout_s": 1]], id: "c1"),
            inbound(["command": "complete", "run_id": "r1"], id: "c2"),
        ])
        clock.advance(seconds: 5)
        #expect(try await store.runsDue(at: clock.read(), partitions: nil, limit: 10).isEmpty)
        #expect(try await p.fireTimers(runIDs: ["r1"]).messages.isEmpty)
        #expect(try await store.run("r1")?.status == .completed)
    }

    /// Retry delays are timers too: a retryable failure starts attempt 2 when the delay is over.
    @Test func retryDelayFiresNextAttempt() async throws {
        let store = InMemoryRunStore()
        let clock = ManualClock()
        let p = timedProcessor(store, clock)
        _ = try await p.process([
            inbound(["command": "start", "run_id": "r1", "config": ["retry": ["max_attempts": 2, "delay_s": 1]]], id: "c1"),
            inbound(["command": "fail", "run_id": "r1", "error": ["message": "flaky"], "retryable": true], id: "c2"),
        ])
        #expect(try await store.run("r1")?.status == .retrying)
        clock.advance(seconds: 1)
        let fired = try await p.fireTimers(runIDs: try await store.runsDue(at: clock.read(), partitions: nil, limit: 10))
        #expect(try events(fired).map(\.type) == [.started])
        #expect(try events(fired).first?.attempt == 2)
        let done = try await p.process([inbound(["command": "complete", "run_id": "r1"], id: "c3")])
        #expect(try replies(done).first?.run?.status == .completed)
    }
}
