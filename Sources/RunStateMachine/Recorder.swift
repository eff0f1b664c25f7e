import RunContract

/// Collects the events of one transition while it changes the run, so that every event gets
/// the next `seq`, the status before and after it, and the run's `version` follows.
struct Recorder {
    var run: Run
    private(set) var events: [RunEvent] = []
    let now: Timestamp
    let commandID: String?
    /// The status before the next event; nil before the `created` event of a new run.
    private var previousStatus: RunStatus?

    init(run: Run, now: Timestamp, commandID: String?, isNewRun: Bool = false) {
        self.run = run
        self.now = now
        self.commandID = commandID
        self.previousStatus = isNewRun ? nil : run.status
    }

    /// Moves the run to `status` and appends an event of `type` describing that move.
    /// `fill` sets the event's type-specific fields.
    mutating func emit(_ type: EventType, status: RunStatus, _ fill: (inout RunEvent) -> Void = { _ in }) {
        run.status = status
        run.version += 1
        run.updatedAt = now
        var event = RunEvent(
            runID: run.runID, seq: run.version, type: type, status: status,
            previousStatus: previousStatus, attempt: run.attempt, occurredAt: now,
            commandID: commandID)
        fill(&event)
        events.append(event)
        previousStatus = status
    }

    /// Marks every pending action `cancelled` and returns their ids, in request order.
    mutating func cancelPendingActions() -> [String] {
        var ids: [String] = []
        for i in run.actions.indices where run.actions[i].status == .pending {
            run.actions[i].status = .cancelled
            ids.append(run.actions[i].id)
        }
        return ids
    }

    var transition: Transition { Transition(run: run, events: events) }
}

extension Array where Element == String {
    /// `a-1, a-2` for messages.
    var listed: String { joined(separator: ", ") }
}
