import Foundation
import RunWorkerTestKit
import RunTestSupport
import Testing

/// The repository's root, from this file's path (Tests/IntegrationTests/<file>).
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

private let checkJSONSchema: String? = ProcessInfo.processInfo.environment["PATH"]?.split(separator: ":")
    .map { "\($0)/check-jsonschema" }.first { FileManager.default.isExecutableFile(atPath: $0) }

@Suite(.ownThread, .enabled(if: checkJSONSchema != nil || TestEnvironment.isCI, "needs check-jsonschema (PyPI); scripts/test installs it"))
struct DeploymentTests {
    /// docker-compose.yml is a valid Compose file (Docker cannot run here, so its schema is
    /// what is checked).
    @Test func composeFileIsValid() throws {
        let tool = try #require(checkJSONSchema, "check-jsonschema is not on PATH")
        let (status, output) = try runProgram(
            tool, ["--builtin-schema", "vendor.compose-spec", repositoryRoot.appendingPathComponent("docker-compose.yml").path],
            timeout: 60)
        #expect(status == 0, "\(output)")
    }
}
