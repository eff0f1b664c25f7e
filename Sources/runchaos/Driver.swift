import AMQPClient
import Foundation
import RunContract
import RunChaosKit
import Synchronization

func say(_ s: String) {
    FileHandle.standardError.write(Data("[runchaos] \(s)\n".utf8))
}

/// Publishes commands with confirms, through broker restarts: a message counts as sent once
/// the broker confirmed it; until then it is kept, and after a lost connection every kept
/// message is published again, in order, on a new one (the worker drops the repeats by id).
final class Publisher {
    let url: String
    let exchange: String
    private var conn: BlockingConnection?
    private var channel: UInt16 = 0
    private var unconfirmed: [PlannedMessage] = []
    private(set) var reconnects = 0
    private(set) var republished = 0

    init(url: String, exchange: String) {
        self.url = url
        self.exchange = exchange
    }

    private func connect() throws -> (BlockingConnection, UInt16) {
        if let conn { return (conn, channel) }
        let c = try BlockingConnection(url: url)
        do {
            let ch = try c.openChannel()
            try c.confirmSelect(channel: ch)
            conn = c
            channel = ch
            return (c, ch)
        } catch {
            c.close()
            throw error
        }
    }

    private func send(_ m: PlannedMessage, _ c: BlockingConnection, _ ch: UInt16) throws {
        let p = AMQPProperties(contentType: "application/json", deliveryMode: 2, messageID: m.messageID)
        _ = try c.publish(channel: ch, exchange: exchange, routingKey: m.routingKey, body: m.body, properties: p)
    }

    func publish(_ m: PlannedMessage) {
        unconfirmed.append(m)
        do {
            let (c, ch) = try connect()
            try send(m, c, ch)
        } catch {
            recover(error)
        }
    }

    /// Waits until the broker confirmed everything published; republishes on a new connection
    /// after any failure (nack, timeout, lost connection) until it does.
    func flush() {
        while !unconfirmed.isEmpty {
            do {
                let (c, ch) = try connect()
                let r = try c.waitForConfirms(channel: ch, timeout: 10)
                if r.allAcked {
                    unconfirmed.removeAll(keepingCapacity: true)
                    return
                }
                throw AMQPError(.protocolError, "the broker nacked \(r.nacked.count) messages")
            } catch {
                recover(error)
            }
        }
    }

    var pendingCount: Int { unconfirmed.count }

    private func recover(_ error: Error) {
        say("publisher: \(error); reconnecting")
        conn?.close()
        conn = nil
        while true {
            Thread.sleep(forTimeInterval: 0.5)
            do {
                let (c, ch) = try connect()
                for m in unconfirmed { try send(m, c, ch) }
                reconnects += 1
                republished += unconfirmed.count
                say("publisher: connected again; \(unconfirmed.count) unconfirmed messages published again")
                return
            } catch {
                conn?.close()
                conn = nil
            }
        }
    }

    func close() { conn?.close() }
}

/// Records every event of the prefix from a durable queue of its own (bound before any command
/// is sent), acking after recording, and reconnecting through broker restarts: the queue keeps
/// what arrived meanwhile.
final class Subscriber: @unchecked Sendable {
    let url: String
    let exchange: String
    let queue: String
    private let state = Mutex(Observed())
    private let stopFlag = Atomic<Bool>(false)
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    let reconnects = Atomic<Int>(0)

    init(url: String, exchange: String, queue: String) {
        self.url = url
        self.exchange = exchange
        self.queue = queue
    }

    /// Declares the queue and its binding (before the load starts), then consumes on a thread.
    func start() throws {
        let c = try BlockingConnection(url: url)
        defer { c.close() }
        let ch = try c.openChannel()
        try c.exchangeDeclare(channel: ch, name: exchange, type: .topic, durable: true)
        _ = try c.queueDeclare(channel: ch, name: queue, durable: true)
        try c.queueBind(channel: ch, queue: queue, exchange: exchange, routingKey: "run.#")
        let t = Thread { [self] in
            consumeLoop()
            finished.signal()
        }
        t.name = "runchaos-subscriber"
        thread = t
        t.start()
    }

    func stop() -> Observed {
        stopFlag.store(true, ordering: .releasing)
        finished.wait()
        return snapshot
    }

    var snapshot: Observed { state.withLock { $0 } }

    func contiguous(_ runID: String) -> Int64 { state.withLock { $0.contiguous[runID] ?? 0 } }

    var total: Int { state.withLock { $0.total } }

    /// Deletes the queue (at the end).
    func deleteQueue() {
        guard let c = try? BlockingConnection(url: url) else { return }
        defer { c.close() }
        if let ch = try? c.openChannel() { _ = try? c.queueDelete(channel: ch, queue: queue) }
    }

    private func consumeLoop() {
        var down = false
        while !stopFlag.load(ordering: .acquiring) {
            do {
                let c = try BlockingConnection(url: url)
                defer { c.close() }
                let ch = try c.openChannel()
                try c.qos(channel: ch, prefetchCount: 2000)
                _ = try c.consume(channel: ch, queue: queue)
                if down { say("subscriber: consuming again") }
                down = false
                while !stopFlag.load(ordering: .acquiring) {
                    let ds = try c.nextDeliveries(max: 1000, timeout: 0.1)
                    guard let last = ds.last else { continue }
                    state.withLock { o in for d in ds { o.record(type: d.properties.type, body: d.body) } }
                    try c.ack(channel: ch, deliveryTag: last.deliveryTag, multiple: true)
                }
            } catch {
                if stopFlag.load(ordering: .acquiring) { return }
                reconnects.add(1, ordering: .relaxed)
                if !down { say("subscriber: \(error); reconnecting") }
                down = true
                Thread.sleep(forTimeInterval: 0.5)
            }
        }
    }
}
