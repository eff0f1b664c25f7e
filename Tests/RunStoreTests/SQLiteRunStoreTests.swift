import Foundation
import GRDB
import RunContract
import RunTestSupport
import Testing

@testable import RunStore
@testable import RunStorePostgres
@testable import RunStores
@testable import RunStoreSQLite

/// What only the SQLite store promises: durability settings, sharing one file between
/// processes, and how SQLite's failures map onto `StoreError` codes.
@Suite struct SQLiteRunStoreTests {
    /// Runs `body` with a fresh file path, removing the file afterwards.
    func withFile<T>(_ body: (String) async throws -> T) async throws -> T {
        let file = TemporaryFile()
        defer { file.remove() }
        return try await body(file.path)
    }

    /// A second connection to the store's file, for doing to it what the store never would.
    func rawConnection(_ path: String) throws -> DatabaseQueue {
        var config = Configuration()
        // The busy test leaves a transaction open across accesses on purpose.
        config.allowsUnsafeTransactions = true
        return try DatabaseQueue(path: path, configuration: config)
    }

    /// The durability asked for is the one in force (GRDB's WAL set-up must not override it).
    @Test func synchronousIsHonoured() async throws {
        try await withFile { (full) async throws in
            try await withFile { (normal) async throws in
                #expect(try SQLiteRunStore(path: full, synchronous: .full).synchronousLevel() == 2)
                #expect(try SQLiteRunStore(path: normal, synchronous: .normal).synchronousLevel() == 1)
                #expect(try SQLiteRunStore(path: full).synchronousLevel() == 2)
            }
        }
    }

    /// `openRunStore` opens a sqlite URL with FULL durability unless told otherwise.
    @Test func openedByURL() async throws {
        try await withFile { (path) async throws in
            let store = try #require(try openRunStore(url: "sqlite://" + path) as? SQLiteRunStore)
            #expect(store.path == path)
            #expect(try store.synchronousLevel() == 2)
        }
    }

    /// Two stores on one file (two workers on a host) see each other's commits and conflict
    /// on each other's writes.
    @Test func sharedFile() async throws {
        try await withFile { (path) async throws in
            let a = try SQLiteRunStore(path: path)
            let b = try SQLiteRunStore(path: path)
            _ = try await a.commit(StoreCommit(runs: [create(sampleRun("r1"))]))
            #expect(try await b.run("r1") == sampleRun("r1"))
            await #expect { _ = try await b.commit(StoreCommit(runs: [create(sampleRun("r1", version: 5))])) }
                throws: { isStoreError($0, .versionConflict) }
            await #expect { _ = try await b.commit(StoreCommit(runs: [update(sampleRun("r1", version: 5), from: 1)])) }
                throws: { isStoreError($0, .versionConflict) }
        }
    }

    /// Store URLs: absolute and relative sqlite paths; anything else is refused.
    @Test func pathFromURL() throws {
        #expect(try SQLiteRunStore.path(fromURL: "sqlite:///var/lib/rw.sqlite") == "/var/lib/rw.sqlite")
        #expect(try SQLiteRunStore.path(fromURL: "sqlite://data/rw.sqlite") == "data/rw.sqlite")
        #expect(throws: StoreError.self) { try SQLiteRunStore.path(fromURL: "postgres://x/y") }
        #expect(throws: StoreError.self) { try SQLiteRunStore.path(fromURL: "sqlite://") }
    }

    /// Workers on one host share leases through the file: of stores on it racing for a free
    /// partition, exactly one wins, and the others' fenced commits see who holds it.
    @Test func leasesAcrossStoresOnOneFile() async throws {
        try await withFile { (path) async throws in
            let stores = try (0..<4).map { _ in try SQLiteRunStore(path: path) }
            let winners = try await withThrowingTaskGroup(of: PartitionLease?.self) { group in
                for i in 0..<20 {
                    let store = stores[i % stores.count]
                    group.addTask { try await store.acquireLease(partition: 0, workerID: "w\(i)", ttl: 60) }
                }
                var winners: [PartitionLease] = []
                for try await won in group { if let won { winners.append(won) } }
                return winners
            }
            #expect(winners == [PartitionLease(partition: 0, epoch: 1)])
            let owner = try #require(try await stores[1].leases().first?.owner)
            let loser = owner == "w0" ? "w1" : "w0"
            await #expect {
                _ = try await stores[2].commit(StoreCommit(runs: [create(sampleRun("r1"))], fence: (loser, winners)))
            } throws: { isStoreError($0, .leaseLost) }
            _ = try await stores[3].commit(StoreCommit(runs: [create(sampleRun("r1"))], fence: (owner, winners)))
            #expect(try await stores[0].run("r1") != nil)
        }
    }

    /// Without a test clock, leases expire by SQLite's own clock, which is the wall clock to the
    /// millisecond: a lease of 0.2 s is live at once and expired after it.
    @Test func sqliteClockIsWallTime() async throws {
        try await withFile { (path) async throws in
            let store = try SQLiteRunStore(path: path)
            let before = Date().timeIntervalSince1970
            let read = try await store.databaseNow()
            let after = Date().timeIntervalSince1970
            let seconds = Double(read.milliseconds) / 1000
            #expect(seconds >= before - 0.002 && seconds <= after + 0.002)
            _ = try await store.acquireLease(partition: 0, workerID: "a", ttl: 0.2)
            try await Task.sleep(for: .milliseconds(400))
            #expect(try await store.leases().first?.expired == true)
        }
    }

    /// Several openers of a brand-new file at once (workers starting together) all succeed:
    /// the races on WAL mode and on the first migration are retried.
    @Test func concurrentFirstOpen() async throws {
        for _ in 0..<5 {
            try await withFile { (path) async throws in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<4 {
                        group.addTask { _ = try SQLiteRunStore(path: path) }
                    }
                    try await group.waitForAll()
                }
                #expect(try await SQLiteRunStore(path: path).run("x") == nil)
            }
        }
    }

    /// The batch path binds with SQLite's own calls (`SQLiteBinder`); a text is bound up to its
    /// first NUL, as GRDB binds it, so that GRDB's queries and the batch path agree; an empty
    /// text stays a text, not NULL.
    @Test func batchPathBindsTextsAsGRDBDoes() async throws {
        try await withFile { (path) async throws in
            let store = try SQLiteRunStore(path: path)
            _ = try await store.commit(StoreCommit(
                runs: [create(sampleRun("r1", agent: "x\u{0}y")), create(sampleRun("r2", agent: ""))],
                outcomes: [(key("r1", "c\u{0}1"), started)]))
            #expect(try await store.runs(status: nil, agentID: "x\u{0}y", limit: 10).map(\.runID) == ["r1"])
            let snapshot = try await store.load(runIDs: ["r1", "r2"], commands: [key("r1", "c\u{0}1")])
            #expect(snapshot.outcomes[key("r1", "c\u{0}1")] != nil)
            #expect(snapshot.runs["r2"]?.agentID == "")
            let stored = try await rawConnection(path).read { db in
                try Row.fetchAll(db, sql: "SELECT run_id, agent_id, typeof(agent_id) AS kind FROM runs ORDER BY run_id")
                    .map { "\($0["run_id"] as String):\($0["agent_id"] as String):\($0["kind"] as String)" }
            }
            #expect(stored == ["r1:x:text", "r2::text"])
        }
    }

    // MARK: Error codes

    /// A constraint failing inside a commit is `rejected` (a defect, not an outage to wait
    /// out), and the batch writes nothing.
    @Test func constraintFailureIsRejected() async throws {
        try await withFile { (path) async throws in
            let store = try SQLiteRunStore(path: path)
            let earlier = try await store.commit(StoreCommit(outbox: [outboxRow("r0", 1)]))
            try await rawConnection(path).write { db in
                try db.execute(sql: "CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'boom'); END")
            }
            let keys: Set = [key("r1", "c1")]
            let before = try await Contents(store, outcomes: keys)
            let batch = StoreCommit(
                runs: [create(sampleRun("r1"))], outbox: [outboxRow("r1", 1)], outcomes: [(key("r1", "c1"), started)],
                removeOutbox: earlier)
            await #expect { _ = try await store.commit(batch) } throws: { error in
                isStoreError(error, .rejected) && (error as? StoreError)?.isTransient == false
            }
            #expect(try await Contents(store, outcomes: keys) == before)
        }
    }

    /// A stored run that cannot be decoded reads as `corrupt`, by every read that returns runs.
    @Test func undecodableRunIsCorrupt() async throws {
        try await withFile { (path) async throws in
            let store = try SQLiteRunStore(path: path)
            try await rawConnection(path).write { db in
                try db.execute(sql: """
                    INSERT INTO runs (run_id, status, agent_id, version, updated_at_ms, body)
                    VALUES ('bad', 'running', NULL, 1, 0, x'00ff17')
                    """)
            }
            await #expect { _ = try await store.run("bad") } throws: { isStoreError($0, .corrupt) }
            await #expect { _ = try await store.load(runIDs: ["bad"], commands: []) } throws: { isStoreError($0, .corrupt) }
            await #expect { _ = try await store.runs(status: nil, agentID: nil, limit: 10) } throws: { isStoreError($0, .corrupt) }
        }
    }

    /// While another connection holds the write lock past the busy timeout, writes fail as
    /// `unavailable` (transient) and reads still answer (WAL: readers take no lock).
    @Test func busyFileIsUnavailable() async throws {
        try await withFile { (path) async throws in
            let store = try SQLiteRunStore(path: path, busyTimeoutSeconds: 0.05)
            _ = try await store.commit(StoreCommit(runs: [create(sampleRun("r1"))]))
            let blocker = try rawConnection(path)
            try await blocker.writeWithoutTransaction { db in try db.execute(sql: "BEGIN IMMEDIATE") }

            await #expect { _ = try await store.commit(StoreCommit(runs: [create(sampleRun("r2"))])) } throws: { error in
                isStoreError(error, .unavailable) && (error as? StoreError)?.isTransient == true
            }
            await #expect { _ = try await store.recordDeliveryAttempt(key: "m", error: nil, increment: true, at: ms(1)) }
                throws: { isStoreError($0, .unavailable) }
            #expect(try await store.run("r1") == sampleRun("r1"))

            try await blocker.writeWithoutTransaction { db in try db.execute(sql: "ROLLBACK") }
            _ = try await store.commit(StoreCommit(runs: [create(sampleRun("r2"))]))
            #expect(try await store.run("r2") != nil)
        }
    }

    /// Only an outage or a conflict is worth retrying; corrupt, rejected, invalid URLs and a lost
    /// lease are not.
    @Test(arguments: [
        (StoreError.Code.unavailable, true), (.versionConflict, true), (.corrupt, false), (.rejected, false), (.invalidURL, false),
        (.leaseLost, false),
    ])
    func transientCodes(code: StoreError.Code, transient: Bool) {
        #expect(StoreError(code, "x").isTransient == transient)
    }

    /// SQLite's primary result codes map onto the store's: busy and I/O trouble are
    /// `unavailable`, a damaged file `corrupt`, anything else `rejected`.
    @Test(arguments: [
        (ResultCode.SQLITE_BUSY, StoreError.Code.unavailable), (.SQLITE_LOCKED, .unavailable), (.SQLITE_FULL, .unavailable),
        (.SQLITE_IOERR, .unavailable), (.SQLITE_CANTOPEN, .unavailable), (.SQLITE_READONLY, .unavailable),
        (.SQLITE_CORRUPT, .corrupt), (.SQLITE_NOTADB, .corrupt),
        (.SQLITE_CONSTRAINT, .rejected), (.SQLITE_ERROR, .rejected), (.SQLITE_MISMATCH, .rejected), (.SQLITE_TOOBIG, .rejected),
    ])
    func resultCodeMapping(resultCode: ResultCode, code: StoreError.Code) {
        #expect(SQLiteRunStore.storeError(DatabaseError(resultCode: resultCode, message: "m")).code == code)
    }
}
