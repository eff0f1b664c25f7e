import Foundation
import Logging
import RunContract
import Testing

@testable import RunWorker

@Suite struct SettingsTests {
    /// The shipped config file parses and states exactly the built-in defaults.
    @Test func shippedConfigMatchesDefaults() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("config/runworker.yaml").path
        let settings = try WorkerSettings.load(configFile: path, environment: [:])
        #expect(settings == WorkerSettings())
    }

    /// Environment overrides the file; both are validated with messages naming the setting.
    @Test func layering() throws {
        var s = WorkerSettings()
        try s.apply(yaml: "prefix: fromfile\npartitions: 3\nrun_defaults:\n  timeout_s: 5\n  retry:\n    max_attempts: 4\n")
        #expect(s.prefix == "fromfile" && s.partitions == 3 && s.runDefaults.timeoutS == 5)
        #expect(s.runDefaults.retry?.maxAttempts == 4 && s.runDefaults.retry?.backoff == 2)
        try s.apply(environment: ["RUNWORKER_PREFIX": "fromenv", "RUNWORKER_PREFETCH": "10", "RUNWORKER_LOG_LEVEL": "debug"])
        #expect(s.prefix == "fromenv" && s.partitions == 3 && s.prefetch == 10 && s.logLevel == .debug)
        #expect(throws: SettingsError.self) { try s.apply(environment: ["RUNWORKER_PARTITIONS": "many"]) }
        #expect(throws: SettingsError.self) { try s.apply(yaml: "partitions: [1]") }
        s.prefetch = 70_000
        #expect(throws: SettingsError.self) { try s.validate() }
    }

    /// A named config file that does not exist is an error; the default one may be absent.
    @Test func missingConfigFile() throws {
        #expect(throws: SettingsError.self) { try WorkerSettings.load(configFile: "/nonexistent.yaml", environment: [:]) }
    }

    /// postgres:// is refused with a message saying what to use instead.
    @Test func postgresStoreRefused() throws {
        let s = WorkerSettings()
        var settings = s
        settings.store = "postgres://db/runs"
        #expect {
            _ = try Worker(settings: settings, logger: Logger(label: "test"))
        } throws: { "\($0)".contains("PostgreSQL store is not available yet") }
    }
}
