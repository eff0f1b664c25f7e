import AMQPClient
import AsyncHTTPClient
import CoreMetrics
import Foundation
import Logging
import RunContract
import RunStore
import RunWorker
import ServiceLifecycle
import Synchronization

/// Completion webhooks, as a service beside the worker (`webhooks.enabled`).
///
/// Outbox style: the worker publishes every event once, to `<prefix>.events`; the durable queue
/// `<prefix>.webhooks` (bound with `run.#`, declared by the worker before it applies anything)
/// keeps a copy of each until this dispatcher has dealt with it. The dispatcher has its own
/// AMQP connection on its own thread (librabbitmq blocks and is not thread-safe) and never
/// touches the command loop: a slow or dead endpoint fills, at worst, this queue.
///
/// Per delivery: the run's `config.webhook` (read once per run from the store, then cached),
/// or `webhooks.default_url`; the filter (the listed event types, or the terminal events); the
/// private-target check; a signed POST, at most `webhooks.concurrency` at a time. A 2xx acks
/// the delivery. A failure publishes a copy, with the next attempt number, to the delay queue
/// `<prefix>.webhooks.delay.<ms>` (per-message TTL, dead-lettered back into
/// `<prefix>.webhooks`) and acks the original once the broker confirmed the copy: retries
/// wait in the broker, not in this process's prefetch, and survive restarts. After
/// `max_attempts` it gives up: acked, logged at error, `runworker_webhook_failed_total`.
public final class WebhookDispatcher: Service, Sendable {
    let settings: WorkerSettings
    let store: any RunStore
    let logger: Logger
    let metricsFactory: any MetricsFactory
    let shared: SharedStatus?
    private let loop = Mutex<WebhookLoop?>(nil)
    private let stopped = Atomic<Bool>(false)

    public init(
        settings: WorkerSettings, store: any RunStore, logger: Logger, metricsFactory: (any MetricsFactory)? = nil,
        shared: SharedStatus? = nil
    ) {
        self.settings = settings
        self.store = store
        var logger = logger
        logger[metadataKey: "component"] = "webhooks"
        self.logger = logger
        self.metricsFactory = metricsFactory ?? MetricsSystem.factory
        self.shared = shared
    }

    public func stop() {
        stopped.store(true, ordering: .releasing)
        loop.withLock { $0?.stop() }
    }

    public func run() async throws {
        let client = HTTPClientPoster.makeClient(timeoutS: settings.webhooks.timeoutS)
        let metrics = WebhookMetrics(factory: metricsFactory, shared: shared)
        let deliverer = WebhookDeliverer(
            settings: settings.webhooks, store: store, poster: HTTPClientPoster(client: client), metrics: metrics, logger: logger)
        let loop = WebhookLoop(settings: settings, deliverer: deliverer, logger: logger, shared: shared, waker: try Waker())
        self.loop.withLock { $0 = loop }
        if stopped.load(ordering: .acquiring) { loop.stop() }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let thread = Thread {
                        loop.run()
                        continuation.resume()
                    }
                    thread.name = "runworker-webhooks"
                    thread.start()
                }
            } onGracefulShutdown: {
                self.stop()
            }
        } onCancel: {
            self.stop()
        }
        try? await client.shutdown()
    }
}

/// The dispatcher's thread: it alone touches its connection. Deliveries are handled by tasks
/// (`WebhookDeliverer`), which hand their outcome back through `finished` and the waker.
///
/// `@unchecked Sendable`: handed to its thread once; `finished`, `stopFlag` and `waker` are
/// the only parts other threads touch, and they are thread-safe.
final class WebhookLoop: @unchecked Sendable {
    struct Finished: Sendable {
        var session: Int
        var delivery: AMQPDelivery
        var outcome: WebhookOutcome
    }

    let settings: WorkerSettings
    let topology: Topology
    let deliverer: WebhookDeliverer
    let logger: Logger
    let shared: SharedStatus?
    let waker: Waker
    private let stopFlag = Atomic<Bool>(false)
    private let finished = Mutex<[Finished]>([])
    private let urls: [String]

    // Thread-owned.
    private var next = 0
    private var session = 0
    private var conn: BlockingConnection?
    private var consumer: UInt16 = 0
    private var publisher: UInt16 = 0
    private var inFlight = 0
    private var delayQueues: Set<String> = []

    /// Unacked deliveries at most: POSTs in flight plus room for events that need no POST
    /// (no webhook, filtered out), so that those keep flowing while every POST slot waits.
    var prefetch: Int { min(65_535, settings.webhooks.concurrency + 128) }

    // Not throwing, and the waker made by the caller: Swift 6.3.1's optimizer crashes (an
    // ownership error in CopyPropagation) on a throwing class init that must destroy the
    // already initialised `Atomic` when it throws.
    init(settings: WorkerSettings, deliverer: WebhookDeliverer, logger: Logger, shared: SharedStatus?, waker: Waker) {
        self.settings = settings
        topology = settings.topology
        self.deliverer = deliverer
        self.logger = logger
        self.shared = shared
        self.waker = waker
        urls = (try? settings.amqpURLs()) ?? [settings.amqpURL]
    }

    var isStopped: Bool { stopFlag.load(ordering: .acquiring) }

    func stop() {
        stopFlag.store(true, ordering: .releasing)
        deliverer.stopping.set()
        waker.signal()
    }

    func run() {
        var delay = 0.2
        while !isStopped {
            do {
                try runSession()
                delay = 0.2
            } catch {
                conn?.close()
                conn = nil
                shared?.updateWebhooks { $0.connected = false }
                if isStopped { break }
                logger.warning("webhook dispatcher: connection lost or refused, reconnecting", metadata: [
                    "error": "\(error)", "retry_in_s": "\(delay)",
                ])
                next += 1
                pause(delay)
                delay = min(delay * 2, 10)
            }
        }
        conn?.close()
        conn = nil
        shared?.updateWebhooks { $0.connected = false }
    }

    private func pause(_ seconds: Double) {
        let until = Date().addingTimeInterval(seconds)
        while !isStopped, Date() < until {
            Thread.sleep(forTimeInterval: min(0.1, max(0, until.timeIntervalSinceNow)))
        }
    }

    private func runSession() throws {
        session += 1
        inFlight = 0
        delayQueues = []
        var config = try AMQPConfiguration(url: urls[next % urls.count])
        if config.connectionName == nil { config.connectionName = "runworker-webhooks-\(shared?.workerID ?? "-")" }
        let conn = try BlockingConnection(configuration: config)
        self.conn = conn
        consumer = try conn.openChannel()
        let t = topology
        try conn.exchangeDeclare(channel: consumer, name: t.eventsExchange, type: .topic, durable: true)
        _ = try conn.queueDeclare(channel: consumer, name: t.webhooksQueue, durable: true, arguments: t.deadQueueArguments)
        try conn.queueBind(channel: consumer, queue: t.webhooksQueue, exchange: t.eventsExchange, routingKey: Topology.webhooksBinding)
        try conn.qos(channel: consumer, prefetchCount: UInt16(prefetch))
        publisher = try conn.openChannel()
        try conn.confirmSelect(channel: publisher)
        let tag = try conn.consume(channel: consumer, queue: t.webhooksQueue)
        shared?.updateWebhooks { $0.connected = true }
        logger.info("webhook dispatcher consuming", metadata: [
            "queue": .string(t.webhooksQueue), "concurrency": "\(settings.webhooks.concurrency)", "prefetch": "\(prefetch)",
        ])
        while !isStopped {
            if let event = try conn.nextEvent(timeout: 1, waker: waker) { try handle(event, conn) }
            try finish(conn)
        }
        // Stopping: no new deliveries; the POSTs under way (bounded by timeout_s) finish and are
        // acked or retried, those still waiting for a slot are given back; whatever is left
        // goes back to the queue with the connection.
        try? conn.cancel(channel: consumer, consumerTag: tag)
        let deadline = Date().addingTimeInterval(settings.webhooks.timeoutS + 5)
        while inFlight > 0, Date() < deadline {
            if let event = try conn.nextEvent(timeout: 0.2, waker: waker) { try handle(event, conn) }
            try finish(conn)
        }
        conn.close()
        self.conn = nil
        shared?.updateWebhooks { $0.connected = false }
    }

    private func handle(_ event: AMQPEvent, _ conn: BlockingConnection) throws {
        switch event {
        case .delivery(let d) where d.channel == consumer:
            guard !isStopped else { return }  // left unacked: back to the queue on close
            inFlight += 1
            let session = self.session
            let deliverer = self.deliverer
            Task {
                let outcome = await deliverer.handle(body: d.body, messageID: d.properties.messageID, headers: d.properties.headers)
                self.finished.withLock { $0.append(Finished(session: session, delivery: d, outcome: outcome)) }
                self.waker.signal()
            }
        case .consumerCancelled(let channel, _) where channel == consumer:
            throw AMQPError(.channelClosed, "the broker cancelled the webhook consumer (queue deleted?)")
        case .channelClosed(let channel, let error):
            throw AMQPError(.channelClosed, "webhook channel \(channel) closed: \(error)")
        default:
            break
        }
    }

    /// Acks, retries or requeues the deliveries whose handling is over.
    private func finish(_ conn: BlockingConnection) throws {
        let done = finished.withLock { list -> [Finished] in
            defer { list.removeAll() }
            return list
        }
        for f in done {
            // From an earlier connection: the broker has already given it back to the queue.
            guard f.session == session else { continue }
            inFlight -= 1
            let tag = f.delivery.deliveryTag
            switch f.outcome {
            case .ack:
                try conn.ack(channel: consumer, deliveryTag: tag)
            case .requeue:
                try conn.nack(channel: consumer, deliveryTag: tag, requeue: true)
            case .retry(let attempt, let delayMS, let queueMS):
                if try scheduleRetry(f.delivery, attempt: attempt, delayMS: delayMS, queueMS: queueMS, conn) {
                    try conn.ack(channel: consumer, deliveryTag: tag)
                } else {
                    try conn.nack(channel: consumer, deliveryTag: tag, requeue: true)
                }
            }
        }
    }

    /// Publishes the copy that waits for the next attempt; true once the broker confirmed it.
    private func scheduleRetry(_ d: AMQPDelivery, attempt: Int, delayMS: Int, queueMS: Int, _ conn: BlockingConnection) throws -> Bool {
        let queue = topology.webhookDelayQueue(milliseconds: queueMS)
        if !delayQueues.contains(queue) {
            _ = try conn.queueDeclare(channel: publisher, name: queue, durable: true, arguments: [
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": .string(topology.webhooksQueue),
            ])
            delayQueues.insert(queue)
        }
        var properties = d.properties
        var headers = AMQPTable()
        for (k, v) in properties.headers ?? [:] where !Self.deathHeaders.contains(k) { headers[k] = v }
        headers[WebhookDeliverer.attemptHeader] = .int64(Int64(attempt))
        properties.headers = headers
        properties.expiration = String(delayMS)
        properties.deliveryMode = 2
        try conn.publish(channel: publisher, exchange: "", routingKey: queue, body: d.body, properties: properties)
        do {
            return try conn.waitForConfirms(channel: publisher, timeout: 10).allAcked
        } catch let error as AMQPError where error.code == .timeout {
            logger.warning("webhook retry not confirmed in time; the delivery goes back to the queue", metadata: ["error": "\(error)"])
            throw error  // the confirm may still come: start over on a new connection
        }
    }

    /// Headers the broker adds when dead-lettering; dropped from the copies (they would grow).
    static let deathHeaders: Set<String> = ["x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                                            "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason"]
}
