import Foundation
import Logging
import RunContract
import RunStore
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

    /// A store URL of no known kind is refused with a message saying what to use; postgres://
    /// opens the PostgreSQL store without connecting yet (it connects when the worker runs).
    @Test func storeURLs() throws {
        var settings = WorkerSettings()
        settings.store = "mysql://u:secret@db/runs"
        #expect {
            _ = try Worker(settings: settings, logger: Logger(label: "test"))
        } throws: { "\($0)".contains("sqlite://") && !"\($0)".contains("secret") }
        settings.store = "postgres://u:secret@127.0.0.1:1/runs"
        let worker = try Worker(settings: settings, logger: Logger(label: "test"))
        #expect(worker.store is PostgresRunStore)
    }

    /// A key the settings do not know is an error naming it (a typo must not be silently ignored).
    @Test func unknownYAMLKeyRefused() {
        var s = WorkerSettings()
        #expect { try s.apply(yaml: "prefetchh: 3\n") } throws: { "\($0)".contains("prefetchh") }
        #expect { try s.apply(yaml: "run_defaults:\n  retry:\n    max_atempts: 3\n") } throws: {
            "\($0)".contains("run_defaults.retry.max_atempts")
        }
    }

    /// run_defaults obey the same rules as a command's `config`: the message names the key.
    @Test(arguments: [
        ("run_defaults:\n  timeout_s: -1\n", "run_defaults.timeout_s"),
        ("run_defaults:\n  start_timeout_s: 0\n", "run_defaults.start_timeout_s"),
        ("run_defaults:\n  retry:\n    max_attempts: 0\n", "run_defaults.retry.max_attempts"),
        ("run_defaults:\n  retry:\n    backoff: -2\n", "run_defaults.retry.backoff"),
    ])
    func runDefaultsValidatedFromYAML(_ yaml: String, _ key: String) {
        var s = WorkerSettings()
        #expect { try s.apply(yaml: yaml) } throws: { "\($0)".contains(key) }
    }

    /// The same through the environment.
    @Test(arguments: [
        ("RUNWORKER_RUN_DEFAULTS_TIMEOUT_S", "-1", "run_defaults.timeout_s"),
        ("RUNWORKER_RUN_DEFAULTS_RETRY_MAX_ATTEMPTS", "0", "run_defaults.retry.max_attempts"),
    ])
    func runDefaultsValidatedFromEnvironment(_ name: String, _ value: String, _ key: String) {
        var s = WorkerSettings()
        #expect { try s.apply(environment: [name: value]) } throws: { "\($0)".contains(key) }
    }

    /// The table, config/runworker.yaml and the defaults agree: every table key is in the file,
    /// every key of the file is in the table, and the file states each default.
    @Test func tableMatchesShippedConfig() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("config/runworker.yaml").path
        let keys = try WorkerSettings.keys(inYAML: String(contentsOfFile: path, encoding: .utf8))
        #expect(Set(keys) == Set(WorkerSettings.table.map(\.key)))
        #expect(WorkerSettings.table.count == Set(WorkerSettings.table.map(\.key)).count)
        #expect(try WorkerSettings.load(configFile: path, environment: [:]) == WorkerSettings())
    }

    /// Today's variable names and flags still work; every other setting has both.
    @Test func derivedNames() throws {
        let names = WorkerSettings.table.map(\.environmentName)
        for n in [
            "RUNWORKER_AMQP_URL", "RUNWORKER_PREFIX", "RUNWORKER_STORE", "RUNWORKER_SQLITE_SYNCHRONOUS",
            "RUNWORKER_PARTITIONS", "RUNWORKER_PREFETCH", "RUNWORKER_BATCH_SIZE", "RUNWORKER_MAX_BODY_BYTES",
            "RUNWORKER_REBALANCE_INTERVAL_S", "RUNWORKER_TIMER_INTERVAL_S", "RUNWORKER_DELIVERY_LIMIT",
            "RUNWORKER_PIPELINE_DEPTH", "RUNWORKER_LOG_LEVEL", "RUNWORKER_STATUS_FILE",
        ] { #expect(names.contains(n), "\(n)") }
        var s = WorkerSettings()
        try s.apply(arguments: [
            "--log-level", "debug", "--amqp-url=amqp://x/", "--store", "sqlite://t.sqlite", "--prefix", "p",
            "--prefetch", "7", "--partitions", "3", "--status-file", "/tmp/s.json",
            "--run-defaults.retry.max-attempts", "4", "--timer-interval-s", "0.5",
        ])
        #expect(s.logLevel == .debug && s.amqpURL == "amqp://x/" && s.store == "sqlite://t.sqlite" && s.prefix == "p")
        #expect(s.prefetch == 7 && s.partitions == 3 && s.statusFile == "/tmp/s.json" && s.timerIntervalS == 0.5)
        #expect(s.runDefaults.retry?.maxAttempts == 4 && s.runDefaults.retry?.delayS == 1)
        #expect { try s.apply(arguments: ["--prefetchh", "1"]) } throws: { "\($0)".contains("--prefetchh") }
        #expect { try s.apply(arguments: ["--prefetch"]) } throws: { "\($0)".contains("--prefetch") }
        try s.apply(environment: ["RUNWORKER_STATUS_FILE": "/tmp/e.json", "RUNWORKER_RUN_DEFAULTS_TIMEOUT_S": "2.5"])
        #expect(s.statusFile == "/tmp/e.json" && s.runDefaults.timeoutS == 2.5)
        for spec in WorkerSettings.table { #expect(WorkerSettings.settingsHelp.contains(spec.flag)) }
    }
}
