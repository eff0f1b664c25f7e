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
    @Test func closedFeedTakesNoSubscriber() async {
        let feed = EventFeed(amqpURLs: [], exchange: "test.events", logger: Logger(label: "EventFeedTests"))
        feed.finishAll()
        let stream = feed.subscribe(EventFilter())
        var received = 0
        for await _ in stream { received += 1 }
        #expect(received == 0)
        #expect(feed.subscriberCount == 0)
    }
}
