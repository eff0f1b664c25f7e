import Foundation
import RunContract
import RunStore
import RunWorkerTestKit
import Testing

/// RUNWORKER_TEST_POSTGRES_URL, defaulting to the cluster `scripts/postgres start` makes.
let postgresURL = ProcessInfo.processInfo.environment["RUNWORKER_TEST_POSTGRES_URL"]
    ?? "postgres://runworker:runworker@127.0.0.1:54329/runworker"

/// Whether the test database answers (or CI requires it to).
let postgresAvailable: Bool = {
    guard let c = URLComponents(string: postgresURL), let host = c.host else { return false }
    return TestEnvironment.isCI || TestEnvironment.canConnect(host: host, port: c.port ?? 5432, timeout: 2)
}()

/// A store URL of its own: a fresh schema in the test database (dropped by `dropSchema`).
func postgresStore(_ prefix: String) -> (url: String, schema: String) {
    let schema = prefix.replacingOccurrences(of: "-", with: "_").lowercased()
    return (postgresURL + (postgresURL.contains("?") ? "&" : "?") + "schema=" + schema, schema)
}

func dropSchema(_ schema: String) {
    _ = try? runProgram("/usr/bin/env", ["psql", postgresURL, "-q", "-c", "DROP SCHEMA IF EXISTS \(schema) CASCADE"], timeout: 30)
}

@Suite(.serialized, .requiresBroker, .enabled(if: postgresAvailable, "needs a PostgreSQL at RUNWORKER_TEST_POSTGRES_URL; scripts/test starts one"))
struct PostgresWorkerTests {
    /// Two worker processes on one PostgreSQL store (the multi-host layout, on one machine):
    /// 200 runs' commands interleaved are all applied in order, once, and stored at version 5.
    @Test func twoWorkersOnPostgres() async throws {
        let prefix = uniquePrefix("pg")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let (store, schema) = postgresStore(prefix)
        defer { dropSchema(schema) }
        let (a, b) = try startTwoWorkers(prefix: prefix, store: store)
        try publishLifecycles(client, runs: 0..<200)
        try client.waitForEvents(timeout: 60) { _ in Set(client.runEvents.map(\.eventID)).count >= 1000 }
        checkLifecycles(events: client.runEvents, rejections: client.rejections, runs: 200)
        #expect(a.terminate() == 0)
        #expect(b.terminate() == 0)
        let applied = [a, b].map { $0.status?.counters.applied ?? 0 }
        #expect(applied.allSatisfy { $0 > 0 } && applied.reduce(0, +) == 800, "applied per worker: \(applied)")

        let reader = try PostgresRunStore(url: store)
        let running = Task { try await reader.run() }
        defer { running.cancel() }
        let runs = try await reader.runs(status: .completed, agentID: nil, limit: 1000)
        #expect(runs.count == 200 && runs.allSatisfy { $0.version == 5 })
    }
}
