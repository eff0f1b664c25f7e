import AMQPClient
import Foundation
import Synchronization

@_exported import RunContract

/// A client of a runworker deployment for agents and tools written in Swift: typed commands,
/// `send` that awaits the worker's reply (direct reply-to) or only the broker's confirm, typed
/// refusals (`RunError`, the contract's codes), and event subscriptions as `AsyncSequence`s that
/// drop repeats and report gaps, with reconnects.
///
/// ```swift
/// let client = try RunClient(url: "amqp://guest:guest@localhost:5672/")
/// let events = try await client.subscribe(runID: "run-1")
/// let run = try await client.send(.start(runID: "run-1", agentID: "demo"))
/// ```
///
/// Threads: the sending connection and each subscription's connection live on a dedicated
/// thread of their own (librabbitmq blocks and is not thread-safe); `async` callers never block
/// the concurrency pool. A `RunClient` is `Sendable`: call it from any task.
public final class RunClient: Sendable {
    public let configuration: RunClientConfiguration
    private let sender: ConnectionThread<CommandSender>
    private let subscriptions = Mutex<[ObjectIdentifier: WeakThread]>([:])

    private struct WeakThread: @unchecked Sendable {
        weak var lifetime: SubscriptionLifetime?
    }

    /// Connects lazily: the first `send` (or `connect()`) opens the connection.
    public init(configuration: RunClientConfiguration) throws {
        self.configuration = configuration
        var amqp = configuration.amqp
        if amqp.connectionName == nil { amqp.connectionName = "RunClient" }
        sender = try ConnectionThread(name: "runclient-send", configuration: amqp, policy: configuration.reconnect,
                                      handler: CommandSender())
        sender.start()
    }

    public convenience init(url: String, prefix: String = "runs", historyURL: String? = nil) throws {
        try self.init(configuration: RunClientConfiguration(url: url, prefix: prefix, historyURL: historyURL))
    }

    /// Stops the sending connection; subscriptions live on as long as their streams.
    deinit { sender.stop() }

    /// Stops every connection of this client: waiting sends throw `.closed`, subscriptions end.
    public func close() {
        sender.stop()
        let subs = subscriptions.withLock { s in defer { s.removeAll() }; return Array(s.values) }
        for s in subs { s.lifetime?.thread.stop() }
    }

    // MARK: - Sending

    /// Publishes `command` to `<prefix>.commands` (routing key = run id, persistent,
    /// `message_id` = its command id, one made up when nil) and waits for the broker's confirm.
    /// When `awaitReply`, waits for the worker's reply too and returns the run's snapshot, or
    /// throws the worker's refusal as a `RunError` (`error.code == .invalidTransition`, ...).
    /// Without `awaitReply`, returns nil once the broker has the command.
    ///
    /// Throws `RunClientError` when the command cannot be delivered or answered in time
    /// (`timeout`, default `configuration.replyTimeout`). A lost connection does not lose the
    /// command: it is published again, with the same id, after reconnecting.
    @discardableResult
    public func send(_ command: Command, awaitReply: Bool = true, timeout: Double? = nil) async throws -> Run? {
        let receipt = try await submit(command, awaitReply: awaitReply, timeout: timeout)
        guard let reply = receipt.reply else { return nil }
        return try reply.outcome().get()
    }

    /// `send` awaiting the reply: the snapshot after the command, or the refusal thrown.
    public func call(_ command: Command, timeout: Double? = nil) async throws -> Run {
        let receipt = try await submit(command, awaitReply: true, timeout: timeout)
        guard let reply = receipt.reply else { throw RunClientError(.malformedReply, "no reply") }
        return try reply.outcome().get()
    }

    /// The lower level of `send`: returns the reply as it came (a refusal is not thrown), with
    /// its body, and the command id used.
    public func submit(_ command: Command, awaitReply: Bool = true, timeout: Double? = nil) async throws -> SendReceipt {
        guard RunID.isValid(command.runID) else {
            throw RunClientError(.invalidCommand, "run id must match [A-Za-z0-9_-]{1,128}, got \(command.runID.debugDescription)")
        }
        var command = command
        let commandID = command.commandID ?? UUID().uuidString.lowercased()
        command.commandID = commandID
        let correlationID = UUID().uuidString.lowercased()
        let seconds = timeout ?? (awaitReply ? configuration.replyTimeout : configuration.confirmTimeout)
        let body = command.encode()
        let routingKey = command.runID
        let exchange = configuration.commandsExchange
        let sender = self.sender
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let outgoing = CommandSender.Outgoing(
                    correlationID: correlationID, commandID: commandID, exchange: exchange, routingKey: routingKey,
                    body: body, awaitReply: awaitReply, deadline: Date().addingTimeInterval(seconds),
                    continuation: continuation)
                if !sender.submit(.send(outgoing)) {
                    continuation.resume(throwing: RunClientError(.closed, "the client was closed"))
                }
            }
        } onCancel: {
            sender.submit(.cancel(correlationID: correlationID))
        }
    }

    /// Closes the sending connection as a network failure would; commands waiting go out again
    /// after the reconnect. For tests.
    public func simulateConnectionLoss() { sender.dropConnection() }

    // MARK: - Events

    /// The events of one run (`run.<id>.#`). Returns once the subscription's queue is bound: no
    /// event published afterwards is missed. With `after` (the last `seq` already known), the
    /// first event expected is `after + 1`: earlier ones are dropped as repeats, and later ones
    /// are read back from the history (when `historyURL` is configured) or reported as a gap.
    public func subscribe(runID: String, after: Int64? = nil) async throws -> EventStream {
        guard RunID.isValid(runID) else {
            throw RunClientError(.invalidCommand, "run id must match [A-Za-z0-9_-]{1,128}, got \(runID.debugDescription)")
        }
        var tracker = SequenceTracker()
        if let after { tracker.expect(runID: runID, after: after) }
        return try await subscribe(bindings: ["run.\(runID).#"], tracker: tracker)
    }

    /// The events matching topic patterns on `<prefix>.events` (`run.#`, `run.*.completed`, ...).
    public func subscribe(binding: String, _ more: String...) async throws -> EventStream {
        try await subscribe(bindings: [binding] + more, tracker: SequenceTracker())
    }

    private func subscribe(bindings: [String], tracker: SequenceTracker) async throws -> EventStream {
        let (raw, output) = AsyncThrowingStream<RawItem, Error>.makeStream()
        var amqp = configuration.amqp
        if amqp.connectionName == nil { amqp.connectionName = "RunClient" }
        amqp.connectionName = (amqp.connectionName ?? "RunClient") + " events"
        let exchange = configuration.eventsExchange
        let policy = configuration.reconnect
        let handler = EventSubscriber(exchange: exchange, bindings: bindings, maxAttempts: policy.maxAttempts, output: output)
        let thread = try ConnectionThread(name: "runclient-events", configuration: amqp, policy: policy, handler: handler)
        output.onTermination = { _ in thread.stop() }
        try await withCheckedThrowingContinuation { (ready: CheckedContinuation<Void, Error>) in
            handler.whenReady(ready)
            thread.start()
        }
        let lifetime = SubscriptionLifetime(thread)
        subscriptions.withLock { s in
            s = s.filter { $0.value.lifetime != nil }
            s[ObjectIdentifier(lifetime)] = WeakThread(lifetime: lifetime)
        }
        let history = configuration.historyURL.map { HistoryClient(base: $0, token: configuration.historyToken) }
        return EventStream(raw: raw, lifetime: lifetime, history: history, tracker: tracker, bindings: bindings)
    }
}
