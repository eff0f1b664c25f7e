import Foundation
import RunContract
import RunWorker

#if canImport(Glibc)
import Glibc
#endif

/// A `runworker` process on its own prefix, configured through the environment only, with its
/// own log file and status file (`RUNWORKER_STATUS_FILE`). Readiness, partitions and counters
/// come from the status file, never from the log; the log is for failure messages.
///
/// `@unchecked Sendable`: every stored property is a constant; `Process` is only signalled and
/// polled, and the files are read, never written, from here.
public final class WorkerProcess: @unchecked Sendable {
    public let process = Process()
    public let logPath: String
    public let statusPath: String
    private let configPath: String
    /// Whether the HTTP listener takes a free port, so that `waitReady` waits for its address.
    private var picksHTTPPort = false
    private let removesFiles: Bool

    /// Starts `binary` for `prefix` and `store`.
    ///
    /// - environment: overrides of the inherited environment; a `nil` value removes the variable.
    /// - directory: where the log, status and empty config files go (default: the temporary folder).
    /// - name: distinguishes this process's files in `directory` (default: random).
    /// - keepFiles: leave those files behind (the caller cleans `directory`).
    public init(binary: String, amqpURL: String, prefix: String, store: String,
                environment: [String: String?] = [:], arguments: [String] = [], logLevel: String = "debug",
                directory: String = NSTemporaryDirectory(), name: String? = nil, keepFiles: Bool = false) throws {
        let base = (directory.hasSuffix("/") ? directory : directory + "/")
            + "\(prefix)-\(name ?? String(UUID().uuidString.prefix(6)).lowercased())"
        logPath = base + ".log"
        statusPath = base + ".status.json"
        configPath = base + ".empty.yaml"
        removesFiles = !keepFiles
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        // An empty config file, so that only the defaults and the environment count (no
        // config/runworker.yaml is read).
        _ = FileManager.default.createFile(atPath: configPath, contents: Data())
        try? FileManager.default.removeItem(atPath: statusPath)
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--config", configPath, "--log-level", logLevel] + arguments
        var env = ProcessInfo.processInfo.environment
        env["RUNWORKER_AMQP_URL"] = amqpURL
        env["RUNWORKER_PREFIX"] = prefix
        env["RUNWORKER_STORE"] = store
        env["RUNWORKER_STATUS_FILE"] = statusPath
        // Many workers share this host in tests: each HTTP listener takes a free port (the
        // status file says which).
        env["RUNWORKER_HTTP_ADDRESS"] = "127.0.0.1:0"
        for (k, v) in environment { env[k] = v }
        process.environment = env
        picksHTTPPort = env["RUNWORKER_HTTP_ADDRESS"]?.hasSuffix(":0") == true
        let log = FileHandle(forWritingAtPath: logPath)!
        defer { try? log.close() }
        process.standardError = log
        process.standardOutput = log
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }
    /// The process's resident memory now and at its peak (VmRSS, VmHWM), in bytes; nil once
    /// it is gone.
    public var memory: (rss: Int, peak: Int)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        func kib(_ name: String) -> Int? {
            text.split(separator: "\n").first { $0.hasPrefix(name + ":") }
                .flatMap { Int($0.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") }
        }
        guard let rss = kib("VmRSS"), let peak = kib("VmHWM") else { return nil }
        return (rss * 1024, peak * 1024)
    }

    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The last status the worker wrote; nil before its first write.
    public var status: WorkerStatus? {
        guard let data = FileManager.default.contents(atPath: statusPath),
              let json = try? JSONValue.parse(Array(data)) else { return nil }
        return WorkerStatus(json)
    }

    /// `http://host:port` of the worker's HTTP listener, once its status file says where.
    public var httpBase: String? { status?.httpAddress.map { "http://" + $0 } }

    /// The partitions this worker holds, from its status file.
    public var ownedPartitions: Set<Int> { Set(status?.partitions ?? []) }

    /// Waits until the status file says ready and, when the listener takes a free port (the
    /// tests' default), where it listens: the HTTP side starts beside the loop, and under load
    /// the loop can be ready first. Throws if the process exits first or after `timeout`.
    public func waitReady(timeout: Double = 60) throws {
        let http = picksHTTPPort
        try waitForStatus(http ? "runworker ready and listening" : "runworker ready", timeout: timeout) {
            $0.ready && (!http || $0.httpAddress != nil)
        }
    }

    /// Waits until the worker's status satisfies `condition` and returns that status; throws
    /// (with the last status and the log) after `timeout` or when the process exits first.
    @discardableResult
    public func waitForStatus(_ what: String, timeout: Double = 30, _ condition: (WorkerStatus) -> Bool) throws
        -> WorkerStatus
    {
        var seen: WorkerStatus?
        try waitUntil(what, timeout: timeout, explain: { "last status: \(statusText)\nlog:\n\(log)" }) {
            seen = status
            if let s = seen, condition(s) { return true }
            guard isRunning else {
                throw TestKitError(.exited, "runworker exited (\(process.terminationStatus)) before \(what)\n"
                                   + "last status: \(statusText)\nlog:\n\(log)")
            }
            return false
        }
        return seen!
    }

    /// The status file as written, for messages.
    public var statusText: String {
        FileManager.default.contents(atPath: statusPath).map { String(decoding: $0, as: UTF8.self) } ?? "(none)"
    }

    /// SIGTERM (graceful), then SIGKILL if it has not exited within `grace` seconds. Returns
    /// the exit status (a signal number when it was killed).
    @discardableResult
    public func terminate(grace: Double = 15) -> Int32 {
        if process.isRunning {
            process.terminate()
            resume()  // a suspended process handles SIGTERM only once continued
            if !process.waitForExit(timeout: grace) { kill() }
        }
        return process.terminationStatus
    }

    /// SIGKILL, then waits (bounded) for the exit.
    public func kill() {
        if process.isRunning { Glibc.kill(pid, SIGKILL) }
        process.waitForExit(timeout: 10)
    }

    /// SIGSTOP: the process freezes (its connection stays open, heartbeats stop).
    public func suspend() { Glibc.kill(pid, SIGSTOP) }

    /// SIGCONT after `suspend()`.
    public func resume() { Glibc.kill(pid, SIGCONT) }

    /// Waits until the workers together hold every one of `partitions`, each a non-empty share
    /// of at most its fair part.
    public static func waitBalanced(_ workers: [WorkerProcess], partitions: Int, timeout: Double = 60) throws {
        let fair = (partitions + workers.count - 1) / workers.count
        try waitUntil("workers did not balance \(partitions) partitions", timeout: timeout, poll: 0.1,
                      explain: { "\(workers.map { $0.ownedPartitions.sorted() })" }) {
            let sets = workers.map(\.ownedPartitions)
            let all = sets.reduce(into: Set<Int>()) { $0.formUnion($1) }
            return all.count == partitions && sets.allSatisfy { !$0.isEmpty && $0.count <= fair }
                && sets.map(\.count).reduce(0, +) == partitions
        }
    }

    deinit {
        if process.isRunning {
            Glibc.kill(pid, SIGKILL)
            process.waitForExit(timeout: 10)
        }
        if removesFiles {
            for path in [logPath, statusPath, statusPath + ".tmp", configPath] {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
    }
}

extension WorkerStatus {
    /// Decodes the status file's JSON (the shape `WorkerStatus.json` writes); nil when it is
    /// not such a document.
    public init?(_ json: JSONValue) {
        guard let id = json["worker_id"]?.stringValue, let c = json["counters"]?.objectValue else { return nil }
        self.init(workerID: id)
        ready = json["ready"]?.boolValue ?? false
        connected = json["connected"]?.boolValue ?? false
        partitions = (json["partitions"]?.arrayValue ?? []).compactMap { $0.intValue.map(Int.init) }
        httpAddress = json["http_address"]?.stringValue
        storeError = json["store_error"]?.stringValue
        brokerBlocked = json["broker_blocked"]?.stringValue
        func n(_ key: String) -> Int { Int(c[key]?.intValue ?? 0) }
        counters.applied = n("applied")
        counters.refused = n("refused")
        counters.duplicates = n("duplicates")
        counters.deadLettered = n("dead_lettered")
        counters.timersFired = n("timers_fired")
        counters.commandFailures = n("command_failures")
        counters.poisonDeadLettered = n("poison_dead_lettered")
        counters.requeued = n("requeued")
        counters.connections = n("connections")
        counters.outboxRepublished = n("outbox_republished")
        counters.leasesLost = n("leases_lost")
        counters.fencedCommits = n("fenced_commits")
        counters.commits = n("commits")
        counters.storeRoundTrips = n("store_round_trips")
        counters.batchRoundTrips = n("batch_round_trips")
        counters.stagePrepareNs = n("stage_prepare_ns")
        counters.stageDecideNs = n("stage_decide_ns")
        counters.stageStoreNs = n("stage_store_ns")
        counters.stagePublishNs = n("stage_publish_ns")
        counters.stageCommands = n("stage_commands")
        counters.runCacheRuns = n("run_cache_runs")
        counters.runCacheBytes = n("run_cache_bytes")
        counters.readAheadFull = n("read_ahead_full")
        counters.readAheadPeakBytes = n("read_ahead_peak_bytes")
        if let w = json["webhooks"]?.objectValue {
            var hooks = WebhookCounters()
            hooks.connected = w["connected"]?.boolValue ?? false
            hooks.delivered = Int(w["delivered"]?.intValue ?? 0)
            hooks.retried = Int(w["retried"]?.intValue ?? 0)
            hooks.failed = Int(w["failed"]?.intValue ?? 0)
            hooks.skipped = Int(w["skipped"]?.intValue ?? 0)
            webhooks = hooks
        }
    }
}
