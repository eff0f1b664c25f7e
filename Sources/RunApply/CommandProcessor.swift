import RunContract
import RunStateMachine
import RunStore

/// A command as it came off a partition queue: just the parts the contract gives meaning.
public struct InboundCommand: Sendable {
    public var body: [UInt8]
    public var routingKey: String
    public var messageID: String?
    public var replyTo: String?
    public var correlationID: String?
    /// The partition queue it came from; recorded with the run so that the partition's owner
    /// fires the run's timers.
    public var partition: Int?

    public init(
        body: [UInt8], routingKey: String, messageID: String? = nil, replyTo: String? = nil, correlationID: String? = nil,
        partition: Int? = nil
    ) {
        self.partition = partition
        self.body = body
        self.routingKey = routingKey
        self.messageID = messageID
        self.replyTo = replyTo
        self.correlationID = correlationID
    }
}

/// Something to publish once a batch is durable. The transport maps `destination` to an
/// exchange; everything else is the message itself.
public struct OutboundMessage: Sendable {
    public enum Destination: Sendable, Hashable {
        /// `<prefix>.events`, routing key `run.<id>.<type>`.
        case events
        /// `<prefix>.dead`.
        case dead
        /// The default exchange, routing key = the command's `reply_to`.
        case reply
    }

    public var destination: Destination
    public var routingKey: String
    public var messageID: String?
    public var correlationID: String?
    /// The AMQP `type` property: the event type, `command_rejected` or `reply`.
    public var type: String?
    public var headers: [(key: String, value: HeaderValue)]
    public var body: [UInt8]
    public var persistent: Bool
    /// The outbox row to delete once the broker confirmed this message.
    public var outboxID: Int64?

    public init(
        destination: Destination, routingKey: String, messageID: String? = nil, correlationID: String? = nil,
        type: String? = nil, headers: [(key: String, value: HeaderValue)] = [], body: [UInt8], persistent: Bool = true,
        outboxID: Int64? = nil
    ) {
        self.destination = destination
        self.routingKey = routingKey
        self.messageID = messageID
        self.correlationID = correlationID
        self.type = type
        self.headers = headers
        self.body = body
        self.persistent = persistent
        self.outboxID = outboxID
    }

    package init(outbox row: OutboxMessage) {
        self.init(
            destination: .events, routingKey: row.routingKey, messageID: row.messageID, type: row.type,
            headers: RunEvent.amqpHeaders(runID: row.runID, seq: row.seq, type: row.type, status: row.status),
            body: row.body, outboxID: row.id)
    }
}

/// What happened to one inbound command, for logs and tests.
public struct CommandResult: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        case applied(events: Int)
        case refused(RunError)
        /// A command id seen before: answered with the first outcome, not applied again.
        case duplicate(CommandOutcome)
        /// Cannot be attributed to a run: dead-lettered.
        case deadLettered(RunError)
        /// A deadline elapsed (timeout or retry delay).
        case timerFired(events: Int)
    }

    public var runID: String?
    public var commandID: String?
    public var command: String?
    public var kind: Kind
}


/// One thing the loop applies: a delivered command, or a run whose deadline the timer sweep
/// found due. Both go through the same path (load, decide, commit, publish).
public enum WorkItem: Sendable {
    case command(InboundCommand)
    case timer(runID: String)
}

/// A batch after stage 1 of decoding (no store needed): what each item is, and what the
/// store must load to decide it.
public struct PreparedBatch: Sendable {
    enum Entry: Sendable {
        /// Too large, not a JSON object, or no usable `run_id`: dead-lettered.
        case unattributable(InboundCommand, RunError)
        case command(InboundCommand, CommandEnvelope)
        case timer(runID: String)
    }

    var entries: [Entry]
    public var runIDs: Set<String> = []
    public var commandKeys: Set<CommandKey> = []

}

/// What a batch writes and publishes once decided. Publishing waits for the commit: the
/// outbox rows' ids come from the store (`assignOutboxIDs`).
public struct BatchDecision: Sendable {
    public var commit: StoreCommit
    /// In publish order.
    public var messages: [OutboundMessage]
    public var results: [CommandResult]
    /// Which message carries which row of `commit.outbox`.
    var outboxSlots: [(message: Int, row: Int)] = []
    public var observations: [RunObservation] = []
    /// When the decision was made (monotonic nanoseconds), to time the commit that follows.
    public var decidedAtNs: UInt64 = 0
    /// How long the decision took.
    public var decideNs: UInt64 = 0

    public mutating func assignOutboxIDs(_ ids: [Int64]) {
        for (message, row) in outboxSlots { messages[message].outboxID = ids[row] }
    }
}

/// The result of one applied batch: what to publish (in order) and what became of each item.
public struct ProcessedBatch: Sendable {
    public var messages: [OutboundMessage]
    public var results: [CommandResult]
    /// What the batch did to runs, for metrics (counted once the batch is confirmed).
    public var observations: [RunObservation] = []
    /// Time spent in the store after the decision (the commit), in nanoseconds.
    public var commitNs: UInt64 = 0
    /// Where the batch's time went, for the benchmark's split.
    public var stages = StageTimes()
}

/// Wall time of a batch's stages, in nanoseconds: decoding the commands (stage 1), deciding
/// (the state machine and encoding events and replies), the store (load and commit, waiting
/// for the disk or the network included), publishing (AMQP frames written).
public struct StageTimes: Sendable, Hashable {
    public var prepareNs: UInt64 = 0
    public var decideNs: UInt64 = 0
    public var storeNs: UInt64 = 0
    public var publishNs: UInt64 = 0
    public init() {}
}

/// A fact about runs that metrics count: derived from the events a batch appended, so a
/// repeated command (which appends none) is never counted twice.
public enum RunObservation: Sendable, Hashable {
    /// A run reached a terminal status; `durationS` from creation to that event.
    case runFinished(status: RunStatus, stopReason: StopReason?, agentID: String?, durationS: Double, attempts: Int)
    /// An action completed, failed or timed out; `durationS` from its request.
    case actionFinished(agentID: String?, actionType: String, status: ActionStatus, durationS: Double)
    /// A deadline fired `latenessS` after it was due.
    case timerFired(latenessS: Double)
}

/// Decodes and decides batches: the contract's checks in order, de-duplication, the pure
/// state machine, deadlines that elapsed before a command. No I/O and no clock: the store's
/// snapshot and the time come in, the writes and messages go out (`BatchApplier` does the I/O).
public struct CommandProcessor: Sendable {
    public var machine: RunStateMachine
    public var maxBodyBytes: Int

    public init(machine: RunStateMachine, maxBodyBytes: Int = CommandEnvelope.defaultMaxBodyBytes) {
        self.machine = machine
        self.maxBodyBytes = maxBodyBytes
    }

    /// Stage 1: size, JSON and `run_id` of each command; what the batch must load.
    public func prepare(_ items: [WorkItem]) -> PreparedBatch {
        var batch = PreparedBatch(entries: [])
        batch.entries.reserveCapacity(items.count)
        for item in items {
            switch item {
            case .timer(let runID):
                batch.entries.append(.timer(runID: runID))
                batch.runIDs.insert(runID)
            case .command(let inbound):
                do {
                    let envelope = try CommandEnvelope.parse(
                        body: inbound.body, routingKey: inbound.routingKey, messageID: inbound.messageID,
                        maxBodyBytes: maxBodyBytes)
                    batch.entries.append(.command(inbound, envelope))
                    batch.runIDs.insert(envelope.runID)
                    // A rerun reads the run it starts from (only read: it is finished).
                    if envelope.commandName == CommandName.rerun.rawValue,
                        let previous = envelope.body["previous_run_id"]?.stringValue, RunID.isValid(previous)
                    {
                        batch.runIDs.insert(previous)
                    }
                    if let id = envelope.commandID { batch.commandKeys.insert(CommandKey(runID: envelope.runID, commandID: id)) }
                } catch {
                    batch.entries.append(.unattributable(inbound, error))
                }
            }
        }
        return batch
    }

    /// Decides a prepared batch against what the store held when it was loaded.
    /// - Parameters:
    ///   - pendingOutbox: the unconfirmed outbox rows of the runs whose command ids the store
    ///     has seen (their events are published again with the answer).
    ///   - published: outbox rows this worker published and awaits confirms for, which a
    ///     repeated command must not publish again.
    ///   - removeOutbox: confirmed rows of earlier batches, deleted in this batch's commit.
    public func decide(
        _ batch: PreparedBatch, snapshot: StoreSnapshot, pendingOutbox: [OutboxMessage] = [],
        published: Set<Int64> = [], removeOutbox: [Int64] = [], now: Timestamp
    ) -> BatchDecision {
        var d = Decider(machine: machine, snapshot: snapshot, published: published, now: now)
        d.pendingOutbox = Dictionary(grouping: pendingOutbox, by: \.runID)
        d.decision.commit.removeOutbox = removeOutbox
        for entry in batch.entries {
            switch entry {
            case .unattributable(let inbound, let error): d.deadLetter(inbound, error)
            case .command(let inbound, let envelope): d.apply(inbound, envelope)
            case .timer(let runID): d.fireTimer(runID)
            }
        }
        d.finish()
        return d.decision
    }

    /// Everything due at `now`, fired in order (a retry that starts may itself time out later,
    /// never at the same instant, but the loop is bounded all the same).
    static func fireDue(_ machine: RunStateMachine, _ run: Run, at now: Timestamp) -> Transition? {
        var current = run
        var events: [RunEvent] = []
        for _ in 0..<16 {
            guard let t = machine.advance(current, to: now) else { break }
            current = t.run
            events += t.events
        }
        return events.isEmpty ? nil : Transition(run: current, events: events)
    }
}

/// The working state of one `decide` call.
private struct Decider {
    let machine: RunStateMachine
    let snapshot: StoreSnapshot
    let now: Timestamp
    var decision = BatchDecision(commit: StoreCommit(), messages: [], results: [])
    var pendingOutbox: [String: [OutboxMessage]] = [:]
    /// Outbox rows already on their way (published earlier, or republished in this batch).
    var queuedOutbox: Set<Int64>
    /// Runs touched by this batch, in first-touch order: the version they had in the store,
    /// where they are now, and the partition their latest command came from.
    var touched: [String] = []
    /// `changed`: the run changed without a new event (a heartbeat), so it is written although
    /// its version did not move.
    var runs: [String: (stored: Int64?, run: Run?, partition: Int?, changed: Bool)] = [:]
    /// Outcomes recorded by this batch, so a repeat within the batch is a duplicate too.
    var outcomes: [CommandKey: CommandOutcome] = [:]

    init(machine: RunStateMachine, snapshot: StoreSnapshot, published: Set<Int64>, now: Timestamp) {
        self.machine = machine
        self.snapshot = snapshot
        self.queuedOutbox = published
        self.now = now
    }

    mutating func current(_ id: String) -> Run? {
        if let entry = runs[id] { return entry.run }
        let run = snapshot.runs[id]
        runs[id] = (run?.version, run, nil, false)
        touched.append(id)
        return run
    }

    mutating func deadLetter(_ inbound: InboundCommand, _ error: RunError) {
        decision.messages.append(OutboundMessage.deadLetter(inbound, error))
        if let reply = OutboundMessage.reply(to: inbound, commandID: inbound.messageID, run: nil, error: error) {
            decision.messages.append(reply)
        }
        decision.results.append(CommandResult(runID: nil, commandID: inbound.messageID, command: nil, kind: .deadLettered(error)))
    }

    mutating func apply(_ inbound: InboundCommand, _ envelope: CommandEnvelope) {
        let runID = envelope.runID
        let key = envelope.commandID.map { CommandKey(runID: runID, commandID: $0) }

        if let key, let first = outcomes[key] ?? snapshot.outcomes[key] {
            answerRepeat(inbound, key, first)
            return
        }
        if let partition = inbound.partition {
            _ = current(runID)
            runs[runID]!.partition = partition
        }
        // Deadlines that elapsed before this command fire first, exactly as the timer sweep
        // would have fired them had it run a moment earlier.
        if let before = current(runID), let fired = CommandProcessor.fireDue(machine, before, at: now) {
            runs[runID]!.run = fired.run
            appendEvents(fired.events)
            decision.results.append(CommandResult(runID: runID, commandID: nil, command: nil, kind: .timerFired(events: fired.events.count)))
        }
        let run = current(runID)
        let outcome: Result<Transition, RunError>
        do throws(RunError) {
            let command = try envelope.decodeCommand()
            var previous: Run?
            if case .rerun(let spec) = command.kind, let previousID = spec.previousRunID, previousID != runID {
                previous = current(previousID)
            }
            outcome = machine.apply(command, to: run, previous: previous, at: now)
        } catch {
            outcome = .failure(error)
        }
        switch outcome {
        case .success(let transition):
            runs[runID]!.run = transition.run
            if transition.events.isEmpty { runs[runID]!.changed = true }
            appendEvents(transition.events)
            record(key, CommandOutcome(command: envelope.commandName, error: nil))
            if let reply = OutboundMessage.reply(to: inbound, commandID: envelope.commandID, run: transition.run, error: nil) {
                decision.messages.append(reply)
            }
            decision.results.append(CommandResult(runID: runID, commandID: envelope.commandID, command: envelope.commandName,
                                                  kind: .applied(events: transition.events.count)))
        case .failure(let error):
            record(key, CommandOutcome(command: envelope.commandName, error: error))
            decision.messages.append(OutboundMessage.rejection(
                runID: runID, commandID: envelope.commandID, command: envelope.commandName, error: error,
                afterSeq: run?.version ?? 0, at: now))
            if let reply = OutboundMessage.reply(to: inbound, commandID: envelope.commandID, run: run, error: error) {
                decision.messages.append(reply)
            }
            decision.results.append(CommandResult(runID: runID, commandID: envelope.commandID, command: envelope.commandName,
                                                  kind: .refused(error)))
        }
    }

    /// A command id seen before: its effect is already stored. Make sure its events reach the
    /// broker (a worker may have died before publishing them), then answer as the first time.
    mutating func answerRepeat(_ inbound: InboundCommand, _ key: CommandKey, _ first: CommandOutcome) {
        let run = current(key.runID)
        for row in pendingOutbox[key.runID] ?? [] where queuedOutbox.insert(row.id).inserted {
            decision.messages.append(OutboundMessage(outbox: row))
        }
        if let error = first.error {
            decision.messages.append(OutboundMessage.rejection(
                runID: key.runID, commandID: key.commandID, command: first.command, error: error,
                afterSeq: run?.version ?? 0, at: now))
        }
        if let reply = OutboundMessage.reply(to: inbound, commandID: key.commandID, run: run, error: first.error) {
            decision.messages.append(reply)
        }
        decision.results.append(CommandResult(runID: key.runID, commandID: key.commandID, command: first.command,
                                              kind: .duplicate(first)))
    }

    mutating func fireTimer(_ runID: String) {
        guard let run = current(runID), let fired = CommandProcessor.fireDue(machine, run, at: now) else { return }
        if let due = RunStateMachine.nextDeadline(of: run) {
            decision.observations.append(.timerFired(latenessS: Double(now.milliseconds - due.milliseconds) / 1000))
        }
        runs[runID]!.run = fired.run
        appendEvents(fired.events)
        decision.results.append(CommandResult(runID: runID, commandID: nil, command: nil, kind: .timerFired(events: fired.events.count)))
    }

    mutating func record(_ key: CommandKey?, _ outcome: CommandOutcome) {
        guard let key else { return }
        outcomes[key] = outcome
        decision.commit.outcomes.append((key, outcome))
    }

    mutating func appendEvents(_ events: [RunEvent]) {
        for event in events {
            observe(event)
            let row = OutboxMessage(
                runID: event.runID, seq: event.seq, type: event.type.rawValue, status: event.status.rawValue,
                routingKey: event.routingKey, messageID: event.eventID, body: event.encode(), writtenAt: now)
            decision.outboxSlots.append((decision.messages.count, decision.commit.outbox.count))
            decision.commit.outbox.append(row)
            decision.messages.append(OutboundMessage(outbox: row))
        }
    }

    /// Metrics' view of an event: finished runs and actions.
    mutating func observe(_ event: RunEvent) {
        let run = runs[event.runID]?.run
        if let action = event.action, event.type == .actionCompleted || event.type == .actionFailed {
            decision.observations.append(.actionFinished(
                agentID: run?.agentID, actionType: action.type.rawValue, status: action.status,
                durationS: Double(event.occurredAt.milliseconds - action.requestedAt.milliseconds) / 1000))
        }
        if event.status.isTerminal, event.previousStatus?.isTerminal != true, let run {
            decision.observations.append(.runFinished(
                status: event.status, stopReason: event.stopReason ?? run.stopReason, agentID: run.agentID,
                durationS: Double(event.occurredAt.milliseconds - run.createdAt.milliseconds) / 1000, attempts: run.attempt))
        }
    }

    /// One write per run that changed (or whose partition is now known), version-checked.
    mutating func finish() {
        for id in touched {
            guard let entry = runs[id], let run = entry.run,
                run.version != entry.stored || entry.partition != nil || entry.changed
            else { continue }
            decision.commit.runs.append(RunWrite(
                run: run, previousVersion: entry.stored, nextDeadline: RunStateMachine.nextDeadline(of: run),
                partition: entry.partition))
        }
    }
}

extension OutboundMessage {
    static func rejection(runID: String, commandID: String?, command: String?, error: RunError, afterSeq: Int64, at now: Timestamp)
        -> OutboundMessage
    {
        let rejected = CommandRejected(runID: runID, commandID: commandID, command: command, error: error,
                                       afterSeq: afterSeq, occurredAt: now)
        return OutboundMessage(
            destination: .events, routingKey: rejected.routingKey, messageID: rejected.messageID, type: CommandRejected.type,
            headers: rejected.amqpHeaders,
            body: rejected.encode())
    }

    static func reply(to inbound: InboundCommand, commandID: String?, run: Run?, error: RunError?) -> OutboundMessage? {
        guard let replyTo = inbound.replyTo, !replyTo.isEmpty else { return nil }
        let reply = CommandReply(commandID: commandID, ok: error == nil, run: run, error: error)
        return OutboundMessage(
            destination: .reply, routingKey: replyTo, correlationID: inbound.correlationID, type: "reply",
            body: reply.encode(), persistent: false)
    }

    static func deadLetter(_ inbound: InboundCommand, _ error: RunError) -> OutboundMessage {
        OutboundMessage(
            destination: .dead, routingKey: inbound.routingKey, messageID: inbound.messageID,
            headers: error.deadLetterHeaders(originalRoutingKey: inbound.routingKey),
            body: inbound.body)
    }
}
