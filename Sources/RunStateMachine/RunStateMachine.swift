import RunContract

/// What an accepted command or a fired timer produces: the run as it is now, and the events
/// to append (in order, `seq` gapless from the previous version).
public struct Transition: Sendable, Hashable {
    public var run: Run
    public var events: [RunEvent]

    public init(run: Run, events: [RunEvent]) {
        self.run = run
        self.events = events
    }
}

/// The run state machine of the contract. Pure: commands, the current run and the time come in
/// as arguments; the new run and its events (or a typed refusal) come out. It performs no I/O,
/// reads no clock and draws no random numbers, so the same inputs always give the same output.
public struct RunStateMachine: Sendable {
    /// The worker's configured defaults, merged under each run's own config at creation.
    public var defaults: RunConfig

    public init(defaults: RunConfig = RunConfig()) {
        self.defaults = defaults
    }

    /// Applies a decoded command to a run (nil = the run does not exist). Checks, in the
    /// contract's order: run existence, `expected_version`, state. Returns the new run and the
    /// events to append, or a typed refusal; a refusal changes nothing.
    ///
    /// `previous` is the run that `rerun` names in `previous_run_id`, as the caller read it (nil
    /// when it does not exist); other commands ignore it. A rerun is the one command that reads
    /// a second run: the caller loads it, so that the machine stays pure.
    public func apply(
        _ command: Command, to run: Run?, previous: Run? = nil, at now: Timestamp
    ) -> Result<Transition, RunError> {
        do {
            guard let run else { return .success(try applyToUnknownRun(command, previous: previous, at: now)) }
            return .success(try applyToExistingRun(command, run, at: now))
        } catch {
            return .failure(error)
        }
    }

    /// Fires what is due at `now`: a retry delay that elapsed, the start timeout, an action
    /// timeout, the attempt timeout. At most one of them per call: callers loop until nil.
    /// nil when nothing is due (terminal runs, deadlines that are no longer relevant).
    public func advance(_ run: Run, to now: Timestamp) -> Transition? {
        guard let due = Self.dueTimer(of: run, at: now) else { return nil }
        var recorder = Recorder(run: run, now: now, commandID: nil)
        fire(due, &recorder)
        return recorder.transition
    }

    /// The earliest instant at which `advance` would do something; nil when nothing is scheduled.
    public static func nextDeadline(of run: Run) -> Timestamp? {
        timers(of: run).map(\.deadline).min()
    }
}

// MARK: - Routing a command

extension RunStateMachine {
    private func applyToUnknownRun(_ command: Command, previous: Run?, at now: Timestamp) throws(RunError) -> Transition {
        let given: RunSpec
        let starts: Bool
        switch command.kind {
        case .create(let s): (given, starts) = (s, false)
        case .start(let s), .rerun(let s): (given, starts) = (s, true)
        default: throw Refusal.runNotFound(command)
        }
        // The contract's order: existence, expected_version, then state (a rerun's previous run).
        if let expected = command.expectedVersion, expected != 0 {
            throw Refusal.versionConflict(expected: expected, runID: command.runID, actual: nil)
        }
        var spec = given
        if case .rerun = command.kind { spec = try rerunSpec(given, previous: previous, runID: command.runID) }
        return create(command, spec: spec, andStart: starts, at: now)
    }

    private func applyToExistingRun(_ command: Command, _ run: Run, at now: Timestamp) throws(RunError) -> Transition {
        guard run.runID == command.runID else {
            throw RunError.validation(
                "command for run \"\(command.runID)\" cannot be applied to run \"\(run.runID)\"")
        }
        switch command.kind {
        case .create, .rerun: throw Refusal.runExists(run)
        default: break
        }
        if let expected = command.expectedVersion, expected != run.version {
            throw Refusal.versionConflict(expected: expected, runID: run.runID, actual: run.version)
        }
        guard !run.status.isTerminal else { throw Refusal.terminal(run, command: command.kind.name) }

        var recorder = Recorder(run: run, now: now, commandID: command.commandID)
        switch command.kind {
        case .create, .rerun: throw Refusal.runExists(run)  // handled above; kept for exhaustiveness
        case .start: try start(&recorder)
        case .requireAction(let requests): try requireActions(requests, &recorder)
        case .completeAction(let id, let result): try finishAction(id, .completed(result), &recorder)
        case .failAction(let id, let error): try finishAction(id, .failed(error), &recorder)
        case .complete(let result, let usage): try complete(result: result, usage: usage, &recorder)
        case .fail(let error, let retryable): try fail(error: error, retryable: retryable, &recorder)
        case .cancel(let reason): cancel(reason: reason, &recorder)
        case .heartbeatAction(let id, let details): try heartbeat(id, details: details, &recorder)
        }
        return recorder.transition
    }
}
