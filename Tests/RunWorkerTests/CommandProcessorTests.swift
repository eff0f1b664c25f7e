import RunContract
import RunStateMachine
import RunStore
import Testing

@testable import RunApply
@testable import RunWorker

/// Builds a command body the way a producer would.
func body(_ object: JSONValue) -> [UInt8] { object.serialized() }

func inbound(_ object: JSONValue, runID: String = "r1", id: String? = nil, replyTo: String? = "reply-q") -> InboundCommand {
    InboundCommand(body: body(object), routingKey: runID, messageID: id, replyTo: replyTo, correlationID: id)
}

func processor(_ store: any RunStore = InMemoryRunStore(), maxBody: Int = CommandEnvelope.defaultMaxBodyBytes) -> BatchApplier {
    BatchApplier(
        store: store, processor: CommandProcessor(machine: RunStateMachine(), maxBodyBytes: maxBody),
        clock: { Timestamp(milliseconds: 1_000) })
}

/// The events a batch publishes, decoded.
func events(_ batch: ProcessedBatch) throws -> [RunEvent] {
    try batch.messages.filter { $0.destination == .events && $0.type != "command_rejected" }.map { try RunEvent.decode($0.body) }
}

func replies(_ batch: ProcessedBatch) throws -> [CommandReply] {
    try batch.messages.filter { $0.destination == .reply }.map { try CommandReply.decode($0.body) }
}

@Suite struct CommandProcessorTests {
    /// A run driven through its whole life in one batch yields gapless events, one outbox row
    /// each, and a stored completed run.
    @Test func fullLifecycleInOneBatch() async throws {
        let store = InMemoryRunStore()
        let batch = try await processor(store).process([
            inbound(["command": "start", "run_id": "r1", "agent_id": "ag"], id: "c1"),
            inbound(["command": "require_action", "run_id": "r1",
                     "action": ["id": "a1", "type": "tool_call", "tool": "calc", "args": ["x": 1]]], id: "c2"),
            inbound(["command": "complete_action", "run_id": "r1", "action_id": "a1", "result": 4], id: "c3"),
            inbound(["command": "complete", "run_id": "r1", "result": "done"], id: "c4"),
        ])
        let evs = try events(batch)
        #expect(evs.map(\.type) == [.created, .started, .actionRequired, .actionCompleted, .completed])
        #expect(evs.map(\.seq) == [1, 2, 3, 4, 5])
        #expect(evs.map(\.commandID) == ["c1", "c1", "c2", "c3", "c4"])
        let rows = batch.messages.filter { $0.outboxID != nil }
        #expect(rows.map(\.messageID) == ["r1:1", "r1:2", "r1:3", "r1:4", "r1:5"])
        #expect(rows.map(\.routingKey) == ["run.r1.created", "run.r1.started", "run.r1.action_required",
                                           "run.r1.action_completed", "run.r1.completed"])
        #expect(rows[2].headers.map(\.key) == ["run_id", "seq", "type", "status"])
        #expect(try replies(batch).map(\.ok) == [true, true, true, true])
        #expect(try await store.run("r1")?.status == .completed)
        #expect(try await store.run("r1")?.version == 5)
        #expect(try await store.pendingOutbox(writtenBefore: Timestamp(milliseconds: 2_000), limit: 100).count == 5)
    }

    /// What metrics count comes from the events a batch appended: a finished run (status,
    /// stop reason, agent, duration, attempts) and a finished action; a repeat of the same
    /// commands appends no event and so observes nothing.
    @Test func observationsComeFromAppendedEvents() async throws {
        let p = processor()
        let commands = [
            inbound(["command": "start", "run_id": "r1", "agent_id": "ag"], id: "c1"),
            inbound(["command": "require_action", "run_id": "r1",
                     "action": ["id": "a1", "type": "tool_call", "tool": "calc", "args": ["x": 1]]], id: "c2"),
            inbound(["command": "fail_action", "run_id": "r1", "action_id": "a1", "error": ["message": "no"]], id: "c3"),
            inbound(["command": "fail", "run_id": "r1", "error": ["message": "gave up"]], id: "c4"),
        ]
        let batch = try await p.process(commands)
        #expect(batch.observations == [
            .actionFinished(agentID: "ag", actionType: "tool_call", status: .failed, durationS: 0),
            .runFinished(status: .failed, stopReason: .error, agentID: "ag", durationS: 0, attempts: 1),
        ])
        #expect(try await p.process(commands).observations.isEmpty)
    }

    /// A repeated command id is not applied again: the second delivery gets the first outcome,
    /// refusals included, in the same batch or a later one.
    @Test func duplicatesAreAnsweredNotApplied() async throws {
        let store = InMemoryRunStore()
        let p = processor(store)
        let first = try await p.process([
            inbound(["command": "start", "run_id": "r1"], id: "c1"),
            inbound(["command": "start", "run_id": "r1"], id: "c1"),
            inbound(["command": "complete_action", "run_id": "r1", "action_id": "nope"], id: "c2"),
        ])
        #expect(try events(first).map(\.type) == [.created, .started])
        #expect(first.results.map(\.kind) == [
            .applied(events: 2), .duplicate(CommandOutcome(command: "start", error: nil)),
            .refused(RunError(.invalidTransition, first.results[2].refusal?.message ?? "")),
        ])
        let again = try await p.process([inbound(["command": "complete_action", "run_id": "r1", "action_id": "nope"], id: "c2")])
        guard case .duplicate(let outcome) = again.results[0].kind else { Issue.record("not a duplicate"); return }
        #expect(outcome.error?.code == .invalidTransition)
        #expect(try replies(again).first?.error?.code == .invalidTransition)
        #expect(again.messages.contains { $0.type == "command_rejected" })
        #expect(try await store.run("r1")?.version == 2)
    }

    /// A duplicate of a command whose events are still in the outbox (its worker died before
    /// publishing) publishes them again before it is answered.
    @Test func duplicateRepublishesUnconfirmedEvents() async throws {
        let store = InMemoryRunStore()
        let p = processor(store)
        _ = try await p.process([inbound(["command": "start", "run_id": "r1"], id: "c1")])
        let again = try await p.process([inbound(["command": "start", "run_id": "r1"], id: "c1")])
        #expect(again.messages.filter { $0.outboxID != nil }.map(\.messageID) == ["r1:1", "r1:2"])
    }

    /// Refusals carry the contract's codes, are published as command_rejected with after_seq,
    /// answered, and change nothing.
    static let refusalCases: [(JSONValue, RunError.Code)] = [
        (["command": "complete", "run_id": "r9"], .runNotFound),
        (["command": "launch", "run_id": "r1"], .unknownCommand),
        (["command": "fail", "run_id": "r1"], .validationError),
        (["command": "create", "run_id": "r1"], .runExists),
        (["command": "complete", "run_id": "r1", "expected_version": 7], .versionConflict),
        (["command": "complete_action", "run_id": "r1", "action_id": "x"], .invalidTransition),
    ]
    @Test(arguments: refusalCases)
    func refusals(command: JSONValue, code: RunError.Code) async throws {
        let store = InMemoryRunStore()
        let p = processor(store)
        _ = try await p.process([inbound(["command": "create", "run_id": "r1"], id: "c0")])
        let runID = command["run_id"]?.stringValue ?? "r1"
        let batch = try await p.process([inbound(command, runID: runID, id: "c1")])
        #expect(batch.results.first?.refusal?.code == code)
        let rejected = try #require(batch.messages.first { $0.type == "command_rejected" })
        #expect(rejected.routingKey == "run.\(runID).command_rejected")
        #expect(rejected.messageID == "\(runID):rejected:c1")
        let decoded = try CommandRejected.decode(rejected.body)
        #expect(decoded.error.code == code)
        #expect(decoded.afterSeq == (runID == "r1" ? 1 : 0))
        #expect(try replies(batch).first?.ok == false)
        #expect(try await store.run("r1")?.version == 1)
    }

    /// Bodies that cannot be attributed to a run go to the dead-letter exchange with the
    /// reason in headers, and are answered when they ask for a reply.
    static let deadLetterCases: [([UInt8], String, RunError.Code)] = [
        ([UInt8]("not json".utf8), "r1", RunError.Code.malformedMessage),
        (Array("[1,2]".utf8), "r1", .malformedMessage),
        (body(["command": "start"]), "r1", .validationError),
        (body(["command": "start", "run_id": "r2"]), "r1", .validationError),
        (body(["command": "start", "run_id": "bad id!"]), "bad id!", .validationError),
        (body(["command": "start", "run_id": "r1", "input": .string(String(repeating: "x", count: 3000))]), "r1", .payloadTooLarge),
    ]
    @Test(arguments: deadLetterCases)
    func deadLetters(raw: [UInt8], routingKey: String, code: RunError.Code) async throws {
        let batch = try await processor(maxBody: 2048).process([InboundCommand(body: raw, routingKey: routingKey, messageID: "m1", replyTo: "q")])
        let dead = try #require(batch.messages.first { $0.destination == .dead })
        #expect(dead.body == raw)
        #expect(dead.headers.first { $0.key == "x-reason" }?.value == .string(code.rawValue))
        #expect(dead.headers.first { $0.key == "x-original-routing-key" }?.value == .string(routingKey))
        #expect(try replies(batch).first?.error?.code == code)
        #expect(batch.results.first?.kind == .deadLettered(batch.results.first!.deadLetterReason!))
    }

    /// A bad message in the middle of a batch does not stop the good ones around it.
    @Test func badInputDoesNotBlockOthers() async throws {
        let store = InMemoryRunStore()
        let batch = try await processor(store).process([
            inbound(["command": "start", "run_id": "r1"], id: "c1"),
            InboundCommand(body: Array("{oops".utf8), routingKey: "r1"),
            inbound(["command": "bogus", "run_id": "r1"], id: "c2"),
            inbound(["command": "complete", "run_id": "r1"], id: "c3"),
        ])
        #expect(try await store.run("r1")?.status == .completed)
        #expect(batch.messages.filter { $0.destination == .dead }.count == 1)
        #expect(try events(batch).map(\.type) == [.created, .started, .completed])
    }
}

extension CommandResult {
    var refusal: RunError? { if case .refused(let e) = kind { e } else { nil } }
    var deadLetterReason: RunError? { if case .deadLettered(let e) = kind { e } else { nil } }
}
