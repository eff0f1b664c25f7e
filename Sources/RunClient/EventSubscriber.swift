import AMQPClient
import Foundation
import RunContract

/// What the subscriber thread hands to the stream's iterator.
enum RawItem: Sendable {
    case message(routingKey: String, amqpType: String?, body: [UInt8])
    case reconnected
}

/// The receiving side of one subscription, on its own connection thread: an exclusive,
/// auto-delete, server-named queue bound to `<prefix>.events` with the subscription's keys,
/// consumed without acks. The queue lives as long as the connection; after a loss the thread
/// reconnects (with backoff), declares and binds a new one and says `.reconnected`.
final class EventSubscriber: ConnectionHandler, @unchecked Sendable {
    enum Job: Sendable {}

    private let exchange: String
    private let bindings: [String]
    private let output: AsyncThrowingStream<RawItem, Error>.Continuation
    private let maxAttempts: Int?
    /// Resumed once the first queue is bound (or the first connection failed).
    private var ready: CheckedContinuation<Void, Error>?
    private var channel: UInt16 = 0

    init(exchange: String, bindings: [String], maxAttempts: Int?, output: AsyncThrowingStream<RawItem, Error>.Continuation) {
        self.exchange = exchange
        self.bindings = bindings
        self.maxAttempts = maxAttempts
        self.output = output
    }

    /// Set before the thread starts: resumed when the first queue is bound or the first
    /// connection fails.
    func whenReady(_ continuation: CheckedContinuation<Void, Error>) { ready = continuation }

    var wantsConnection: Bool { true }
    var nextDeadline: Date? { nil }

    func connected(_ conn: BlockingConnection, reconnect: Bool) throws {
        channel = try conn.openChannel()
        // The worker declares the exchange too, with the same arguments: declaring it here lets
        // a subscriber bind before any worker ran.
        try conn.exchangeDeclare(channel: channel, name: exchange, type: .topic, durable: true)
        let queue = try conn.queueDeclare(channel: channel, name: "", exclusive: true, autoDelete: true).name
        for key in bindings { try conn.queueBind(channel: channel, queue: queue, exchange: exchange, routingKey: key) }
        _ = try conn.consume(channel: channel, queue: queue, noAck: true)
        if let ready {
            self.ready = nil
            ready.resume()
        } else {
            output.yield(.reconnected)
        }
    }

    func connectFailed(_ error: AMQPError, failures: Int, everConnected: Bool) -> Bool {
        let failure = RunClientError(.connectionFailed, "cannot subscribe to \(exchange): \(error.message)", underlying: error)
        if let ready {
            self.ready = nil
            ready.resume(throwing: failure)
            output.finish(throwing: failure)
            return false
        }
        if let maxAttempts, failures >= maxAttempts {
            output.finish(throwing: failure)
            return false
        }
        return true
    }

    func disconnected(_ error: AMQPError) {}

    func perform(_ job: Job, conn: BlockingConnection?) throws {}

    func handle(_ event: AMQPEvent, conn: BlockingConnection) throws {
        switch event {
        case .delivery(let d) where d.channel == channel:
            output.yield(.message(routingKey: d.routingKey, amqpType: d.properties.type, body: d.body))
        case .channelClosed(let ch, let error) where ch == channel:
            throw AMQPError(.connectionClosed, "the subscription's channel was closed: \(error.message)")
        case .consumerCancelled(let ch, _) where ch == channel:
            throw AMQPError(.connectionClosed, "the broker cancelled the subscription's consumer")
        default:
            return
        }
    }

    func tick(now: Date) {}

    func stopped() {
        if let ready {
            self.ready = nil
            ready.resume(throwing: RunClientError(.closed, "the subscription was closed"))
        }
        output.finish()
    }
}

/// Keeps a subscription's thread alive while the stream or one of its iterators exists.
final class SubscriptionLifetime: Sendable {
    let thread: ConnectionThread<EventSubscriber>
    init(_ thread: ConnectionThread<EventSubscriber>) { self.thread = thread }
    deinit { thread.stop() }
}

/// The events of a subscription as an `AsyncSequence` of `RunUpdate`s: decoded, each
/// `(run_id, seq)` once, gaps reported (or filled from the worker's history when an HTTP base
/// URL is configured), across reconnects. One iterator per stream.
///
/// The subscription ends when the stream and its iterator are gone, when the iterating task is
/// cancelled, on `cancel()`, or when the client closes.
public struct EventStream: AsyncSequence, Sendable {
    public typealias Element = RunUpdate

    let raw: AsyncThrowingStream<RawItem, Error>
    let lifetime: SubscriptionLifetime
    let history: HistoryClient?
    let tracker: SequenceTracker
    /// Routing-key patterns this subscription is bound with.
    public let bindings: [String]

    /// Ends the subscription: iteration finishes after what was already received.
    public func cancel() { lifetime.thread.stop() }

    /// Closes the subscription's connection as a network failure would; it reconnects. For tests.
    public func simulateConnectionLoss() { lifetime.thread.dropConnection() }

    public func makeAsyncIterator() -> Iterator {
        Iterator(base: raw.makeAsyncIterator(), lifetime: lifetime, history: history, tracker: tracker)
    }

    public struct Iterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<RawItem, Error>.AsyncIterator
        let lifetime: SubscriptionLifetime
        let history: HistoryClient?
        var tracker: SequenceTracker
        var ready: [RunUpdate] = []
        var caughtUp = false

        init(base: AsyncThrowingStream<RawItem, Error>.AsyncIterator, lifetime: SubscriptionLifetime,
             history: HistoryClient?, tracker: SequenceTracker) {
            self.base = base
            self.lifetime = lifetime
            self.history = history
            self.tracker = tracker
        }

        public mutating func next() async throws -> RunUpdate? {
            if !caughtUp {
                // Runs given with `after:` are read back from the history first.
                caughtUp = true
                await catchUp(tracker.runIDs)
            }
            while ready.isEmpty {
                guard let item = try await base.next() else { return nil }
                switch item {
                case .reconnected:
                    ready.append(.reconnected)
                    await catchUp(tracker.runIDs.suffix(100))
                case .message(let routingKey, let amqpType, let body):
                    await accept(RunUpdate.decode(body: body, routingKey: routingKey, amqpType: amqpType))
                }
            }
            return ready.removeFirst()
        }

        /// Judges one decoded message by its `(run_id, seq)`.
        mutating func accept(_ update: RunUpdate) async {
            let key: (String, Int64)?
            switch update {
            case .event(let e): key = (e.runID, e.seq)
            case .unrecognized(let u): key = u.runID.flatMap { id in u.seq.map { (id, $0) } }
            default: key = nil
            }
            guard let (runID, seq) = key else {
                ready.append(update)
                return
            }
            switch tracker.observe(runID: runID, seq: seq) {
            case .duplicate:
                return
            case .next:
                ready.append(update)
            case .gap(let expected):
                var from = expected
                if let history, let missed = try? await history.events(runID: runID, after: expected - 1, before: seq) {
                    for m in missed {
                        guard let s = m.seq, s == from else { break }
                        ready.append(m.update)
                        from += 1
                    }
                }
                if from < seq { ready.append(.gap(runID: runID, expected: from, got: seq)) }
                ready.append(update)
            }
        }

        /// Reads what each run published after the last `seq` seen (after a reconnect, or for
        /// runs given with `after:`), when a history URL is configured.
        mutating func catchUp(_ runIDs: some Sequence<String>) async {
            guard let history else { return }
            for runID in runIDs {
                guard let last = tracker.lastSeq(of: runID) else { continue }
                let missed: [HistoryClient.Item]
                do {
                    missed = try await history.events(runID: runID, after: last, before: nil)
                } catch {
                    // The API is unreachable: the runs' next events report their gaps instead
                    // (one timeout, not one per run).
                    return
                }
                for m in missed {
                    guard let s = m.seq, tracker.observe(runID: runID, seq: s) != .duplicate else { continue }
                    ready.append(m.update)
                }
            }
        }
    }
}
