import RunContract

/// What an event subscription yields, in order.
public enum RunUpdate: Sendable, Hashable {
    /// A state change, each `(run_id, seq)` once.
    case event(RunEvent)
    /// A refused command (`command_rejected`); it has no `seq` and is passed on as it comes.
    case rejected(CommandRejected)
    /// Events `expected ..< got` of `runID` were missed (and could not be read back from the
    /// worker's history); the event `got` follows.
    case gap(runID: String, expected: Int64, got: Int64)
    /// The connection was lost and is back; the queue is bound again. Events published
    /// meanwhile were missed: they are read back from the history when an HTTP base URL is
    /// configured, else the next event of each run reports the gap.
    case reconnected
    /// A message this client cannot read: an event type newer than this library (clients must
    /// ignore those, says the contract), or a malformed body. Repeats of a known `seq` are
    /// dropped like events'.
    case unrecognized(UnrecognizedMessage)

    /// The run concerned, when there is one.
    public var runID: String? {
        switch self {
        case .event(let e): e.runID
        case .rejected(let r): r.runID
        case .gap(let id, _, _): id
        case .reconnected: nil
        case .unrecognized(let u): u.runID
        }
    }
}

/// A message on the events exchange that is neither a known event nor a `command_rejected`.
public struct UnrecognizedMessage: Sendable, Hashable {
    public var routingKey: String
    /// The body's `type`, when it has one.
    public var type: String?
    public var runID: String?
    public var seq: Int64?
    public var body: [UInt8]
    /// Why it could not be read.
    public var reason: String

    public init(routingKey: String, type: String?, runID: String?, seq: Int64?, body: [UInt8], reason: String) {
        self.routingKey = routingKey
        self.type = type
        self.runID = runID
        self.seq = seq
        self.body = body
        self.reason = reason
    }
}

extension RunUpdate {
    /// Reads one message of the events exchange: `.event`, `.rejected` or `.unrecognized`.
    /// `amqpType` is the message's AMQP `type` property (the worker sets it to the event type).
    public static func decode(body: [UInt8], routingKey: String = "", amqpType: String? = nil) -> RunUpdate {
        let json: JSONValue
        do {
            json = try JSONValue.parse(body)
        } catch {
            return .unrecognized(UnrecognizedMessage(
                routingKey: routingKey, type: amqpType, runID: nil, seq: nil, body: body, reason: "not JSON: \(error)"))
        }
        return decode(json: json, body: body, routingKey: routingKey, amqpType: amqpType)
    }

    static func decode(json: JSONValue, body: [UInt8], routingKey: String, amqpType: String?) -> RunUpdate {
        let type = json["type"]?.stringValue ?? amqpType
        func unrecognized(_ reason: String) -> RunUpdate {
            .unrecognized(UnrecognizedMessage(
                routingKey: routingKey, type: type, runID: json["run_id"]?.stringValue, seq: json["seq"]?.intValue,
                body: body, reason: reason))
        }
        if type == CommandRejected.type {
            do { return .rejected(try CommandRejected(json: json)) } catch { return unrecognized(error.description) }
        }
        guard let type, EventType(rawValue: type) != nil else {
            return unrecognized("unknown event type \(type ?? "(none)")")
        }
        do { return .event(try RunEvent(json: json)) } catch { return unrecognized(error.description) }
    }
}

/// The outcome a reply stands for: the snapshot when the command was applied, the contract's
/// refusal (`RunError`: code and message) when it was not.
extension CommandReply {
    public func outcome() -> Result<Run, RunError> {
        if let error { return .failure(error) }
        guard ok else { return .failure(RunError(.malformedMessage, "reply says ok false without an error")) }
        guard let run else { return .failure(RunError(.malformedMessage, "reply says ok but holds no run")) }
        return .success(run)
    }
}
