// JSON forms of the contract's smaller nouns: `{message, code?}`, `config`, action requests
// and actions. Encoders omit nil fields; decoders name the offending field by its path.

extension ErrorInfo {
    /// `{"message", "code"?}`.
    public var jsonObject: JSONObject {
        var o: JSONObject = ["message": .string(message)]
        o.set("code", code.map(JSONValue.string))
        return o
    }

    init(reader r: FieldReader) throws(RunError) {
        self.init(message: try r.requiredString("message"), code: try r.string("code"))
    }
}

extension RetryPolicy {
    /// `{"max_attempts", "delay_s", "backoff", "max_delay_s", "retry_timeouts"}`, nil ones omitted.
    public var jsonObject: JSONObject {
        var o = JSONObject()
        o.set("max_attempts", maxAttempts.map { .int(Int64($0)) })
        o.set("delay_s", delayS.map(JSONValue.double))
        o.set("backoff", backoff.map(JSONValue.double))
        o.set("max_delay_s", maxDelayS.map(JSONValue.double))
        o.set("retry_timeouts", retryTimeouts.map(JSONValue.bool))
        return o
    }

    /// The members of `jsonObject`, in its order, straight to bytes (a run's config is written
    /// with every stored run and every `created` event).
    public func write(to w: inout JSONObjectWriter) {
        w.set("max_attempts", int: maxAttempts.map(Int64.init))
        w.set("delay_s", delayS.map(JSONValue.double))
        w.set("backoff", backoff.map(JSONValue.double))
        w.set("max_delay_s", maxDelayS.map(JSONValue.double))
        w.set("retry_timeouts", retryTimeouts.map(JSONValue.bool))
    }

    /// `max_attempts` is an integer >= 1; `delay_s`, `max_delay_s` are durations;
    /// `backoff` is a number > 0; `retry_timeouts` a boolean. Unknown keys are ignored.
    init(reader r: FieldReader) throws(RunError) {
        self.init()
        if let n = try r.int("max_attempts", min: 1) {
            guard n <= Int64(Int32.max) else { throw r.error("\(r.name("max_attempts")) must be an integer >= 1") }
            maxAttempts = Int(n)
        }
        delayS = try r.duration("delay_s")
        if let b = try r.number("backoff") {
            guard b > 0 else { throw r.error("\(r.name("backoff")) must be a number > 0") }
            backoff = b
        }
        maxDelayS = try r.duration("max_delay_s")
        retryTimeouts = try r.bool("retry_timeouts")
    }
}

extension RunConfig {
    /// `{"timeout_s", "start_timeout_s", "action_timeout_s", "retry"}`, nil ones omitted.
    public var jsonObject: JSONObject {
        var o = JSONObject()
        o.set("timeout_s", timeoutS.map(JSONValue.double))
        o.set("start_timeout_s", startTimeoutS.map(JSONValue.double))
        o.set("action_timeout_s", actionTimeoutS.map(JSONValue.double))
        o.set("retry", retry.map { .object($0.jsonObject) })
        o.set("webhook", webhook.map { .object($0.jsonObject) })
        return o
    }

    /// The members of `jsonObject`, in its order, straight to bytes.
    public func write(to w: inout JSONObjectWriter) {
        w.set("timeout_s", timeoutS.map(JSONValue.double))
        w.set("start_timeout_s", startTimeoutS.map(JSONValue.double))
        w.set("action_timeout_s", actionTimeoutS.map(JSONValue.double))
        if let retry { w.setObject("retry") { retry.write(to: &$0) } }
        w.set("webhook", webhook?.jsonObject)
    }

    /// Validates like the `config` of a command; errors are `validation_error` naming the
    /// field (`timeout_s must be a number > 0 ...`, `retry.max_attempts must be ...`), prefixed
    /// with `path` when given (`run_defaults.timeout_s ...`).
    public init(json: JSONObject, path: String = "") throws(RunError) {
        try self.init(reader: FieldReader(json, path: path, code: .validationError))
    }

    init(reader r: FieldReader) throws(RunError) {
        self.init()
        timeoutS = try r.duration("timeout_s")
        startTimeoutS = try r.duration("start_timeout_s")
        actionTimeoutS = try r.duration("action_timeout_s")
        if let retry = try r.object("retry") {
            self.retry = try RetryPolicy(reader: r.nested(retry, key: "retry"))
        }
        if let webhook = try r.object("webhook") {
            self.webhook = try WebhookConfig(reader: r.nested(webhook, key: "webhook"))
        }
    }
}

extension WebhookConfig {
    /// `{"url", "events"?}`.
    public var jsonObject: JSONObject {
        var o: JSONObject = ["url": .string(url)]
        o.set("events", events.map { .array($0.map { .string($0.rawValue) }) })
        return o
    }

    /// `url`: an absolute http or https URL with a host, at most 2048 bytes; `events`: a list
    /// of event type names (an empty list delivers nothing). Unknown keys are ignored.
    init(reader r: FieldReader) throws(RunError) {
        let url = try r.requiredString("url")
        guard Self.isValidURL(url) else {
            throw r.error("\(r.name("url")) must be an http:// or https:// URL with a host")
        }
        var events: [EventType]?
        if let names = try r.stringList("events") {
            var types: [EventType] = []
            for name in names {
                guard let type = EventType(rawValue: name) else {
                    throw r.error(
                        "\(r.name("events")) must list event types: " + EventType.allCases.map(\.rawValue).joined(separator: ", "))
                }
                if !types.contains(type) { types.append(type) }
            }
            events = types
        }
        self.init(url: url, events: events)
    }

    /// http or https (any case), `//`, a non-empty host (a name, an IPv4 address or a bracketed
    /// IPv6 one), an optional port 1-65535, then a path, query or nothing; no user info, no
    /// spaces or control characters. Where the host may be (loopback, private networks) is the
    /// worker's decision at delivery time, not the contract's.
    public static func isValidURL(_ url: String) -> Bool {
        let bytes = Array(url.utf8)
        guard bytes.count <= 2048, bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return false }
        let lower = url.lowercased()
        let rest: Substring
        if lower.hasPrefix("http://") {
            rest = url.dropFirst(7)
        } else if lower.hasPrefix("https://") {
            rest = url.dropFirst(8)
        } else {
            return false
        }
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        guard !authority.isEmpty, !authority.contains("@") else { return false }
        var host = authority
        var port: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return false }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return false }
                port = after.dropFirst()
            }
            guard !host.isEmpty, host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else { return false }
        } else {
            if let colon = authority.lastIndex(of: ":") {
                host = authority[..<colon]
                port = authority[authority.index(after: colon)...]
            }
            guard !host.isEmpty,
                host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_") })
            else { return false }
        }
        if let port {
            guard let n = Int(port), (1...65535).contains(n), port.allSatisfy(\.isNumber) else { return false }
        }
        return true
    }
}

extension RunSpec {
    /// Writes `agent_id`, `input`, `metadata`, `config`, `previous_run_id`, `resume_from`, each
    /// when set, in that order.
    func write(to o: inout JSONObject) {
        o.set("agent_id", agentID.map(JSONValue.string))
        o.set("input", input)
        o.set("metadata", metadata.map(JSONValue.object))
        o.set("config", config.map { .object($0.jsonObject) })
        o.set("previous_run_id", previousRunID.map(JSONValue.string))
        o.set("resume_from", resumeFrom)
    }

    /// The same members as `write(to: JSONObject)`, straight to bytes.
    func write(to w: inout JSONObjectWriter) {
        w.set("agent_id", string: agentID)
        w.set("input", input)
        w.set("metadata", metadata)
        if let config { w.setObject("config") { config.write(to: &$0) } }
        w.set("previous_run_id", string: previousRunID)
        w.set("resume_from", resumeFrom)
    }

    static let keys = ["agent_id", "input", "metadata", "config", "previous_run_id", "resume_from"]

    /// `input` and `resume_from` keep an explicit `null`; the typed fields treat it as absent.
    init(reader r: FieldReader) throws(RunError) {
        self.init()
        agentID = try r.string("agent_id")
        input = r.any("input")
        metadata = try r.object("metadata")
        if let config = try r.object("config") {
            self.config = try RunConfig(reader: r.nested(config, key: "config"))
        }
        if let previous = try r.string("previous_run_id") {
            guard RunID.isValid(previous) else {
                throw r.error("\(r.name("previous_run_id")) must match [A-Za-z0-9_-]{1,128}")
            }
            previousRunID = previous
        }
        resumeFrom = r.any("resume_from")
    }
}

extension ActionRequest {
    /// Keys an action's `fields` may not use, because events and snapshots write them beside
    /// the fields in the same object: `status`, `result`, `error`, `requested_at`,
    /// `deadline_at`, `attempt`, the heartbeat record (`heartbeat_count`, `last_heartbeat_at`,
    /// `heartbeat_details`, `heartbeat_deadline_at`) (plus `id`, `type`, `timeout_s`,
    /// `heartbeat_timeout_s`, which are never fields).
    public static let reservedKeys: Set<String> = [
        "id", "type", "timeout_s", "status", "result", "error", "requested_at", "deadline_at", "attempt",
        "heartbeat_timeout_s", "heartbeat_count", "last_heartbeat_at", "heartbeat_details", "heartbeat_deadline_at",
    ]

    /// `{"id"?, "type", ...fields, "timeout_s"?}`, as `require_action` carries it.
    public var jsonObject: JSONObject {
        var o = JSONObject()
        o.set("id", id.map(JSONValue.string))
        o["type"] = .string(type.rawValue)
        for (k, v) in fields { o[k] = v }
        o.set("timeout_s", timeoutS.map(JSONValue.double))
        o.set("heartbeat_timeout_s", heartbeatTimeoutS.map(JSONValue.double))
        return o
    }

    /// Validates one action of `require_action`. `r.path` is `action` or `actions[i]`.
    init(reader r: FieldReader) throws(RunError) {
        let type = try r.requiredEnum("type", ActionType.self)
        let id = try r.nonEmptyString("id")
        let timeoutS = try r.duration("timeout_s")
        let heartbeatTimeoutS = try r.duration("heartbeat_timeout_s")
        switch type {
        case .toolCall:
            _ = try r.requiredString("tool")
            _ = try r.requiredObject("args")
        case .sendMessage:
            _ = try r.requiredString("recipient")
            // Any JSON but null: a plain text or a structured message.
            _ = try r.required("content")
        case .systemAction:
            _ = try r.requiredString("action")
            _ = try r.duration("duration_s")
        }
        var fields = JSONObject()
        for (k, v) in r.object {
            switch k {
            case "id", "type", "timeout_s", "heartbeat_timeout_s": continue
            case _ where Self.reservedKeys.contains(k):
                throw r.error(
                    "\(r.name(k)) is reserved (status, result, error, requested_at, deadline_at, attempt, heartbeat_count, last_heartbeat_at, heartbeat_details, heartbeat_deadline_at)")
            default: fields[k] = v
            }
        }
        self.init(id: id, type: type, timeoutS: timeoutS, heartbeatTimeoutS: heartbeatTimeoutS, fields: fields)
    }
}

extension Action {
    /// The form events and snapshots carry: `{"id", "type", ...fields, "timeout_s"?,
    /// "status"? (absent while pending), "result"?, "error"?, "requested_at", "deadline_at"?,
    /// "attempt"}`. Fields using a reserved key (see `ActionRequest.reservedKeys`) are skipped.
    public var jsonObject: JSONObject {
        var o: JSONObject = ["id": .string(id), "type": .string(type.rawValue)]
        for (k, v) in fields where !ActionRequest.reservedKeys.contains(k) { o[k] = v }
        o.set("timeout_s", timeoutS.map(JSONValue.double))
        if status != .pending { o["status"] = .string(status.rawValue) }
        o.set("result", result)
        o.set("error", error.map { .object($0.jsonObject) })
        o["requested_at"] = .string(requestedAt.rfc3339)
        o.set("deadline_at", deadline.map { .string($0.rfc3339) })
        o["attempt"] = .int(Int64(attempt))
        o.set("heartbeat_timeout_s", heartbeatTimeoutS.map(JSONValue.double))
        o.set("heartbeat_deadline_at", heartbeatDeadline.map { .string($0.rfc3339) })
        if heartbeatCount > 0 { o["heartbeat_count"] = .int(Int64(heartbeatCount)) }
        o.set("last_heartbeat_at", lastHeartbeatAt.map { .string($0.rfc3339) })
        o.set("heartbeat_details", heartbeatDetails)
        return o
    }

    /// `jsonObject` serialized, written directly (every event about an action carries it).
    public func encode() -> [UInt8] {
        var w = JSONObjectWriter(capacity: 256)
        w.set("id", string: id)
        w.set("type", string: type.rawValue)
        for (k, v) in fields where !ActionRequest.reservedKeys.contains(k) { w.set(k, v) }
        w.set("timeout_s", timeoutS.map(JSONValue.double))
        if status != .pending { w.set("status", string: status.rawValue) }
        w.set("result", result)
        w.set("error", error?.jsonObject)
        w.set("requested_at", string: requestedAt.rfc3339)
        w.set("deadline_at", string: deadline?.rfc3339)
        w.set("attempt", int: Int64(attempt))
        w.set("heartbeat_timeout_s", heartbeatTimeoutS.map(JSONValue.double))
        w.set("heartbeat_deadline_at", string: heartbeatDeadline?.rfc3339)
        if heartbeatCount > 0 { w.set("heartbeat_count", int: Int64(heartbeatCount)) }
        w.set("last_heartbeat_at", string: lastHeartbeatAt?.rfc3339)
        w.set("heartbeat_details", heartbeatDetails)
        return w.finish()
    }

    /// Reads the form `jsonObject` writes; every key it does not know is a field.
    /// Errors are `malformed_message`.
    public init(json: JSONObject) throws(RunError) {
        try self.init(reader: FieldReader(json, path: "action", code: .malformedMessage))
    }

    init(reader r: FieldReader) throws(RunError) {
        var fields = JSONObject()
        for (k, v) in r.object where !ActionRequest.reservedKeys.contains(k) { fields[k] = v }
        self.init(
            id: try r.requiredString("id"), type: try r.requiredEnum("type", ActionType.self),
            fields: fields, timeoutS: try r.number("timeout_s"),
            status: try r.enumValue("status", ActionStatus.self) ?? .pending,
            requestedAt: try r.requiredTimestamp("requested_at"), deadline: try r.timestamp("deadline_at"),
            result: r.any("result"),
            error: try r.object("error").map { (o) throws(RunError) in try ErrorInfo(reader: r.nested(o, key: "error")) },
            attempt: Int(try r.int("attempt", min: 0) ?? 1),
            heartbeatTimeoutS: try r.number("heartbeat_timeout_s"),
            heartbeatCount: Int(try r.int("heartbeat_count", min: 0) ?? 0),
            lastHeartbeatAt: try r.timestamp("last_heartbeat_at"), heartbeatDetails: r.any("heartbeat_details"),
            heartbeatDeadline: try r.timestamp("heartbeat_deadline_at"))
    }

    /// Storage form: fields nested under `fields`, times as integer milliseconds.
    var storageJSON: JSONObject {
        var o: JSONObject = [
            "id": .string(id), "type": .string(type.rawValue), "fields": .object(fields),
            "status": .string(status.rawValue), "requested_at": .int(requestedAt.milliseconds),
            "attempt": .int(Int64(attempt)),
        ]
        o.set("timeout_s", timeoutS.map(JSONValue.double))
        o.set("deadline_at", deadline.map { .int($0.milliseconds) })
        o.set("result", result)
        o.set("error", error.map { .object($0.jsonObject) })
        o.set("heartbeat_timeout_s", heartbeatTimeoutS.map(JSONValue.double))
        if heartbeatCount > 0 { o["heartbeat_count"] = .int(Int64(heartbeatCount)) }
        o.set("last_heartbeat_at", lastHeartbeatAt.map { .int($0.milliseconds) })
        o.set("heartbeat_details", heartbeatDetails)
        o.set("heartbeat_deadline_at", heartbeatDeadline.map { .int($0.milliseconds) })
        return o
    }

    /// `storageJSON`, straight to bytes.
    func writeStorage(to out: inout [UInt8]) {
        var w = JSONObjectWriter(capacity: 128)
        w.set("id", string: id)
        w.set("type", string: type.rawValue)
        w.set("fields", fields)
        w.set("status", string: status.rawValue)
        w.set("requested_at", int: requestedAt.milliseconds)
        w.set("attempt", int: Int64(attempt))
        w.set("timeout_s", timeoutS.map(JSONValue.double))
        w.set("deadline_at", int: deadline?.milliseconds)
        w.set("result", result)
        w.set("error", error?.jsonObject)
        w.set("heartbeat_timeout_s", heartbeatTimeoutS.map(JSONValue.double))
        if heartbeatCount > 0 { w.set("heartbeat_count", int: Int64(heartbeatCount)) }
        w.set("last_heartbeat_at", int: lastHeartbeatAt?.milliseconds)
        w.set("heartbeat_details", heartbeatDetails)
        w.set("heartbeat_deadline_at", int: heartbeatDeadline?.milliseconds)
        out.append(contentsOf: w.finish())
    }

    init(storage r: FieldReader) throws(RunError) {
        self.init(
            id: try r.requiredString("id"), type: try r.requiredEnum("type", ActionType.self),
            fields: try r.object("fields") ?? [:], timeoutS: try r.number("timeout_s"),
            status: try r.requiredEnum("status", ActionStatus.self),
            requestedAt: try r.requiredMilliseconds("requested_at"), deadline: try r.milliseconds("deadline_at"),
            result: r.any("result"),
            error: try r.object("error").map { (o) throws(RunError) in try ErrorInfo(reader: r.nested(o, key: "error")) },
            attempt: Int(try r.requiredInt("attempt", min: 0)),
            heartbeatTimeoutS: try r.number("heartbeat_timeout_s"),
            heartbeatCount: Int(try r.int("heartbeat_count", min: 0) ?? 0),
            lastHeartbeatAt: try r.milliseconds("last_heartbeat_at"), heartbeatDetails: r.any("heartbeat_details"),
            heartbeatDeadline: try r.milliseconds("heartbeat_deadline_at"))
    }
}
