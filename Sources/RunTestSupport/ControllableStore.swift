import RunContract
import RunStore
import Synchronization

/// The in-memory store, which a test can take down (every call throws `unavailable`, a
/// database that refuses connections) or stall (run reads hang, deaf to cancellation, a
/// database that stopped answering mid-read), and which counts run reads.
public final class ControllableStore: RunStore {
    public let base = InMemoryRunStore()
    private let down = Atomic<Bool>(false)
    private let runReads = Atomic<Int>(0)

    public init() {}

    /// Run reads (`run(_:)`) so far.
    public var reads: Int { runReads.load(ordering: .acquiring) }

    /// From now on every call throws `StoreError.unavailable`.
    public func fail() { down.store(true, ordering: .releasing) }

    /// From now on `run(_:)` hangs, deaf to cancellation (a database that stopped answering
    /// mid-read), until `release()`.
    public func stall() { stalled.withLock { $0 = [] } }

    /// Ends the stall: the hung reads go on.
    public func release() {
        let waiting = stalled.withLock { s -> [CheckedContinuation<Void, Never>] in
            defer { s = nil }
            return s ?? []
        }
        for c in waiting { c.resume() }
    }

    private let stalled = Mutex<[CheckedContinuation<Void, Never>]?>(nil)

    private func hangWhileStalled() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let parked = stalled.withLock { s -> Bool in
                guard s != nil else { return false }
                s!.append(c)
                return true
            }
            if !parked { c.resume() }
        }
    }

    private func check() throws {
        if down.load(ordering: .acquiring) { throw StoreError(.unavailable, "connection refused") }
    }

    public func load(runIDs: Set<String>, commands: Set<CommandKey>) async throws -> StoreSnapshot {
        try check()
        return try await base.load(runIDs: runIDs, commands: commands)
    }
    public func commit(_ batch: StoreCommit) async throws -> [Int64] {
        try check()
        return try await base.commit(batch)
    }
    public func pendingOutbox(runIDs: Set<String>) async throws -> [OutboxMessage] {
        try check()
        return try await base.pendingOutbox(runIDs: runIDs)
    }
    public func pendingOutbox(writtenBefore: Timestamp, partitions: [Int]?, limit: Int) async throws -> [OutboxMessage] {
        try check()
        return try await base.pendingOutbox(writtenBefore: writtenBefore, partitions: partitions, limit: limit)
    }
    public func removeOutbox(ids: [Int64]) async throws {
        try check()
        try await base.removeOutbox(ids: ids)
    }
    public func runsDue(at time: Timestamp, partitions: [Int]?, limit: Int) async throws -> [String] {
        try check()
        return try await base.runsDue(at: time, partitions: partitions, limit: limit)
    }
    public func recordDeliveryAttempt(key: String, error: String?, increment: Bool, at time: Timestamp) async throws -> Int {
        try check()
        return try await base.recordDeliveryAttempt(key: key, error: error, increment: increment, at: time)
    }
    public func lastDeliveryError(key: String) async throws -> String? {
        try check()
        return try await base.lastDeliveryError(key: key)
    }
    public func run(_ runID: String) async throws -> Run? {
        runReads.add(1, ordering: .acquiringAndReleasing)
        await hangWhileStalled()
        try check()
        return try await base.run(runID)
    }
    public func runs(status: RunStatus?, agentID: String?, limit: Int) async throws -> [Run] {
        try check()
        return try await base.runs(status: status, agentID: agentID, limit: limit)
    }
    public func listRuns(_ query: RunQuery) async throws -> RunPage {
        try check()
        return try await base.listRuns(query)
    }
    public func history(runID: String, afterSeq: Int64, limit: Int) async throws -> [OutboxMessage] {
        try check()
        return try await base.history(runID: runID, afterSeq: afterSeq, limit: limit)
    }
    public func runCounts() async throws -> [RunStatus: Int] {
        try check()
        return try await base.runCounts()
    }
    public func outboxDepth() async throws -> Int {
        try check()
        return try await base.outboxDepth()
    }
    public func heartbeat(workerID: String, ttl: Double) async throws -> [String] {
        try check()
        return try await base.heartbeat(workerID: workerID, ttl: ttl)
    }
    public func leave(workerID: String) async throws {
        try check()
        try await base.leave(workerID: workerID)
    }
    public func acquireLease(partition: Int, workerID: String, ttl: Double) async throws -> PartitionLease? {
        try check()
        return try await base.acquireLease(partition: partition, workerID: workerID, ttl: ttl)
    }
    public func renewLeases(_ leases: [PartitionLease], workerID: String, ttl: Double) async throws -> [PartitionLease] {
        try check()
        return try await base.renewLeases(leases, workerID: workerID, ttl: ttl)
    }
    public func releaseLease(_ lease: PartitionLease, workerID: String) async throws {
        try check()
        try await base.releaseLease(lease, workerID: workerID)
    }
    public func leases() async throws -> [LeaseState] {
        try check()
        return try await base.leases()
    }
    public func prune(finishedBefore: Timestamp, commandsBefore: Timestamp, limit: Int, commandLimit: Int) async throws -> PruneResult {
        try check()
        return try await base.prune(
            finishedBefore: finishedBefore, commandsBefore: commandsBefore, limit: limit, commandLimit: commandLimit)
    }
}
