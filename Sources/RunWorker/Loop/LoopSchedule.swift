/// The loop's periodic chores and when each is next due. Time is a monotonic reading in
/// seconds passed in by the driver (tests move it by hand); nothing here reads a clock.
struct LoopSchedule: Sendable, Equatable {
    enum Chore: Int, Sendable, CaseIterable, Comparable {
        /// Prove the broker connection alive, then heartbeat this worker and renew its
        /// partition leases in the store (first, so that a rebalance counts fresh members).
        case renewLeases
        /// Claim or release partitions for this worker's fair share.
        case rebalance
        /// Publish outbox rows a dead worker left behind.
        case outboxSweep
        /// Fire elapsed deadlines of the runs in owned partitions.
        case timerSweep
        /// Rewrite the status file.
        case status

        static func < (a: Chore, b: Chore) -> Bool { a.rawValue < b.rawValue }
    }

    private(set) var intervals: [Chore: Double]
    private var next: [Chore: Double] = [:]

    /// Every chore is due at once on the first call.
    init(renewLeases: Double, rebalance: Double, outboxSweep: Double, timerSweep: Double, status: Double) {
        intervals = [
            .renewLeases: renewLeases, .rebalance: rebalance, .outboxSweep: outboxSweep, .timerSweep: timerSweep, .status: status,
        ]
    }

    /// The chores due at `now`, in a fixed order; each is scheduled again one interval later.
    mutating func due(at now: Double) -> [Chore] {
        var out: [Chore] = []
        for chore in Chore.allCases where now >= next[chore, default: -.infinity] {
            out.append(chore)
            next[chore] = now + intervals[chore]!
        }
        return out
    }

    /// Run this chore at the next step (e.g. the timer sweep found a full page).
    mutating func soon(_ chore: Chore) { next[chore] = -.infinity }

    /// Seconds until the earliest chore is due (0 if one is due), at most `limit`.
    func wait(at now: Double, limit: Double) -> Double {
        let earliest = Chore.allCases.map { next[$0, default: -.infinity] }.min() ?? now
        return max(0, min(limit, earliest - now))
    }
}

/// Delays between reconnect attempts: doubling from `initial` up to `max`, and back to
/// `initial` after a session that was up (so one outage does not slow the next recovery).
struct ReconnectBackoff: Sendable, Equatable {
    let initial: Double
    let max: Double
    private(set) var current: Double

    init(initial: Double = 0.2, max: Double = 10) {
        self.initial = initial
        self.max = max
        current = initial
    }

    /// The delay before the next attempt; `sessionWasUp` tells whether the session that just
    /// ended had connected.
    mutating func next(sessionWasUp: Bool) -> Double {
        if sessionWasUp { current = initial }
        defer { current = Swift.min(current * 2, max) }
        return current
    }
}
