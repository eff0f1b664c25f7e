import Foundation
import RunContract
import Synchronization

/// A store in memory, for unit tests and for trying the worker without a disk (`memory:`).
/// It keeps `Run` values as they are (no encoding) behind one lock, with the same optimistic
/// checks as the durable stores: a commit that conflicts writes nothing. Leases and heartbeats
/// expire by `clock`, which tests move instead of sleeping.
public final class InMemoryRunStore: RunStore {
    struct StoredRun {
        var run: Run
        var nextDeadline: Timestamp?
        var partition: Int?
    }

    struct State {
        var runs: [String: StoredRun] = [:]
        var attempts: [String: (count: Int, error: String?)] = [:]
        var outcomes: [CommandKey: CommandOutcome] = [:]
        /// When each outcome was recorded (retention of the de-duplication window).
        var outcomeTimes: [CommandKey: Timestamp] = [:]
        /// Every outbox row, in id order; `published` holds the ids the broker confirmed.
        var outbox: [OutboxMessage] = []
        var published: Set<Int64> = []
        var nextOutboxID: Int64 = 1
        var leases: [Int: LeaseRow] = [:]
        /// Worker id → when its heartbeat expires.
        var workers: [String: Timestamp] = [:]
    }

    private let state = Mutex(State())
    /// The store's clock: what leases and heartbeats expire by.
    private let clock: @Sendable () -> Timestamp

    public init(clock: @escaping @Sendable () -> Timestamp = { Timestamp(seconds: Date().timeIntervalSince1970) }) {
        self.clock = clock
    }

    public func load(runIDs: Set<String>, commands: Set<CommandKey>) async throws -> StoreSnapshot {
        state.withLock { state in
            var snapshot = StoreSnapshot()
            for id in runIDs { snapshot.runs[id] = state.runs[id]?.run }
            for key in commands { snapshot.outcomes[key] = state.outcomes[key] }
            return snapshot
        }
    }

    public func commit(_ batch: StoreCommit) async throws -> [Int64] {
        guard !batch.isEmpty else { return [] }
        let now = clock()
        return try state.withLock { (state: inout State) throws(StoreError) -> [Int64] in
            // Check everything first, so that a conflict leaves the state untouched.
            try batch.checkOneWritePerRun()
            try LeaseRow.checkFence(batch.fence, rows: state.leases, at: now)
            for write in batch.runs {
                let current = state.runs[write.run.runID]?.run.version
                guard current == write.previousVersion else {
                    throw StoreError(
                        .versionConflict,
                        "run \(write.run.runID) is at version \(current.map(String.init) ?? "none"), "
                            + "expected \(write.previousVersion.map(String.init) ?? "none")")
                }
            }
            var recorded = Set<CommandKey>()
            for (key, _) in batch.outcomes {
                guard state.outcomes[key] == nil, recorded.insert(key).inserted else {
                    throw StoreError(.versionConflict, "command \(key.commandID) of run \(key.runID) was recorded meanwhile")
                }
            }
            for write in batch.runs {
                let partition = write.partition ?? state.runs[write.run.runID]?.partition
                state.runs[write.run.runID] = StoredRun(
                    run: write.run, nextDeadline: write.run.status.isTerminal ? nil : write.nextDeadline,
                    partition: partition)
            }
            for (key, outcome) in batch.outcomes {
                state.outcomes[key] = outcome
                state.outcomeTimes[key] = now
            }
            Self.remove(batch.removeOutbox, from: &state)
            return batch.outbox.map { message in
                var m = message
                m.id = state.nextOutboxID
                state.nextOutboxID += 1
                state.outbox.append(m)
                return m.id
            }
        }
    }

    public func pendingOutbox(runIDs: Set<String>) async throws -> [OutboxMessage] {
        state.withLock { state in state.outbox.filter { runIDs.contains($0.runID) && !state.published.contains($0.id) } }
    }

    public func pendingOutbox(writtenBefore: Timestamp, partitions: [Int]?, limit: Int) async throws -> [OutboxMessage] {
        state.withLock { state in
            Array(state.outbox.filter { row in
                guard row.writtenAt <= writtenBefore, !state.published.contains(row.id) else { return false }
                guard let partitions else { return true }
                return state.runs[row.runID]?.partition.map(partitions.contains) ?? false
            }.prefix(limit))
        }
    }

    public func removeOutbox(ids: [Int64]) async throws {
        state.withLock { Self.remove(ids, from: &$0) }
    }

    private static func remove(_ ids: [Int64], from state: inout State) {
        state.published.formUnion(ids)
    }

    public func runsDue(at time: Timestamp, partitions: [Int]?, limit: Int) async throws -> [String] {
        state.withLock { state in
            state.runs.compactMap { id, entry -> (String, Timestamp)? in
                guard let d = entry.nextDeadline, d <= time else { return nil }
                // A run never given a partition belongs to none (SQL: NULL IN (...) is not true).
                if let partitions, !(entry.partition.map(partitions.contains) ?? false) { return nil }
                return (id, d)
            }
            .sorted { ($0.1, $0.0) < ($1.1, $1.0) }.prefix(limit).map(\.0)
        }
    }

    public func recordDeliveryAttempt(key: String, error: String?, increment: Bool, at time: Timestamp) async throws -> Int {
        state.withLock { state in
            let previous = state.attempts[key]
            let next = (previous.map { $0.count + (increment ? 1 : 0) } ?? 1, error ?? previous?.error)
            state.attempts[key] = next
            return next.0
        }
    }

    public func lastDeliveryError(key: String) async throws -> String? {
        state.withLock { $0.attempts[key]?.error }
    }

    public func run(_ runID: String) async throws -> Run? {
        state.withLock { $0.runs[runID]?.run }
    }

    public func runs(status: RunStatus?, agentID: String?, limit: Int) async throws -> [Run] {
        state.withLock { state in
            state.runs.values.map(\.run)
                .filter { (status == nil || $0.status == status) && (agentID == nil || $0.agentID == agentID) }
                .sorted { ($0.updatedAt, $1.runID) > ($1.updatedAt, $0.runID) }
                .prefix(limit).map { $0 }
        }
    }

    public func listRuns(_ query: RunQuery) async throws -> RunPage {
        state.withLock { state in
            let rows = state.runs.values.map(\.run)
                .filter { run in query.matches(run) && (query.after.map { RunCursor(run) < $0 } ?? true) }
                .sorted { RunCursor($0) > RunCursor($1) }
                .prefix(query.limit + 1)
            return RunPage(rows: Array(rows), limit: query.limit)
        }
    }

    public func history(runID: String, afterSeq: Int64, limit: Int) async throws -> [OutboxMessage] {
        state.withLock { state in
            Array(state.outbox.filter { $0.runID == runID && $0.seq > afterSeq }.prefix(limit))
        }
    }

    public func runCounts() async throws -> [RunStatus: Int] {
        state.withLock { state in
            state.runs.values.reduce(into: [:]) { counts, entry in counts[entry.run.status, default: 0] += 1 }
        }
    }

    public func outboxDepth() async throws -> Int {
        state.withLock { state in state.outbox.count { !state.published.contains($0.id) } }
    }

    public func prune(finishedBefore: Timestamp, commandsBefore: Timestamp, limit: Int, commandLimit: Int) async throws -> PruneResult {
        state.withLock { state in
            var result = PruneResult()
            let unconfirmed = Set(state.outbox.filter { !state.published.contains($0.id) }.map(\.runID))
            let finished = state.runs.values
                .filter { $0.run.status.isTerminal && $0.run.updatedAt < finishedBefore && !unconfirmed.contains($0.run.runID) }
                .sorted { $0.run.updatedAt < $1.run.updatedAt }.prefix(limit).map(\.run.runID)
            let gone = Set(finished)
            for id in finished { state.runs[id] = nil }
            result.runs = finished.count
            let before = state.outbox.count
            state.outbox.removeAll { row in
                guard gone.contains(row.runID) else { return false }
                state.published.remove(row.id)
                return true
            }
            result.events = before - state.outbox.count
            let expired = state.outcomeTimes.filter { $0.value < commandsBefore }.sorted { $0.value < $1.value }.prefix(commandLimit).map(\.key)
            result.commands = expired.count
            for key in expired {
                state.outcomes[key] = nil
                state.outcomeTimes[key] = nil
            }
            return result
        }
    }

    // MARK: - Membership and leases

    public func heartbeat(workerID: String, ttl: Double) async throws -> [String] {
        try checkTTL(ttl)
        let now = clock()
        return state.withLock { state in
            state.workers[workerID] = now.adding(seconds: ttl)
            return state.workers.filter { now < $0.value }.keys.sorted()
        }
    }

    public func leave(workerID: String) async throws {
        _ = state.withLock { $0.workers.removeValue(forKey: workerID) }
    }

    public func acquireLease(partition: Int, workerID: String, ttl: Double) async throws -> PartitionLease? {
        try checkTTL(ttl)
        let now = clock()
        return state.withLock { state in
            guard let row = LeaseRow.acquire(state.leases[partition], by: workerID, at: now, ttl: ttl) else { return nil }
            state.leases[partition] = row
            return PartitionLease(partition: partition, epoch: row.epoch)
        }
    }

    public func renewLeases(_ leases: [PartitionLease], workerID: String, ttl: Double) async throws -> [PartitionLease] {
        try checkTTL(ttl)
        let now = clock()
        return state.withLock { state in
            leases.filter { lease in
                guard state.leases[lease.partition]?.holds(lease, by: workerID, at: now) == true else { return false }
                state.leases[lease.partition]?.expiresAt = now.adding(seconds: ttl)
                return true
            }
        }
    }

    public func releaseLease(_ lease: PartitionLease, workerID: String) async throws {
        let now = clock()
        state.withLock { state in
            guard let row = state.leases[lease.partition], row.owner == workerID, row.epoch == lease.epoch else { return }
            state.leases[lease.partition] = LeaseRow(owner: nil, epoch: row.epoch, expiresAt: now)
        }
    }

    public func leases() async throws -> [LeaseState] {
        let now = clock()
        return state.withLock { state in
            state.leases.sorted { $0.key < $1.key }.map { partition, row in
                LeaseState(partition: partition, owner: row.owner, epoch: row.epoch, expired: !row.isLive(at: now))
            }
        }
    }
}
