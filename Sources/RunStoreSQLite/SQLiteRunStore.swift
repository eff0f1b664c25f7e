import Foundation
import GRDB
import RunContract
import RunStore
import RunStorePayloads

/// The embedded store: one SQLite file in WAL mode, shared by every worker process on a
/// host. Reads take no lock; a batch's commit takes SQLite's write lock (`BEGIN IMMEDIATE`)
/// and checks every run's version and every command id inside it, so a writer that read
/// stale data conflicts instead of overwriting. All work runs on GRDB's serial queue, never
/// on the caller's thread.
public final class SQLiteRunStore: RunStore {
    public enum Synchronous: String, Sendable {
        /// Durable against power loss (an fsync per commit).
        case full = "FULL"
        /// Durable against process crashes; the last commits may be lost on power loss.
        case normal = "NORMAL"
    }

    private let queue: DatabaseQueue
    public let path: String
    /// What leases and heartbeats expire by: SQLite's own clock unless a test passes one that
    /// moves only when told (every process sharing the file must read the same clock).
    private let clock: (@Sendable () -> Timestamp)?

    /// Opens (and creates or migrates) the store at `path`. `clock` replaces SQLite's clock for
    /// lease expiry; only tests pass it.
    public init(
        path: String, synchronous: Synchronous = .full, busyTimeoutSeconds: Double = 30,
        clock: (@Sendable () -> Timestamp)? = nil
    ) throws {
        self.path = path
        self.clock = clock
        var config = Configuration()
        config.journalMode = .wal
        config.busyMode = .timeout(busyTimeoutSeconds)
        config.label = "runworker.store"
        // Several processes opening a new file at once race on switching it to WAL (SQLite
        // answers "busy" before the busy handler is in place) and on the first migration (the
        // loser finds the tables already made): retry; the next try sees the finished work.
        var attempt = 0
        while true {
            do {
                let queue = try DatabaseQueue(path: path, configuration: config)
                // After GRDB's WAL set-up, which sets synchronous=NORMAL itself: setting it in
                // prepareDatabase would be silently overridden.
                try queue.writeWithoutTransaction { db in
                    try db.execute(sql: "PRAGMA synchronous = \(synchronous.rawValue)")
                }
                try Self.migrator.migrate(queue)
                self.queue = queue
                break
            } catch is DatabaseError where attempt < 50 {
                attempt += 1
                usleep(UInt32.random(in: 20_000...80_000))
            } catch let error as DatabaseError {
                var e = Self.storeError(error)
                e.message = "cannot open SQLite store at \(path): \(e.message)"
                throw e
            } catch {
                throw StoreError(.unavailable, "cannot open SQLite store at \(path): \(error)")
            }
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE runs (
                        run_id TEXT PRIMARY KEY NOT NULL,
                        status TEXT NOT NULL,
                        agent_id TEXT,
                        version INTEGER NOT NULL,
                        updated_at_ms INTEGER NOT NULL,
                        next_deadline_ms INTEGER,
                        partition INTEGER,
                        body BLOB NOT NULL
                    ) WITHOUT ROWID;
                    CREATE INDEX runs_by_status ON runs(status, updated_at_ms);
                    CREATE INDEX runs_by_agent ON runs(agent_id, updated_at_ms);
                    CREATE INDEX runs_by_update ON runs(updated_at_ms);
                    CREATE INDEX runs_by_deadline ON runs(next_deadline_ms) WHERE next_deadline_ms IS NOT NULL;
                    CREATE TABLE delivery_attempts (
                        message_key TEXT PRIMARY KEY NOT NULL,
                        attempts INTEGER NOT NULL,
                        last_error TEXT,
                        updated_at_ms INTEGER NOT NULL
                    ) WITHOUT ROWID;
                    CREATE TABLE outbox (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        run_id TEXT NOT NULL,
                        seq INTEGER NOT NULL,
                        type TEXT NOT NULL,
                        status TEXT NOT NULL,
                        routing_key TEXT NOT NULL,
                        message_id TEXT NOT NULL,
                        written_at_ms INTEGER NOT NULL,
                        body BLOB NOT NULL
                    );
                    CREATE INDEX outbox_by_run ON outbox(run_id, id);
                    CREATE TABLE commands (
                        run_id TEXT NOT NULL,
                        command_id TEXT NOT NULL,
                        command TEXT,
                        error_code TEXT,
                        error_message TEXT,
                        PRIMARY KEY (run_id, command_id)
                    ) WITHOUT ROWID;
                    """)
        }
        // Membership and partition leases; times are milliseconds since the epoch by SQLite's
        // clock (`now`), never the caller's.
        m.registerMigration("v2") { db in
            try db.execute(
                sql: """
                    CREATE TABLE runworker_workers (
                        worker_id TEXT PRIMARY KEY NOT NULL,
                        expires_at_ms INTEGER NOT NULL
                    ) WITHOUT ROWID;
                    CREATE TABLE runworker_leases (
                        partition INTEGER PRIMARY KEY NOT NULL,
                        owner TEXT,
                        epoch INTEGER NOT NULL,
                        expires_at_ms INTEGER NOT NULL
                    );
                    """)
        }
        // History and retention: the outbox keeps confirmed rows (marked published) as the
        // runs' history; runs know when they were created (the list's order) and command
        // records when they were written (the de-duplication window). Command records written
        // before this migration count as recorded now.
        m.registerMigration("v3") { db in
            try db.execute(
                sql: """
                    ALTER TABLE runs ADD COLUMN created_at_ms INTEGER;
                    UPDATE runs SET created_at_ms = json_extract(CAST(body AS TEXT), '$.created_at');
                    CREATE INDEX runs_by_created ON runs(created_at_ms, run_id);
                    ALTER TABLE outbox ADD COLUMN published INTEGER NOT NULL DEFAULT 0;
                    CREATE INDEX outbox_pending ON outbox(id) WHERE published = 0;
                    ALTER TABLE commands ADD COLUMN recorded_at_ms INTEGER;
                    CREATE INDEX commands_by_time ON commands(recorded_at_ms);
                    """)
            try db.execute(
                sql: "UPDATE commands SET recorded_at_ms = ?",
                arguments: [Timestamp(seconds: Date().timeIntervalSince1970).milliseconds])
        }
        // Large values stored once (`RunStorePayloads`): each run's large values in rows of their
        // own, by digest; run and outbox bodies are stored with them cut out and say where they go
        // back (`body_refs`). Rows written before have no references and read as they are.
        m.registerMigration("v4") { db in
            try db.execute(
                sql: """
                    CREATE TABLE runworker_payloads (
                        run_id TEXT NOT NULL,
                        digest TEXT NOT NULL,
                        body BLOB NOT NULL,
                        PRIMARY KEY (run_id, digest)
                    );
                    ALTER TABLE runs ADD COLUMN body_refs TEXT;
                    ALTER TABLE outbox ADD COLUMN body_refs TEXT;
                    """)
        }
        return m
    }

    // MARK: - The batch path

    public func load(runIDs: Set<String>, commands: Set<CommandKey>) async throws -> StoreSnapshot {
        try await mapErrors { try await queue.read { db in try Self.load(db, runIDs: runIDs, commands: commands) } }
    }

    /// Reads, decides and writes in one IMMEDIATE transaction on GRDB's queue: one hop off the
    /// caller's thread and one transaction (one fsync) per batch.
    public func loadDecideCommit<Decision: Sendable>(
        runIDs: Set<String>, commands: Set<CommandKey>,
        decide: @escaping @Sendable (StoreSnapshot, _ pendingOutbox: [OutboxMessage]) throws -> (StoreCommit, Decision)
    ) async throws -> (outboxIDs: [Int64], decision: Decision) {
        try await writeImmediately { db in
            let snapshot = try Self.load(db, runIDs: runIDs, commands: commands)
            let pending = try Self.pendingOutbox(db, runIDs: Set(snapshot.outcomes.keys.map(\.runID)))
            let (batch, decision) = try decide(snapshot, pending)
            return (try self.write(db, batch), decision)
        }
    }

    static func load(_ db: Database, runIDs: Set<String>, commands: Set<CommandKey>) throws -> StoreSnapshot {
        var snapshot = StoreSnapshot()
        if !runIDs.isEmpty {
            let select = try db.cachedStatement(sql: selectRunSQL)
            for id in runIDs {
                if let run = try Self.loadRun(db, id, select) { snapshot.runs[id] = run }
            }
        }
        let statement = try db.cachedStatement(
            sql: "SELECT command, error_code, error_message FROM commands WHERE run_id = ? AND command_id = ?")
        for key in commands {
            var lookup = SQLiteBinder(db, statement)
            lookup.bind(1, key.runID)
            lookup.bind(2, key.commandID)
            try lookup.query { row in
                let code = row.string(1)
                snapshot.outcomes[key] = CommandOutcome(
                    command: row.string(0), error: code.map { RunError(RunError.Code(rawValue: $0), row.string(2) ?? "") })
                return false
            }
        }
        return snapshot
    }

    static func pendingOutbox(_ db: Database, runIDs: Set<String>) throws -> [OutboxMessage] {
        guard !runIDs.isEmpty else { return [] }
        let statement = try db.cachedStatement(sql: "SELECT * FROM outbox WHERE run_id = ? AND published = 0 ORDER BY id")
        return try runIDs.flatMap { id in try Row.fetchAll(statement, arguments: [id]).map { try Self.outboxMessage(db, $0) } }
            .sorted { $0.id < $1.id }
    }

    /// Writes a checked batch inside the caller's (IMMEDIATE) transaction; returns the outbox ids.
    func write(_ db: Database, _ batch: StoreCommit) throws -> [Int64] {
        guard !batch.isEmpty else { return [] }
        try batch.checkOneWritePerRun()
        // Under the write lock, so no lease can change before this commit ends.
        if let fence = batch.fence, !fence.leases.isEmpty {
            let now = try self.now(db)
            let rows = try Self.leaseRows(db, Set(fence.leases.map(\.partition)))
            try LeaseRow.checkFence(fence, rows: rows, at: now)
        }
        try Self.deleteOutbox(db, batch.removeOutbox)
        var cutter = PayloadCutter()
        try Self.save(db, batch.runs, &cutter)
        if !batch.outcomes.isEmpty {
            let recordedAt = (clock?() ?? Timestamp(seconds: Date().timeIntervalSince1970)).milliseconds
            try Self.recordOutcomes(db, batch.outcomes, at: recordedAt)
        }
        let ids = try Self.appendOutbox(db, batch.outbox, &cutter)
        try Self.savePayloads(db, cutter.payloads)
        return ids
    }

    public func commit(_ batch: StoreCommit) async throws -> [Int64] {
        guard !batch.isEmpty else { return [] }
        try batch.checkOneWritePerRun()
        // IMMEDIATE: take the write lock at BEGIN, so two processes sharing the file queue on
        // the busy timeout instead of failing at their first write.
        return try await writeImmediately { db in try self.write(db, batch) }
    }

    public func pendingOutbox(runIDs: Set<String>) async throws -> [OutboxMessage] {
        try await mapErrors { try await queue.read { db in try Self.pendingOutbox(db, runIDs: runIDs) } }
    }

    /// SQLite's `PRAGMA synchronous` in force on the connection (1 NORMAL, 2 FULL).
    func synchronousLevel() throws -> Int {
        try queue.read { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
    }

    public func run(_ runID: String) async throws -> Run? {
        try await mapErrors { try await queue.read { db in try Self.loadRun(db, runID) } }
    }

    public func runs(status: RunStatus?, agentID: String?, limit: Int) async throws -> [Run] {
        var sql = "SELECT \(Self.runColumns) FROM runs"
        var clauses: [String] = []
        var args: [(any DatabaseValueConvertible)?] = []
        if let status {
            clauses.append("status = ?")
            args.append(status.rawValue)
        }
        if let agentID {
            clauses.append("agent_id = ?")
            args.append(agentID)
        }
        if !clauses.isEmpty { sql += " WHERE " + clauses.joined(separator: " AND ") }
        sql += " ORDER BY updated_at_ms DESC, run_id LIMIT ?"
        args.append(limit)
        let arguments = StatementArguments(args)
        let query = sql
        return try await mapErrors {
            try await queue.read { db in
                try Row.fetchAll(db, sql: query, arguments: arguments).map { try Self.decodeRun(db, $0) }
            }
        }
    }

    public func listRuns(_ q: RunQuery) async throws -> RunPage {
        var clauses: [String] = []
        var args: [(any DatabaseValueConvertible)?] = []
        if !q.statuses.isEmpty {
            clauses.append("status IN (\(q.statuses.map { _ in "?" }.joined(separator: ",")))")
            args += q.statuses.map(\.rawValue)
        }
        if let agent = q.agentID {
            clauses.append("agent_id = ?")
            args.append(agent)
        }
        for (column, op, time) in [
            ("created_at_ms", ">", q.createdAfter), ("created_at_ms", "<", q.createdBefore),
            ("updated_at_ms", ">", q.updatedAfter), ("updated_at_ms", "<", q.updatedBefore),
        ] {
            guard let time else { continue }
            clauses.append("\(column) \(op) ?")
            args.append(time.milliseconds)
        }
        if let after = q.after {
            clauses.append("(created_at_ms < ? OR (created_at_ms = ? AND run_id < ?))")
            args += [after.createdAtMs, after.createdAtMs, after.runID]
        }
        var sql = "SELECT \(Self.runColumns) FROM runs"
        if !clauses.isEmpty { sql += " WHERE " + clauses.joined(separator: " AND ") }
        sql += " ORDER BY created_at_ms DESC, run_id DESC LIMIT ?"
        args.append(q.limit + 1)
        let (query, arguments) = (sql, StatementArguments(args))
        let rows = try await mapErrors {
            try await queue.read { db in
                try Row.fetchAll(db, sql: query, arguments: arguments).map { try Self.decodeRun(db, $0) }
            }
        }
        return RunPage(rows: rows, limit: q.limit)
    }

    public func history(runID: String, afterSeq: Int64, limit: Int) async throws -> [OutboxMessage] {
        try await mapErrors {
            try await queue.read { db in
                try Row.fetchAll(
                    db, sql: "SELECT * FROM outbox WHERE run_id = ? AND seq > ? ORDER BY id LIMIT ?",
                    arguments: [runID, afterSeq, limit]
                ).map { try Self.outboxMessage(db, $0) }
            }
        }
    }

    public func runCounts() async throws -> [RunStatus: Int] {
        try await mapErrors {
            try await queue.read { db in
                var counts: [RunStatus: Int] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT status, count(*) AS n FROM runs GROUP BY status") {
                    if let status = RunStatus(rawValue: row["status"]) { counts[status] = row["n"] }
                }
                return counts
            }
        }
    }

    public func outboxDepth() async throws -> Int {
        try await mapErrors {
            try await queue.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM outbox WHERE published = 0") ?? 0 }
        }
    }

    public func prune(finishedBefore: Timestamp, commandsBefore: Timestamp, limit: Int, commandLimit: Int) async throws -> PruneResult {
        try await writeImmediately { db in
            var result = PruneResult()
            let ids = try String.fetchAll(
                db,
                sql: """
                    SELECT r.run_id FROM runs r WHERE r.status IN ('completed', 'failed', 'cancelled') AND r.updated_at_ms < ?
                        AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.run_id = r.run_id AND o.published = 0)
                    ORDER BY r.updated_at_ms LIMIT ?
                    """, arguments: [finishedBefore.milliseconds, limit])
            let deleteRun = try db.cachedStatement(sql: "DELETE FROM runs WHERE run_id = ?")
            let deleteHistory = try db.cachedStatement(sql: "DELETE FROM outbox WHERE run_id = ?")
            let deletePayloads = try db.cachedStatement(sql: "DELETE FROM runworker_payloads WHERE run_id = ?")
            for id in ids {
                try deleteRun.execute(arguments: [id])
                result.runs += db.changesCount
                try deleteHistory.execute(arguments: [id])
                result.events += db.changesCount
                try deletePayloads.execute(arguments: [id])
            }
            try db.execute(
                sql: """
                    DELETE FROM commands WHERE (run_id, command_id) IN (
                        SELECT run_id, command_id FROM commands WHERE recorded_at_ms < ? ORDER BY recorded_at_ms LIMIT ?)
                    """, arguments: [commandsBefore.milliseconds, commandLimit])
            result.commands += db.changesCount
            return result
        }
    }

    public func pendingOutbox(writtenBefore: Timestamp, partitions: [Int]?, limit: Int) async throws -> [OutboxMessage] {
        if let partitions, partitions.isEmpty { return [] }
        var sql = "SELECT outbox.* FROM outbox"
        if let partitions {
            sql += " JOIN runs ON runs.run_id = outbox.run_id AND runs.partition IN (\(partitions.map(String.init).joined(separator: ",")))"
        }
        sql += " WHERE outbox.published = 0 AND outbox.written_at_ms <= ? ORDER BY outbox.id LIMIT ?"
        let statement = sql
        return try await mapErrors {
            try await queue.read { db in
                try Row.fetchAll(db, sql: statement, arguments: [writtenBefore.milliseconds, limit]).map { try Self.outboxMessage(db, $0) }
            }
        }
    }

    static func outboxMessage(_ db: Database, _ row: Row) throws -> OutboxMessage {
        let runID: String = row["run_id"]
        return OutboxMessage(
            id: row["id"], runID: runID, seq: row["seq"], type: row["type"], status: row["status"],
            routingKey: row["routing_key"], messageID: row["message_id"],
            body: try storedBody(db, runID: runID, bytes: [UInt8](row["body"] as Data), refs: row["body_refs"]),
            writtenAt: Timestamp(milliseconds: row["written_at_ms"]))
    }

    public func removeOutbox(ids: [Int64]) async throws {
        guard !ids.isEmpty else { return }
        try await mapErrors { try await queue.write { db in try Self.deleteOutbox(db, ids) } }
    }

    static func deleteOutbox(_ db: Database, _ ids: [Int64]) throws {
        guard !ids.isEmpty else { return }
        let statement = try db.cachedStatement(sql: "UPDATE outbox SET published = 1 WHERE id = ?")
        for id in ids {
            var update = SQLiteBinder(db, statement)
            update.bind(1, id)
            try update.execute()
        }
    }

    public func runsDue(at time: Timestamp, partitions: [Int]?, limit: Int) async throws -> [String] {
        var sql = "SELECT run_id FROM runs WHERE next_deadline_ms <= ?"
        if let partitions {
            guard !partitions.isEmpty else { return [] }
            sql += " AND partition IN (\(partitions.map(String.init).joined(separator: ",")))"
        }
        sql += " ORDER BY next_deadline_ms, run_id LIMIT ?"
        let query = sql
        return try await mapErrors {
            try await queue.read { db in try String.fetchAll(db, sql: query, arguments: [time.milliseconds, limit]) }
        }
    }

    public func recordDeliveryAttempt(key: String, error: String?, increment: Bool, at time: Timestamp) async throws -> Int {
        try await mapErrors {
            try await queue.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO delivery_attempts (message_key, attempts, last_error, updated_at_ms) VALUES (?, 1, ?, ?)
                        ON CONFLICT(message_key) DO UPDATE SET attempts = attempts + ?,
                            last_error = COALESCE(excluded.last_error, last_error), updated_at_ms = excluded.updated_at_ms
                        """, arguments: [key, error, time.milliseconds, increment ? 1 : 0])
                return try Int.fetchOne(db, sql: "SELECT attempts FROM delivery_attempts WHERE message_key = ?", arguments: [key]) ?? 1
            }
        }
    }

    public func lastDeliveryError(key: String) async throws -> String? {
        try await mapErrors {
            try await queue.read { db in
                try String.fetchOne(db, sql: "SELECT last_error FROM delivery_attempts WHERE message_key = ?", arguments: [key])
            }
        }
    }

    // MARK: - Membership and leases

    public func heartbeat(workerID: String, ttl: Double) async throws -> [String] {
        try checkTTL(ttl)
        return try await writeImmediately { db in
            let now = try self.now(db)
            try db.execute(
                sql: """
                    INSERT INTO runworker_workers (worker_id, expires_at_ms) VALUES (?, ?)
                    ON CONFLICT(worker_id) DO UPDATE SET expires_at_ms = excluded.expires_at_ms
                    """, arguments: [workerID, now.adding(seconds: ttl).milliseconds])
            return try String.fetchAll(
                db, sql: "SELECT worker_id FROM runworker_workers WHERE expires_at_ms > ?", arguments: [now.milliseconds]
            ).sorted()
        }
    }

    public func leave(workerID: String) async throws {
        try await writeImmediately { db in
            try db.execute(sql: "DELETE FROM runworker_workers WHERE worker_id = ?", arguments: [workerID])
        }
    }

    public func acquireLease(partition: Int, workerID: String, ttl: Double) async throws -> PartitionLease? {
        try checkTTL(ttl)
        return try await writeImmediately { db in
            let now = try self.now(db)
            let stored = try Self.leaseRows(db, [partition])[partition]
            guard let row = LeaseRow.acquire(stored, by: workerID, at: now, ttl: ttl) else { return nil }
            try Self.saveLease(db, partition, row)
            return PartitionLease(partition: partition, epoch: row.epoch)
        }
    }

    public func renewLeases(_ leases: [PartitionLease], workerID: String, ttl: Double) async throws -> [PartitionLease] {
        try checkTTL(ttl)
        guard !leases.isEmpty else { return [] }
        return try await writeImmediately { db in
            let now = try self.now(db)
            let rows = try Self.leaseRows(db, Set(leases.map(\.partition)))
            let held = leases.filter { rows[$0.partition]?.holds($0, by: workerID, at: now) == true }
            for lease in held {
                try Self.saveLease(db, lease.partition, LeaseRow(owner: workerID, epoch: lease.epoch, expiresAt: now.adding(seconds: ttl)))
            }
            return held
        }
    }

    public func releaseLease(_ lease: PartitionLease, workerID: String) async throws {
        try await writeImmediately { db in
            let now = try self.now(db)
            try db.execute(
                sql: "UPDATE runworker_leases SET owner = NULL, expires_at_ms = ? WHERE partition = ? AND owner = ? AND epoch = ?",
                arguments: [now.milliseconds, lease.partition, workerID, lease.epoch])
        }
    }

    public func leases() async throws -> [LeaseState] {
        try await mapErrors {
            try await queue.read { db in
                let now = try self.now(db)
                return try Row.fetchAll(db, sql: "SELECT * FROM runworker_leases ORDER BY partition").map { row in
                    let lease = Self.leaseRow(row)
                    return LeaseState(partition: row["partition"], owner: lease.owner, epoch: lease.epoch, expired: !lease.isLive(at: now))
                }
            }
        }
    }

    /// SQLite's clock, to the millisecond. `julianday('now')` is in every SQLite version
    /// (`unixepoch('subsec')` needs 3.42); within one statement it reads the same instant.
    /// The time leases are judged by now (for tests).
    func databaseNow() async throws -> Timestamp {
        try await mapErrors { try await queue.read { db in try self.now(db) } }
    }

    func now(_ db: Database) throws -> Timestamp {
        if let clock { return clock() }
        return Timestamp(
            milliseconds: try Int64.fetchOne(
                db, sql: "SELECT CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)") ?? 0)
    }

    static func leaseRows(_ db: Database, _ partitions: Set<Int>) throws -> [Int: LeaseRow] {
        let statement = try db.cachedStatement(sql: "SELECT * FROM runworker_leases WHERE partition = ?")
        var rows: [Int: LeaseRow] = [:]
        for partition in partitions {
            if let row = try Row.fetchOne(statement, arguments: [partition]) { rows[partition] = leaseRow(row) }
        }
        return rows
    }

    static func leaseRow(_ row: Row) -> LeaseRow {
        LeaseRow(owner: row["owner"], epoch: row["epoch"], expiresAt: Timestamp(milliseconds: row["expires_at_ms"]))
    }

    static func saveLease(_ db: Database, _ partition: Int, _ row: LeaseRow) throws {
        try db.execute(
            sql: """
                INSERT INTO runworker_leases (partition, owner, epoch, expires_at_ms) VALUES (?, ?, ?, ?)
                ON CONFLICT(partition) DO UPDATE SET owner = excluded.owner, epoch = excluded.epoch,
                    expires_at_ms = excluded.expires_at_ms
                """, arguments: [partition, row.owner, row.epoch, row.expiresAt.milliseconds])
    }

    /// Runs `body` in a transaction that takes SQLite's write lock at BEGIN (`IMMEDIATE`), so
    /// that what it reads cannot change before it writes, in this process or another.
    private func writeImmediately<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await mapErrors {
            try await queue.writeWithoutTransaction { db in
                var result: T?
                try db.inTransaction(.immediate) {
                    result = try body(db)
                    return .commit
                }
                return result!
            }
        }
    }

    // MARK: - Rows

    // The batch path's statements are looked up once per batch, not per row: GRDB's cache is
    // keyed by the SQL text, hashed at every lookup.
    static let selectRunSQL = "SELECT body, body_refs FROM runs WHERE run_id = ?"
    /// What a run is read from: its body and where its payloads go back.
    static let runColumns = "run_id, body, body_refs"

    static func loadRun(_ db: Database, _ runID: String, _ statement: Statement? = nil) throws -> Run? {
        var select = SQLiteBinder(db, try statement ?? db.cachedStatement(sql: selectRunSQL))
        select.bind(1, runID)
        var stored: (body: [UInt8], refs: String?)?
        try select.query { row in
            stored = (row.bytes(0), row.string(1))
            return false
        }
        guard let stored else { return nil }
        return try decodeRun(storedBody(db, runID: runID, bytes: stored.body, refs: stored.refs))
    }

    /// A run from a row of `runColumns`.
    static func decodeRun(_ db: Database, _ row: Row) throws -> Run {
        try decodeRun(storedBody(db, runID: row["run_id"], bytes: [UInt8](row["body"] as Data), refs: row["body_refs"]))
    }

    /// A body as written: `bytes` with the run's payloads spliced back where `refs` says
    /// (`bytes` as they are when there are none).
    static func storedBody(_ db: Database, runID: String, bytes: [UInt8], refs text: String?) throws -> [UInt8] {
        let refs = try StoredBody.decodeRefs(text)
        guard !refs.isEmpty else { return bytes }
        let select = try db.cachedStatement(sql: "SELECT body FROM runworker_payloads WHERE run_id = ? AND digest = ?")
        var payloads: [String: [UInt8]] = [:]
        for digest in Set(refs.map(\.digest)) {
            var lookup = SQLiteBinder(db, select)
            lookup.bind(1, runID)
            lookup.bind(2, digest)
            try lookup.query { row in
                payloads[digest] = row.bytes(0)
                return false
            }
        }
        return try StoredBody(bytes: bytes, refs: refs).spliced(payloads)
    }

    static func decodeRun(_ bytes: [UInt8]) throws -> Run {
        do {
            return try Run.decodeStorage(bytes)
        } catch {
            throw StoreError(.corrupt, "stored run cannot be decoded: \(error)")
        }
    }

    /// Maps GRDB's errors onto the store's codes: only what may pass by itself (busy, locked,
    /// out of space, I/O) is `unavailable` and retried; a damaged file is `corrupt`; anything
    /// else (a constraint, a malformed statement) is `rejected`, a defect to report rather than
    /// an outage to wait out.
    static func storeError(_ error: DatabaseError) -> StoreError {
        let text = error.message ?? "\(error.resultCode)"
        switch error.resultCode {
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            return StoreError(.unavailable, "SQLite is busy: \(text)")
        case .SQLITE_FULL, .SQLITE_IOERR, .SQLITE_CANTOPEN, .SQLITE_NOMEM, .SQLITE_PROTOCOL, .SQLITE_READONLY:
            return StoreError(.unavailable, "SQLite cannot write now: \(text)")
        case .SQLITE_CORRUPT, .SQLITE_NOTADB:
            return StoreError(.corrupt, "SQLite file is damaged: \(text)")
        default:
            return StoreError(.rejected, "SQLite refused the statement: \(text)")
        }
    }

    private func mapErrors<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as DatabaseError {
            throw Self.storeError(error)
        }
    }

    /// Writes each run, version-checked (an update) or new (an insert), with its large values
    /// cut out by `cutter`.
    static func save(_ db: Database, _ writes: [RunWrite], _ cutter: inout PayloadCutter) throws {
        guard !writes.isEmpty else { return }
        let updateRun = try db.cachedStatement(
            sql: """
                UPDATE runs SET status = ?, agent_id = ?, version = ?, updated_at_ms = ?,
                    next_deadline_ms = ?, partition = COALESCE(?, partition), body = ?, body_refs = ?
                WHERE run_id = ? AND version = ?
                """)
        let insertRun = try db.cachedStatement(
            sql: """
                INSERT INTO runs (run_id, status, agent_id, version, updated_at_ms, next_deadline_ms, partition, body, created_at_ms, body_refs)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO NOTHING
                """)
        for write in writes {
            let run = write.run
            // A terminal run has no timer left.
            let nextDeadline = run.status.isTerminal ? nil : write.nextDeadline
            let body = cutter.cutRun(run)
            if let previousVersion = write.previousVersion {
                var update = SQLiteBinder(db, updateRun)
                update.bind(1, run.status.rawValue)
                update.bind(2, run.agentID)
                update.bind(3, run.version)
                update.bind(4, run.updatedAt.milliseconds)
                update.bind(5, nextDeadline?.milliseconds)
                update.bind(6, write.partition)
                update.bind(7, body.bytes)
                update.bind(8, body.encodedRefs)
                update.bind(9, run.runID)
                update.bind(10, previousVersion)
                try update.execute()
                if db.changesCount != 1 {
                    throw StoreError(.versionConflict, "run \(run.runID) is no longer at version \(previousVersion)")
                }
            } else {
                var insert = SQLiteBinder(db, insertRun)
                insert.bind(1, run.runID)
                insert.bind(2, run.status.rawValue)
                insert.bind(3, run.agentID)
                insert.bind(4, run.version)
                insert.bind(5, run.updatedAt.milliseconds)
                insert.bind(6, nextDeadline?.milliseconds)
                insert.bind(7, write.partition)
                insert.bind(8, body.bytes)
                insert.bind(9, run.createdAt.milliseconds)
                insert.bind(10, body.encodedRefs)
                try insert.execute()
                if db.changesCount != 1 {
                    throw StoreError(.versionConflict, "run \(run.runID) was created by another writer")
                }
            }
        }
    }

    static func recordOutcomes(_ db: Database, _ outcomes: [(key: CommandKey, outcome: CommandOutcome)], at recordedAt: Int64) throws {
        let statement = try db.cachedStatement(
            sql: """
                INSERT INTO commands (run_id, command_id, command, error_code, error_message, recorded_at_ms)
                VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING
                """)
        for (key, outcome) in outcomes {
            var insert = SQLiteBinder(db, statement)
            insert.bind(1, key.runID)
            insert.bind(2, key.commandID)
            insert.bind(3, outcome.command)
            insert.bind(4, outcome.error?.code.rawValue)
            insert.bind(5, outcome.error?.message)
            insert.bind(6, recordedAt)
            try insert.execute()
            if db.changesCount != 1 {
                throw StoreError(.versionConflict, "command \(key.commandID) of run \(key.runID) was recorded by another writer")
            }
        }
    }

    /// Appends the rows with the large values of their runs cut out by `cutter`.
    static func appendOutbox(_ db: Database, _ messages: [OutboxMessage], _ cutter: inout PayloadCutter) throws -> [Int64] {
        let statement = try db.cachedStatement(
            sql: """
                INSERT INTO outbox (run_id, seq, type, status, routing_key, message_id, written_at_ms, body, body_refs)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
        var ids: [Int64] = []
        ids.reserveCapacity(messages.count)
        for m in messages {
            var insert = SQLiteBinder(db, statement)
            insert.bind(1, m.runID)
            insert.bind(2, m.seq)
            insert.bind(3, m.type)
            insert.bind(4, m.status)
            insert.bind(5, m.routingKey)
            insert.bind(6, m.messageID)
            insert.bind(7, m.writtenAt.milliseconds)
            let body = cutter.cut(m.body, runID: m.runID)
            insert.bind(8, body.bytes)
            insert.bind(9, body.encodedRefs)
            try insert.execute()
            ids.append(db.lastInsertedRowID)
        }
        return ids
    }

    /// Keeps each payload a cut body refers to; one already kept (the same bytes, written by an
    /// earlier transition of the run) is left as it is.
    static func savePayloads(_ db: Database, _ payloads: [Payload]) throws {
        guard !payloads.isEmpty else { return }
        let statement = try db.cachedStatement(
            sql: "INSERT INTO runworker_payloads (run_id, digest, body) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
        for payload in payloads {
            var insert = SQLiteBinder(db, statement)
            insert.bind(1, payload.runID)
            insert.bind(2, payload.digest)
            insert.bind(3, payload.bytes)
            try insert.execute()
        }
    }

    // MARK: - For tests

    /// How many payload rows the store keeps for a run.
    func payloadRows(of runID: String) async throws -> Int {
        try await mapErrors {
            try await queue.read { db in
                try Int.fetchOne(db, sql: "SELECT count(*) FROM runworker_payloads WHERE run_id = ?", arguments: [runID]) ?? 0
            }
        }
    }

    /// Moves the write-ahead log into the file and empties it, so that the file's size is the store's.
    func checkpoint() async throws {
        try await mapErrors {
            try await queue.writeWithoutTransaction { db in _ = try Row.fetchAll(db, sql: "PRAGMA wal_checkpoint(TRUNCATE)") }
        }
    }
}
