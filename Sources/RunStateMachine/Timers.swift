import RunContract

// Timers are outputs: `nextDeadline(of:)` tells the caller when to come back, and
// `advance(_:to:)` fires what is due at the time the caller passes in.

extension RunStateMachine {
    struct Timer: Hashable {
        enum Kind: Hashable {
            case retryStart
            case startTimeout
            case actionTimeout(actionIndex: Int)
            case heartbeatTimeout(actionIndex: Int)
            case attemptTimeout
        }
        var kind: Kind
        var deadline: Timestamp
    }

    /// The timers that matter in the run's current status, in the order they are checked.
    static func timers(of run: Run) -> [Timer] {
        switch run.status {
        case .retrying:
            return run.nextAttemptAt.map { [Timer(kind: .retryStart, deadline: $0)] } ?? []
        case .created:
            guard let limit = run.config.startTimeoutS else { return [] }
            return [Timer(kind: .startTimeout, deadline: run.createdAt.adding(seconds: limit))]
        case .running, .waiting:
            var timers: [Timer] = []
            for (index, action) in run.actions.enumerated() where action.status == .pending {
                if let deadline = action.deadline {
                    timers.append(Timer(kind: .actionTimeout(actionIndex: index), deadline: deadline))
                }
                if let deadline = action.heartbeatDeadline {
                    timers.append(Timer(kind: .heartbeatTimeout(actionIndex: index), deadline: deadline))
                }
            }
            if let limit = run.config.timeoutS, let began = run.attemptStartedAt {
                timers.append(Timer(kind: .attemptTimeout, deadline: began.adding(seconds: limit)))
            }
            return timers
        case .completed, .failed, .cancelled:
            return []
        }
    }

    /// The timer to fire at `now`: among those due, the one with the earliest deadline (what
    /// happened first really happened first, even if the worker was down for a while); on a
    /// tie, the first in check order (actions before the attempt, actions in request order).
    static func dueTimer(of run: Run, at now: Timestamp) -> Timer? {
        var best: Timer?
        for timer in timers(of: run) where timer.deadline <= now {
            if best == nil || timer.deadline < best!.deadline { best = timer }
        }
        return best
    }

    func fire(_ timer: Timer, _ r: inout Recorder) {
        let retryTimeouts = r.run.config.retry?.retryTimeouts ?? false
        switch timer.kind {
        case .retryStart:
            r.run.attempt += 1
            r.run.nextAttemptAt = nil
            r.run.error = nil
            beginAttempt(&r)
            r.emit(.started, status: .running)

        case .startTimeout:
            // No attempt ran, so there is nothing to retry.
            let limit = r.run.config.startTimeoutS ?? 0
            let error = ErrorInfo(
                message: "run was not started within \(formatSeconds(limit)) of its creation", code: "start_timeout")
            endAttempt(&r, error: error, wantsRetry: false, timeout: .timeout, stopped: [])

        case .actionTimeout(let index):
            let id = r.run.actions[index].id
            let limit = r.run.actions[index].timeoutS ?? r.run.config.actionTimeoutS
            let within = limit.map { " within \(formatSeconds($0))" } ?? ""
            timeOutAction(
                index, actionError: "action \"\(id)\" did not finish\(within)",
                runError: "action \"\(id)\" did not finish\(within)", code: "action_timeout", &r)

        case .heartbeatTimeout(let index):
            let id = r.run.actions[index].id
            let limit = formatSeconds(r.run.actions[index].heartbeatTimeoutS ?? 0)
            let since = r.run.actions[index].heartbeatCount > 0 ? "its last heartbeat" : "it was requested"
            timeOutAction(
                index, actionError: "action \"\(id)\" sent no heartbeat within \(limit) of \(since)",
                runError: "action \"\(id)\" sent no heartbeat within \(limit)", code: "heartbeat_timeout", &r)

        case .attemptTimeout:
            let limit = r.run.config.timeoutS ?? 0
            let stopped = r.cancelPendingActions()
            let error = ErrorInfo(
                message: "attempt \(r.run.attempt) did not finish within \(formatSeconds(limit))", code: "timeout")
            endAttempt(&r, error: error, wantsRetry: retryTimeouts, timeout: .timeout, stopped: stopped)
        }
    }

    /// An action's timeout (its own, or its heartbeat's) fails the action and the attempt.
    private func timeOutAction(
        _ index: Int, actionError actionMessage: String, runError runMessage: String, code: String,
        _ r: inout Recorder
    ) {
        let retryTimeouts = r.run.config.retry?.retryTimeouts ?? false
        let actionError = ErrorInfo(message: actionMessage, code: code)
        r.run.actions[index].status = .timedOut
        r.run.actions[index].error = actionError
        let action = r.run.actions[index]
        r.emit(.actionFailed, status: r.run.status) {
            $0.action = action
            $0.error = actionError
        }
        let stopped = r.cancelPendingActions()
        let runError = ErrorInfo(message: "attempt \(r.run.attempt) timed out: \(runMessage)", code: code)
        endAttempt(&r, error: runError, wantsRetry: retryTimeouts, timeout: .actionTimeout, stopped: stopped)
    }
}

/// `5s`, `1.5s`.
func formatSeconds(_ seconds: Double) -> String {
    if seconds == seconds.rounded(), abs(seconds) < 1e15 { return "\(Int64(seconds))s" }
    return "\(seconds)s"
}
