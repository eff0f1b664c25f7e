// Two JSON forms of a run:
// - the snapshot, for replies and clients: the contract's fields, every one present
//   (`null` when absent), plus `usage` and `next_attempt_at`. Only pending actions appear,
//   so decoding it gives back a partial `Run` (see `init(snapshot:)`).
// - the storage form, for the store: everything, times as integer milliseconds, nil fields
//   omitted, a `storage_version` for later migrations. It decodes back to an equal `Run`.

extension Run {
    /// The contract's snapshot, as carried by replies.
    public var snapshotJSON: JSONObject {
        func time(_ t: Timestamp?) -> JSONValue { t.map { .string($0.rfc3339) } ?? .null }
        return [
            "run_id": .string(runID), "status": .string(status.rawValue), "version": .int(version),
            "attempt": .int(Int64(attempt)), "agent_id": agentID.map(JSONValue.string) ?? .null,
            "input": input ?? .null, "metadata": metadata.map(JSONValue.object) ?? .null,
            "config": .object(config.jsonObject),
            "pending_actions": .array(pendingActions.map { .object($0.jsonObject) }),
            "result": result ?? .null, "usage": usage ?? .null,
            "error": error.map { .object($0.jsonObject) } ?? .null,
            "stop_reason": stopReason.map { .string($0.rawValue) } ?? .null,
            "previous_run_id": previousRunID.map(JSONValue.string) ?? .null,
            "created_at": time(createdAt), "started_at": time(startedAt), "updated_at": time(updatedAt),
            "completed_at": time(completedAt), "next_attempt_at": time(nextAttemptAt),
        ]
    }

    public func encodeSnapshot() -> [UInt8] { snapshotJSON.serialized() }

    /// Reads a snapshot. What it does not carry stays empty: `actions` holds only the pending
    /// ones, `resumeFrom` and `attemptStartedAt` are nil, and a `null` `input`/`result`/`usage`
    /// reads as nil. Errors are `malformed_message`.
    public init(snapshot json: JSONValue) throws(RunError) {
        guard let o = json.objectValue else {
            throw RunError(.malformedMessage, "run must be a JSON object, not \(json.kindName)")
        }
        let r = FieldReader(o, path: "run", code: .malformedMessage)
        var actions: [Action] = []
        if let list = r.present("pending_actions") {
            guard let a = list.arrayValue else { throw r.error("run.pending_actions must be a list") }
            for (n, e) in a.enumerated() {
                guard let ao = e.objectValue else { throw r.error("run.pending_actions[\(n)] must be an object") }
                actions.append(try Action(reader: FieldReader(ao, path: "run.pending_actions[\(n)]", code: r.code)))
            }
        }
        self.init(
            runID: try r.requiredString("run_id"), status: try r.requiredEnum("status", RunStatus.self),
            version: try r.requiredInt("version", min: 0), attempt: Int(try r.requiredInt("attempt", min: 0)),
            agentID: try r.string("agent_id"), input: r.present("input"), metadata: try r.object("metadata"),
            config: try r.object("config").map { (c) throws(RunError) in try RunConfig(reader: r.nested(c, key: "config")) }
                ?? RunConfig(),
            actions: actions, result: r.present("result"), usage: r.present("usage"),
            error: try r.object("error").map { (e) throws(RunError) in try ErrorInfo(reader: r.nested(e, key: "error")) },
            stopReason: try r.enumValue("stop_reason", StopReason.self), previousRunID: try r.string("previous_run_id"),
            createdAt: try r.requiredTimestamp("created_at"), startedAt: try r.timestamp("started_at"),
            updatedAt: try r.requiredTimestamp("updated_at"), completedAt: try r.timestamp("completed_at"),
            nextAttemptAt: try r.timestamp("next_attempt_at"))
    }

    public static func decodeSnapshot(_ bytes: some Collection<UInt8>) throws(RunError) -> Run {
        try Run(snapshot: .object(try JSONValue.parseObject(bytes, what: "run")))
    }

    /// The version of the storage form `storageJSON` writes.
    public static let storageVersion: Int64 = 1

    /// Everything about the run, for the store.
    public var storageJSON: JSONObject {
        var o: JSONObject = [
            "storage_version": .int(Self.storageVersion), "run_id": .string(runID),
            "status": .string(status.rawValue), "version": .int(version), "attempt": .int(Int64(attempt)),
        ]
        o.set("agent_id", agentID.map(JSONValue.string))
        o.set("input", input)
        o.set("metadata", metadata.map(JSONValue.object))
        o["config"] = .object(config.jsonObject)
        o["actions"] = .array(actions.map { .object($0.storageJSON) })
        o.set("result", result)
        o.set("usage", usage)
        o.set("error", error.map { .object($0.jsonObject) })
        o.set("stop_reason", stopReason.map { .string($0.rawValue) })
        o.set("previous_run_id", previousRunID.map(JSONValue.string))
        o.set("resume_from", resumeFrom)
        o["created_at"] = .int(createdAt.milliseconds)
        o.set("started_at", startedAt.map { .int($0.milliseconds) })
        o["updated_at"] = .int(updatedAt.milliseconds)
        o.set("completed_at", completedAt.map { .int($0.milliseconds) })
        o.set("attempt_started_at", attemptStartedAt.map { .int($0.milliseconds) })
        o.set("next_attempt_at", nextAttemptAt.map { .int($0.milliseconds) })
        return o
    }

    /// `storageJSON` serialized, written directly (every commit writes it).
    public func encodeForStorage() -> [UInt8] {
        var w = JSONObjectWriter(capacity: 1024)
        w.set("storage_version", int: Self.storageVersion)
        w.set("run_id", string: runID)
        w.set("status", string: status.rawValue)
        w.set("version", int: version)
        w.set("attempt", int: Int64(attempt))
        w.set("agent_id", string: agentID)
        w.set("input", input)
        w.set("metadata", metadata)
        w.setObject("config") { config.write(to: &$0) }
        var actionsJSON: [UInt8] = [0x5B]
        for (i, action) in actions.enumerated() {
            if i > 0 { actionsJSON.append(0x2C) }
            action.writeStorage(to: &actionsJSON)
        }
        actionsJSON.append(0x5D)
        w.set("actions", raw: actionsJSON)
        w.set("result", result)
        w.set("usage", usage)
        w.set("error", error?.jsonObject)
        w.set("stop_reason", string: stopReason?.rawValue)
        w.set("previous_run_id", string: previousRunID)
        w.set("resume_from", resumeFrom)
        w.set("created_at", int: createdAt.milliseconds)
        w.set("started_at", int: startedAt?.milliseconds)
        w.set("updated_at", int: updatedAt.milliseconds)
        w.set("completed_at", int: completedAt?.milliseconds)
        w.set("attempt_started_at", int: attemptStartedAt?.milliseconds)
        w.set("next_attempt_at", int: nextAttemptAt?.milliseconds)
        return w.finish()
    }

    /// Reads the storage form back. Errors are `malformed_message` (a corrupt row).
    public init(storage json: JSONValue) throws(RunError) {
        guard let o = json.objectValue else {
            throw RunError(.malformedMessage, "stored run must be a JSON object, not \(json.kindName)")
        }
        let r = FieldReader(o, code: .malformedMessage)
        let format = try r.requiredInt("storage_version", min: 1)
        guard format == Self.storageVersion else {
            throw r.error("storage_version \(format) is not supported (this build reads \(Self.storageVersion))")
        }
        var actions: [Action] = []
        if let list = r.present("actions") {
            guard let a = list.arrayValue else { throw r.error("actions must be a list") }
            actions.reserveCapacity(a.count)
            for (n, e) in a.enumerated() {
                guard let ao = e.objectValue else { throw r.error("actions[\(n)] must be an object") }
                actions.append(try Action(storage: FieldReader(ao, path: "actions[\(n)]", code: r.code)))
            }
        }
        self.init(
            runID: try r.requiredString("run_id"), status: try r.requiredEnum("status", RunStatus.self),
            version: try r.requiredInt("version", min: 0), attempt: Int(try r.requiredInt("attempt", min: 0)),
            agentID: try r.string("agent_id"), input: r.any("input"), metadata: try r.object("metadata"),
            config: try r.object("config").map { (c) throws(RunError) in try RunConfig(reader: r.nested(c, key: "config")) }
                ?? RunConfig(),
            actions: actions, result: r.any("result"), usage: r.any("usage"),
            error: try r.object("error").map { (e) throws(RunError) in try ErrorInfo(reader: r.nested(e, key: "error")) },
            stopReason: try r.enumValue("stop_reason", StopReason.self), previousRunID: try r.string("previous_run_id"),
            resumeFrom: r.any("resume_from"), createdAt: try r.requiredMilliseconds("created_at"),
            startedAt: try r.milliseconds("started_at"), updatedAt: try r.requiredMilliseconds("updated_at"),
            completedAt: try r.milliseconds("completed_at"), attemptStartedAt: try r.milliseconds("attempt_started_at"),
            nextAttemptAt: try r.milliseconds("next_attempt_at"))
    }

    public static func decodeStorage(_ bytes: some Collection<UInt8>) throws(RunError) -> Run {
        try Run(storage: .object(try JSONValue.parseObject(bytes, what: "stored run")))
    }
}

extension CommandReply {
    /// `{"command_id", "ok", "run": snapshot or null, "error": {"code", "message"}}`; `error`
    /// is omitted when nil (it is nil when `ok`).
    public var jsonObject: JSONObject {
        var o: JSONObject = [
            "command_id": commandID.map(JSONValue.string) ?? .null, "ok": .bool(ok),
            "run": run.map { .object($0.snapshotJSON) } ?? .null,
        ]
        o.set("error", error.map { .object($0.jsonObject) })
        return o
    }

    public func encode() -> [UInt8] { jsonObject.serialized() }

    /// Reads a reply; `run` goes through `Run(snapshot:)`, so it is partial in the same way.
    public init(json: JSONValue) throws(RunError) {
        guard let o = json.objectValue else {
            throw RunError(.malformedMessage, "reply must be a JSON object, not \(json.kindName)")
        }
        let r = FieldReader(o, code: .malformedMessage)
        guard let ok = try r.bool("ok") else { throw r.error("ok is required") }
        self.init(
            commandID: try r.string("command_id"), ok: ok,
            run: try r.object("run").map { (run) throws(RunError) in try Run(snapshot: .object(run)) },
            error: try r.object("error").map { (e) throws(RunError) in try RunError(reader: r.nested(e, key: "error")) })
    }

    public static func decode(_ bytes: some Collection<UInt8>) throws(RunError) -> CommandReply {
        try CommandReply(json: .object(try JSONValue.parseObject(bytes, what: "reply")))
    }
}
