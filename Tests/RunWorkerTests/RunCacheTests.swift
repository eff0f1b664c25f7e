import Foundation
import RunContract
import RunStateMachine
import RunStore
import Testing

@testable import RunApply
@testable import RunWorker

/// The run cache (issue 11): a run this worker wrote is not loaded again while the worker
/// holds the lease it was written under, and is never trusted past it.
@Suite struct RunCacheTests {
    static let partition = 3

    func cachingApplier(_ store: any RunStore) -> BatchApplier {
        var applier = processor(store)
        applier.cache = RunCache()
        return applier
    }

    func command(_ object: JSONValue, id: String) -> InboundCommand {
        var c = inbound(object, id: id)
        c.partition = Self.partition
        return c
    }

    func apply(_ applier: BatchApplier, _ c: InboundCommand, lease: PartitionLease, worker: String = "a") async throws
        -> ProcessedBatch
    {
        try await applier.apply([.command(c)], fence: (workerID: worker, leases: [lease]))
    }

    static let waitAction: JSONValue = ["type": "system_action", "action": "wait"]

    /// Under the same lease, the second command of a run decides from the cache (no load of
    /// the run); a later lease on the partition loads it again; a finished run is dropped.
    @Test func usedUnderTheLeaseItWasWrittenUnder() async throws {
        let store = InterferingStore()
        let applier = cachingApplier(store)
        let first = try #require(try await store.inner.acquireLease(partition: Self.partition, workerID: "a", ttl: 600))
        _ = try await apply(applier, command(["command": "start", "run_id": "r1"], id: "c1"), lease: first)
        #expect(store.loaded.withLock { $0 } == ["r1"])
        #expect(applier.cache?.count == 1)

        let required = try await apply(
            applier, command(["command": "require_action", "run_id": "r1", "action": Self.waitAction], id: "c2"), lease: first)
        #expect(required.results.first?.refusal == nil)
        #expect(store.loaded.withLock { $0 } == ["r1"], "decided from the cache")

        // The lease given back and taken again: a new epoch, so the entry is not trusted.
        try await store.inner.releaseLease(first, workerID: "a")
        let second = try #require(try await store.inner.acquireLease(partition: Self.partition, workerID: "a", ttl: 600))
        #expect(second.epoch > first.epoch)
        _ = try await apply(applier, command(["command": "cancel", "run_id": "r1"], id: "c3"), lease: second)
        #expect(store.loaded.withLock { $0 } == ["r1", "r1"])
        #expect(try await store.run("r1")?.status == .cancelled)
        #expect(applier.cache?.count == 0, "finished runs are not kept")
    }

    /// Another worker that held the partition meanwhile moved the run on: the cached copy
    /// (written under the old epoch) is not used, so a command valid only in the new state is
    /// applied, not refused from the stale copy.
    @Test func anotherOwnersWritesAreSeen() async throws {
        let store = InMemoryRunStore()
        let a = cachingApplier(store)
        let b = cachingApplier(store)
        let leaseA = try #require(try await store.acquireLease(partition: Self.partition, workerID: "a", ttl: 600))
        _ = try await apply(a, command(["command": "start", "run_id": "r1"], id: "c1"), lease: leaseA)

        try await store.releaseLease(leaseA, workerID: "a")
        let leaseB = try #require(try await store.acquireLease(partition: Self.partition, workerID: "b", ttl: 600))
        let required = try await apply(
            b, command(["command": "require_action", "run_id": "r1", "action": Self.waitAction], id: "c2"), lease: leaseB,
            worker: "b")
        let actionID = try #require(try events(required).first?.action?.id)
        try await store.releaseLease(leaseB, workerID: "b")

        let leaseA2 = try #require(try await store.acquireLease(partition: Self.partition, workerID: "a", ttl: 600))
        let completed = try await apply(
            a, command(["command": "complete_action", "run_id": "r1", "action_id": .string(actionID)], id: "c3"), lease: leaseA2)
        #expect(completed.results.first?.refusal == nil, "\(completed.results)")
        #expect(try await store.run("r1")?.status == .running)
        #expect(try await store.run("r1")?.version == 4)
    }

    /// A run changed behind the cache's back under the same lease (a writer without a fence)
    /// is caught by the version-checked write: the batch is decided again from the store.
    @Test func staleEntryIsCaughtByTheVersionCheck() async throws {
        let store = InterferingStore()
        let applier = cachingApplier(store)
        let lease = try #require(try await store.inner.acquireLease(partition: Self.partition, workerID: "a", ttl: 600))
        _ = try await apply(applier, command(["command": "start", "run_id": "r1"], id: "c1"), lease: lease)
        store.interference.withLock { f in
            f = { inner in _ = try await processor(inner).process([inbound(["command": "cancel", "run_id": "r1"], id: "other")]) }
        }
        let batch = try await apply(
            applier, command(["command": "require_action", "run_id": "r1", "action": Self.waitAction], id: "c2"), lease: lease)
        #expect(batch.results.first?.refusal?.code == .invalidTransition)
        #expect(store.loaded.withLock { $0 } == ["r1", "r1"], "loaded again after the conflict")
        #expect(try await store.run("r1")?.status == .cancelled)
        #expect(applier.cache?.count == 0)
    }

    /// Without a fence (tests, tools) nothing is cached or trusted.
    @Test func unfencedBatchesAlwaysLoad() async throws {
        let store = InterferingStore()
        let applier = cachingApplier(store)
        _ = try await applier.process([inbound(["command": "start", "run_id": "r1"], id: "c1")])
        _ = try await applier.process([inbound(["command": "cancel", "run_id": "r1"], id: "c2")])
        #expect(store.loaded.withLock { $0 } == ["r1", "r1"])
    }

    /// Bounded: two generations of half the capacity each.
    @Test func staysWithinItsCapacity() {
        let cache = RunCache(capacity: 4)
        let lease = PartitionLease(partition: 0, epoch: 1)
        for i in 0..<10 {
            let run = Run(runID: "r\(i)", status: .running, version: 2, createdAt: Timestamp(milliseconds: 0), updatedAt: Timestamp(milliseconds: 0))
            cache.committed([RunWrite(run: run, previousVersion: nil, nextDeadline: nil, partition: 0)], under: [lease])
        }
        #expect(cache.count <= 4)
        #expect(cache.runs(["r9", "r8"], under: [lease]).count == 2, "the newest are kept")
        #expect(cache.runs(["r0"], under: [lease]).isEmpty)
        #expect(cache.runs(["r9"], under: [PartitionLease(partition: 0, epoch: 2)]).isEmpty)
    }

    /// Bounded in bytes too: runs with large inputs fill a generation by their size, so the
    /// cache holds at most its byte budget, the newest kept.
    @Test func staysWithinItsByteBudget() {
        let cache = RunCache(capacity: 10_000, byteBudget: 1 << 20)
        let lease = PartitionLease(partition: 0, epoch: 1)
        let input = JSONValue.string(String(repeating: "x", count: 20_000))
        for i in 0..<200 {
            let run = Run(runID: "r\(i)", status: .running, version: 2, input: input, createdAt: Timestamp(milliseconds: 0), updatedAt: Timestamp(milliseconds: 0))
            cache.committed([RunWrite(run: run, previousVersion: nil, nextDeadline: nil, partition: 0)], under: [lease])
            #expect(cache.bytes <= cache.byteBudget)
        }
        #expect(cache.count < 60, "about 50 runs of 20 KB fit 1 MiB, not 200")
        #expect(cache.runs(["r199"], under: [lease]).count == 1, "the newest is kept")
        #expect(cache.runs(["r0"], under: [lease]).isEmpty)
        // Evicting gives the bytes back.
        cache.evict(Set((0..<200).map { "r\($0)" }))
        #expect(cache.bytes == 0 && cache.count == 0)
    }

    /// A run larger than a 32nd of the byte budget is not kept (its commands read the store);
    /// a small one beside it is.
    @Test func largeRunsAreNotCached() {
        let cache = RunCache(byteBudget: 1 << 20)
        let lease = PartitionLease(partition: 0, epoch: 1)
        let big = Run(runID: "big", status: .running, version: 2, input: .string(String(repeating: "x", count: 40_000)),
                      createdAt: Timestamp(milliseconds: 0), updatedAt: Timestamp(milliseconds: 0))
        let small = Run(runID: "small", status: .running, version: 2, input: ["q": "2+2"],
                        createdAt: Timestamp(milliseconds: 0), updatedAt: Timestamp(milliseconds: 0))
        #expect(big.approximateBytes > cache.maxEntryBytes && small.approximateBytes < cache.maxEntryBytes)
        cache.committed([big, small].map { RunWrite(run: $0, previousVersion: nil, nextDeadline: nil, partition: 0) }, under: [lease])
        #expect(Set(cache.runs(["big", "small"], under: [lease]).keys) == ["small"])
    }

    /// A run's footprint grows with what it carries: an input of 200 KB counts at least that.
    @Test func footprintCountsWhatARunCarries() {
        let bare = Run(runID: "r", status: .running, version: 1, createdAt: Timestamp(milliseconds: 0), updatedAt: Timestamp(milliseconds: 0))
        var heavy = bare
        heavy.input = .array((0..<1000).map { .string(String(repeating: "y", count: 200) + "\($0)") })
        heavy.actions = [Action(id: "a1", type: .toolCall, fields: ["args": .string(String(repeating: "z", count: 5_000))],
                                requestedAt: Timestamp(milliseconds: 0))]
        #expect(bare.approximateBytes < 2_000)
        #expect(heavy.approximateBytes > 200_000 + 5_000)
        #expect(heavy.approximateBytes < 2 * (200_000 + 5_000) + 100_000)
    }
}
