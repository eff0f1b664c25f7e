import Foundation
import RunContract
import RunStore
import RunStores
import RunWorkerTestKit
import RunTestSupport
import Testing

@Suite(.serialized, .requiresBroker, .ownThread, .enabled(if: TestPostgres.available, "needs a PostgreSQL at RUNWORKER_TEST_POSTGRES_URL; scripts/test starts one"))
struct PostgresWorkerTests {
    /// Two worker processes on one PostgreSQL store (the multi-host layout, on one machine):
    /// 200 runs' commands interleaved are all applied in order, once, and stored at version 5.
    @Test func twoWorkersOnPostgres() async throws {
        let prefix = uniquePrefix("pg")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let (store, cleanUp) = StoreKind.postgres.workerStore(prefix)
        defer { cleanUp() }
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
