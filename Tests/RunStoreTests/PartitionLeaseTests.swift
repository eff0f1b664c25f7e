import Foundation
import RunContract
import RunTestSupport
import Testing

@testable import RunStore
@testable import RunStorePostgres
@testable import RunStores
@testable import RunStoreSQLite

/// Time as a lease test sees it. The memory and SQLite stores get a clock that moves when told
/// (wall time would make the tests depend on how busy the machine is); PostgreSQL expires by
/// the database's own clock, so the test sleeps and then waits, bounded, for the expiry to show.
struct LeaseTime: Sendable {
    /// The memory store's clock; nil for a store on the database's clock.
    let manual: ManualClock?

    /// Lets `seconds` pass by the store's clock.
    func pass(_ seconds: Double) async throws {
        if let manual {
            manual.advance(seconds: seconds)
        } else {
            try await Task.sleep(for: .seconds(seconds))
        }
    }

    /// Waits until `condition` holds, up to 5 s by a database's clock (at once by the memory
    /// store's, which does not move by itself); records an issue if it never does.
    func waitUntil(
        _ what: String, sourceLocation: SourceLocation = #_sourceLocation, _ condition: () async throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + .seconds(manual == nil ? 5 : 0)
        while true {
            if try await condition() { return }
            guard ContinuousClock.now < deadline else {
                Issue.record("still not: \(what)", sourceLocation: sourceLocation)
                return
            }
            try await Task.sleep(for: .milliseconds(25))
        }
    }

    /// Lets a lease of `ttl` seconds on `partition` run out.
    func expire(_ partition: Int, ttl: Double, in store: any RunStore) async throws {
        try await pass(ttl)
        try await waitUntil("partition \(partition) expired") {
            try await store.leases().first { $0.partition == partition }?.expired == true
        }
    }
}

/// Runs `body` against a fresh store of `kind` and the time it expires leases by.
func withLeaseStore<T>(_ kind: StoreKind, _ body: (any RunStore, LeaseTime) async throws -> T) async throws -> T {
    let clock = ManualClock()
    return try await withStore(kind, clock: clock) { (store) async throws in
        try await body(store, LeaseTime(manual: kind == .postgres ? nil : clock))
    }
}

/// Long enough never to run out during a test.
let longTTL = 60.0
/// Short enough to wait out, where nothing needs the lease live meanwhile.
let shortTTL = 0.3
/// Short enough to wait out, and long enough to stay live across a few calls first on a busy
/// machine. Only PostgreSQL waits it out for real (the others move a test clock): the full
/// suite's blocking tests can starve this one for seconds between two calls, and 4 s was seen
/// to run out there.
let briefTTL = 15.0

func lease(_ partition: Int, _ epoch: Int64) -> PartitionLease { PartitionLease(partition: partition, epoch: epoch) }

/// Membership and partition ownership, checked the same way against every store kind.
@Suite struct PartitionLeaseConformanceTests {
    // MARK: acquire

    /// A partition never leased is taken at epoch 1 and shows as held by its taker.
    @Test(arguments: StoreKind.allCases) func acquireFreePartition(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, _) async throws in
            #expect(try await store.leases() == [])
            #expect(try await store.acquireLease(partition: 3, workerID: "a", ttl: longTTL) == lease(3, 1))
            #expect(try await store.leases() == [LeaseState(partition: 3, owner: "a", epoch: 1, expired: false)])
        }
    }

    /// While a lease is unexpired, another worker is refused and the lease stays as it was.
    @Test(arguments: StoreKind.allCases) func heldPartitionIsRefused(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, _) async throws in
            _ = try await store.acquireLease(partition: 0, workerID: "a", ttl: longTTL)
            #expect(try await store.acquireLease(partition: 0, workerID: "b", ttl: longTTL) == nil)
            #expect(try await store.leases() == [LeaseState(partition: 0, owner: "a", epoch: 1, expired: false)])
        }
    }

    /// Once a lease expires by the store's clock, another worker takes it with the next epoch.
    @Test(arguments: StoreKind.allCases) func expiredLeaseIsTakenAtNextEpoch(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, time) async throws in
            _ = try await store.acquireLease(partition: 0, workerID: "a", ttl: shortTTL)
            try await time.expire(0, ttl: shortTTL, in: store)
            #expect(try await store.leases() == [LeaseState(partition: 0, owner: "a", epoch: 1, expired: true)])
            #expect(try await store.acquireLease(partition: 0, workerID: "b", ttl: longTTL) == lease(0, 2))
            #expect(try await store.leases() == [LeaseState(partition: 0, owner: "b", epoch: 2, expired: false)])
        }
    }

    /// The holder asking again renews its lease at the same epoch; once its lease expired, it
    /// starts a new tenure at the next epoch (its earlier writes are fenced off).
    @Test(arguments: StoreKind.allCases) func holderReacquiresAtSameEpoch(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, time) async throws in
            #expect(try await store.acquireLease(partition: 1, workerID: "a", ttl: briefTTL) == lease(1, 1))
            #expect(try await store.acquireLease(partition: 1, workerID: "a", ttl: briefTTL) == lease(1, 1))
            try await time.expire(1, ttl: briefTTL, in: store)
            #expect(try await store.acquireLease(partition: 1, workerID: "a", ttl: longTTL) == lease(1, 2))
        }
    }

    /// Two workers racing for the same free partition: exactly one wins, at epoch 1; racing
    /// again once it is released, exactly one wins, at epoch 2.
    @Test(arguments: StoreKind.allCases) func concurrentAcquirersOneWins(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, _) async throws in
            for round in 1...2 {
                let winners = try await withThrowingTaskGroup(of: (String, PartitionLease?).self) { group in
                    for i in 0..<20 {
                        let worker = "w\(round)-\(i)"
                        group.addTask { (worker, try await store.acquireLease(partition: 7, workerID: worker, ttl: longTTL)) }
                    }
                    var winners: [(String, PartitionLease)] = []
                    for try await (worker, won) in group { if let won { winners.append((worker, won)) } }
                    return winners
                }
                try #require(winners.count == 1, "round \(round): \(winners.map { $0.0 })")
                let (winner, won) = winners[0]
                #expect(won == lease(7, Int64(round)))
                #expect(try await store.leases() == [LeaseState(partition: 7, owner: winner, epoch: Int64(round), expired: false)])
                try await store.releaseLease(won, workerID: winner)
            }
        }
    }

    /// A lease or heartbeat without a positive, finite ttl is refused as a caller's defect.
    @Test(arguments: StoreKind.allCases) func ttlMustBePositive(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, _) async throws in
            let refused: [Double] = [0, -1, .nan, .infinity]
            for ttl in refused {
                await #expect { _ = try await store.acquireLease(partition: 0, workerID: "a", ttl: ttl) }
                    throws: { isStoreError($0, .rejected) }
                await #expect { _ = try await store.heartbeat(workerID: "a", ttl: ttl) } throws: { isStoreError($0, .rejected) }
            }
            #expect(try await store.leases() == [])
        }
    }

    // MARK: renew and release

    /// Renewing keeps the epoch, extends the lease, and returns only the leases still held by
    /// the caller at their epoch (not one taken over, nor one never leased).
    @Test(arguments: StoreKind.allCases) func renewReturnsLeasesStillHeld(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, time) async throws in
            _ = try await store.acquireLease(partition: 0, workerID: "a", ttl: briefTTL)
            _ = try await store.acquireLease(partition: 1, workerID: "a", ttl: shortTTL)
            #expect(try await store.renewLeases([lease(0, 1)], workerID: "a", ttl: longTTL) == [lease(0, 1)])
            try await time.expire(1, ttl: shortTTL, in: store)
            _ = try await store.acquireLease(partition: 1, workerID: "b", ttl: longTTL)

            // Past partition 0's first ttl: renewed, it has not run out.
            try await time.pass(briefTTL + 0.2)
            let held = [lease(0, 1), lease(1, 1), lease(2, 1)]
            #expect(try await store.renewLeases(held, workerID: "a", ttl: longTTL) == [lease(0, 1)])
            #expect(try await store.renewLeases([lease(1, 2)], workerID: "a", ttl: longTTL) == [])
            #expect(try await store.renewLeases([], workerID: "a", ttl: longTTL) == [])
            #expect(try await store.leases() == [
                LeaseState(partition: 0, owner: "a", epoch: 1, expired: false),
                LeaseState(partition: 1, owner: "b", epoch: 2, expired: false),
            ])
        }
    }

    /// A released lease is free at once: another worker takes it with the next epoch, and the
    /// releaser can no longer renew it.
    @Test(arguments: StoreKind.allCases) func releaseFreesAtOnce(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, _) async throws in
            let held = try #require(try await store.acquireLease(partition: 0, workerID: "a", ttl: longTTL))
            try await store.releaseLease(held, workerID: "a")
            #expect(try await store.leases() == [LeaseState(partition: 0, owner: nil, epoch: 1, expired: true)])
            #expect(try await store.renewLeases([held], workerID: "a", ttl: longTTL) == [])
            #expect(try await store.acquireLease(partition: 0, workerID: "b", ttl: longTTL) == lease(0, 2))
        }
    }

    /// Releasing a lease one does not hold at that epoch changes nothing.
    @Test(arguments: StoreKind.allCases) func releaseByNonHolderIsIgnored(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, _) async throws in
            _ = try await store.acquireLease(partition: 0, workerID: "a", ttl: longTTL)
            try await store.releaseLease(lease(0, 1), workerID: "b")
            try await store.releaseLease(lease(0, 2), workerID: "a")
            try await store.releaseLease(lease(5, 1), workerID: "a")
            #expect(try await store.leases() == [LeaseState(partition: 0, owner: "a", epoch: 1, expired: false)])
        }
    }

    // MARK: fenced commits

    /// A commit fenced by a lease that expired, and then by one another worker has taken, is
    /// refused as `leaseLost` (not transient) and writes nothing: no runs, outbox rows,
    /// outcomes or outbox removals.
    @Test(arguments: StoreKind.allCases) func staleFenceWritesNothing(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, time) async throws in
            let held = try #require(try await store.acquireLease(partition: 0, workerID: "a", ttl: shortTTL))
            let earlier = try await store.commit(StoreCommit(runs: [create(sampleRun("r0"))], outbox: [outboxRow("r0", 1)]))
            let keys: Set = [key("r0", "c1"), key("r1", "c1")]
            let before = try await Contents(store, outcomes: keys)
            let batch = StoreCommit(
                runs: [create(sampleRun("r1"), partition: 0), update(sampleRun("r0", version: 3), from: 2)],
                outbox: [outboxRow("r1", 1)], outcomes: [(key("r0", "c1"), started), (key("r1", "c1"), started)],
                removeOutbox: earlier, fence: ("a", [held]))

            try await time.expire(0, ttl: shortTTL, in: store)
            await #expect { _ = try await store.commit(batch) } throws: {
                isStoreError($0, .leaseLost) && !(($0 as? StoreError)?.isTransient ?? true)
            }
            #expect(try await Contents(store, outcomes: keys) == before)

            #expect(try await store.acquireLease(partition: 0, workerID: "b", ttl: longTTL) == lease(0, 2))
            await #expect { _ = try await store.commit(batch) } throws: { isStoreError($0, .leaseLost) }
            #expect(try await Contents(store, outcomes: keys) == before)
            #expect(try await store.run("r0")?.version == 2)
            #expect(try await store.pendingOutbox(runIDs: ["r0", "r1"]).map(\.id) == earlier)
        }
    }

    /// A commit fenced by leases its worker holds writes as any commit does (PostgreSQL: still
    /// one round trip); a fence with no leases checks nothing.
    @Test(arguments: StoreKind.allCases) func validFenceCommits(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, _) async throws in
            let p0 = try #require(try await store.acquireLease(partition: 0, workerID: "a", ttl: longTTL))
            let p1 = try #require(try await store.acquireLease(partition: 1, workerID: "a", ttl: longTTL))
            let roundTrips = (store as? PostgresRunStore)?.roundTrips
            let ids = try await store.commit(StoreCommit(
                runs: [create(sampleRun("r1"), partition: 0)], outbox: [outboxRow("r1", 1)],
                outcomes: [(key("r1", "c1"), started)], fence: ("a", [p0, p1, p0])))
            if let roundTrips, let pg = store as? PostgresRunStore { #expect(pg.roundTrips == roundTrips + 1) }
            #expect(try await store.run("r1") == sampleRun("r1"))
            #expect(try await store.pendingOutbox(runIDs: ["r1"]).map(\.id) == ids)
            #expect(try await store.load(runIDs: [], commands: [key("r1", "c1")]).outcomes == [key("r1", "c1"): started])

            _ = try await store.commit(StoreCommit(runs: [create(sampleRun("r2"))], fence: ("nobody", [])))
            #expect(try await store.run("r2") != nil)
        }
    }

    /// One lease not held among held ones refuses the whole commit: a partition another
    /// worker holds, one never leased, or a held one at another epoch.
    @Test(arguments: StoreKind.allCases) func fenceNeedsEveryLease(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, _) async throws in
            let mine = try #require(try await store.acquireLease(partition: 0, workerID: "a", ttl: longTTL))
            let theirs = try #require(try await store.acquireLease(partition: 1, workerID: "b", ttl: longTTL))
            for other in [theirs, lease(2, 1), lease(0, 2)] {
                await #expect {
                    _ = try await store.commit(StoreCommit(runs: [create(sampleRun("r1"))], fence: ("a", [mine, other])))
                } throws: { isStoreError($0, .leaseLost) }
            }
            #expect(try await store.run("r1") == nil)
        }
    }

    // MARK: membership

    /// A heartbeat lists the workers whose rows have not expired, sorted, the caller included;
    /// a worker that stops beating drops out once its ttl runs out.
    @Test(arguments: StoreKind.allCases) func heartbeatListsLiveWorkers(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, time) async throws in
            #expect(try await store.heartbeat(workerID: "b", ttl: longTTL) == ["b"])
            #expect(try await store.heartbeat(workerID: "c", ttl: briefTTL) == ["b", "c"])
            #expect(try await store.heartbeat(workerID: "a", ttl: longTTL) == ["a", "b", "c"])
            #expect(try await store.heartbeat(workerID: "b", ttl: longTTL) == ["a", "b", "c"])
            try await time.pass(briefTTL)
            try await time.waitUntil("c dropped out") { try await store.heartbeat(workerID: "a", ttl: longTTL) == ["a", "b"] }
            // A worker that comes back is live again.
            #expect(try await store.heartbeat(workerID: "c", ttl: longTTL) == ["a", "b", "c"])
        }
    }

    /// Leaving removes the worker's row at once; leaving twice, or unknown, is harmless.
    @Test(arguments: StoreKind.allCases) func leaveRemovesWorker(kind: StoreKind) async throws {
        try await withLeaseStore(kind) { (store, _) async throws in
            _ = try await store.heartbeat(workerID: "a", ttl: longTTL)
            _ = try await store.heartbeat(workerID: "b", ttl: longTTL)
            try await store.leave(workerID: "b")
            try await store.leave(workerID: "b")
            try await store.leave(workerID: "nobody")
            #expect(try await store.heartbeat(workerID: "a", ttl: longTTL) == ["a"])
        }
    }
}
