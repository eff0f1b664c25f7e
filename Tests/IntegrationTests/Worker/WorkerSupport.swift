import Foundation
import RunWorkerTestKit
import Testing

let amqpURL = TestEnvironment.amqpURL

/// The folder holding this test binary, where SwiftPM also puts `runworker` and `runctl`.
let binDir = TestEnvironment.productsDirectory

func uniquePrefix(_ name: String) -> String { "t-\(name)-\(UUID().uuidString.prefix(8).lowercased())" }

func tempStore(_ prefix: String) -> String {
    "sqlite://" + NSTemporaryDirectory() + "\(prefix).sqlite"
}

/// The file of a `tempStore` URL.
func storePath(_ store: String) -> String { String(store.dropFirst("sqlite://".count)) }

/// Removes a `tempStore`'s files (database, WAL and shared memory).
func removeTempStore(_ store: String) {
    for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: storePath(store) + suffix) }
}

extension WorkerProcess {
    /// A test worker: the built `runworker`, 4 partitions, quick rebalancing, debug logs.
    convenience init(
        prefix: String, store: String, extraEnv: [String: String] = [:], arguments: [String] = [],
        amqpURL url: String = amqpURL
    ) throws {
        var env: [String: String?] = [
            "RUNWORKER_SQLITE_SYNCHRONOUS": "NORMAL", "RUNWORKER_REBALANCE_INTERVAL_S": "0.2", "RUNWORKER_PARTITIONS": "4",
            "RUNWORKER_LEASE_TTL_S": "3",
        ]
        for (k, v) in extraEnv { env[k] = v }
        try self.init(binary: binDir.appendingPathComponent("runworker").path, amqpURL: url, prefix: prefix,
                      store: store, environment: env, arguments: arguments)
    }
}

/// Runs a program to completion, bounded by `timeout` (stopped after it), with its output in a
/// file rather than a pipe (a pipe blocks a chatty child and its end-of-file waits for every
/// holder of the write end). Returns the exit status and the combined output. See `runCommand`.
@discardableResult
func runProgram(_ path: String, _ arguments: [String], environment: [String: String]? = nil,
                timeout: Double) throws -> (status: Int32, output: String) {
    try runCommand(path, arguments, environment: environment, timeout: timeout)
}

/// The repository (for scripts/ and docs/ that tests read).
let sourceRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

/// Every message `client` sent and received validates against the contract's JSON Schemas
/// (a third-party validator, Python `jsonschema`), decoding refusals excepted.
func expectSchemaValid(_ client: ContractClient, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        let violations = try client.schemaViolations(repositoryRoot: sourceRoot)
        #expect(violations.isEmpty, "\(violations.joined(separator: "\n"))", sourceLocation: sourceLocation)
    } catch {
        Issue.record("schema validation could not run: \(error)", sourceLocation: sourceLocation)
    }
}
