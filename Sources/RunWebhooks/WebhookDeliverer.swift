import AMQPClient
import AsyncHTTPClient
import CoreMetrics
import Foundation
import Logging
import RunContract
import RunStore
import RunWorker
import Synchronization

/// What the dispatcher's thread does with a delivery once its handling is over.
enum WebhookOutcome: Sendable, Equatable {
    /// Delivered, not for a webhook, or given up: ack it.
    case ack
    /// Publish a copy that waits `delayMS` in the delay queue of `queueMS`, marked as attempt
    /// `attempt`, then ack this one.
    case retry(attempt: Int, delayMS: Int, queueMS: Int)
    /// The store did not answer (after a pause), or the dispatcher is stopping before this
    /// POST began: give the delivery back to the queue.
    case requeue
}

/// Set once the dispatcher stops: deliveries still waiting for a POST slot go back to the
/// queue instead of being POSTed, so that stopping waits only for the POSTs under way.
final class StopSignal: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}

/// The fields of an event the dispatcher needs; the body itself is POSTed untouched.
struct WebhookEvent: Sendable, Equatable {
    var runID: String
    var type: String
    var status: String?
    var eventID: String

    /// Nil when the body is not an event object with `run_id` and `type`.
    init?(body: [UInt8], messageID: String?) {
        guard let json = try? JSONValue.parse(body), let runID = json["run_id"]?.stringValue,
            let type = json["type"]?.stringValue
        else { return nil }
        self.runID = runID
        self.type = type
        status = json["status"]?.stringValue
        eventID = messageID ?? json["seq"]?.intValue.map { "\(runID):\($0)" } ?? "\(runID):\(type)"
    }
}

/// Runs' `config.webhook`, remembered per run id (a run's config never changes once created),
/// `nil` included, so that a run costs one store read however many events it has. Bounded:
/// past `capacity` runs the oldest entries go first, and an entry is read again after `ttl`
/// seconds (a run id that retention removed may be used again by a new run).
final class WebhookTargetCache: Sendable {
    enum Entry: Sendable, Equatable {
        case webhook(WebhookConfig?)
        case missing
    }

    private struct State {
        var entries: [String: (entry: Entry, at: ContinuousClock.Instant)] = [:]
        var order: [String] = []
        var head = 0
    }

    private let state = Mutex(State())
    let capacity: Int
    let ttl: Duration

    init(capacity: Int = 10_000, ttlS: Double = 600) {
        self.capacity = capacity
        ttl = .milliseconds(Int64(ttlS * 1000))
    }

    func get(_ runID: String) -> Entry? {
        state.withLock { s in
            guard let e = s.entries[runID], e.at.duration(to: .now) < ttl else { return nil }
            return e.entry
        }
    }

    func put(_ runID: String, _ entry: Entry) {
        state.withLock { s in
            if s.entries.updateValue((entry, .now), forKey: runID) == nil { s.order.append(runID) }
            while s.entries.count > capacity, s.head < s.order.count {
                s.entries.removeValue(forKey: s.order[s.head])
                s.head += 1
            }
            if s.head > 4096 && s.head * 2 > s.order.count {
                s.order.removeFirst(s.head)
                s.head = 0
            }
        }
    }

    var count: Int { state.withLock { $0.entries.count } }
}

/// At most `permits` holders at a time; the others wait in order.
final class AsyncSemaphore: Sendable {
    private struct State {
        var permits: Int
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state: Mutex<State>

    init(_ permits: Int) { state = Mutex(State(permits: permits)) }

    func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { s -> Bool in
                if s.permits > 0 {
                    s.permits -= 1
                    return true
                }
                s.waiters.append(c)
                return false
            }
            if ready { c.resume() }
        }
    }

    func signal() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiters.isEmpty {
                s.permits += 1
                return nil
            }
            return s.waiters.removeFirst()
        }
        next?.resume()
    }
}

/// The POST itself, behind a protocol so that unit tests can answer without a network.
protocol WebhookPoster: Sendable {
    /// The response's status code, or an error (connection refused, timeout, TLS, ...).
    func post(url: String, headers: [(String, String)], body: [UInt8], timeoutS: Double) async throws -> Int
}

/// AsyncHTTPClient: HTTP/1.1, TLS with the system's trust store, no redirects (a redirect
/// could lead to a target the private-target rule refuses).
struct HTTPClientPoster: WebhookPoster {
    let client: HTTPClient

    static func makeClient(timeoutS: Double) -> HTTPClient {
        var configuration = HTTPClient.Configuration(redirectConfiguration: .disallow)
        configuration.httpVersion = .http1Only
        configuration.decompression = .disabled
        configuration.timeout.connect = .milliseconds(Int64(timeoutS * 1000))
        // A refused connection fails the attempt at once: retries are the dispatcher's (with
        // backoff, through the broker), and the client's own would hold a POST slot until the
        // deadline against a dead endpoint.
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }

    func post(url: String, headers: [(String, String)], body: [UInt8], timeoutS: Double) async throws -> Int {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        request.body = .bytes(body)
        let response = try await client.execute(request, timeout: .milliseconds(Int64(timeoutS * 1000)))
        // Read (and drop) a bounded part of the answer; a longer one is cut off.
        var read = 0
        for try await chunk in response.body {
            read += chunk.readableBytes
            if read > 65_536 { break }
        }
        return Int(response.status.code)
    }
}

/// The dispatcher's counters and metrics.
final class WebhookMetrics: Sendable {
    let delivered: Counter
    let retries: Counter
    let postSeconds: CoreMetrics.Timer
    private let factory: any MetricsFactory
    private let failed = Mutex<[String: Counter]>([:])
    let shared: SharedStatus?

    init(factory: any MetricsFactory, shared: SharedStatus?) {
        self.factory = factory
        self.shared = shared
        delivered = Counter(label: "runworker_webhook_delivered_total", factory: factory)
        retries = Counter(label: "runworker_webhook_retries_total", factory: factory)
        postSeconds = CoreMetrics.Timer(label: "runworker_webhook_post_seconds", factory: factory)
        shared?.updateWebhooks { _ in }
    }

    /// `runworker_webhook_failed_total{reason}`: max_attempts, private_target, invalid_url.
    func failed(reason: String) {
        let counter = failed.withLock { map in
            if let c = map[reason] { return c }
            let c = Counter(label: "runworker_webhook_failed_total", dimensions: [("reason", reason)], factory: factory)
            map[reason] = c
            return c
        }
        counter.increment()
        shared?.updateWebhooks { $0.failed += 1 }
    }

    func didDeliver() {
        delivered.increment()
        shared?.updateWebhooks { $0.delivered += 1 }
    }

    func didRetry() {
        retries.increment()
        shared?.updateWebhooks { $0.retried += 1 }
    }

    func didSkip() { shared?.updateWebhooks { $0.skipped += 1 } }
}

/// Handles one delivery of the webhook queue: which webhook (the run's, or the default), does
/// the event match, may the host be reached, the signed POST, and what to do after it.
struct WebhookDeliverer: Sendable {
    /// The header a retried copy carries: the attempt it is (the first POST is 1).
    static let attemptHeader = "x-runworker-webhook-attempt"

    let settings: WebhookSettings
    let secret: String
    let store: any RunStore
    let cache: WebhookTargetCache
    let policy: TargetPolicy
    let poster: any WebhookPoster
    let slots: AsyncSemaphore
    let metrics: WebhookMetrics
    let logger: Logger
    let backoff: WebhookBackoff
    let now: @Sendable () -> Int64
    let random: @Sendable () -> Double
    /// Pause before giving back a delivery whose run could not be read.
    let storePauseS: Double
    let stopping = StopSignal()

    init(
        settings: WebhookSettings, store: any RunStore, poster: any WebhookPoster, metrics: WebhookMetrics, logger: Logger,
        policy: TargetPolicy? = nil, cache: WebhookTargetCache = WebhookTargetCache(),
        now: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970) },
        random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }, storePauseS: Double = 1
    ) {
        self.settings = settings
        secret = settings.secret ?? ""
        self.store = store
        self.poster = poster
        self.metrics = metrics
        self.logger = logger
        self.policy = policy ?? TargetPolicy(allowPrivate: settings.allowPrivateTargets)
        self.cache = cache
        slots = AsyncSemaphore(settings.concurrency)
        backoff = WebhookBackoff(initialS: settings.initialBackoffS, maxS: settings.maxBackoffS)
        self.now = now
        self.random = random
        self.storePauseS = storePauseS
    }

    /// The run's webhook (nil: none), from the cache or the store; `.missing` when the run is
    /// gone (retention removed it). Throws what the store throws.
    func webhook(runID: String) async throws -> WebhookTargetCache.Entry {
        if let entry = cache.get(runID) { return entry }
        let entry: WebhookTargetCache.Entry = try await store.run(runID).map { .webhook($0.config.webhook) } ?? .missing
        cache.put(runID, entry)
        return entry
    }

    func handle(body: [UInt8], messageID: String?, headers: AMQPTable?) async -> WebhookOutcome {
        guard let event = WebhookEvent(body: body, messageID: messageID) else {
            logger.warning("webhook queue: not an event, dropped", metadata: ["message_id": .string(messageID ?? "-")])
            metrics.didSkip()
            return .ack
        }
        let attempt = max(1, Int(headers?[Self.attemptHeader]?.int64Value ?? 1))
        var target: WebhookConfig?
        do {
            switch try await webhook(runID: event.runID) {
            case .webhook(let own): target = own
            case .missing:
                logger.debug("webhook: run not in the store any more, event skipped", metadata: ["event_id": .string(event.eventID)])
                metrics.didSkip()
                return .ack
            }
        } catch {
            logger.warning("webhook: cannot read the run, retrying", metadata: ["run_id": .string(event.runID), "error": "\(error)"])
            try? await Task.sleep(for: .seconds(storePauseS))
            return .requeue
        }
        if target == nil, let url = settings.defaultURL { target = WebhookConfig(url: url) }
        guard let target, target.matches(type: event.type, status: event.status) else {
            metrics.didSkip()
            return .ack
        }
        guard let url = WebhookURL(target.url) else {
            logger.error("webhook given up: invalid URL", metadata: ["event_id": .string(event.eventID)])
            metrics.failed(reason: "invalid_url")
            return .ack
        }

        await slots.wait()
        defer { slots.signal() }
        if stopping.isSet { return .requeue }
        let failure: String
        switch await policy.check(url) {
        case .refused(let reason, let message):
            logger.error("webhook refused: private target", metadata: [
                "event_id": .string(event.eventID), "url": .string(url.redacted), "reason": .string(message),
            ])
            metrics.failed(reason: reason)
            return .ack
        case .unresolved(let message):
            failure = message
        case .allowed:
            let timestamp = now()
            let headers = [
                ("Content-Type", "application/json"),
                ("User-Agent", "runworker-webhooks/1"),
                ("Runworker-Event-Id", event.eventID),
                ("Runworker-Timestamp", String(timestamp)),
                ("Runworker-Signature", WebhookSignature.header(secret: secret, timestamp: timestamp, body: body)),
                ("Runworker-Attempt", String(attempt)),
            ]
            let started = ContinuousClock.now
            do {
                let status = try await poster.post(url: url.url, headers: headers, body: body, timeoutS: settings.timeoutS)
                let elapsed = started.duration(to: .now)
                metrics.postSeconds.recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
                if (200...299).contains(status) {
                    metrics.didDeliver()
                    logger.debug("webhook delivered", metadata: [
                        "event_id": .string(event.eventID), "url": .string(url.redacted), "attempt": "\(attempt)", "status": "\(status)",
                    ])
                    return .ack
                }
                failure = "HTTP \(status)"
            } catch {
                failure = "\(error)"
            }
        }
        if attempt >= settings.maxAttempts {
            logger.error("webhook given up", metadata: [
                "event_id": .string(event.eventID), "run_id": .string(event.runID), "url": .string(url.redacted),
                "attempts": "\(attempt)", "last_error": .string(failure),
            ])
            metrics.failed(reason: "max_attempts")
            return .ack
        }
        let queueMS = backoff.baseMilliseconds(afterAttempt: attempt)
        let delayMS = backoff.delayMilliseconds(afterAttempt: attempt, random: random())
        logger.notice("webhook attempt failed, retrying", metadata: [
            "event_id": .string(event.eventID), "url": .string(url.redacted), "attempt": "\(attempt)",
            "error": .string(failure), "retry_in_ms": "\(delayMS)",
        ])
        metrics.didRetry()
        return .retry(attempt: attempt + 1, delayMS: delayMS, queueMS: queueMS)
    }
}
