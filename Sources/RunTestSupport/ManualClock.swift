import RunContract
import Synchronization

/// A clock that moves only when a test moves it, in the style of postgres-nio's pool tests:
/// a `Clock` (so code generic over clocks takes it) whose sleepers wake when `advance` passes
/// their deadline, and a `Timestamp` reader for the code that takes `() -> Timestamp`.
public final class ManualClock: Clock, Sendable {
    public struct Instant: InstantProtocol, Sendable {
        /// The time since the epoch (`Timestamp` counts it in milliseconds).
        public var offset: Duration
        public init(_ offset: Duration) { self.offset = offset }
        public func advanced(by duration: Duration) -> Instant { Instant(offset + duration) }
        public func duration(to other: Instant) -> Duration { other.offset - offset }
        public static func < (a: Instant, b: Instant) -> Bool { a.offset < b.offset }
    }

    private struct Sleeper {
        var deadline: Instant
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now: Instant
        var sleepers: [Int: Sleeper] = [:]
        var nextID = 0
    }

    private let state: Mutex<State>

    /// Starts at `start` (default: 1 000 000 ms after the epoch).
    public init(start: Timestamp = Timestamp(milliseconds: 1_000_000)) {
        state = Mutex(State(now: Instant(.milliseconds(start.milliseconds))))
    }

    public var now: Instant { state.withLock { $0.now } }
    public var minimumResolution: Duration { .milliseconds(1) }

    /// The time now, as the store and the state machine read it.
    public func read() -> Timestamp {
        let offset = now.offset.components
        return Timestamp(milliseconds: offset.seconds * 1000 + offset.attoseconds / 1_000_000_000_000_000)
    }

    /// Moves the clock on by `duration` in one step and wakes the sleepers whose deadline has
    /// come (a sleeper that would sleep again each period wakes once per `advance`).
    public func advance(by duration: Duration) {
        let due: [Sleeper] = state.withLock { s in
            s.now = s.now.advanced(by: duration)
            let due = s.sleepers.filter { $0.value.deadline <= s.now }
            for id in due.keys { s.sleepers[id] = nil }
            return Array(due.values)
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    public func advance(seconds: Double) { advance(by: .milliseconds(Int64((seconds * 1000).rounded()))) }

    /// Moves the clock to `time` unless it is already past it (one step under the lock).
    public func set(_ time: Timestamp) {
        let target = Instant(.milliseconds(time.milliseconds))
        let due: [Sleeper] = state.withLock { s in
            guard s.now < target else { return [] }
            s.now = target
            let due = s.sleepers.filter { $0.value.deadline <= s.now }
            for id in due.keys { s.sleepers[id] = nil }
            return Array(due.values)
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    /// How many tasks sleep on this clock now.
    public var sleepers: Int { state.withLock { $0.sleepers.count } }

    public func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        let id = state.withLock { s in
            defer { s.nextID += 1 }
            return s.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resumeNow: Bool = state.withLock { s in
                    if deadline <= s.now || Task.isCancelled { return true }
                    s.sleepers[id] = Sleeper(deadline: deadline, continuation: continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let sleeper = state.withLock { $0.sleepers.removeValue(forKey: id) }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
        try Task.checkCancellation()
    }
}
