import RunContract

/// The refusals shared by several commands, with messages that say what to do next.
enum Refusal {
    static func runNotFound(_ command: Command) -> RunError {
        RunError(
            .runNotFound,
            "run \"\(command.runID)\" does not exist: \(command.kind.name) needs an existing run (send create or start first; a finished run is removed once its retention period has passed)")
    }

    static func runExists(_ run: Run) -> RunError {
        RunError(
            .runExists,
            "run \"\(run.runID)\" already exists (status \(run.status.rawValue), version \(run.version)): create applies only to a new run id")
    }

    static func versionConflict(expected: Int64, runID: String, actual: Int64?) -> RunError {
        guard let actual else {
            return RunError(
                .versionConflict,
                "expected_version \(expected) but run \"\(runID)\" does not exist (version 0)")
        }
        return RunError(.versionConflict, "expected_version \(expected) but run \"\(runID)\" is at version \(actual)")
    }

    static func terminal(_ run: Run, command: String) -> RunError {
        RunError(
            .invalidTransition,
            "run \"\(run.runID)\" is \(run.status.rawValue): no command applies to a terminal run (\(command) refused)")
    }

    /// `verb` completes "cannot <verb> run ...", e.g. "start", "complete".
    static func wrongState(_ run: Run, verb: String, allowed: String, hint: String? = nil) -> RunError {
        var message = "cannot \(verb) run \"\(run.runID)\": it is \(run.status.rawValue), and only \(allowed)"
        if let hint { message += "; \(hint)" }
        return RunError(.invalidTransition, message)
    }
}
