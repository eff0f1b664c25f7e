import RunContract
import RunStateMachine
import RunStore
import Synchronization
import Testing

@testable import RunApply
@testable import RunWorker

/// A store that lets another writer act between a batch's load and its commit, as a second
/// worker (or a stale one) could.
final class InterferingStore: RunStore {
    let inner = InMemoryRunStore()
    /// Run once, before the next commit, then cleared.
    let interference = Mutex<(@Sendable (InMemoryRunStore) async throws -> Void)?>(nil)
    let commits = Atomic<Int>(0)
    /// Every run id a load asked for, in order.
    let loaded = Mutex<[String]>([])

    func commit(_ batch: StoreCommit) async throws -> [Int64] {
        if let act = interference.withLock({ f in defer { f = nil }; return f }) { try await act(inner) }
        commits.add(1, ordering: .relaxed)
        return try await inner.commit(batch)
    }

    func load(runIDs: Set<String>, commands: Set<CommandKey>) async throws -> StoreSnapshot {
        loaded.withLock { $0 += runIDs.sorted() }
        return try await inner.load(runIDs: runIDs, commands: commands)
    }
    func pendingOutbox(runIDs: Set<String>) async throws -> [OutboxMessage] { try await inner.pendingOutbox(runIDs: runIDs) }
    func pendingOutbox(writtenBefore: Timestamp, partitions: [Int]?, limit: Int) async throws -> [OutboxMessage] {
        try await inner.pendingOutbox(writtenBefore: writtenBefore, partitions: partitions, limit: limit)
    }
    func removeOutbox(ids: [Int64]) async throws { try await inner.removeOutbox(ids: ids) }
    func runsDue(at time: Timestamp, partitions: [Int]?, limit: Int) async throws -> [String] {
        try await inner.runsDue(at: time, partitions: partitions, limit: limit)
    }
    func recordDeliveryAttempt(key: String, error: String?, increment: Bool, at time: Timestamp) async throws -> Int {
        try await inner.recordDeliveryAttempt(key: key, error: error, increment: increment, at: time)
    }
    func lastDeliveryError(key: String) async throws -> String? { try await inner.lastDeliveryError(key: key) }
    func run(_ runID: String) async throws -> Run? { try await inner.run(runID) }
    func runs(status: RunStatus?, agentID: String?, limit: Int) async throws -> [Run] {
        try await inner.runs(status: status, agentID: agentID, limit: limit)
    }
    func listRuns(_ query: RunQuery) async throws -> RunPage { try await inner.listRuns(query) }
    func history(runID: String, afterSeq: Int64, limit: Int) async throws -> [OutboxMessage] {
        try await inner.history(runID: runID, afterSeq: afterSeq, limit: limit)
    }
    func runCounts() async throws -> [RunStatus: Int] { try await inner.runCounts() }
    func outboxDepth() async throws -> Int { try await inner.outboxDepth() }
    func prune(finishedBefore: Timestamp, commandsBefore: Timestamp, limit: Int, commandLimit: Int) async throws -> PruneResult {
        try await inner.prune(finishedBefore: finishedBefore, commandsBefore: commandsBefore, limit: limit, commandLimit: commandLimit)
    }
}

@Suite struct BatchApplierTests {
    /// A run changed by another writer between load and commit is not overwritten: the commit
    /// conflicts, and the batch is decided again against what the other writer stored.
    @Test func conflictIsDecidedAgain() async throws {
        let store = InterferingStore()
        let applier = processor(store)
        _ = try await applier.process([inbound(["command": "start", "run_id": "r1"], id: "c1")])
        store.interference.withLock { f in
            f = { inner in
                _ = try await processor(inner).process([inbound(["command": "cancel", "run_id": "r1"], id: "other")])
            }
        }
        let batch = try await applier.process([inbound(["command": "complete", "run_id": "r1"], id: "c2")])
        #expect(batch.results.first?.refusal?.code == .invalidTransition)
        let run = try await store.run("r1")
        #expect(run?.status == .cancelled && run?.version == 3)
        #expect(batch.messages.allSatisfy { $0.outboxID == nil }, "a refused command appends no event")
    }

    /// The same command applied meanwhile by another writer is answered as a duplicate, not
    /// applied twice.
    @Test func commandAppliedMeanwhileIsADuplicate() async throws {
        let store = InterferingStore()
        let applier = processor(store)
        _ = try await applier.process([inbound(["command": "start", "run_id": "r1"], id: "c1")])
        let command = inbound(["command": "complete", "run_id": "r1"], id: "c2")
        store.interference.withLock { f in f = { inner in _ = try await processor(inner).process([command]) } }
        let batch = try await applier.process([command])
        guard case .duplicate(let first)? = batch.results.first?.kind else {
            Issue.record("expected a duplicate, got \(batch.results)")
            return
        }
        #expect(first.ok)
        #expect(try await store.run("r1")?.version == 3)
    }

    /// A conflict that persists is handed to the caller after a bounded number of tries, with
    /// nothing written.
    @Test func persistentConflictGivesUp() async throws {
        let store = InterferingStore()
        var applier = processor(store)
        applier.conflictAttempts = 2
        _ = try await applier.process([inbound(["command": "start", "run_id": "r1"], id: "c1")])
        let before = store.commits.load(ordering: .relaxed)
        // Every commit of this batch meets a run another writer moved on.
        @Sendable func interfere(_ n: Int) -> (@Sendable (InMemoryRunStore) async throws -> Void) {
            { inner in
                _ = try await processor(inner).process([
                    inbound(["command": "require_action", "run_id": "r1",
                             "action": ["type": "system_action", "action": "wait"]], id: "other-\(n)")])
                if n < 3 { store.interference.withLock { $0 = interfere(n + 1) } }
            }
        }
        store.interference.withLock { $0 = interfere(1) }
        await #expect(throws: StoreError.self) {
            _ = try await applier.process([inbound(["command": "cancel", "run_id": "r1"], id: "c2")])
        }
        #expect(store.commits.load(ordering: .relaxed) == before + 2)
        #expect(try await store.run("r1")?.status == .waiting)
    }
}
