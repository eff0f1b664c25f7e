import Foundation
import Hummingbird
import NIOHTTPTypesHTTP1
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTPTypes
import RunContract
import Testing

@testable import RunHTTP

#if canImport(Glibc)
import Glibc
#endif

/// The pieces of the listener's connection limits that need no socket: the places, the cap
/// against the descriptor limit, the deadlines of one connection, the accept back-off, and the
/// two channel handlers on an embedded channel whose time moves only when the test says.
@Suite struct ConnectionLimitsTests {
    // MARK: counter and cap

    /// Below the cap every connection is admitted; at the cap the oldest waiting one (no
    /// request in progress) is closed for the newcomer; when all are busy the newcomer is
    /// refused; a closed connection frees its place.
    @Test func slotsEvictTheOldestWaitingConnection() {
        var slots = ConnectionSlots(limit: 3, maxEvicting: 2)
        #expect((0..<3).map { slots.accepted($0) } == [.admit, .admit, .admit])
        slots.setWaiting(0, false)  // answering a request (an event stream, say)
        #expect(slots.accepted(3) == .admitEvicting(victim: 1), "the oldest waiting one, not the busy one")
        #expect(slots.open == 4, "the victim keeps its place until it has closed")
        slots.closed(1)
        slots.setWaiting(2, false)
        slots.setWaiting(3, false)
        #expect(slots.accepted(4) == .refuse, "every connection is busy")
        #expect(slots.open == 3)
        slots.setWaiting(3, true)  // its response ended: idle
        #expect(slots.accepted(5) == .admitEvicting(victim: 3))
        slots.closed(0)
        slots.closed(3)
        #expect(slots.accepted(6) == .admit)
        #expect(slots.open == 3)
    }

    /// However many connections arrive while victims are still closing, the listener holds at
    /// most `limit + maxEvicting` sockets, and a victim is chosen once.
    @Test func slotsBoundTheSocketsHeld() {
        var slots = ConnectionSlots(limit: 4, maxEvicting: 2)
        var victims: [Int] = []
        for id in 0..<50 {
            if case .admitEvicting(let victim) = slots.accepted(id) { victims.append(victim) }
        }
        #expect(victims == [0, 1], "no victim closes here, so two evictions are all that may be in flight")
        #expect(slots.open == 6)
    }

    /// The table closes the victim's channel outside its lock, and refuses when all are busy.
    @Test func tableClosesTheVictim() async throws {
        let table = ConnectionTable(limit: 1)
        let first = EmbeddedChannel()
        try await first.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).get()
        let a = try #require(table.admit(first))
        #expect(!a.evicted && first.isActive)
        let b = try #require(table.admit(EmbeddedChannel()))
        #expect(b.evicted && !first.isActive, "the waiting first connection was closed for the second")
        table.closed(a.id)
        table.setWaiting(b.id, false)
        #expect(table.admit(EmbeddedChannel()) == nil)
        #expect(table.open == 1)
    }

    /// The cap leaves 128 descriptors of the process's limit to the rest of the worker, never
    /// goes below 1, and is the configured one when the limit is far or absent.
    @Test func capFitsTheDescriptorLimit() {
        #expect(HTTPConnectionLimits.effectiveMaxConnections(configured: 256, descriptorLimit: 1024) == 256)
        #expect(HTTPConnectionLimits.effectiveMaxConnections(configured: 1000, descriptorLimit: 1024) == 896)
        #expect(HTTPConnectionLimits.effectiveMaxConnections(configured: 256, descriptorLimit: 200) == 72)
        #expect(HTTPConnectionLimits.effectiveMaxConnections(configured: 256, descriptorLimit: 100) == 1)
        #expect(HTTPConnectionLimits.effectiveMaxConnections(configured: 256, descriptorLimit: nil) == 256)
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        #expect(HTTPConnectionLimits.descriptorLimit() == (limit.rlim_cur == rlim_t.max ? nil : Int(limit.rlim_cur)))
    }

    // MARK: deadlines

    static let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    /// A connection's deadline through its life: the head from the opening, none while
    /// answering (however long), the idle wait from the response's end, the next head from its
    /// first byte (later bytes do not extend it), pipelined requests counted.
    @Test func deadlinesFollowTheRequestCycle() {
        var d = ConnectionDeadlines(header: .seconds(10), idle: .seconds(60), openedAt: Self.t0)
        #expect(d.deadline == Self.t0 + .seconds(10) && d.waiting == .header)
        d.bytesRead(at: Self.t0 + .seconds(5))
        #expect(d.deadline == Self.t0 + .seconds(10), "bytes of the head do not extend its deadline")
        #expect(!d.expired(at: Self.t0 + .milliseconds(9_999)) && d.expired(at: Self.t0 + .seconds(10)))
        d.headRead()
        #expect(d.deadline == nil && !d.expired(at: Self.t0 + .seconds(3600)), "no deadline while answering")
        d.responseEnded(at: Self.t0 + .seconds(100))
        #expect(d.deadline == Self.t0 + .seconds(160) && d.waiting == .idle)
        d.bytesRead(at: Self.t0 + .seconds(150))
        #expect(d.deadline == Self.t0 + .seconds(160) && d.waiting == .header, "the next head's clock starts at its first byte")
        d.headRead()
        d.headRead()  // pipelined
        d.responseEnded(at: Self.t0 + .seconds(151))
        #expect(d.deadline == nil, "one response of two ended")
        d.responseEnded(at: Self.t0 + .seconds(152))
        #expect(d.deadline == Self.t0 + .seconds(212))
        // A response's end with nothing in flight (a parser error's answer) changes nothing.
        var fresh = ConnectionDeadlines(header: .seconds(1), idle: .seconds(2), openedAt: Self.t0)
        fresh.responseEnded(at: Self.t0 + .seconds(1))
        #expect(fresh.phase == .head(since: Self.t0))
    }

    /// The accept back-off starts at 10 ms, doubles to 1 s, starts again after an accept, and
    /// applies to running out of descriptors or memory only.
    @Test func acceptBackoffDoublesToOneSecond() {
        var backoff = AcceptBackoff()
        let pauses = (0..<9).map { _ in backoff.failed().nanoseconds / 1_000_000 }
        #expect(pauses == [10, 20, 40, 80, 160, 320, 640, 1000, 1000])
        backoff.accepted()
        #expect(backoff.failed() == .milliseconds(10))
        #expect([EMFILE, ENFILE, ENOBUFS, ENOMEM].allSatisfy(AcceptBackoff.pausesFor))
        #expect(![ECONNABORTED, ECONNRESET, EINVAL].contains(where: AcceptBackoff.pausesFor))
    }

    // MARK: handlers on an embedded channel

    static let limits = HTTPConnectionLimits(headerTimeout: .seconds(1), idleTimeout: .seconds(5), maxConnections: 8)

    static func connected(_ handlers: [any ChannelHandler]) async throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers(handlers)
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 8080)).get()
        return channel
    }

    /// A head trickling in is cut at the header timeout from the opening, whatever arrives.
    @Test func tricklingHeadIsClosed() async throws {
        let deadlines = ConnectionDeadlineHandler(limits: Self.limits, metrics: nil)
        let channel = try await Self.connected([deadlines])
        for _ in 0..<9 {
            channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
            try channel.writeInbound(ByteBuffer(string: "G"))
        }
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
        #expect(!channel.isActive)
    }

    /// After a response, the connection may idle for the idle timeout; the next request's
    /// first byte starts the header timeout instead; a request being answered is never cut.
    @Test func idleAndNextHeadAreTimedApart() async throws {
        let deadlines = ConnectionDeadlineHandler(limits: Self.limits, metrics: nil)
        let channel = try await Self.connected([deadlines])
        deadlines.headRead()
        channel.embeddedEventLoop.advanceTime(by: .seconds(30))
        #expect(channel.isActive, "no deadline while answering")
        deadlines.responseEnded()
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(4_900))
        #expect(channel.isActive, "idle, within the idle timeout")
        try channel.writeInbound(ByteBuffer(string: "GET / HT"))
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(900))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
        #expect(!channel.isActive, "the next head did not arrive within the header timeout of its first byte")

        let idle = ConnectionDeadlineHandler(limits: Self.limits, metrics: nil)
        let other = try await Self.connected([idle])
        idle.headRead()
        idle.responseEnded()
        other.embeddedEventLoop.advanceTime(by: .milliseconds(4_999))
        #expect(other.isActive)
        other.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(!other.isActive, "closed after idling for the idle timeout")
    }

    /// Hummingbird's empty 400 for a request the parser refused becomes the API's JSON error
    /// (431 for a head too large), with the security headers; other answers pass untouched.
    @Test func parserErrorsGetTheJSONError() async throws {
        for (error, status, code) in [
            (HTTPParserError.invalidHeaderToken, HTTPResponse.Status.badRequest, "validation_error"),
            (.headerOverflow, .requestHeaderFieldsTooLarge, "payload_too_large"),
        ] {
            let deadlines = ConnectionDeadlineHandler(limits: Self.limits, metrics: nil)
            let channel = try await Self.connected([deadlines, HTTPRequestGuard(deadlines: deadlines)])
            channel.pipeline.fireErrorCaught(error)
            #expect(throws: HTTPParserError.self) { try channel.throwIfErrorCaught() }
            try channel.writeOutbound(HTTPResponsePart.head(.init(status: .badRequest, headerFields: [.connection: "close", .contentLength: "0"])))
            try channel.writeOutbound(HTTPResponsePart.end(nil))
            guard case .head(let head)? = try channel.readOutbound(as: HTTPResponsePart.self),
                case .body(let body)? = try channel.readOutbound(as: HTTPResponsePart.self),
                case .end? = try channel.readOutbound(as: HTTPResponsePart.self)
            else {
                Issue.record("not head, body, end")
                continue
            }
            #expect(head.status == status)
            #expect(head.headerFields[.contentType] == "application/json" && head.headerFields[.connection] == "close")
            #expect(head.headerFields[.contentLength] == "\(body.readableBytes)")
            #expect(head.headerFields[.xContentTypeOptions] == "nosniff")
            let json = try JSONValue.parse(Array(body.readableBytesView))
            #expect(json["error"]?["code"]?.stringValue == code, "\(json)")
        }

        // Without a parser error, even an empty 400 is the router's own and passes as written.
        let deadlines = ConnectionDeadlineHandler(limits: Self.limits, metrics: nil)
        let channel = try await Self.connected([deadlines, HTTPRequestGuard(deadlines: deadlines)])
        try channel.writeOutbound(HTTPResponsePart.head(.init(status: .badRequest, headerFields: [.contentLength: "0"])))
        guard case .head(let head)? = try channel.readOutbound(as: HTTPResponsePart.self) else {
            Issue.record("no head")
            return
        }
        #expect(head.headerFields[.contentType] == nil)
    }

    /// A head the HTTP types refuse (the parser took it) goes on as the parser error it amounts
    /// to, so that Hummingbird answers it like one instead of closing without an answer.
    @Test func refusedHeadBecomesAParserError() async throws {
        let deadlines = ConnectionDeadlineHandler(limits: Self.limits, metrics: nil)
        let channel = try await Self.connected([deadlines, HTTPRequestGuard(deadlines: deadlines)])
        channel.pipeline.fireErrorCaught(HTTP1TypeConversionError.invalidMethod)
        #expect(throws: HTTPParserError.invalidMethod) { try channel.throwIfErrorCaught() }
    }

    /// A connection beyond the cap is answered 503 with the API's error and closed at once.
    @Test func refusedConnectionGets503AndCloses() async throws {
        let channel = try await Self.connected([RefusedConnectionHandler()])
        let written = try #require(try channel.readOutbound(as: ByteBuffer.self))
        let text = String(buffer: written)
        #expect(text.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"), "\(text)")
        #expect(text.contains("\r\nConnection: close\r\n") && text.contains("\r\nRetry-After: 1\r\n"))
        let body = try #require(text.components(separatedBy: "\r\n\r\n").last)
        #expect(try JSONValue.parse(Array(body.utf8))["error"]?["code"]?.stringValue == "unavailable")
        #expect(text.contains("Content-Length: \(body.utf8.count)\r\n"))
        #expect(!channel.isActive)
    }
}
