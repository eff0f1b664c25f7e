import RunContract

/// Typed commands, one constructor per contract command. `commandID` is the idempotency key
/// (`message_id`); `RunClient.send` makes one up when it is nil. `expectedVersion` applies the
/// command only while the run is at that version (`version_conflict` otherwise).
extension Command {
    /// Registers a run without starting it.
    public static func create(
        runID: String, agentID: String? = nil, input: JSONValue? = nil, metadata: JSONObject? = nil,
        config: RunConfig? = nil, commandID: String? = nil, expectedVersion: Int64? = nil
    ) -> Command {
        Command(runID: runID, commandID: commandID, expectedVersion: expectedVersion,
                kind: .create(RunSpec(agentID: agentID, input: input, metadata: metadata, config: config)))
    }

    /// Starts a created run; on an unknown id, creates and starts it.
    public static func start(
        runID: String, agentID: String? = nil, input: JSONValue? = nil, metadata: JSONObject? = nil,
        config: RunConfig? = nil, commandID: String? = nil, expectedVersion: Int64? = nil
    ) -> Command {
        Command(runID: runID, commandID: commandID, expectedVersion: expectedVersion,
                kind: .start(RunSpec(agentID: agentID, input: input, metadata: metadata, config: config)))
    }

    /// The run needs outside work (one or more actions; see `ActionRequest.toolCall` & co.).
    public static func requireAction(
        runID: String, _ actions: ActionRequest..., commandID: String? = nil, expectedVersion: Int64? = nil
    ) -> Command {
        Command(runID: runID, commandID: commandID, expectedVersion: expectedVersion, kind: .requireAction(actions))
    }

    /// An outside action finished.
    public static func completeAction(
        runID: String, actionID: String, result: JSONValue? = nil, commandID: String? = nil,
        expectedVersion: Int64? = nil
    ) -> Command {
        Command(runID: runID, commandID: commandID, expectedVersion: expectedVersion,
                kind: .completeAction(actionID: actionID, result: result))
    }

    /// An outside action failed; the run decides what next.
    public static func failAction(
        runID: String, actionID: String, message: String, code: String? = nil, commandID: String? = nil,
        expectedVersion: Int64? = nil
    ) -> Command {
        Command(runID: runID, commandID: commandID, expectedVersion: expectedVersion,
                kind: .failAction(actionID: actionID, error: ErrorInfo(message: message, code: code)))
    }

    /// The run finished successfully.
    public static func complete(
        runID: String, result: JSONValue? = nil, usage: JSONValue? = nil, commandID: String? = nil,
        expectedVersion: Int64? = nil
    ) -> Command {
        Command(runID: runID, commandID: commandID, expectedVersion: expectedVersion,
                kind: .complete(result: result, usage: usage))
    }

    /// The run failed; `retryable` lets its retry policy start another attempt.
    public static func fail(
        runID: String, message: String, code: String? = nil, retryable: Bool = false, commandID: String? = nil,
        expectedVersion: Int64? = nil
    ) -> Command {
        Command(runID: runID, commandID: commandID, expectedVersion: expectedVersion,
                kind: .fail(error: ErrorInfo(message: message, code: code), retryable: retryable))
    }

    /// Stops the run.
    public static func cancel(
        runID: String, reason: String? = nil, commandID: String? = nil, expectedVersion: Int64? = nil
    ) -> Command {
        Command(runID: runID, commandID: commandID, expectedVersion: expectedVersion, kind: .cancel(reason: reason))
    }

    /// A pending action is alive: moves its heartbeat deadline; `details` (progress, a
    /// cursor) is recorded on the action. No event.
    public static func heartbeatAction(
        runID: String, actionID: String, details: JSONValue? = nil, commandID: String? = nil,
        expectedVersion: Int64? = nil
    ) -> Command {
        Command(runID: runID, commandID: commandID, expectedVersion: expectedVersion,
                kind: .heartbeatAction(actionID: actionID, details: details))
    }

    /// Creates and starts `runID` from the finished run `previousRunID`, inheriting its agent,
    /// input, metadata and config unless given here.
    public static func rerun(
        runID: String, previousRunID: String, agentID: String? = nil, input: JSONValue? = nil,
        metadata: JSONObject? = nil, config: RunConfig? = nil, resumeFrom: JSONValue? = nil, commandID: String? = nil
    ) -> Command {
        Command(runID: runID, commandID: commandID,
                kind: .rerun(RunSpec(agentID: agentID, input: input, metadata: metadata, config: config,
                                     previousRunID: previousRunID, resumeFrom: resumeFrom)))
    }
}

extension ActionRequest {
    /// A `tool_call` action: `tool` with `args` (a JSON object).
    public static func toolCall(
        _ tool: String, args: JSONObject = [:], id: String? = nil, timeoutS: Double? = nil, heartbeatTimeoutS: Double? = nil
    ) -> ActionRequest {
        ActionRequest(id: id, type: .toolCall, timeoutS: timeoutS, heartbeatTimeoutS: heartbeatTimeoutS,
                      fields: ["tool": .string(tool), "args": .object(args)])
    }

    /// A `send_message` action: `content` for `recipient`.
    public static func sendMessage(to recipient: String, content: JSONValue, id: String? = nil, timeoutS: Double? = nil) -> ActionRequest {
        ActionRequest(id: id, type: .sendMessage, timeoutS: timeoutS, fields: ["recipient": .string(recipient), "content": content])
    }

    /// A `system_action`: `action`, optionally lasting `durationS`.
    public static func systemAction(_ action: String, durationS: Double? = nil, id: String? = nil, timeoutS: Double? = nil) -> ActionRequest {
        var fields: JSONObject = ["action": .string(action)]
        if let durationS { fields["duration_s"] = .double(durationS) }
        return ActionRequest(id: id, type: .systemAction, timeoutS: timeoutS, fields: fields)
    }
}
