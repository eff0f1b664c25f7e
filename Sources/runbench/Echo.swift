import AMQPClient
import Foundation
import RunWorker
import Synchronization

/// The ceiling: a stateless echo consumer built on the project's own AMQP layer with the
/// worker's structure, so that it is a fair yardstick. Same topology (modulus-hash
/// exchange, durable classic partition queues), one exclusive consumer channel per partition
/// at the worker's prefetch, one publisher channel with confirms; per batch: take what is
/// buffered (at most `batchSize` deliveries), publish one persistent ~300-byte event per
/// command to the topic events exchange, wait for the confirms once, ack once per channel with
/// `multiple`. No decoding, no state, no store.
final class EchoConsumer: @unchecked Sendable {
    let url: String
    let topology: Topology
    let prefetch: Int
    let batchSize: Int
    private let stopFlag = Atomic<Bool>(false)
    private let ready = DispatchSemaphore(value: 0)
    private var thread: Joinable?
    private(set) var batches = 0
    private(set) var messages = 0

    init(url: String, topology: Topology, prefetch: Int, batchSize: Int) {
        self.url = url
        self.topology = topology
        self.prefetch = prefetch
        self.batchSize = batchSize
    }

    /// Declares the topology and starts consuming; returns once the consumers are up.
    func start() throws {
        thread = Joinable(name: "runbench-echo") { [self] in
            defer { self.ready.signal() }
            try self.run()
        }
        ready.wait()
    }

    func stop() throws {
        stopFlag.store(true, ordering: .releasing)
        try thread?.join()
    }

    private func run() throws {
        let conn = try BlockingConnection(url: url)
        defer { conn.close() }
        let control = try conn.openChannel()
        let t = topology
        try conn.exchangeDeclare(channel: control, name: t.commandsExchange, type: AMQPExchangeType(Topology.commandsExchangeType), durable: true)
        try conn.exchangeDeclare(channel: control, name: t.eventsExchange, type: .topic, durable: true)
        for q in t.partitionQueues {
            try conn.queueDeclare(channel: control, name: q, durable: true)
            try conn.queueBind(channel: control, queue: q, exchange: t.commandsExchange, routingKey: "")
        }
        let publisher = try conn.openChannel()
        try conn.confirmSelect(channel: publisher)
        for q in t.partitionQueues {
            let ch = try conn.openChannel()
            try conn.qos(channel: ch, prefetchCount: UInt16(prefetch))
            _ = try conn.consume(channel: ch, queue: q, exclusive: true)
        }
        ready.signal()

        let pad = String(repeating: "x", count: 96)
        while !stopFlag.load(ordering: .acquiring) {
            guard let first = try conn.nextEvent(timeout: 0.1) else { continue }
            let events = [first] + (try conn.drainEvents(max: batchSize * 2))
            var top: [UInt16: UInt64] = [:]
            var n = 0
            let stamp = Date()
            for case .delivery(let d) in events {
                let id = d.properties.messageID ?? ""
                let rk = d.routingKey
                // About the size and shape of a worker event.
                let body = #"{"event_id":"\#(id)-e","type":"echoed","run_id":"\#(rk)","seq":1,"version":1,"status":"running","previous_status":null,"attempt":1,"occurred_at":"2026-01-01T00:00:00.000Z","command_id":"\#(id)","pad":"\#(pad)"}"#
                var headers = AMQPTable()
                headers["run_id"] = .string(rk)
                headers["seq"] = .int64(1)
                headers["type"] = .string("echoed")
                headers["status"] = .string("running")
                let props = AMQPProperties(
                    contentType: "application/json", headers: headers, deliveryMode: 2, messageID: id + "-e",
                    timestamp: stamp, type: "echoed")
                _ = try conn.publish(channel: publisher, exchange: t.eventsExchange, routingKey: "run.\(rk).echoed",
                                     body: Array(body.utf8), properties: props)
                top[d.channel] = max(top[d.channel] ?? 0, d.deliveryTag)
                n += 1
            }
            guard n > 0 else { continue }
            let r = try conn.waitForConfirms(channel: publisher, timeout: 30)
            guard r.allAcked else { throw BenchError("echo: broker nacked \(r.nacked.count) events") }
            for (ch, tag) in top.sorted(by: { $0.key < $1.key }) {
                try conn.ack(channel: ch, deliveryTag: tag, multiple: true)
            }
            batches += 1
            messages += n
        }
    }
}
