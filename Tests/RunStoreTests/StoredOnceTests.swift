import Foundation
import GRDB
import RunApply
import RunContract
import RunStateMachine
import RunTestSupport
import Testing

@testable import RunStore
@testable import RunStorePayloads
@testable import RunStorePostgres
@testable import RunStoreSQLite

/// Large values stored once: what a durable store keeps on disk for large inputs and results,
/// and that every body it reads back is the one the state machine wrote, byte for byte.
@Suite struct StoredOnceTests {
    // MARK: Bytes on disk

    /// 60 runs with 100 KB inputs of random base64 (which no compressor shrinks much), taken
    /// through start (created and started, both carrying the input) and complete with their
    /// events confirmed, leave at most 1.5 bytes on disk per byte of input (3.1 on SQLite and 4.3
    /// on PostgreSQL here when every copy was kept whole). Figures go to standard error.
    @Test(arguments: StoreKind.durable) func largeInputsAreStoredOnce(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let applier = Self.applier(store)
            var inputBytes = 0
            for first in stride(from: 0, to: 60, by: 20) {
                let ids = (first..<first + 20).map { "r\($0)" }
                var starts: [InboundCommand] = []
                for (n, id) in ids.enumerated() {
                    let input: JSONValue = ["document": .string(Self.incompressible(100_000, seed: UInt64(first + n)))]
                    inputBytes += input.serialized().count
                    starts.append(Self.command(["command": "start", "run_id": .string(id), "agent_id": "a", "input": input], id: "s-" + id))
                }
                let started = try await applier.process(starts)
                let completed = try await applier.process(
                    ids.map { Self.command(["command": "complete", "run_id": .string($0), "result": "done"], id: "c-" + $0) },
                    removeOutbox: Self.outboxIDs(started))
                try await store.removeOutbox(ids: Self.outboxIDs(completed))
            }
            #expect(try await store.run("r59")?.input == ["document": .string(Self.incompressible(100_000, seed: 59))])
            #expect(try await store.outboxDepth() == 0)

            let bytes = try await Self.diskBytes(store)
            let ratio = Double(bytes) / Double(inputBytes)
            // To standard error, unbuffered: the figures are what the test is for.
            FileHandle.standardError.write(
                Data("\(kind): \(bytes) bytes on disk for \(inputBytes) bytes of input: \(String(format: "%.3f", ratio)) per byte\n".utf8))
            #expect(ratio <= 1.5, "\(kind): \(bytes) bytes on disk for \(inputBytes) bytes of input")
        }
    }

    // MARK: Bytes read back

    /// Every event body read back (pending for publishing, republished for a repeated command,
    /// and as history before and after it is confirmed) and every run are exactly what the state
    /// machine produced, for large inputs, action fields, action results and results (one equal
    /// to the input), with quotes, backslashes, escapes and multi-byte characters in them.
    @Test(arguments: StoreKind.allCases) func bodiesReadBackByteForByte(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            let reference = InMemoryRunStore()
            var written: [String: [UInt8]] = [:]
            for batch in Self.lifecycleBatches() {
                let processed = try await Self.applier(store).process(batch)
                _ = try await Self.applier(reference).process(batch)
                for m in processed.messages where m.outboxID != nil { written[m.messageID!] = m.body }
            }
            #expect(written.count == 8)
            #expect(written.values.filter { $0.count > 100_000 }.count >= 4)

            // Pending, as the outbox sweep and a repeated command read them.
            let pending = try await store.pendingOutbox(writtenBefore: ms(.max), limit: 100)
            #expect(pending.count == written.count)
            for row in pending { #expect(row.body == written[row.messageID], "pending \(row.messageID)") }
            let repeated = try await Self.applier(store).process([Self.lifecycleBatches()[0][0]])
            let republished = repeated.messages.filter { $0.outboxID != nil }
            #expect(republished.map(\.messageID) == (1...5).map { "r1:\($0)" })
            for m in republished { #expect(m.body == written[m.messageID!], "republished \(m.messageID!)") }

            // History, before and after the broker confirmed the events.
            for confirmed in [false, true] {
                if confirmed { try await store.removeOutbox(ids: pending.map(\.id)) }
                for runID in ["r1", "r2"] {
                    let history = try await store.history(runID: runID, afterSeq: 0, limit: 100)
                    #expect(history.map(\.seq) == Array(1...Int64(history.count)))
                    for row in history { #expect(row.body == written[row.messageID], "history \(row.messageID)") }
                    #expect(try await store.run(runID) == reference.run(runID))
                }
            }
            #expect(try await store.runs(status: nil, agentID: nil, limit: 10) == reference.runs(status: nil, agentID: nil, limit: 10))
            #expect(try await store.listRuns(RunQuery()).runs == reference.listRuns(RunQuery()).runs)
            #expect(try await store.load(runIDs: ["r1", "r2"], commands: []).runs == reference.load(runIDs: ["r1", "r2"], commands: []).runs)
            if kind != .memory {
                // Something was cut: the check above read spliced bodies, not whole ones.
                #expect(try await Self.payloadRows(store, of: "r1") >= 3)
            }
        }
    }

    // MARK: Retention

    /// Pruning a finished run removes its payloads with it and leaves a live run's alone.
    @Test(arguments: StoreKind.durable) func pruneRemovesPayloadsWithTheirRun(kind: StoreKind) async throws {
        try await withStore(kind) { (store) async throws in
            var published: [Int64] = []
            for batch in Self.lifecycleBatches() {
                let processed = try await Self.applier(store).process(batch)
                published += Self.outboxIDs(processed)
            }
            let big = Self.command(
                ["command": "start", "run_id": "r3", "input": .string(Self.incompressible(50_000, seed: 3))], id: "s-r3")
            published += Self.outboxIDs(try await Self.applier(store).process([big]))
            try await store.removeOutbox(ids: published)
            let liveHistory = try await store.history(runID: "r3", afterSeq: 0, limit: 10)
            #expect(try await Self.payloadRows(store, of: "r1") > 0)
            #expect(try await Self.payloadRows(store, of: "r3") > 0)

            let pruned = try await store.prune(finishedBefore: ms(.max), commandsBefore: ms(0), limit: 10, commandLimit: 0)
            #expect(pruned.runs == 2)
            #expect(try await Self.payloadRows(store, of: "r1") == 0)
            #expect(try await Self.payloadRows(store, of: "r2") == 0)
            #expect(try await Self.payloadRows(store, of: "r3") > 0)
            #expect(try await store.history(runID: "r3", afterSeq: 0, limit: 10) == liveHistory)
        }
    }

    // MARK: Rows from before

    /// Runs and outbox rows written by the schema before payloads (whole bodies, no references)
    /// read back as written after the migration, and the run moves on from there.
    @Test(arguments: StoreKind.durable) func rowsFromBeforeStillRead(kind: StoreKind) async throws {
        // What the previous version wrote: the same state machine's run and events.
        let old = InMemoryRunStore()
        let starts = Self.lifecycleBatches()[0]
        _ = try await Self.applier(old).process(starts)
        let run = try #require(try await old.run("r1"))
        let rows = try await old.history(runID: "r1", afterSeq: 0, limit: 10)
        #expect(rows.count == 2 && rows.allSatisfy { $0.body.count > 100_000 })

        try await Self.withOldSchema(kind, run: run, outbox: rows) { (store) async throws in
            #expect(try await store.run("r1") == run)
            #expect(try await store.history(runID: "r1", afterSeq: 0, limit: 10).map(\.body) == rows.map(\.body))
            #expect(try await store.pendingOutbox(runIDs: ["r1"]).map(\.body) == rows.map(\.body))
            // A new transition writes with references beside the old rows; all read.
            let next = try await Self.applier(store).process(Self.lifecycleBatches()[1].filter { $0.routingKey == "r1" })
            let written = next.messages.filter { $0.outboxID != nil }.map(\.body)
            #expect(!written.isEmpty)
            #expect(try await store.history(runID: "r1", afterSeq: 0, limit: 10).map(\.body) == rows.map(\.body) + written)
            #expect(try await store.run("r1")?.input == run.input)
        }
    }

    // MARK: Cutting and splicing

    /// A cut body spliced with its payloads is the body, for values found once, twice, nested in
    /// a larger one, or not at all; small values stay inline; overlapping finds are cut once.
    @Test func cutAndSpliceRoundTrip() throws {
        let big: JSONValue = .string(String(repeating: "ab\"\\é", count: 2_000))
        let bigger: JSONValue = ["inner": big, "more": .string(String(repeating: "x", count: 5_000))]
        let run = Run(
            runID: "r1", status: .running, version: 1, input: bigger, result: big, createdAt: ms(1), updatedAt: ms(1))
        var cutter = PayloadCutter()
        let runBody = cutter.cutRun(run)
        // The result inside the input is cut with the input; the result itself on its own.
        #expect(runBody.refs.count == 2 && runBody.bytes.count < 1_000)
        #expect(try runBody.spliced(Self.byDigest(cutter.payloads)) == run.encodeForStorage())
        let bodies: [[UInt8]] = [
            Array("{\"a\":".utf8) + big.serialized() + Array(",\"b\":".utf8) + big.serialized() + Array("}".utf8),
            Array("[".utf8) + bigger.serialized() + Array("]".utf8),
            Array("{\"small\":1}".utf8),
        ]
        var stored: [StoredBody] = []
        for body in bodies {
            let cut = cutter.cut(body, runID: "r1")
            stored.append(cut)
            #expect(try cut.spliced(Self.byDigest(cutter.payloads)) == body)
            #expect(try StoredBody.read(cut.bytes, refs: cut.encodedRefs, payloads: Self.byDigest(cutter.payloads)) == body)
        }
        #expect(stored.map(\.refs.count) == [2, 1, 0])
        #expect(stored[2].encodedRefs == nil)
        #expect(cutter.payloads.count == 2)
        // Another run's body, and a run without large values, are left whole.
        let otherRun = cutter.cut(bodies[1], runID: "r2")
        #expect(otherRun.refs.isEmpty && otherRun.bytes == bodies[1])
        var small = PayloadCutter(minimumBytes: 100)
        let smallRun = small.cutRun(sampleRun("r1"))
        #expect(smallRun.refs.isEmpty && small.payloads.isEmpty)
    }

    /// A reference that names a payload missing or of another length, or that lies outside its
    /// body, is reported as a corrupt row, not spliced wrongly.
    @Test func damagedReferencesAreCorrupt() throws {
        let payload = Payload(runID: "r1", bytes: Array("[1,2,3]".utf8))
        let body = StoredBody(bytes: Array("{\"a\":}".utf8), refs: [PayloadRef(offset: 5, length: 7, digest: payload.digest)])
        #expect(try body.spliced([payload.digest: payload.bytes]) == Array("{\"a\":[1,2,3]}".utf8))
        func isCorrupt(_ splice: () throws -> [UInt8]) -> Bool {
            do {
                _ = try splice()
                return false
            } catch {
                return isStoreError(error, .corrupt)
            }
        }
        #expect(isCorrupt { try body.spliced([:]) })
        #expect(isCorrupt { try body.spliced([payload.digest: Array("[1]".utf8)]) })
        let outside = StoredBody(bytes: body.bytes, refs: [PayloadRef(offset: 99, length: 7, digest: payload.digest)])
        #expect(isCorrupt { try outside.spliced([payload.digest: payload.bytes]) })
        #expect(isCorrupt { try StoredBody.read(body.bytes, refs: "5:7", payloads: [:]) })
    }

    // MARK: Helpers

    static func applier(_ store: any RunStore) -> BatchApplier {
        BatchApplier(store: store, processor: CommandProcessor(machine: RunStateMachine()), clock: { ms(1_000) })
    }

    static func command(_ object: JSONValue, id: String) -> InboundCommand {
        InboundCommand(body: object.serialized(), routingKey: object.objectValue?["run_id"]?.stringValue ?? "", messageID: id)
    }

    static func outboxIDs(_ batch: ProcessedBatch) -> [Int64] { batch.messages.compactMap(\.outboxID) }

    static func byDigest(_ payloads: [Payload]) -> [String: [UInt8]] {
        Dictionary(uniqueKeysWithValues: payloads.map { ($0.digest, $0.bytes) })
    }

    /// `count` characters of base64 from seeded random bytes.
    static func incompressible(_ count: Int, seed: UInt64) -> String {
        var random = SplitMix(seed: seed)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        while bytes.count * 4 / 3 < count + 4 { withUnsafeBytes(of: random.next()) { bytes.append(contentsOf: $0) } }
        return String(Data(bytes).base64EncodedString().prefix(count))
    }

    /// Two runs through their lives, in three batches: r1 with a large input, a large action
    /// field and result and a large result; r2 with another large input that comes back as its
    /// result. Strings hold quotes, backslashes, control characters and multi-byte characters.
    static func lifecycleBatches() -> [[InboundCommand]] {
        let awkward = String(repeating: "q\"b\\c\u{0}é😀\n", count: 1_000)
        let input1: JSONValue = [
            "document": .string(incompressible(150_000, seed: 1) + awkward),
            "turns": .array((0..<400).map { (n) -> JSONValue in ["role": "user", "text": .string("turn \(n) \(awkward.prefix(40))")] }),
        ]
        let input2: JSONValue = ["document": .string(awkward + incompressible(120_000, seed: 2))]
        let args: JSONValue = ["query": .string(incompressible(20_000, seed: 3))]
        return [
            [
                command(["command": "start", "run_id": "r1", "agent_id": "a", "input": input1, "metadata": ["team": "x"]], id: "s1"),
                command(["command": "start", "run_id": "r2", "agent_id": "a", "input": input2], id: "s2"),
            ],
            [
                command(
                    ["command": "require_action", "run_id": "r1",
                     "action": ["id": "a1", "type": "tool_call", "tool": "search", "args": args]], id: "ra1"),
                command(["command": "complete", "run_id": "r2", "result": input2], id: "c2"),
            ],
            [
                command(
                    ["command": "complete_action", "run_id": "r1", "action_id": "a1",
                     "result": .string(awkward + incompressible(20_000, seed: 4))], id: "ca1"),
                command(["command": "complete", "run_id": "r1", "result": ["answer": .string(incompressible(50_000, seed: 5))]], id: "c1"),
            ],
        ]
    }

    /// The bytes a durable store takes on disk: SQLite's file and write-ahead log after a
    /// checkpoint; PostgreSQL's tables with their indexes and out-of-line storage.
    static func diskBytes(_ store: any RunStore) async throws -> Int64 {
        if let sqlite = store as? SQLiteRunStore {
            try await sqlite.checkpoint()
            return ["", "-wal"].reduce(Int64(0)) { total, suffix in
                let attributes = try? FileManager.default.attributesOfItem(atPath: sqlite.path + suffix)
                return total + ((attributes?[.size] as? NSNumber)?.int64Value ?? 0)
            }
        }
        return try await (try #require(store as? PostgresRunStore)).diskBytes()
    }

    /// How many payload rows a durable store keeps for a run.
    static func payloadRows(_ store: any RunStore, of runID: String) async throws -> Int {
        if let sqlite = store as? SQLiteRunStore { return try await sqlite.payloadRows(of: runID) }
        return try await (try #require(store as? PostgresRunStore)).payloadRows(of: runID)
    }

    /// A durable store whose schema stopped at the version before payloads, holding `run` and its
    /// `outbox` rows as that version wrote them, then opened (and migrated) by this one.
    static func withOldSchema(
        _ kind: StoreKind, run: Run, outbox: [OutboxMessage], _ body: (any RunStore) async throws -> Void
    ) async throws {
        let runBody = String(decoding: run.encodeForStorage(), as: UTF8.self)
        switch kind {
        case .sqlite:
            let file = TemporaryFile()
            defer { file.remove() }
            let old = try DatabaseQueue(path: file.path)
            try SQLiteRunStore.migrator.migrate(old, upTo: "v3")
            try await old.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO runs (run_id, status, agent_id, version, updated_at_ms, partition, body, created_at_ms)
                        VALUES (?, ?, ?, ?, ?, 0, ?, ?)
                        """,
                    arguments: [run.runID, run.status.rawValue, run.agentID, run.version, run.updatedAt.milliseconds,
                                Data(runBody.utf8), run.createdAt.milliseconds])
                for m in outbox {
                    try db.execute(
                        sql: """
                            INSERT INTO outbox (run_id, seq, type, status, routing_key, message_id, written_at_ms, body)
                            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                            """,
                        arguments: [m.runID, m.seq, m.type, m.status, m.routingKey, m.messageID, m.writtenAt.milliseconds, Data(m.body)])
                }
            }
            try old.close()
            try await body(try SQLiteRunStore(path: file.path, synchronous: .normal))
        case .postgres:
            try TestPostgres.requireAvailable()
            let schema = "t_old_" + UUID().uuidString.prefix(8).lowercased().replacingOccurrences(of: "-", with: "")
            let old = try PostgresRunStore(url: TestPostgres.url(schema: schema))
            let client = Task { try await old.run() }
            func tearDown() async {
                try? await old.execute("DROP SCHEMA \(schema) CASCADE")
                client.cancel()
                _ = await client.result
            }
            do {
                try await writeVersion3(old)
                try await old.prepare()
                try await body(old)
            } catch {
                await tearDown()
                throw error
            }
            await tearDown()
        case .memory:
            Issue.record("the memory store has no schema")
        }

        /// The schema at version 3 and the rows as that version wrote them, in SQL.
        func writeVersion3(_ old: PostgresRunStore) async throws {
            try await old.migrate(through: 3)
            func literal(_ bytes: some Sequence<UInt8>) -> String { "$b$" + String(decoding: Array(bytes), as: UTF8.self) + "$b$" }
            try await old.execute(
                """
                INSERT INTO runs (run_id, status, agent_id, version, updated_at_ms, partition, body, created_at_ms)
                VALUES ('\(run.runID)', '\(run.status.rawValue)', '\(run.agentID ?? "")', \(run.version),
                    \(run.updatedAt.milliseconds), 0, \(literal(runBody.utf8)), \(run.createdAt.milliseconds))
                """)
            for m in outbox {
                try await old.execute(
                    """
                    INSERT INTO outbox (run_id, seq, type, status, routing_key, message_id, written_at_ms, body)
                    VALUES ('\(m.runID)', \(m.seq), '\(m.type)', '\(m.status)', '\(m.routingKey)', '\(m.messageID)',
                        \(m.writtenAt.milliseconds), \(literal(m.body)))
                    """)
            }
        }
    }
}
