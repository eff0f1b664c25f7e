import Foundation
import RunWorkerTestKit

// "A worker on a fresh prefix": what the integration tests start their workers with.

/// A prefix of its own for a test's exchanges, queues, stores and schemas: tests run side by
/// side and leave nothing behind under another test's name.
public func uniquePrefix(_ name: String) -> String { "t-\(name)-\(UUID().uuidString.prefix(8).lowercased())" }

/// A SQLite store URL of its own in the temporary folder (scripts/test's scratch TMPDIR).
public func tempStore(_ prefix: String) -> String {
    "sqlite://" + NSTemporaryDirectory() + "\(prefix).sqlite"
}

/// The file of a `tempStore` URL.
public func storePath(_ store: String) -> String { String(store.dropFirst("sqlite://".count)) }

/// Removes a `tempStore`'s files (database, WAL and shared memory).
public func removeTempStore(_ store: String) {
    for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: storePath(store) + suffix) }
}

extension WorkerProcess {
    /// For tests about a worker taking over a dead one's partitions: leases of 3 s, so that the
    /// takeover comes within seconds. Every other test worker keeps its leases for 10 s, so a
    /// machine that stalls a test for a few seconds cannot move partitions under it.
    public static let takeoverEnvironment = ["RUNWORKER_LEASE_TTL_S": "3"]

    /// A test worker: the built `runworker`, 4 partitions, quick rebalancing, 10 s leases.
    public convenience init(
        prefix: String, store: String, extraEnv: [String: String] = [:], arguments: [String] = [],
        amqpURL url: String = TestEnvironment.amqpURL
    ) throws {
        var env: [String: String?] = [
            "RUNWORKER_SQLITE_SYNCHRONOUS": "NORMAL", "RUNWORKER_REBALANCE_INTERVAL_S": "0.2", "RUNWORKER_PARTITIONS": "4",
            "RUNWORKER_LEASE_TTL_S": "10",
        ]
        for (k, v) in extraEnv { env[k] = v }
        try self.init(binary: TestEnvironment.productsDirectory.appendingPathComponent("runworker").path, amqpURL: url, prefix: prefix,
                      store: store, environment: env, arguments: arguments)
    }
}
