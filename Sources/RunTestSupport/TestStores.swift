import Foundation
import RunContract
import RunStore
import RunStores
import RunWorkerTestKit
import Testing

/// The test PostgreSQL: `RUNWORKER_TEST_POSTGRES_URL`, defaulting to the cluster
/// `scripts/postgres start` makes.
public enum TestPostgres {
    public static let url = ProcessInfo.processInfo.environment["RUNWORKER_TEST_POSTGRES_URL"]
        ?? "postgres://runworker:runworker@127.0.0.1:54329/runworker"

    /// Whether the test database answers (or CI requires it to, so that a missing one fails).
    public static let available: Bool = {
        guard let c = URLComponents(string: url), let host = c.host else { return false }
        return TestEnvironment.isCI || TestEnvironment.canConnect(host: host, port: c.port ?? 5432, timeout: 2)
    }()

    /// Skips the running test with a message when no PostgreSQL answers (never in CI, where
    /// `available` is always true and a missing database fails the test).
    public static func requireAvailable() throws {
        if !available {
            try Test.cancel("needs a PostgreSQL at RUNWORKER_TEST_POSTGRES_URL (\(url)); scripts/test starts one")
        }
    }

    /// `url` with a schema of its own (PostgreSQL identifiers: lower case, no dashes).
    public static func url(schema: String) -> String {
        url + (url.contains("?") ? "&" : "?") + "schema=" + schema
    }

    /// A fresh schema name from `prefix`.
    public static func schemaName(_ prefix: String) -> String {
        prefix.replacingOccurrences(of: "-", with: "_").lowercased()
    }
}

/// The stores a test runs against, in process (`make`) or as a URL for a worker process
/// (`workerStore`). A new backend is one more case here.
public enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory, sqlite, postgres

    public var testDescription: String { rawValue }

    /// The durable stores, for worker processes.
    public static let durable: [StoreKind] = [.sqlite, .postgres]

    /// The durable stores this machine has: PostgreSQL only where it answers (always in CI).
    public static var durableAvailable: [StoreKind] { TestPostgres.available ? durable : [.sqlite] }

    /// A fresh store in this process. `clock`, when given, is what the memory and SQLite stores
    /// expire leases by (PostgreSQL reads the database's own). Without a database the PostgreSQL
    /// case is skipped with a message, except in CI, where it must run.
    public func make(clock: ManualClock? = nil) async throws -> StoreFixture {
        switch self {
        case .memory:
            let store = clock.map { c in InMemoryRunStore(clock: { c.read() }) } ?? InMemoryRunStore()
            return StoreFixture(store: store, tearDown: {})
        case .sqlite:
            let file = TemporaryFile()
            var read: (@Sendable () -> Timestamp)?
            if let clock { read = { clock.read() } }
            let store = try SQLiteRunStore(path: file.path, synchronous: .normal, clock: read)
            return StoreFixture(store: store, tearDown: { file.remove() })
        case .postgres:
            try TestPostgres.requireAvailable()
            let schema = "t_" + UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: "")
            let store = try PostgresRunStore(url: TestPostgres.url(schema: schema))
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

    /// A store URL of its own for a worker process, and what removes it afterwards.
    public func workerStore(_ prefix: String) -> (url: String, cleanUp: @Sendable () -> Void) {
        switch self {
        case .memory:
            return ("memory:", {})
        case .sqlite:
            let file = TemporaryFile(name: prefix)
            return ("sqlite://" + file.path, { file.remove() })
        case .postgres:
            let schema = TestPostgres.schemaName(prefix)
            return (TestPostgres.url(schema: schema), { dropSchema(schema) })
        }
    }
}

/// Drops a test schema with `psql` (bounded; a failure is ignored: the cluster is thrown away).
public func dropSchema(_ schema: String) {
    _ = try? runCommand("/usr/bin/env", ["psql", TestPostgres.url, "-q", "-c", "DROP SCHEMA IF EXISTS \(schema) CASCADE"], timeout: 30)
}

/// A fresh store and what undoes it.
public struct StoreFixture: Sendable {
    public var store: any RunStore
    public var tearDown: @Sendable () async -> Void
}

/// Runs `body` against a fresh store of `kind`, then tears the store down, thrown or not.
public func withStore<T>(
    _ kind: StoreKind, clock: ManualClock? = nil, _ body: (any RunStore) async throws -> T
) async throws -> T {
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

/// A path for a SQLite file of its own in the temporary folder; `remove()` deletes the file
/// and its WAL, shared-memory and journal companions.
public struct TemporaryFile: Sendable {
    public let path: String

    public init(name: String = "runstore-\(UUID().uuidString)") {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("\(name).sqlite").path
    }

    public func remove() {
        for suffix in ["", "-wal", "-shm", "-journal"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }
}
