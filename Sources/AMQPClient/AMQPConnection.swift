import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An AMQP connection usable from any task.
///
/// It owns one dedicated thread that alone touches the underlying `BlockingConnection` (and so
/// librabbitmq). Async methods submit work to that thread and resume when it is done. While
/// idle, the thread waits in `poll()` on the socket and on an eventfd that submissions signal,
/// waking at least every heartbeat/4 to keep heartbeats going. Connection loss (socket closed,
/// broker gone, connection forced closed, heartbeats missed) ends every consumer stream and
/// fails every waiter with `.connectionClosed`.
public final class AMQPConnection: Sendable {
    let owner: Owner
    public let configuration: AMQPConfiguration

    private init(owner: Owner, configuration: AMQPConfiguration) {
        self.owner = owner
        self.configuration = configuration
    }

    /// Connects and logs in; throws `AMQPError` on failure.
    public static func connect(_ configuration: AMQPConfiguration) async throws -> AMQPConnection {
        let owner = try Owner()
        owner.start()
        do {
            try await owner.submit { o in
                o.conn = try BlockingConnection(configuration: configuration)
            }
        } catch {
            owner.requestStop()
            throw error
        }
        return AMQPConnection(owner: owner, configuration: configuration)
    }

    public static func connect(url: String) async throws -> AMQPConnection {
        try await connect(AMQPConfiguration(url: url))
    }

    deinit { owner.requestStop() }

    /// Returned (unroutable mandatory) messages from every channel. One reader at a time.
    public var returnedMessages: AMQPMessageStream<AMQPReturnedMessage> { AMQPMessageStream(buffer: owner.returns) }

    public var isOpen: Bool {
        get async { (try? await owner.submit { o in o.conn?.isOpen ?? false }) ?? false }
    }

    public func openChannel() async throws -> AMQPChannel {
        let id = try await owner.submit { o in try o.connection().openChannel() }
        return AMQPChannel(connection: self, id: id)
    }

    /// Runs `body` on the owner thread with the blocking connection (for a hot loop that wants
    /// no per-call hop). Events `body` reads itself are not dispatched to async consumers;
    /// while `body` runs, nothing else on this connection progresses, so return regularly.
    public func withBlockingConnection<T: Sendable>(
        _ body: @Sendable @escaping (BlockingConnection) throws -> T
    ) async throws -> T {
        try await owner.submit { o in try body(try o.connection()) }
    }

    /// Closes every channel and the connection cleanly; consumer streams end without error.
    /// Safe to call twice.
    public func close() async {
        _ = try? await owner.submit { o in o.shutdown(error: nil) }
        owner.requestStop()
    }
}

/// A channel of an `AMQPConnection`. Cheap to copy; all copies name the same channel.
public struct AMQPChannel: Sendable {
    public let connection: AMQPConnection
    public let id: UInt16
    private var owner: Owner { connection.owner }

    private func run<T: Sendable>(_ body: @Sendable @escaping (BlockingConnection, UInt16) throws -> T) async throws -> T {
        let id = self.id
        return try await owner.submit { o in try body(try o.connection(), id) }
    }

    public func close() async throws {
        try await owner.submit { o in
            try o.connection().closeChannel(self.id)
            o.channelGone(self.id, error: nil)
        }
    }

    public func exchangeDeclare(_ name: String, type: AMQPExchangeType = .direct, passive: Bool = false,
                                durable: Bool = false, autoDelete: Bool = false, internal: Bool = false,
                                arguments: AMQPTable = [:]) async throws {
        try await run { c, ch in
            try c.exchangeDeclare(channel: ch, name: name, type: type, passive: passive, durable: durable,
                                  autoDelete: autoDelete, internal: `internal`, arguments: arguments)
        }
    }

    public func exchangeDelete(_ name: String, ifUnused: Bool = false) async throws {
        try await run { c, ch in try c.exchangeDelete(channel: ch, name: name, ifUnused: ifUnused) }
    }

    @discardableResult
    public func queueDeclare(_ name: String = "", passive: Bool = false, durable: Bool = false,
                             exclusive: Bool = false, autoDelete: Bool = false,
                             arguments: AMQPTable = [:]) async throws -> AMQPQueueInfo {
        try await run { c, ch in
            try c.queueDeclare(channel: ch, name: name, passive: passive, durable: durable, exclusive: exclusive,
                               autoDelete: autoDelete, arguments: arguments)
        }
    }

    public func queueBind(_ queue: String, exchange: String, routingKey: String = "", arguments: AMQPTable = [:]) async throws {
        try await run { c, ch in
            try c.queueBind(channel: ch, queue: queue, exchange: exchange, routingKey: routingKey, arguments: arguments)
        }
    }

    public func queueUnbind(_ queue: String, exchange: String, routingKey: String = "", arguments: AMQPTable = [:]) async throws {
        try await run { c, ch in
            try c.queueUnbind(channel: ch, queue: queue, exchange: exchange, routingKey: routingKey, arguments: arguments)
        }
    }

    @discardableResult
    public func queuePurge(_ queue: String) async throws -> UInt32 {
        try await run { c, ch in try c.queuePurge(channel: ch, queue: queue) }
    }

    @discardableResult
    public func queueDelete(_ queue: String, ifUnused: Bool = false, ifEmpty: Bool = false) async throws -> UInt32 {
        try await run { c, ch in try c.queueDelete(channel: ch, queue: queue, ifUnused: ifUnused, ifEmpty: ifEmpty) }
    }

    public func qos(prefetchCount: UInt16, global: Bool = false) async throws {
        try await run { c, ch in try c.qos(channel: ch, prefetchCount: prefetchCount, global: global) }
    }

    /// Starts a consumer (manual acks unless `noAck`). The stream ends when the consumer is
    /// cancelled (by `cancel` or by the broker) and throws when the channel or connection dies.
    public func consume(_ queue: String, consumerTag: String = "", noAck: Bool = false, exclusive: Bool = false,
                        arguments: AMQPTable = [:]) async throws -> AMQPConsumer {
        let id = self.id
        let (tag, buffer) = try await owner.submit { o in
            let tag = try o.connection().consume(channel: id, queue: queue, consumerTag: consumerTag, noAck: noAck,
                                                 exclusive: exclusive, arguments: arguments)
            let b = AsyncBuffer<AMQPDelivery>()
            o.consumers[id, default: [:]][tag] = b
            return (tag, b)
        }
        return AMQPConsumer(channel: self, consumerTag: tag, deliveries: AMQPMessageStream(buffer: buffer))
    }

    /// Cancels a consumer; its stream ends. Deliveries it had not yet handed out are rejected
    /// with requeue.
    public func cancel(consumerTag: String) async throws {
        let id = self.id
        try await owner.submit { o in
            try o.connection().cancel(channel: id, consumerTag: consumerTag)
            o.consumers[id]?.removeValue(forKey: consumerTag)?.finish()
        }
    }

    public func get(_ queue: String, noAck: Bool = false) async throws -> AMQPDelivery? {
        try await run { c, ch in try c.get(channel: ch, queue: queue, noAck: noAck) }
    }

    public func ack(_ deliveryTag: UInt64, multiple: Bool = false) async throws {
        try await run { c, ch in try c.ack(channel: ch, deliveryTag: deliveryTag, multiple: multiple) }
    }

    public func nack(_ deliveryTag: UInt64, multiple: Bool = false, requeue: Bool = true) async throws {
        try await run { c, ch in try c.nack(channel: ch, deliveryTag: deliveryTag, multiple: multiple, requeue: requeue) }
    }

    public func reject(_ deliveryTag: UInt64, requeue: Bool = true) async throws {
        try await run { c, ch in try c.reject(channel: ch, deliveryTag: deliveryTag, requeue: requeue) }
    }

    public func confirmSelect() async throws {
        try await run { c, ch in try c.confirmSelect(channel: ch) }
    }

    /// Publishes; returns the confirm delivery tag when confirms are on, else nil.
    @discardableResult
    public func publish(_ body: [UInt8], exchange: String = "", routingKey: String,
                        properties: AMQPProperties = AMQPProperties(), mandatory: Bool = false) async throws -> UInt64? {
        try await run { c, ch in
            try c.publish(channel: ch, exchange: exchange, routingKey: routingKey, body: body,
                          properties: properties, mandatory: mandatory)
        }
    }

    /// Waits until every message published so far on this channel is confirmed and returns
    /// the confirms received since the previous call. Throws `.timeout` if some are missing at
    /// the deadline (what was collected is kept for the next call), `.channelClosed` /
    /// `.connectionClosed` if the channel or connection dies first.
    public func waitForConfirms(timeout: Double) async throws -> AMQPConfirmResult {
        let id = self.id
        return try await owner.perform { o, cont in
            o.addConfirmWaiter(channel: id, deadline: Date().addingTimeInterval(timeout), cont)
        }
    }
}

/// A running consumer: an `AsyncSequence` of deliveries (ack them on `channel`).
public struct AMQPConsumer: AsyncSequence, Sendable {
    public typealias Element = AMQPDelivery
    public let channel: AMQPChannel
    public let consumerTag: String
    public let deliveries: AMQPMessageStream<AMQPDelivery>

    public func makeAsyncIterator() -> AMQPMessageStream<AMQPDelivery>.AsyncIterator {
        deliveries.makeAsyncIterator()
    }

    /// Waits for one delivery, then returns up to `max` already buffered; [] when ended.
    public func next(upTo max: Int) async throws -> [AMQPDelivery] { try await deliveries.next(upTo: max) }

    public func cancel() async throws { try await channel.cancel(consumerTag: consumerTag) }
}

/// The owner thread of one connection and the state only it touches.
///
/// `@unchecked Sendable` is safe: `jobs` and `stopRequested` are guarded by `lock`; every other
/// mutable property (`conn`, `consumers`, `confirmResults`, `confirmWaiters`) is read and written
/// only on the owner thread, from inside jobs or the run loop.
final class Owner: @unchecked Sendable {
    typealias Job = @Sendable (Owner) -> Void
    private let lock = NSLock()
    private var jobs: [Job] = []
    private var stopRequested = false
    private var stopped = false
    /// A self-pipe: submitters write a byte to `wakeWriteFD`, the owner polls `wakeFD`.
    private let wakeFD: Int32
    private let wakeWriteFD: Int32

    // Owner thread only:
    var conn: BlockingConnection?
    var consumers: [UInt16: [String: AsyncBuffer<AMQPDelivery>]] = [:]
    let returns = AsyncBuffer<AMQPReturnedMessage>()
    private var confirmResults: [UInt16: AMQPConfirmResult] = [:]
    private var confirmWaiters: [(channel: UInt16, deadline: Date, cont: CheckedContinuation<AMQPConfirmResult, any Error>)] = []
    private var lostError: AMQPError?

    init() throws {
        var fds: [Int32] = [0, 0]
        if pipe(&fds) != 0 { throw AMQPError(.socketError, "pipe failed: \(String(cString: strerror(errno)))") }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeFD = fds[0]
        wakeWriteFD = fds[1]
    }

    deinit {
        close(wakeFD)
        close(wakeWriteFD)
    }

    func start() {
        let t = Thread { [self] in self.run() }
        t.name = "amqp-connection"
        t.start()
    }

    private func wake() {
        var one: UInt8 = 1
        _ = write(wakeWriteFD, &one, 1)  // if the pipe is full, the owner is woken anyway
    }

    func requestStop() {
        lock.withLock { stopRequested = true }
        wake()
    }

    /// Runs `body` on the owner thread; it must resume `cont` exactly once (now or later).
    func perform<T: Sendable>(_ body: @Sendable @escaping (Owner, CheckedContinuation<T, any Error>) -> Void) async throws -> T {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
            let accepted = lock.withLock {
                if stopped { return false }
                jobs.append { o in body(o, cont) }
                return true
            }
            if accepted { wake() } else { cont.resume(throwing: AMQPError(.connectionClosed, "connection is closed")) }
        }
    }

    func submit<T: Sendable>(_ body: @Sendable @escaping (Owner) throws -> T) async throws -> T {
        try await perform { o, cont in cont.resume(with: Result { try body(o) }) }
    }

    func connection() throws -> BlockingConnection {
        guard let c = conn else { throw AMQPError(.connectionClosed, "connection is closed") }
        return c
    }

    // MARK: owner thread

    private func run() {
        while true {
            let (batch, stop) = lock.withLock { () -> ([Job], Bool) in
                let b = jobs
                jobs = []
                return (b, stopRequested)
            }
            for job in batch { job(self) }
            if stop && batch.isEmpty { break }
            pump()
            var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            var timeoutMS: Int32 = 5000
            if let c = conn, c.isOpen {
                if c.hasBufferedEvents { timeoutMS = 0 }
                fds.append(pollfd(fd: c.fileDescriptor, events: Int16(POLLIN), revents: 0))
                if c.heartbeat > 0 { timeoutMS = min(timeoutMS, Int32(max(100, min(c.heartbeat * 250, 5000)))) }
            }
            if let d = confirmWaiters.map(\.deadline).min() {
                timeoutMS = min(timeoutMS, Int32(max(0, min(5000, (d.timeIntervalSinceNow * 1000).rounded(.up)))))
            }
            _ = poll(&fds, nfds_t(fds.count), timeoutMS)
            if fds[0].revents != 0 {
                var sink = [UInt8](repeating: 0, count: 256)
                while read(wakeFD, &sink, 256) > 0 {}
            }
        }
        shutdown(error: nil)
        let late = lock.withLock { () -> [Job] in
            stopped = true
            let b = jobs
            jobs = []
            return b
        }
        for job in late { job(self) }  // they see `conn == nil` and fail with connectionClosed
    }

    /// Dispatches whatever the connection has received; detects loss.
    private func pump() {
        guard let c = conn else { return }
        if c.isOpen {
            do {
                dispatch(try c.drainEvents(max: 100_000))
            } catch {
                // handled below through closeError
            }
        }
        if !c.isOpen, lostError == nil {
            connectionLost(c.closeError ?? AMQPError(.connectionClosed, "connection lost"))
        }
        checkConfirmWaiters()
    }

    private func dispatch(_ events: [AMQPEvent]) {
        for e in events {
            switch e {
            case .delivery(let d):
                if let b = consumers[d.channel]?[d.consumerTag] {
                    b.yield(d)
                } else {
                    // Its consumer was cancelled: give the message back to the queue.
                    try? conn?.reject(channel: d.channel, deliveryTag: d.deliveryTag, requeue: true)
                }
            case .returned(let r):
                returns.yield(r)
            case .confirm(let c):
                if c.acked { confirmResults[c.channel, default: .init()].acked.append(c.deliveryTag) }
                else { confirmResults[c.channel, default: .init()].nacked.append(c.deliveryTag) }
            case .consumerCancelled(let ch, let tag):
                consumers[ch]?.removeValue(forKey: tag)?.finish()
            case .channelClosed(let ch, let error):
                channelGone(ch, error: error)
            }
        }
    }

    func channelGone(_ ch: UInt16, error: AMQPError?) {
        for (_, b) in consumers.removeValue(forKey: ch) ?? [:] { b.finish(error) }
        let e = error ?? AMQPError(.channelClosed, "channel \(ch) closed", channel: ch)
        let (mine, rest) = (confirmWaiters.filter { $0.channel == ch }, confirmWaiters.filter { $0.channel != ch })
        confirmWaiters = rest
        confirmResults.removeValue(forKey: ch)
        for w in mine { w.cont.resume(throwing: e) }
    }

    func addConfirmWaiter(channel: UInt16, deadline: Date, _ cont: CheckedContinuation<AMQPConfirmResult, any Error>) {
        guard let c = conn, c.isOpen else {
            cont.resume(throwing: lostError ?? AMQPError(.connectionClosed, "connection is closed"))
            return
        }
        guard c.isChannelOpen(channel) else {
            cont.resume(throwing: AMQPError(.channelClosed, "channel \(channel) is not open", channel: channel))
            return
        }
        confirmWaiters.append((channel, deadline, cont))
        pump()
    }

    private func checkConfirmWaiters() {
        guard !confirmWaiters.isEmpty else { return }
        var rest: [(channel: UInt16, deadline: Date, cont: CheckedContinuation<AMQPConfirmResult, any Error>)] = []
        for w in confirmWaiters {
            if conn?.unconfirmedCount(channel: w.channel) == 0 {
                w.cont.resume(returning: confirmResults.removeValue(forKey: w.channel) ?? .init())
            } else if w.deadline.timeIntervalSinceNow <= 0 {
                let missing = conn?.unconfirmedCount(channel: w.channel) ?? 0
                w.cont.resume(throwing: AMQPError(.timeout, "\(missing) confirms missing", channel: w.channel))
            } else {
                rest.append(w)
            }
        }
        confirmWaiters = rest
    }

    private func connectionLost(_ e: AMQPError) {
        lostError = e
        for (_, byTag) in consumers { for (_, b) in byTag { b.finish(e) } }
        consumers = [:]
        returns.finish(e)
        let ws = confirmWaiters
        confirmWaiters = []
        for w in ws { w.cont.resume(throwing: e) }
    }

    /// Closes the connection (cleanly if still open) and ends every stream; `error` nil means
    /// a clean end.
    func shutdown(error: AMQPError?) {
        conn?.close()
        conn = nil
        for (_, byTag) in consumers { for (_, b) in byTag { b.finish(error) } }
        consumers = [:]
        returns.finish(error)
        let e = error ?? AMQPError(.connectionClosed, "connection closed by the client")
        let ws = confirmWaiters
        confirmWaiters = []
        for w in ws { w.cont.resume(throwing: e) }
    }
}
