import Testing

@testable import RunContract

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// A test case labelled for the test report.
struct Labelled<T: Sendable>: Sendable, CustomStringConvertible {
    let label: String
    let value: T
    init(_ label: String, _ value: T) {
        self.label = label
        self.value = value
    }
    var description: String { label }
}

enum Fixtures {
    static let fullConfig = RunConfig(
        timeoutS: 30, startTimeoutS: 2.5, actionTimeoutS: 0.25,
        retry: RetryPolicy(maxAttempts: 3, delayS: 1.5, backoff: 2, maxDelayS: 60, retryTimeouts: true))

    static let fullSpec = RunSpec(
        agentID: "agent-7", input: ["prompt": "hi", "n": 3, "xs": [1.5, nil]], metadata: ["team": "blue", "k": 1],
        config: fullConfig, previousRunID: "run-41", resumeFrom: ["step": 4])

    static let toolCall = ActionRequest(
        id: "a-1", type: .toolCall, timeoutS: 10,
        fields: ["tool": "calculator", "args": ["expression": "2 + 2"], "extra": [1, 2]])
    static let sendMessage = ActionRequest(
        type: .sendMessage, fields: ["recipient": "ops", "content": ["text": "hello", "urgent": true]])
    static let systemAction = ActionRequest(id: "s-1", type: .systemAction, fields: ["action": "sleep", "duration_s": 1.5])

    static let commands: [Labelled<Command>] = [
        .init("create full", Command(runID: "run-42", commandID: "c-1", expectedVersion: 0, kind: .create(fullSpec))),
        .init("create minimal", Command(runID: "r", kind: .create(RunSpec()))),
        .init("create null input", Command(runID: "r", kind: .create(RunSpec(input: .null, config: RunConfig())))),
        .init("start full", Command(runID: "run-42", commandID: "c-2", expectedVersion: 1, kind: .start(fullSpec))),
        .init("start minimal", Command(runID: "run_42", kind: .start(RunSpec()))),
        .init("start empty retry", Command(runID: "r", kind: .start(RunSpec(config: RunConfig(retry: RetryPolicy()))))),
        .init("require one", Command(runID: "r", commandID: "c", kind: .requireAction([toolCall]))),
        .init("require minimal", Command(runID: "r", kind: .requireAction([sendMessage]))),
        .init("require many", Command(runID: "r", expectedVersion: 3, kind: .requireAction([toolCall, sendMessage, systemAction]))),
        .init("complete_action full", Command(runID: "r", commandID: "c", kind: .completeAction(actionID: "a-1", result: ["v": 4]))),
        .init("complete_action null result", Command(runID: "r", kind: .completeAction(actionID: "a-1", result: .null))),
        .init("complete_action minimal", Command(runID: "r", kind: .completeAction(actionID: "a-1", result: nil))),
        .init("fail_action full", Command(runID: "r", commandID: "c", kind: .failAction(actionID: "a", error: ErrorInfo(message: "boom", code: "E42")))),
        .init("fail_action minimal", Command(runID: "r", kind: .failAction(actionID: "a", error: ErrorInfo(message: "")))),
        .init("complete full", Command(runID: "r", commandID: "c", kind: .complete(result: "done", usage: ["tokens": 12]))),
        .init("complete minimal", Command(runID: "r", kind: .complete(result: nil, usage: nil))),
        .init("fail full", Command(runID: "r", commandID: "c", expectedVersion: 9, kind: .fail(error: ErrorInfo(message: "x", code: "y"), retryable: true))),
        .init("fail minimal", Command(runID: "r", kind: .fail(error: ErrorInfo(message: "x"), retryable: false))),
        .init("cancel full", Command(runID: "r", commandID: "c", kind: .cancel(reason: "user asked"))),
        .init("cancel minimal", Command(runID: "r", kind: .cancel(reason: nil))),
        .init("heartbeat_action full", Command(runID: "r", commandID: "c", kind: .heartbeatAction(actionID: "a-1", details: .object(["pct": .int(40)])))),
        .init("heartbeat_action minimal", Command(runID: "r", kind: .heartbeatAction(actionID: "a-1", details: nil))),
        .init("rerun full", Command(runID: "r2", commandID: "c", expectedVersion: 0, kind: .rerun(RunSpec(
            agentID: "agent", input: .string("again"), metadata: ["k": .string("v")], config: RunConfig(timeoutS: 5),
            previousRunID: "r1", resumeFrom: .object(["step": .int(2)]))))),
        .init("rerun minimal", Command(runID: "r2", kind: .rerun(RunSpec(previousRunID: "r1")))),
    ]
}

@Suite struct CommandCodecTests {
    /// The wire names are the contract's ten (eight, then `heartbeat_action` and `rerun` of
    /// contract 1.1), in its order; every kind names itself with one
    /// of them, and the codec decodes every name (so the lists cannot drift apart).
    @Test func commandNamesAreOneList() throws {
        let contract = [
            "create", "start", "require_action", "complete_action", "fail_action", "complete", "fail", "cancel",
            "heartbeat_action", "rerun",
        ]
        #expect(CommandName.allCases.map(\.rawValue) == contract)
        #expect(Command.names == contract)
        let kinds = Set(Fixtures.commands.map(\.value.kind.commandName))
        #expect(kinds == Set(CommandName.allCases))
        for c in Fixtures.commands {
            #expect(c.value.kind.name == c.value.kind.commandName.rawValue)
            let decoded = try CommandEnvelope.parse(body: c.value.encode(), routingKey: nil, messageID: nil).decodeCommand()
            #expect(decoded.kind.commandName == c.value.kind.commandName)
        }
    }

    /// Every command kind, with all optional fields and with none, survives encode → parse →
    /// decodeCommand unchanged.
    @Test(arguments: Fixtures.commands)
    func commandsRoundTrip(_ c: Labelled<Command>) throws {
        let body = c.value.encode()
        let envelope = try CommandEnvelope.parse(body: body, routingKey: c.value.runID, messageID: nil)
        #expect(envelope.runID == c.value.runID)
        #expect(envelope.commandID == c.value.commandID)
        #expect(envelope.commandName == c.value.kind.name)
        #expect(try envelope.decodeCommand() == c.value)
    }

    /// The body reads the way the contract writes commands: `command`, `run_id` first, and
    /// the fields flat beside them.
    @Test func encodesContractShape() {
        let c = Command(runID: "run-42", commandID: "c-17", kind: .requireAction([Fixtures.toolCall]))
        #expect(
            String(decoding: c.encode(), as: UTF8.self)
                == #"{"command":"require_action","run_id":"run-42","command_id":"c-17","action":{"id":"a-1","type":"tool_call","tool":"calculator","args":{"expression":"2 + 2"},"extra":[1,2],"timeout_s":10.0}}"#
        )
    }

    /// A producer's plain JSON (integers for durations, fields in any order) decodes to the
    /// expected command, and every action field but id/type/timeout_s is kept in order.
    @Test func decodesHandWrittenBody() throws {
        let body = #"""
            {"run_id":"run-1","command":"require_action","actions":[
              {"type":"tool_call","args":{"q":1},"tool":"search","id":"a","timeout_s":5},
              {"recipient":"bob","type":"send_message","content":"hi","note":null}]}
            """#
        let c = try CommandEnvelope.parse(body: bytes(body), routingKey: "run-1", messageID: "m-1").decodeCommand()
        #expect(c.commandID == "m-1")
        guard case .requireAction(let actions) = c.kind else {
            Issue.record("decoded \(c.kind)")
            return
        }
        #expect(actions.count == 2)
        #expect(actions[0] == ActionRequest(id: "a", type: .toolCall, timeoutS: 5, fields: ["args": ["q": 1], "tool": "search"]))
        #expect(actions[0].fields.keys == ["args", "tool"])
        #expect(actions[1].id == nil)
        #expect(actions[1].fields.keys == ["recipient", "content", "note"])
    }

    /// `message_id` wins over the body's `command_id`; empty strings count as absent.
    @Test(arguments: [
        (#""command_id":"body","#, "amqp", "amqp"),
        (#""command_id":"body","#, nil, "body"),
        (#""command_id":"body","#, "", "body"),
        (#""command_id":"","#, nil, nil),
        ("", nil, nil),
        (#""command_id":7,"#, "amqp", "amqp"),
    ] as [(String, String?, String?)])
    func commandIDPrecedence(_ field: String, _ messageID: String?, _ expected: String?) throws {
        let body = bytes(#"{"#+field+#""run_id":"r","command":"cancel"}"#)
        let e = try CommandEnvelope.parse(body: body, routingKey: nil, messageID: messageID)
        #expect(e.commandID == expected)
    }

    /// Unknown top-level fields are ignored, so newer producers work with older workers.
    @Test func ignoresUnknownTopLevelFields() throws {
        let body = bytes(#"{"run_id":"r","command":"cancel","reason":"x","priority":5,"trace":{"id":1}}"#)
        let c = try CommandEnvelope.parse(body: body, routingKey: "r", messageID: nil).decodeCommand()
        #expect(c == Command(runID: "r", kind: .cancel(reason: "x")))
    }

    /// The body limit is inclusive: exactly `maxBodyBytes` is accepted, one byte more is
    /// `payload_too_large`, checked before the JSON is even looked at.
    @Test func enforcesBodyLimit() throws {
        let body = bytes(#"{"run_id":"r","command":"cancel"}"#)
        _ = try CommandEnvelope.parse(body: body, routingKey: nil, messageID: nil, maxBodyBytes: body.count)
        #expect(throws: RunError.self) {
            try CommandEnvelope.parse(body: body, routingKey: nil, messageID: nil, maxBodyBytes: body.count - 1)
        }
        let huge = [UInt8](repeating: 0x7B, count: CommandEnvelope.defaultMaxBodyBytes + 1)
        #expect(CommandEnvelope.defaultMaxBodyBytes == 1_048_576)
        do {
            _ = try CommandEnvelope.parse(body: huge, routingKey: nil, messageID: nil)
            Issue.record("oversize body accepted")
        } catch {
            #expect(error.code == .payloadTooLarge)
        }
    }

    /// Stage-1 refusals (unattributable): size, JSON, run_id — each with its code and a
    /// message that says what is wrong.
    @Test(arguments: [
        Labelled("not JSON", ("{run_id:", "r", RunError.Code.malformedMessage, "body is not valid JSON")),
        Labelled("empty", ("", "r", .malformedMessage, "unexpected end of input, expected a value at byte 0")),
        Labelled("array", (#"[{"run_id":"r"}]"#, "r", .malformedMessage, "must be a JSON object, not an array")),
        Labelled("string", (#""r""#, "r", .malformedMessage, "must be a JSON object")),
        Labelled("trailing", (#"{"run_id":"r"} x"#, "r", .malformedMessage, "after the JSON value")),
        Labelled("missing run_id", (#"{"command":"cancel"}"#, "r", .validationError, "run_id is required")),
        Labelled("null run_id", (#"{"run_id":null}"#, "r", .validationError, "run_id is required")),
        Labelled("numeric run_id", (#"{"run_id":42}"#, "42", .validationError, "run_id must match [A-Za-z0-9_-]{1,128}")),
        Labelled("empty run_id", (#"{"run_id":""}"#, "", .validationError, "run_id must match")),
        Labelled("bad char", (#"{"run_id":"a.b"}"#, "a.b", .validationError, "run_id must match")),
        Labelled("too long", ("{\"run_id\":\"" + String(repeating: "x", count: 129) + "\"}", nil, .validationError, "run_id must match")),
        Labelled("mismatch", (#"{"run_id":"x","command":"cancel"}"#, "y", .validationError, #"run_id "x" does not match routing key "y""#)),
    ] as [Labelled<(String, String?, RunError.Code, String)>])
    func stageOneRefusals(_ c: Labelled<(String, String?, RunError.Code, String)>) {
        let (body, routingKey, code, fragment) = c.value
        do {
            let e = try CommandEnvelope.parse(body: bytes(body), routingKey: routingKey, messageID: "m")
            Issue.record("accepted: \(e)")
        } catch {
            #expect(error.code == code)
            #expect(error.message.contains(fragment), "\(error)")
        }
    }

    /// Stage-2 refusals: an unknown command lists the valid names, and every bad field is a
    /// `validation_error` whose message names the field by its path.
    @Test(arguments: [
        Labelled("unknown command", (#""command":"launch""#, RunError.Code.unknownCommand, #"unknown command "launch"; valid commands: create, start, require_action, complete_action, fail_action, complete, fail, cancel"#)),
        Labelled("missing command", ("\"x\":1", .unknownCommand, "command is required; valid commands: create")),
        Labelled("numeric command", (#""command":5"#, .unknownCommand, "command must be a string")),
        Labelled("command_id type", (#""command":"cancel","command_id":5"#, .validationError, "command_id must be a string")),
        Labelled("expected_version string", (#""command":"cancel","expected_version":"3""#, .validationError, "expected_version must be an integer")),
        Labelled("expected_version fraction", (#""command":"cancel","expected_version":1.5"#, .validationError, "expected_version must be an integer")),
        Labelled("expected_version negative", (#""command":"cancel","expected_version":-1"#, .validationError, "expected_version must be an integer >= 0")),
        Labelled("metadata", (#""command":"create","metadata":[1]"#, .validationError, "metadata must be an object")),
        Labelled("agent_id", (#""command":"create","agent_id":1"#, .validationError, "agent_id must be a string")),
        Labelled("previous_run_id", (#""command":"start","previous_run_id":"a b""#, .validationError, "previous_run_id must match [A-Za-z0-9_-]{1,128}")),
        Labelled("config type", (#""command":"create","config":1"#, .validationError, "config must be an object")),
        Labelled("timeout_s type", (#""command":"create","config":{"timeout_s":"5"}"#, .validationError, "config.timeout_s must be a number")),
        Labelled("timeout_s zero", (#""command":"create","config":{"timeout_s":0}"#, .validationError, "config.timeout_s must be a number > 0")),
        Labelled("timeout_s huge", (#""command":"create","config":{"timeout_s":1e300}"#, .validationError, "config.timeout_s must be a number > 0")),
        Labelled("start_timeout_s", (#""command":"start","config":{"start_timeout_s":-1}"#, .validationError, "config.start_timeout_s must be a number > 0")),
        Labelled("action_timeout_s", (#""command":"start","config":{"action_timeout_s":true}"#, .validationError, "config.action_timeout_s must be a number")),
        Labelled("retry type", (#""command":"create","config":{"retry":[]}"#, .validationError, "config.retry must be an object")),
        Labelled("max_attempts zero", (#""command":"create","config":{"retry":{"max_attempts":0}}"#, .validationError, "config.retry.max_attempts must be an integer >= 1")),
        Labelled("max_attempts fraction", (#""command":"create","config":{"retry":{"max_attempts":1.5}}"#, .validationError, "config.retry.max_attempts must be an integer >= 1")),
        Labelled("delay_s", (#""command":"create","config":{"retry":{"delay_s":0}}"#, .validationError, "config.retry.delay_s must be a number > 0")),
        Labelled("backoff", (#""command":"create","config":{"retry":{"backoff":"2"}}"#, .validationError, "config.retry.backoff must be a number")),
        Labelled("max_delay_s", (#""command":"create","config":{"retry":{"max_delay_s":-3}}"#, .validationError, "config.retry.max_delay_s must be a number > 0")),
        Labelled("retry_timeouts", (#""command":"create","config":{"retry":{"retry_timeouts":1}}"#, .validationError, "config.retry.retry_timeouts must be a boolean")),
        Labelled("no action", (#""command":"require_action""#, .validationError, "action is required")),
        Labelled("both", (#""command":"require_action","action":{},"actions":[]"#, .validationError, "exactly one of action or actions")),
        Labelled("action type", (#""command":"require_action","action":[]"#, .validationError, "action must be an object")),
        Labelled("actions type", (#""command":"require_action","actions":{}"#, .validationError, "actions must be a list")),
        Labelled("actions empty", (#""command":"require_action","actions":[]"#, .validationError, "actions must not be empty")),
        Labelled("actions element", (#""command":"require_action","actions":[1]"#, .validationError, "actions[0] must be an object")),
        Labelled("action.type missing", (#""command":"require_action","action":{"tool":"t","args":{}}"#, .validationError, "action.type is required")),
        Labelled("action.type unknown", (#""command":"require_action","action":{"type":"dance"}"#, .validationError, "action.type must be one of tool_call, send_message, system_action")),
        Labelled("action.tool", (#""command":"require_action","action":{"type":"tool_call","args":{}}"#, .validationError, "action.tool is required")),
        Labelled("action.tool type", (#""command":"require_action","action":{"type":"tool_call","tool":1,"args":{}}"#, .validationError, "action.tool must be a string")),
        Labelled("action.args", (#""command":"require_action","action":{"type":"tool_call","tool":"t"}"#, .validationError, "action.args is required")),
        Labelled("actions[1].args", (#""command":"require_action","actions":[{"type":"tool_call","tool":"t","args":{}},{"type":"tool_call","tool":"t","args":"x"}]"#, .validationError, "actions[1].args must be an object")),
        Labelled("action.recipient", (#""command":"require_action","action":{"type":"send_message","content":"c"}"#, .validationError, "action.recipient is required")),
        Labelled("action.content", (#""command":"require_action","action":{"type":"send_message","recipient":"r","content":null}"#, .validationError, "action.content is required")),
        Labelled("action.action", (#""command":"require_action","action":{"type":"system_action"}"#, .validationError, "action.action is required")),
        Labelled("action.duration_s", (#""command":"require_action","action":{"type":"system_action","action":"sleep","duration_s":0}"#, .validationError, "action.duration_s must be a number > 0")),
        Labelled("action.id empty", (#""command":"require_action","action":{"id":"","type":"system_action","action":"x"}"#, .validationError, "action.id must be a non-empty string")),
        Labelled("action.timeout_s", (#""command":"require_action","action":{"type":"system_action","action":"x","timeout_s":"1"}"#, .validationError, "action.timeout_s must be a number > 0")),
        Labelled("action reserved", (#""command":"require_action","action":{"type":"system_action","action":"x","status":"done"}"#, .validationError, "action.status is reserved")),
        Labelled("duplicate ids", (#""command":"require_action","actions":[{"id":"a","type":"system_action","action":"x"},{"id":"a","type":"system_action","action":"y"}]"#, .validationError, #"actions[1].id "a" is repeated within actions"#)),
        Labelled("action_id missing", (#""command":"complete_action""#, .validationError, "action_id is required")),
        Labelled("action_id type", (#""command":"complete_action","action_id":3"#, .validationError, "action_id must be a non-empty string")),
        Labelled("fail_action error", (#""command":"fail_action","action_id":"a""#, .validationError, "error is required")),
        Labelled("error type", (#""command":"fail","error":"boom""#, .validationError, "error must be an object")),
        Labelled("error.message", (#""command":"fail","error":{"message":1}"#, .validationError, "error.message must be a string")),
        Labelled("error.message missing", (#""command":"fail_action","action_id":"a","error":{"code":"x"}"#, .validationError, "error.message is required")),
        Labelled("error.code", (#""command":"fail","error":{"message":"m","code":5}"#, .validationError, "error.code must be a string")),
        Labelled("retryable", (#""command":"fail","error":{"message":"m"},"retryable":"yes""#, .validationError, "retryable must be a boolean")),
        Labelled("reason", (#""command":"cancel","reason":false"#, .validationError, "reason must be a string")),
        Labelled("heartbeat action_id", (#""command":"heartbeat_action","details":{}"#, .validationError, "action_id is required")),
        Labelled("action.heartbeat_timeout_s", (#""command":"require_action","action":{"type":"system_action","action":"x","heartbeat_timeout_s":0}"#, .validationError, "action.heartbeat_timeout_s must be a number > 0")),
        Labelled("action heartbeat reserved", (#""command":"require_action","action":{"type":"system_action","action":"x","heartbeat_count":2}"#, .validationError, "action.heartbeat_count is reserved")),
        Labelled("rerun previous missing", (#""command":"rerun","input":1"#, .validationError, "previous_run_id is required")),
        Labelled("rerun previous grammar", (#""command":"rerun","previous_run_id":"a b""#, .validationError, "previous_run_id must match")),
    ] as [Labelled<(String, RunError.Code, String)>])
    func stageTwoRefusals(_ c: Labelled<(String, RunError.Code, String)>) throws {
        let (fields, code, fragment) = c.value
        let body = bytes(#"{"run_id":"r","# + fields + "}")
        let envelope = try CommandEnvelope.parse(body: body, routingKey: "r", messageID: "m")
        do {
            let command = try envelope.decodeCommand()
            Issue.record("accepted: \(command)")
        } catch {
            #expect(error.code == code)
            #expect(error.message.contains(fragment), "\(error)")
        }
    }

    /// Null stands for "absent" in typed optional fields, but stays a value in free-form ones.
    @Test func nullHandling() throws {
        let body = bytes(#"{"run_id":"r","command":"create","agent_id":null,"metadata":null,"config":null,"input":null,"expected_version":null}"#)
        let c = try CommandEnvelope.parse(body: body, routingKey: nil, messageID: nil).decodeCommand()
        #expect(c == Command(runID: "r", kind: .create(RunSpec(input: .null))))
    }

    /// The envelope keeps the command name even when it is unknown, so a rejection can say
    /// which command was refused.
    @Test func envelopeKeepsUnknownCommandName() throws {
        let e = try CommandEnvelope.parse(body: bytes(#"{"run_id":"r","command":"launch"}"#), routingKey: "r", messageID: nil)
        #expect(e.commandName == "launch")
        #expect(e.body["command"] == "launch")
    }
}
