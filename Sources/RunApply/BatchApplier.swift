import Dispatch
import RunContract
import RunStateMachine
import RunStore

/// The one apply path: prepare, load, decide, commit. Commands and fired timers both go
/// through it. It publishes nothing; the caller publishes `messages` with confirms and only
/// then acknowledges the deliveries.
///
/// The store's concurrency contract is optimistic: a commit that finds a run (or a command id)
/// changed since the load writes nothing and throws `versionConflict`; the batch is then
/// loaded and decided again, so a second writer can delay a batch but never corrupt it.
public struct BatchApplier: Sendable {
    public var store: any RunStore
    public var processor: CommandProcessor
    public var clock: @Sendable () -> Timestamp
    /// Loads and decisions per batch before a persisting conflict is handed to the caller.
    public var conflictAttempts = 3
    /// Runs this applier wrote, used instead of loading them when the batch is fenced by the
    /// lease they were written under (see `RunCache`); nil loads every run.
    public var cache: RunCache?

    public init(store: any RunStore, processor: CommandProcessor, clock: @escaping @Sendable () -> Timestamp) {
        self.store = store
        self.processor = processor
        self.clock = clock
    }

    /// Applies `items` in one commit.
    /// - Parameters:
    ///   - published: outbox rows published and awaiting confirms (not to be republished).
    ///   - removeOutbox: confirmed rows of earlier batches, deleted in this commit.
    ///   - fence: the partition leases the commit must still hold (checked in its transaction;
    ///     `leaseLost` otherwise, with nothing written).
    public func apply(
        _ items: [WorkItem], published: Set<Int64> = [], removeOutbox: [Int64] = [],
        fence: (workerID: String, leases: [PartitionLease])? = nil
    ) async throws -> ProcessedBatch {
        let started = DispatchTime.now().uptimeNanoseconds
        let prepared = processor.prepare(items)
        let prepareNs = DispatchTime.now().uptimeNanoseconds &- started
        var attempt = 1
        while true {
            do {
                var processed = try await applyOnce(prepared, published: published, removeOutbox: removeOutbox, fence: fence)
                processed.stages.prepareNs = prepareNs
                return processed
            } catch let error as StoreError where error.code == .versionConflict && attempt < conflictAttempts {
                // applyOnce has evicted the batch's runs: the next attempt loads them.
                attempt += 1
            }
        }
    }

    private func applyOnce(
        _ prepared: PreparedBatch, published: Set<Int64>, removeOutbox: [Int64],
        fence: (workerID: String, leases: [PartitionLease])?
    ) async throws -> ProcessedBatch {
        do {
            let decision = try await decideAndCommit(prepared, published: published, removeOutbox: removeOutbox, fence: fence)
            cache?.committed(decision.commit.runs, under: fence?.leases ?? [])
            return decision.processed
        } catch {
            // Whatever the batch read may be stale (a conflict) or was not written.
            cache?.evict(prepared.runIDs)
            throw error
        }
    }

    private func decideAndCommit(
        _ prepared: PreparedBatch, published: Set<Int64>, removeOutbox: [Int64],
        fence: (workerID: String, leases: [PartitionLease])?
    ) async throws -> (commit: StoreCommit, processed: ProcessedBatch) {
        let processor = self.processor
        let clock = self.clock
        var decision: BatchDecision
        let storeStarted = DispatchTime.now().uptimeNanoseconds
        if prepared.runIDs.isEmpty && prepared.commandKeys.isEmpty {
            // Nothing to read (only unattributable messages): at most the outbox deletions.
            decision = processor.decide(prepared, snapshot: StoreSnapshot(), removeOutbox: removeOutbox, now: clock())
            decision.commit.fence = fence
            if !decision.commit.isEmpty { decision.assignOutboxIDs(try await store.commit(decision.commit)) }
        } else {
            let cached = cache?.runs(prepared.runIDs, under: fence?.leases ?? []) ?? [:]
            let (ids, decided) = try await store.loadDecideCommit(
                runIDs: prepared.runIDs.subtracting(cached.keys), commands: prepared.commandKeys
            ) { loaded, pending in
                let deciding = DispatchTime.now().uptimeNanoseconds
                var snapshot = loaded
                snapshot.runs.merge(cached) { stored, _ in stored }
                let d = processor.decide(
                    prepared, snapshot: snapshot, pendingOutbox: pending, published: published, removeOutbox: removeOutbox,
                    now: clock())
                var timed = d
                timed.commit.fence = fence
                timed.decidedAtNs = DispatchTime.now().uptimeNanoseconds
                timed.decideNs = timed.decidedAtNs &- deciding
                return (timed.commit, timed)
            }
            decision = decided
            decision.assignOutboxIDs(ids)
        }
        let committed = DispatchTime.now().uptimeNanoseconds
        var processed = ProcessedBatch(
            messages: decision.messages, results: decision.results, observations: decision.observations,
            commitNs: decision.decidedAtNs == 0 ? 0 : committed &- decision.decidedAtNs)
        processed.stages.decideNs = decision.decideNs
        processed.stages.storeNs = (committed &- storeStarted) &- decision.decideNs
        return (decision.commit, processed)
    }

    /// Commands only (tests and tools).
    public func process(_ commands: [InboundCommand], published: Set<Int64> = [], removeOutbox: [Int64] = []) async throws
        -> ProcessedBatch
    {
        try await apply(commands.map(WorkItem.command), published: published, removeOutbox: removeOutbox)
    }

    /// Fires the elapsed deadlines of these runs. A run whose deadline is no longer relevant
    /// (completed meanwhile, fired by another worker) is left alone.
    public func fireTimers(runIDs: [String]) async throws -> ProcessedBatch {
        try await apply(runIDs.map { WorkItem.timer(runID: $0) })
    }
}
