import Foundation
internal import CRabbitMQ
internal import CRabbitMQShim
#if canImport(Glibc)
import Glibc
#endif

// Method numbers (class << 16 | method); the C macros are casts Swift does not import.
enum Method {
    static let connectionClose: UInt32 = 0x000A_0032
    static let connectionCloseOk: UInt32 = 0x000A_0033
    static let connectionBlocked: UInt32 = 0x000A_003C
    static let connectionUnblocked: UInt32 = 0x000A_003D
    static let channelClose: UInt32 = 0x0014_0028
    static let channelCloseOk: UInt32 = 0x0014_0029
    static let basicCancel: UInt32 = 0x003C_001E
    static let basicCancelOk: UInt32 = 0x003C_001F
    static let basicReturn: UInt32 = 0x003C_0032
    static let basicDeliver: UInt32 = 0x003C_003C
    static let basicGetOk: UInt32 = 0x003C_0047
    static let basicGetEmpty: UInt32 = 0x003C_0048
    static let basicAck: UInt32 = 0x003C_0050
    static let basicNack: UInt32 = 0x003C_0078
}

/// A blocking AMQP 0-9-1 connection over librabbitmq.
///
/// **Not thread-safe and not Sendable**: create it, use it and drop it on one thread only
/// (librabbitmq forbids sharing a connection or its channels between threads). That thread owns
/// the connection and calls it directly; other threads talk to the owner, not to the connection.
///
/// Frames are never lost: deliveries, confirms, returns and cancels that arrive while a
/// synchronous RPC (declare, bind, qos, ...) or `waitForConfirms` waits are kept and handed
/// out, in order, by `nextEvent` / `drainEvents`.
///
/// Heartbeats are sent and checked only while this object reads (`nextEvent`, `drainEvents`,
/// `waitForConfirms`, RPCs): call one of them at least every `heartbeat / 2` seconds. To wait for
/// frames and for other threads' work at once, wait in `nextEvent(timeout:waker:)` and have the
/// other threads `signal()` the `Waker`.
public final class BlockingConnection {
    public let configuration: AMQPConfiguration
    private var state: OpaquePointer?
    /// Set once the connection is unusable; every later call throws it.
    public private(set) var closeError: AMQPError?
    private var openChannels: Set<UInt16> = []
    private var confirmChannels: [UInt16: ConfirmTracker] = [:]
    private var pending: [AMQPEvent] = []
    private var pendingHead = 0
    /// The negotiated limits.
    public private(set) var channelMax: Int = 0
    public private(set) var frameMax: Int = 0
    public private(set) var heartbeat: Int = 0
    /// The broker's reason while it blocks this connection's publishing (`connection.blocked`:
    /// a memory or disk alarm); nil when not blocked. Publishing may then stall until it clears.
    public private(set) var blockedReason: String?

    private struct ConfirmTracker {
        var nextTag: UInt64 = 1
        var outstanding: [UInt64] = []  // ascending
    }

    /// Connects (TCP or TLS) and logs in. Throws `AMQPError` with `.connectionRefused`,
    /// `.hostNotFound`, `.timeout`, `.authenticationFailed`, `.tlsError`, ...
    public init(configuration: AMQPConfiguration) throws {
        self.configuration = configuration
        guard let st = amqp_new_connection() else { throw AMQPError(.socketError, "out of memory") }
        state = st
        do {
            try connect(st)
        } catch {
            amqp_destroy_connection(st)
            state = nil
            throw error
        }
    }

    public convenience init(url: String) throws {
        try self.init(configuration: AMQPConfiguration(url: url))
    }

    deinit {
        if let st = state {
            if closeError == nil { _ = amqp_connection_close(st, AMQP_REPLY_SUCCESS) }
            amqp_destroy_connection(st)
        }
    }

    public var isOpen: Bool { state != nil && closeError == nil }

    /// The socket, for `poll()`; -1 when closed.
    public var fileDescriptor: Int32 { state.map { amqp_get_sockfd($0) } ?? -1 }

    /// True when events can be returned without touching the socket.
    public var hasBufferedEvents: Bool {
        guard let st = state else { return false }
        return pendingHead < pending.count || amqp_frames_enqueued(st) != 0 || amqp_data_in_buffer(st) != 0
    }

    private static func timeval(_ seconds: Double) -> timeval {
        let s = max(0, seconds)
        return Glibc.timeval(tv_sec: Int(s), tv_usec: Int((s - s.rounded(.down)) * 1_000_000))
    }

    private func connect(_ st: OpaquePointer) throws {
        let c = configuration
        let sock: OpaquePointer?
        if let tls = c.tls {
            sock = amqp_ssl_socket_new(st)
            guard let sock else { throw AMQPError(.tlsError, "could not create TLS socket") }
            var status = amqp_ssl_socket_set_ssl_versions(sock, AMQP_TLSv1_2, AMQP_TLSvLATEST)
            if status != 0 { throw statusError(status, "setting TLS versions") }
            if let ca = tls.caCertificateFile {
                status = amqp_ssl_socket_set_cacert(sock, ca)
                if status != 0 { throw AMQPError(.tlsError, "cannot load CA certificate \(ca)") }
            }
            if let cert = tls.certificateFile, let key = tls.keyFile {
                status = amqp_ssl_socket_set_key(sock, cert, key)
                if status != 0 { throw AMQPError(.tlsError, "cannot load client certificate/key") }
            }
            amqp_ssl_socket_set_verify_peer(sock, tls.verifyPeer ? 1 : 0)
            amqp_ssl_socket_set_verify_hostname(sock, tls.verifyPeer ? 1 : 0)
        } else {
            sock = amqp_tcp_socket_new(st)
        }
        guard let sock else { throw AMQPError(.socketError, "could not create socket") }
        var tv = Self.timeval(c.connectionTimeout)
        errno = 0
        let status = amqp_socket_open_noblock(sock, c.host, Int32(c.port), &tv)
        if status != 0 {
            let err = errno
            var e = statusError(status, "connecting to \(c.host):\(c.port)")
            if status == AMQP_STATUS_SOCKET_ERROR.rawValue || status == AMQP_STATUS_TCP_ERROR.rawValue {
                // A refused non-blocking connect is reported as a socket error; errno may be stale.
                e.code = .connectionRefused
                e.message = "cannot connect to \(c.host):\(c.port): \(err == 0 ? "connection refused" : String(cString: strerror(err)))"
            }
            throw e
        }
        _ = amqp_set_handshake_timeout(st, &tv)
        var rpcTV = Self.timeval(c.rpcTimeout)
        _ = amqp_set_rpc_timeout(st, &rpcTV)

        let reply: amqp_rpc_reply_t = withArena { arena in
            var caps = AMQPTable()
            caps["consumer_cancel_notify"] = true
            caps["publisher_confirms"] = true
            caps["basic.nack"] = true
            caps["authentication_failure_close"] = true
            caps["connection.blocked"] = true
            var props = AMQPTable()
            props["product"] = "runworker AMQPClient"
            if let name = c.connectionName { props["connection_name"] = .string(name) }
            props["capabilities"] = .table(caps)
            var table = arena.table(props)
            let vhost = arena.cString(c.vhost)
            switch c.authMechanism {
            case .plain:
                return rw_login_plain(st, vhost, Int32(c.channelMax), Int32(c.frameMax), Int32(c.heartbeat),
                                      &table, arena.cString(c.user), arena.cString(c.password))
            case .external:
                return rw_login_external(st, vhost, Int32(c.channelMax), Int32(c.frameMax),
                                         Int32(c.heartbeat), &table, arena.cString(c.user))
            }
        }
        if reply.reply_type != AMQP_RESPONSE_NORMAL {
            var e = replyError(reply, channel: 0)
            if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, e.replyCode == 403 {
                e.code = e.methodID == 40 ? .accessRefused : .authenticationFailed
            } else if e.code == .connectionClosed {
                e.code = .authenticationFailed
                e.message = "the broker closed the connection during login (credentials or vhost refused?): " + e.message
            }
            throw e
        }
        channelMax = Int(amqp_get_channel_max(st))
        frameMax = Int(amqp_get_frame_max(st))
        heartbeat = Int(amqp_get_heartbeat(st))
    }

    // MARK: errors

    private func statusError(_ status: Int32, _ context: String) -> AMQPError {
        let text = String(cString: amqp_error_string2(status))
        let code: AMQPError.Code
        switch status {
        case AMQP_STATUS_TIMEOUT.rawValue: code = .timeout
        case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED.rawValue: code = .hostNotFound
        case AMQP_STATUS_CONNECTION_CLOSED.rawValue, AMQP_STATUS_SOCKET_CLOSED.rawValue,
            AMQP_STATUS_HEARTBEAT_TIMEOUT.rawValue:
            code = .connectionClosed
        case AMQP_STATUS_SOCKET_ERROR.rawValue, AMQP_STATUS_TCP_ERROR.rawValue: code = .socketError
        case AMQP_STATUS_SSL_ERROR.rawValue, AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue,
            AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue, AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue,
            AMQP_STATUS_SSL_SET_ENGINE_FAILED.rawValue:
            code = .tlsError
        case AMQP_STATUS_INVALID_PARAMETER.rawValue, AMQP_STATUS_TABLE_TOO_BIG.rawValue: code = .invalidArgument
        default: code = .protocolError
        }
        return AMQPError(code, "\(context): \(text)")
    }

    private func replyError(_ r: amqp_rpc_reply_t, channel: UInt16) -> AMQPError {
        switch r.reply_type {
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            return statusError(r.library_error, "library error")
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            if r.reply.id == Method.connectionClose {
                let m = r.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                return AMQPError(.connectionClosed, String(amqp: m.reply_text), replyCode: m.reply_code,
                                 classID: m.class_id, methodID: m.method_id)
            } else if r.reply.id == Method.channelClose {
                let m = r.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                return AMQPError(.channelClosed, String(amqp: m.reply_text), replyCode: m.reply_code,
                                 classID: m.class_id, methodID: m.method_id, channel: channel)
            }
            return AMQPError(.protocolError, "unexpected server method 0x\(String(r.reply.id, radix: 16))")
        default:
            return AMQPError(.protocolError, "missing RPC reply")
        }
    }

    /// Marks the connection dead (once) and returns the error to throw.
    @discardableResult
    private func fail(_ e: AMQPError) -> AMQPError {
        if closeError == nil {
            var e = e
            if e.code != .connectionClosed { e.message = "connection lost: \(e.message)"; e.code = .connectionClosed }
            closeError = e
            openChannels.removeAll()
            confirmChannels.removeAll()
        }
        return closeError!
    }

    private func ensureOpen() throws -> OpaquePointer {
        if let e = closeError { throw e }
        guard let st = state else { throw AMQPError(.connectionClosed, "connection is closed") }
        return st
    }

    private func ensureChannel(_ ch: UInt16) throws -> OpaquePointer {
        let st = try ensureOpen()
        guard openChannels.contains(ch) else {
            throw AMQPError(.channelClosed, "channel \(ch) is not open", channel: ch)
        }
        return st
    }

    /// Handles a failed RPC: answers close methods, marks the channel/connection dead, throws.
    private func check(_ r: amqp_rpc_reply_t, channel: UInt16) throws {
        if r.reply_type == AMQP_RESPONSE_NORMAL { return }
        let e = replyError(r, channel: channel)
        if r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, r.reply.id == Method.channelClose {
            channelClosedByBroker(channel, e)
            throw e
        }
        if r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, r.reply.id == Method.connectionClose {
            var ok = amqp_connection_close_ok_t(dummy: 0)
            if let st = state { _ = amqp_send_method(st, 0, Method.connectionCloseOk, &ok) }
        }
        if e.code == .timeout || e.code == .socketError || e.code == .connectionClosed
            || r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION || e.code == .protocolError
        {
            // librabbitmq closes the socket when an RPC times out; the connection is gone.
            throw fail(e)
        }
        throw e
    }

    private func checkRPC(_ channel: UInt16) throws {
        guard let st = state else { throw AMQPError(.connectionClosed, "connection is closed") }
        try check(amqp_get_rpc_reply(st), channel: channel)
    }

    private func checkStatus(_ status: Int32, _ context: String) throws {
        if status == AMQP_STATUS_OK.rawValue { return }
        let e = statusError(status, context)
        if e.code == .invalidArgument { throw e }
        throw fail(e)
    }

    private func channelClosedByBroker(_ ch: UInt16, _ e: AMQPError) {
        if let st = state, openChannels.contains(ch) {
            var ok = amqp_channel_close_ok_t(dummy: 0)
            let s = amqp_send_method(st, ch, Method.channelCloseOk, &ok)
            if s != 0 { fail(statusError(s, "sending channel.close-ok")) }
        }
        openChannels.remove(ch)
        if let t = confirmChannels.removeValue(forKey: ch) {
            for tag in t.outstanding { push(.confirm(AMQPConfirm(channel: ch, deliveryTag: tag, acked: false))) }
        }
        push(.channelClosed(channel: ch, error: e))
    }

    // MARK: channels

    /// Opens the lowest free channel number and returns it.
    public func openChannel() throws -> UInt16 {
        let st = try ensureOpen()
        let limit = channelMax == 0 ? 65535 : channelMax
        guard let ch = (1...limit).lazy.map({ UInt16($0) }).first(where: { !self.openChannels.contains($0) }) else {
            throw AMQPError(.invalidArgument, "no free channel (channel_max \(limit))")
        }
        // Stale events of an earlier channel with this number must not leak into the new one.
        dropPending(channel: ch)
        _ = amqp_channel_open(st, ch)
        try checkRPC(ch)
        openChannels.insert(ch)
        return ch
    }

    /// Closes a channel cleanly. Unacked deliveries of it go back to their queues.
    public func closeChannel(_ ch: UInt16) throws {
        let st = try ensureChannel(ch)
        let r = amqp_channel_close(st, ch, AMQP_REPLY_SUCCESS)
        openChannels.remove(ch)
        confirmChannels.removeValue(forKey: ch)
        dropPending(channel: ch)
        // The close's round trip queued, inside librabbitmq, what arrived before its reply; a
        // delivery of this channel among it must not surface on a channel opened later with
        // the same number: read them now, while the channel is closed (deliveries on a closed
        // channel are dropped).
        while amqp_frames_enqueued(st) != 0 {
            if try !readFrame(timeout: 0) { break }
        }
        if r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, r.reply.id == Method.channelClose {
            return  // the broker closed it at the same time; fine
        }
        try check(r, channel: ch)
    }

    public func isChannelOpen(_ ch: UInt16) -> Bool { isOpen && openChannels.contains(ch) }

    /// Closes every channel and the connection. Never throws; safe to call twice.
    public func close() {
        guard let st = state else { return }
        if closeError == nil {
            for ch in openChannels.sorted() { _ = amqp_channel_close(st, ch, AMQP_REPLY_SUCCESS) }
            _ = amqp_connection_close(st, AMQP_REPLY_SUCCESS)
            closeError = AMQPError(.connectionClosed, "connection closed by the client")
        }
        amqp_destroy_connection(st)
        state = nil
        openChannels.removeAll()
        confirmChannels.removeAll()
    }

    // MARK: exchanges and queues

    public func exchangeDeclare(channel: UInt16, name: String, type: AMQPExchangeType = .direct,
                                passive: Bool = false, durable: Bool = false, autoDelete: Bool = false,
                                internal: Bool = false, arguments: AMQPTable = [:]) throws {
        let st = try ensureChannel(channel)
        withArena { a in
            _ = amqp_exchange_declare(st, channel, a.bytes(name), a.bytes(type.rawValue), passive ? 1 : 0,
                                      durable ? 1 : 0, autoDelete ? 1 : 0, `internal` ? 1 : 0, a.table(arguments))
        }
        try checkRPC(channel)
    }

    public func exchangeDelete(channel: UInt16, name: String, ifUnused: Bool = false) throws {
        let st = try ensureChannel(channel)
        withArena { a in _ = amqp_exchange_delete(st, channel, a.bytes(name), ifUnused ? 1 : 0) }
        try checkRPC(channel)
    }

    /// Declares a queue; an empty name lets the broker choose one. Passive declares only check
    /// that it exists (404 NOT_FOUND otherwise) and report the counts.
    @discardableResult
    public func queueDeclare(channel: UInt16, name: String = "", passive: Bool = false, durable: Bool = false,
                             exclusive: Bool = false, autoDelete: Bool = false,
                             arguments: AMQPTable = [:]) throws -> AMQPQueueInfo {
        let st = try ensureChannel(channel)
        let ok = withArena { a in
            amqp_queue_declare(st, channel, a.bytes(name), passive ? 1 : 0, durable ? 1 : 0,
                               exclusive ? 1 : 0, autoDelete ? 1 : 0, a.table(arguments))
        }
        guard let ok else { try checkRPC(channel); throw AMQPError(.protocolError, "queue.declare failed") }
        return AMQPQueueInfo(name: String(amqp: ok.pointee.queue), messageCount: ok.pointee.message_count,
                             consumerCount: ok.pointee.consumer_count)
    }

    public func queueBind(channel: UInt16, queue: String, exchange: String, routingKey: String = "",
                          arguments: AMQPTable = [:]) throws {
        let st = try ensureChannel(channel)
        withArena { a in
            _ = amqp_queue_bind(st, channel, a.bytes(queue), a.bytes(exchange), a.bytes(routingKey), a.table(arguments))
        }
        try checkRPC(channel)
    }

    public func queueUnbind(channel: UInt16, queue: String, exchange: String, routingKey: String = "",
                            arguments: AMQPTable = [:]) throws {
        let st = try ensureChannel(channel)
        withArena { a in
            _ = amqp_queue_unbind(st, channel, a.bytes(queue), a.bytes(exchange), a.bytes(routingKey), a.table(arguments))
        }
        try checkRPC(channel)
    }

    /// Removes all ready messages; returns how many.
    @discardableResult
    public func queuePurge(channel: UInt16, queue: String) throws -> UInt32 {
        let st = try ensureChannel(channel)
        let ok = withArena { a in amqp_queue_purge(st, channel, a.bytes(queue)) }
        guard let ok else { try checkRPC(channel); throw AMQPError(.protocolError, "queue.purge failed") }
        return ok.pointee.message_count
    }

    /// Deletes a queue; returns how many messages it held.
    @discardableResult
    public func queueDelete(channel: UInt16, queue: String, ifUnused: Bool = false, ifEmpty: Bool = false) throws -> UInt32 {
        let st = try ensureChannel(channel)
        let ok = withArena { a in amqp_queue_delete(st, channel, a.bytes(queue), ifUnused ? 1 : 0, ifEmpty ? 1 : 0) }
        guard let ok else { try checkRPC(channel); throw AMQPError(.protocolError, "queue.delete failed") }
        return ok.pointee.message_count
    }

    // MARK: basic

    /// `basic.qos`. `prefetchCount` is a 16-bit field on the wire.
    public func qos(channel: UInt16, prefetchCount: UInt16, prefetchSize: UInt32 = 0, global: Bool = false) throws {
        let st = try ensureChannel(channel)
        _ = amqp_basic_qos(st, channel, prefetchSize, prefetchCount, global ? 1 : 0)
        try checkRPC(channel)
    }

    /// Starts a consumer with manual acks unless `noAck`; returns the consumer tag.
    public func consume(channel: UInt16, queue: String, consumerTag: String = "", noAck: Bool = false,
                        exclusive: Bool = false, arguments: AMQPTable = [:]) throws -> String {
        let st = try ensureChannel(channel)
        let ok = withArena { a in
            amqp_basic_consume(st, channel, a.bytes(queue), a.bytes(consumerTag), 0, noAck ? 1 : 0,
                               exclusive ? 1 : 0, a.table(arguments))
        }
        guard let ok else { try checkRPC(channel); throw AMQPError(.protocolError, "basic.consume failed") }
        return String(amqp: ok.pointee.consumer_tag)
    }

    /// Cancels a consumer. Deliveries already received for it are still returned by
    /// `nextEvent` and must be acked or rejected by the caller.
    public func cancel(channel: UInt16, consumerTag: String) throws {
        let st = try ensureChannel(channel)
        _ = withArena { a in amqp_basic_cancel(st, channel, a.bytes(consumerTag)) }
        try checkRPC(channel)
    }

    /// `basic.get`: one message or nil when the queue is empty.
    public func get(channel: UInt16, queue: String, noAck: Bool = false) throws -> AMQPDelivery? {
        let st = try ensureChannel(channel)
        let r = withArena { a in amqp_basic_get(st, channel, a.bytes(queue), noAck ? 1 : 0) }
        try check(r, channel: channel)
        guard r.reply.id == Method.basicGetOk else { return nil }
        let m = r.reply.decoded.assumingMemoryBound(to: amqp_basic_get_ok_t.self).pointee
        var d = AMQPDelivery(channel: channel, deliveryTag: m.delivery_tag, redelivered: m.redelivered != 0,
                             exchange: String(amqp: m.exchange), routingKey: String(amqp: m.routing_key),
                             consumerTag: "", properties: AMQPProperties(), body: [], messageCount: m.message_count)
        (d.properties, d.body) = try readContent(channel)
        amqp_maybe_release_buffers(st)
        return d
    }

    public func ack(channel: UInt16, deliveryTag: UInt64, multiple: Bool = false) throws {
        let st = try ensureChannel(channel)
        try checkStatus(amqp_basic_ack(st, channel, deliveryTag, multiple ? 1 : 0), "basic.ack")
    }

    public func nack(channel: UInt16, deliveryTag: UInt64, multiple: Bool = false, requeue: Bool = true) throws {
        let st = try ensureChannel(channel)
        try checkStatus(amqp_basic_nack(st, channel, deliveryTag, multiple ? 1 : 0, requeue ? 1 : 0), "basic.nack")
    }

    public func reject(channel: UInt16, deliveryTag: UInt64, requeue: Bool = true) throws {
        let st = try ensureChannel(channel)
        try checkStatus(amqp_basic_reject(st, channel, deliveryTag, requeue ? 1 : 0), "basic.reject")
    }

    /// Turns on publisher confirms for the channel; later publishes return delivery tags 1, 2, ...
    public func confirmSelect(channel: UInt16) throws {
        let st = try ensureChannel(channel)
        guard confirmChannels[channel] == nil else { return }
        _ = amqp_confirm_select(st, channel)
        try checkRPC(channel)
        confirmChannels[channel] = ConfirmTracker()
    }

    /// Publishes a message. Returns the confirm delivery tag when confirms are on, else nil.
    @discardableResult
    public func publish(channel: UInt16, exchange: String, routingKey: String, body: [UInt8],
                        properties: AMQPProperties = AMQPProperties(), mandatory: Bool = false) throws -> UInt64? {
        let st = try ensureChannel(channel)
        let status = withArena { a in
            var props = a.properties(properties)
            return body.withUnsafeBytes { raw in
                let b = amqp_bytes_t(len: raw.count, bytes: UnsafeMutableRawPointer(mutating: raw.baseAddress))
                return amqp_basic_publish(st, channel, a.bytes(exchange), a.bytes(routingKey),
                                          mandatory ? 1 : 0, 0, &props, b)
            }
        }
        try checkStatus(status, "basic.publish")
        guard var t = confirmChannels[channel] else { return nil }
        let tag = t.nextTag
        t.nextTag += 1
        t.outstanding.append(tag)
        confirmChannels[channel] = t
        return tag
    }

    /// Publishes `messages` in order on `channel`, as `publish` would one by one, but with one
    /// socket write for the whole batch on a plain TCP connection (librabbitmq writes every
    /// frame with a syscall of its own). Over TLS, where the library owns the stream, each
    /// message goes through `amqp_basic_publish`. Returns the delivery tags on a confirming
    /// channel (nil otherwise, or for an empty batch).
    public func publishBatch(channel: UInt16, _ messages: [AMQPOutgoingMessage]) throws -> ClosedRange<UInt64>? {
        guard !messages.isEmpty else { return nil }
        let st = try ensureChannel(channel)
        if configuration.tls != nil {
            var first: UInt64?
            var last: UInt64 = 0
            for m in messages {
                let tag = try publish(
                    channel: channel, exchange: m.exchange, routingKey: m.routingKey, body: m.body, properties: m.properties)
                if first == nil { first = tag }
                last = tag ?? 0
            }
            return first.map { $0...last }
        }
        // The bodies are copied into an arena for the C call: a part of about 1 MiB of bodies
        // at a time, so a batch of large events is not held whole a second time. Every header
        // is checked first, so that a batch refused is one of which nothing was sent.
        let checked: Int32 = withArena { a in
            rw_check_batch(st, Self.cMessages(messages[...], in: a, bodies: false), messages.count)
        }
        if checked == AMQP_STATUS_BAD_AMQP_DATA.rawValue || checked == AMQP_STATUS_TABLE_TOO_BIG.rawValue {
            // Refused while encoding (a short string over 255 bytes, a header over a frame):
            // nothing was sent, the connection is intact.
            throw AMQPError(.invalidArgument, "basic.publish (batch): a message cannot be encoded (\(statusError(checked, "").message))")
        }
        try checkStatus(checked, "basic.publish (batch)")
        var start = 0
        while start < messages.count {
            var end = start + 1
            var bytes = messages[start].body.count
            while end < messages.count, bytes + messages[end].body.count <= Self.publishPartBytes {
                bytes += messages[end].body.count
                end += 1
            }
            let part = messages[start..<end]
            let status: Int32 = withArena { a in
                rw_publish_batch(st, channel, Self.cMessages(part, in: a, bodies: true), part.count)
            }
            // Checked above: a failure now is the connection's (and earlier parts went out).
            if status != AMQP_STATUS_OK.rawValue { throw fail(statusError(status, "basic.publish (batch)")) }
            start = end
        }
        guard var t = confirmChannels[channel] else { return nil }
        let first = t.nextTag
        t.nextTag += UInt64(messages.count)
        t.outstanding.append(contentsOf: first..<t.nextTag)
        confirmChannels[channel] = t
        return first...(t.nextTag - 1)
    }

    /// Bodies copied for one C call of `publishBatch` (at least one message).
    static let publishPartBytes = 1 << 20

    /// The shim's view of `messages`, copied into `a`; without `bodies`, only their lengths
    /// (for `rw_check_batch`).
    private static func cMessages(_ messages: ArraySlice<AMQPOutgoingMessage>, in a: Arena, bodies: Bool)
        -> UnsafeMutablePointer<rw_publish_t>
    {
        let batch = a.allocate(MemoryLayout<rw_publish_t>.stride * messages.count)
            .bindMemory(to: rw_publish_t.self, capacity: messages.count)
        for (i, m) in messages.enumerated() {
            batch[i] = rw_publish_t(
                exchange: a.bytes(m.exchange), routing_key: a.bytes(m.routingKey), properties: a.properties(m.properties),
                body: bodies ? a.bytes(m.body) : amqp_bytes_t(len: m.body.count, bytes: nil))
        }
        return batch
    }

    /// Number of published messages on `channel` the broker has not confirmed yet.
    public func unconfirmedCount(channel: UInt16) -> Int { confirmChannels[channel]?.outstanding.count ?? 0 }

    /// Waits until every message published on `channel` is confirmed, then returns the confirms
    /// not yet handed out (each tag reported once, either here or as a `.confirm` event).
    /// Other events read meanwhile are kept for `nextEvent`. Throws `.timeout` (keeping what was
    /// collected for the next call) if confirms are still missing at the deadline.
    public func waitForConfirms(channel: UInt16, timeout: Double) throws -> AMQPConfirmResult {
        let deadline = Date().addingTimeInterval(timeout)
        while let t = confirmChannels[channel], !t.outstanding.isEmpty {
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 {
                throw AMQPError(.timeout, "\(t.outstanding.count) confirms missing after \(timeout) s", channel: channel)
            }
            _ = try readFrame(timeout: remaining)
        }
        if confirmChannels[channel] == nil && !openChannels.contains(channel) {
            if let e = closeError { throw e }
        }
        var result = AMQPConfirmResult()
        var kept: [AMQPEvent] = []
        for e in pending[pendingHead...] {
            if case .confirm(let c) = e, c.channel == channel {
                if c.acked { result.acked.append(c.deliveryTag) } else { result.nacked.append(c.deliveryTag) }
            } else {
                kept.append(e)
            }
        }
        pending = kept
        pendingHead = 0
        return result
    }

    // MARK: events

    /// The next asynchronous event, waiting at most `timeout` seconds (nil: forever, 0: only
    /// what is already available). Returns nil on timeout; throws `.connectionClosed` when the
    /// connection is lost.
    public func nextEvent(timeout: Double?) throws -> AMQPEvent? {
        let deadline = timeout.map { Date().addingTimeInterval($0) }
        while true {
            if let e = popPending() { return e }
            let remaining = deadline.map { max(0, $0.timeIntervalSinceNow) }
            if try !readFrame(timeout: remaining) { return nil }
            if let d = deadline, d.timeIntervalSinceNow <= 0, pendingHead >= pending.count,
               let st = state, amqp_frames_enqueued(st) == 0, amqp_data_in_buffer(st) == 0 {
                return nil
            }
        }
    }

    /// Like `nextEvent(timeout:)`, but also returns nil early, after draining `waker`, as soon
    /// as `waker` is signalled: the owning thread waits for AMQP frames and for work finished on
    /// other threads (a store transaction, say) at once, without handing the connection over.
    ///
    /// Events already received are returned first; a signal is seen by the first call that
    /// finds none ready. While waiting it wakes at least every heartbeat/4 (every second at
    /// most) to let librabbitmq send heartbeats and notice missed ones, so a long wait keeps the
    /// connection alive and a dead one is still reported.
    ///
    /// `alsoWatching`: another connection of the same thread; its socket turning readable
    /// ends the wait like the waker (the caller reads it).
    public func nextEvent(timeout: Double?, waker: Waker, alsoWatching other: BlockingConnection? = nil) throws -> AMQPEvent? {
        let deadline = timeout.map { ContinuousClock.now + .seconds(Swift.max(0, $0)) }
        let sliceMS = heartbeat > 0 ? Swift.min(1000, heartbeat * 250) : 1000
        while true {
            if let e = popPending() { return e }
            let st = try ensureOpen()
            // Frames the library has already read never make the socket readable again.
            if amqp_frames_enqueued(st) != 0 || amqp_data_in_buffer(st) != 0 {
                _ = try readFrame(timeout: 0)
                continue
            }
            let waitMS = deadline.map { Swift.min(sliceMS, Self.milliseconds(until: $0)) } ?? sliceMS
            var fds = [pollfd(fd: amqp_get_sockfd(st), events: Int16(POLLIN), revents: 0),
                       pollfd(fd: waker.fileDescriptor, events: Int16(POLLIN), revents: 0)]
            if let other, other.fileDescriptor >= 0 {
                fds.append(pollfd(fd: other.fileDescriptor, events: Int16(POLLIN), revents: 0))
            }
            if poll(&fds, nfds_t(fds.count), Int32(waitMS)) < 0 && errno != EINTR {
                throw AMQPError(.socketError, "poll failed: \(String(cString: strerror(errno)))")
            }
            let woken = (fds[1].revents != 0 && waker.drain()) || (fds.count > 2 && fds[2].revents != 0)
            // Even when nothing arrived: librabbitmq sends a due heartbeat, and notices that the
            // broker's are missing, only inside its own reads. A zero timeout does both (0.11
            // compares the deadline "now" with the heartbeat deadlines) without blocking.
            _ = try readFrame(timeout: 0)
            if woken { return nil }
            if let deadline, ContinuousClock.now >= deadline, !hasBufferedEvents { return nil }
        }
    }

    /// Sends a heartbeat frame when a quarter of the heartbeat interval has passed since the
    /// last one sent here, without reading: for an owner that leaves the socket unread a while
    /// (deliveries it has no room for wait in the kernel's buffers meanwhile). librabbitmq
    /// sends heartbeats only inside its reads.
    public func sendHeartbeatIfDue() throws {
        guard heartbeat > 0 else { return }
        let now = ContinuousClock.now
        if let last = lastHeartbeatSent, last.duration(to: now) < .milliseconds(heartbeat * 250) { return }
        let st = try ensureOpen()
        var frame = amqp_frame_t()
        frame.frame_type = UInt8(AMQP_FRAME_HEARTBEAT)
        frame.channel = 0
        let status = amqp_send_frame(st, &frame)
        if status != AMQP_STATUS_OK.rawValue { throw fail(statusError(status, "sending a heartbeat")) }
        lastHeartbeatSent = now
    }

    private var lastHeartbeatSent: ContinuousClock.Instant?

    /// Whole milliseconds until `deadline`, rounded up (librabbitmq and poll() truncate to
    /// milliseconds; rounding down would turn the last fraction into a busy loop).
    private static func milliseconds(until deadline: ContinuousClock.Instant) -> Int {
        let d = ContinuousClock.now.duration(to: deadline)
        guard d > .zero else { return 0 }
        let ms = Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
        return Int(Swift.min(ms.rounded(.up), Double(Int32.max)))
    }

    /// Everything already received (library buffers and the socket's kernel buffer), without
    /// blocking, up to `max` events. Also services heartbeats.
    public func drainEvents(max: Int = .max) throws -> [AMQPEvent] {
        var out: [AMQPEvent] = []
        while out.count < max, let e = try nextAvailableEvent() { out.append(e) }
        return out
    }

    /// The next event already received (library buffers and the socket's kernel buffer), or
    /// nil, without blocking. Also services heartbeats.
    public func nextAvailableEvent() throws -> AMQPEvent? {
        while true {
            if let e = popPending() { return e }
            if try !readFrame(timeout: 0) { return nil }
        }
    }

    /// Deliveries only, up to `max`, waiting at most `timeout` for the first one; other events
    /// read meanwhile are kept for `nextEvent`. The batch API of a worker's hot loop.
    public func nextDeliveries(max: Int, timeout: Double) throws -> [AMQPDelivery] {
        var out: [AMQPDelivery] = []
        let deadline = Date().addingTimeInterval(timeout)
        var i = pendingHead
        func takeBuffered() {
            while i < pending.count && out.count < max {
                if case .delivery(let d) = pending[i] {
                    out.append(d)
                    pending.remove(at: i)
                } else {
                    i += 1
                }
            }
        }
        takeBuffered()
        while out.count < max {
            let remaining = out.isEmpty ? Swift.max(0, deadline.timeIntervalSinceNow) : 0
            if try !readFrame(timeout: remaining) { break }
            takeBuffered()
            if out.isEmpty && deadline.timeIntervalSinceNow <= 0 && !hasBufferedEvents { break }
        }
        return out
    }

    private func push(_ e: AMQPEvent) { pending.append(e) }

    private func popPending() -> AMQPEvent? {
        guard pendingHead < pending.count else {
            if pendingHead > 0 { pending.removeAll(keepingCapacity: true); pendingHead = 0 }
            return nil
        }
        let e = pending[pendingHead]
        pendingHead += 1
        if pendingHead > 1024 && pendingHead * 2 > pending.count {
            pending.removeFirst(pendingHead)
            pendingHead = 0
        }
        return e
    }

    private func dropPending(channel: UInt16) {
        partial[channel] = nil
        pending = pending[pendingHead...].filter { e in
            switch e {
            case .delivery(let d): d.channel != channel
            case .returned(let r): r.channel != channel
            case .confirm(let c): c.channel != channel
            case .consumerCancelled(let ch, _), .channelClosed(let ch, _): ch != channel
            }
        }
        pendingHead = 0
    }

    /// Reads one frame (waiting at most `timeout`, nil = forever) and turns it into pending
    /// events. Returns false on timeout.
    private func readFrame(timeout: Double?) throws -> Bool {
        let st = try ensureOpen()
        var frame = amqp_frame_t()
        var status: Int32
        if let timeout {
            var tv = Self.timeval(timeout)
            status = amqp_simple_wait_frame_noblock(st, &frame, &tv)
        } else {
            status = amqp_simple_wait_frame_noblock(st, &frame, nil)
        }
        if status == AMQP_STATUS_TIMEOUT.rawValue {
            releaseBuffers(st)
            return false
        }
        if status != AMQP_STATUS_OK.rawValue { throw fail(statusError(status, "reading from the broker")) }
        // Everything a frame decodes into the library's pools is copied out below, so the pools
        // can be recycled later: every 64 frames, or when the socket has nothing more. Doing it
        // after each frame (it walks every channel's pool) took half the worker's CPU.
        framesSinceRelease += 1
        // Body frames (up to frame_max each) fill the pools fast: by bytes too, or 64 frames of
        // 200 KB deliveries on every channel held tens of MB.
        defer { if framesSinceRelease >= 64 || bytesSinceRelease >= 1 << 20 { releaseBuffers(st) } }
        let ch = frame.channel
        switch Int32(frame.frame_type) {
        case AMQP_FRAME_METHOD: break
        case AMQP_FRAME_HEADER:
            // Content of a delivery or return, assembled here rather than with
            // amqp_read_message: that call queues every other channel's frames (confirms,
            // other partitions' deliveries) in a list the library then walks on each call,
            // which cost a third of the worker's CPU under load.
            guard var p = partial[ch] else { return true }
            if let decoded = frame.payload.properties.decoded {
                p.properties = decodeProperties(decoded.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee)
            }
            p.size = Int(frame.payload.properties.body_size)
            p.body.reserveCapacity(p.size)
            partial[ch] = p
            if p.size == 0 { finishContent(ch) }
            return true
        case AMQP_FRAME_BODY:
            guard let size = partial[ch]?.size else { return true }
            let fragment = frame.payload.body_fragment
            bytesSinceRelease += fragment.len
            if fragment.len > 0, let bytes = fragment.bytes {
                // In place: appending to a copy taken out of the dictionary copied the body.
                partial[ch]!.body.append(contentsOf: UnsafeRawBufferPointer(start: bytes, count: fragment.len))
            }
            if partial[ch]!.body.count >= size { finishContent(ch) }
            return true
        default:
            return true  // heartbeats
        }
        let decoded = frame.payload.method.decoded
        switch frame.payload.method.id {
        case Method.basicDeliver:
            // A closed channel's: the broker has requeued it (see closeChannel).
            guard openChannels.contains(ch) else { return true }
            let m = decoded!.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            let d = AMQPDelivery(channel: ch, deliveryTag: m.delivery_tag, redelivered: m.redelivered != 0,
                                 exchange: String(amqp: m.exchange), routingKey: String(amqp: m.routing_key),
                                 consumerTag: String(amqp: m.consumer_tag), properties: AMQPProperties(), body: [])
            partial[ch] = PartialContent(owner: .delivery(d))
        case Method.basicReturn:
            let m = decoded!.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let r = AMQPReturnedMessage(channel: ch, replyCode: m.reply_code, replyText: String(amqp: m.reply_text),
                                        exchange: String(amqp: m.exchange), routingKey: String(amqp: m.routing_key),
                                        properties: AMQPProperties(), body: [])
            partial[ch] = PartialContent(owner: .returned(r))
        case Method.basicAck:
            let m = decoded!.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            confirmed(ch, m.delivery_tag, multiple: m.multiple != 0, acked: true)
        case Method.basicNack:
            let m = decoded!.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            confirmed(ch, m.delivery_tag, multiple: m.multiple != 0, acked: false)
        case Method.basicCancel:
            let m = decoded!.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            let tag = String(amqp: m.consumer_tag)
            if m.nowait == 0 {
                withArena { a in
                    var ok = amqp_basic_cancel_ok_t(consumer_tag: a.bytes(tag))
                    _ = amqp_send_method(st, ch, Method.basicCancelOk, &ok)
                }
            }
            if openChannels.contains(ch) { push(.consumerCancelled(channel: ch, consumerTag: tag)) }
        case Method.channelClose:
            let m = decoded!.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            let e = AMQPError(.channelClosed, String(amqp: m.reply_text), replyCode: m.reply_code,
                              classID: m.class_id, methodID: m.method_id, channel: ch)
            channelClosedByBroker(ch, e)
        case Method.connectionClose:
            let m = decoded!.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            let e = AMQPError(.connectionClosed, "closed by the broker: " + String(amqp: m.reply_text),
                              replyCode: m.reply_code, classID: m.class_id, methodID: m.method_id)
            var ok = amqp_connection_close_ok_t(dummy: 0)
            _ = amqp_send_method(st, 0, Method.connectionCloseOk, &ok)
            throw fail(e)
        case Method.connectionBlocked:
            let m = decoded!.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
            blockedReason = String(amqp: m.reason)
        case Method.connectionUnblocked:
            blockedReason = nil
        default:
            break  // cancel-ok after a cancel, ...: nothing to do
        }
        return true
    }

    private func confirmed(_ ch: UInt16, _ tag: UInt64, multiple: Bool, acked: Bool) {
        guard var t = confirmChannels[ch] else { return }
        if multiple {
            let n = t.outstanding.prefix(while: { $0 <= tag }).count
            for x in t.outstanding.prefix(n) { push(.confirm(AMQPConfirm(channel: ch, deliveryTag: x, acked: acked))) }
            t.outstanding.removeFirst(n)
        } else if let i = t.outstanding.firstIndex(of: tag) {
            t.outstanding.remove(at: i)
            push(.confirm(AMQPConfirm(channel: ch, deliveryTag: tag, acked: acked)))
        }
        confirmChannels[ch] = t
    }

    private var framesSinceRelease = 0
    private var bytesSinceRelease = 0

    private func releaseBuffers(_ st: amqp_connection_state_t) {
        guard framesSinceRelease > 0 else { return }
        framesSinceRelease = 0
        bytesSinceRelease = 0
        amqp_maybe_release_buffers(st)
    }

    /// A delivery or returned message whose header and body frames are still arriving.
    private struct PartialContent {
        enum Owner {
            case delivery(AMQPDelivery)
            case returned(AMQPReturnedMessage)
        }
        var owner: Owner
        var properties = AMQPProperties()
        var size = 0
        var body: [UInt8] = []
    }
    private var partial: [UInt16: PartialContent] = [:]

    private func finishContent(_ ch: UInt16) {
        guard let p = partial.removeValue(forKey: ch), openChannels.contains(ch) else { return }
        switch p.owner {
        case .delivery(var d):
            d.properties = p.properties
            d.body = p.body
            push(.delivery(d))
        case .returned(var r):
            r.properties = p.properties
            r.body = p.body
            push(.returned(r))
        }
    }

    /// Reads the content header and body frames that follow basic.get-ok.
    private func readContent(_ ch: UInt16) throws -> (AMQPProperties, [UInt8]) {
        guard let st = state else { throw AMQPError(.connectionClosed, "connection is closed") }
        var msg = amqp_message_t()
        let r = amqp_read_message(st, ch, &msg, 0)
        if r.reply_type != AMQP_RESPONSE_NORMAL {
            throw fail(replyError(r, channel: ch))
        }
        defer { amqp_destroy_message(&msg) }
        return (decodeProperties(msg.properties), [UInt8](amqp: msg.body))
    }
}
