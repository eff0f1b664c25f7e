import AMQPClient
import Foundation
import RunContract
import Testing

@testable import RunWorker

let amqpURL = ProcessInfo.processInfo.environment["RUNWORKER_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/"

/// The folder holding this test binary, where SwiftPM also puts `runworker` and `runctl`.
let binDir: URL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    .deletingLastPathComponent()

func uniquePrefix(_ name: String) -> String { "t-\(name)-\(UUID().uuidString.prefix(8).lowercased())" }

struct TimedOut: Error, CustomStringConvertible {
    var description: String
}

/// A `runworker` process with its own log file, started on a test prefix.
final class WorkerProcess: @unchecked Sendable {
    let process = Process()
    let logPath: String

    init(prefix: String, store: String, extraEnv: [String: String] = [:], arguments: [String] = []) throws {
        logPath = NSTemporaryDirectory() + "\(prefix)-\(UUID().uuidString.prefix(6)).log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = binDir.appendingPathComponent("runworker")
        // An empty config file, so that only the defaults and the environment below count.
        let config = NSTemporaryDirectory() + "\(prefix)-empty.yaml"
        _ = FileManager.default.createFile(atPath: config, contents: Data())
        process.arguments = ["--config", config, "--log-level", "debug"] + arguments
        var env = ProcessInfo.processInfo.environment
        env["RUNWORKER_AMQP_URL"] = amqpURL
        env["RUNWORKER_PREFIX"] = prefix
        env["RUNWORKER_STORE"] = store
        env["RUNWORKER_SQLITE_SYNCHRONOUS"] = "NORMAL"
        env["RUNWORKER_REBALANCE_INTERVAL_S"] = "0.2"
        env["RUNWORKER_PARTITIONS"] = "4"
        for (k, v) in extraEnv { env[k] = v }
        process.environment = env
        let log = FileHandle(forWritingAtPath: logPath)!
        process.standardError = log
        process.standardOutput = log
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits for the "runworker ready" line.
    func waitReady(timeout: Double = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if log.contains("runworker ready") { return }
            if !process.isRunning { throw TimedOut(description: "runworker exited early:\n\(log)") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw TimedOut(description: "runworker not ready after \(timeout) s:\n\(log)")
    }

    /// The partitions this worker holds, from its log (claims minus releases and losses).
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

    func terminate() -> Int32 {
        process.terminate()
        process.waitUntilExit()
        return process.terminationStatus
    }

    func kill() {
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: logPath)
    }
}

/// A producer and subscriber speaking nothing but the contract: publishes commands, reads
/// replies from its own queue and events from a queue bound to `run.#`.
final class ContractClient {
    let conn: BlockingConnection
    let channel: UInt16
    let topology: Topology
    let replyQueue: String
    let eventQueue: String
    private var replies: [String: CommandReply] = [:]
    private(set) var events: [(routingKey: String, properties: AMQPProperties, body: [UInt8])] = []

    init(prefix: String, partitions: Int = 4, bind: String = "run.#") throws {
        topology = Topology(prefix: prefix, partitions: partitions)
        conn = try BlockingConnection(url: amqpURL)
        channel = try conn.openChannel()
        // The worker declares the topology; declaring the events exchange here too lets the
        // subscriber bind before any worker ran (same arguments, so idempotent).
        try conn.exchangeDeclare(channel: channel, name: topology.eventsExchange, type: .topic, durable: true)
        replyQueue = try conn.queueDeclare(channel: channel, name: "", exclusive: true, autoDelete: true).name
        eventQueue = try conn.queueDeclare(channel: channel, name: "", exclusive: true, autoDelete: true).name
        try conn.queueBind(channel: channel, queue: eventQueue, exchange: topology.eventsExchange, routingKey: bind)
        _ = try conn.consume(channel: channel, queue: replyQueue, noAck: true)
        _ = try conn.consume(channel: channel, queue: eventQueue, noAck: true)
        try conn.confirmSelect(channel: channel)
    }

    func publish(_ body: [UInt8], routingKey: String, id: String?, reply: Bool = true) throws {
        let properties = AMQPProperties(
            contentType: "application/json", deliveryMode: 2, correlationID: id, replyTo: reply ? replyQueue : nil,
            messageID: id)
        _ = try conn.publish(channel: channel, exchange: topology.commandsExchange, routingKey: routingKey,
                             body: body, properties: properties)
    }

    func send(_ command: JSONValue, id: String?, reply: Bool = true) throws {
        try publish(command.serialized(), routingKey: command["run_id"]?.stringValue ?? "", id: id, reply: reply)
    }

    func confirmAll() throws {
        let r = try conn.waitForConfirms(channel: channel, timeout: 10)
        #expect(r.allAcked)
    }

    private func pump(_ timeout: Double) throws {
        guard let e = try conn.nextEvent(timeout: timeout) else { return }
        for event in [e] + (try conn.drainEvents()) {
            guard case .delivery(let d) = event else { continue }
            if d.routingKey == replyQueue {
                let r = try CommandReply.decode(d.body)
                replies[d.properties.correlationID ?? ""] = r
            } else {
                events.append((d.routingKey, d.properties, d.body))
            }
        }
    }

    /// The worker's reply to the command with this id.
    func reply(_ id: String, timeout: Double = 20) throws -> CommandReply {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let r = replies.removeValue(forKey: id) { return r }
            try pump(0.1)
        }
        throw TimedOut(description: "no reply to \(id)")
    }

    func call(_ command: JSONValue, id: String) throws -> CommandReply {
        try send(command, id: id)
        return try reply(id)
    }

    /// Waits until `done(events)` holds.
    func waitForEvents(timeout: Double = 30, until done: ([(routingKey: String, properties: AMQPProperties, body: [UInt8])]) -> Bool)
        throws
    {
        let deadline = Date().addingTimeInterval(timeout)
        while !done(events) {
            guard Date() < deadline else { throw TimedOut(description: "events incomplete: \(events.count) received") }
            try pump(0.1)
        }
    }

    /// Collects whatever arrives during `seconds`.
    func drain(for seconds: Double) throws {
        let until = Date().addingTimeInterval(seconds)
        while Date() < until { try pump(0.05) }
    }

    /// State-change events (not rejections), decoded.
    var runEvents: [RunEvent] {
        events.filter { $0.properties.type != "command_rejected" }.compactMap { try? RunEvent.decode($0.body) }
    }

    var rejections: [CommandRejected] {
        events.filter { $0.properties.type == "command_rejected" }.compactMap { try? CommandRejected.decode($0.body) }
    }

    /// Deletes what the worker declared under this prefix.
    func deleteTopology() {
        guard let ch = try? conn.openChannel() else { return }
        for q in topology.partitionQueues + [topology.deadQueue, topology.presenceQueue] {
            _ = try? conn.queueDelete(channel: ch, queue: q)
        }
        for x in [topology.commandsExchange, topology.eventsExchange, topology.deadExchange] {
            try? conn.exchangeDelete(channel: ch, name: x)
        }
    }

    deinit { conn.close() }
}

func tempStore(_ prefix: String) -> String {
    "sqlite://" + NSTemporaryDirectory() + "\(prefix).sqlite"
}
