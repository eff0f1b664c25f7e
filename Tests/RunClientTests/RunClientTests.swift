import AMQPClient
import Foundation
import Testing

@testable import RunClient

private let t0 = Timestamp(milliseconds: 1_795_420_800_123)  // 2026-11-23T08:00:00.123Z

private func event(_ runID: String, _ seq: Int64, _ type: EventType = .started) -> RunEvent {
    RunEvent(runID: runID, seq: seq, type: type, status: .running, previousStatus: .created, attempt: 1,
             occurredAt: Timestamp(milliseconds: t0.milliseconds + seq), commandID: "c-\(seq)")
}

@Suite struct SequenceTrackerTests {
    @Test func newRepeatAndGap() {
        var t = SequenceTracker()
        #expect(t.observe(runID: "a", seq: 1) == .next)
        #expect(t.observe(runID: "a", seq: 2) == .next)
        #expect(t.observe(runID: "a", seq: 2) == .duplicate)
        #expect(t.observe(runID: "a", seq: 1) == .duplicate)
        #expect(t.observe(runID: "a", seq: 5) == .gap(expected: 3))
        #expect(t.observe(runID: "a", seq: 4) == .duplicate, "an event older than the last one is taken as a repeat")
        #expect(t.observe(runID: "a", seq: 6) == .next)
        #expect(t.lastSeq(of: "a") == 6)
        // Runs are independent.
        #expect(t.observe(runID: "b", seq: 7) == .next, "the first event seen of a run sets its baseline")
        #expect(t.observe(runID: "b", seq: 9) == .gap(expected: 8))
    }

    @Test func expectSetsTheBaseline() {
        var t = SequenceTracker()
        t.expect(runID: "new", after: 0)
        #expect(t.observe(runID: "new", seq: 3) == .gap(expected: 1))
        t.expect(runID: "old", after: 4)
        #expect(t.observe(runID: "old", seq: 4) == .duplicate)
        #expect(t.observe(runID: "old", seq: 5) == .next)
        t.expect(runID: "old", after: 2)
        #expect(t.lastSeq(of: "old") == 5, "expect never moves a run backwards")
    }

    @Test func boundedByForgettingTheLeastRecentlySeen() {
        var t = SequenceTracker(maxRuns: 3)
        for (i, id) in ["a", "b", "c"].enumerated() { _ = t.observe(runID: id, seq: Int64(i + 1)) }
        _ = t.observe(runID: "a", seq: 2)  // a is now the most recent
        _ = t.observe(runID: "d", seq: 1)  // evicts b
        #expect(t.lastSeq(of: "b") == nil)
        #expect(t.runIDs == ["c", "a", "d"])
        for i in 0..<10_000 { _ = t.observe(runID: "x\(i % 7)", seq: Int64(i)) }
        #expect(t.runIDs.count == 3)
        t.forget(runID: t.runIDs[0])
        #expect(t.runIDs.count == 2)
    }
}

@Suite struct DecodingTests {
    @Test func eventsRejectionsAndStrangers() throws {
        var e = event("run-1", 3, .actionRequired)
        e.status = .waiting
        e.previousStatus = .running
        e.action = Action(id: "a-1", type: .toolCall, fields: ["tool": "add", "args": ["a": 2]], requestedAt: t0)
        #expect(RunUpdate.decode(body: e.encode()) == .event(e))

        let r = CommandRejected(runID: "run-1", commandID: "c-9", command: "complete",
                                error: RunError(.invalidTransition, "run is waiting"), afterSeq: 3, occurredAt: t0)
        #expect(RunUpdate.decode(body: r.encode(), amqpType: "command_rejected") == .rejected(r))
        #expect(RunUpdate.decode(body: r.encode()).runID == "run-1")

        // A newer worker's event type: unrecognized, yet its run and seq are read (for repeats).
        let future = Array(#"{"type": "action_heartbeat", "run_id": "run-1", "seq": 4, "status": "waiting"}"#.utf8)
        guard case .unrecognized(let u) = RunUpdate.decode(body: future, routingKey: "run.run-1.action_heartbeat") else {
            Issue.record("expected unrecognized")
            return
        }
        #expect(u.type == "action_heartbeat" && u.runID == "run-1" && u.seq == 4 && u.body == future)
        guard case .unrecognized(let bad) = RunUpdate.decode(body: Array("not json".utf8)) else {
            Issue.record("expected unrecognized")
            return
        }
        #expect(bad.reason.hasPrefix("not JSON"))
        // A known type with a broken field is unrecognized too, with the reason.
        guard case .unrecognized(let broken) = RunUpdate.decode(body: Array(#"{"type": "started", "run_id": "r", "seq": "x"}"#.utf8)) else {
            Issue.record("expected unrecognized")
            return
        }
        #expect(broken.reason.contains("seq"))
    }

    @Test func replyOutcomes() throws {
        let run = Run(runID: "run-1", status: .running, version: 2, createdAt: t0, updatedAt: t0)
        let ok = CommandReply(commandID: "c-1", ok: true, run: run, error: nil)
        let decoded = try CommandReply.decode(ok.encode())
        #expect(try decoded.outcome().get().status == .running)
        #expect(try decoded.outcome().get().version == 2)

        let refusal = try CommandReply.decode(Array(
            #"{"command_id": "c-2", "ok": false, "run": null, "error": {"code": "invalid_transition", "message": "run is waiting"}}"#.utf8))
        #expect(throws: RunError(.invalidTransition, "run is waiting")) { try refusal.outcome().get() }
        // A code newer than this client still comes through, typed.
        let newer = try CommandReply.decode(Array(
            #"{"command_id": "c-3", "ok": false, "run": null, "error": {"code": "quota_exceeded", "message": "m"}}"#.utf8))
        #expect(throws: RunError(RunError.Code(rawValue: "quota_exceeded"), "m")) { try newer.outcome().get() }
        #expect(throws: RunError.self) { try CommandReply(commandID: nil, ok: true, run: nil, error: nil).outcome().get() }
    }

    @Test func commandConstructorsEncodeTheContract() throws {
        func roundTrip(_ c: Command) throws -> Command {
            try CommandEnvelope.parse(body: c.encode(), routingKey: c.runID, messageID: nil).decodeCommand()
        }
        let start = Command.start(runID: "r1", agentID: "demo", input: ["q": "2 + 2"], commandID: "c-1")
        #expect(try roundTrip(start) == start)
        let require = Command.requireAction(runID: "r1", .toolCall("add", args: ["a": 2, "b": 2], id: "a-1", timeoutS: 30),
                                            .sendMessage(to: "ops", content: "hi"), .systemAction("sleep", durationS: 1.5),
                                            commandID: "c-2", expectedVersion: 2)
        #expect(try roundTrip(require) == require)
        let body = try JSONValue.parse(require.encode())
        #expect(body["command"] == "require_action" && body["expected_version"] == 2)
        for c in [Command.completeAction(runID: "r1", actionID: "a-1", result: 4, commandID: "c-3"),
                  .failAction(runID: "r1", actionID: "a-1", message: "boom", code: "E1", commandID: "c-4"),
                  .complete(runID: "r1", result: ["answer": 4], usage: ["tokens": 3], commandID: "c-5"),
                  .fail(runID: "r1", message: "no", code: "E2", retryable: true, commandID: "c-6"),
                  .cancel(runID: "r1", reason: "enough", commandID: "c-7"),
                  .create(runID: "r1", metadata: ["k": "v"], config: RunConfig(timeoutS: 60), commandID: "c-8")] {
            #expect(try roundTrip(c) == c, "\(c.kind.name)")
        }
    }
}

/// The stream's iterator without a broker: a subscriber thread that never starts, and raw
/// messages fed by hand.
@Suite struct EventStreamTests {
    func stream(_ tracker: SequenceTracker = SequenceTracker())
        throws -> (EventStream, AsyncThrowingStream<RawItem, Error>.Continuation)
    {
        let (raw, output) = AsyncThrowingStream<RawItem, Error>.makeStream()
        let handler = EventSubscriber(exchange: "x.events", bindings: ["run.#"], maxAttempts: nil, output: output)
        let thread = try ConnectionThread(name: "unstarted", configuration: AMQPConfiguration(), policy: ReconnectPolicy(),
                                          handler: handler)
        return (EventStream(raw: raw, lifetime: SubscriptionLifetime(thread), history: nil, tracker: tracker,
                            bindings: ["run.#"]), output)
    }

    func message(_ e: RunEvent) -> RawItem { .message(routingKey: e.routingKey, amqpType: e.type.rawValue, body: e.encode()) }

    @Test func dropsRepeatsReportsGapsPassesRejections() async throws {
        var tracker = SequenceTracker()
        tracker.expect(runID: "r1", after: 0)
        let (events, feed) = try stream(tracker)
        let rejected = CommandRejected(runID: "r1", commandID: "c", command: "complete",
                                       error: RunError(.invalidTransition, "no"), afterSeq: 2, occurredAt: t0)
        for item in [message(event("r1", 1)), message(event("r1", 2)), message(event("r1", 2)), message(event("r1", 1)),
                     .message(routingKey: rejected.routingKey, amqpType: "command_rejected", body: rejected.encode()),
                     .reconnected, message(event("r1", 5)), message(event("r2", 9)), message(event("r1", 6)),
                     message(event("r1", 5))] {
            feed.yield(item)
        }
        feed.finish()
        var got: [RunUpdate] = []
        for try await u in events { got.append(u) }
        #expect(got == [.event(event("r1", 1)), .event(event("r1", 2)), .rejected(rejected), .reconnected,
                        .gap(runID: "r1", expected: 3, got: 5), .event(event("r1", 5)), .event(event("r2", 9)),
                        .event(event("r1", 6))])
    }

    @Test func aFirstEventAfterTheStartIsAGapWhenTheRunWasExpectedNew() async throws {
        var tracker = SequenceTracker()
        tracker.expect(runID: "r1", after: 0)
        let (events, feed) = try stream(tracker)
        feed.yield(message(event("r1", 2)))
        feed.finish()
        var got: [RunUpdate] = []
        for try await u in events { got.append(u) }
        #expect(got == [.gap(runID: "r1", expected: 1, got: 2), .event(event("r1", 2))])
    }

    @Test func endsWhenTheSubscriptionFails() async throws {
        let (events, feed) = try stream()
        feed.yield(message(event("r1", 1)))
        feed.finish(throwing: RunClientError(.connectionFailed, "gone"))
        var got: [RunUpdate] = []
        await #expect(throws: RunClientError.self) {
            for try await u in events { got.append(u) }
        }
        #expect(got == [.event(event("r1", 1))])
    }
}
