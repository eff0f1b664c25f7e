/// Per run, the highest `seq` seen: tells a new event from a repeat and notices gaps.
///
/// The contract numbers a run's events 1, 2, 3, ... with no holes, and publishes them at least
/// once: a repeat (a worker that published again after a crash, a redelivery) has a `seq` already
/// seen and is dropped; a `seq` past the next one means events were missed (a reconnect, a
/// subscription made after the run began). Pure and value-typed, so it is tested without a broker.
///
/// Memory is bounded: past `maxRuns` runs the least recently seen is forgotten (its next event is
/// then taken as it comes, as for a run seen for the first time).
public struct SequenceTracker: Sendable, Hashable {
    public enum Verdict: Sendable, Hashable {
        /// The next event of the run (or the first one seen of a run not known before).
        case next
        /// Already seen (`seq` at or below the last one): drop it.
        case duplicate
        /// Events `expected ..< got` were not seen; this one (`got`) is new.
        case gap(expected: Int64)
    }

    public let maxRuns: Int
    private var last: [String: Int64] = [:]
    /// Run ids, least recently touched first (lazily compacted).
    private var order: [String] = []
    private var touched: [String: Int] = [:]
    private var tick = 0

    public init(maxRuns: Int = 10_000) {
        precondition(maxRuns > 0)
        self.maxRuns = maxRuns
    }

    /// The highest `seq` seen (or set with `expect`) for `runID`.
    public func lastSeq(of runID: String) -> Int64? { last[runID] }

    /// The runs tracked now, least recently seen first.
    public var runIDs: [String] { order.filter { touched[$0] != nil }.uniqued() }

    /// Declares that everything up to `seq` of `runID` is already known (0: the run is new, so its
    /// first event must be seq 1 or a gap is reported).
    public mutating func expect(runID: String, after seq: Int64) {
        set(runID, max(seq, last[runID] ?? seq))
    }

    /// Judges the event `seq` of `runID` and remembers it when new.
    public mutating func observe(runID: String, seq: Int64) -> Verdict {
        guard let previous = last[runID] else {
            set(runID, seq)
            return .next
        }
        if seq <= previous { return .duplicate }
        set(runID, seq)
        return seq == previous + 1 ? .next : .gap(expected: previous + 1)
    }

    /// Forgets a run (say, once it reached a terminal status and nothing more will come).
    public mutating func forget(runID: String) {
        last[runID] = nil
        touched[runID] = nil
    }

    private mutating func set(_ runID: String, _ seq: Int64) {
        if last[runID] == nil, last.count >= maxRuns { evictOldest() }
        last[runID] = seq
        tick += 1
        touched[runID] = tick
        order.append(runID)
        if order.count > 4 * maxRuns + 64 { compact() }
    }

    private mutating func evictOldest() {
        compact()
        guard let oldest = order.first else { return }
        order.removeFirst()
        last[oldest] = nil
        touched[oldest] = nil
    }

    /// Keeps, for each tracked run, only its latest entry in `order`.
    private mutating func compact() {
        var seen = Set<String>()
        var kept: [String] = []
        for id in order.reversed() where touched[id] != nil && !seen.contains(id) {
            seen.insert(id)
            kept.append(id)
        }
        order = kept.reversed()
    }
}

extension Array where Element == String {
    fileprivate func uniqued() -> [String] {
        var seen = Set<String>()
        var out: [String] = []
        for id in reversed() where !seen.contains(id) {
            seen.insert(id)
            out.append(id)
        }
        return out.reversed()
    }
}
