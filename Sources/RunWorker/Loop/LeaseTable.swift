import RunStore

/// The partition leases a worker holds and until when it may act on them. Pure: the driver
/// passes in monotonic times (the start of each store call) and performs the calls.
///
/// The store expires a lease `ttl` seconds after the store call that took or renewed it, by the
/// store's clock. The worker trusts a lease only for half of that, counted from when it *sent*
/// the call (so the call's own delay is on the safe side): past it, it must hear from the store
/// again before it writes or publishes anything for its partitions, and if it cannot, it gives
/// them up, so that nobody waits on a worker that cannot prove its ownership.
struct LeaseTable: Sendable, Equatable {
    let ttl: Double
    private var leases: [Int: PartitionLease] = [:]
    /// Until when (monotonic seconds) every held lease is surely live.
    private(set) var validUntil = -Double.infinity

    init(ttl: Double) {
        precondition(ttl > 0)
        self.ttl = ttl
    }

    var isEmpty: Bool { leases.isEmpty }
    /// The lease held on `partition`, if any.
    func lease(for partition: Int) -> PartitionLease? { leases[partition] }
    var partitions: Set<Int> { Set(leases.keys) }
    var all: [PartitionLease] { leases.values.sorted { $0.partition < $1.partition } }

    /// Within the safe half of the leases (true when none are held: nothing to protect).
    func isValid(at now: Double) -> Bool { leases.isEmpty || now < validUntil }

    /// A lease taken by a call sent at `sentAt`. It shortens nothing: the table stays valid
    /// until the earliest of its leases' safe halves.
    mutating func acquired(_ lease: PartitionLease, sentAt: Double) {
        if leases.isEmpty { validUntil = sentAt + ttl / 2 }
        leases[lease.partition] = lease
    }

    /// The store renewed `kept` of `held` in a call sent at `sentAt`; returns the partitions
    /// whose lease is gone (they are forgotten). Leases taken or dropped while the call ran
    /// are left as they are.
    mutating func renewed(held: [PartitionLease], kept: [PartitionLease], sentAt: Double) -> Set<Int> {
        let keptPartitions = Set(kept.map(\.partition))
        var lost: Set<Int> = []
        for lease in held where !keptPartitions.contains(lease.partition) {
            if leases[lease.partition] == lease {
                leases[lease.partition] = nil
                lost.insert(lease.partition)
            }
        }
        validUntil = sentAt + ttl / 2
        return lost
    }

    /// Forgets `partitions` (released, or lost); returns the leases that were held.
    @discardableResult
    mutating func remove(_ partitions: some Sequence<Int>) -> [PartitionLease] {
        partitions.compactMap { leases.removeValue(forKey: $0) }
    }

    /// Forgets every lease (the worker gives its partitions up); returns how many there were.
    @discardableResult
    mutating func removeAll() -> Int {
        defer { leases = [:] }
        return leases.count
    }

    /// The leases of partitions that are no longer consumed (to give back to the store).
    func unused(consumed: Set<Int>) -> [PartitionLease] {
        all.filter { !consumed.contains($0.partition) }
    }
}
