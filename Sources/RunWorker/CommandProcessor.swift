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

    init(outbox row: OutboxMessage) {
        self.init(
            destination: .events, routingKey: row.routingKey, messageID: row.messageID, type: row.type,
            headers: [("run_id", .string(row.runID)), ("seq", .int(row.seq)), ("type", .string(row.type)), ("status", .string(row.status))],
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

/// The result of one batch: what to publish (in order) and what became of each command.
public struct ProcessedBatch: Sendable {
    public var messages: [OutboundMessage]
    public var results: [CommandResult]
}

/// Applies a batch of inbound commands in one store transaction: decode and validate, look up
/// the de-duplication record, apply the pure state machine, and write runs, outbox rows and
/// outcomes together. It publishes nothing itself; the caller publishes `messages` with
/// confirms and only then acknowledges the deliveries.
public struct CommandProcessor: Sendable {
    public var store: any RunStore
    public var machine: RunStateMachine
    public var maxBodyBytes: Int
    public var clock: @Sendable () -> Timestamp

    public init(
        store: any RunStore, machine: RunStateMachine, maxBodyBytes: Int = CommandEnvelope.defaultMaxBodyBytes,
        clock: @escaping @Sendable () -> Timestamp
    ) {
        self.store = store
        self.machine = machine
        self.maxBodyBytes = maxBodyBytes
        self.clock = clock
    }

    /// `confirmedOutbox`: rows of earlier batches the broker has confirmed, deleted in this
    /// batch's transaction rather than in one of their own (one commit per batch, not two).
    /// `published`: outbox rows this worker has already published (awaiting their confirms),
    /// which a duplicate command must not publish again.
    public func process(
        _ batch: [InboundCommand], confirmedOutbox: [Int64] = [], published: Set<Int64> = []
    ) throws -> ProcessedBatch {
        let now = clock()
        var messages: [OutboundMessage] = []
        var results: [CommandResult] = []

        // Stage 1 outside the transaction: size, JSON, run_id. What fails here has no run.
        var attributable: [(InboundCommand, CommandEnvelope)] = []
        for inbound in batch {
            do {
                let envelope = try CommandEnvelope.parse(
                    body: inbound.body, routingKey: inbound.routingKey, messageID: inbound.messageID,
                    maxBodyBytes: maxBodyBytes)
                attributable.append((inbound, envelope))
            } catch {
                messages.append(Self.deadLetter(inbound, error))
                if let reply = Self.reply(to: inbound, commandID: inbound.messageID, run: nil, error: error) {
                    messages.append(reply)
                }
                results.append(CommandResult(runID: nil, commandID: inbound.messageID, command: nil, kind: .deadLettered(error)))
            }
        }
        guard !attributable.isEmpty else {
            try store.removeOutbox(ids: confirmedOutbox)
            return ProcessedBatch(messages: messages, results: results)
        }

        try store.transaction { tx in
            try tx.removeOutbox(ids: confirmedOutbox)
            // Runs touched by this batch: the version they had in the store, where they are now,
            // and the partition their latest command came from.
            var runs: [String: (stored: Int64?, run: Run?)] = [:]
            var partitions: [String: Int] = [:]
            // Outbox rows this batch already publishes, so a duplicate does not queue them twice.
            var queuedOutbox = published
            func current(_ id: String) throws -> Run? {
                if let entry = runs[id] { return entry.run }
                let run = try tx.run(id)
                runs[id] = (run?.version, run)
                return run
            }

            for (inbound, envelope) in attributable {
                let runID = envelope.runID
                let commandID = envelope.commandID

                if let commandID, let first = try tx.outcome(runID: runID, commandID: commandID) {
                    // Seen before: its effect is already stored. Make sure its events reach the
                    // broker (a worker may have died before publishing them), then answer as before.
                    let run = try current(runID)
                    for row in try tx.pendingOutbox(runID: runID) where queuedOutbox.insert(row.id).inserted {
                        messages.append(OutboundMessage(outbox: row))
                    }
                    if let error = first.error {
                        messages.append(Self.rejection(runID: runID, commandID: commandID, command: first.command,
                                                       error: error, afterSeq: run?.version ?? 0, at: now))
                    }
                    if let reply = Self.reply(to: inbound, commandID: commandID, run: run, error: first.error) {
                        messages.append(reply)
                    }
                    results.append(CommandResult(runID: runID, commandID: commandID, command: first.command, kind: .duplicate(first)))
                    continue
                }

                if let partition = inbound.partition { partitions[runID] = partition }
                let outcome: Result<Transition, RunError>
                // Deadlines that elapsed before this command fire first, exactly as the timer
                // sweep would have fired them had it run a moment earlier.
                if let before = try current(runID), let fired = Self.fireDue(machine, before, at: now) {
                    runs[runID]?.run = fired.run
                    try appendEvents(fired.events, to: &messages, queued: &queuedOutbox, tx: tx, at: now)
                    results.append(CommandResult(runID: runID, commandID: nil, command: nil, kind: .timerFired(events: fired.events.count)))
                }
                let run = try current(runID)
                do throws(RunError) {
                    let command = try envelope.decodeCommand()
                    outcome = machine.apply(command, to: run, at: now)
                } catch {
                    outcome = .failure(error)
                }

                switch outcome {
                case .success(let transition):
                    runs[runID] = (runs[runID]?.stored ?? nil, transition.run)
                    try appendEvents(transition.events, to: &messages, queued: &queuedOutbox, tx: tx, at: now)
                    if let commandID {
                        try tx.recordOutcome(runID: runID, commandID: commandID,
                                             CommandOutcome(command: envelope.commandName, error: nil))
                    }
                    if let reply = Self.reply(to: inbound, commandID: commandID, run: transition.run, error: nil) {
                        messages.append(reply)
                    }
                    results.append(CommandResult(runID: runID, commandID: commandID, command: envelope.commandName,
                                                 kind: .applied(events: transition.events.count)))
                case .failure(let error):
                    if let commandID {
                        try tx.recordOutcome(runID: runID, commandID: commandID,
                                             CommandOutcome(command: envelope.commandName, error: error))
                    }
                    messages.append(Self.rejection(runID: runID, commandID: commandID, command: envelope.commandName,
                                                   error: error, afterSeq: run?.version ?? 0, at: now))
                    if let reply = Self.reply(to: inbound, commandID: commandID, run: run, error: error) {
                        messages.append(reply)
                    }
                    results.append(CommandResult(runID: runID, commandID: commandID, command: envelope.commandName, kind: .refused(error)))
                }
            }

            for (id, entry) in runs {
                guard let run = entry.run, run.version != entry.stored || partitions[id] != nil else { continue }
                try tx.save(run, previousVersion: entry.stored, nextDeadline: RunStateMachine.nextDeadline(of: run),
                            partition: partitions[id])
            }
        }
        return ProcessedBatch(messages: messages, results: results)
    }

    /// Fires the elapsed deadlines of these runs (the timer sweep), in one transaction. A run
    /// whose deadline is no longer relevant (completed meanwhile, fired by another worker) is
    /// left alone.
    public func fireTimers(runIDs: [String]) throws -> ProcessedBatch {
        let now = clock()
        var messages: [OutboundMessage] = []
        var results: [CommandResult] = []
        try store.transaction { tx in
            var queued: Set<Int64> = []
            for id in runIDs {
                guard let run = try tx.run(id), let fired = Self.fireDue(machine, run, at: now) else { continue }
                try appendEvents(fired.events, to: &messages, queued: &queued, tx: tx, at: now)
                try tx.save(fired.run, previousVersion: run.version, nextDeadline: RunStateMachine.nextDeadline(of: fired.run),
                            partition: nil)
                results.append(CommandResult(runID: id, commandID: nil, command: nil, kind: .timerFired(events: fired.events.count)))
            }
        }
        return ProcessedBatch(messages: messages, results: results)
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

    private func appendEvents(
        _ events: [RunEvent], to messages: inout [OutboundMessage], queued: inout Set<Int64>,
        tx: any RunStoreTransaction, at now: Timestamp
    ) throws {
        let rows = events.map { Self.outboxRow($0, at: now) }
        let ids = try tx.appendOutbox(rows)
        for (row, id) in zip(rows, ids) {
            var row = row
            row.id = id
            queued.insert(id)
            messages.append(OutboundMessage(outbox: row))
        }
    }

    // MARK: - Messages

    static func outboxRow(_ event: RunEvent, at now: Timestamp) -> OutboxMessage {
        OutboxMessage(
            runID: event.runID, seq: event.seq, type: event.type.rawValue, status: event.status.rawValue,
            routingKey: event.routingKey, messageID: event.eventID, body: event.encode(), writtenAt: now)
    }

    static func rejection(runID: String, commandID: String?, command: String?, error: RunError, afterSeq: Int64, at now: Timestamp)
        -> OutboundMessage
    {
        let rejected = CommandRejected(runID: runID, commandID: commandID, command: command, error: error,
                                       afterSeq: afterSeq, occurredAt: now)
        return OutboundMessage(
            destination: .events, routingKey: rejected.routingKey, messageID: rejected.messageID, type: "command_rejected",
            headers: [("run_id", .string(runID)), ("type", .string("command_rejected")), ("error_code", .string(error.code.rawValue))],
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
