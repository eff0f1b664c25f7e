import Foundation
import RunWorkerTestKit

let amqpURL = TestEnvironment.amqpURL

/// The folder holding this test binary, where SwiftPM also puts `runworker` and `runctl`.
let binDir = TestEnvironment.productsDirectory

func uniquePrefix(_ name: String) -> String { "t-\(name)-\(UUID().uuidString.prefix(8).lowercased())" }

func tempStore(_ prefix: String) -> String {
    "sqlite://" + NSTemporaryDirectory() + "\(prefix).sqlite"
}

extension WorkerProcess {
    /// A test worker: the built `runworker`, 4 partitions, quick rebalancing, debug logs.
    convenience init(prefix: String, store: String, extraEnv: [String: String] = [:], arguments: [String] = []) throws {
        var env: [String: String?] = [
            "RUNWORKER_SQLITE_SYNCHRONOUS": "NORMAL", "RUNWORKER_REBALANCE_INTERVAL_S": "0.2", "RUNWORKER_PARTITIONS": "4",
        ]
        for (k, v) in extraEnv { env[k] = v }
        try self.init(binary: binDir.appendingPathComponent("runworker").path, amqpURL: amqpURL, prefix: prefix,
                      store: store, environment: env, arguments: arguments)
    }
}

/// Runs a program to completion, bounded by `timeout` (killed after it), with its output in a
/// file rather than a pipe (a pipe blocks a chatty child and its end-of-file waits for every
/// holder of the write end). Returns the exit status and the combined output.
@discardableResult
func runProgram(_ path: String, _ arguments: [String], environment: [String: String]? = nil,
                timeout: Double) throws -> (status: Int32, output: String) {
    let out = NSTemporaryDirectory() + "cmd-\(UUID().uuidString.prefix(8)).out"
    _ = FileManager.default.createFile(atPath: out, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: out) }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = arguments
    if let environment { p.environment = environment }
    let handle = FileHandle(forWritingAtPath: out)!
    defer { try? handle.close() }
    p.standardOutput = handle
    p.standardError = handle
    try p.run()
    let status = try p.waitForExitOrKill("\(path) \(arguments.joined(separator: " "))", timeout: timeout)
    return (status, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "")
}
