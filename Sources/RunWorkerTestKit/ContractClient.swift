import AMQPClient
import Foundation
import RunContract
import RunWorker

/// A producer and subscriber speaking nothing but the contract: publishes commands, reads
/// replies from its own queue and events from a queue bound to `run.#` (or `bind`).
/// Every wait is bounded and throws `TestKitError` when its deadline passes.
public final class ContractClient {
    /// A message that arrived on the events queue.
    public struct Message {
        public var routingKey: String
        public var properties: AMQPProperties
        public var body: [UInt8]
    }

    public let conn: BlockingConnection
    public let channel: UInt16
    public let topology: Topology
    public let replyQueue: String
    public let eventQueue: String
    private var replies: [String: CommandReply] = [:]
    public private(set) var events: [Message] = []
    /// Every command body sent with `send` and every reply body, by command id, for
    /// `schemaViolations`.
    public private(set) var sentCommands: [(id: String?, body: [UInt8])] = []
    public private(set) var replyBodies: [String: [UInt8]] = [:]
    /// The message ids of `drainUntilSentinel`'s markers that came back.
    private var sentinelsSeen: Set<String> = []

    public init(amqpURL: String = TestEnvironment.amqpURL, prefix: String, partitions: Int = 4, bind: String = "run.#") throws {
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

    public func publish(_ body: [UInt8], routingKey: String, id: String?, reply: Bool = true) throws {
        let properties = AMQPProperties(
            contentType: "application/json", deliveryMode: 2, correlationID: id, replyTo: reply ? replyQueue : nil,
            messageID: id)
        _ = try conn.publish(channel: channel, exchange: topology.commandsExchange, routingKey: routingKey,
                             body: body, properties: properties)
    }

    public func send(_ command: JSONValue, id: String?, reply: Bool = true) throws {
        let body = command.serialized()
        sentCommands.append((id, body))
        try publish(body, routingKey: command["run_id"]?.stringValue ?? "", id: id, reply: reply)
    }

    /// Waits (at most `timeout` seconds) for the broker to confirm everything published so far;
    /// throws unless every message was acked.
    public func confirmAll(timeout: Double = 10) throws {
        let r = try conn.waitForConfirms(channel: channel, timeout: timeout)
        guard r.allAcked else { throw TestKitError(.notConfirmed, "the broker nacked \(r.nacked.count) messages") }
    }

    private func pump(_ timeout: Double) throws {
        BlockingGuard.check("ContractClient waiting for a message")
        guard let e = try conn.nextEvent(timeout: timeout) else { return }
        for event in [e] + (try conn.drainEvents()) {
            guard case .delivery(let d) = event else { continue }
            if d.routingKey == eventQueue, let id = d.properties.messageID, id.hasPrefix("test-sentinel-") {
                sentinelsSeen.insert(id)
            } else if d.routingKey == replyQueue {
                let r = try CommandReply.decode(d.body)
                replies[d.properties.correlationID ?? ""] = r
                replyBodies[d.properties.correlationID ?? ""] = d.body
            } else {
                events.append(Message(routingKey: d.routingKey, properties: d.properties, body: d.body))
            }
        }
    }

    /// The worker's reply to the command with this id.
    public func reply(_ id: String, timeout: Double = 20) throws -> CommandReply {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let r = replies.removeValue(forKey: id) { return r }
            try pump(0.1)
        }
        throw TestKitError(.timedOut, "no reply to \(id) after \(timeout) s")
    }

    public func call(_ command: JSONValue, id: String) throws -> CommandReply {
        try send(command, id: id)
        return try reply(id)
    }

    /// Waits until `done(events)` holds.
    public func waitForEvents(timeout: Double = 30, until done: ([Message]) -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !done(events) {
            guard Date() < deadline else {
                throw TestKitError(.timedOut, "events incomplete after \(timeout) s: \(events.count) received")
            }
            try pump(0.1)
        }
    }

    /// Puts a marker (a unique message id) at the end of this client's events queue, through
    /// the default exchange so that no other consumer sees it, and collects events until it
    /// comes back. Every event published to the queue and confirmed before the call has then
    /// arrived: after the publishers stopped (a worker exited, an outbox drained), this proves
    /// that nothing more came without waiting for a while and hoping.
    public func drainUntilSentinel(timeout: Double = 30) throws {
        let id = "test-sentinel-\(UUID().uuidString)"
        _ = try conn.publish(channel: channel, exchange: "", routingKey: eventQueue, body: [],
                             properties: AMQPProperties(deliveryMode: 2, messageID: id))
        try confirmAll()
        let deadline = Date().addingTimeInterval(timeout)
        while !sentinelsSeen.contains(id) {
            guard Date() < deadline else { throw TestKitError(.timedOut, "the sentinel did not come back within \(timeout) s") }
            try pump(0.1)
        }
    }

    /// Collects whatever arrives during `seconds`.
    public func drain(for seconds: Double) throws {
        let until = Date().addingTimeInterval(seconds)
        while Date() < until { try pump(0.05) }
    }

    /// State-change events (not rejections), decoded.
    public var runEvents: [RunEvent] {
        events.filter { $0.properties.type != "command_rejected" }.compactMap { try? RunEvent.decode($0.body) }
    }

    public var rejections: [CommandRejected] {
        events.filter { $0.properties.type == "command_rejected" }.compactMap { try? CommandRejected.decode($0.body) }
    }

    /// Holds what this client saw to the contract's JSON Schemas (`docs/schemas`), judged by a
    /// third-party validator (Python `jsonschema`, through `scripts/contract_schemas.py`):
    /// every event and `command_rejected` received, every reply, and every command sent whose
    /// answer was not a decoding refusal (those are meant to be invalid). Returns one line per
    /// message that does not validate; empty when all do.
    public func schemaViolations(repositoryRoot: URL) throws -> [String] {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("schema-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let decodeRefusals: Set<String> = ["validation_error", "unknown_command", "malformed_message", "payload_too_large"]
        var groups: [(kind: String, bodies: [[UInt8]])] = [
            ("event", events.map(\.body)),
            ("reply", Array(replyBodies.values)),
            ("command", sentCommands.compactMap { sent in
                if let id = sent.id, let code = replyError(id), decodeRefusals.contains(code) {
                    return nil
                }
                return sent.body
            }),
        ]
        groups.removeAll { $0.bodies.isEmpty }
        var violations: [String] = []
        for group in groups {
            let folder = dir.appendingPathComponent(group.kind)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            var files: [String] = []
            for (n, body) in group.bodies.enumerated() {
                let file = folder.appendingPathComponent("\(n).json")
                try Data(body).write(to: file)
                files.append(file.path)
            }
            let script = repositoryRoot.appendingPathComponent("scripts/contract_schemas.py").path
            let (status, output) = try runCommand("/usr/bin/env", ["python3", script, "validate", group.kind] + files, timeout: 120)
            if status != 0 {
                let invalid = output.split(separator: "\n").filter { !$0.hasSuffix(": ok") }
                violations.append("\(group.kind): " + (invalid.isEmpty ? output : invalid.joined(separator: "\n")))
            }
        }
        return violations
    }

    /// The error code of the reply to `id`, from its kept body (`replies` drops what was read).
    private func replyError(_ id: String) -> String? {
        guard let body = replyBodies[id], let reply = try? CommandReply.decode(body) else { return nil }
        return reply.error?.code.rawValue
    }

    /// Deletes what the worker declared under this prefix.
    public func deleteTopology() {
        RunWorkerTestKit.deleteTopology(topology, on: conn)
    }

    deinit { conn.close() }
}

/// Deletes the queues and exchanges of `topology`, each on a channel of its own (a failed
/// delete closes its channel).
public func deleteTopology(_ topology: Topology, on conn: BlockingConnection) {
    for q in topology.partitionQueues + [topology.deadQueue, topology.webhooksQueue] {
        if let ch = try? conn.openChannel() {
            _ = try? conn.queueDelete(channel: ch, queue: q)
            try? conn.closeChannel(ch)
        }
    }
    for x in [topology.commandsExchange, topology.eventsExchange, topology.deadExchange] {
        if let ch = try? conn.openChannel() {
            try? conn.exchangeDelete(channel: ch, name: x)
            try? conn.closeChannel(ch)
        }
    }
}

/// Deletes the queues and exchanges of `topology` over a connection of its own.
public func deleteTopology(_ topology: Topology, url: String) {
    guard let conn = try? BlockingConnection(url: url) else { return }
    defer { conn.close() }
    deleteTopology(topology, on: conn)
}
