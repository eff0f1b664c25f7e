// Events and rejections as the contract writes them, and back (for subscribers such as
// `runctl watch`, and tests). Decoding errors are `malformed_message`.
//
// Decisions:
// - The `action` object of an event also carries `requested_at`, `deadline_at` (when set) and
//   `attempt`, so that an executor sees its deadline and the event decodes back exactly.
//   These names are reserved in action requests (see `ActionRequest.reservedKeys`).
// - A `created` event always decodes with a `spec` (an empty one when no spec key is present);
//   other types have one only when a spec key (`agent_id`, `input`, ...) is present.
// - `version` and `event_id` are written but not read back: both follow from `run_id`/`seq`.

/// An AMQP header value as the contract uses them: text or a signed integer. The AMQP layer
/// maps these onto its own field table types.
public enum HeaderValue: Sendable, Hashable {
    case string(String)
    case int(Int64)
}

extension RunEvent {
    /// The event body, keys in the contract's order.
    public var jsonObject: JSONObject {
        var o: JSONObject = [
            "event_id": .string(eventID), "type": .string(type.rawValue), "run_id": .string(runID),
            "seq": .int(seq), "version": .int(version), "status": .string(status.rawValue),
            "previous_status": previousStatus.map { .string($0.rawValue) } ?? .null,
            "attempt": .int(Int64(attempt)), "occurred_at": .string(occurredAt.rfc3339),
            "command_id": commandID.map(JSONValue.string) ?? .null,
        ]
        o.set("action", action.map { .object($0.jsonObject) })
        spec?.write(to: &o)
        o.set("stop_reason", stopReason.map { .string($0.rawValue) })
        o.set("result", result)
        o.set("usage", usage)
        o.set("error", error.map { .object($0.jsonObject) })
        o.set("reason", reason.map(JSONValue.string))
        o.set("next_attempt_at", nextAttemptAt.map { .string($0.rfc3339) })
        o.set("stopped_action_ids", stoppedActionIDs.map { .array($0.map(JSONValue.string)) })
        return o
    }

    /// The event body, UTF-8: `jsonObject` serialized, written directly (the hot path).
    public func encode() -> [UInt8] {
        var w = JSONObjectWriter()
        w.set("event_id", string: eventID)
        w.set("type", string: type.rawValue)
        w.set("run_id", string: runID)
        w.set("seq", int: seq)
        w.set("version", int: version)
        w.set("status", string: status.rawValue)
        w.setNullable("previous_status", string: previousStatus?.rawValue)
        w.set("attempt", int: Int64(attempt))
        w.set("occurred_at", string: occurredAt.rfc3339)
        w.setNullable("command_id", string: commandID)
        if let action { w.set("action", raw: action.encode()) }
        spec?.write(to: &w)
        w.set("stop_reason", string: stopReason?.rawValue)
        w.set("result", result)
        w.set("usage", usage)
        w.set("error", error?.jsonObject)
        w.set("reason", string: reason)
        w.set("next_attempt_at", string: nextAttemptAt?.rfc3339)
        w.set("stopped_action_ids", stoppedActionIDs.map { JSONValue.array($0.map(JSONValue.string)) })
        return w.finish()
    }

    /// Reads an event body. Errors are `malformed_message` naming the field.
    public init(json: JSONValue) throws(RunError) {
        guard let o = json.objectValue else {
            throw RunError(.malformedMessage, "event must be a JSON object, not \(json.kindName)")
        }
        let r = FieldReader(o, code: .malformedMessage)
        let type = try r.requiredEnum("type", EventType.self)
        var spec: RunSpec?
        if type == .created || RunSpec.keys.contains(where: { o[$0] != nil }) {
            spec = try RunSpec(reader: r)
        }
        self.init(
            runID: try r.requiredString("run_id"), seq: try r.requiredInt("seq", min: 0), type: type,
            status: try r.requiredEnum("status", RunStatus.self),
            previousStatus: try r.enumValue("previous_status", RunStatus.self),
            attempt: Int(try r.requiredInt("attempt", min: 0)),
            occurredAt: try r.requiredTimestamp("occurred_at"), commandID: try r.string("command_id"),
            action: try r.object("action").map { (a) throws(RunError) in try Action(reader: r.nested(a, key: "action")) },
            spec: spec, stopReason: try r.enumValue("stop_reason", StopReason.self), result: r.any("result"),
            usage: r.any("usage"),
            error: try r.object("error").map { (e) throws(RunError) in try ErrorInfo(reader: r.nested(e, key: "error")) },
            reason: try r.string("reason"), nextAttemptAt: try r.timestamp("next_attempt_at"),
            stoppedActionIDs: try r.stringList("stopped_action_ids"))
    }

    /// Parses and reads an event body.
    public static func decode(_ bytes: some Collection<UInt8>) throws(RunError) -> RunEvent {
        try RunEvent(json: .object(try JSONValue.parseObject(bytes, what: "event")))
    }

    /// The contract's event headers, in order: `run_id`, `seq`, `type`, `status`.
    public var amqpHeaders: [(key: String, value: HeaderValue)] {
        Self.amqpHeaders(runID: runID, seq: seq, type: type.rawValue, status: status.rawValue)
    }

    /// The same headers from the four values alone (what an outbox row keeps), so that an event
    /// published again from storage carries exactly what it carried the first time.
    public static func amqpHeaders(runID: String, seq: Int64, type: String, status: String)
        -> [(key: String, value: HeaderValue)]
    {
        [("run_id", .string(runID)), ("seq", .int(seq)), ("type", .string(type)), ("status", .string(status))]
    }
}

extension RunError {
    /// Headers for a dead-lettered message: `x-reason` (the code), `x-reason-message`,
    /// `x-original-routing-key`, and `x-delivery-attempts` when given (poison messages).
    public func deadLetterHeaders(originalRoutingKey: String, deliveryAttempts: Int? = nil)
        -> [(key: String, value: HeaderValue)]
    {
        var headers: [(key: String, value: HeaderValue)] = [
            ("x-reason", .string(code.rawValue)), ("x-reason-message", .string(message)),
            ("x-original-routing-key", .string(originalRoutingKey)),
        ]
        if let deliveryAttempts { headers.append(("x-delivery-attempts", .int(Int64(deliveryAttempts)))) }
        return headers
    }

    /// `{"code", "message"}`.
    public var jsonObject: JSONObject { ["code": .string(code.rawValue), "message": .string(message)] }

    init(reader r: FieldReader) throws(RunError) {
        self.init(RunError.Code(rawValue: try r.requiredString("code")), try r.requiredString("message"))
    }
}

extension CommandRejected {
    /// `{"type": "command_rejected", "run_id", "command_id", "command", "error": {"code",
    /// "message"}, "after_seq", "occurred_at"}`; unknown `command_id`/`command` are null.
    public var jsonObject: JSONObject {
        [
            "type": .string(Self.type), "run_id": .string(runID),
            "command_id": commandID.map(JSONValue.string) ?? .null,
            "command": command.map(JSONValue.string) ?? .null, "error": .object(error.jsonObject),
            "after_seq": .int(afterSeq), "occurred_at": .string(occurredAt.rfc3339),
        ]
    }

    public func encode() -> [UInt8] { jsonObject.serialized() }

    /// Headers, in order: `run_id`, `type` (`command_rejected`), `error_code`.
    public var amqpHeaders: [(key: String, value: HeaderValue)] {
        [("run_id", .string(runID)), ("type", .string(Self.type)), ("error_code", .string(error.code.rawValue))]
    }

    /// `command_rejected`: the body's `type`, the AMQP `type` and the last part of the routing key.
    public static let type = "command_rejected"

    public init(json: JSONValue) throws(RunError) {
        guard let o = json.objectValue else {
            throw RunError(.malformedMessage, "command_rejected must be a JSON object, not \(json.kindName)")
        }
        let r = FieldReader(o, code: .malformedMessage)
        guard try r.string("type") == Self.type else {
            throw r.error("type must be command_rejected")
        }
        self.init(
            runID: try r.requiredString("run_id"), commandID: try r.string("command_id"),
            command: try r.string("command"),
            error: try RunError(reader: r.nested(try r.requiredObject("error"), key: "error")),
            afterSeq: try r.requiredInt("after_seq", min: 0), occurredAt: try r.requiredTimestamp("occurred_at"))
    }

    public static func decode(_ bytes: some Collection<UInt8>) throws(RunError) -> CommandRejected {
        try CommandRejected(json: .object(try JSONValue.parseObject(bytes, what: "command_rejected")))
    }
}
