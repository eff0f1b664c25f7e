import Foundation
import RunTestSupport
import RunWorkerTestKit
import Testing

let amqpURL = TestEnvironment.amqpURL

/// The folder holding this test binary, where SwiftPM also puts `runworker` and `runctl`.
let binDir = TestEnvironment.productsDirectory

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
