import AMQPClient
import Foundation
import RunWorker

/// A `runworker` process on a benchmark prefix, configured through the environment only
/// (`--config` names an empty file so that no config/runworker.yaml is read).
final class WorkerProcess {
    let process = Process()
    let logPath: String

    init(binary: String, url: String, prefix: String, store: String, partitions: Int, prefetch: Int,
         synchronous: String?, dir: String, index: Int) throws {
        logPath = "\(dir)/\(prefix)-worker\(index).log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let config = "\(dir)/empty.yaml"
        _ = FileManager.default.createFile(atPath: config, contents: Data())
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--config", config, "--log-level", ProcessInfo.processInfo.environment["RUNBENCH_WORKER_LOG_LEVEL"] ?? "info"]
        var env = ProcessInfo.processInfo.environment
        env["RUNWORKER_AMQP_URL"] = url
        env["RUNWORKER_PREFIX"] = prefix
        env["RUNWORKER_STORE"] = store
        env["RUNWORKER_PARTITIONS"] = "\(partitions)"
        env["RUNWORKER_PREFETCH"] = "\(prefetch)"
        env["RUNWORKER_REBALANCE_INTERVAL_S"] = "0.5"
        // Unset means the worker's default, FULL (durable at every commit).
        if let synchronous { env["RUNWORKER_SQLITE_SYNCHRONOUS"] = synchronous }
        else { env.removeValue(forKey: "RUNWORKER_SQLITE_SYNCHRONOUS") }
        process.environment = env
        let log = FileHandle(forWritingAtPath: logPath)!
        process.standardError = log
        process.standardOutput = log
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func waitReady(timeout: Double = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if log.contains("runworker ready") { return }
            if !process.isRunning { throw BenchError("runworker exited early:\n\(log)") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw BenchError("runworker not ready after \(timeout) s:\n\(log)")
    }

    /// Partitions held, from the log: claims minus releases and losses.
    var ownedPartitions: Set<Int> {
        var owned = Set<Int>()
        for line in log.split(separator: "\n") {
            guard let r = line.range(of: "partition=") else { continue }
            let n = Int(line[r.upperBound...].prefix { $0.isNumber }) ?? -1
            if line.contains("claimed partition") { owned.insert(n) }
            if line.contains("released partition") || line.contains("lost partition") { owned.remove(n) }
        }
        return owned
    }

    var memoryKiB: (rss: Int, hwm: Int) { Proc.memory(pid) ?? (-1, -1) }

    /// SIGTERM (graceful), then SIGKILL if it does not exit within 15 s.
    func terminate() {
        guard process.isRunning else { return }
        process.terminate()
        let deadline = Date().addingTimeInterval(15)
        while process.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Lines of the log at warning level or worse (a clean benchmark has none).
    var problems: [Substring] {
        log.split(separator: "\n").filter { $0.contains(" warning ") || $0.contains(" error ") || $0.contains(" critical ") }
    }
}

/// Waits until the workers together hold every partition, each its fair share.
func waitBalanced(_ workers: [WorkerProcess], partitions: Int, timeout: Double = 60) throws {
    let fair = (partitions + workers.count - 1) / workers.count
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        let sets = workers.map(\.ownedPartitions)
        let all = sets.reduce(into: Set<Int>()) { $0.formUnion($1) }
        if all.count == partitions, sets.allSatisfy({ !$0.isEmpty && $0.count <= fair }),
           sets.map(\.count).reduce(0, +) == partitions {
            return
        }
        Thread.sleep(forTimeInterval: 0.1)
    }
    throw BenchError("workers did not balance \(partitions) partitions within \(timeout) s: \(workers.map(\.ownedPartitions))")
}

/// Deletes the queues and exchanges of a benchmark prefix.
func deleteTopology(url: String, _ t: Topology) {
    guard let conn = try? BlockingConnection(url: url) else { return }
    defer { conn.close() }
    for q in t.partitionQueues + [t.deadQueue, t.presenceQueue] {
        if let ch = try? conn.openChannel() {
            _ = try? conn.queueDelete(channel: ch, queue: q)
            try? conn.closeChannel(ch)
        }
    }
    for x in [t.commandsExchange, t.eventsExchange, t.deadExchange] {
        if let ch = try? conn.openChannel() {
            try? conn.exchangeDelete(channel: ch, name: x)
            try? conn.closeChannel(ch)
        }
    }
}
