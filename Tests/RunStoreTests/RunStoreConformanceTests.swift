import Foundation
import RunContract
import RunTestSupport
import Testing

@testable import RunStore

/// The `RunStore` contract, checked the same way against every store kind.
@Suite struct RunStoreConformanceTests {
    // MARK: load

    /// `load` returns the runs and outcomes that exist and leaves out those that do not.
    @Test(arguments: StoreKind.allCases) func loadReturnsWhatExists(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let empty = try await store.load(runIDs: ["r1"], commands: [key("r1", "c1")])
            #expect(empty.runs.isEmpty && empty.outcomes.isEmpty)

            let refusal = CommandOutcome(command: "complete", error: RunError(.invalidTransition, "run r1 is completed"))
            _ = try await store.commit(StoreCommit(
                runs: [create(sampleRun("r1"))],
                outcomes: [(key("r1", "c1"), started), (key("r1", "c2"), refusal), (key("r2", "c1"), CommandOutcome(command: nil, error: nil))]))
            let snapshot = try await store.load(
                runIDs: ["r1", "r2"], commands: [key("r1", "c1"), key("r1", "c2"), key("r2", "c1"), key("r1", "c3")])
            #expect(snapshot.runs == ["r1": sampleRun("r1")])
            #expect(snapshot.outcomes == [key("r1", "c1"): started, key("r1", "c2"): refusal,
                                          key("r2", "c1"): CommandOutcome(command: nil, error: nil)])
        }
    }

    /// A committed run reads back equal, field for field, through `load`, `run` and `runs`.
    @Test(arguments: StoreKind.allCases) func runRoundTrip(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let run = sampleRun("r1")
            _ = try await store.commit(StoreCommit(runs: [create(run)]))
            #expect(try await store.run("r1") == run)
            #expect(try await store.run("nope") == nil)
            #expect(try await store.runs(status: nil, agentID: nil, limit: 10) == [run])
        }
    }

    // MARK: commit

    /// A conflict in the last run write leaves every earlier part of the batch unwritten:
    /// runs, outcomes, outbox rows and outbox removals.
    @Test(arguments: StoreKind.allCases) func conflictWritesNothing(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let earlier = try await store.commit(StoreCommit(
                runs: [create(sampleRun("r0")), create(sampleRun("r5"))], outbox: [outboxRow("r0", 1)]))
            let keys: Set = [key("r1", "c1"), key("r0", "c1")]
            let before = try await Contents(store, outcomes: keys)

            let batch = StoreCommit(
                runs: [create(sampleRun("r1")), update(sampleRun("r0", version: 3), from: 2),
                       update(sampleRun("r5", version: 9), from: 7)],
                outbox: [outboxRow("r1", 1)], outcomes: [(key("r1", "c1"), started), (key("r0", "c1"), started)],
                removeOutbox: earlier)
            await #expect { _ = try await store.commit(batch) } throws: { isStoreError($0, .versionConflict) }

            #expect(try await Contents(store, outcomes: keys) == before)
            #expect(try await store.run("r0")?.version == 2)
            #expect(try await store.pendingOutbox(runIDs: ["r0", "r1"]).map(\.id) == earlier)
        }
    }

    /// An update from a stale version is a conflict; from the stored version it succeeds.
    @Test(arguments: StoreKind.allCases) func staleUpdateConflicts(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            _ = try await store.commit(StoreCommit(runs: [create(sampleRun("r1", version: 2))]))
            await #expect { _ = try await store.commit(StoreCommit(runs: [update(sampleRun("r1", version: 3), from: 1)])) }
                throws: { isStoreError($0, .versionConflict) }
            #expect(try await store.run("r1")?.version == 2)
            _ = try await store.commit(StoreCommit(runs: [update(sampleRun("r1", version: 3), from: 2)]))
            #expect(try await store.run("r1")?.version == 3)
        }
    }

    /// An update of a run that does not exist is a conflict (someone must have created it).
    @Test(arguments: StoreKind.allCases) func updateOfMissingRunConflicts(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            await #expect { _ = try await store.commit(StoreCommit(runs: [update(sampleRun("r1", version: 3), from: 2)])) }
                throws: { isStoreError($0, .versionConflict) }
            #expect(try await store.run("r1") == nil)
        }
    }

    /// Creating a run that exists is a conflict and leaves the stored run as it was.
    @Test(arguments: StoreKind.allCases) func insertOfExistingRunConflicts(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            _ = try await store.commit(StoreCommit(runs: [create(sampleRun("r1", version: 2))]))
            await #expect { _ = try await store.commit(StoreCommit(runs: [create(sampleRun("r1", version: 1))])) }
                throws: { isStoreError($0, .versionConflict) }
            #expect(try await store.run("r1")?.version == 2)
        }
    }

    /// A commit writes each run at most once: a second write of one run in a commit is the
    /// caller's defect, refused as `rejected` with nothing written.
    @Test(arguments: StoreKind.allCases) func repeatedRunInOneCommit(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            for runs in [[create(sampleRun("r1", version: 1)), create(sampleRun("r1", version: 2))],
                         [create(sampleRun("r1", version: 1)), update(sampleRun("r1", version: 2), from: 1)]] {
                await #expect {
                    _ = try await store.commit(StoreCommit(runs: runs, outbox: [outboxRow("r1", 1)]))
                } throws: { isStoreError($0, .rejected) }
                #expect(try await store.run("r1") == nil)
                #expect(try await store.pendingOutbox(runIDs: ["r1"]).isEmpty)
            }
        }
    }

    /// An outcome key recorded before is a conflict, and the first outcome stays.
    @Test(arguments: StoreKind.allCases) func recordedOutcomeConflicts(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            _ = try await store.commit(StoreCommit(outcomes: [(key("r1", "c1"), started)]))
            let refusal = CommandOutcome(command: "start", error: RunError(.runExists, "r1 exists"))
            await #expect {
                _ = try await store.commit(StoreCommit(runs: [create(sampleRun("r1"))], outcomes: [(key("r1", "c1"), refusal)]))
            } throws: { isStoreError($0, .versionConflict) }
            #expect(try await store.load(runIDs: ["r1"], commands: [key("r1", "c1")]).outcomes == [key("r1", "c1"): started])
            #expect(try await store.run("r1") == nil)
        }
    }

    /// The same outcome key twice in one commit is a conflict, and neither is recorded.
    @Test(arguments: StoreKind.allCases) func outcomeTwiceInOneCommitConflicts(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            await #expect {
                _ = try await store.commit(StoreCommit(outcomes: [(key("r1", "c1"), started), (key("r1", "c1"), started)]))
            } throws: { isStoreError($0, .versionConflict) }
            #expect(try await store.load(runIDs: [], commands: [key("r1", "c1")]).outcomes.isEmpty)
        }
    }

    /// A command id is keyed by its run: the same id under another run is a different record.
    @Test(arguments: StoreKind.allCases) func outcomeKeyIncludesRun(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            _ = try await store.commit(StoreCommit(outcomes: [(key("r1", "c1"), started)]))
            _ = try await store.commit(StoreCommit(outcomes: [(key("r2", "c1"), started)]))
            #expect(try await store.load(runIDs: [], commands: [key("r1", "c1"), key("r2", "c1")]).outcomes.count == 2)
        }
    }

    /// An empty commit writes nothing and returns no ids.
    @Test(arguments: StoreKind.allCases) func emptyCommitIsNoOp(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            _ = try await store.commit(StoreCommit(runs: [create(sampleRun("r1"))], outbox: [outboxRow("r1", 1)]))
            let before = try await Contents(store, outcomes: [])
            #expect(try await store.commit(StoreCommit()) == [])
            #expect(try await Contents(store, outcomes: []) == before)
        }
    }

    // MARK: outbox

    /// Outbox ids come back in the order of `batch.outbox` and keep increasing across commits;
    /// every field of a row reads back as written.
    @Test(arguments: StoreKind.allCases) func outboxIdsInOrder(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let first = try await store.commit(StoreCommit(outbox: [outboxRow("r1", 1), outboxRow("r2", 1), outboxRow("r1", 2)]))
            let second = try await store.commit(StoreCommit(outbox: [outboxRow("r1", 3)]))
            #expect(first.count == 3 && second.count == 1)
            #expect(first + second == (first + second).sorted() && Set(first + second).count == 4)

            let rows = try await store.pendingOutbox(runIDs: ["r1", "r2"])
            #expect(rows.map(\.id) == first + second)
            var expected = outboxRow("r1", 1)
            expected.id = first[0]
            #expect(rows[0] == expected)
        }
    }

    /// Pending rows of some runs come oldest first and leave other runs' rows out.
    @Test(arguments: StoreKind.allCases) func pendingOutboxByRuns(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let a = try await store.commit(StoreCommit(outbox: [outboxRow("r2", 1), outboxRow("r1", 1)]))
            let b = try await store.commit(StoreCommit(outbox: [outboxRow("r3", 1), outboxRow("r2", 2)]))
            #expect(try await store.pendingOutbox(runIDs: ["r2"]).map(\.id) == [a[0], b[1]])
            #expect(try await store.pendingOutbox(runIDs: ["r1", "r2"]).map(\.id) == [a[0], a[1], b[1]])
            #expect(try await store.pendingOutbox(runIDs: ["nope"]).isEmpty)
            #expect(try await store.pendingOutbox(runIDs: []).isEmpty)
        }
    }

    /// The sweep's read takes rows written at or before the cutoff, oldest first, up to the limit.
    @Test(arguments: StoreKind.allCases) func pendingOutboxByTime(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let ids = try await store.commit(StoreCommit(outbox: [
                outboxRow("r1", 1, at: 100), outboxRow("r2", 1, at: 200), outboxRow("r1", 2, at: 150), outboxRow("r3", 1, at: 300),
            ]))
            #expect(try await store.pendingOutbox(writtenBefore: ms(99), limit: 10).isEmpty)
            #expect(try await store.pendingOutbox(writtenBefore: ms(200), limit: 10).map(\.id) == [ids[0], ids[1], ids[2]])
            #expect(try await store.pendingOutbox(writtenBefore: ms(200), limit: 2).map(\.id) == [ids[0], ids[1]])
            #expect(try await store.pendingOutbox(writtenBefore: ms(1_000), limit: 0).isEmpty)
        }
    }

    /// A sweep narrowed to partitions takes only the rows of runs in them (a worker publishes
    /// the leftovers of the partitions it holds, never of another's); a row of a run never
    /// given a partition only comes with the unfiltered sweep.
    @Test(arguments: StoreKind.allCases) func pendingOutboxByPartition(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            _ = try await store.commit(StoreCommit(runs: [
                create(sampleRun("r1"), partition: 0), create(sampleRun("r2"), partition: 1), create(sampleRun("r3")),
            ]))
            let ids = try await store.commit(StoreCommit(outbox: [
                outboxRow("r1", 1, at: 100), outboxRow("r2", 1, at: 100), outboxRow("r3", 1, at: 100), outboxRow("r1", 2, at: 100),
            ]))
            #expect(try await store.pendingOutbox(writtenBefore: ms(200), partitions: [0], limit: 10).map(\.id) == [ids[0], ids[3]])
            #expect(try await store.pendingOutbox(writtenBefore: ms(200), partitions: [1, 0], limit: 10).map(\.id) == [ids[0], ids[1], ids[3]])
            #expect(try await store.pendingOutbox(writtenBefore: ms(200), partitions: [1, 0], limit: 1).map(\.id) == [ids[0]])
            #expect(try await store.pendingOutbox(writtenBefore: ms(200), partitions: [], limit: 10).isEmpty)
            #expect(try await store.pendingOutbox(writtenBefore: ms(99), partitions: [0], limit: 10).isEmpty)
            #expect(try await store.pendingOutbox(writtenBefore: ms(200), partitions: nil, limit: 10).map(\.id) == ids)
        }
    }

    /// Rows go once removed, by a later commit or on their own; unknown ids are ignored.
    @Test(arguments: StoreKind.allCases) func removeOutbox(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let ids = try await store.commit(StoreCommit(outbox: [outboxRow("r1", 1), outboxRow("r1", 2), outboxRow("r1", 3)]))
            let more = try await store.commit(StoreCommit(outbox: [outboxRow("r1", 4)], removeOutbox: [ids[0], 999_999]))
            #expect(try await store.pendingOutbox(runIDs: ["r1"]).map(\.id) == [ids[1], ids[2]] + more)
            try await store.removeOutbox(ids: [ids[2], 999_999])
            try await store.removeOutbox(ids: [])
            #expect(try await store.pendingOutbox(runIDs: ["r1"]).map(\.id) == [ids[1]] + more)
        }
    }

    // MARK: runsDue

    /// A deadline exactly at `time` is due; later ones are not; due runs come earliest first
    /// (ties by run id) and stop at the limit.
    @Test(arguments: StoreKind.allCases) func runsDueByDeadline(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            _ = try await store.commit(StoreCommit(runs: [
                create(sampleRun("r1"), deadline: ms(300)), create(sampleRun("r2"), deadline: ms(100)),
                create(sampleRun("r0"), deadline: ms(300)), create(sampleRun("r3")), create(sampleRun("r4"), deadline: ms(301)),
            ]))
            #expect(try await store.runsDue(at: ms(99), partitions: nil, limit: 10) == [])
            #expect(try await store.runsDue(at: ms(100), partitions: nil, limit: 10) == ["r2"])
            #expect(try await store.runsDue(at: ms(300), partitions: nil, limit: 10) == ["r2", "r0", "r1"])
            #expect(try await store.runsDue(at: ms(300), partitions: nil, limit: 2) == ["r2", "r0"])
            // A write without a deadline takes the run off the sweep.
            _ = try await store.commit(StoreCommit(runs: [update(sampleRun("r2", version: 3), from: 2)]))
            #expect(try await store.runsDue(at: ms(1_000), partitions: nil, limit: 10) == ["r0", "r1", "r4"])
        }
    }

    /// Terminal runs are never due, whatever deadline their write carries.
    @Test(arguments: StoreKind.allCases) func terminalRunsNeverDue(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            _ = try await store.commit(StoreCommit(runs: [
                create(sampleRun("r1"), deadline: ms(100)), create(sampleRun("r2", status: .completed), deadline: ms(100)),
            ]))
            #expect(try await store.runsDue(at: ms(100), partitions: nil, limit: 10) == ["r1"])
            _ = try await store.commit(StoreCommit(runs: [update(sampleRun("r1", status: .failed, version: 3), from: 2, deadline: ms(50))]))
            #expect(try await store.runsDue(at: ms(1_000), partitions: nil, limit: 10) == [])
        }
    }

    /// The sweep narrows to partitions; a write with partition nil keeps the stored one; a run
    /// never given a partition is due only in the unfiltered sweep.
    @Test(arguments: StoreKind.allCases) func runsDueByPartition(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            _ = try await store.commit(StoreCommit(runs: [
                create(sampleRun("r1"), deadline: ms(100), partition: 0), create(sampleRun("r2"), deadline: ms(100), partition: 1),
                create(sampleRun("r3"), deadline: ms(100)),
            ]))
            #expect(try await store.runsDue(at: ms(100), partitions: [1], limit: 10) == ["r2"])
            #expect(try await store.runsDue(at: ms(100), partitions: [0, 1], limit: 10) == ["r1", "r2"])
            #expect(try await store.runsDue(at: ms(100), partitions: [], limit: 10) == [])
            #expect(try await store.runsDue(at: ms(100), partitions: [-1], limit: 10) == [])
            #expect(try await store.runsDue(at: ms(100), partitions: nil, limit: 10) == ["r1", "r2", "r3"])

            _ = try await store.commit(StoreCommit(runs: [update(sampleRun("r1", version: 3), from: 2, deadline: ms(50))]))
            #expect(try await store.runsDue(at: ms(100), partitions: [0], limit: 10) == ["r1"])
            _ = try await store.commit(StoreCommit(runs: [update(sampleRun("r2", version: 3), from: 2, deadline: ms(50), partition: 0)]))
            #expect(try await store.runsDue(at: ms(100), partitions: [0], limit: 10) == ["r1", "r2"])
            #expect(try await store.runsDue(at: ms(100), partitions: [1], limit: 10) == [])
        }
    }

    // MARK: delivery attempts

    /// Attempts count up per message; `increment: false` notes the error without counting;
    /// the last error given is kept until another replaces it.
    @Test(arguments: StoreKind.allCases) func deliveryAttempts(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let t = ms(1)
            #expect(try await store.lastDeliveryError(key: "m1") == nil)
            #expect(try await store.recordDeliveryAttempt(key: "m1", error: nil, increment: true, at: t) == 1)
            #expect(try await store.recordDeliveryAttempt(key: "m1", error: "boom", increment: true, at: t) == 2)
            #expect(try await store.recordDeliveryAttempt(key: "m1", error: nil, increment: true, at: t) == 3)
            #expect(try await store.lastDeliveryError(key: "m1") == "boom")
            #expect(try await store.recordDeliveryAttempt(key: "m1", error: "bang", increment: false, at: t) == 3)
            #expect(try await store.lastDeliveryError(key: "m1") == "bang")
            #expect(try await store.recordDeliveryAttempt(key: "m2", error: nil, increment: true, at: t) == 1)
            #expect(try await store.lastDeliveryError(key: "m2") == nil)
        }
    }

    // MARK: reads for people

    /// `runs` filters by status and agent, most recently updated first (ties by run id), and
    /// honours the limit; `run` reads one.
    @Test(arguments: StoreKind.allCases) func listing(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            _ = try await store.commit(StoreCommit(runs: [
                create(sampleRun("r1", status: .running, agent: "a", updated: 1)),
                create(sampleRun("r2", status: .completed, agent: "a", updated: 2)),
                create(sampleRun("r3", status: .running, agent: "b", updated: 3)),
                create(sampleRun("r0", status: .running, agent: nil, updated: 1)),
            ]))
            #expect(try await store.runs(status: nil, agentID: nil, limit: 10).map(\.runID) == ["r3", "r2", "r0", "r1"])
            #expect(try await store.runs(status: .running, agentID: nil, limit: 10).map(\.runID) == ["r3", "r0", "r1"])
            #expect(try await store.runs(status: nil, agentID: "a", limit: 10).map(\.runID) == ["r2", "r1"])
            #expect(try await store.runs(status: .running, agentID: "a", limit: 10).map(\.runID) == ["r1"])
            #expect(try await store.runs(status: .failed, agentID: nil, limit: 10).isEmpty)
            #expect(try await store.runs(status: nil, agentID: nil, limit: 1).map(\.runID) == ["r3"])
            // An update moves a run to the front.
            _ = try await store.commit(StoreCommit(runs: [update(sampleRun("r1", status: .running, version: 3, agent: "a", updated: 9), from: 2)]))
            #expect(try await store.runs(status: nil, agentID: nil, limit: 2).map(\.runID) == ["r1", "r3"])
            #expect(try await store.run("r1")?.updatedAt == ms(9))
        }
    }

    // MARK: history, listing pages, counts, retention

    /// Confirmed rows stay as history (no longer pending); history reads a run's rows in
    /// `seq` order after a given `seq`, up to a limit; the depth counts only unconfirmed rows.
    @Test(arguments: StoreKind.allCases) func historyKeepsConfirmedRows(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let ids = try await store.commit(StoreCommit(outbox: [outboxRow("r1", 1), outboxRow("r2", 1), outboxRow("r1", 2)]))
            _ = try await store.commit(StoreCommit(outbox: [outboxRow("r1", 3)], removeOutbox: [ids[0]]))
            try await store.removeOutbox(ids: [ids[2]])
            #expect(try await store.history(runID: "r1", afterSeq: 0, limit: 100).map(\.seq) == [1, 2, 3])
            #expect(try await store.history(runID: "r1", afterSeq: 1, limit: 100).map(\.seq) == [2, 3])
            #expect(try await store.history(runID: "r1", afterSeq: 0, limit: 2).map(\.seq) == [1, 2])
            #expect(try await store.history(runID: "r1", afterSeq: 0, limit: 1).first?.body == outboxRow("r1", 1).body)
            #expect(try await store.history(runID: "nope", afterSeq: 0, limit: 100).isEmpty)
            #expect(try await store.pendingOutbox(runIDs: ["r1"]).map(\.seq) == [3])
            #expect(try await store.outboxDepth() == 2)
        }
    }

    /// Pages come newest first by creation (ties by run id, descending), filtered; walking the
    /// cursors visits every matching run exactly once, even when runs change in between.
    @Test(arguments: StoreKind.allCases) func listRunsPages(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            func run(_ id: String, created: Int64, status: RunStatus = .running, agent: String? = "a", updated: Int64 = 5_000) -> Run {
                var r = sampleRun(id, status: status, agent: agent, updated: updated)
                r.createdAt = ms(created)
                return r
            }
            _ = try await store.commit(StoreCommit(runs: [
                create(run("r1", created: 100)), create(run("r2", created: 200, status: .completed)),
                create(run("r3", created: 200, agent: "b")), create(run("r4", created: 300, updated: 9_000)),
                create(run("r5", created: 400, status: .failed, agent: nil)),
            ]))
            #expect(try await store.listRuns(RunQuery()).runs.map(\.runID) == ["r5", "r4", "r3", "r2", "r1"])
            #expect(try await store.listRuns(RunQuery(statuses: [.completed, .failed])).runs.map(\.runID) == ["r5", "r2"])
            #expect(try await store.listRuns(RunQuery(agentID: "a")).runs.map(\.runID) == ["r4", "r2", "r1"])
            #expect(try await store.listRuns(RunQuery(createdAfter: ms(100), createdBefore: ms(400))).runs.map(\.runID) == ["r4", "r3", "r2"])
            #expect(try await store.listRuns(RunQuery(updatedAfter: ms(5_000))).runs.map(\.runID) == ["r4"])
            #expect(try await store.listRuns(RunQuery(updatedBefore: ms(9_000))).runs.count == 4)

            var seen: [String] = []
            var page = try await store.listRuns(RunQuery(limit: 2))
            seen += page.runs.map(\.runID)
            // A change between pages does not move a run.
            _ = try await store.commit(StoreCommit(runs: [update(run("r1", created: 100, status: .completed, updated: 99_999), from: 2)]))
            while let next = page.next {
                let cursor = try #require(RunCursor(token: next.token))
                #expect(cursor == next)
                page = try await store.listRuns(RunQuery(limit: 2, after: cursor))
                seen += page.runs.map(\.runID)
            }
            #expect(seen == ["r5", "r4", "r3", "r2", "r1"])
            #expect(try await store.listRuns(RunQuery(limit: 5)).next == nil)
            #expect(try await store.runCounts() == [.running: 2, .completed: 2, .failed: 1])
        }
    }

    /// Retention removes finished runs last changed before the cutoff whose events were all
    /// confirmed, with their history, never a live run nor one with an event still to publish;
    /// command records expire by their own cutoff only (a removed run's too); each bounded by
    /// the limit.
    @Test(arguments: StoreKind.allCases) func pruneRemovesFinishedRunsAndOldCommandIDs(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let ids = try await store.commit(StoreCommit(
                runs: [
                    create(sampleRun("old-done", status: .completed, updated: 1_000)),
                    create(sampleRun("old-failed", status: .failed, updated: 1_500)),
                    create(sampleRun("new-done", status: .cancelled, updated: 50_000)),
                    create(sampleRun("old-live", status: .running, updated: 1_000)),
                    create(sampleRun("old-unsent", status: .completed, updated: 1_000)),
                ],
                outbox: [
                    outboxRow("old-done", 1), outboxRow("old-done", 2), outboxRow("old-failed", 1), outboxRow("old-live", 1),
                    outboxRow("old-unsent", 1), outboxRow("old-unsent", 2),
                ],
                outcomes: [(key("old-done", "c1"), started), (key("old-live", "c1"), started), (key("new-done", "c1"), started)]))
            // Everything confirmed but old-unsent's last event.
            try await store.removeOutbox(ids: Array(ids.prefix(5)))
            let never = Timestamp(milliseconds: .min)
            // Nothing is old enough.
            #expect(try await store.prune(finishedBefore: ms(500), commandsBefore: never, limit: 10, commandLimit: 10) == PruneResult())
            // One finished run per pass at limit 1, oldest first.
            let first = try await store.prune(finishedBefore: ms(10_000), commandsBefore: never, limit: 1, commandLimit: 1)
            #expect(first == PruneResult(runs: 1, events: 2, commands: 0))
            let second = try await store.prune(finishedBefore: ms(10_000), commandsBefore: never, limit: 10, commandLimit: 10)
            #expect(second == PruneResult(runs: 1, events: 1, commands: 0))
            #expect(try await store.run("old-done") == nil)
            #expect(try await store.run("old-failed") == nil)
            #expect(try await store.history(runID: "old-done", afterSeq: 0, limit: 10).isEmpty)
            #expect(try await store.run("old-live") != nil)
            #expect(try await store.run("new-done") != nil)
            #expect(try await store.history(runID: "old-live", afterSeq: 0, limit: 10).count == 1)
            // A finished run with an event not yet confirmed waits for it.
            #expect(try await store.run("old-unsent") != nil)
            try await store.removeOutbox(ids: [ids[5]])
            #expect(try await store.prune(finishedBefore: ms(10_000), commandsBefore: never, limit: 10, commandLimit: 10)
                == PruneResult(runs: 1, events: 2, commands: 0))
            // The removed run's command record stays until the window ends.
            let kept = try await store.load(runIDs: [], commands: [key("old-done", "c1"), key("old-live", "c1"), key("new-done", "c1")])
            #expect(kept.outcomes.count == 3)
            // Command ids expire by their own cutoff (far ahead: all of them), live runs untouched.
            let future = Timestamp(seconds: Date().timeIntervalSince1970 + 86_400)
            let one = try await store.prune(finishedBefore: ms(10_000), commandsBefore: future, limit: 1, commandLimit: 1)
            #expect(one == PruneResult(runs: 0, events: 0, commands: 1))
            _ = try await store.prune(finishedBefore: ms(10_000), commandsBefore: future, limit: 10, commandLimit: 10)
            #expect(try await store.load(runIDs: [], commands: [key("old-done", "c1"), key("old-live", "c1"), key("new-done", "c1")])
                .outcomes.isEmpty)
            #expect(try await store.run("old-live") != nil)
        }
    }

    /// A NUL character (`\u0000` in JSON) in a run's input is stored, listed and read back
    /// (PostgreSQL's jsonb would refuse it, so no store path may go through it).
    @Test(arguments: StoreKind.allCases) func nulCharacterInARun(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            var run = sampleRun("nul")
            run.input = ["text": "a\u{0}b"]
            _ = try await store.commit(StoreCommit(runs: [create(run)]))
            #expect(try await store.run("nul") == run)
            #expect(try await store.listRuns(RunQuery()).runs == [run])
            #expect(try await store.listRuns(RunQuery(createdAfter: ms(499), createdBefore: ms(501))).runs.count == 1)
        }
    }
}
