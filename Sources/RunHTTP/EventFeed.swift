import AMQPClient
import Foundation
import Logging
import Metrics
import RunContract
import RunWorker
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

/// How many live streams a worker serves at once and how many bytes each may hold unread
/// (`http.max_streams`, `http.max_streams_per_token`, `http.stream_buffer_kib`).
struct StreamLimits: Sendable, Equatable {
    /// Streams open at once, all clients together.
    var maxStreams = 64
    /// Streams open at once with one bearer token; only counted when the listener has a token
    /// (without one it listens on loopback only, where every client has the same address).
    var maxStreamsPerToken = 16
    /// Bytes of events one stream holds for a client that has not read them yet; beyond it the
    /// client is disconnected.
    var bufferBytes = 256 << 10
    /// Whether streams are counted per bearer token (the listener has `http_token`).
    var perToken = false
}

extension StreamLimits {
    /// The limits `settings` set (`http.*`, and the buffer's share of `memory.budget_mib`).
    init(_ settings: WorkerSettings) {
        self.init(
            maxStreams: settings.httpMaxStreams, maxStreamsPerToken: settings.httpMaxStreamsPerToken,
            bufferBytes: settings.streamBufferBytes, perToken: !(settings.httpToken ?? "").isEmpty)
    }
}

/// Why a stream was not opened.
enum StreamRefusal: Error, Equatable {
    /// `maxStreams` are open.
    case full(Int)
    /// `maxStreamsPerToken` are open with this token.
    case tokenFull(Int)
}

/// One subscriber's events that its client has not read yet, bounded in bytes (the bodies'
/// sizes): an event that would take it beyond `capacity` ends the subscription instead
/// (`overflowed`), and its queue is dropped at once. An empty queue takes any one event, so
/// that an event larger than the capacity still gets through to a client that keeps up; the
/// most it holds is therefore max(capacity, one event).
final class StreamBuffer: Sendable {
    enum Ending: Sendable, Equatable {
        /// The feed stopped (a graceful shutdown).
        case finished
        /// The client did not read fast enough: its events went beyond the capacity.
        case overflowed
    }

    enum Next: Sendable {
        case event(LiveEvent)
        /// Nothing arrived for a while: a comment line, so that proxies keep the stream open.
        case keepalive
        case end(Ending)
    }

    private struct State {
        var queue: [LiveEvent] = []
        /// Index of the oldest unread event in `queue`.
        var head = 0
        var bytes = 0
        var ending: Ending?
        var reader: CheckedContinuation<Next, Never>?
        var overflowWatcher: CheckedContinuation<Void, Never>?
    }

    let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) { self.capacity = capacity }

    /// Bytes queued and not read.
    var pendingBytes: Int { state.withLock { $0.bytes } }

    /// Whether a reader waits in `next()` (for tests).
    var hasReader: Bool { state.withLock { $0.reader != nil } }

    /// Queues `event`; false when the subscription is over (already, or because this event did
    /// not fit).
    @discardableResult
    func offer(_ event: LiveEvent) -> Bool {
        let size = event.body.count
        enum Action { case none, deliver(CheckedContinuation<Next, Never>), overflow(CheckedContinuation<Next, Never>?, CheckedContinuation<Void, Never>?) }
        let (accepted, action): (Bool, Action) = state.withLock { s in
            guard s.ending == nil else { return (false, .none) }
            if let reader = s.reader {
                s.reader = nil
                return (true, .deliver(reader))
            }
            if s.head < s.queue.count && s.bytes + size > capacity {
                s.ending = .overflowed
                s.queue = []
                s.head = 0
                s.bytes = 0
                defer {
                    s.reader = nil
                    s.overflowWatcher = nil
                }
                return (false, .overflow(s.reader, s.overflowWatcher))
            }
            s.queue.append(event)
            s.bytes += size
            return (true, .none)
        }
        switch action {
        case .none: break
        case .deliver(let reader): reader.resume(returning: .event(event))
        case .overflow(let reader, let watcher):
            reader?.resume(returning: .end(.overflowed))
            watcher?.resume()
        }
        return accepted
    }

    /// Ends the subscription after what is queued (a graceful shutdown).
    func finish() {
        let reader: CheckedContinuation<Next, Never>? = state.withLock { s in
            guard s.ending == nil else { return nil }
            s.ending = .finished
            defer { s.reader = nil }
            return s.head < s.queue.count ? nil : s.reader
        }
        reader?.resume(returning: .end(.finished))
    }

    /// A keepalive is due: it goes to a reader waiting for an event, never into the queue (a
    /// client that does not read gets none).
    func keepalive() {
        let reader: CheckedContinuation<Next, Never>? = state.withLock { s in
            defer { s.reader = nil }
            return s.reader
        }
        reader?.resume(returning: .keepalive)
    }

    /// The next event, in order; waits for one. One reader at a time. Cancelled, it answers
    /// `.end(.finished)`.
    func next() async -> Next {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Next, Never>) in
                let now: Next? = state.withLock { s in
                    if s.head < s.queue.count {
                        let event = s.queue[s.head]
                        s.head += 1
                        s.bytes -= event.body.count
                        if s.head == s.queue.count {
                            s.queue.removeAll(keepingCapacity: s.queue.count <= 64)
                            s.head = 0
                        } else if s.head >= 64 && s.head * 2 >= s.queue.count {
                            s.queue.removeFirst(s.head)
                            s.head = 0
                        }
                        return .event(event)
                    }
                    if let ending = s.ending { return .end(ending) }
                    if Task.isCancelled { return .end(.finished) }
                    s.reader = continuation
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            let reader: CheckedContinuation<Next, Never>? = state.withLock { s in
                defer { s.reader = nil }
                return s.reader
            }
            reader?.resume(returning: .end(.finished))
        }
    }

    /// Returns once the subscription overflowed; cancelled, it returns at once.
    func waitForOverflow() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s in
                    if s.ending == .overflowed || Task.isCancelled { return true }
                    s.overflowWatcher = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let watcher = state.withLock { s in
                defer { s.overflowWatcher = nil }
                return s.overflowWatcher
            }
            watcher?.resume()
        }
    }

    var ending: Ending? { state.withLock { $0.ending } }
}

/// One open stream's place in the feed: its filter's events arrive in `buffer`. Its slot (in
/// the caps) is given back when it is cancelled or released, whichever comes first, so that a
/// response that is never written (the client went away first) does not keep it.
final class Subscription: Sendable {
    let id: UInt64
    let buffer: StreamBuffer
    private let feed: EventFeed?

    init(id: UInt64, buffer: StreamBuffer, feed: EventFeed?) {
        self.id = id
        self.buffer = buffer
        self.feed = feed
    }

    func cancel() { feed?.remove(id) }

    deinit { feed?.remove(id) }
}

/// The events exchange, live, for server-sent-event subscribers: every worker's events, not
/// only this one's partitions, so any worker's board shows the whole deployment.
///
/// It consumes from the broker only while someone listens: the first subscriber starts a
/// thread with its own connection (librabbitmq blocks) and a server-named, exclusive,
/// auto-delete queue bound to every routing key; the last one leaving stops it.
///
/// Bounded in bytes, never in events: at most `limits.maxStreams` subscribers (and
/// `maxStreamsPerToken` with one token), each holding at most `limits.bufferBytes` of events
/// its client has not read (`StreamBuffer`). A subscriber whose client falls that far behind
/// is ended (its client is disconnected and reconnects; the store has what it missed), so a
/// client never silently loses events and a stalled one never holds more than its buffer.
final class EventFeed: Sendable {
    private struct State {
        var subscribers: [UInt64: (filter: EventFilter, buffer: StreamBuffer, token: String?)] = [:]
        var perToken: [String: Int] = [:]
        var nextID: UInt64 = 0
        var running = false
        /// The consuming thread's generation: a thread whose generation is no longer current
        /// stops, so two threads never consume at once.
        var generation = 0
        /// Set by `finishAll`: no new subscriber is taken.
        var closed = false
        /// The broker queue is bound and consumed: events from now on reach subscribers.
        var consuming = false
        /// Subscribers ended because their client fell behind by more than its buffer.
        var overflowed = 0
    }

    private let state = Mutex(State())
    private let metrics: StreamMetrics
    private let amqpURLs: [String]
    private let exchange: String
    private let logger: Logger
    let limits: StreamLimits

    init(
        amqpURLs: [String], exchange: String, logger: Logger, limits: StreamLimits = StreamLimits(),
        metricsFactory: (any MetricsFactory)? = nil
    ) {
        metrics = StreamMetrics(factory: metricsFactory ?? NOOPMetricsHandler.instance)
        self.amqpURLs = amqpURLs.isEmpty ? ["amqp://guest:guest@127.0.0.1:5672/"] : amqpURLs
        self.exchange = exchange
        self.logger = logger
        self.limits = limits
    }

    var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    /// Subscribers ended so far because their client fell behind by more than its buffer.
    var overflowCount: Int { state.withLock { $0.overflowed } }

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

    /// A new subscriber, within the caps. `token` is the bearer token the client presented
    /// (counted only when `limits.perToken`). After `finishAll` the subscription is already over.
    func subscribe(_ filter: EventFilter, token: String? = nil) throws(StreamRefusal) -> Subscription {
        let buffer = StreamBuffer(capacity: limits.bufferBytes)
        let key = limits.perToken ? token : nil
        let limits = self.limits
        let outcome: Result<(UInt64, Int?), StreamRefusal>? = state.withLock { state in
            guard !state.closed else { return nil }
            guard state.subscribers.count < limits.maxStreams else { return .failure(.full(limits.maxStreams)) }
            if let key, state.perToken[key, default: 0] >= limits.maxStreamsPerToken {
                return .failure(.tokenFull(limits.maxStreamsPerToken))
            }
            let id = state.nextID
            state.nextID += 1
            state.subscribers[id] = (filter, buffer, key)
            if let key { state.perToken[key, default: 0] += 1 }
            if state.running { return .success((id, nil)) }
            state.running = true
            state.generation += 1
            return .success((id, state.generation))
        }
        switch outcome {
        case nil:
            buffer.finish()
            return Subscription(id: .max, buffer: buffer, feed: nil)
        case .failure(let refusal):
            switch refusal {
            case .full: metrics.refusedFull.increment()
            case .tokenFull: metrics.refusedToken.increment()
            }
            throw refusal
        case .success(let (id, start)):
            metrics.open.record(subscriberCount)
            if let start { startThread(start) }
            return Subscription(id: id, buffer: buffer, feed: self)
        }
    }

    /// Gives a subscriber's slot back (again: nothing).
    fileprivate func remove(_ id: UInt64) {
        let left: Int? = state.withLock { state in
            guard let gone = state.subscribers.removeValue(forKey: id) else { return nil }
            if let key = gone.token {
                let left = state.perToken[key, default: 1] - 1
                state.perToken[key] = left > 0 ? left : nil
            }
            return state.subscribers.count
        }
        if let left { metrics.open.record(left) }
    }

    /// Ends every subscriber's stream (a graceful shutdown: open streams must not hold the
    /// server), and stops consuming.
    func finishAll() {
        let all = state.withLock { state in
            defer {
                state.subscribers = [:]
                state.perToken = [:]
                state.closed = true
            }
            return state.subscribers.values.map(\.buffer)
        }
        for buffer in all { buffer.finish() }
    }

    /// Hands `event` to every subscriber whose filter matches; one whose buffer it does not
    /// fit is ended and gives its slot back at once.
    func broadcast(_ event: LiveEvent) {
        let targets = state.withLock { state in
            state.subscribers.compactMap { id, s in s.filter.matches(event) ? (id, s.buffer) : nil }
        }
        var ended: [UInt64] = []
        for (id, buffer) in targets where !buffer.offer(event) { ended.append(id) }
        guard !ended.isEmpty else { return }
        for id in ended { remove(id) }
        let overflowed = ended.count
        state.withLock { $0.overflowed += overflowed }
        metrics.overflows.increment(by: overflowed)
        logger.notice(
            "event stream: a client fell behind by more than its buffer and is disconnected",
            metadata: ["streams": "\(overflowed)", "buffer_bytes": "\(limits.bufferBytes)"])
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


/// What the streams export on /metrics.
private struct StreamMetrics: Sendable {
    /// Streams open now.
    let open: Gauge
    /// Streams ended because their client fell behind by more than its buffer.
    let overflows: Counter
    let refusedFull: Counter
    let refusedToken: Counter

    init(factory: any MetricsFactory) {
        open = Gauge(label: "runworker_http_streams_open", factory: factory)
        overflows = Counter(label: "runworker_http_stream_overflows_total", factory: factory)
        refusedFull = Counter(label: "runworker_http_streams_refused_total", dimensions: [("reason", "max_streams")], factory: factory)
        refusedToken = Counter(
            label: "runworker_http_streams_refused_total", dimensions: [("reason", "max_streams_per_token")], factory: factory)
    }
}
