import RunContract

/// Ownership of one command partition, fenced by an epoch (Temporal's shard `range_id`).
/// Taking a partition bumps its epoch; a commit fenced with an older epoch is refused with
/// `leaseLost`, so a worker that lost the partition (paused, partitioned away) cannot write
/// over its successor.
public struct PartitionLease: Sendable, Hashable {
    public var partition: Int
    public var epoch: Int64

    public init(partition: Int, epoch: Int64) {
        self.partition = partition
        self.epoch = epoch
    }
}

/// One partition's lease as stored, for tests and tools (`RunStore.leases()`).
public struct LeaseState: Sendable, Hashable {
    public var partition: Int
    /// Nil once released.
    public var owner: String?
    public var epoch: Int64
    /// By the store's clock; a released lease is expired.
    public var expired: Bool

    public init(partition: Int, owner: String?, epoch: Int64, expired: Bool) {
        self.partition = partition
        self.owner = owner
        self.epoch = epoch
        self.expired = expired
    }
}

/// A lease's duration must be a positive, finite number of seconds.
package func checkTTL(_ ttl: Double) throws(StoreError) {
    guard ttl.isFinite, ttl > 0 else { throw StoreError(.rejected, "a lease or heartbeat needs a positive, finite ttl, not \(ttl)") }
}

/// The lease rules for stores that decide in Swift under their own write lock (in-memory and
/// SQLite); PostgreSQL states the same rules in SQL. Pure: the store's clock is passed in.
package struct LeaseRow: Sendable, Hashable {
    package var owner: String?
    package var epoch: Int64
    package var expiresAt: Timestamp

    package init(owner: String?, epoch: Int64, expiresAt: Timestamp) {
        self.owner = owner
        self.epoch = epoch
        self.expiresAt = expiresAt
    }

    /// Expired when the store's clock has reached `expiresAt`; a released row has no owner.
    package func isLive(at now: Timestamp) -> Bool { owner != nil && now < expiresAt }

    /// Whether `lease` is still held by `workerID` at `now`.
    package func holds(_ lease: PartitionLease, by workerID: String, at now: Timestamp) -> Bool {
        owner == workerID && epoch == lease.epoch && isLive(at: now)
    }

    /// `row` after `workerID` asks for it: nil when another worker holds it unexpired; the same
    /// epoch, extended, when `workerID` already holds it unexpired; otherwise the next epoch
    /// (1 for a partition never leased).
    package static func acquire(_ row: LeaseRow?, by workerID: String, at now: Timestamp, ttl: Double) -> LeaseRow? {
        let expiresAt = now.adding(seconds: ttl)
        guard let row else { return LeaseRow(owner: workerID, epoch: 1, expiresAt: expiresAt) }
        if row.isLive(at: now) {
            guard row.owner == workerID else { return nil }
            return LeaseRow(owner: workerID, epoch: row.epoch, expiresAt: expiresAt)
        }
        return LeaseRow(owner: workerID, epoch: row.epoch + 1, expiresAt: expiresAt)
    }

    /// Refuses a commit unless every lease of `fence` is held (`rows` has the stored rows of
    /// its partitions).
    package static func checkFence(_ fence: (workerID: String, leases: [PartitionLease])?, rows: [Int: LeaseRow], at now: Timestamp)
        throws(StoreError)
    {
        guard let fence else { return }
        for lease in fence.leases where rows[lease.partition]?.holds(lease, by: fence.workerID, at: now) != true {
            throw StoreError(
                .leaseLost, "\(fence.workerID) no longer holds partition \(lease.partition) at epoch \(lease.epoch)")
        }
    }
}
