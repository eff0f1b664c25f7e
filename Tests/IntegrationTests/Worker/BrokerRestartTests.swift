import AMQPClient
import Foundation
import RunContract
import RunStore
import RunStores
import RunWorkerTestKit
import Synchronization
import RunTestSupport
import Testing

@testable import RunWorker

// The broker restart test runs its own RabbitMQ node (scripts/broker-node), so that stopping
// the broker does not disturb the tests that share the default one.

/// The repository's root, from this file's path (Tests/IntegrationTests/Worker/<file>).
private let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// scripts/broker-node needs root (or password-less sudo) and an installed RabbitMQ.
private let canRunBrokerNode: Bool = {
    let installed = ["/usr/sbin/rabbitmq-server", "/usr/bin/rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server"]
        .contains { FileManager.default.isExecutableFile(atPath: $0) }
    guard installed else { return false }
    if getuid() == 0 { return true }
    return (try? runProgram("/usr/bin/sudo", ["-n", "true"], timeout: 10).status) == 0
}()

/// An isolated RabbitMQ node NAME@localhost on 127.0.0.1:port, driven by scripts/broker-node.
private final class BrokerNode {
    let name: String
    let port: Int
    var url: String { "amqp://guest:guest@127.0.0.1:\(port)/" }

    init() throws {
        name = "rwtest-\(UUID().uuidString.prefix(8).lowercased())"
        // A port of 5690–5699 whose distribution port (+20000) is free too; random order so that
        // concurrent runs rarely pick the same one (the script refuses a port in use).
        guard let port = (5690...5699).shuffled().first(where: { Self.isFree($0) && Self.isFree($0 + 20000) }) else {
            throw TestKitError(.brokerNode, "no free port in 5690–5699")
        }
        self.port = port
        try script("start", name, String(port), timeout: 120)
    }

    func script(_ arguments: String..., timeout: Double = 60) throws {
        let r = try runProgram(repoRoot.appendingPathComponent("scripts/broker-node").path, arguments, timeout: timeout)
        guard r.status == 0 else {
            throw TestKitError(.brokerNode, "scripts/broker-node \(arguments.joined(separator: " ")) failed (\(r.status)):\n\(r.output)")
        }
    }

    func stopApp() throws { try script("stop_app", name) }
    func startApp() throws { try script("start_app", name, timeout: 90) }
    /// Stops the node; `keep` leaves its data and logs in place (for a failed test).
    func stop(keep: Bool = false) {
        if keep { setenv("RUNWORKER_KEEP_NODE_DIR", "1", 1) }
        defer { if keep { unsetenv("RUNWORKER_KEEP_NODE_DIR") } }
        _ = try? script("stop", name)
    }

    /// Whether nothing listens on 127.0.0.1:port (a bind succeeds).
    static func isFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }
}

/// Connects, retrying while the broker is away, until `deadline`.
private func connectRetrying(_ url: String, until deadline: Date) throws -> BlockingConnection {
    var last: Error?
    while Date() < deadline {
        do { return try BlockingConnection(url: url) } catch { last = error }
        Thread.sleep(forTimeInterval: 0.2)
    }
    throw TestKitError(.timedOut, "no connection to \(url): \(last.map { "\($0)" } ?? "-")")
}

/// A producer with publisher confirms that survives the broker going away: on any error it
/// reconnects and publishes again, in their original order and with their message ids, the
/// commands the broker had not confirmed (the worker recognises the repeats by id).
/// `gate(i)` must hold before message `i` is first published (it is polled while false).
private final class ReconnectingProducer: @unchecked Sendable {
    struct Message {
        var body: [UInt8]
        var routingKey: String
        var id: String
    }

    struct Stats {
        var published = 0
        var confirmed = 0
        var republished = 0
        var reconnects = 0
        var finished = false
        var failure: String?
    }

    let url: String
    let exchange: String
    let messages: [Message]
    let chunk: Int
    let pause: Double
    let stats = Mutex(Stats())
    let gate: @Sendable (Int) -> Bool

    init(url: String, exchange: String, messages: [Message], chunk: Int = 20, pause: Double = 0.08,
         gate: @escaping @Sendable (Int) -> Bool = { _ in true }) {
        self.gate = gate
        self.url = url
        self.exchange = exchange
        self.messages = messages
        self.chunk = chunk
        self.pause = pause
    }

    func start(deadline: Date) {
        Thread { self.run(deadline: deadline) }.start()
    }

    private func run(deadline: Date) {
        var conn: BlockingConnection?
        var channel: UInt16 = 0
        var next = 0
        // Published but not confirmed (or nacked): to publish again after a reconnect.
        var resend: [Int] = []
        while next < messages.count || !resend.isEmpty {
            guard Date() < deadline else {
                stats.withLock { $0.failure = "producer gave up: \(next) of \(messages.count) sent, \(resend.count) unconfirmed" }
                return
            }
            do {
                if conn == nil {
                    let c = try connectRetrying(url, until: deadline)
                    conn = c
                    channel = try c.openChannel()
                    try c.confirmSelect(channel: channel)
                }
                let c = conn!
                // What was not confirmed goes first, then the next chunk; until the broker
                // confirms them, all of them count as unconfirmed, whatever happens.
                if resend.isEmpty, next < messages.count, !gate(next) {
                    Thread.sleep(forTimeInterval: 0.05)
                    continue
                }
                let fresh = next..<min(next + chunk, messages.count)
                let republished = resend.count
                let batch = resend + Array(fresh)
                resend = batch
                next = fresh.upperBound
                stats.withLock { $0.published = next; $0.republished += republished }
                var tags: [UInt64: Int] = [:]
                for i in batch {
                    let m = messages[i]
                    let properties = AMQPProperties(contentType: "application/json", deliveryMode: 2, messageID: m.id)
                    let tag = try c.publish(channel: channel, exchange: exchange, routingKey: m.routingKey,
                                            body: m.body, properties: properties)
                    tags[tag!] = i
                }
                let result = try c.waitForConfirms(channel: channel, timeout: 10)
                resend = result.nacked.compactMap { tags[$0] }.sorted()
                stats.withLock { $0.confirmed += result.acked.count }
                Thread.sleep(forTimeInterval: pause)
            } catch {
                // The connection is gone (or unusable): everything of the last batch is unconfirmed.
                conn?.close()
                conn = nil
                stats.withLock { $0.reconnects += 1 }
                Thread.sleep(forTimeInterval: 0.2)
            }
        }
        conn?.close()
        stats.withLock { $0.finished = true }
    }
}

/// A subscriber on a durable queue bound to `run.#` of the events exchange, acking what it
/// recorded: events published while it is disconnected wait in the queue, and what it had not
/// acked when the connection dropped is delivered again.
private final class ReconnectingSubscriber: @unchecked Sendable {
    struct Received {
        var type: String?
        var body: [UInt8]
    }

    struct State {
        var received: [Received] = []
        /// The highest event seq seen per run.
        var maxSeq: [String: Int64] = [:]
        var reconnects = 0
        var stop = false
        var stopped = false
    }

    let url: String
    let exchange: String
    let queue: String
    let state = Mutex(State())

    /// Declares the queue and binds it now, so that no event is published before it exists.
    init(url: String, exchange: String, queue: String) throws {
        self.url = url
        self.exchange = exchange
        self.queue = queue
        let conn = try BlockingConnection(url: url)
        defer { conn.close() }
        let ch = try conn.openChannel()
        try declare(conn, ch)
    }

    private func declare(_ conn: BlockingConnection, _ ch: UInt16) throws {
        try conn.exchangeDeclare(channel: ch, name: exchange, type: .topic, durable: true)
        _ = try conn.queueDeclare(channel: ch, name: queue, durable: true)
        try conn.queueBind(channel: ch, queue: queue, exchange: exchange, routingKey: "run.#")
    }

    func start(deadline: Date) {
        Thread { self.run(deadline: deadline) }.start()
    }

    private func run(deadline: Date) {
        var conn: BlockingConnection?
        while !state.withLock({ $0.stop }), Date() < deadline {
            do {
                if conn == nil {
                    let c = try connectRetrying(url, until: deadline)
                    conn = c
                    let ch = try c.openChannel()
                    try declare(c, ch)
                    try c.qos(channel: ch, prefetchCount: 500)
                    _ = try c.consume(channel: ch, queue: queue, noAck: false)
                }
                let c = conn!
                guard let first = try c.nextEvent(timeout: 0.1) else { continue }
                var last: (channel: UInt16, tag: UInt64)?
                var got: [Received] = []
                for event in [first] + (try c.drainEvents()) {
                    guard case .delivery(let d) = event else { continue }
                    got.append(Received(type: d.properties.type, body: d.body))
                    last = (d.channel, d.deliveryTag)
                }
                let seqs = got.filter { $0.type != "command_rejected" }.compactMap { try? RunEvent.decode($0.body) }
                state.withLock {
                    $0.received += got
                    for e in seqs { $0.maxSeq[e.runID] = max($0.maxSeq[e.runID] ?? 0, e.seq) }
                }
                if let last { try c.ack(channel: last.channel, deliveryTag: last.tag, multiple: true) }
            } catch {
                conn?.close()
                conn = nil
                state.withLock { $0.reconnects += 1 }
                Thread.sleep(forTimeInterval: 0.2)
            }
        }
        conn?.close()
        state.withLock { $0.stopped = true }
    }

    func stop() {
        state.withLock { $0.stop = true }
        let deadline = Date().addingTimeInterval(5)
        while !state.withLock({ $0.stopped }), Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
    }

    var runEvents: [RunEvent] {
        state.withLock { $0.received }.filter { $0.type != "command_rejected" }.compactMap { try? RunEvent.decode($0.body) }
    }

    var rejections: [CommandRejected] {
        state.withLock { $0.received }.filter { $0.type == "command_rejected" }.compactMap { try? CommandRejected.decode($0.body) }
    }
}

extension TestKitError.Code {
    /// scripts/broker-node failed or could not be started.
    static let brokerNode = Self("broker_node")
    /// The producer gave up.
    static let producer = Self("producer")
}

@Suite(.serialized, .requiresBroker, .ownThread) struct BrokerRestartTests {
    /// The broker stopped and started (`stop_app`/`start_app`) while 200 runs' commands flow
    /// from a producer that republishes what was not confirmed: the worker reconnects, every run
    /// ends completed at version 5, and each run's events are seq 1…5, gapless, in order.
    @Test(.enabled(if: canRunBrokerNode, "needs root or sudo and rabbitmq-server for scripts/broker-node"))
    func brokerRestartMidStream() async throws {
        let runs = 200
        let node = try BrokerNode()
        var finished = false  // keep the node's logs when the test threw
        defer { node.stop(keep: !finished) }
        let prefix = uniquePrefix("restart")
        let topology = Topology(prefix: prefix, partitions: 4)
        let store = tempStore(prefix)
        let testDeadline = Date().addingTimeInterval(90)

        let subscriber = try ReconnectingSubscriber(url: node.url, exchange: topology.eventsExchange, queue: "\(prefix).test-events")
        subscriber.start(deadline: testDeadline)
        defer { subscriber.stop() }
        let worker = try WorkerProcess(prefix: prefix, store: store, extraEnv: ["RUNWORKER_AMQP_URL": node.url])
        defer { if worker.isRunning { worker.kill() } }
        try worker.waitReady()

        // The lifecycles, interleaved as in publishLifecycles: every run's step 1, then step 2, ...
        var messages: [ReconnectingProducer.Message] = []
        for step in 0..<4 {
            for i in 0..<runs {
                let (command, id) = lifecycleCommand(run: i, step: step)
                messages.append(.init(body: command.serialized(), routingKey: "run-\(i)", id: id))
            }
        }
        // The whole interleaved stream, as fast as the broker takes it: commands of one run are
        // queued across the restart too, and must still be applied in order (the modulus-hash
        // exchange maps a run id to the same partition before and after the restart).
        let producer = ReconnectingProducer(url: node.url, exchange: topology.commandsExchange, messages: messages)
        producer.start(deadline: testDeadline)

        // What was seen so far, for a failure message; the worker's log is kept.
        func explain() -> String {
            let p = producer.stats.withLock { $0 }
            let events = subscriber.runEvents
            let completed = Set(events.filter { $0.type == .completed }.map(\.runID))
            var byStatus: [String: Int] = [:]
            for e in events { byStatus["\(e.type.rawValue)", default: 0] += 1 }
            let kept = NSTemporaryDirectory() + "\(prefix)-worker.log"
            try? worker.log.write(toFile: kept, atomically: true, encoding: .utf8)
            return """
                producer: \(p); subscriber: \(events.count) events, \(completed.count) runs completed, \
                rejections \(subscriber.rejections.prefix(3)); events by type: \(byStatus); worker running: \(worker.isRunning); status: \(worker.statusText); \
                worker log: \(kept); node data: /tmp/runworker-nodes/\(node.name)
                """
        }

        // Midway through the stream, the broker goes away for a while.
        try waitUntil("producer not midway", timeout: 30) {
            if let f = producer.stats.withLock({ $0.failure }) { throw TestKitError(.producer, f) }
            return producer.stats.withLock { $0.published } >= messages.count * 2 / 5
        }
        let connectedBefore = try #require(worker.status).counters.connections
        let stopAt = Date()
        try node.stopApp()
        try await Task.sleep(for: .seconds(2))
        try node.startApp()
        let startedAt = Date()
        try waitUntil("worker did not reconnect", timeout: 30, explain: explain) {
            guard let status = worker.status else { return false }
            return status.connected && status.counters.connections > connectedBefore
        }
        let reconnectedAt = Date()

        // Every run completed, as seen by the subscriber.
        try waitUntil("runs incomplete", timeout: 45, explain: explain) {
            if let f = producer.stats.withLock({ $0.failure }) { throw TestKitError(.producer, f) }
            let completed = Set(subscriber.runEvents.filter { $0.type == .completed }.map(\.runID))
            return completed.count >= runs && producer.stats.withLock { $0.finished }
        }

        // The store: every run completed at version 5.
        let all = try await openRunStore(url: store).runs(status: nil, agentID: nil, limit: 1000)
        #expect(all.count == runs)
        #expect(all.allSatisfy { $0.status == .completed && $0.version == 5 },
                "not completed at version 5: \(all.filter { $0.status != .completed || $0.version != 5 }.prefix(3))")

        // The events: per run, seq 1…5 gapless, the lifecycle in order; a repeat is the same event.
        let repeats = checkLifecycles(events: subscriber.runEvents, rejections: subscriber.rejections, runs: runs)

        // The worker lived through it: still running, reconnected (a second session at least).
        #expect(worker.isRunning)
        #expect(worker.terminate() == 0)
        let counters = try #require(worker.status, "no status file").counters
        #expect(counters.connections >= 2, "\(worker.statusText)")
        let p = producer.stats.withLock { $0 }
        let s = subscriber.state.withLock { ($0.reconnects, $0.received.count) }
        print("""
            broker restart (node \(node.name), port \(node.port)): worker reconnected \
            \(String(format: "%.1f", reconnectedAt.timeIntervalSince(startedAt))) s after start_app \
            (\(String(format: "%.1f", reconnectedAt.timeIntervalSince(stopAt))) s after stop_app began), \
            sessions \(counters.connections); duplicate commands \(counters.duplicates), \
            outbox rows republished \(counters.outboxRepublished), refused \(counters.refused), \
            requeued \(counters.requeued); producer: \(p.reconnects) reconnects, \(p.republished) republished; \
            subscriber: \(s.0) reconnects, \(s.1) events received, \(repeats) repeated
            """)

        finished = true
    }
}
