import Foundation
import RunContract
import Testing

@testable import RunStore

/// A fresh store of each kind; the SQLite one lives in a temporary file.
enum StoreKind: String, CaseIterable, CustomTestStringConvertible {
    case memory, sqlite
    var testDescription: String { rawValue }

    func make() throws -> any RunStore {
        switch self {
        case .memory: return InMemoryRunStore()
        case .sqlite:
            let path = FileManager.default.temporaryDirectory
                .appendingPathComponent("runstore-\(UUID().uuidString).sqlite").path
            return try SQLiteRunStore(path: path, synchronous: .normal)
        }
    }
}

func sampleRun(_ id: String, status: RunStatus = .running, version: Int64 = 2, agent: String? = "agent-1", updated: Int64 = 1_000)
    -> Run
{
    Run(
        runID: id, status: status, version: version, agentID: agent, input: ["q": "2+2"], metadata: ["team": "a"],
        config: RunConfig(timeoutS: 30), actions: [
            Action(id: "a-1", type: .toolCall, fields: ["tool": "calc", "args": ["x": 1]], status: .completed,
                   requestedAt: Timestamp(milliseconds: 900), result: 4)
        ],
        createdAt: Timestamp(milliseconds: 500), startedAt: Timestamp(milliseconds: 600),
        updatedAt: Timestamp(milliseconds: updated), attemptStartedAt: Timestamp(milliseconds: 600))
}

func outboxRow(_ run: String, _ seq: Int64, at ms: Int64 = 1_000) -> OutboxMessage {
    OutboxMessage(
        runID: run, seq: seq, type: "started", status: "running", routingKey: "run.\(run).started",
        messageID: "\(run):\(seq)", body: Array("{\"seq\":\(seq)}".utf8), writtenAt: Timestamp(milliseconds: ms))
}

@Suite struct RunStoreTests {
    /// A saved run reads back equal, inside and outside a transaction.
    @Test(arguments: StoreKind.allCases) func saveAndLoad(kind: StoreKind) throws {
        let store = try kind.make()
        let run = sampleRun("r1")
        try store.transaction { (tx) throws in
            #expect(try tx.run("r1") == nil)
            try tx.save(run, previousVersion: nil, nextDeadline: nil)
            #expect(try tx.run("r1") == run)
        }
        #expect(try store.run("r1") == run)
        #expect(try store.run("nope") == nil)
    }

    /// A save guarded by a stale version is refused with versionConflict and changes nothing.
    @Test(arguments: StoreKind.allCases) func versionGuard(kind: StoreKind) throws {
        let store = try kind.make()
        try store.transaction { try $0.save(sampleRun("r1", version: 2), previousVersion: nil, nextDeadline: nil) }
        #expect {
            try store.transaction { try $0.save(sampleRun("r1", version: 3), previousVersion: 1, nextDeadline: nil) }
        } throws: { ($0 as? StoreError)?.code == .versionConflict }
        #expect {
            try store.transaction { try $0.save(sampleRun("r1", version: 1), previousVersion: nil, nextDeadline: nil) }
        } throws: { ($0 as? StoreError)?.code == .versionConflict }
        try store.transaction { try $0.save(sampleRun("r1", version: 3), previousVersion: 2, nextDeadline: nil) }
        #expect(try store.run("r1")?.version == 3)
    }

    /// A transaction that throws leaves no run, outbox row or outcome behind.
    @Test(arguments: StoreKind.allCases) func rollback(kind: StoreKind) throws {
        struct Boom: Error {}
        let store = try kind.make()
        #expect(throws: Boom.self) {
            try store.transaction { (tx) throws in
                try tx.save(sampleRun("r1"), previousVersion: nil, nextDeadline: nil)
                _ = try tx.appendOutbox([outboxRow("r1", 1)])
                try tx.recordOutcome(runID: "r1", commandID: "c1", CommandOutcome(command: "start", error: nil))
                throw Boom()
            }
        }
        #expect(try store.run("r1") == nil)
        #expect(try store.pendingOutbox(writtenBefore: Timestamp(milliseconds: .max), limit: 10).isEmpty)
        try store.transaction { (tx) throws in #expect(try tx.outcome(runID: "r1", commandID: "c1") == nil) }
    }

    /// Outcomes are kept per (run, command id), refusals included, and the first one wins.
    @Test(arguments: StoreKind.allCases) func outcomes(kind: StoreKind) throws {
        let store = try kind.make()
        let refusal = RunError(.invalidTransition, "run r1 is completed")
        try store.transaction { (tx) throws in
            try tx.recordOutcome(runID: "r1", commandID: "c1", CommandOutcome(command: "start", error: nil))
            try tx.recordOutcome(runID: "r1", commandID: "c2", CommandOutcome(command: "complete", error: refusal))
            try tx.recordOutcome(runID: "r1", commandID: "c2", CommandOutcome(command: "complete", error: nil))
        }
        try store.transaction { (tx) throws in
            #expect(try tx.outcome(runID: "r1", commandID: "c1") == CommandOutcome(command: "start", error: nil))
            #expect(try tx.outcome(runID: "r1", commandID: "c2") == CommandOutcome(command: "complete", error: refusal))
            #expect(try tx.outcome(runID: "r2", commandID: "c1") == nil)
        }
    }

    /// Outbox rows come back in insertion order with their ids, per run and by age, and go once removed.
    @Test(arguments: StoreKind.allCases) func outbox(kind: StoreKind) throws {
        let store = try kind.make()
        let ids = try store.transaction { (tx) throws in
            try tx.appendOutbox([outboxRow("r1", 1, at: 100), outboxRow("r2", 1, at: 100), outboxRow("r1", 2, at: 200)])
        }
        #expect(ids.count == 3 && ids[0] < ids[1] && ids[1] < ids[2])
        try store.transaction { (tx) throws in
            #expect(try tx.pendingOutbox(runID: "r1").map(\.seq) == [1, 2])
        }
        #expect(try store.pendingOutbox(writtenBefore: Timestamp(milliseconds: 150), limit: 10).map(\.id) == [ids[0], ids[1]])
        let all = try store.pendingOutbox(writtenBefore: Timestamp(milliseconds: 1_000), limit: 10)
        #expect(all.map(\.messageID) == ["r1:1", "r2:1", "r1:2"])
        #expect(all[0].body == Array("{\"seq\":1}".utf8))
        try store.removeOutbox(ids: [ids[0], ids[2]])
        #expect(try store.pendingOutbox(writtenBefore: Timestamp(milliseconds: 1_000), limit: 10).map(\.id) == [ids[1]])
    }

    /// Listing filters by status and agent, newest first, and honours the limit.
    @Test(arguments: StoreKind.allCases) func listing(kind: StoreKind) throws {
        let store = try kind.make()
        try store.transaction { (tx) throws in
            try tx.save(sampleRun("r1", status: .running, agent: "a", updated: 1), previousVersion: nil, nextDeadline: nil)
            try tx.save(sampleRun("r2", status: .completed, agent: "a", updated: 2), previousVersion: nil, nextDeadline: nil)
            try tx.save(sampleRun("r3", status: .running, agent: "b", updated: 3), previousVersion: nil, nextDeadline: nil)
        }
        #expect(try store.runs(status: nil, agentID: nil, limit: 10).map(\.runID) == ["r3", "r2", "r1"])
        #expect(try store.runs(status: .running, agentID: nil, limit: 10).map(\.runID) == ["r3", "r1"])
        #expect(try store.runs(status: nil, agentID: "a", limit: 10).map(\.runID) == ["r2", "r1"])
        #expect(try store.runs(status: .running, agentID: "a", limit: 10).map(\.runID) == ["r1"])
        #expect(try store.runs(status: nil, agentID: nil, limit: 1).map(\.runID) == ["r3"])
    }

    /// Deadlines index runs for the timer sweep; a run saved without one drops out.
    @Test(arguments: StoreKind.allCases) func deadlines(kind: StoreKind) throws {
        let store = try kind.make()
        try store.transaction { (tx) throws in
            try tx.save(sampleRun("r1"), previousVersion: nil, nextDeadline: Timestamp(milliseconds: 300))
            try tx.save(sampleRun("r2"), previousVersion: nil, nextDeadline: Timestamp(milliseconds: 100))
            try tx.save(sampleRun("r3"), previousVersion: nil, nextDeadline: nil)
        }
        #expect(try store.runsDue(at: Timestamp(milliseconds: 99), limit: 10) == [])
        #expect(try store.runsDue(at: Timestamp(milliseconds: 300), limit: 10) == ["r2", "r1"])
        try store.transaction { try $0.save(sampleRun("r2", version: 3), previousVersion: 2, nextDeadline: nil) }
        #expect(try store.runsDue(at: Timestamp(milliseconds: 1_000), limit: 10) == ["r1"])
    }

    /// The timer sweep narrows to partitions; a save without a partition keeps the stored one.
    @Test(arguments: StoreKind.allCases) func deadlinesByPartition(kind: StoreKind) throws {
        let store = try kind.make()
        try store.transaction { tx in
            try tx.save(sampleRun("r1"), previousVersion: nil, nextDeadline: Timestamp(milliseconds: 100), partition: 0)
            try tx.save(sampleRun("r2"), previousVersion: nil, nextDeadline: Timestamp(milliseconds: 100), partition: 1)
        }
        #expect(try store.runsDue(at: Timestamp(milliseconds: 100), partitions: [1], limit: 10) == ["r2"])
        #expect(try store.runsDue(at: Timestamp(milliseconds: 100), partitions: [], limit: 10) == [])
        try store.transaction { try $0.save(sampleRun("r1", version: 3), previousVersion: 2, nextDeadline: Timestamp(milliseconds: 50)) }
        #expect(try store.runsDue(at: Timestamp(milliseconds: 100), partitions: [0], limit: 10) == ["r1"])
        // Terminal runs have no timers, whatever deadline is passed.
        try store.transaction {
            try $0.save(sampleRun("r2", status: .completed, version: 3), previousVersion: 2,
                        nextDeadline: Timestamp(milliseconds: 50), partition: 1)
        }
        #expect(try store.runsDue(at: Timestamp(milliseconds: 100), partitions: nil, limit: 10) == ["r1"])
    }

    /// Delivery attempts count up per message and keep the last error given.
    @Test(arguments: StoreKind.allCases) func deliveryAttempts(kind: StoreKind) throws {
        let store = try kind.make()
        let t = Timestamp(milliseconds: 1)
        #expect(try store.recordDeliveryAttempt(key: "m1", error: nil, at: t) == 1)
        #expect(try store.recordDeliveryAttempt(key: "m1", error: "boom", at: t) == 2)
        #expect(try store.recordDeliveryAttempt(key: "m1", error: nil, at: t) == 3)
        #expect(try store.lastDeliveryError(key: "m1") == "boom")
        #expect(try store.recordDeliveryAttempt(key: "m2", error: nil, at: t) == 1)
        #expect(try store.lastDeliveryError(key: "m2") == nil)
    }

    /// Two processes' worth of connections on one SQLite file see each other's commits.
    @Test func sqliteSharedFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("shared-\(UUID().uuidString).sqlite").path
        let a = try SQLiteRunStore(path: path)
        let b = try SQLiteRunStore(path: path)
        try a.transaction { try $0.save(sampleRun("r1"), previousVersion: nil, nextDeadline: nil) }
        #expect(try b.run("r1") == sampleRun("r1"))
        #expect {
            try b.transaction { try $0.save(sampleRun("r1", version: 5), previousVersion: 1, nextDeadline: nil) }
        } throws: { ($0 as? StoreError)?.code == .versionConflict }
    }

    /// The durability asked for is the one in force (GRDB's WAL set-up must not override it).
    @Test func synchronousIsHonoured() throws {
        let dir = FileManager.default.temporaryDirectory
        let full = try SQLiteRunStore(path: dir.appendingPathComponent("full-\(UUID().uuidString).sqlite").path, synchronous: .full)
        let normal = try SQLiteRunStore(path: dir.appendingPathComponent("normal-\(UUID().uuidString).sqlite").path, synchronous: .normal)
        #expect(try full.synchronousLevel() == 2)
        #expect(try normal.synchronousLevel() == 1)
    }

    /// Store URLs: absolute and relative sqlite paths; anything else is refused.
    @Test func storeURLs() throws {
        #expect(try SQLiteRunStore.path(fromURL: "sqlite:///var/lib/rw.sqlite") == "/var/lib/rw.sqlite")
        #expect(try SQLiteRunStore.path(fromURL: "sqlite://data/rw.sqlite") == "data/rw.sqlite")
        #expect(throws: StoreError.self) { try SQLiteRunStore.path(fromURL: "postgres://x/y") }
        #expect(throws: StoreError.self) { try SQLiteRunStore.path(fromURL: "sqlite://") }
    }

    /// Several openers of a brand-new file at once (workers starting together) all succeed:
    /// the races on WAL mode and on the first migration are retried.
    @Test func concurrentFirstOpen() async throws {
        for _ in 0..<5 {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("race-\(UUID().uuidString).sqlite").path
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 {
                    group.addTask { _ = try SQLiteRunStore(path: path) }
                }
                try await group.waitForAll()
            }
            #expect(try SQLiteRunStore(path: path).run("x") == nil)
        }
    }
}
