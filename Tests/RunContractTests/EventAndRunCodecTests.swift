import RunTestSupport
import Testing

@testable import RunContract

enum RunFixtures {
    static let t0 = Timestamp(milliseconds: 1_795_420_800_123)  // 2026-11-23T08:00:00.123Z
    static func t(_ s: Int64) -> Timestamp { Timestamp(milliseconds: t0.milliseconds + s * 1000) }

    static let pending = Action(
        id: "a-1", type: .toolCall, fields: ["tool": "calculator", "args": ["expression": "2 + 2"]],
        requestedAt: t(1), attempt: 1)
    static let pendingWithDeadline = Action(
        id: "a-2", type: .sendMessage, fields: ["recipient": "ops", "content": "hi"], timeoutS: 5,
        requestedAt: t(2), deadline: t(7), attempt: 2)
    static let completed = Action(
        id: "a-3", type: .systemAction, fields: ["action": "sleep", "duration_s": 1.5], status: .completed,
        requestedAt: t(1), result: ["ok": true], attempt: 1)
    static let failed = Action(
        id: "a-4", type: .toolCall, fields: ["tool": "x", "args": [:]], status: .failed, requestedAt: t(1),
        deadline: t(3), error: ErrorInfo(message: "timed out", code: "action_timeout"), attempt: 1)
    static let nullResult = Action(
        id: "a-5", type: .toolCall, fields: ["tool": "x", "args": [:]], status: .completed, requestedAt: t(1),
        result: .null)

    static let heartbeated = Action(
        id: "a-6", type: .toolCall, fields: ["tool": "crawl", "args": ["depth": 2], "note": .null], timeoutS: 60,
        requestedAt: t(1), deadline: t(61), attempt: 3, heartbeatTimeoutS: 2.5, heartbeatCount: 4,
        lastHeartbeatAt: t(9), heartbeatDetails: ["page": 17], heartbeatDeadline: t(11))
    static let actions: [Action] = [pending, pendingWithDeadline, completed, failed, nullResult, heartbeated]

    static func event(_ type: EventType, _ seq: Int64, _ status: RunStatus, _ previous: RunStatus?, command: String? = "c-1") -> RunEvent {
        RunEvent(runID: "run-42", seq: seq, type: type, status: status, previousStatus: previous, attempt: 1,
                 occurredAt: t(seq), commandID: command)
    }

    static let events: [Labelled<RunEvent>] = {
        var created = event(.created, 1, .created, nil)
        created.spec = Fixtures.fullSpec
        var createdEmpty = event(.created, 1, .created, nil)
        createdEmpty.spec = RunSpec()
        var startedNew = event(.started, 2, .running, .created)
        startedNew.spec = RunSpec(agentID: "agent-7")
        let started = event(.started, 2, .running, .created)
        var required = event(.actionRequired, 3, .waiting, .running)
        required.action = pending
        var requiredDeadline = event(.actionRequired, 4, .waiting, .waiting)
        requiredDeadline.action = pendingWithDeadline
        var actionCompleted = event(.actionCompleted, 5, .running, .waiting)
        actionCompleted.action = completed
        var actionNull = event(.actionCompleted, 5, .running, .waiting)
        actionNull.action = nullResult
        var actionFailed = event(.actionFailed, 6, .running, .waiting, command: nil)
        actionFailed.action = failed
        var completedEvent = event(.completed, 7, .completed, .running)
        completedEvent.stopReason = .completed
        completedEvent.result = ["answer": 4]
        completedEvent.usage = ["tokens": 120, "cost": 0.25]
        var failedEvent = event(.failed, 7, .failed, .waiting)
        failedEvent.stopReason = .maxAttempts
        failedEvent.error = ErrorInfo(message: "gave up", code: "E1")
        failedEvent.stoppedActionIDs = ["a-1", "a-2"]
        var cancelled = event(.cancelled, 8, .cancelled, .waiting)
        cancelled.stopReason = .cancelled
        cancelled.reason = "user asked"
        cancelled.stoppedActionIDs = []
        var retry = event(.retryScheduled, 9, .retrying, .running)
        retry.error = ErrorInfo(message: "flaky")
        retry.nextAttemptAt = t(30)
        var timedOut = event(.timedOut, 10, .failed, .running, command: nil)
        timedOut.stopReason = .actionTimeout
        timedOut.error = ErrorInfo(message: "action a-1 timed out", code: "action_timeout")
        timedOut.stoppedActionIDs = ["a-1"]
        var completedNull = event(.completed, 7, .completed, .running)
        completedNull.stopReason = .completed
        completedNull.result = .null
        return [
            .init("created", created), .init("created empty spec", createdEmpty), .init("started new", startedNew),
            .init("started", started), .init("action_required", required),
            .init("action_required deadline", requiredDeadline), .init("action_completed", actionCompleted),
            .init("action_completed null result", actionNull), .init("action_failed", actionFailed),
            .init("completed", completedEvent), .init("completed null result", completedNull),
            .init("failed", failedEvent), .init("cancelled", cancelled), .init("retry_scheduled", retry),
            .init("timed_out", timedOut),
        ]
    }()

    static let fullRun = Run(
        runID: "run-42", status: .waiting, version: 6, attempt: 2, agentID: "agent-7",
        input: ["prompt": "hi"], metadata: ["team": "blue"], config: Fixtures.fullConfig,
        actions: [completed, pending, failed, pendingWithDeadline, nullResult], result: nil, usage: ["tokens": 3],
        error: ErrorInfo(message: "first attempt failed"), stopReason: nil, previousRunID: "run-41",
        resumeFrom: ["step": 2], createdAt: t0, startedAt: t(1), updatedAt: t(9), completedAt: nil,
        attemptStartedAt: t(5), nextAttemptAt: t(4))
    static let finishedRun = Run(
        runID: "r", status: .completed, version: 3, input: .null, config: RunConfig(), result: .null,
        usage: .null, stopReason: .completed, createdAt: t0, startedAt: t0, updatedAt: t(2), completedAt: t(2))
    static let minimalRun = Run(runID: "r", status: .created, version: 1, createdAt: t0, updatedAt: t0)
}

@Suite struct EventCodecTests {
    /// Every event type encodes and decodes back to an equal event.
    @Test(arguments: RunFixtures.events)
    func eventsRoundTrip(_ e: Labelled<RunEvent>) throws {
        let back = try RunEvent.decode(e.value.encode())
        #expect(back == e.value)
    }

    /// The direct encoder writes exactly what the `JSONObject` form serializes to, byte for
    /// byte (the object form is what the HTTP API and tests build on).
    @Test(arguments: RunFixtures.events)
    func directEncodingMatchesTheObjectForm(_ e: Labelled<RunEvent>) {
        #expect(e.value.encode() == e.value.jsonObject.serialized())
    }

    /// An action written directly (as events carry it) is its `JSONObject` form, byte for byte.
    @Test func directActionEncodingMatchesTheObjectForm() throws {
        for action in RunFixtures.actions {
            #expect(action.encode() == action.jsonObject.serialized(), "\(action.id)")
        }
        var e = RunFixtures.event(.actionCompleted, 5, .running, .waiting)
        e.action = RunFixtures.heartbeated
        #expect(e.encode() == e.jsonObject.serialized())
        #expect(try RunEvent.decode(e.encode()) == e)
    }

    /// A config written straight to bytes (in stored runs and `created` events) is the bytes of
    /// its object form, nested objects included.
    @Test func directConfigEncodingMatchesTheObjectForm() throws {
        let configs = [
            RunConfig(),
            RunConfig(retry: RetryPolicy()),
            RunConfig(timeoutS: 0.25, startTimeoutS: 30, actionTimeoutS: 1e-3,
                      retry: RetryPolicy(maxAttempts: 3, delayS: 1.5, backoff: 2, maxDelayS: 60, retryTimeouts: false)),
            RunConfig(retry: RetryPolicy(maxAttempts: 1), webhook: WebhookConfig(url: "https://h.example/x", events: [.completed, .failed])),
        ]
        for config in configs {
            var w = JSONObjectWriter()
            w.set("before", int: 1)
            w.setObject("config") { config.write(to: &$0) }
            w.set("after", string: "x")
            var o = JSONObject()
            o.set("before", .int(1))
            o.set("config", .object(config.jsonObject))
            o.set("after", .string("x"))
            #expect(w.finish() == o.serialized(), "\(config)")
        }
        var spec = RunSpec(agentID: "a", config: configs[2])
        var w = JSONObjectWriter()
        spec.write(to: &w)
        var o = JSONObject()
        spec.write(to: &o)
        #expect(w.finish() == o.serialized())
        spec.config = nil
        var w2 = JSONObjectWriter()
        spec.write(to: &w2)
        #expect(String(decoding: w2.finish(), as: UTF8.self) == #"{"agent_id":"a"}"#)
    }

    /// The body is the contract's example: keys in the contract's order, times in RFC 3339 with
    /// milliseconds, the action's fields flat beside its id and type.
    @Test func encodesContractExample() {
        var e = RunFixtures.event(.actionRequired, 3, .waiting, .running, command: "c-17")
        e.occurredAt = RunFixtures.t0
        e.action = RunFixtures.pending
        let expected =
            #"{"event_id":"run-42:3","type":"action_required","run_id":"run-42","seq":3,"version":3,"status":"waiting","previous_status":"running","attempt":1,"occurred_at":"2026-11-23T08:00:00.123Z","command_id":"c-17","action":{"id":"a-1","type":"tool_call","tool":"calculator","args":{"expression":"2 + 2"},"requested_at":"2026-11-23T08:00:01.123Z","attempt":1}}"#
        #expect(String(decoding: e.encode(), as: UTF8.self) == expected)
    }

    /// Timer-fired events write `command_id: null` and a first event `previous_status: null`;
    /// terminal events carry status and result/error on the action and the run.
    @Test func encodesNullsAndTerminalFields() throws {
        var e = RunFixtures.event(.actionFailed, 6, .running, nil, command: nil)
        e.action = RunFixtures.failed
        let o = try #require(try JSONValue.parse(e.encode()).objectValue)
        #expect(o["command_id"] == .null)
        #expect(o["previous_status"] == .null)
        #expect(o["action"]?["status"] == "failed")
        #expect(o["action"]?["error"] == ["message": "timed out", "code": "action_timeout"])
        #expect(o["action"]?["deadline_at"] == "2026-11-23T08:00:03.123Z")
        #expect(o.keys == ["event_id", "type", "run_id", "seq", "version", "status", "previous_status", "attempt", "occurred_at", "command_id", "action"])
    }

    /// The created event carries the spec's fields at top level, in the contract's order.
    @Test func createdEventKeys() throws {
        let created = RunFixtures.events[0].value
        let o = try #require(try JSONValue.parse(created.encode()).objectValue)
        #expect(Array(o.keys.dropFirst(10)) == ["agent_id", "input", "metadata", "config", "previous_run_id", "resume_from"])
        #expect(o["config"]?["retry"]?["max_attempts"] == 3)
    }

    /// The AMQP headers are the contract's four, with `seq` as an integer.
    @Test func headers() {
        let e = RunFixtures.event(.started, 2, .running, .created)
        let h = e.amqpHeaders
        #expect(h.map(\.key) == ["run_id", "seq", "type", "status"])
        #expect(h.map(\.value) == [.string("run-42"), .int(2), .string("started"), .string("running")])
        let dl = RunError(.malformedMessage, "bad").deadLetterHeaders(originalRoutingKey: "rk")
        #expect(dl.map(\.key) == ["x-reason", "x-reason-message", "x-original-routing-key"])
        #expect(dl.map(\.value) == [.string("malformed_message"), .string("bad"), .string("rk")])
    }

    /// The static form (what the worker builds from an outbox row) is the same list.
    @Test func headersFromStoredFields() {
        let e = RunFixtures.event(.started, 2, .running, .created)
        let h = RunEvent.amqpHeaders(runID: "run-42", seq: 2, type: "started", status: "running")
        #expect(h.map(\.key) == e.amqpHeaders.map(\.key))
        #expect(h.map(\.value) == e.amqpHeaders.map(\.value))
    }

    /// `command_rejected` headers, in order: `run_id`, `type`, `error_code`.
    @Test func rejectionHeaders() {
        let r = CommandRejected(
            runID: "run-42", commandID: "c-1", command: "start", error: RunError(.invalidTransition, "no"),
            afterSeq: 3, occurredAt: RunFixtures.t0)
        #expect(r.amqpHeaders.map(\.key) == ["run_id", "type", "error_code"])
        #expect(r.amqpHeaders.map(\.value) == [.string("run-42"), .string("command_rejected"), .string("invalid_transition")])
    }

    /// A poison message's dead-letter headers end with `x-delivery-attempts`, an integer.
    @Test func poisonDeadLetterHeaders() {
        let dl = RunError(RunError.Code(rawValue: "delivery_limit_exceeded"), "store down")
            .deadLetterHeaders(originalRoutingKey: "run-42", deliveryAttempts: 5)
        #expect(dl.map(\.key) == ["x-reason", "x-reason-message", "x-original-routing-key", "x-delivery-attempts"])
        #expect(dl.map(\.value) == [.string("delivery_limit_exceeded"), .string("store down"), .string("run-42"), .int(5)])
    }

    /// Event decoding refuses bodies that lack required fields or have the wrong types, naming
    /// the field.
    @Test(arguments: [
        (#"{"type":"started","run_id":"r","seq":1,"status":"running","attempt":1}"#, "occurred_at is required"),
        (#"{"type":"exploded","run_id":"r","seq":1,"status":"running","attempt":1,"occurred_at":"2026-01-01T00:00:00Z"}"#, "type must be one of"),
        (#"{"type":"started","run_id":"r","seq":"1","status":"running","attempt":1,"occurred_at":"2026-01-01T00:00:00Z"}"#, "seq must be an integer"),
        (#"{"type":"started","run_id":"r","seq":1,"status":"running","attempt":1,"occurred_at":"yesterday"}"#, "occurred_at must be an RFC 3339 time"),
        (#"{"type":"action_required","run_id":"r","seq":1,"status":"waiting","attempt":1,"occurred_at":"2026-01-01T00:00:00Z","action":{"id":"a","type":"tool_call"}}"#, "action.requested_at is required"),
        (#"[]"#, "event must be a JSON object"),
    ])
    func eventDecodingRefusals(_ body: String, _ fragment: String) {
        do {
            let e = try RunEvent.decode(Array(body.utf8))
            Issue.record("decoded \(e)")
        } catch {
            #expect(error.code == .malformedMessage)
            #expect(error.message.contains(fragment), "\(error)")
        }
    }
}

@Suite struct RejectionReplyRunCodecTests {
    /// A rejection is written in the contract's shape and reads back equal, with or without
    /// command id and name.
    @Test func commandRejected() throws {
        let r = CommandRejected(runID: "run-42", commandID: "c-9", command: "complete",
                                error: RunError(.invalidTransition, "actions are pending"), afterSeq: 4, occurredAt: RunFixtures.t0)
        #expect(
            String(decoding: r.encode(), as: UTF8.self)
                == #"{"type":"command_rejected","run_id":"run-42","command_id":"c-9","command":"complete","error":{"code":"invalid_transition","message":"actions are pending"},"after_seq":4,"occurred_at":"2026-11-23T08:00:00.123Z"}"#
        )
        #expect(try CommandRejected.decode(r.encode()) == r)
        let anonymous = CommandRejected(runID: "r", commandID: nil, command: nil,
                                        error: RunError(.runNotFound, "no run r"), afterSeq: 0, occurredAt: RunFixtures.t0)
        #expect(try CommandRejected.decode(anonymous.encode()) == anonymous)
        #expect(try JSONValue.parse(anonymous.encode())["command_id"] == .null)
    }

    /// The storage form keeps everything: every action with status, times and deadlines,
    /// attempt bookkeeping, `resume_from`, `usage`, explicit nulls.
    @Test(arguments: [
        Labelled("full", RunFixtures.fullRun), Labelled("finished", RunFixtures.finishedRun),
        Labelled("minimal", RunFixtures.minimalRun),
    ])
    func storageRoundTrip(_ labelled: Labelled<Run>) throws {
        let run = labelled.value
        let back = try Run.decodeStorage(run.encodeForStorage())
        #expect(back == run)
        #expect(back.actions.map(\.id) == run.actions.map(\.id))
    }

    /// The stored form is written directly, byte for byte what `storageJSON` serializes to.
    @Test(arguments: [
        Labelled("full", RunFixtures.fullRun), Labelled("finished", RunFixtures.finishedRun),
        Labelled("minimal", RunFixtures.minimalRun),
    ])
    func directStorageEncodingMatchesTheObjectForm(_ labelled: Labelled<Run>) {
        #expect(labelled.value.encodeForStorage() == labelled.value.storageJSON.serialized())
    }

    /// A stored run from an unknown storage version is refused rather than misread.
    @Test func storageVersionChecked() {
        var o = RunFixtures.minimalRun.storageJSON
        o["storage_version"] = 2
        #expect(throws: RunError.self) { try Run(storage: .object(o)) }
    }

    /// The snapshot has every contract key (null when absent), only pending actions, and
    /// decodes back to the run minus what a snapshot does not carry.
    @Test func snapshot() throws {
        let run = RunFixtures.fullRun
        let o = try #require(try JSONValue.parse(run.encodeSnapshot()).objectValue)
        for key in ["run_id", "status", "version", "attempt", "agent_id", "input", "metadata", "config", "pending_actions",
                    "result", "error", "stop_reason", "previous_run_id", "created_at", "started_at", "updated_at", "completed_at"] {
            #expect(o[key] != nil, "snapshot lacks \(key)")
        }
        #expect(o["result"] == .null)
        #expect(o["completed_at"] == .null)
        #expect(o["created_at"] == "2026-11-23T08:00:00.123Z")
        #expect(o["pending_actions"]?.arrayValue?.map { $0["id"] } == ["a-1", "a-2"])

        var expected = run
        expected.actions = run.pendingActions
        expected.resumeFrom = nil
        expected.attemptStartedAt = nil
        #expect(try Run.decodeSnapshot(run.encodeSnapshot()) == expected)
        #expect(try Run.decodeSnapshot(RunFixtures.minimalRun.encodeSnapshot()) == RunFixtures.minimalRun)
    }

    /// A reply carries the snapshot and, only when refused, the error.
    @Test func replies() throws {
        let okReply = CommandReply(commandID: "c-1", ok: true, run: RunFixtures.minimalRun, error: nil)
        let okJSON = try #require(try JSONValue.parse(okReply.encode()).objectValue)
        #expect(okJSON.keys == ["command_id", "ok", "run"])
        #expect(try CommandReply.decode(okReply.encode()) == okReply)

        let refused = CommandReply(commandID: nil, ok: false, run: nil, error: RunError(.versionConflict, "version is 3, not 2"))
        #expect(
            String(decoding: refused.encode(), as: UTF8.self)
                == #"{"command_id":null,"ok":false,"run":null,"error":{"code":"version_conflict","message":"version is 3, not 2"}}"#)
        #expect(try CommandReply.decode(refused.encode()) == refused)
    }

    /// A config writes only the values that are set and reads back equal.
    @Test func configJSON() throws {
        #expect(RunConfig().jsonObject.isEmpty)
        #expect(JSONValue.object(RunConfig(timeoutS: 2).jsonObject).jsonString == #"{"timeout_s":2.0}"#)
        let c = Fixtures.fullConfig
        #expect(c.jsonObject.keys == ["timeout_s", "start_timeout_s", "action_timeout_s", "retry"])
        #expect(try RunConfig(json: c.jsonObject) == c)
        #expect(throws: RunError.self) { try RunConfig(json: ["timeout_s": -1]) }
    }
}

@Suite struct TimestampTests {
    /// Formatting is UTC with exactly three fractional digits, before and after the epoch.
    @Test(arguments: [
        (Int64(0), "1970-01-01T00:00:00.000Z"),
        (1_795_420_800_123, "2026-11-23T08:00:00.123Z"),
        (951_782_400_007, "2000-02-29T00:00:00.007Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (-30_610_224_000_000, "1000-01-01T00:00:00.000Z"),
        (-30_641_760_000_000, "0999-01-01T00:00:00.000Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        (253_402_300_800_000, "10000-01-01T00:00:00.000Z"),
    ])
    func formats(_ ms: Int64, _ text: String) {
        #expect(Timestamp(milliseconds: ms).rfc3339 == text)
    }

    /// Offsets are applied, fractions are kept to the millisecond, and malformed text is refused.
    @Test(arguments: [
        ("2026-11-23T08:00:00.123Z", Int64(1_795_420_800_123) as Int64?),
        ("2026-11-23T10:30:00.123+02:30", 1_795_420_800_123),
        ("2026-11-23T03:00:00-05:00", 1_795_420_800_000),
        ("2026-11-23T08:00:00.1Z", 1_795_420_800_100),
        ("2026-11-23T08:00:00.123456789Z", 1_795_420_800_123),
        ("2026-11-23t08:00:00z", 1_795_420_800_000),
        ("2026-11-23T08:00:00", nil),
        ("2026-11-23T08:00:00.Z", nil),
        ("2026-13-01T00:00:00Z", nil),
        ("2026-11-23 08:00Z", nil),
        ("2026-11-23T08:00:00Zjunk", nil),
    ])
    func parses(_ text: String, _ ms: Int64?) {
        #expect(Timestamp(rfc3339: text)?.milliseconds == ms)
    }

    /// Days that do not exist in their month (Gregorian leap years) and offsets outside
    /// hours 00–23, minutes 00–59 are refused; the last valid day and offset of each kind parse.
    @Test(arguments: [
        ("2026-02-31T00:00:00Z", nil),
        ("2026-02-29T00:00:00Z", nil),
        ("2025-02-29T00:00:00Z", nil),
        ("1900-02-29T00:00:00Z", nil),
        ("2100-02-29T00:00:00Z", nil),
        ("2026-04-31T00:00:00Z", nil),
        ("2026-06-31T00:00:00Z", nil),
        ("2026-09-31T00:00:00Z", nil),
        ("2026-11-31T00:00:00Z", nil),
        ("2026-01-32T00:00:00Z", nil),
        ("2026-11-00T00:00:00Z", nil),
        ("2024-02-29T00:00:00Z", Int64(1_709_164_800_000) as Int64?),
        ("2000-02-29T00:00:00Z", 951_782_400_000),
        ("2026-12-31T23:59:59Z", 1_798_761_599_000),
        ("2026-11-23T00:00:00+99:99", nil),
        ("2026-11-23T00:00:00+24:00", nil),
        ("2026-11-23T00:00:00-12:60", nil),
        ("2026-11-23T00:00:00+00:60", nil),
        ("2026-11-23T08:00:00+23:59", 1_795_334_460_000),
        ("2026-12-31T23:59:59-00:00", 1_798_761_599_000),
    ])
    func refusesImpossibleDatesAndOffsets(_ text: String, _ ms: Int64?) {
        #expect(Timestamp(rfc3339: text)?.milliseconds == ms, "\(text)")
    }

    /// Adding seconds saturates at the ends of the millisecond range instead of trapping, both
    /// ways; NaN adds nothing (the time is unchanged); fractions round to the millisecond.
    @Test(arguments: [
        (Int64(0), 1.5, Int64(1500)),
        (0, -1.5, -1500),
        (0, 0.0004, 0),
        (Int64.max - 10, 1, Int64.max),
        (Int64.min + 10, -1, Int64.min),
        (Int64.max, 0, Int64.max),
        (0, 1e300, Int64.max),
        (0, -1e300, Int64.min),
        (0, 9.3e15, Int64.max),
        (Int64.min, 9.2e15, Int64.min + 9_200_000_000_000_000_000),
        (Int64.max, -9.2e15, Int64.max - 9_200_000_000_000_000_000),
        (0, .infinity, Int64.max),
        (0, -.infinity, Int64.min),
        (5, .nan, 5),
        (Int64.max, .nan, Int64.max),
    ])
    func addingSaturates(_ start: Int64, _ seconds: Double, _ expected: Int64) {
        #expect(Timestamp(milliseconds: start).adding(seconds: seconds).milliseconds == expected)
    }

    /// `init(seconds:)` saturates the same way; NaN is the epoch.
    @Test func secondsInitSaturates() {
        #expect(Timestamp(seconds: 1.5).milliseconds == 1500)
        #expect(Timestamp(seconds: 1e300).milliseconds == .max)
        #expect(Timestamp(seconds: -.infinity).milliseconds == .min)
        #expect(Timestamp(seconds: .nan).milliseconds == 0)
    }

    /// Any millisecond time in years 1970–9999 formats and parses back to itself.
    @Test func roundTrips() {
        var rng = SplitMix(seed: 42)
        for _ in 0..<1000 {
            let t = Timestamp(milliseconds: Int64.random(in: 0...253_402_300_799_999, using: &rng))
            #expect(Timestamp(rfc3339: t.rfc3339) == t)
        }
    }
}

