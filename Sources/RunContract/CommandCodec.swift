// Command decoding in the contract's order: size, JSON, `run_id` (stage 1,
// `CommandEnvelope.parse`), then the worker's repeated-command-id lookup, then command name
// and fields (stage 2, `decodeCommand`).
//
// Decisions:
// - `command_id`: the AMQP `message_id` wins over the body's `command_id`; an empty string
//   counts as absent. A body `command_id` that is neither a string nor null is a
//   `validation_error` raised by `decodeCommand` (stage 2: by then the run is known, so the
//   refusal is attributable); stage 1 just does not use it as the id.
// - A missing or non-string `command` is `unknown_command`, like an unknown name.
// - Unknown top-level fields are ignored, for forward compatibility.
// - `send_message.content` may be any JSON value except null.

/// Stage 1 of command decoding: what can be learnt about a message before the store is asked
/// whether its command id was seen. Every error `parse` throws is **unattributable** (the
/// body is too large, not a JSON object, or has no usable `run_id`): the worker dead-letters
/// such a message (and answers `reply_to` if set) instead of publishing `command_rejected`.
public struct CommandEnvelope: Sendable, Hashable {
    /// 1 MiB, the default `maxBodyBytes`.
    public static let defaultMaxBodyBytes = 1_048_576

    public var runID: String
    /// `message_id`, else the body's `command_id` when it is a non-empty string; nil means no
    /// de-duplication.
    public var commandID: String?
    /// The body's `command` when it is a string (known or not), for `command_rejected`.
    public var commandName: String?
    /// The whole body.
    public var body: JSONObject

    public init(runID: String, commandID: String?, commandName: String?, body: JSONObject) {
        self.runID = runID
        self.commandID = commandID
        self.commandName = commandName
        self.body = body
    }

    /// Checks size, JSON and `run_id`, in that order. `routingKey` nil skips the routing key
    /// comparison; any other value (empty included) must equal `run_id`.
    ///
    /// - Throws: `payload_too_large`, `malformed_message` or `validation_error`, all of which
    ///   are unattributable (dead-letter them).
    public static func parse(
        body: some Collection<UInt8>, routingKey: String?, messageID: String?,
        maxBodyBytes: Int = defaultMaxBodyBytes
    ) throws(RunError) -> CommandEnvelope {
        let size = body.count
        guard size <= maxBodyBytes else {
            throw RunError(.payloadTooLarge, "body is \(size) bytes, more than the limit of \(maxBodyBytes)")
        }
        let object = try JSONValue.parseObject(body, what: "body")
        guard let runValue = object["run_id"], !runValue.isNull else {
            throw RunError.validation("run_id is required")
        }
        guard let runID = runValue.stringValue, RunID.isValid(runID) else {
            throw RunError.validation("run_id must match [A-Za-z0-9_-]{1,128}")
        }
        if let routingKey, routingKey != runID {
            throw RunError.validation("run_id \"\(runID)\" does not match routing key \"\(quoted(routingKey))\"")
        }
        let commandID: String? =
            if let messageID, !messageID.isEmpty { messageID }
            else if let s = object["command_id"]?.stringValue, !s.isEmpty { s }
            else { nil }
        return CommandEnvelope(
            runID: runID, commandID: commandID, commandName: object["command"]?.stringValue, body: object)
    }

    /// Stage 2: the command name, then every field. Errors are `unknown_command` or
    /// `validation_error` naming the field by its path, and are attributable to `runID`.
    public func decodeCommand() throws(RunError) -> Command {
        guard let name = commandName.flatMap(CommandName.init(rawValue:)) else {
            let valid = Command.names.joined(separator: ", ")
            let what: String
            if let commandName {
                what = "unknown command \"\(quoted(commandName))\""
            } else if let v = body["command"], !v.isNull {
                what = "command must be a string"
            } else {
                what = "command is required"
            }
            throw RunError(.unknownCommand, "\(what); valid commands: \(valid)")
        }
        let r = FieldReader(body, code: .validationError)
        _ = try r.string("command_id")
        let expectedVersion = try r.int("expected_version", min: 0)
        let kind: Command.Kind
        switch name {
        case .create: kind = .create(try RunSpec(reader: r))
        case .start: kind = .start(try RunSpec(reader: r))
        case .requireAction: kind = .requireAction(try Self.actionRequests(r))
        case .completeAction:
            kind = .completeAction(actionID: try Self.actionID(r), result: r.any("result"))
        case .failAction:
            kind = .failAction(actionID: try Self.actionID(r), error: try Self.errorInfo(r))
        case .complete: kind = .complete(result: r.any("result"), usage: r.any("usage"))
        case .fail: kind = .fail(error: try Self.errorInfo(r), retryable: try r.bool("retryable") ?? false)
        case .cancel: kind = .cancel(reason: try r.string("reason"))
        case .heartbeatAction: kind = .heartbeatAction(actionID: try Self.actionID(r), details: r.any("details"))
        case .rerun:
            let spec = try RunSpec(reader: r)
            guard spec.previousRunID != nil else {
                throw r.error("previous_run_id is required (the finished run to run again)")
            }
            kind = .rerun(spec)
        }
        return Command(runID: runID, commandID: commandID, expectedVersion: expectedVersion, kind: kind)
    }

    private static func actionID(_ r: FieldReader) throws(RunError) -> String {
        guard let id = try r.nonEmptyString("action_id") else { throw r.error("action_id is required") }
        return id
    }

    private static func errorInfo(_ r: FieldReader) throws(RunError) -> ErrorInfo {
        try ErrorInfo(reader: r.nested(try r.requiredObject("error"), key: "error"))
    }

    /// Exactly one of `action` (object) or `actions` (non-empty list of objects); ids unique.
    private static func actionRequests(_ r: FieldReader) throws(RunError) -> [ActionRequest] {
        let single = r.present("action")
        let list = r.present("actions")
        switch (single, list) {
        case (.some, .some):
            throw r.error("require_action takes exactly one of action or actions, not both")
        case (nil, nil):
            throw r.error("action is required (or actions, a list)")
        case (.some(let v), nil):
            guard let o = v.objectValue else { throw r.error("action must be an object") }
            return [try ActionRequest(reader: FieldReader(o, path: "action", code: r.code))]
        case (nil, .some(let v)):
            guard let a = v.arrayValue else { throw r.error("actions must be a list of action objects") }
            guard !a.isEmpty else { throw r.error("actions must not be empty") }
            var out: [ActionRequest] = []
            out.reserveCapacity(a.count)
            var ids: Set<String> = []
            for (n, e) in a.enumerated() {
                guard let o = e.objectValue else { throw r.error("actions[\(n)] must be an object") }
                let request = try ActionRequest(reader: FieldReader(o, path: "actions[\(n)]", code: r.code))
                if let id = request.id, !ids.insert(id).inserted {
                    throw r.error("actions[\(n)].id \"\(quoted(id))\" is repeated within actions")
                }
                out.append(request)
            }
            return out
        }
    }
}

/// Keeps producer-supplied text in messages short and printable.
func quoted(_ s: String, limit: Int = 64) -> String {
    var out = ""
    for (n, ch) in s.unicodeScalars.enumerated() {
        if n == limit {
            out += "..."
            break
        }
        out.unicodeScalars.append(ch.value < 0x20 || ch == "\"" ? "?" : ch)
    }
    return out
}

extension Command {
    /// The body a producer publishes: `command`, `run_id`, `command_id`?, `expected_version`?,
    /// then the command's fields. `parse(encode(c)).decodeCommand() == c` for every valid
    /// command (a `requireAction` of one action is written as `action`, of several as
    /// `actions`; `fail` always writes `retryable`).
    public var jsonObject: JSONObject {
        var o: JSONObject = ["command": .string(kind.name), "run_id": .string(runID)]
        o.set("command_id", commandID.map(JSONValue.string))
        o.set("expected_version", expectedVersion.map(JSONValue.int))
        switch kind {
        case .create(let spec), .start(let spec), .rerun(let spec):
            spec.write(to: &o)
        case .requireAction(let actions):
            if actions.count == 1 {
                o["action"] = .object(actions[0].jsonObject)
            } else {
                o["actions"] = .array(actions.map { .object($0.jsonObject) })
            }
        case .completeAction(let actionID, let result):
            o["action_id"] = .string(actionID)
            o.set("result", result)
        case .failAction(let actionID, let error):
            o["action_id"] = .string(actionID)
            o["error"] = .object(error.jsonObject)
        case .complete(let result, let usage):
            o.set("result", result)
            o.set("usage", usage)
        case .fail(let error, let retryable):
            o["error"] = .object(error.jsonObject)
            o["retryable"] = .bool(retryable)
        case .cancel(let reason):
            o.set("reason", reason.map(JSONValue.string))
        case .heartbeatAction(let actionID, let details):
            o["action_id"] = .string(actionID)
            o.set("details", details)
        }
        return o
    }

    /// The JSON body, UTF-8.
    public func encode() -> [UInt8] { jsonObject.serialized() }
}
