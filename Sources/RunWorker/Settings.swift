import Foundation
import Logging
import RunContract
import Yams

/// Everything the worker can be told, with the defaults `config/runworker.yaml` documents.
/// Layers, lowest first: built-in defaults, the YAML file, `RUNWORKER_*` environment
/// variables, command-line flags (applied by the executable).
public struct WorkerSettings: Sendable, Equatable {
    public var amqpURL = "amqp://guest:guest@127.0.0.1:5672/"
    public var prefix = "runs"
    public var store = "sqlite://data/runworker.sqlite"
    public var sqliteSynchronous = "FULL"
    public var partitions = 8
    public var prefetch = 256
    public var batchSize = 256
    public var maxBodyBytes = 1_048_576
    public var rebalanceIntervalS = 1.0
    public var timerIntervalS = 0.1
    public var deliveryLimit = 5
    public var pipelineDepth = 16
    public var statusFile: String? = nil
    public var logLevel = Logger.Level.info
    public var runDefaults = RunConfig(retry: RetryPolicy(maxAttempts: 1, delayS: 1, backoff: 2, maxDelayS: 300, retryTimeouts: false))

    public init() {}

    public var topology: Topology { Topology(prefix: prefix, partitions: partitions) }

    /// Checks ranges; the message names the setting.
    public func validate() throws(SettingsError) {
        guard !prefix.isEmpty, prefix.utf8.count <= 100 else { throw SettingsError("prefix must be 1 to 100 characters") }
        guard (1...1024).contains(partitions) else { throw SettingsError("partitions must be between 1 and 1024") }
        guard (1...65535).contains(prefetch) else { throw SettingsError("prefetch must be between 1 and 65535") }
        guard batchSize >= 1 else { throw SettingsError("batch_size must be at least 1") }
        guard maxBodyBytes >= 1024 else { throw SettingsError("max_body_bytes must be at least 1024") }
        guard rebalanceIntervalS > 0 else { throw SettingsError("rebalance_interval_s must be > 0") }
        guard timerIntervalS > 0 else { throw SettingsError("timer_interval_s must be > 0") }
        guard (1...64).contains(pipelineDepth) else { throw SettingsError("pipeline_depth must be between 1 and 64") }
        guard deliveryLimit >= 1 else { throw SettingsError("delivery_limit must be at least 1") }
        guard ["FULL", "NORMAL"].contains(sqliteSynchronous) else {
            throw SettingsError("sqlite_synchronous must be FULL or NORMAL")
        }
    }

    /// Applies a YAML document (the config file's format) over these settings.
    public mutating func apply(yaml text: String) throws(SettingsError) {
        // An empty document (or only comments) sets nothing.
        guard text.split(separator: "\n").contains(where: { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("#") && !$0.trimmingCharacters(in: .whitespaces).isEmpty }) else { return }
        let file: FileSettings
        do {
            file = try YAMLDecoder().decode(FileSettings.self, from: text)
        } catch {
            throw SettingsError("config file: \(error)")
        }
        if let v = file.amqp_url { amqpURL = v }
        if let v = file.prefix { prefix = v }
        if let v = file.store { store = v }
        if let v = file.sqlite_synchronous { sqliteSynchronous = v.uppercased() }
        if let v = file.partitions { partitions = v }
        if let v = file.prefetch { prefetch = v }
        if let v = file.batch_size { batchSize = v }
        if let v = file.max_body_bytes { maxBodyBytes = v }
        if let v = file.rebalance_interval_s { rebalanceIntervalS = v }
        if let v = file.timer_interval_s { timerIntervalS = v }
        if let v = file.delivery_limit { deliveryLimit = v }
        if let v = file.pipeline_depth { pipelineDepth = v }
        if let v = file.log_level { logLevel = try Self.level(v) }
        if let d = file.run_defaults {
            runDefaults.timeoutS = d.timeout_s
            runDefaults.startTimeoutS = d.start_timeout_s
            runDefaults.actionTimeoutS = d.action_timeout_s
            if let r = d.retry {
                runDefaults.retry = RetryPolicy(
                    maxAttempts: r.max_attempts ?? 1, delayS: r.delay_s ?? 1, backoff: r.backoff ?? 2,
                    maxDelayS: r.max_delay_s, retryTimeouts: r.retry_timeouts ?? false)
            }
        }
    }

    /// Applies `RUNWORKER_*` variables.
    public mutating func apply(environment env: [String: String]) throws(SettingsError) {
        func int(_ name: String) throws(SettingsError) -> Int? {
            guard let s = env[name] else { return nil }
            guard let v = Int(s) else { throw SettingsError("\(name) must be an integer, got \(s)") }
            return v
        }
        if let v = env["RUNWORKER_AMQP_URL"] { amqpURL = v }
        if let v = env["RUNWORKER_PREFIX"] { prefix = v }
        if let v = env["RUNWORKER_STORE"] { store = v }
        if let v = env["RUNWORKER_STATUS_FILE"] { statusFile = v }
        if let v = env["RUNWORKER_SQLITE_SYNCHRONOUS"] { sqliteSynchronous = v.uppercased() }
        if let v = try int("RUNWORKER_PARTITIONS") { partitions = v }
        if let v = try int("RUNWORKER_PREFETCH") { prefetch = v }
        if let v = try int("RUNWORKER_BATCH_SIZE") { batchSize = v }
        if let v = try int("RUNWORKER_MAX_BODY_BYTES") { maxBodyBytes = v }
        if let s = env["RUNWORKER_REBALANCE_INTERVAL_S"] {
            guard let v = Double(s) else { throw SettingsError("RUNWORKER_REBALANCE_INTERVAL_S must be a number") }
            rebalanceIntervalS = v
        }
        if let v = env["RUNWORKER_LOG_LEVEL"] { logLevel = try Self.level(v) }
        if let v = try int("RUNWORKER_DELIVERY_LIMIT") { deliveryLimit = v }
        if let v = try int("RUNWORKER_PIPELINE_DEPTH") { pipelineDepth = v }
        if let s = env["RUNWORKER_TIMER_INTERVAL_S"] {
            guard let v = Double(s) else { throw SettingsError("RUNWORKER_TIMER_INTERVAL_S must be a number") }
            timerIntervalS = v
        }
    }

    public static func level(_ text: String) throws(SettingsError) -> Logger.Level {
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw SettingsError(
                "log level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")), got \(text)")
        }
        return level
    }

    /// The file (when it exists, or must exist because it was named) then the environment.
    public static func load(configFile: String?, environment: [String: String]) throws(SettingsError) -> WorkerSettings {
        var settings = WorkerSettings()
        let path = configFile ?? "config/runworker.yaml"
        if FileManager.default.fileExists(atPath: path) {
            let text: String
            do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
                throw SettingsError("cannot read config file \(path): \(error)")
            }
            try settings.apply(yaml: text)
        } else if configFile != nil {
            throw SettingsError("config file \(path) does not exist")
        }
        try settings.apply(environment: environment)
        return settings
    }
}

public struct SettingsError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The YAML file's shape; snake_case keys as written in `config/runworker.yaml`.
private struct FileSettings: Decodable {
    struct Retry: Decodable {
        var max_attempts: Int?
        var delay_s: Double?
        var backoff: Double?
        var max_delay_s: Double?
        var retry_timeouts: Bool?
    }
    struct Defaults: Decodable {
        var timeout_s: Double?
        var start_timeout_s: Double?
        var action_timeout_s: Double?
        var retry: Retry?
    }
    var amqp_url: String?
    var prefix: String?
    var store: String?
    var sqlite_synchronous: String?
    var partitions: Int?
    var prefetch: Int?
    var batch_size: Int?
    var max_body_bytes: Int?
    var rebalance_interval_s: Double?
    var timer_interval_s: Double?
    var delivery_limit: Int?
    var pipeline_depth: Int?
    var log_level: String?
    var run_defaults: Defaults?
}
