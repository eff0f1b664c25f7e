// The contract's nouns as plain values. Encoding and decoding live in the codec files;
// the rules for moving between states live in RunStateMachine.

/// The version of the wire contract this code speaks (`docs/CONTRACT.md`, `docs/asyncapi.yaml`):
/// every message the worker publishes carries it in the `contract_version` header. A minor
/// version adds (optional fields, commands, event types, error codes, headers); a major one
/// would remove or change something clients rely on.
public enum ContractVersion {
    public static let current = "1.1"
    public static let header = "contract_version"
}

/// `[A-Za-z0-9_-]{1,128}`: the run id grammar, also the command routing key.
public enum RunID {
    public static func isValid(_ id: String) -> Bool {
        let bytes = id.utf8
        guard (1...128).contains(bytes.count) else { return false }
        return bytes.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == 0x5F || c == 0x2D
        }
    }
}

public enum RunStatus: String, Sendable, Hashable, CaseIterable {
    case created, running, waiting, retrying, completed, failed, cancelled

    public var isTerminal: Bool { self == .completed || self == .failed || self == .cancelled }
}

public enum StopReason: String, Sendable, Hashable, CaseIterable {
    case completed, error, cancelled, timeout
    case actionTimeout = "action_timeout"
    case maxAttempts = "max_attempts"
}

/// `{message, code?}` as carried by `fail`, `fail_action` and terminal events.
public struct ErrorInfo: Sendable, Hashable {
    public var message: String
    public var code: String?
    public init(message: String, code: String? = nil) {
        self.message = message
        self.code = code
    }
}

/// `config.retry`. Every field is optional on the wire; omitted ones take the worker's defaults
/// (see `RunConfig.merged(over:)`).
public struct RetryPolicy: Sendable, Hashable {
    /// Counts all attempts: 1 means no retry.
    public var maxAttempts: Int?
    public var delayS: Double?
    /// Multiplier applied to the delay after each attempt (contract default 2.0).
    public var backoff: Double?
    public var maxDelayS: Double?
    /// Whether a timed-out attempt may be retried (contract default false).
    public var retryTimeouts: Bool?

    public init(
        maxAttempts: Int? = nil, delayS: Double? = nil, backoff: Double? = nil,
        maxDelayS: Double? = nil, retryTimeouts: Bool? = nil
    ) {
        self.maxAttempts = maxAttempts
        self.delayS = delayS
        self.backoff = backoff
        self.maxDelayS = maxDelayS
        self.retryTimeouts = retryTimeouts
    }

    public func merged(over defaults: RetryPolicy?) -> RetryPolicy {
        guard let d = defaults else { return self }
        return RetryPolicy(
            maxAttempts: maxAttempts ?? d.maxAttempts, delayS: delayS ?? d.delayS,
            backoff: backoff ?? d.backoff, maxDelayS: maxDelayS ?? d.maxDelayS,
            retryTimeouts: retryTimeouts ?? d.retryTimeouts)
    }
}

/// `config.webhook`: where the worker POSTs the run's events (when webhooks are enabled on the
/// worker). `url` is http or https with a host; `events` names the event types to deliver, nil
/// meaning the terminal ones (events whose `status` is completed, failed or cancelled).
public struct WebhookConfig: Sendable, Hashable {
    public var url: String
    public var events: [EventType]?

    public init(url: String, events: [EventType]? = nil) {
        self.url = url
        self.events = events
    }

    /// Field by field, like the rest of `config`: `events` not given here comes from `defaults`.
    public func merged(over defaults: WebhookConfig?) -> WebhookConfig {
        WebhookConfig(url: url, events: events ?? defaults?.events)
    }

    /// Whether an event of this type and status is delivered: the listed types, or by default
    /// the terminal events.
    public func matches(type: String, status: String?) -> Bool {
        if let events { return events.contains { $0.rawValue == type } }
        return status.flatMap(RunStatus.init(rawValue:))?.isTerminal ?? false
    }
}

/// A run's `config`. Durations are seconds (> 0, fractions allowed); nil means no limit.
public struct RunConfig: Sendable, Hashable {
    /// Start to finish of one attempt.
    public var timeoutS: Double?
    /// Created to started.
    public var startTimeoutS: Double?
    /// Default per action; an action's own `timeout_s` overrides it.
    public var actionTimeoutS: Double?
    public var retry: RetryPolicy?
    /// Where the worker POSTs this run's events; nil: the worker's `webhooks.default_url`, if any.
    public var webhook: WebhookConfig?

    public init(
        timeoutS: Double? = nil, startTimeoutS: Double? = nil, actionTimeoutS: Double? = nil,
        retry: RetryPolicy? = nil, webhook: WebhookConfig? = nil
    ) {
        self.timeoutS = timeoutS
        self.startTimeoutS = startTimeoutS
        self.actionTimeoutS = actionTimeoutS
        self.retry = retry
        self.webhook = webhook
    }

    /// Values given here win; omitted ones come from `defaults` (the worker's configuration).
    public func merged(over defaults: RunConfig) -> RunConfig {
        RunConfig(
            timeoutS: timeoutS ?? defaults.timeoutS,
            startTimeoutS: startTimeoutS ?? defaults.startTimeoutS,
            actionTimeoutS: actionTimeoutS ?? defaults.actionTimeoutS,
            retry: retry.map { $0.merged(over: defaults.retry) } ?? defaults.retry,
            webhook: webhook.map { $0.merged(over: defaults.webhook) } ?? defaults.webhook)
    }
}

public enum ActionType: String, Sendable, Hashable, CaseIterable {
    case toolCall = "tool_call"
    case sendMessage = "send_message"
    case systemAction = "system_action"
}

/// An action as `require_action` asks for it. `fields` holds every field other than `id`,
/// `type` and `timeout_s` (`tool`/`args`, `recipient`/`content`, `action`/`duration_s`, and
/// anything extra the producer sent), in the producer's order.
public struct ActionRequest: Sendable, Hashable {
    public var id: String?
    public var type: ActionType
    public var timeoutS: Double?
    /// The action times out when no `heartbeat_action` arrives within this long of its request
    /// or of its latest heartbeat.
    public var heartbeatTimeoutS: Double?
    public var fields: JSONObject

    public init(
        id: String? = nil, type: ActionType, timeoutS: Double? = nil, heartbeatTimeoutS: Double? = nil,
        fields: JSONObject = [:]
    ) {
        self.id = id
        self.type = type
        self.timeoutS = timeoutS
        self.heartbeatTimeoutS = heartbeatTimeoutS
        self.fields = fields
    }
}

public enum ActionStatus: String, Sendable, Hashable, CaseIterable {
    case pending, completed, failed, cancelled
    case timedOut = "timed_out"
}

/// An action the run asked for, with where it stands. A run keeps every action it ever asked
/// for, so that a late `complete_action` is told `invalid_transition` rather than
/// `action_not_found`.
public struct Action: Sendable, Hashable {
    public var id: String
    public var type: ActionType
    public var fields: JSONObject
    public var timeoutS: Double?
    public var status: ActionStatus
    public var requestedAt: Timestamp
    /// When the action times out, from its own `timeout_s` or the run's `action_timeout_s`.
    public var deadline: Timestamp?
    public var result: JSONValue?
    public var error: ErrorInfo?
    /// The attempt that asked for it.
    public var attempt: Int
    /// Heartbeats (`heartbeat_action`): recorded on the action, not as events.
    public var heartbeatTimeoutS: Double?
    public var heartbeatCount: Int
    public var lastHeartbeatAt: Timestamp?
    /// The `details` of the latest heartbeat that carried some.
    public var heartbeatDetails: JSONValue?
    /// When the heartbeat timeout fires: `heartbeat_timeout_s` after the request or the latest
    /// heartbeat.
    public var heartbeatDeadline: Timestamp?

    public init(
        id: String, type: ActionType, fields: JSONObject = [:], timeoutS: Double? = nil,
        status: ActionStatus = .pending, requestedAt: Timestamp, deadline: Timestamp? = nil,
        result: JSONValue? = nil, error: ErrorInfo? = nil, attempt: Int = 1,
        heartbeatTimeoutS: Double? = nil, heartbeatCount: Int = 0, lastHeartbeatAt: Timestamp? = nil,
        heartbeatDetails: JSONValue? = nil, heartbeatDeadline: Timestamp? = nil
    ) {
        self.heartbeatTimeoutS = heartbeatTimeoutS
        self.heartbeatCount = heartbeatCount
        self.lastHeartbeatAt = lastHeartbeatAt
        self.heartbeatDetails = heartbeatDetails
        self.heartbeatDeadline = heartbeatDeadline
        self.id = id
        self.type = type
        self.fields = fields
        self.timeoutS = timeoutS
        self.status = status
        self.requestedAt = requestedAt
        self.deadline = deadline
        self.result = result
        self.error = error
        self.attempt = attempt
    }
}

/// What `create` (and `start` on an unknown run) registers.
public struct RunSpec: Sendable, Hashable {
    public var agentID: String?
    public var input: JSONValue?
    public var metadata: JSONObject?
    public var config: RunConfig?
    public var previousRunID: String?
    public var resumeFrom: JSONValue?

    public init(
        agentID: String? = nil, input: JSONValue? = nil, metadata: JSONObject? = nil,
        config: RunConfig? = nil, previousRunID: String? = nil, resumeFrom: JSONValue? = nil
    ) {
        self.agentID = agentID
        self.input = input
        self.metadata = metadata
        self.config = config
        self.previousRunID = previousRunID
        self.resumeFrom = resumeFrom
    }
}

/// The commands' wire names (`command` in a body), in the contract's order. The one list of
/// them: `Command.Kind.commandName`, `Command.names` and the codec all derive from it.
public enum CommandName: String, Sendable, Hashable, CaseIterable {
    case create, start
    case requireAction = "require_action"
    case completeAction = "complete_action"
    case failAction = "fail_action"
    case complete, fail, cancel
    case heartbeatAction = "heartbeat_action"
    case rerun
}

/// A decoded, validated command.
public struct Command: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        case create(RunSpec)
        case start(RunSpec)
        case requireAction([ActionRequest])
        case completeAction(actionID: String, result: JSONValue?)
        case failAction(actionID: String, error: ErrorInfo)
        case complete(result: JSONValue?, usage: JSONValue?)
        case fail(error: ErrorInfo, retryable: Bool)
        case cancel(reason: String?)
        /// Records a heartbeat on a pending action (no event, no new version).
        case heartbeatAction(actionID: String, details: JSONValue?)
        /// Creates and starts a new run (`runID`) from the finished run `spec.previousRunID`,
        /// inheriting what `spec` leaves out.
        case rerun(RunSpec)

        /// The wire name, typed.
        public var commandName: CommandName {
            switch self {
            case .create: .create
            case .start: .start
            case .requireAction: .requireAction
            case .completeAction: .completeAction
            case .failAction: .failAction
            case .complete: .complete
            case .fail: .fail
            case .cancel: .cancel
            case .heartbeatAction: .heartbeatAction
            case .rerun: .rerun
            }
        }

        /// The wire name (`require_action`, ...).
        public var name: String { commandName.rawValue }
    }

    /// Every wire name, in the contract's order.
    public static let names = CommandName.allCases.map(\.rawValue)

    public var runID: String
    /// `message_id`, or the body's `command_id`; nil means no de-duplication.
    public var commandID: String?
    public var expectedVersion: Int64?
    public var kind: Kind

    public init(runID: String, commandID: String? = nil, expectedVersion: Int64? = nil, kind: Kind) {
        self.runID = runID
        self.commandID = commandID
        self.expectedVersion = expectedVersion
        self.kind = kind
    }
}

/// Everything the worker keeps about one run. `version` is the `seq` of its latest event.
public struct Run: Sendable, Hashable {
    public var runID: String
    public var status: RunStatus
    public var version: Int64
    public var attempt: Int
    public var agentID: String?
    public var input: JSONValue?
    public var metadata: JSONObject?
    /// The effective config: the run's own values merged over the worker's defaults.
    public var config: RunConfig
    /// Every action ever asked for, in order; `pendingActions` filters them.
    public var actions: [Action]
    public var result: JSONValue?
    public var usage: JSONValue?
    public var error: ErrorInfo?
    public var stopReason: StopReason?
    public var previousRunID: String?
    public var resumeFrom: JSONValue?
    public var createdAt: Timestamp
    public var startedAt: Timestamp?
    public var updatedAt: Timestamp
    public var completedAt: Timestamp?
    /// When the current attempt began (the first `started`, or the latest retry).
    public var attemptStartedAt: Timestamp?
    /// When a `retrying` run starts its next attempt.
    public var nextAttemptAt: Timestamp?

    public init(
        runID: String, status: RunStatus, version: Int64, attempt: Int = 1, agentID: String? = nil,
        input: JSONValue? = nil, metadata: JSONObject? = nil, config: RunConfig = RunConfig(),
        actions: [Action] = [], result: JSONValue? = nil, usage: JSONValue? = nil,
        error: ErrorInfo? = nil, stopReason: StopReason? = nil, previousRunID: String? = nil,
        resumeFrom: JSONValue? = nil, createdAt: Timestamp, startedAt: Timestamp? = nil,
        updatedAt: Timestamp, completedAt: Timestamp? = nil, attemptStartedAt: Timestamp? = nil,
        nextAttemptAt: Timestamp? = nil
    ) {
        self.runID = runID
        self.status = status
        self.version = version
        self.attempt = attempt
        self.agentID = agentID
        self.input = input
        self.metadata = metadata
        self.config = config
        self.actions = actions
        self.result = result
        self.usage = usage
        self.error = error
        self.stopReason = stopReason
        self.previousRunID = previousRunID
        self.resumeFrom = resumeFrom
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.updatedAt = updatedAt
        self.completedAt = completedAt
        self.attemptStartedAt = attemptStartedAt
        self.nextAttemptAt = nextAttemptAt
    }

    public var pendingActions: [Action] { actions.filter { $0.status == .pending } }
}

public enum EventType: String, Sendable, Hashable, CaseIterable {
    case created, started, completed, failed, cancelled
    case actionRequired = "action_required"
    case actionCompleted = "action_completed"
    case actionFailed = "action_failed"
    case retryScheduled = "retry_scheduled"
    case timedOut = "timed_out"
}

/// One state change, published on `<prefix>.events` with routing key `run.<run_id>.<type>`.
/// Optional fields are present only for the event types that carry them.
public struct RunEvent: Sendable, Hashable {
    public var runID: String
    public var seq: Int64
    public var type: EventType
    public var status: RunStatus
    public var previousStatus: RunStatus?
    public var attempt: Int
    public var occurredAt: Timestamp
    /// The command that caused it; nil for timers.
    public var commandID: String?

    /// `action_required`, `action_completed`, `action_failed`.
    public var action: Action?
    /// `created` (and the first `started` of a new run): what was registered.
    public var spec: RunSpec?
    /// Terminal events and `completed`.
    public var stopReason: StopReason?
    public var result: JSONValue?
    public var usage: JSONValue?
    public var error: ErrorInfo?
    /// `cancelled`: the reason given.
    public var reason: String?
    /// `retry_scheduled`.
    public var nextAttemptAt: Timestamp?
    /// `cancelled`, `timed_out`, `failed`: ids of pending actions that were stopped with the run.
    public var stoppedActionIDs: [String]?

    public init(
        runID: String, seq: Int64, type: EventType, status: RunStatus, previousStatus: RunStatus?,
        attempt: Int, occurredAt: Timestamp, commandID: String?, action: Action? = nil,
        spec: RunSpec? = nil, stopReason: StopReason? = nil, result: JSONValue? = nil,
        usage: JSONValue? = nil, error: ErrorInfo? = nil, reason: String? = nil,
        nextAttemptAt: Timestamp? = nil, stoppedActionIDs: [String]? = nil
    ) {
        self.runID = runID
        self.seq = seq
        self.type = type
        self.status = status
        self.previousStatus = previousStatus
        self.attempt = attempt
        self.occurredAt = occurredAt
        self.commandID = commandID
        self.action = action
        self.spec = spec
        self.stopReason = stopReason
        self.result = result
        self.usage = usage
        self.error = error
        self.reason = reason
        self.nextAttemptAt = nextAttemptAt
        self.stoppedActionIDs = stoppedActionIDs
    }

    /// `version` is the `seq` of the run's latest event; for the event itself, its own seq.
    public var version: Int64 { seq }
    public var eventID: String { "\(runID):\(seq)" }
    public var routingKey: String { "run.\(runID).\(type.rawValue)" }
}

/// `command_rejected`: a refusal, published so that subscribers see it. It has no `seq` and
/// does not advance the run's.
public struct CommandRejected: Sendable, Hashable {
    public var runID: String
    public var commandID: String?
    /// The command's name when it could be read.
    public var command: String?
    public var error: RunError
    /// The run's current `seq` (0 when the run does not exist).
    public var afterSeq: Int64
    public var occurredAt: Timestamp

    public init(
        runID: String, commandID: String?, command: String?, error: RunError, afterSeq: Int64,
        occurredAt: Timestamp
    ) {
        self.runID = runID
        self.commandID = commandID
        self.command = command
        self.error = error
        self.afterSeq = afterSeq
        self.occurredAt = occurredAt
    }

    public var messageID: String { "\(runID):rejected:\(commandID ?? "none")" }
    public var routingKey: String { "run.\(runID).\(Self.type)" }
}

/// The answer on `reply_to`: `{"command_id", "ok", "run", "error"?}`.
public struct CommandReply: Sendable, Hashable {
    public var commandID: String?
    public var ok: Bool
    public var run: Run?
    public var error: RunError?

    public init(commandID: String?, ok: Bool, run: Run?, error: RunError?) {
        self.commandID = commandID
        self.ok = ok
        self.run = run
        self.error = error
    }
}
