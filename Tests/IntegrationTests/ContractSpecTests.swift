import Foundation
import RunWorkerTestKit
import RunTestSupport
import Testing

/// The repository's root, from this file's path (Tests/IntegrationTests/<file>).
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

private let specCheckerAvailable: Bool = ProcessInfo.processInfo.environment["PATH"]?.split(separator: ":")
    .contains { FileManager.default.isExecutableFile(atPath: "\($0)/check-jsonschema") } ?? false

@Suite(.ownThread, .enabled(if: specCheckerAvailable || TestEnvironment.isCI, "needs check-jsonschema (PyPI); scripts/test installs it"))
struct ContractSpecTests {
    /// The machine-readable contract holds by itself: scripts/check-spec validates every
    /// docs/schemas file against the JSON Schema 2020-12 meta-schema, docs/asyncapi.yaml
    /// against the AsyncAPI 2.6 schema, and every example message against its schema (valid
    /// ones pass, invalid ones fail), with check-jsonschema and Python jsonschema. The worker's
    /// decoder is held to the same examples by RunContractTests' ContractExamplesTests, and
    /// live traffic to the schemas by the pika interop test.
    @Test func specValidates() throws {
        let script = repositoryRoot.appendingPathComponent("scripts/check-spec").path
        let (status, output) = try runProgram("/bin/bash", [script], timeout: 600)
        #expect(status == 0, "scripts/check-spec: \(output)")
        #expect(output.contains("spec ok"), "\(output)")
    }
}
