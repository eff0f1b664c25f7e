import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What one HTTP connection may take: how long its request head may trickle in, how long it
/// may idle between requests, and how many connections the listener holds at once
/// (`http.header_timeout_s`, `http.idle_timeout_s`, `http.max_connections`).
public struct HTTPConnectionLimits: Sendable, Equatable {
    public var headerTimeout: TimeAmount
    public var idleTimeout: TimeAmount
    public var maxConnections: Int

    public init(headerTimeout: TimeAmount, idleTimeout: TimeAmount, maxConnections: Int) {
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
    }

    /// Descriptors of the process's limit kept for the rest of the worker (store, broker,
    /// event feed, webhooks, event loops, files) whatever `http.max_connections` says.
    static let reservedDescriptors = 128

    /// The cap the listener applies: the configured one, lowered to leave `reservedDescriptors`
    /// of the process's descriptor limit (nil: unlimited) to the rest of the worker, and at
    /// least 1. A cap above the limit would let idle sockets take the last descriptor, after
    /// which nothing (not even the store) can open a file.
    static func effectiveMaxConnections(configured: Int, descriptorLimit: Int?) -> Int {
        guard let descriptorLimit else { return max(1, configured) }
        return max(1, min(configured, descriptorLimit - reservedDescriptors))
    }

    /// The soft `RLIMIT_NOFILE` of this process; nil when unlimited or unknown.
    static func descriptorLimit() -> Int? {
        var limit = rlimit()
        #if canImport(Glibc)
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return nil }
        #else
        guard getrlimit(RLIMIT_NOFILE, &limit) == 0 else { return nil }
        #endif
        return limit.rlim_cur == rlim_t.max ? nil : Int(clamping: limit.rlim_cur)  // rlim_t.max: RLIM_INFINITY
    }
}

/// Who gets a place among the listener's `limit` connections, as plain values (ids stand for
/// channels). Below the cap a connection is admitted. At the cap, the oldest connection that
/// is waiting (for its first request head, or idle between requests) is closed to make room,
/// as Apache's event MPM drops kept-alive connections under load: so idle or trickling sockets
/// cannot lock out a health probe or a real client, which sends its request at once. Only when
/// every connection is being answered (requests or event streams in progress) is the new one
/// refused. A victim keeps its place until it has closed, and at most `maxEvicting` are
/// closing at once, so the listener never holds more than `limit + maxEvicting` sockets.
struct ConnectionSlots: Equatable {
    enum Decision: Equatable {
        case admit
        /// Admit, and close `victim` to give its place back.
        case admitEvicting(victim: Int)
        case refuse
    }

    struct Entry: Equatable {
        /// Admission order: the smallest is the oldest.
        var order: Int
        /// Waiting for a head or idle: may be closed to make room.
        var waiting: Bool
    }

    let limit: Int
    let maxEvicting: Int
    private(set) var entries: [Int: Entry] = [:]
    private(set) var evicting: Set<Int> = []
    private var admitted = 0

    init(limit: Int, maxEvicting: Int = 16) {
        self.limit = limit
        self.maxEvicting = maxEvicting
    }

    var open: Int { entries.count }

    /// A connection was accepted: whether it may stay, and whom to close for it.
    mutating func accepted(_ id: Int) -> Decision {
        if entries.count < limit {
            add(id)
            return .admit
        }
        guard evicting.count < maxEvicting,
            let victim = entries.filter({ $0.value.waiting && !evicting.contains($0.key) }).min(by: { $0.value.order < $1.value.order })?.key
        else { return .refuse }
        evicting.insert(victim)
        add(id)
        return .admitEvicting(victim: victim)
    }

    /// The connection started (false) or stopped (true) answering a request.
    mutating func setWaiting(_ id: Int, _ waiting: Bool) {
        entries[id]?.waiting = waiting
    }

    /// The connection closed: its place is free.
    mutating func closed(_ id: Int) {
        entries[id] = nil
        evicting.remove(id)
    }

    private mutating func add(_ id: Int) {
        entries[id] = Entry(order: admitted, waiting: true)
        admitted += 1
    }
}

/// The listener's open connections, shared by its event loops: `ConnectionSlots` behind a
/// lock, with the channels it names. Decisions are taken under the lock, closes made outside.
final class ConnectionTable: Sendable {
    private struct State {
        var slots: ConnectionSlots
        var channels: [Int: any Channel] = [:]
        var nextID = 0
    }

    private let state: Mutex<State>
    let limit: Int

    init(limit: Int, maxEvicting: Int = 16) {
        self.limit = limit
        state = Mutex(State(slots: ConnectionSlots(limit: limit, maxEvicting: maxEvicting)))
    }

    var open: Int { state.withLock { $0.slots.open } }

    /// Takes a place for `channel` (closing the oldest waiting connection when the cap is
    /// reached); nil when it is refused. The id names the connection in later calls.
    func admit(_ channel: any Channel) -> (id: Int, evicted: Bool)? {
        let (id, decision, victim): (Int, ConnectionSlots.Decision, (any Channel)?) = state.withLock { state in
            let id = state.nextID
            state.nextID += 1
            let decision = state.slots.accepted(id)
            if decision != .refuse { state.channels[id] = channel }
            if case .admitEvicting(let victim) = decision { return (id, decision, state.channels[victim]) }
            return (id, decision, nil)
        }
        victim?.close(promise: nil)
        return decision == .refuse ? nil : (id, victim != nil)
    }

    func setWaiting(_ id: Int, _ waiting: Bool) {
        state.withLock { $0.slots.setWaiting(id, waiting) }
    }

    func closed(_ id: Int) {
        state.withLock { state in
            state.slots.closed(id)
            state.channels[id] = nil
        }
    }
}

/// When one connection's wait runs out, as nginx and Go's net/http count it: a request head
/// must be complete within `header` of the connection opening or, on a kept-alive connection,
/// of the first byte of the next request (`client_header_timeout`, `ReadHeaderTimeout`); a
/// kept-alive connection may wait `idle` for that first byte (`keepalive_timeout`,
/// `IdleTimeout`). While a request is being answered (an event stream included) there is no
/// deadline here. Pure: time comes in, a deadline comes out.
struct ConnectionDeadlines: Equatable {
    enum Phase: Equatable {
        /// Waiting for the rest of a request head, first byte (or opening) at `since`.
        case head(since: NIODeadline)
        /// `requests` heads read whose responses have not ended.
        case serving(requests: Int)
        /// The last response ended at `since`; no byte of a next request yet.
        case idle(since: NIODeadline)
    }

    let header: TimeAmount
    let idle: TimeAmount
    private(set) var phase: Phase

    init(header: TimeAmount, idle: TimeAmount, openedAt now: NIODeadline) {
        self.header = header
        self.idle = idle
        phase = .head(since: now)
    }

    /// Why the connection is closed if `deadline` passes.
    enum Wait: String { case header, idle }

    var waiting: Wait? {
        switch phase {
        case .head: .header
        case .idle: .idle
        case .serving: nil
        }
    }

    /// When the connection is closed unless something happens first; nil: never.
    var deadline: NIODeadline? {
        switch phase {
        case .head(let since): since + header
        case .idle(let since): since + idle
        case .serving: nil
        }
    }

    /// The connection was opened (again: the clock of the head starts now).
    mutating func opened(at now: NIODeadline) {
        if case .head = phase { phase = .head(since: now) }
    }

    /// Bytes arrived: on an idle connection they begin the next request's head.
    mutating func bytesRead(at now: NIODeadline) {
        if case .idle = phase { phase = .head(since: now) }
    }

    /// A whole request head was parsed.
    mutating func headRead() {
        if case .serving(let n) = phase {
            phase = .serving(requests: n + 1)
        } else {
            phase = .serving(requests: 1)
        }
    }

    /// A response was written to its end.
    mutating func responseEnded(at now: NIODeadline) {
        guard case .serving(let n) = phase else { return }
        phase = n > 1 ? .serving(requests: n - 1) : .idle(since: now)
    }

    func expired(at now: NIODeadline) -> Bool { deadline.map { now >= $0 } ?? false }
}

/// The listener's connection metrics: open connections, refusals and evictions at the cap,
/// and connections closed for a head that did not arrive in time or for idling.
struct ConnectionMetrics: Sendable {
    let open: Gauge
    let refused: Counter
    let evicted: Counter
    let headerTimeouts: Counter
    let idleTimeouts: Counter

    init(factory: any MetricsFactory) {
        open = Gauge(label: "runworker_http_connections", factory: factory)
        refused = Counter(label: "runworker_http_connections_refused_total", factory: factory)
        evicted = Counter(label: "runworker_http_connections_evicted_total", factory: factory)
        headerTimeouts = Counter(
            label: "runworker_http_connections_timed_out_total", dimensions: [("wait", "header")], factory: factory)
        idleTimeouts = Counter(label: "runworker_http_connections_timed_out_total", dimensions: [("wait", "idle")], factory: factory)
    }
}

/// First in a connection's pipeline, on raw bytes: keeps `ConnectionDeadlines`, closes the
/// connection when its deadline passes, and tells the listener's table whether the connection
/// is waiting (and may be closed to make room). `HTTPRequestGuard`, behind the HTTP decoder,
/// tells it when a head was parsed and when a response ended.
final class ConnectionDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var deadlines: ConnectionDeadlines
    private let metrics: ConnectionMetrics?
    /// The listener's table and this connection's id in it.
    private let table: (ConnectionTable, id: Int)?
    private var reportedWaiting = true
    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    private var timerDeadline: NIODeadline?

    init(limits: HTTPConnectionLimits, metrics: ConnectionMetrics?, table: (ConnectionTable, id: Int)? = nil) {
        self.table = table
        // The clock starts again when the channel becomes active (`opened`).
        deadlines = ConnectionDeadlines(header: limits.headerTimeout, idle: limits.idleTimeout, openedAt: .uptimeNanoseconds(0))
        self.metrics = metrics
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive {
            deadlines.opened(at: context.eventLoop.now)
            arm()
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        disarm()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        deadlines.opened(at: context.eventLoop.now)
        arm()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        deadlines.bytesRead(at: context.eventLoop.now)
        arm()
        context.fireChannelRead(data)
    }

    func headRead() {
        deadlines.headRead()
        arm()
    }

    func responseEnded() {
        guard let context else { return }
        deadlines.responseEnded(at: context.eventLoop.now)
        arm()
    }

    /// Schedules the close for the current deadline (once per deadline; none while serving),
    /// and says whether the connection is waiting when that changed.
    private func arm() {
        let waiting = deadlines.waiting != nil
        if waiting != reportedWaiting, let (table, id) = table {
            table.setWaiting(id, waiting)
            reportedWaiting = waiting
        }
        guard let context, deadlines.deadline != timerDeadline else { return }
        disarm()
        guard let deadline = deadlines.deadline else { return }
        timerDeadline = deadline
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            self?.fire()
        }
    }

    private func disarm() {
        timer?.cancel()
        timer = nil
        timerDeadline = nil
    }

    private func fire() {
        timer = nil
        timerDeadline = nil
        guard let context, context.channel.isActive else { return }
        guard deadlines.expired(at: context.eventLoop.now) else { return arm() }
        switch deadlines.waiting {
        case .header?: metrics?.headerTimeouts.increment()
        case .idle?: metrics?.idleTimeouts.increment()
        case nil: break
        }
        context.close(promise: nil)
    }
}

/// Behind the HTTP decoder: reports parsed heads and ended responses to the connection's
/// `ConnectionDeadlineHandler`, and gives the answer Hummingbird writes for a request that is
/// not HTTP/1.1 (an empty 400) the API's JSON error body. A head that HTTP types refuse (an
/// unknown method, no path) is passed on as the parser error it amounts to, so that it gets
/// the same 400 instead of a connection closed without an answer.
final class HTTPRequestGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let deadlines: ConnectionDeadlineHandler
    /// The parser's complaint, once there was one.
    private var parseError: HTTPParserError?
    /// The JSON body owed after the rewritten head of the parser-error answer.
    private var owedBody: ByteBuffer?

    init(deadlines: ConnectionDeadlineHandler) { self.deadlines = deadlines }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data) { deadlines.headRead() }
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? HTTPParserError {
            parseError = error
        } else if let error = error as? HTTP1TypeConversionError {
            let mapped: HTTPParserError = error == .invalidMethod ? .invalidMethod : .invalidURL
            parseError = mapped
            context.fireErrorCaught(mapped)
            return
        }
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let response)
        where parseError != nil && response.status == .badRequest && response.headerFields[.contentLength] == "0":
            // Hummingbird's answer to a parser error: head(400, Content-Length: 0), end.
            let (head, body) = Self.parseErrorAnswer(parseError ?? .unknown)
            owedBody = body
            context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .end:
            if let body = owedBody {
                owedBody = nil
                context.write(wrapOutboundOut(.body(body)), promise: nil)
            }
            context.write(data, promise: promise)
            deadlines.responseEnded()
        default:
            context.write(data, promise: promise)
        }
    }

    /// The API's error for a request the parser refused: 431 for a head beyond the decoder's
    /// limits, 400 otherwise; the connection closes after it.
    static func parseErrorAnswer(_ error: HTTPParserError) -> (HTTPResponse, ByteBuffer) {
        let apiError =
            error == .headerOverflow
            ? APIError(
                status: .requestHeaderFieldsTooLarge, code: "payload_too_large",
                message: "the request head is larger than the server accepts")
            : APIError(status: .badRequest, code: "validation_error", message: "the request is not valid HTTP/1.1 (\(error))")
        return (apiError.closingHead, ByteBuffer(bytes: apiError.bodyBytes))
    }
}

/// Answers a connection beyond the cap (every held one busy) with a 503 in the API's error
/// shape and closes it, as soon as it is active; reads nothing. It never reaches Hummingbird.
final class RefusedConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    static let answer: [UInt8] = {
        let error = APIError(
            status: .serviceUnavailable, code: "unavailable",
            message: "every connection the server holds (http.max_connections) is busy answering; try again later")
        let body = error.bodyBytes
        var head = "HTTP/1.1 503 Service Unavailable\r\n"
        for field in error.closingHead.headerFields { head += "\(field.name.rawName): \(field.value)\r\n" }
        head += "Retry-After: 1\r\n\r\n"
        return Array(head.utf8) + body
    }()

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { refuse(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        refuse(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    private func refuse(_ context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(NIOAny(ByteBuffer(bytes: Self.answer))).whenComplete { _ in
            loopBound.value.close(promise: nil)
        }
    }
}

/// A connection as the listener took it: served over HTTP/1.1, or refused at the cap.
enum LimitedConnection: ServerChildChannelValue {
    case served(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
    case refused(any Channel)

    var channel: any Channel {
        switch self {
        case .served(let asyncChannel): asyncChannel.channel
        case .refused(let channel): channel
        }
    }
}

/// Hummingbird's HTTP/1.1 child channel with the connection limits around it: each accepted
/// connection takes a place in the table (closing the oldest waiting one at the cap, or
/// refused at once when every one is busy), gets the deadline handler in front of the HTTP
/// decoder and the request guard behind it, and is then served as `HTTP1Channel` serves it.
struct LimitedHTTP1Channel: ServerChildChannel {
    let responder: HTTPChannelHandler.Responder
    let limits: HTTPConnectionLimits
    let table: ConnectionTable
    let metrics: ConnectionMetrics?

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<LimitedConnection> {
        let table = self.table, metrics = self.metrics
        guard let (id, evicted) = table.admit(channel) else {
            metrics?.refused.increment()
            logger.debug("HTTP connection refused: every connection is busy", metadata: ["max_connections": "\(table.limit)"])
            return channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(RefusedConnectionHandler())
                return .refused(channel)
            }
        }
        if evicted {
            metrics?.evicted.increment()
            logger.debug("HTTP: the oldest waiting connection closed to make room", metadata: ["max_connections": "\(table.limit)"])
        }
        metrics?.open.record(table.open)
        channel.closeFuture.whenComplete { _ in
            table.closed(id)
            metrics?.open.record(table.open)
        }
        let limits = self.limits, responder = self.responder
        return channel.eventLoop.makeCompletedFuture {
            let deadlines = ConnectionDeadlineHandler(limits: limits, metrics: metrics, table: (table, id))
            try channel.pipeline.syncOperations.addHandler(deadlines)
            let requestGuard = NIOLoopBound(HTTPRequestGuard(deadlines: deadlines), eventLoop: channel.eventLoop)
            return HTTP1Channel(responder: responder, configuration: .init(additionalChannelHandlers: [requestGuard.value]))
        }.flatMap { http in
            http.setup(channel: channel, logger: logger).map { @Sendable asyncChannel in LimitedConnection.served(asyncChannel) }
        }.flatMapErrorThrowing { error in
            // Not yet registered: nothing else would close it (and give its place back).
            channel.close(promise: nil)
            throw error
        }
    }

    func handle(value: LimitedConnection, logger: Logger) async {
        guard case .served(let asyncChannel) = value else { return }
        await HTTP1Channel(responder: responder).handle(value: asyncChannel, logger: logger)
    }
}

/// First in the listening channel's pipeline: when accepting fails because descriptors ran out
/// (EMFILE, ENFILE) or memory did (ENOBUFS, ENOMEM), stops listening for a while, 10 ms after
/// the first failure doubling to 1 s, as Go's net/http does. SwiftNIO's own back-off never
/// takes effect there: a failed accept leaves the socket registered for reading, so epoll
/// reports the waiting connection again at once and one core spins until a descriptor frees
/// up. Turning `autoRead` off deregisters the socket; turning it on again accepts once more.
final class AcceptPauseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel

    private var backoff = AcceptBackoff()
    private var resume: Scheduled<Void>?
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        backoff.accepted()
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? IOError, AcceptBackoff.pausesFor(errno: error.errnoCode), resume == nil,
            let options = context.channel.syncOptions
        {
            let pause = backoff.failed()
            // A warning when a run of failures starts; the rest of it (a pause a second at
            // most) at debug, so that a long exhaustion does not flood the log.
            logger.log(
                level: pause == AcceptBackoff.first ? .warning : .debug, "HTTP: cannot accept connections, pausing",
                metadata: ["error": "\(error)", "pause_ms": "\(pause.nanoseconds / 1_000_000)"])
            try? options.setOption(ChannelOptions.autoRead, value: false)
            resume = context.eventLoop.assumeIsolated().scheduleTask(in: pause) { [weak self] in
                self?.resume = nil
                try? options.setOption(ChannelOptions.autoRead, value: true)
            }
        }
        context.fireErrorCaught(error)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
    }
}

/// How long the listener pauses after accepting failed: 10 ms, doubling on each failure in a
/// row up to 1 s, back to 10 ms after a connection is accepted.
struct AcceptBackoff: Equatable {
    static let first = TimeAmount.milliseconds(10)
    static let longest = TimeAmount.seconds(1)
    private(set) var next = first

    mutating func failed() -> TimeAmount {
        defer { next = min(next * 2, Self.longest) }
        return next
    }

    mutating func accepted() { next = Self.first }

    /// The accept errors a pause can cure: no descriptor or no memory for now.
    static func pausesFor(errno code: Int32) -> Bool { [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(code) }
}
