import RunContract

// One function per command. Each checks the run's state first and throws before changing
// anything, so a refusal leaves the run as it was.

extension RunStateMachine {
    /// `create`, or `start` on an unknown id: registers the run with its effective config.
    func create(_ command: Command, spec: RunSpec, andStart starts: Bool, at now: Timestamp) -> Transition {
        let config = (spec.config ?? RunConfig()).merged(over: defaults)
        let run = Run(
            runID: command.runID, status: .created, version: 0, attempt: 1, agentID: spec.agentID,
            input: spec.input, metadata: spec.metadata, config: config,
            previousRunID: spec.previousRunID, resumeFrom: spec.resumeFrom, createdAt: now, updatedAt: now)
        // Subscribers see the config the run actually has, defaults included.
        var registered = spec
        registered.config = config

        var recorder = Recorder(run: run, now: now, commandID: command.commandID, isNewRun: true)
        recorder.emit(.created, status: .created) { $0.spec = registered }
        if starts {
            beginAttempt(&recorder)
            recorder.emit(.started, status: .running) { $0.spec = registered }
        }
        return recorder.transition
    }

    /// What a `rerun` registers: the previous run's agent, input, metadata and effective
    /// config, each overridden by what the command gives (`config` field by field).
    func rerunSpec(_ given: RunSpec, previous: Run?, runID: String) throws(RunError) -> RunSpec {
        let previousID = given.previousRunID ?? ""
        guard let previous else {
            throw RunError(
                .runNotFound,
                "cannot rerun \"\(previousID)\" as run \"\(runID)\": run \"\(previousID)\" does not exist (a finished run is removed once its retention period has passed)")
        }
        guard previous.status.isTerminal else {
            throw RunError(
                .invalidTransition,
                "cannot rerun run \"\(previousID)\": it is \(previous.status.rawValue), and only a finished run (completed, failed, cancelled) can be run again")
        }
        return RunSpec(
            agentID: given.agentID ?? previous.agentID, input: given.input ?? previous.input,
            metadata: given.metadata ?? previous.metadata,
            config: given.config.map { $0.merged(over: previous.config) } ?? previous.config,
            previousRunID: previous.runID, resumeFrom: given.resumeFrom)
    }

    func start(_ r: inout Recorder) throws(RunError) {
        guard r.run.status == .created else {
            let hint = r.run.status == .retrying ? "the next attempt starts by itself after the retry delay" : nil
            throw Refusal.wrongState(r.run, verb: "start", allowed: "a created run can be started", hint: hint)
        }
        beginAttempt(&r)
        r.emit(.started, status: .running)
    }

    func beginAttempt(_ r: inout Recorder) {
        if r.run.startedAt == nil { r.run.startedAt = r.now }
        r.run.attemptStartedAt = r.now
    }

    func requireActions(_ requests: [ActionRequest], _ r: inout Recorder) throws(RunError) {
        let run = r.run
        guard run.status == .running || run.status == .waiting else {
            let hint: String? =
                switch run.status {
                case .created: "start it first"
                case .retrying: "wait until the next attempt has started"
                default: nil
                }
            throw Refusal.wrongState(
                run, verb: "require an action of", allowed: "a running or waiting run can require actions",
                hint: hint)
        }
        guard !requests.isEmpty else {
            throw RunError.validation("require_action for run \"\(run.runID)\" lists no action")
        }
        var taken = Set(run.actions.map(\.id))
        var given = Set<String>()
        for id in requests.compactMap(\.id) {
            if taken.contains(id) {
                throw RunError.validation(
                    "action id \"\(id)\" is already used in run \"\(run.runID)\": action ids must be unique within a run (omit id to have one generated)")
            }
            if !given.insert(id).inserted {
                throw RunError.validation("action id \"\(id)\" appears twice in one require_action")
            }
        }
        // Generated ids must not take an id given later in the same request.
        taken.formUnion(given)

        for request in requests {
            let seq = r.run.version + 1
            let id = request.id ?? Self.generatedActionID(seq: seq, avoiding: taken)
            taken.insert(id)
            let timeout = request.timeoutS ?? r.run.config.actionTimeoutS
            let action = Action(
                id: id, type: request.type, fields: request.fields, timeoutS: request.timeoutS,
                status: .pending, requestedAt: r.now, deadline: timeout.map { r.now.adding(seconds: $0) },
                attempt: r.run.attempt, heartbeatTimeoutS: request.heartbeatTimeoutS,
                heartbeatDeadline: request.heartbeatTimeoutS.map { r.now.adding(seconds: $0) })
            r.run.actions.append(action)
            r.emit(.actionRequired, status: .waiting) { $0.action = action }
        }
    }

    /// `a-<seq>` where seq is the action's `action_required` event, so ids are stable and tell
    /// where the action came from; a suffix resolves a clash with an id a producer chose.
    static func generatedActionID(seq: Int64, avoiding taken: Set<String>) -> String {
        let base = "a-\(seq)"
        if !taken.contains(base) { return base }
        var n = 2
        while taken.contains("\(base)-\(n)") { n += 1 }
        return "\(base)-\(n)"
    }

    enum ActionOutcome {
        case completed(JSONValue?)
        case failed(ErrorInfo)
    }

    func finishAction(_ actionID: String, _ outcome: ActionOutcome, _ r: inout Recorder) throws(RunError) {
        let run = r.run
        let verb = if case .completed = outcome { "complete" } else { "fail" }
        guard run.status == .waiting else {
            throw RunError(
                .invalidTransition,
                "cannot \(verb) action \"\(actionID)\" of run \"\(run.runID)\": the run is \(run.status.rawValue) and has no pending action")
        }
        guard let index = run.actions.firstIndex(where: { $0.id == actionID }) else {
            let pending = run.pendingActions.map(\.id)
            throw RunError(
                .actionNotFound,
                "run \"\(run.runID)\" has no action \"\(actionID)\" (pending: \(pending.listed))")
        }
        guard run.actions[index].status == .pending else {
            throw RunError(
                .invalidTransition,
                "cannot \(verb) action \"\(actionID)\" of run \"\(run.runID)\": it is already \(run.actions[index].status.rawValue)")
        }
        let type: EventType
        switch outcome {
        case .completed(let result):
            r.run.actions[index].status = .completed
            r.run.actions[index].result = result
            type = .actionCompleted
        case .failed(let error):
            r.run.actions[index].status = .failed
            r.run.actions[index].error = error
            type = .actionFailed
        }
        let action = r.run.actions[index]
        let status: RunStatus = r.run.actions.contains { $0.status == .pending } ? .waiting : .running
        r.emit(type, status: status) { $0.action = action }
    }

    /// `heartbeat_action`: records the heartbeat on the action and moves its heartbeat deadline.
    /// No event and no new version: like Temporal's, heartbeats stay out of the history, so
    /// that thousands of actions can send one every second.
    func heartbeat(_ actionID: String, details: JSONValue?, _ r: inout Recorder) throws(RunError) {
        let run = r.run
        guard run.status == .waiting else {
            throw RunError(
                .invalidTransition,
                "cannot record a heartbeat for action \"\(actionID)\" of run \"\(run.runID)\": the run is \(run.status.rawValue) and has no pending action")
        }
        guard let index = run.actions.firstIndex(where: { $0.id == actionID }) else {
            throw RunError(
                .actionNotFound,
                "run \"\(run.runID)\" has no action \"\(actionID)\" (pending: \(run.pendingActions.map(\.id).listed))")
        }
        guard run.actions[index].status == .pending else {
            throw RunError(
                .invalidTransition,
                "cannot record a heartbeat for action \"\(actionID)\" of run \"\(run.runID)\": it is already \(run.actions[index].status.rawValue)")
        }
        r.run.actions[index].heartbeatCount += 1
        r.run.actions[index].lastHeartbeatAt = r.now
        if let details, !details.isNull { r.run.actions[index].heartbeatDetails = details }
        if let limit = run.actions[index].heartbeatTimeoutS {
            r.run.actions[index].heartbeatDeadline = r.now.adding(seconds: limit)
        }
    }

    func complete(result: JSONValue?, usage: JSONValue?, _ r: inout Recorder) throws(RunError) {
        let run = r.run
        guard run.status == .running else {
            let pending = run.pendingActions.map(\.id)
            if run.status == .waiting {
                let count = pending.count == 1 ? "1 action is" : "\(pending.count) actions are"
                throw RunError(
                    .invalidTransition,
                    "cannot complete run \"\(run.runID)\": \(count) still pending (\(pending.listed))")
            }
            throw Refusal.wrongState(
                run, verb: "complete", allowed: "a running run can be completed",
                hint: run.status == .created ? "start it first" : "wait until the next attempt has started")
        }
        r.run.result = result
        r.run.usage = usage
        r.run.stopReason = .completed
        r.run.completedAt = r.now
        r.emit(.completed, status: .completed) {
            $0.stopReason = .completed
            $0.result = result
            $0.usage = usage
        }
    }

    func fail(error: ErrorInfo, retryable: Bool, _ r: inout Recorder) throws(RunError) {
        guard r.run.status == .running || r.run.status == .waiting else {
            throw Refusal.wrongState(
                r.run, verb: "fail", allowed: "a running or waiting run can fail", hint: "send cancel to stop it")
        }
        let stopped = r.cancelPendingActions()
        endAttempt(&r, error: error, wantsRetry: retryable, timeout: nil, stopped: stopped)
    }

    func cancel(reason: String?, _ r: inout Recorder) {
        // Terminal runs are refused before this point; every other status may be cancelled.
        let stopped = r.cancelPendingActions()
        r.run.stopReason = .cancelled
        r.run.completedAt = r.now
        r.run.nextAttemptAt = nil
        r.emit(.cancelled, status: .cancelled) {
            $0.stopReason = .cancelled
            $0.reason = reason
            $0.stoppedActionIDs = stopped.isEmpty ? nil : stopped
        }
    }

    /// Ends the current attempt after a failure or a timeout: schedules a retry when one is
    /// wanted and attempts remain, otherwise fails the run.
    /// - Parameters:
    ///   - wantsRetry: `retryable` of `fail`, or `retry_timeouts` for a timeout.
    ///   - timeout: the kind of timeout (`timeout`, `action_timeout`), nil for `fail`.
    ///   - stopped: ids of the pending actions cancelled with the attempt.
    func endAttempt(
        _ r: inout Recorder, error: ErrorInfo, wantsRetry: Bool, timeout: StopReason?, stopped: [String]
    ) {
        let stoppedIDs = stopped.isEmpty ? nil : stopped
        let maxAttempts = r.run.config.retry?.maxAttempts ?? 1
        r.run.error = error
        if wantsRetry && r.run.attempt < maxAttempts {
            let delay = Self.retryDelay(afterAttempt: r.run.attempt, runID: r.run.runID, policy: r.run.config.retry)
            let next = r.now.adding(seconds: delay)
            r.run.nextAttemptAt = next
            if let timeout {
                r.emit(.timedOut, status: .retrying) {
                    $0.stopReason = timeout
                    $0.error = error
                    $0.stoppedActionIDs = stoppedIDs
                }
                r.emit(.retryScheduled, status: .retrying) {
                    $0.error = error
                    $0.nextAttemptAt = next
                }
            } else {
                r.emit(.retryScheduled, status: .retrying) {
                    $0.error = error
                    $0.nextAttemptAt = next
                    $0.stoppedActionIDs = stoppedIDs
                }
            }
            return
        }
        let reason: StopReason = wantsRetry ? .maxAttempts : (timeout ?? .error)
        r.run.stopReason = reason
        r.run.completedAt = r.now
        r.run.nextAttemptAt = nil
        r.emit(timeout == nil ? .failed : .timedOut, status: .failed) {
            $0.stopReason = reason
            $0.error = error
            $0.stoppedActionIDs = stoppedIDs
        }
    }
}
