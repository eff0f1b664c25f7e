import AMQPClient
import Foundation
import Logging
import RunContract
import Synchronization

/// A live event, as the broker delivered it: enough to filter without parsing the body.
struct LiveEvent: Sendable {
    var runID: String
    var type: String
    var status: String
    var eventID: String
    var body: [UInt8]
}

/// Which live events a subscriber wants (each list empty: all).
struct EventFilter: Sendable {
    var runIDs: Set<String> = []
    var types: Set<String> = []
    var statuses: Set<String> = []

    func matches(_ e: LiveEvent) -> Bool {
        (runIDs.isEmpty || runIDs.contains(e.runID)) && (types.isEmpty || types.contains(e.type))
            && (statuses.isEmpty || statuses.contains(e.status))
    }
}

/// The events exchange, live, for server-sent-event subscribers: every worker's events, not
/// only this one's partitions, so any worker's board shows the whole deployment.
///
/// It consumes from the broker only while someone listens: the first subscriber starts a
/// thread with its own connection (librabbitmq blocks) and a server-named, exclusive,
/// auto-delete queue bound to every routing key; the last one leaving stops it. Delivery to a
/// subscriber is best effort: a slow one loses the oldest of what it has not read (its
/// `seq` gaps say so; the history endpoint fills them).
final class EventFeed: Sendable {
    private struct State {
        var subscribers: [UInt64: (EventFilter, AsyncStream<LiveEvent>.Continuation)] = [:]
        var nextID: UInt64 = 0
        var running = false
        /// The consuming thread's generation: a thread whose generation is no longer current
        /// stops, so two threads never consume at once.
        var generation = 0
        /// Set by `finishAll`: no new subscriber is taken.
        var closed = false
        /// The broker queue is bound and consumed: events from now on reach subscribers.
        var consuming = false
    }

    private let state = Mutex(State())
    private let amqpURLs: [String]
    private let exchange: String
    private let logger: Logger
    /// Events buffered per subscriber before the oldest are dropped.
    static let bufferPerSubscriber = 2048

    init(amqpURLs: [String], exchange: String, logger: Logger) {
        self.amqpURLs = amqpURLs.isEmpty ? ["amqp://guest:guest@127.0.0.1:5672/"] : amqpURLs
        self.exchange = exchange
        self.logger = logger
    }

    var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    /// Waits (up to `timeout`) until the feed consumes from the broker, so that a subscriber
    /// told "connected" misses nothing published after; false when the broker did not answer.
    func waitUntilConsuming(timeout: Duration = .seconds(5)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if state.withLock({ $0.consuming }) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    func subscribe(_ filter: EventFilter) -> AsyncStream<LiveEvent> {
        let (stream, continuation) = AsyncStream<LiveEvent>.makeStream(
            bufferingPolicy: .bufferingNewest(Self.bufferPerSubscriber))
        let start = state.withLock { state -> Int? in
            guard !state.closed else {
                continuation.finish()
                return nil
            }
            let id = state.nextID
            state.nextID += 1
            state.subscribers[id] = (filter, continuation)
            continuation.onTermination = { [weak self] _ in
                self?.state.withLock { _ = $0.subscribers.removeValue(forKey: id) }
            }
            if state.running { return nil }
            state.running = true
            state.generation += 1
            return state.generation
        }
        if let generation = start { startThread(generation) }
        return stream
    }

    /// Ends every subscriber's stream (a graceful shutdown: open streams must not hold the
    /// server), and stops consuming.
    func finishAll() {
        let all = state.withLock { state in
            defer {
                state.subscribers = [:]
                state.closed = true
            }
            return state.subscribers.values.map(\.1)
        }
        for continuation in all { continuation.finish() }
    }

    private func broadcast(_ event: LiveEvent) {
        let targets = state.withLock { state in state.subscribers.values.filter { $0.0.matches(event) }.map(\.1) }
        for continuation in targets { continuation.yield(event) }
    }

    /// Whether to keep consuming; clears `running` under the lock when nobody listens, so a
    /// subscriber arriving right after starts a new thread.
    private func keepRunning(_ generation: Int) -> Bool {
        state.withLock { state in
            guard state.generation == generation, state.running else { return false }
            if state.subscribers.isEmpty {
                state.running = false
                state.consuming = false
                return false
            }
            return true
        }
    }

    private func startThread(_ generation: Int) {
        let thread = Thread { [self] in
            var node = 0
            while keepRunning(generation) {
                do {
                    try consume(amqpURLs[node % amqpURLs.count], generation)
                } catch {
                    // The next node of a cluster, then around again.
                    node += 1
                    logger.warning("event stream: broker connection failed, trying the next node", metadata: ["error": "\(error)"])
                    Thread.sleep(forTimeInterval: node % amqpURLs.count == 0 ? 1 : 0.1)
                }
            }
        }
        thread.name = "runworker-event-feed"
        thread.start()
    }

    private func consume(_ url: String, _ generation: Int) throws {
        var config = try AMQPConfiguration(url: url)
        config.connectionName = "runworker-event-stream"
        let conn = try BlockingConnection(configuration: config)
        defer { conn.close() }
        let channel = try conn.openChannel()
        try conn.exchangeDeclare(channel: channel, name: exchange, type: .topic, durable: true)
        let queue = try conn.queueDeclare(channel: channel, exclusive: true, autoDelete: true).name
        try conn.queueBind(channel: channel, queue: queue, exchange: exchange, routingKey: "#")
        _ = try conn.consume(channel: channel, queue: queue, noAck: true)
        state.withLock { if $0.generation == generation { $0.consuming = true } }
        defer { state.withLock { if $0.generation == generation { $0.consuming = false } } }
        while keepRunning(generation) {
            guard let event = try conn.nextEvent(timeout: 0.5) else { continue }
            guard case .delivery(let d) = event else { continue }
            let h = d.properties.headers
            let runID = h?["run_id"]?.stringValue ?? ""
            let type = h?["type"]?.stringValue ?? d.properties.type ?? ""
            let status = h?["status"]?.stringValue ?? ""
            broadcast(LiveEvent(
                runID: runID, type: type, status: status, eventID: d.properties.messageID ?? "", body: d.body))
        }
    }
}

