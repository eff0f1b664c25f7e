import Foundation
import Logging
import NIOSSL
import PostgresNIO
import RunContract
import RunStore
import RunStorePayloads
import ServiceLifecycle
import Synchronization

/// The multi-host store: one PostgreSQL database shared by workers on any number of hosts,
/// through postgres-nio's `PostgresClient` (a connection pool; `run()` it as a `Service`).
///
/// Same contract as every store (see `RunStore`): `load` reads without locks; `commit` is one
/// call of a server-side function, `runworker_commit` (`runworker_commit_fenced` when the batch
/// carries a fence), that writes the whole batch in one statement's transaction with every run
/// version and command id checked, and raises `RW409` on a conflict (`RW410` when a fence's
/// lease is lost) so that nothing is written. postgres-nio does not pipeline queries on a
/// connection, so a batch costs round trips, not rows: one for `commit`, two for `load`.
public final class PostgresRunStore: RunStore, Service {
    public let location: String
    /// The schema the tables live in (`?schema=` in the URL), created when missing; nil: the
    /// database's default search path.
    public let schema: String?
    let client: PostgresClient
    let logger: Logger
    /// Round trips to the database since start, for the benchmark.
    private let roundTripCounter = RoundTripCounter()

    /// Creates the store; nothing connects until `run()` runs and `prepare()` migrates.
    public init(url: String, logger: Logger = Logger(label: "runworker.postgres")) throws {
        self.location = StoreLocation.redacted(url)
        self.logger = logger
        let (configuration, schema) = try Self.configuration(url: url)
        self.schema = schema
        self.client = PostgresClient(configuration: configuration, backgroundLogger: logger)
    }

    /// Runs the connection pool until the task is cancelled (as a `Service` in the worker's group).
    public func run() async throws {
        await client.run()
    }

    public var roundTrips: Int { roundTripCounter.value }

    /// Parses `postgres://user:password@host:port/database?sslmode=disable|prefer|require&schema=name`.
    static func configuration(url: String) throws(StoreError) -> (PostgresClient.Configuration, schema: String?) {
        guard let c = URLComponents(string: url), c.scheme == "postgres" || c.scheme == "postgresql",
            let host = c.host, !host.isEmpty
        else {
            throw StoreError(.invalidURL, "not a postgres:// URL with a host: \(StoreLocation.redacted(url))")
        }
        let database = c.path.hasPrefix("/") ? String(c.path.dropFirst()) : c.path
        let sslmode = c.queryItems?.first { $0.name == "sslmode" }?.value ?? "prefer"
        let tls: PostgresClient.Configuration.TLS
        switch sslmode {
        case "disable": tls = .disable
        case "allow", "prefer":
            var t = TLSConfiguration.makeClientConfiguration()
            t.certificateVerification = .none
            tls = .prefer(t)
        case "require":
            var t = TLSConfiguration.makeClientConfiguration()
            t.certificateVerification = .none
            tls = .require(t)
        case "verify-ca", "verify-full":
            tls = .require(.makeClientConfiguration())
        default:
            throw StoreError(.invalidURL, "sslmode must be disable, allow, prefer, require, verify-ca or verify-full, not \(sslmode)")
        }
        var config = PostgresClient.Configuration(
            host: host, port: c.port ?? 5432, username: c.user ?? "postgres", password: c.password,
            database: database.isEmpty ? nil : database, tls: tls)
        config.options.maximumConnections = 8
        config.options.connectTimeout = .seconds(5)
        let schema = c.queryItems?.first { $0.name == "schema" }?.value
        if let schema {
            guard !schema.isEmpty, schema.utf8.count <= 63,
                schema.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F })
            else {
                throw StoreError(.invalidURL, "schema must be 1 to 63 characters of a-z, 0-9 and _")
            }
            config.options.additionalStartupParameters = [("search_path", schema)]
        }
        return (config, schema)
    }

    // MARK: - Schema

    /// Creates or migrates the schema. Safe when several workers start at once: migrations run
    /// under a transaction-scoped advisory lock, and each step is recorded. The lock is the
    /// schema's own, so stores in other schemas of the database never wait for each other.
    public func prepare() async throws {
        try await migrate(through: Self.migrations.count)
    }

    /// Applies the migrations up to `last` (1-based) that the schema lacks (tests stop early to
    /// write rows as an older version did).
    func migrate(through last: Int) async throws {
        let lockName = "runworker:" + (schema ?? "")
        try await mapErrors {
            try await client.withTransaction(logger: logger) { conn in
                try await conn.query("SELECT pg_advisory_xact_lock(720834, hashtext(\(lockName)))", logger: logger)
                if let schema {
                    try await conn.query(PostgresQuery(unsafeSQL: "CREATE SCHEMA IF NOT EXISTS \(schema)"), logger: logger)
                }
                try await conn.query("CREATE TABLE IF NOT EXISTS runworker_schema (version bigint NOT NULL)", logger: logger)
                var current: Int64 = 0
                for try await v in try await conn.query("SELECT max(version) FROM runworker_schema", logger: logger)
                    .decode(Int64?.self)
                {
                    current = v ?? 0
                }
                for (index, statements) in Self.migrations.prefix(last).enumerated() where Int64(index + 1) > current {
                    for sql in statements { try await conn.query(PostgresQuery(unsafeSQL: sql), logger: logger) }
                    try await conn.query("INSERT INTO runworker_schema (version) VALUES (\(Int64(index + 1)))", logger: logger)
                }
            }
        }
    }

    /// `runworker_commit` as first created; later versions are derived from it (below).
    static let commitFunctionV1 =
            """
            CREATE FUNCTION runworker_commit(
                remove_ids bigint[],
                r_id text[], r_prev bigint[], r_status text[], r_agent text[], r_agent_null bool[], r_version bigint[],
                r_updated bigint[], r_deadline bigint[], r_partition bigint[], r_body text[],
                c_run text[], c_id text[], c_command text[], c_code text[], c_message text[],
                o_run text[], o_seq bigint[], o_type text[], o_status text[], o_key text[], o_message_id text[],
                o_written bigint[], o_body text[]
            ) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
            DECLARE
                n bigint;
                expected bigint;
            BEGIN
                DELETE FROM outbox WHERE id = ANY(remove_ids);

                UPDATE runs SET status = u.status, agent_id = CASE WHEN u.agent_null THEN NULL ELSE u.agent END,
                    version = u.version, updated_at_ms = u.updated, next_deadline_ms = NULLIF(u.deadline, -1),
                    partition = COALESCE(NULLIF(u.part, -1), runs.partition), body = u.body
                FROM unnest(r_id, r_prev, r_status, r_agent, r_agent_null, r_version, r_updated, r_deadline, r_partition, r_body)
                    AS u(id, prev, status, agent, agent_null, version, updated, deadline, part, body)
                WHERE u.prev >= 0 AND runs.run_id = u.id AND runs.version = u.prev;
                GET DIAGNOSTICS n = ROW_COUNT;
                SELECT count(*) INTO expected FROM unnest(r_prev) AS p(prev) WHERE p.prev >= 0;
                IF n <> expected THEN
                    RAISE EXCEPTION 'a run changed since it was read' USING ERRCODE = 'RW409';
                END IF;

                INSERT INTO runs (run_id, status, agent_id, version, updated_at_ms, next_deadline_ms, partition, body)
                SELECT u.id, u.status, CASE WHEN u.agent_null THEN NULL ELSE u.agent END, u.version, u.updated,
                    NULLIF(u.deadline, -1), NULLIF(u.part, -1), u.body
                FROM unnest(r_id, r_prev, r_status, r_agent, r_agent_null, r_version, r_updated, r_deadline, r_partition, r_body)
                    AS u(id, prev, status, agent, agent_null, version, updated, deadline, part, body)
                WHERE u.prev < 0
                ON CONFLICT (run_id) DO NOTHING;
                GET DIAGNOSTICS n = ROW_COUNT;
                SELECT count(*) INTO expected FROM unnest(r_prev) AS p(prev) WHERE p.prev < 0;
                IF n <> expected THEN
                    RAISE EXCEPTION 'a run was created by another writer' USING ERRCODE = 'RW409';
                END IF;

                INSERT INTO commands (run_id, command_id, command, error_code, error_message)
                SELECT c.run, c.id, NULLIF(c.command, ''), NULLIF(c.code, ''), CASE WHEN c.code = '' THEN NULL ELSE c.message END
                FROM unnest(c_run, c_id, c_command, c_code, c_message) AS c(run, id, command, code, message)
                ON CONFLICT DO NOTHING;
                GET DIAGNOSTICS n = ROW_COUNT;
                IF n <> coalesce(array_length(c_run, 1), 0) THEN
                    RAISE EXCEPTION 'a command id was recorded by another writer' USING ERRCODE = 'RW409';
                END IF;

                RETURN QUERY
                INSERT INTO outbox (run_id, seq, type, status, routing_key, message_id, written_at_ms, body)
                SELECT o.run, o.seq, o.type, o.status, o.key, o.message_id, o.written, o.body
                FROM unnest(o_run, o_seq, o_type, o_status, o_key, o_message_id, o_written, o_body)
                    WITH ORDINALITY AS o(run, seq, type, status, key, message_id, written, body, ord)
                ORDER BY o.ord
                RETURNING id;
            END
            $$
            """

    /// `runworker_commit_fenced` as first created (migration 2): `runworker_commit`'s arguments,
    /// then a fence.
    static let commitFencedFunctionV2 =
            """
            CREATE FUNCTION runworker_commit_fenced(
                bigint[], text[], bigint[], text[], text[], bool[], bigint[], bigint[], bigint[], bigint[], text[],
                text[], text[], text[], text[], text[],
                text[], bigint[], text[], text[], text[], text[], bigint[], text[],
                f_worker text, f_partition bigint[], f_epoch bigint[]
            ) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
            DECLARE
                held bigint;
            BEGIN
                SELECT count(*) INTO held FROM (
                    SELECT l.partition FROM runworker_leases l
                    JOIN unnest(f_partition, f_epoch) AS f(part, epoch) ON l.partition = f.part AND l.epoch = f.epoch
                    WHERE l.owner = f_worker AND l.expires_at > clock_timestamp()
                    ORDER BY l.partition
                    FOR SHARE OF l
                ) AS locked;
                IF held <> coalesce(array_length(f_partition, 1), 0) THEN
                    RAISE EXCEPTION 'a partition lease is no longer held' USING ERRCODE = 'RW410';
                END IF;
                RETURN QUERY SELECT runworker_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                    $16, $17, $18, $19, $20, $21, $22, $23, $24);
            END
            $$
            """

    /// Migration 4, large values stored once (see `RunStorePayloads`): `runworker_commit` also
    /// takes each run's and outbox row's payload references (`r_refs`, `o_refs`; '' for none) and
    /// the payloads they refer to (`p_run`, `p_digest`, `p_body`), kept once per (run, digest).
    /// A new overload: the version 3 functions stay for workers not yet stopped.
    static let commitFunctionV4 = {
        let v4 = commitFunctionV3
            .replacingOccurrences(
                of: "o_written bigint[], o_body text[]\n",
                with: "o_written bigint[], o_body text[],\n    r_refs text[], o_refs text[], p_run text[], p_digest text[], p_body text[]\n")
            .replacingOccurrences(of: "r_partition, r_body)", with: "r_partition, r_body, r_refs)")
            .replacingOccurrences(of: "deadline, part, body)", with: "deadline, part, body, refs)")
            .replacingOccurrences(of: "runs.partition), body = u.body", with: "runs.partition), body = u.body, body_refs = NULLIF(u.refs, '')")
            .replacingOccurrences(of: "partition, body, created_at_ms)", with: "partition, body, created_at_ms, body_refs)")
            .replacingOccurrences(of: "\(createdAtOfBody("u.body"))\n", with: "\(createdAtOfBody("u.body")), NULLIF(u.refs, '')\n")
            .replacingOccurrences(
                of: "RETURN QUERY\n",
                with: "INSERT INTO runworker_payloads (run_id, digest, body)\n"
                    + "    SELECT * FROM unnest(p_run, p_digest, p_body) ON CONFLICT DO NOTHING;\n\n    RETURN QUERY\n")
            .replacingOccurrences(of: "message_id, written_at_ms, body)", with: "message_id, written_at_ms, body, body_refs)")
            .replacingOccurrences(of: "o.written, o.body\n", with: "o.written, o.body, NULLIF(o.refs, '')\n")
            .replacingOccurrences(of: "o_written, o_body)", with: "o_written, o_body, o_refs)")
            .replacingOccurrences(of: "written, body, ord)", with: "written, body, refs, ord)")
        precondition(
            v4.components(separatedBy: "u.refs").count == 3 && v4.components(separatedBy: "r_refs)").count == 3
                && v4.contains("NULLIF(o.refs, '')") && v4.contains("o_body, o_refs)") && v4.contains("body, refs, ord)")
                && v4.contains("INSERT INTO runworker_payloads") && v4.contains("p_body text[]\n"),
            "runworker_commit v4 not derived")
        return v4
    }()

    /// Migration 4's `runworker_commit_fenced`: the fence after `runworker_commit`'s v4 arguments.
    static let commitFencedFunctionV4 = {
        let v4 = commitFencedFunctionV2
            .replacingOccurrences(of: "bigint[], text[],\n    f_worker", with: "bigint[], text[],\n    text[], text[], text[], text[], text[],\n    f_worker")
            .replacingOccurrences(of: "$23, $24);", with: "$23, $24,\n        $25, $26, $27, $28, $29);")
        precondition(v4.contains("$28, $29);") && v4.contains("text[], text[], text[], text[], text[],\n    f_worker"), "runworker_commit_fenced v4 not derived")
        return v4
    }()

    /// The top-level `created_at` of a stored run body, in SQL. Not through jsonb: jsonb
    /// refuses `\u0000`, which the contract allows in a run's input. The greedy match takes the
    /// last `"created_at":` of the text, which is the top-level one (it comes after every
    /// nested value in the storage form), and a JSON string cannot hold that text unescaped.
    static func createdAtOfBody(_ column: String) -> String {
        "substring(\(column) from '.*\"created_at\":(-?[0-9]+)')::bigint"
    }

    /// Migration 3: confirmed outbox rows stay as history (marked published), and a new run
    /// records its creation time (from the stored body, read once at insert).
    static let commitFunctionV3 = {
        let v3 = commitFunctionV1
            .replacingOccurrences(of: "CREATE FUNCTION", with: "CREATE OR REPLACE FUNCTION")
            .replacingOccurrences(
                of: "DELETE FROM outbox WHERE id = ANY(remove_ids);",
                with: "UPDATE outbox SET published = true WHERE id = ANY(remove_ids) AND NOT published;")
            .replacingOccurrences(
                of: "INSERT INTO runs (run_id, status, agent_id, version, updated_at_ms, next_deadline_ms, partition, body)",
                with: "INSERT INTO runs (run_id, status, agent_id, version, updated_at_ms, next_deadline_ms, partition, body, created_at_ms)")
            .replacingOccurrences(
                of: "NULLIF(u.deadline, -1), NULLIF(u.part, -1), u.body\n",
                with: "NULLIF(u.deadline, -1), NULLIF(u.part, -1), u.body, \(createdAtOfBody("u.body"))\n")
        precondition(v3.contains("SET published = true") && v3.contains("u.body, substring("), "runworker_commit v3 not derived")
        return v3
    }()

    /// Each migration is a list of statements (postgres-nio runs one statement per query).
    static let migrations: [[String]] = [
        [
            """
            CREATE TABLE runs (
                run_id text PRIMARY KEY, status text NOT NULL, agent_id text, version bigint NOT NULL,
                updated_at_ms bigint NOT NULL, next_deadline_ms bigint, partition bigint, body text NOT NULL)
            """,
            "CREATE INDEX runs_by_status ON runs (status, updated_at_ms)",
            "CREATE INDEX runs_by_agent ON runs (agent_id, updated_at_ms)",
            "CREATE INDEX runs_by_update ON runs (updated_at_ms)",
            "CREATE INDEX runs_by_deadline ON runs (next_deadline_ms) WHERE next_deadline_ms IS NOT NULL",
            """
            CREATE TABLE delivery_attempts (
                message_key text PRIMARY KEY, attempts bigint NOT NULL, last_error text, updated_at_ms bigint NOT NULL)
            """,
            """
            CREATE TABLE outbox (
                id bigserial PRIMARY KEY, run_id text NOT NULL, seq bigint NOT NULL, type text NOT NULL,
                status text NOT NULL, routing_key text NOT NULL, message_id text NOT NULL,
                written_at_ms bigint NOT NULL, body text NOT NULL)
            """,
            "CREATE INDEX outbox_by_run ON outbox (run_id, id)",
            """
            CREATE TABLE commands (
                run_id text NOT NULL, command_id text NOT NULL, command text, error_code text, error_message text,
                PRIMARY KEY (run_id, command_id))
            """,
            // One batch, one statement: deletions of confirmed outbox rows, version-checked run
            // updates, run inserts, command outcomes, outbox rows (ids returned in order).
            // Nullable values travel as sentinels (-1, '') because arrays carry no NULLs here.
            commitFunctionV1,
        ],
        // Membership and partition leases, expiring by the server's clock; a fenced commit.
        [
            "CREATE TABLE runworker_workers (worker_id text PRIMARY KEY, expires_at timestamptz NOT NULL)",
            """
            CREATE TABLE runworker_leases (
                partition bigint PRIMARY KEY, owner text, epoch bigint NOT NULL, expires_at timestamptz NOT NULL)
            """,
            // runworker_commit's arguments, then a fence: each (f_partition[i], f_epoch[i]) must
            // be held by f_worker and unexpired. The lease rows stay locked FOR SHARE until the
            // commit ends (Temporal's range_id check), so a worker taking the partition waits for
            // this commit and then bumps the epoch: no write of the old owner lands after it.
            // Rows are locked in partition order, as renewals lock them, so the two cannot
            // deadlock. Callers pass each lease once.
            commitFencedFunctionV2,
        ],
        // History and retention (see SQLiteRunStore's v3). Command records written before
        // count as recorded at the migration.
        [
            "ALTER TABLE runs ADD COLUMN created_at_ms bigint",
            "UPDATE runs SET created_at_ms = \(createdAtOfBody("body"))",
            "CREATE INDEX runs_by_created ON runs (created_at_ms, run_id)",
            "ALTER TABLE outbox ADD COLUMN published boolean NOT NULL DEFAULT false",
            "CREATE INDEX outbox_pending ON outbox (id) WHERE NOT published",
            "ALTER TABLE commands ADD COLUMN recorded_at_ms bigint NOT NULL DEFAULT (extract(epoch FROM now()) * 1000)::bigint",
            "CREATE INDEX commands_by_time ON commands (recorded_at_ms)",
            commitFunctionV3,
        ],
        // Large values stored once (see SQLiteRunStore's v4): payload rows, and the references
        // that run and outbox bodies keep to them. Rows written before have none.
        [
            """
            CREATE TABLE runworker_payloads (
                run_id text NOT NULL, digest text NOT NULL, body text NOT NULL, PRIMARY KEY (run_id, digest))
            """,
            "ALTER TABLE runs ADD COLUMN body_refs text",
            "ALTER TABLE outbox ADD COLUMN body_refs text",
            commitFunctionV4,
            commitFencedFunctionV4,
        ],
    ]

    // MARK: - The batch path

    public func load(runIDs: Set<String>, commands: Set<CommandKey>) async throws -> StoreSnapshot {
        try await mapErrors {
            var snapshot = StoreSnapshot()
            if !runIDs.isEmpty {
                let ids = Array(runIDs)
                for run in try await runRows("SELECT \(unescaped: Self.runColumns) WHERE r.run_id = ANY(\(ids)::text[])") {
                    snapshot.runs[run.runID] = run
                }
            }
            if !commands.isEmpty {
                let keys = Array(commands)
                let runs = keys.map(\.runID)
                let ids = keys.map(\.commandID)
                for try await (run, id, command, code, message) in try await query(
                    """
                    SELECT c.run_id, c.command_id, c.command, c.error_code, c.error_message
                    FROM commands c JOIN unnest(\(runs)::text[], \(ids)::text[]) AS k(run_id, command_id)
                        ON c.run_id = k.run_id AND c.command_id = k.command_id
                    """
                ).decode((String, String, String?, String?, String?).self) {
                    snapshot.outcomes[CommandKey(runID: run, commandID: id)] = CommandOutcome(
                        command: command, error: code.map { RunError(RunError.Code(rawValue: $0), message ?? "") })
                }
            }
            return snapshot
        }
    }

    public func commit(_ batch: StoreCommit) async throws -> [Int64] {
        guard !batch.isEmpty else { return [] }
        try batch.checkOneWritePerRun()
        let runs = batch.runs
        let outcomes = batch.outcomes
        let outbox = batch.outbox
        var cutter = PayloadCutter()
        let runBodies = runs.map { cutter.cutRun($0.run) }
        let outboxBodies = outbox.map { cutter.cut($0.body, runID: $0.runID) }
        var binds = PostgresBindings(capacity: 32)
        binds.append(batch.removeOutbox)
        binds.append(runs.map(\.run.runID))
        binds.append(runs.map { $0.previousVersion ?? -1 })
        binds.append(runs.map(\.run.status.rawValue))
        binds.append(runs.map { $0.run.agentID ?? "" })
        binds.append(runs.map { $0.run.agentID == nil })
        binds.append(runs.map(\.run.version))
        binds.append(runs.map(\.run.updatedAt.milliseconds))
        binds.append(runs.map { $0.run.status.isTerminal ? -1 : ($0.nextDeadline?.milliseconds ?? -1) })
        binds.append(runs.map { Int64($0.partition ?? -1) })
        binds.append(runBodies.map { String(decoding: $0.bytes, as: UTF8.self) })
        binds.append(outcomes.map(\.key.runID))
        binds.append(outcomes.map(\.key.commandID))
        binds.append(outcomes.map { $0.outcome.command ?? "" })
        binds.append(outcomes.map { $0.outcome.error?.code.rawValue ?? "" })
        binds.append(outcomes.map { $0.outcome.error?.message ?? "" })
        binds.append(outbox.map(\.runID))
        binds.append(outbox.map(\.seq))
        binds.append(outbox.map(\.type))
        binds.append(outbox.map(\.status))
        binds.append(outbox.map(\.routingKey))
        binds.append(outbox.map(\.messageID))
        binds.append(outbox.map(\.writtenAt.milliseconds))
        binds.append(outboxBodies.map { String(decoding: $0.bytes, as: UTF8.self) })
        binds.append(runBodies.map { $0.encodedRefs ?? "" })
        binds.append(outboxBodies.map { $0.encodedRefs ?? "" })
        binds.append(cutter.payloads.map(\.runID))
        binds.append(cutter.payloads.map(\.digest))
        binds.append(cutter.payloads.map { String(decoding: $0.bytes, as: UTF8.self) })
        var types = Self.commitArgumentTypes
        var function = "runworker_commit"
        if let fence = batch.fence, !fence.leases.isEmpty {
            // Each lease once: the function counts the rows it locks.
            let leases = Array(Set(fence.leases))
            binds.append(fence.workerID)
            binds.append(leases.map { Int64($0.partition) })
            binds.append(leases.map(\.epoch))
            types += ["text", "bigint[]", "bigint[]"]
            function = "runworker_commit_fenced"
        }
        let arguments = types.enumerated().map { "$\($0.offset + 1)::\($0.element)" }
        let sql = "SELECT \(function)(\(arguments.joined(separator: ", ")))"
        return try await mapErrors {
            var ids: [Int64] = []
            ids.reserveCapacity(outbox.count)
            for try await id in try await query(PostgresQuery(unsafeSQL: sql, binds: binds)).decode(Int64.self) {
                ids.append(id)
            }
            // bigserial hands out ids in insertion order, which follows the ordinality.
            return ids.sorted()
        }
    }

    /// The types of `runworker_commit`'s arguments, in order.
    static let commitArgumentTypes = [
        "bigint[]", "text[]", "bigint[]", "text[]", "text[]", "bool[]", "bigint[]", "bigint[]", "bigint[]", "bigint[]", "text[]",
        "text[]", "text[]", "text[]", "text[]", "text[]",
        "text[]", "bigint[]", "text[]", "text[]", "text[]", "text[]", "bigint[]", "text[]",
        "text[]", "text[]", "text[]", "text[]", "text[]",
    ]

    public func pendingOutbox(runIDs: Set<String>) async throws -> [OutboxMessage] {
        guard !runIDs.isEmpty else { return [] }
        let ids = Array(runIDs)
        return try await outboxRows(
            "SELECT \(unescaped: Self.outboxColumns) WHERE o.run_id = ANY(\(ids)::text[]) AND NOT o.published ORDER BY o.id")
    }

    public func pendingOutbox(writtenBefore: Timestamp, partitions: [Int]?, limit: Int) async throws -> [OutboxMessage] {
        guard let partitions else {
            return try await outboxRows(
                "SELECT \(unescaped: Self.outboxColumns) WHERE NOT o.published AND o.written_at_ms <= \(writtenBefore.milliseconds) ORDER BY o.id LIMIT \(Int64(limit))"
            )
        }
        if partitions.isEmpty { return [] }
        let ps = partitions.map(Int64.init)
        return try await outboxRows(
            """
            SELECT \(unescaped: Self.outboxColumns) JOIN runs r ON r.run_id = o.run_id
            WHERE NOT o.published AND o.written_at_ms <= \(writtenBefore.milliseconds) AND r.partition = ANY(\(ps)::bigint[])
            ORDER BY o.id LIMIT \(Int64(limit))
            """
        )
    }

    /// What an outbox row is read from, up to the WHERE: the outbox aliased `o`, with the
    /// payloads its body refers to (`payloadsOf`). A query may join more before its WHERE.
    static let outboxColumns = """
        o.id, o.run_id, o.seq, o.type, o.status, o.routing_key, o.message_id, o.body, o.written_at_ms, o.body_refs,
            p.digests, p.bodies
        FROM outbox o \(payloadsOf("o"))
        """
    /// What a run is read from, up to the WHERE: the runs aliased `r`, with their payloads.
    static let runColumns = "r.body, r.body_refs, p.digests, p.bodies FROM runs r \(payloadsOf("r"))"

    /// The payloads of the row aliased `alias` that its `body_refs` name, as two arrays (digests,
    /// bodies; NULL when it names none), for `spliced`. A run keeps few payloads, so matching
    /// each digest by its text in the references is cheap.
    static func payloadsOf(_ alias: String) -> String {
        """
        LEFT JOIN LATERAL (
            SELECT array_agg(q.digest) AS digests, array_agg(q.body) AS bodies FROM runworker_payloads q
            WHERE \(alias).body_refs IS NOT NULL AND q.run_id = \(alias).run_id AND strpos(\(alias).body_refs, q.digest) > 0) p ON true
        """
    }

    /// A body as written, from a row's stored body, references and payloads.
    static func spliced(_ body: String, refs: String?, digests: [String]?, bodies: [String]?) throws(StoreError) -> [UInt8] {
        var payloads: [String: [UInt8]] = [:]
        for (digest, payload) in zip(digests ?? [], bodies ?? []) { payloads[digest] = Array(payload.utf8) }
        return try StoredBody.read(Array(body.utf8), refs: refs, payloads: payloads)
    }

    private func outboxRows(_ q: PostgresQuery) async throws -> [OutboxMessage] {
        try await mapErrors {
            var out: [OutboxMessage] = []
            for try await (id, run, seq, type, status, key, messageID, body, written, refs, digests, bodies) in try await query(q)
                .decode((Int64, String, Int64, String, String, String, String, String, Int64, String?, [String]?, [String]?).self)
            {
                out.append(OutboxMessage(
                    id: id, runID: run, seq: seq, type: type, status: status, routingKey: key, messageID: messageID,
                    body: try Self.spliced(body, refs: refs, digests: digests, bodies: bodies),
                    writtenAt: Timestamp(milliseconds: written)))
            }
            return out
        }
    }

    /// The runs a query of `runColumns` returns, in its order.
    private func runRows(_ q: PostgresQuery) async throws -> [Run] {
        try await mapErrors {
            var out: [Run] = []
            for try await (body, refs, digests, bodies) in try await query(q).decode((String, String?, [String]?, [String]?).self) {
                out.append(try Self.decodeRun(Self.spliced(body, refs: refs, digests: digests, bodies: bodies)))
            }
            return out
        }
    }

    public func removeOutbox(ids: [Int64]) async throws {
        guard !ids.isEmpty else { return }
        try await mapErrors { _ = try await query("UPDATE outbox SET published = true WHERE id = ANY(\(ids)::bigint[]) AND NOT published") }
    }

    public func runsDue(at time: Timestamp, partitions: [Int]?, limit: Int) async throws -> [String] {
        if let partitions, partitions.isEmpty { return [] }
        let q: PostgresQuery
        if let partitions {
            let ps = partitions.map(Int64.init)
            q = """
                SELECT run_id FROM runs WHERE next_deadline_ms <= \(time.milliseconds) AND partition = ANY(\(ps)::bigint[])
                ORDER BY next_deadline_ms, run_id LIMIT \(Int64(limit))
                """
        } else {
            q = """
                SELECT run_id FROM runs WHERE next_deadline_ms <= \(time.milliseconds)
                ORDER BY next_deadline_ms, run_id LIMIT \(Int64(limit))
                """
        }
        return try await mapErrors {
            var out: [String] = []
            for try await id in try await query(q).decode(String.self) { out.append(id) }
            return out
        }
    }

    public func recordDeliveryAttempt(key: String, error: String?, increment: Bool, at time: Timestamp) async throws -> Int {
        let step: Int64 = increment ? 1 : 0
        return try await mapErrors {
            var count = 1
            for try await n in try await query(
                """
                INSERT INTO delivery_attempts (message_key, attempts, last_error, updated_at_ms)
                VALUES (\(key), 1, \(error), \(time.milliseconds))
                ON CONFLICT (message_key) DO UPDATE SET attempts = delivery_attempts.attempts + \(step),
                    last_error = COALESCE(excluded.last_error, delivery_attempts.last_error),
                    updated_at_ms = excluded.updated_at_ms
                RETURNING attempts
                """
            ).decode(Int64.self) {
                count = Int(n)
            }
            return count
        }
    }

    public func lastDeliveryError(key: String) async throws -> String? {
        try await mapErrors {
            var last: String?
            for try await e in try await query("SELECT last_error FROM delivery_attempts WHERE message_key = \(key)")
                .decode(String?.self)
            {
                last = e
            }
            return last
        }
    }

    public func run(_ runID: String) async throws -> Run? {
        try await runRows("SELECT \(unescaped: Self.runColumns) WHERE r.run_id = \(runID)").first
    }

    public func listRuns(_ q: RunQuery) async throws -> RunPage {
        let statuses = q.statuses.map(\.rawValue)
        let limit = Int64(q.limit + 1)
        let query: PostgresQuery = """
            SELECT \(unescaped: Self.runColumns)
            WHERE (cardinality(\(statuses)::text[]) = 0 OR status = ANY(\(statuses)::text[]))
              AND (\(q.agentID)::text IS NULL OR r.agent_id = \(q.agentID)::text)
              AND (\(q.createdAfter?.milliseconds)::bigint IS NULL OR created_at_ms > \(q.createdAfter?.milliseconds)::bigint)
              AND (\(q.createdBefore?.milliseconds)::bigint IS NULL OR created_at_ms < \(q.createdBefore?.milliseconds)::bigint)
              AND (\(q.updatedAfter?.milliseconds)::bigint IS NULL OR updated_at_ms > \(q.updatedAfter?.milliseconds)::bigint)
              AND (\(q.updatedBefore?.milliseconds)::bigint IS NULL OR updated_at_ms < \(q.updatedBefore?.milliseconds)::bigint)
              AND (\(q.after?.createdAtMs)::bigint IS NULL OR created_at_ms < \(q.after?.createdAtMs)::bigint
                   OR (created_at_ms = \(q.after?.createdAtMs)::bigint AND run_id < \(q.after?.runID)::text))
            ORDER BY created_at_ms DESC, r.run_id DESC LIMIT \(limit)
            """
        return RunPage(rows: try await runRows(query), limit: q.limit)
    }

    public func history(runID: String, afterSeq: Int64, limit: Int) async throws -> [OutboxMessage] {
        try await outboxRows(
            """
            SELECT \(unescaped: Self.outboxColumns) WHERE o.run_id = \(runID) AND o.seq > \(afterSeq)
            ORDER BY o.id LIMIT \(Int64(limit))
            """)
    }

    public func runCounts() async throws -> [RunStatus: Int] {
        try await mapErrors {
            var counts: [RunStatus: Int] = [:]
            for try await (status, n) in try await query("SELECT status, count(*) FROM runs GROUP BY status").decode((String, Int64).self) {
                if let s = RunStatus(rawValue: status) { counts[s] = Int(n) }
            }
            return counts
        }
    }

    public func outboxDepth() async throws -> Int {
        try await mapErrors {
            for try await n in try await query("SELECT count(*) FROM outbox WHERE NOT published").decode(Int64.self) {
                return Int(n)
            }
            return 0
        }
    }

    /// One statement: the finished runs (with nothing left to publish) and their history, then
    /// the expired command records, each bounded by `limit`.
    public func prune(finishedBefore: Timestamp, commandsBefore: Timestamp, limit: Int, commandLimit: Int) async throws -> PruneResult {
        let n = Int64(limit)
        return try await mapErrors {
            for try await (runs, events, commands) in try await query(
                """
                WITH gone AS (
                    DELETE FROM runs WHERE run_id IN (
                        SELECT r.run_id FROM runs r WHERE r.status IN ('completed', 'failed', 'cancelled')
                            AND r.updated_at_ms < \(finishedBefore.milliseconds)
                            AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.run_id = r.run_id AND NOT o.published)
                        ORDER BY r.updated_at_ms LIMIT \(n))
                    RETURNING run_id),
                history AS (DELETE FROM outbox WHERE run_id IN (SELECT run_id FROM gone) RETURNING 1),
                payloads AS (DELETE FROM runworker_payloads WHERE run_id IN (SELECT run_id FROM gone)),
                expired AS (
                    DELETE FROM commands WHERE (run_id, command_id) IN (
                        SELECT run_id, command_id FROM commands WHERE recorded_at_ms < \(commandsBefore.milliseconds)
                        ORDER BY recorded_at_ms LIMIT \(Int64(commandLimit)))
                    RETURNING 1)
                SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM history), (SELECT count(*) FROM expired)
                """
            ).decode((Int64, Int64, Int64).self) {
                return PruneResult(runs: Int(runs), events: Int(events), commands: Int(commands))
            }
            return PruneResult()
        }
    }

    public func runs(status: RunStatus?, agentID: String?, limit: Int) async throws -> [Run] {
        var binds = PostgresBindings()
        var clauses: [String] = []
        if let status {
            binds.append(status.rawValue)
            clauses.append("status = $\(binds.count)")
        }
        if let agentID {
            binds.append(agentID)
            clauses.append("agent_id = $\(binds.count)")
        }
        binds.append(Int64(limit))
        let sql = "SELECT \(Self.runColumns)" + (clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND "))
            + " ORDER BY updated_at_ms DESC, r.run_id LIMIT $\(binds.count)"
        return try await runRows(PostgresQuery(unsafeSQL: sql, binds: binds))
    }

    // MARK: - Membership and leases
    // One statement each, with every time from the server's clock_timestamp() (not now(),
    // which is the transaction's start and may lag after a lock wait).

    public func heartbeat(workerID: String, ttl: Double) async throws -> [String] {
        try checkTTL(ttl)
        return try await mapErrors {
            var live: [String] = []
            // The outer SELECT sees the table as the statement began: `beat` adds this worker.
            for try await id in try await query(
                """
                WITH beat AS (
                    INSERT INTO runworker_workers (worker_id, expires_at)
                    VALUES (\(workerID), clock_timestamp() + \(ttl) * interval '1 second')
                    ON CONFLICT (worker_id) DO UPDATE SET expires_at = excluded.expires_at
                    RETURNING worker_id)
                SELECT worker_id FROM runworker_workers WHERE expires_at > clock_timestamp() AND worker_id <> \(workerID)
                UNION ALL SELECT worker_id FROM beat
                """
            ).decode(String.self) {
                live.append(id)
            }
            return live.sorted()
        }
    }

    public func leave(workerID: String) async throws {
        try await mapErrors { _ = try await query("DELETE FROM runworker_workers WHERE worker_id = \(workerID)") }
    }

    /// One upsert: a missing row is inserted at epoch 1; an existing one is taken only when it is
    /// released, expired or already this worker's. Concurrent acquirers of a missing row queue on
    /// its key, and each re-checks the WHERE against the row the previous one committed, so only
    /// one can win.
    public func acquireLease(partition: Int, workerID: String, ttl: Double) async throws -> PartitionLease? {
        try checkTTL(ttl)
        return try await mapErrors {
            for try await epoch in try await query(
                """
                INSERT INTO runworker_leases AS l (partition, owner, epoch, expires_at)
                VALUES (\(Int64(partition)), \(workerID), 1, clock_timestamp() + \(ttl) * interval '1 second')
                ON CONFLICT (partition) DO UPDATE SET
                    epoch = CASE WHEN l.owner = excluded.owner AND l.expires_at > clock_timestamp() THEN l.epoch
                        ELSE l.epoch + 1 END,
                    owner = excluded.owner,
                    expires_at = clock_timestamp() + \(ttl) * interval '1 second'
                WHERE l.owner IS NULL OR l.owner = excluded.owner OR l.expires_at <= clock_timestamp()
                RETURNING epoch
                """
            ).decode(Int64.self) {
                return PartitionLease(partition: partition, epoch: epoch)
            }
            return nil
        }
    }

    public func renewLeases(_ leases: [PartitionLease], workerID: String, ttl: Double) async throws -> [PartitionLease] {
        try checkTTL(ttl)
        guard !leases.isEmpty else { return [] }
        let partitions = leases.map { Int64($0.partition) }
        let epochs = leases.map(\.epoch)
        return try await mapErrors {
            var renewed = Set<PartitionLease>()
            // Locked in partition order, as a fenced commit locks them.
            for try await (partition, epoch) in try await query(
                """
                WITH held AS (
                    SELECT l.partition FROM runworker_leases l
                    JOIN unnest(\(partitions)::bigint[], \(epochs)::bigint[]) AS r(part, epoch)
                        ON l.partition = r.part AND l.epoch = r.epoch
                    WHERE l.owner = \(workerID) AND l.expires_at > clock_timestamp()
                    ORDER BY l.partition
                    FOR UPDATE OF l)
                UPDATE runworker_leases l SET expires_at = clock_timestamp() + \(ttl) * interval '1 second'
                FROM held WHERE l.partition = held.partition
                RETURNING l.partition, l.epoch
                """
            ).decode((Int64, Int64).self) {
                renewed.insert(PartitionLease(partition: Int(partition), epoch: epoch))
            }
            return leases.filter(renewed.contains)
        }
    }

    public func releaseLease(_ lease: PartitionLease, workerID: String) async throws {
        try await mapErrors {
            _ = try await query(
                """
                UPDATE runworker_leases SET owner = NULL, expires_at = clock_timestamp()
                WHERE partition = \(Int64(lease.partition)) AND owner = \(workerID) AND epoch = \(lease.epoch)
                """)
        }
    }

    public func leases() async throws -> [LeaseState] {
        try await mapErrors {
            var out: [LeaseState] = []
            for try await (partition, owner, epoch, expired) in try await query(
                """
                SELECT partition, owner, epoch, owner IS NULL OR expires_at <= clock_timestamp()
                FROM runworker_leases ORDER BY partition
                """
            ).decode((Int64, String?, Int64, Bool).self) {
                out.append(LeaseState(partition: Int(partition), owner: owner, epoch: epoch, expired: expired))
            }
            return out
        }
    }

    // MARK: - Plumbing

    /// Runs one statement (tests and the benchmark: dropping a schema of their own).
    public func execute(_ sql: String) async throws {
        try await mapErrors { _ = try await query(PostgresQuery(unsafeSQL: sql)) }
    }

    /// The bytes the store's tables take on disk (with their indexes and out-of-line storage),
    /// for the tests and the benchmark.
    public func diskBytes() async throws -> Int64 {
        try await mapErrors {
            for try await n in try await query(
                """
                SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'
                """
            ).decode(Int64.self) {
                return n
            }
            return 0
        }
    }

    /// How many payload rows the store keeps for a run (tests).
    func payloadRows(of runID: String) async throws -> Int {
        try await mapErrors {
            for try await n in try await query("SELECT count(*) FROM runworker_payloads WHERE run_id = \(runID)").decode(Int64.self) {
                return Int(n)
            }
            return 0
        }
    }

    private func query(_ q: PostgresQuery) async throws -> PostgresRowSequence {
        roundTripCounter.increment()
        return try await client.query(q, logger: logger)
    }

    static func decodeRun(_ body: [UInt8]) throws -> Run {
        do {
            return try Run.decodeStorage(body)
        } catch {
            throw StoreError(.corrupt, "stored run cannot be decoded: \(error)")
        }
    }

    /// Maps postgres-nio's errors onto the store's codes. What passes by itself (a lost or
    /// refused connection, a server shutting down or restarting, a serialization failure, a
    /// full disk) is `unavailable`; the commit functions' `RW409` is `versionConflict` and
    /// `RW410` `leaseLost`; a damaged row is `corrupt`; anything else is `rejected`. Messages
    /// carry the server's text, never the URL's credentials.
    static func storeError(_ error: PSQLError) -> StoreError {
        guard error.code == .server, let state = error.serverInfo?[.sqlState] else {
            return StoreError(.unavailable, "PostgreSQL unreachable (\(error.code))")
        }
        let text = error.serverInfo?[.message] ?? state
        switch state {
        case "RW409": return StoreError(.versionConflict, text)
        case "RW410": return StoreError(.leaseLost, text)
        case "XX001", "XX002": return StoreError(.corrupt, "PostgreSQL: \(text) (\(state))")
        case "40001", "40P01", "55P03", "57014": return StoreError(.unavailable, "PostgreSQL: \(text) (\(state))")
        default:
            // 08: connection exceptions, 53: insufficient resources (disk full), 57P: operator
            // intervention (shutdown, restart), 58: system errors.
            if state.hasPrefix("08") || state.hasPrefix("53") || state.hasPrefix("57P") || state.hasPrefix("58") {
                return StoreError(.unavailable, "PostgreSQL: \(text) (\(state))")
            }
            return StoreError(.rejected, "PostgreSQL: \(text) (\(state))")
        }
    }

    private func mapErrors<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as PSQLError {
            throw Self.storeError(error)
        } catch let error as StoreError {
            throw error
        } catch is CancellationError {
            throw StoreError(.unavailable, "cancelled")
        } catch {
            throw StoreError(.unavailable, "PostgreSQL: \(String(describing: type(of: error)))")
        }
    }
}

/// Counts queries sent, for the benchmark's round trips per batch.
final class RoundTripCounter: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}
