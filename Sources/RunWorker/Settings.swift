import Foundation
import Logging
import RunContract
import Yams

/// Everything the worker can be told, with the defaults `config/runworker.yaml` documents.
/// Layers, lowest first: built-in defaults, the YAML file, `RUNWORKER_*` environment
/// variables, command-line flags. Every setting is declared once, in `table`; the file keys,
/// variable names and flags all derive from it.
public struct WorkerSettings: Sendable, Equatable {
    /// One broker URL, or several nodes of a cluster separated by commas (see `NodeRotation`).
    public var amqpURL = "amqp://guest:guest@127.0.0.1:5672/"
    public var prefix = "runs"
    public var store = "sqlite://data/runworker.sqlite"
    public var sqliteSynchronous = "FULL"
    public var partitions = 8
    /// classic, or quorum (replicated partition and dead-letter queues, for a cluster).
    public var partitionQueueType = Topology.QueueType.classic
    public var prefetch = 256
    public var batchSize = 256
    public var maxBodyBytes = 1_048_576
    public var rebalanceIntervalS = 1.0
    /// How long a partition lease (and this worker's membership) lasts without renewal, by
    /// the store's clock. Renewed every third of it; a worker that could not renew for half of
    /// it stops working on its partitions.
    public var leaseTTLS = 10.0
    public var timerIntervalS = 0.1
    public var deliveryLimit = 5
    public var pipelineDepth = 16
    /// The memory budget, in MiB, the worker's byte-bounded parts take their shares from: the
    /// run cache a quarter, the read-ahead a sixteenth, a batch a 32nd, the streams a quarter.
    public var memoryBudgetMiB = 256
    /// The run cache's share of the memory budget, in bytes.
    public var runCacheBytes: Int { (memoryBudgetMiB << 20) / 4 }
    /// Command bytes one batch takes at most (a thirty-second of the budget; at least one
    /// command): a batch holds each body several times over while it is decoded, applied,
    /// stored and published (runbench large: about 8 times, at its peak), so 512 commands of
    /// 200 KB (100 MB of bodies) were one transaction before.
    public var batchBytes: Int { (memoryBudgetMiB << 20) / 32 }
    /// Command bytes read ahead of the batch being applied before the loop stops reading the
    /// connection (a sixteenth of the budget): see `ReadAhead`.
    public var readAheadBytes: Int { (memoryBudgetMiB << 20) / 16 }
    public var logLevel = Logger.Level.info
    public var runDefaults = RunConfig(retry: RetryPolicy(maxAttempts: 1, delayS: 1, backoff: 2, maxDelayS: 300, retryTimeouts: false))
    /// A JSON file the worker rewrites with its readiness, partitions and counters; nil: none.
    public var statusFile: String? = nil
    /// `host:port` of the HTTP listener (health, metrics, runs API, board); `off`: none.
    public var httpAddress = "127.0.0.1:8080"
    /// The bearer token the HTTP API asks for; required to listen beyond loopback.
    public var httpToken: String? = nil
    /// `http.header_timeout_s`: seconds a request's head may take to arrive, counted from the
    /// connection's opening or, on a kept-alive connection, from the next request's first byte.
    public var httpHeaderTimeoutS = 10.0
    /// `http.idle_timeout_s`: seconds a kept-alive connection may wait for its next request.
    public var httpIdleTimeoutS = 60.0
    /// `http.max_connections`: HTTP connections open at once; one more closes the oldest waiting
    /// one, or is refused at once when all are busy.
    public var httpMaxConnections = 256
    /// Live event streams (`/v1/events/stream`) served at once, all clients together.
    public var httpMaxStreams = 64
    /// Live event streams open at once with one bearer token (only with `http_token`).
    public var httpMaxStreamsPerToken = 16
    /// KiB of events one stream holds for a client that has not read them; beyond it the
    /// client is disconnected. See `streamBufferBytes` for what the budget allows.
    public var httpStreamBufferKiB = 256
    /// The bytes one event stream may hold unread: `http.stream_buffer_kib`, or less when the
    /// streams' share of the memory budget (a quarter, like the run cache's) divided among
    /// `http.max_streams` is less. With the defaults: min(256 KiB, 256 MiB / 4 / 64 = 1 MiB), so
    /// 64 streams hold 16 MiB at most, within the quarter (64 MiB).
    public var streamBufferBytes: Int { min(httpStreamBufferKiB << 10, ((memoryBudgetMiB << 20) / 4) / httpMaxStreams) }
    /// Seconds a finished run (with its history and command records) is kept; nil: forever.
    public var retentionFinishedRunsS: Double? = 7 * 86_400
    /// Seconds a command id is remembered for de-duplication; nil: forever.
    public var retentionCommandIDsS: Double? = 86_400
    /// Seconds between retention passes.
    public var retentionIntervalS = 60.0
    /// Completion webhooks (`webhooks.*`): off unless enabled.
    public var webhooks = WebhookSettings()

    public init() {}

    public var topology: Topology {
        Topology(prefix: prefix, partitions: partitions, queueType: partitionQueueType, deliveryLimit: deliveryLimit)
    }

    /// The broker URLs of `amqpURL`, in order.
    public func amqpURLs() throws(SettingsError) -> [String] { try NodeRotation.parse(amqpURL) }

    /// Checks ranges; the message names the setting.
    public func validate() throws(SettingsError) {
        _ = try amqpURLs()
        guard !prefix.isEmpty, prefix.utf8.count <= 100 else { throw SettingsError("prefix must be 1 to 100 characters") }
        guard (1...1024).contains(partitions) else { throw SettingsError("partitions must be between 1 and 1024") }
        guard (1...65535).contains(prefetch) else { throw SettingsError("prefetch must be between 1 and 65535") }
        guard batchSize >= 1 else { throw SettingsError("batch_size must be at least 1") }
        guard maxBodyBytes >= 1024 else { throw SettingsError("max_body_bytes must be at least 1024") }
        guard rebalanceIntervalS > 0 else { throw SettingsError("rebalance_interval_s must be > 0") }
        guard leaseTTLS.isFinite, leaseTTLS >= 0.5 else { throw SettingsError("lease_ttl_s must be at least 0.5") }
        guard timerIntervalS > 0 else { throw SettingsError("timer_interval_s must be > 0") }
        guard (1...64).contains(pipelineDepth) else { throw SettingsError("pipeline_depth must be between 1 and 64") }
        guard (16...1_048_576).contains(memoryBudgetMiB) else {
            throw SettingsError("memory.budget_mib must be between 16 and 1048576")
        }
        guard deliveryLimit >= 1 else { throw SettingsError("delivery_limit must be at least 1") }
        guard ["FULL", "NORMAL"].contains(sqliteSynchronous) else {
            throw SettingsError("sqlite_synchronous must be FULL or NORMAL")
        }
        _ = try Self.decodeRunDefaults(runDefaults.jsonObject)
        if let endpoint = try httpEndpoint(), !endpoint.isLoopback, (httpToken ?? "").isEmpty {
            throw SettingsError(
                "http_address \(httpAddress) is not a loopback address: set http_token (RUNWORKER_HTTP_TOKEN) so that the API asks for it, or listen on 127.0.0.1")
        }
        if let token = httpToken, !token.isEmpty, token.utf8.count < 16 {
            throw SettingsError("http_token must be at least 16 characters")
        }
        guard httpHeaderTimeoutS > 0, httpHeaderTimeoutS <= 3600 else {
            throw SettingsError("http.header_timeout_s must be > 0 (at most 3600)")
        }
        guard httpIdleTimeoutS > 0, httpIdleTimeoutS <= 86_400 else {
            throw SettingsError("http.idle_timeout_s must be > 0 (at most 86400)")
        }
        guard (1...65_536).contains(httpMaxConnections) else {
            throw SettingsError("http.max_connections must be between 1 and 65536")
        }
        guard (1...100_000).contains(httpMaxStreams) else { throw SettingsError("http.max_streams must be between 1 and 100000") }
        guard (1...100_000).contains(httpMaxStreamsPerToken) else {
            throw SettingsError("http.max_streams_per_token must be between 1 and 100000")
        }
        guard (16...1_048_576).contains(httpStreamBufferKiB) else {
            throw SettingsError("http.stream_buffer_kib must be between 16 and 1048576")
        }
        if let s = retentionFinishedRunsS, s < 1 { throw SettingsError("retention.finished_runs must be at least 1s (or off)") }
        // Shorter than this and a command redelivered after a worker died, or retried by its
        // client, could be applied twice.
        if let s = retentionCommandIDsS, s < 60 { throw SettingsError("retention.command_ids must be at least 60s (or off)") }
        guard retentionIntervalS > 0 else { throw SettingsError("retention.interval_s must be > 0") }
        try webhooks.validate()
    }

    /// Where to listen: nil when `http_address` is `off`.
    public func httpEndpoint() throws(SettingsError) -> HTTPEndpoint? {
        let text = httpAddress.trimmingCharacters(in: .whitespaces)
        if text.lowercased() == "off" || text.isEmpty { return nil }
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port)
        else { throw SettingsError("http_address must be host:port or off, got \(httpAddress)") }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw SettingsError("http_address needs a host, got \(httpAddress)") }
        return HTTPEndpoint(host: host, port: port)
    }

    /// Applies a YAML document (the config file's format) over these settings. Every key must
    /// be in `table` (nested keys as mappings: `run_defaults: {retry: {max_attempts: 3}}`).
    public mutating func apply(yaml text: String) throws(SettingsError) {
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch { throw SettingsError("config file: \(error)") }
        guard let root, root.null == nil else { return }  // empty, or only comments
        try apply(node: root, path: "")
    }

    private mutating func apply(node: Node, path: String) throws(SettingsError) {
        let specs = Self.table
        guard let mapping = node.mapping else {
            throw SettingsError(path.isEmpty ? "config file must be a mapping of settings" : "\(path) must be a mapping")
        }
        for (k, value) in mapping {
            guard let name = k.string else { throw SettingsError("config file: keys must be strings (under \(path))") }
            let key = path.isEmpty ? name : "\(path).\(name)"
            if let spec = specs.first(where: { $0.key == key }) {
                guard let scalar = value.scalar else { throw SettingsError("\(key) must be a single value") }
                try spec.set(&self, value.null == nil ? scalar.string : nil)
            } else if specs.contains(where: { $0.key.hasPrefix(key + ".") }) {
                if value.null != nil { continue }
                try apply(node: value, path: key)
            } else {
                throw SettingsError("unknown setting \(key) in config file")
            }
        }
    }

    /// Every leaf key of a YAML document, nested ones dotted (`run_defaults.retry.delay_s`).
    static func keys(inYAML text: String) throws -> [String] {
        func leaves(_ n: Node, _ prefix: String) -> [String] {
            guard let m = n.mapping else { return [prefix] }
            return m.flatMap { (k, v) in leaves(v, prefix.isEmpty ? k.string ?? "" : "\(prefix).\(k.string ?? "")") }
        }
        return try Yams.compose(yaml: text).map { leaves($0, "") } ?? []
    }

    /// Applies `RUNWORKER_*` variables (`SettingSpec.environmentName`); others are ignored.
    public mutating func apply(environment env: [String: String]) throws(SettingsError) {
        // The secret's short name; RUNWORKER_WEBHOOKS_SECRET (the table's) wins when both are set.
        if let secret = env["RUNWORKER_WEBHOOK_SECRET"] { webhooks.secret = secret.isEmpty ? nil : secret }
        for spec in Self.table {
            if let v = env[spec.environmentName] { try spec.set(&self, v) }
        }
    }

    /// Applies `--<flag> VALUE` or `--<flag>=VALUE` pairs (`SettingSpec.flag`). An unknown flag
    /// or a missing value is an error naming it.
    public mutating func apply(arguments: [String]) throws(SettingsError) {
        let specs = Self.table
        var i = 0
        while i < arguments.count {
            let argument = arguments[i]
            let (flag, inline) = argument.firstIndex(of: "=").map {
                (String(argument[..<$0]), Optional(String(argument[argument.index(after: $0)...])))
            } ?? (argument, nil)
            guard let spec = specs.first(where: { $0.flag == flag }) else {
                throw SettingsError("unknown option \(flag) (see --help for the settings)")
            }
            let value: String
            if let inline {
                value = inline
            } else {
                guard i + 1 < arguments.count else { throw SettingsError("\(flag) needs a value") }
                i += 1
                value = arguments[i]
            }
            try spec.set(&self, value)
            i += 1
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

    /// One line per setting for `--help`: flag, variable, default, what it does.
    public static var settingsHelp: String {
        let defaults = WorkerSettings()
        return table.map { s in
            "\(s.flag) (\(s.environmentName), default \(s.get(defaults) ?? "none")): \(s.help)"
        }.joined(separator: "\n")
    }
}

public struct SettingsError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// One setting: its key as the YAML file writes it (`amqp_url`, `run_defaults.retry.max_attempts`),
/// what it does, and how to read it from text into `WorkerSettings`.
public struct SettingSpec {
    public let key: String
    public let help: String
    /// Sets the value from text (YAML scalar, variable, flag); nil is YAML `null`. Errors name the key.
    public let set: (inout WorkerSettings, String?) throws(SettingsError) -> Void
    /// The current value as text; nil when unset.
    public let get: (WorkerSettings) -> String?

    /// `RUNWORKER_` + the key uppercased, dots and dashes as underscores.
    public var environmentName: String {
        "RUNWORKER_" + key.uppercased().replacingOccurrences(of: ".", with: "_").replacingOccurrences(of: "-", with: "_")
    }

    /// `--` + the key with underscores as dashes: `--amqp-url`, `--run-defaults.retry.max-attempts`.
    public var flag: String { "--" + key.replacingOccurrences(of: "_", with: "-") }
}

extension WorkerSettings {
    /// Every setting, in the order `config/runworker.yaml` documents them.
    public static var table: [SettingSpec] {
        [
            text(
                "amqp_url", \.amqpURL,
                "Broker URL, amqp:// or amqps:// (TLS options in the query); several nodes of a cluster separated by commas."),
            text("prefix", \.prefix, "Prefix of every exchange and queue name."),
            text("store", \.store, "Store URL: sqlite:///abs/path.sqlite or sqlite://relative/path.sqlite."),
            SettingSpec(
                key: "sqlite_synchronous", help: "SQLite durability: FULL (survives power loss) or NORMAL.",
                set: { (s, v) throws(SettingsError) in s.sqliteSynchronous = try required("sqlite_synchronous", v).uppercased() },
                get: { $0.sqliteSynchronous }),
            integer("partitions", \.partitions, "Number of command partitions (the same for every worker)."),
            SettingSpec(
                key: "partition_queue_type",
                help: "classic, or quorum: replicated partition and dead-letter queues (the same for every worker).",
                set: { (s, v) throws(SettingsError) in
                    let text = try required("partition_queue_type", v)
                    guard let type = Topology.QueueType(rawValue: text.trimmingCharacters(in: .whitespaces).lowercased()) else {
                        throw SettingsError("partition_queue_type must be classic or quorum, got \(text)")
                    }
                    s.partitionQueueType = type
                },
                get: { $0.partitionQueueType.rawValue }),
            integer("prefetch", \.prefetch, "Unacknowledged deliveries per partition consumer."),
            integer("batch_size", \.batchSize, "Most commands applied in one store transaction."),
            integer("pipeline_depth", \.pipelineDepth, "Batches published but not yet confirmed, at most."),
            integer(
                "memory.budget_mib", \.memoryBudgetMiB,
                "MiB the worker's byte-bounded buffers share (the run cache takes a quarter, larger runs are read from the store; deliveries read ahead a sixteenth; a batch at most a 32nd of command bytes; event streams a quarter)."),
            integer("max_body_bytes", \.maxBodyBytes, "Larger command bodies are refused (payload_too_large)."),
            number("rebalance_interval_s", \.rebalanceIntervalS, "Seconds between partition ownership checks."),
            number(
                "lease_ttl_s", \.leaseTTLS,
                "Seconds a partition lease lasts unrenewed, by the store's clock (a stalled worker's partitions move after it)."),
            number("timer_interval_s", \.timerIntervalS, "Seconds between sweeps for elapsed deadlines."),
            integer("delivery_limit", \.deliveryLimit, "Failed deliveries of one message before it is dead-lettered."),
            SettingSpec(
                key: "log_level", help: "trace, debug, info, notice, warning, error or critical.",
                set: { (s, v) throws(SettingsError) in s.logLevel = try level(try required("log_level", v)) },
                get: { $0.logLevel.rawValue }),
            SettingSpec(
                key: "status_file",
                help: "a JSON file the worker rewrites with its readiness, partitions and counters, for tests and supervisors",
                set: { (s, v) in s.statusFile = (v == nil || v == "" || v == "null") ? nil : v },
                get: { $0.statusFile }),
            text("http_address", \.httpAddress, "host:port of the HTTP API, metrics, health and board; off: none."),
            SettingSpec(
                key: "http_token", help: "bearer token the HTTP API asks for (required beyond loopback)",
                set: { (s, v) in s.httpToken = (v == nil || v == "" || v == "null") ? nil : v },
                get: { $0.httpToken == nil ? nil : "(set)" }),
            number(
                "http.header_timeout_s", \.httpHeaderTimeoutS,
                "Seconds a request head may take (from the connection's opening, or the next request's first byte); slower clients are disconnected."),
            number("http.idle_timeout_s", \.httpIdleTimeoutS, "Seconds a kept-alive HTTP connection may wait for its next request."),
            integer(
                "http.max_connections", \.httpMaxConnections,
                "HTTP connections open at once (an event stream is one); at the cap the oldest idle one is closed for a new one, or with all busy the new one gets 503."),
            integer("http.max_streams", \.httpMaxStreams, "Live event streams served at once; more are answered 503 with Retry-After."),
            integer(
                "http.max_streams_per_token", \.httpMaxStreamsPerToken,
                "Live event streams open at once with one bearer token (with http_token); more are answered 429 with Retry-After."),
            integer(
                "http.stream_buffer_kib", \.httpStreamBufferKiB,
                "KiB of unread events one stream holds before its client is disconnected (at most a quarter of memory.budget_mib over http.max_streams)."),
            duration("retention.finished_runs", \.retentionFinishedRunsS, "How long finished runs and their history are kept (7d, 12h, 30m, 90s; off: forever)."),
            duration("retention.command_ids", \.retentionCommandIDsS, "How long command ids are remembered for de-duplication (off: forever)."),
            number("retention.interval_s", \.retentionIntervalS, "Seconds between retention passes."),
            boolean("webhooks.enabled", \.webhooks.enabled, "Deliver run events to webhooks (declares <prefix>.webhooks)."),
            SettingSpec(
                key: "webhooks.secret",
                help: "HMAC-SHA256 key of Runworker-Signature, at least 16 characters; required when enabled (also RUNWORKER_WEBHOOK_SECRET)",
                set: { (s, v) in s.webhooks.secret = (v == nil || v == "" || v == "null") ? nil : v },
                get: { $0.webhooks.secret == nil ? nil : "(set)" }),
            SettingSpec(
                key: "webhooks.default_url", help: "webhook of runs without config.webhook (null: none)",
                set: { (s, v) in s.webhooks.defaultURL = (v == nil || v == "" || v == "null") ? nil : v },
                get: { $0.webhooks.defaultURL }),
            boolean(
                "webhooks.allow_private_targets", \.webhooks.allowPrivateTargets,
                "Allow webhook hosts that resolve to loopback, private, link-local or unspecified addresses."),
            integer("webhooks.max_attempts", \.webhooks.maxAttempts, "Delivery attempts of one event before giving up."),
            number("webhooks.initial_backoff_s", \.webhooks.initialBackoffS, "Seconds before the first retry (doubling)."),
            number("webhooks.max_backoff_s", \.webhooks.maxBackoffS, "Cap on the seconds between retries."),
            number("webhooks.timeout_s", \.webhooks.timeoutS, "Seconds one POST may take, connecting included."),
            integer("webhooks.concurrency", \.webhooks.concurrency, "POSTs in flight at most (the webhook consumer's prefetch)."),
            runDefault("timeout_s", "Default seconds for one attempt, start to finish (null: no limit)."),
            runDefault("start_timeout_s", "Default seconds from created to started (null: no limit)."),
            runDefault("action_timeout_s", "Default seconds per action (null: no limit)."),
            runDefault("retry.max_attempts", "Default attempts in all (1: no retry)."),
            runDefault("retry.delay_s", "Default seconds before the first retry."),
            runDefault("retry.backoff", "Default multiplier of the delay after each attempt."),
            runDefault("retry.max_delay_s", "Default cap on the retry delay, seconds."),
            runDefault("retry.retry_timeouts", "Whether a timed-out attempt is retried by default."),
        ]
    }

    private static func required(_ key: String, _ value: String?) throws(SettingsError) -> String {
        guard let value else { throw SettingsError("\(key) must have a value, not null") }
        return value
    }

    private static func text(_ key: String, _ path: WritableKeyPath<WorkerSettings, String>, _ help: String) -> SettingSpec {
        SettingSpec(
            key: key, help: help, set: { (s, v) throws(SettingsError) in s[keyPath: path] = try required(key, v) },
            get: { $0[keyPath: path] })
    }

    private static func integer(_ key: String, _ path: WritableKeyPath<WorkerSettings, Int>, _ help: String) -> SettingSpec {
        SettingSpec(
            key: key, help: help,
            set: { (s, v) throws(SettingsError) in
                let text = try required(key, v)
                guard let n = Int(text.trimmingCharacters(in: .whitespaces)) else {
                    throw SettingsError("\(key) must be an integer, got \(text)")
                }
                s[keyPath: path] = n
            },
            get: { String($0[keyPath: path]) })
    }

    private static func boolean(_ key: String, _ path: WritableKeyPath<WorkerSettings, Bool>, _ help: String) -> SettingSpec {
        SettingSpec(
            key: key, help: help,
            set: { (s, v) throws(SettingsError) in
                let text = try required(key, v)
                switch text.trimmingCharacters(in: .whitespaces).lowercased() {
                case "true", "yes", "on", "1": s[keyPath: path] = true
                case "false", "no", "off", "0": s[keyPath: path] = false
                default: throw SettingsError("\(key) must be true or false, got \(text)")
                }
            },
            get: { String($0[keyPath: path]) })
    }

    private static func number(_ key: String, _ path: WritableKeyPath<WorkerSettings, Double>, _ help: String) -> SettingSpec {
        SettingSpec(
            key: key, help: help,
            set: { (s, v) throws(SettingsError) in
                let text = try required(key, v)
                guard let n = Double(text.trimmingCharacters(in: .whitespaces)), n.isFinite else {
                    throw SettingsError("\(key) must be a number, got \(text)")
                }
                s[keyPath: path] = n
            },
            get: { String($0[keyPath: path]) })
    }

    /// A duration: a number of seconds, or a number with s, m, h or d; off (or null) for none.
    private static func duration(_ key: String, _ path: WritableKeyPath<WorkerSettings, Double?>, _ help: String) -> SettingSpec {
        SettingSpec(
            key: key, help: help,
            set: { (s, v) throws(SettingsError) in
                let text = (v ?? "off").trimmingCharacters(in: .whitespaces).lowercased()
                if text == "off" || text == "null" || text == "" {
                    s[keyPath: path] = nil
                    return
                }
                let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
                var number = Substring(text)
                var unit = 1.0
                if let last = text.last, let u = units[last] {
                    unit = u
                    number = number.dropLast()
                }
                guard let n = Double(number), n.isFinite, n >= 0 else {
                    throw SettingsError("\(key) must be a duration like 7d, 12h, 30m, 90s or off, got \(v ?? "null")")
                }
                s[keyPath: path] = n * unit
            },
            get: { s in s[keyPath: path].map { seconds in
                seconds.truncatingRemainder(dividingBy: 86_400) == 0 ? "\(Int(seconds / 86_400))d"
                    : seconds.truncatingRemainder(dividingBy: 3600) == 0 ? "\(Int(seconds / 3600))h"
                    : seconds.truncatingRemainder(dividingBy: 1) == 0 ? "\(Int(seconds))s" : "\(seconds)s"
            } ?? "off" })
    }

    /// A field of `run_defaults`, which is a run `config`: the value is written into the config's
    /// JSON form and the whole config decoded again with the contract's own rules, so a default
    /// is refused exactly when a command's `config` would be (`run_defaults.timeout_s must be ...`).
    private static func runDefault(_ field: String, _ help: String) -> SettingSpec {
        let path = field.split(separator: ".").map(String.init)
        return SettingSpec(
            key: "run_defaults.\(field)", help: help,
            set: { (s, v) throws(SettingsError) in
                var json = s.runDefaults.jsonObject
                json.setValue(v.map(scalarJSON) ?? .null, at: path[...])
                s.runDefaults = try decodeRunDefaults(json)
            },
            get: { s in
                var value: JSONValue = .object(s.runDefaults.jsonObject)
                for p in path { value = value.objectValue?[p] ?? .null }
                return value.isNull ? nil : String(decoding: value.serialized(), as: UTF8.self)
            })
    }

    /// YAML and environment text as JSON: numbers, booleans and null as such, anything else a string.
    private static func scalarJSON(_ text: String) -> JSONValue {
        let t = text.trimmingCharacters(in: .whitespaces)
        switch t.lowercased() {
        case "", "null", "~": return .null
        case "true", "yes", "on": return .bool(true)
        case "false", "no", "off": return .bool(false)
        default: return (try? JSONValue.parse(Array(t.utf8))).flatMap { $0.isNull ? nil : $0 } ?? .string(text)
        }
    }

    fileprivate static func decodeRunDefaults(_ json: JSONObject) throws(SettingsError) -> RunConfig {
        do { return try RunConfig(json: json, path: "run_defaults") } catch { throw SettingsError(error.message) }
    }
}

extension JSONObject {
    /// Sets the value at a nested path, creating objects on the way.
    fileprivate mutating func setValue(_ value: JSONValue, at path: ArraySlice<String>) {
        guard let first = path.first else { return }
        if path.count == 1 {
            self[first] = value
            return
        }
        var inner = self[first]?.objectValue ?? JSONObject()
        inner.setValue(value, at: path.dropFirst())
        self[first] = .object(inner)
    }
}

/// `webhooks.*`: completion webhooks (see `RunWebhooks`).
public struct WebhookSettings: Sendable, Equatable {
    public var enabled = false
    /// The HMAC-SHA256 key; required when enabled.
    public var secret: String? = nil
    /// The webhook of runs without `config.webhook` (their terminal events); nil: none.
    public var defaultURL: String? = nil
    /// Whether hosts that resolve to loopback, private, link-local or unspecified addresses
    /// may be POSTed to (tests, a receiver on the same network).
    public var allowPrivateTargets = false
    /// Attempts of one event in all, the first included.
    public var maxAttempts = 10
    public var initialBackoffS = 1.0
    public var maxBackoffS = 300.0
    /// One POST, connecting included.
    public var timeoutS = 10.0
    /// POSTs in flight at most: the prefetch of the webhook queue's consumer.
    public var concurrency = 8

    public init() {}

    public func validate() throws(SettingsError) {
        if let url = defaultURL, !WebhookConfig.isValidURL(url) {
            throw SettingsError("webhooks.default_url must be an http:// or https:// URL with a host")
        }
        guard (1...1000).contains(maxAttempts) else { throw SettingsError("webhooks.max_attempts must be between 1 and 1000") }
        guard initialBackoffS > 0, initialBackoffS <= 86_400 else {
            throw SettingsError("webhooks.initial_backoff_s must be > 0 (at most 86400)")
        }
        guard maxBackoffS >= initialBackoffS, maxBackoffS <= 86_400 else {
            throw SettingsError("webhooks.max_backoff_s must be at least webhooks.initial_backoff_s (at most 86400)")
        }
        guard timeoutS > 0, timeoutS <= 3600 else { throw SettingsError("webhooks.timeout_s must be > 0 (at most 3600)") }
        guard (1...1024).contains(concurrency) else { throw SettingsError("webhooks.concurrency must be between 1 and 1024") }
        guard enabled else { return }
        guard let secret, !secret.isEmpty else {
            throw SettingsError("webhooks.enabled needs webhooks.secret (RUNWORKER_WEBHOOK_SECRET): the key that signs each POST")
        }
        guard secret.utf8.count >= 16 else { throw SettingsError("webhooks.secret must be at least 16 characters") }
    }
}

/// A host and port to listen on.
public struct HTTPEndpoint: Sendable, Hashable {
    public var host: String
    public var port: Int
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
    /// 127.0.0.0/8 (as an address, not a name that starts so), ::1 and localhost: reachable
    /// from this host only.
    public var isLoopback: Bool {
        if host == "localhost" || host == "::1" { return true }
        let octets = host.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
    }
}
