import Foundation
import Logging
import RunContract
import RunStore
import RunStores
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

    /// A stream's buffer is `http.stream_buffer_kib`, or less when a quarter of the memory
    /// budget shared by `http.max_streams` is less: every stream's buffer together never takes
    /// more than that quarter. Out-of-range values are refused with the key's name.
    @Test func streamBuffersShareAQuarterOfTheBudget() throws {
        var s = WorkerSettings()
        #expect(s.streamBufferBytes == 256 << 10)
        #expect(s.httpMaxStreams * s.streamBufferBytes <= (s.memoryBudgetMiB << 20) / 4)
        s.memoryBudgetMiB = 32
        #expect(s.streamBufferBytes == 128 << 10)
        s.httpMaxStreams = 1
        s.httpStreamBufferKiB = 512
        #expect(s.streamBufferBytes == 512 << 10)
        try s.apply(environment: ["RUNWORKER_HTTP_MAX_STREAMS": "200", "RUNWORKER_HTTP_STREAM_BUFFER_KIB": "512"])
        #expect(s.streamBufferBytes == (32 << 20) / 4 / 200)
        #expect(s.httpMaxStreams * s.streamBufferBytes <= (s.memoryBudgetMiB << 20) / 4)
        try s.apply(yaml: "http:\n  max_streams_per_token: 3\n")
        #expect(s.httpMaxStreamsPerToken == 3)
        for (variable, value, key) in [
            ("RUNWORKER_HTTP_MAX_STREAMS", "0", "http.max_streams"),
            ("RUNWORKER_HTTP_MAX_STREAMS_PER_TOKEN", "0", "http.max_streams_per_token"),
            ("RUNWORKER_HTTP_STREAM_BUFFER_KIB", "8", "http.stream_buffer_kib"),
        ] {
            var t = WorkerSettings()
            try t.apply(environment: [variable: value])
            #expect { try t.validate() } throws: { "\($0)".contains(key) }
        }
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
    /// The HTTP listener: host:port (IPv6 in brackets), off, port 0; beyond loopback only with
    /// a token of 16 characters or more.
    @Test func httpAddressAndToken() throws {
        var s = WorkerSettings()
        #expect(try s.httpEndpoint() == HTTPEndpoint(host: "127.0.0.1", port: 8080))
        s.httpAddress = "off"
        #expect(try s.httpEndpoint() == nil)
        s.httpAddress = "[::1]:0"
        #expect(try s.httpEndpoint() == HTTPEndpoint(host: "::1", port: 0))
        try s.validate()
        for bad in ["8080", "host:", ":80", "h:99999", "h:x"] {
            s.httpAddress = bad
            #expect(throws: SettingsError.self, "\(bad)") { try s.validate() }
        }
        s.httpAddress = "0.0.0.0:8080"
        #expect { try s.validate() } throws: { "\($0)".contains("http_token") }
        s.httpToken = "short"
        #expect { try s.validate() } throws: { "\($0)".contains("at least 16") }
        s.httpToken = "a-token-of-enough-length"
        try s.validate()
    }

    /// The HTTP connection limits: defaults that keep a listener within a 1024-descriptor
    /// limit, set by the file (under `http:`), the environment and flags, refused out of range.
    @Test func httpConnectionLimits() throws {
        var s = WorkerSettings()
        #expect(s.httpHeaderTimeoutS == 10 && s.httpIdleTimeoutS == 60 && s.httpMaxConnections == 256)
        try s.apply(yaml: "http:\n  header_timeout_s: 2.5\n  max_connections: 40\n")
        #expect(s.httpHeaderTimeoutS == 2.5 && s.httpMaxConnections == 40)
        try s.apply(environment: ["RUNWORKER_HTTP_IDLE_TIMEOUT_S": "5", "RUNWORKER_HTTP_MAX_CONNECTIONS": "12"])
        #expect(s.httpIdleTimeoutS == 5 && s.httpMaxConnections == 12)
        try s.apply(arguments: ["--http.header-timeout-s", "1", "--http.max-connections=7"])
        #expect(s.httpHeaderTimeoutS == 1 && s.httpMaxConnections == 7)
        try s.validate()
        for (key, value) in [
            ("RUNWORKER_HTTP_HEADER_TIMEOUT_S", "0"), ("RUNWORKER_HTTP_IDLE_TIMEOUT_S", "-1"),
            ("RUNWORKER_HTTP_MAX_CONNECTIONS", "0"), ("RUNWORKER_HTTP_HEADER_TIMEOUT_S", "3601"),
        ] {
            var bad = s
            try bad.apply(environment: [key: value])
            #expect(throws: SettingsError.self, "\(key)=\(value)") { try bad.validate() }
        }
        #expect(throws: SettingsError.self) { try s.apply(environment: ["RUNWORKER_HTTP_MAX_CONNECTIONS": "many"]) }
    }

    /// Retention durations: seconds, s/m/h/d suffixes, off; command ids never under 60 s.
    @Test func retentionDurations() throws {
        var s = WorkerSettings()
        #expect(s.retentionFinishedRunsS == 7 * 86_400 && s.retentionCommandIDsS == 86_400)
        try s.apply(environment: ["RUNWORKER_RETENTION_FINISHED_RUNS": "12h", "RUNWORKER_RETENTION_COMMAND_IDS": "90"])
        #expect(s.retentionFinishedRunsS == 43_200 && s.retentionCommandIDsS == 90)
        try s.apply(arguments: ["--retention.finished-runs", "off", "--retention.command-ids=30m"])
        #expect(s.retentionFinishedRunsS == nil && s.retentionCommandIDsS == 1_800)
        try s.validate()
        try s.apply(yaml: "retention:\n  command_ids: 59s\n")
        #expect { try s.validate() } throws: { "\($0)".contains("retention.command_ids") }
        #expect(throws: SettingsError.self) { try s.apply(environment: ["RUNWORKER_RETENTION_FINISHED_RUNS": "soon"]) }
        #expect(throws: SettingsError.self) { try s.apply(environment: ["RUNWORKER_RETENTION_FINISHED_RUNS": "-1d"]) }
    }

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
