import Foundation
#if canImport(Glibc)
import Glibc
#endif
import RunContract
import Synchronization
import Testing

@testable import RunStore

/// The stores the conformance suite runs against. A new backend is one more case here: its
/// `make()` returns a store with nothing in it and a tear-down that removes what it made.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory, sqlite, postgres

    var testDescription: String { rawValue }

    /// RUNWORKER_TEST_POSTGRES_URL, defaulting to the cluster `scripts/postgres start` makes.
    static let postgresURL = ProcessInfo.processInfo.environment["RUNWORKER_TEST_POSTGRES_URL"]
        ?? "postgres://runworker:runworker@127.0.0.1:54329/runworker"

    /// `clock`, when given, is what the memory and SQLite stores expire leases by (PostgreSQL
    /// reads the database's own).
    func make(clock: ManualClock? = nil) async throws -> StoreFixture {
        switch self {
        case .memory:
            return StoreFixture(store: clock.map { c in InMemoryRunStore(clock: { c.read() }) } ?? InMemoryRunStore(), tearDown: {})
        case .sqlite:
            let file = TemporaryFile()
            var read: (@Sendable () -> Timestamp)?
            if let clock { read = { clock.read() } }
            let store = try SQLiteRunStore(path: file.path, synchronous: .normal, clock: read)
            return StoreFixture(store: store, tearDown: { file.remove() })
        case .postgres:
            return try await Self.makePostgres()
        }
    }

    /// A schema of its own in the test database, dropped afterwards. Without a database the
    /// case is skipped with a message, except in CI, where it must run.
    static func makePostgres() async throws -> StoreFixture {
        let environment = ProcessInfo.processInfo.environment
        let isCI = !["", "0", "false", "no"].contains((environment["CI"] ?? "").lowercased())
        let components = URLComponents(string: postgresURL)
        if !isCI, !canConnect(host: components?.host ?? "127.0.0.1", port: components?.port ?? 5432) {
            try Test.cancel("needs a PostgreSQL at RUNWORKER_TEST_POSTGRES_URL (\(postgresURL)); scripts/test starts one")
        }
        let schema = "t_" + UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: "")
        let separator = postgresURL.contains("?") ? "&" : "?"
        let store = try PostgresRunStore(url: postgresURL + separator + "schema=" + schema)
        let client = Task { try await store.run() }
        do {
            try await store.prepare()
        } catch {
            client.cancel()
            throw error
        }
        return StoreFixture(store: store, tearDown: {
            try? await store.execute("DROP SCHEMA \(schema) CASCADE")
            client.cancel()
            _ = await client.result
        })
    }
}

/// Whether a TCP connection to host:port succeeds within a second.
func canConnect(host: String, port: Int) -> Bool {
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var info: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(host, String(port), &hints, &info) == 0, let first = info else { return false }
    defer { freeaddrinfo(info) }
    let fd = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var tv = timeval(tv_sec: 1, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0
}

/// A fresh store and what undoes it.
struct StoreFixture: Sendable {
    var store: any RunStore
    var tearDown: @Sendable () async -> Void
}

/// Runs `body` against a fresh store of `kind`, then tears the store down, thrown or not.
func withStore<T>(_ kind: StoreKind, clock: ManualClock? = nil, _ body: (any RunStore) async throws -> T) async throws -> T {
    let fixture = try await kind.make(clock: clock)
    do {
        let result = try await body(fixture.store)
        await fixture.tearDown()
        return result
    } catch {
        await fixture.tearDown()
        throw error
    }
}

/// A clock that moves only when told, for the memory store's leases.
final class ManualClock: Sendable {
    private let now = Mutex(Timestamp(milliseconds: 1_000_000))
    func read() -> Timestamp { now.withLock { $0 } }
    func advance(seconds: Double) { now.withLock { $0 = $0.adding(seconds: seconds) } }
}

/// A path for a SQLite file of its own in the temporary folder; `remove()` deletes the file
/// and its WAL and shared-memory companions.
struct TemporaryFile: Sendable {
    let path: String

    init() {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("runstore-\(UUID().uuidString).sqlite").path
    }

    func remove() {
        for suffix in ["", "-wal", "-shm", "-journal"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }
}

func ms(_ milliseconds: Int64) -> Timestamp { Timestamp(milliseconds: milliseconds) }

/// A run with every kind of field filled in, so that a storage round trip has something to lose.
func sampleRun(
    _ id: String, status: RunStatus = .running, version: Int64 = 2, agent: String? = "agent-1", updated: Int64 = 1_000
) -> Run {
    Run(
        runID: id, status: status, version: version, agentID: agent, input: ["q": "2+2"], metadata: ["team": "a"],
        config: RunConfig(timeoutS: 30),
        actions: [
            Action(
                id: "a-1", type: .toolCall, fields: ["tool": "calc", "args": ["x": 1]], status: .completed,
                requestedAt: ms(900), result: 4)
        ],
        createdAt: ms(500), startedAt: ms(600), updatedAt: ms(updated), attemptStartedAt: ms(600))
}

func outboxRow(_ run: String, _ seq: Int64, at milliseconds: Int64 = 1_000) -> OutboxMessage {
    OutboxMessage(
        runID: run, seq: seq, type: "started", status: "running", routingKey: "run.\(run).started",
        messageID: "\(run):\(seq)", body: Array("{\"seq\":\(seq)}".utf8), writtenAt: ms(milliseconds))
}

/// A write that creates `run`.
func create(_ run: Run, deadline: Timestamp? = nil, partition: Int? = nil) -> RunWrite {
    RunWrite(run: run, previousVersion: nil, nextDeadline: deadline, partition: partition)
}

/// A write that moves `run` on from `previousVersion`.
func update(_ run: Run, from previousVersion: Int64, deadline: Timestamp? = nil, partition: Int? = nil) -> RunWrite {
    RunWrite(run: run, previousVersion: previousVersion, nextDeadline: deadline, partition: partition)
}

func key(_ run: String, _ command: String) -> CommandKey { CommandKey(runID: run, commandID: command) }

let started = CommandOutcome(command: "start", error: nil)

/// Whether `error` is a `StoreError` with `code`.
func isStoreError(_ error: any Error, _ code: StoreError.Code) -> Bool { (error as? StoreError)?.code == code }

/// Everything a store holds that a commit can write, for checking that nothing was.
struct Contents: Equatable {
    var runs: [String]
    var outbox: [Int64]
    var outcomes: [CommandKey: CommandOutcome]

    init(_ store: any RunStore, outcomes keys: Set<CommandKey>) async throws {
        runs = try await store.runs(status: nil, agentID: nil, limit: 1_000).map(\.runID).sorted()
        outbox = try await store.pendingOutbox(writtenBefore: ms(.max), limit: 1_000).map(\.id)
        outcomes = try await store.load(runIDs: [], commands: keys).outcomes
    }
}
