import Foundation
import Hummingbird
import Logging
import RunContract
import Testing

@testable import RunHTTP

/// The parts of the live stream that need no broker: the SSE frame, the subscriber filter,
/// the accepted event types, and a closed feed.
@Suite struct EventFeedTests {
    static func event(_ runID: String, _ type: String, _ status: String) -> LiveEvent {
        LiveEvent(runID: runID, type: type, status: status, eventID: "\(runID):3", body: Array(#"{"seq":3}"#.utf8))
    }

    /// One event is one server-sent event: `id`, `event` and the body on one `data` line, then
    /// a blank line.
    @Test func frameIsOneServerSentEvent() {
        let frame = RunsAPI.frame(Self.event("r-a", "completed", "completed"))
        #expect(String(decoding: frame.readableBytesView, as: UTF8.self) == "id: r-a:3\nevent: completed\ndata: {\"seq\":3}\n\n")
    }

    /// Empty filter lists match everything; each non-empty list must contain the event's value.
    @Test func filterMatches() {
        let e = Self.event("r-a", "completed", "completed")
        #expect(EventFilter().matches(e))
        #expect(EventFilter(runIDs: ["r-a", "r-b"]).matches(e))
        #expect(!EventFilter(runIDs: ["r-b"]).matches(e))
        #expect(EventFilter(types: ["completed"]).matches(e))
        #expect(!EventFilter(types: ["started"]).matches(e))
        #expect(EventFilter(statuses: ["completed", "failed"]).matches(e))
        #expect(!EventFilter(statuses: ["running"]).matches(e))
        #expect(EventFilter(runIDs: ["r-a"], types: ["completed"], statuses: ["completed"]).matches(e))
        #expect(!EventFilter(runIDs: ["r-a"], types: ["completed"], statuses: ["failed"]).matches(e))
    }

    /// The stream's `type` filter accepts every event type of the contract and `command_rejected`.
    @Test func streamEventTypes() {
        #expect(RunsAPI.eventTypes == Set(EventType.allCases.map(\.rawValue) + ["command_rejected"]))
    }

    /// After `finishAll` (a graceful shutdown) a subscriber gets a stream that is already over,
    /// and nothing starts consuming from the broker.
    @Test func closedFeedTakesNoSubscriber() async throws {
        let feed = EventFeed(amqpURLs: [TestServer.noBroker], exchange: "test.events", logger: TestServer.logger)
        feed.finishAll()
        let subscription = try feed.subscribe(EventFilter())
        guard case .end(.finished) = await subscription.buffer.next() else {
            Issue.record("a closed feed's subscription must be over")
            return
        }
        #expect(feed.subscriberCount == 0)
    }

    // MARK: byte-bounded buffers

    static func sized(_ runID: String, _ bytes: Int) -> LiveEvent {
        LiveEvent(runID: runID, type: "created", status: "created", eventID: "\(runID):1", body: [UInt8](repeating: 0x61, count: bytes))
    }

    static func nextID(_ buffer: StreamBuffer) async -> String? {
        if case .event(let e) = await buffer.next() { return e.runID }
        return nil
    }

    /// Events come out in order and the buffer counts their bytes while they wait.
    @Test func bufferKeepsOrderAndCountsBytes() async {
        let buffer = StreamBuffer(capacity: 1000)
        #expect(buffer.offer(Self.sized("a", 300)))
        #expect(buffer.offer(Self.sized("b", 300)))
        #expect(buffer.offer(Self.sized("c", 400)))
        #expect(buffer.pendingBytes == 1000)
        #expect(await Self.nextID(buffer) == "a")
        #expect(buffer.pendingBytes == 700)
        #expect(await Self.nextID(buffer) == "b")
        #expect(await Self.nextID(buffer) == "c")
        #expect(buffer.pendingBytes == 0)
        #expect(buffer.ending == nil)
    }

    /// An event that would take the unread bytes beyond the capacity ends the subscription as
    /// overflowed and drops what was queued at once; later events are refused.
    @Test func bufferOverflowEndsTheSubscription() async {
        let buffer = StreamBuffer(capacity: 1000)
        #expect(buffer.offer(Self.sized("a", 600)))
        #expect(buffer.offer(Self.sized("b", 400)))
        #expect(!buffer.offer(Self.sized("c", 1)))
        #expect(buffer.pendingBytes == 0)
        #expect(buffer.ending == .overflowed)
        #expect(!buffer.offer(Self.sized("d", 1)))
        guard case .end(.overflowed) = await buffer.next() else {
            Issue.record("the reader must be told the subscription overflowed")
            return
        }
        await buffer.waitForOverflow()
    }

    /// An empty buffer takes one event larger than its capacity (a client that keeps up gets
    /// every event), but nothing more until it is read.
    @Test func oversizedEventPassesAnEmptyBuffer() async {
        let buffer = StreamBuffer(capacity: 100)
        #expect(buffer.offer(Self.sized("big", 5000)))
        #expect(await Self.nextID(buffer) == "big")
        #expect(buffer.offer(Self.sized("big2", 5000)))
        #expect(!buffer.offer(Self.sized("small", 1)))
        #expect(buffer.ending == .overflowed)
    }

    /// A reader waiting on an empty buffer gets the next event directly, a keepalive when one
    /// is due, and the end after `finish`; a keepalive is never queued for a reader that is
    /// not waiting.
    @Test(.timeLimit(.minutes(1))) func waitingReaderGetsEventsKeepalivesAndTheEnd() async {
        let buffer = StreamBuffer(capacity: 1000)
        buffer.keepalive()  // nobody waits: dropped
        #expect(buffer.offer(Self.sized("a", 10)))
        #expect(await Self.nextID(buffer) == "a")
        async let waited = Self.nextID(buffer)
        while buffer.pendingBytes == 0 && !buffer.hasReader { await Task.yield() }
        #expect(buffer.offer(Self.sized("b", 10)))
        #expect(await waited == "b")
        async let keepalive = buffer.next()
        while !buffer.hasReader { await Task.yield() }
        buffer.keepalive()
        guard case .keepalive = await keepalive else {
            Issue.record("a waiting reader gets the keepalive")
            return
        }
        buffer.finish()
        guard case .end(.finished) = await buffer.next() else {
            Issue.record("a finished buffer ends")
            return
        }
    }

    /// A cancelled reader stops waiting: its task is not held by an idle stream.
    @Test(.timeLimit(.minutes(1))) func cancelledReaderStops() async {
        let buffer = StreamBuffer(capacity: 1000)
        let reader = Task { await buffer.next() }
        while !buffer.hasReader { await Task.yield() }
        reader.cancel()
        guard case .end(.finished) = await reader.value else {
            Issue.record("a cancelled reader ends")
            return
        }
    }

    // MARK: caps

    static func feed(_ limits: StreamLimits) -> EventFeed {
        EventFeed(amqpURLs: [TestServer.noBroker], exchange: "test.events", logger: TestServer.logger, limits: limits)
    }

    /// `maxStreams` subscribers at once; one more is refused `full` until one is given back
    /// (cancelled, or released by its response).
    @Test func overallCap() throws {
        let feed = Self.feed(StreamLimits(maxStreams: 2, maxStreamsPerToken: 2, bufferBytes: 1000))
        let a = try feed.subscribe(EventFilter())
        var b: Subscription? = try feed.subscribe(EventFilter())
        #expect(throws: StreamRefusal.full(2)) { try feed.subscribe(EventFilter()) }
        a.cancel()
        a.cancel()  // again: nothing more given back
        #expect(feed.subscriberCount == 1)
        let c = try feed.subscribe(EventFilter())
        #expect(throws: StreamRefusal.full(2)) { try feed.subscribe(EventFilter()) }
        _ = b
        b = nil
        #expect(feed.subscriberCount == 1)
        withExtendedLifetime(c) {}
        #expect(throws: Never.self) { try feed.subscribe(EventFilter()) }
    }

    /// With a token on the listener, each token has `maxStreamsPerToken` streams; other tokens
    /// (and the overall cap) are counted apart. Without one, tokens are not counted.
    @Test func perTokenCap() throws {
        let feed = Self.feed(StreamLimits(maxStreams: 10, maxStreamsPerToken: 2, bufferBytes: 1000, perToken: true))
        let held = try (0..<2).map { _ in try feed.subscribe(EventFilter(), token: "t1") }
        #expect(throws: StreamRefusal.tokenFull(2)) { try feed.subscribe(EventFilter(), token: "t1") }
        let other = try feed.subscribe(EventFilter(), token: "t2")
        held[0].cancel()
        let again = try feed.subscribe(EventFilter(), token: "t1")
        withExtendedLifetime((held, other, again)) {}

        let open = Self.feed(StreamLimits(maxStreams: 10, maxStreamsPerToken: 2, bufferBytes: 1000, perToken: false))
        let many = try (0..<5).map { _ in try open.subscribe(EventFilter(), token: "t1") }
        #expect(open.subscriberCount == 5)
        withExtendedLifetime(many) {}
    }

    /// A subscriber whose buffer an event does not fit is ended, gives its slot back at once and
    /// is counted; the others (and those the event does not match) go on.
    @Test func overflowingSubscriberIsDropped() async throws {
        let feed = Self.feed(StreamLimits(maxStreams: 3, maxStreamsPerToken: 3, bufferBytes: 1000))
        let slow = try feed.subscribe(EventFilter())
        let other = try feed.subscribe(EventFilter(runIDs: ["b"]))
        feed.broadcast(Self.sized("a", 600))
        feed.broadcast(Self.sized("a", 600))
        #expect(slow.buffer.ending == .overflowed)
        #expect(feed.overflowCount == 1)
        #expect(feed.subscriberCount == 1)
        feed.broadcast(Self.sized("b", 600))
        #expect(await Self.nextID(other.buffer) == "b")
        #expect(other.buffer.ending == nil)
    }

    // MARK: the endpoint

    /// A stream beyond `http.max_streams` is answered 503 `too_many_streams` with the
    /// contract's error body and `Retry-After`, before the feed is asked for anything.
    @Test func streamBeyondTheCapIs503() async throws {
        let server = try TestServer(limits: StreamLimits(maxStreams: 1, maxStreamsPerToken: 1, bufferBytes: 1000))
        let held = try server.feed.subscribe(EventFilter())
        try await server.test { client in
            let answer = try await client.get("/v1/events/stream")
            #expect(answer.status == .serviceUnavailable)
            #expect(try answer.errorCode() == "too_many_streams")
            #expect(answer.headers[.retryAfter] == "10")
            #expect(answer.headers[.contentType] == "application/json")
        }
        #expect(server.feed.subscriberCount == 1)
        withExtendedLifetime(held) {}
    }

    /// With a token, a stream beyond `http.max_streams_per_token` for that token is answered 429
    /// `too_many_streams` with `Retry-After`, whether the token came as a header or as
    /// `access_token`.
    @Test func streamBeyondTheTokenCapIs429() async throws {
        let token = "stream-cap-token-0123456789"
        let server = try TestServer(
            token: token, limits: StreamLimits(maxStreams: 5, maxStreamsPerToken: 1, bufferBytes: 1000, perToken: true))
        let held = try server.feed.subscribe(EventFilter(), token: token)
        try await server.test { client in
            for (path, headers) in [
                ("/v1/events/stream", [.authorization: "Bearer \(token)"] as HTTPFields),
                ("/v1/events/stream?access_token=\(token)", [:]),
            ] {
                let answer = try await client.get(path, headers: headers)
                #expect(answer.status == .tooManyRequests, "\(path)")
                #expect(try answer.errorCode() == "too_many_streams")
                #expect(answer.headers[.retryAfter] == "10")
            }
        }
        withExtendedLifetime(held) {}
    }
}
