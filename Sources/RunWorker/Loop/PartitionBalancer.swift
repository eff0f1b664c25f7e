/// Which partitions this worker should hold: its fair share of the partitions, given how many
/// workers are alive. Pure: the driver observes the workers and performs the claims and
/// releases it returns.
///
/// Workers converge on a stable split: each releases its highest partitions when it holds
/// more than its share, and tries free ones starting at an offset of its own, so workers that
/// start together do not all race for partition 0.
struct PartitionBalancer: Sendable, Equatable {
    enum Plan: Sendable, Equatable {
        case keep
        /// Give these up (highest first), finishing what was applied first.
        case release([Int])
        /// Try these, in order, until `want` of them are claimed (a partition another worker
        /// holds is refused by the broker and skipped).
        case claim(candidates: [Int], want: Int)
    }

    let partitions: Int
    /// Where this worker starts looking for free partitions.
    let offset: Int
    private(set) var owned: Set<Int> = []

    init(partitions: Int, offset: Int) {
        precondition(partitions >= 1)
        self.partitions = partitions
        self.offset = ((offset % partitions) + partitions) % partitions
    }

    /// ⌈partitions / workers⌉: every partition has an owner even when the division is uneven.
    static func fairShare(partitions: Int, workers: Int) -> Int {
        let w = max(1, workers)
        return (partitions + w - 1) / w
    }

    func plan(liveWorkers: Int) -> Plan {
        let fair = Self.fairShare(partitions: partitions, workers: liveWorkers)
        if owned.count > fair {
            return .release(Array(owned.sorted(by: >).prefix(owned.count - fair)))
        }
        guard owned.count < fair else { return .keep }
        let candidates = (0..<partitions).map { (offset + $0) % partitions }.filter { !owned.contains($0) }
        return .claim(candidates: candidates, want: fair - owned.count)
    }

    mutating func claimed(_ partition: Int) { owned.insert(partition) }
    mutating func released(_ partition: Int) { owned.remove(partition) }
    /// The broker took it away (consumer cancelled, channel closed).
    mutating func lost(_ partition: Int) { owned.remove(partition) }
    /// The connection is gone: nothing is held any more.
    mutating func reset() { owned = [] }
}
