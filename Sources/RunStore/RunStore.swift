import RunContract

/// An event (or other message) written in the same transaction as the state change that
/// caused it, and published after commit: the transactional outbox. A row stays until the
/// broker confirmed it, so a worker that dies in between leaves it for the next flush.
public struct OutboxMessage: Sendable, Hashable {
    /// Assigned by the store; 0 before insertion.
    public var id: Int64
    public var runID: String
    public var seq: Int64
    public var type: String
    public var status: String
    public var routingKey: String
    public var messageID: String
    public var body: [UInt8]
    public var writtenAt: Timestamp

    public init(
        id: Int64 = 0, runID: String, seq: Int64, type: String, status: String, routingKey: String,
        messageID: String, body: [UInt8], writtenAt: Timestamp
    ) {
        self.writtenAt = writtenAt
        self.id = id
        self.runID = runID
        self.seq = seq
        self.type = type
        self.status = status
        self.routingKey = routingKey
        self.messageID = messageID
        self.body = body
    }
}

/// What a command did the first time: the de-duplication record. A repeated command id is
/// answered from this, refusals included, and never applied again.
public struct CommandOutcome: Sendable, Hashable {
    public var command: String?
    public var error: RunError?
    public var ok: Bool { error == nil }

    public init(command: String?, error: RunError?) {
        self.command = command
        self.error = error
    }
}

public struct StoreError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: RawRepresentable, Sendable, Hashable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        /// Another writer changed the run since it was read: reload and apply again.
        public static let versionConflict = Code(rawValue: "version_conflict")
        /// The store is busy or unreachable; the operation may succeed if retried.
        public static let unavailable = Code(rawValue: "unavailable")
        /// A stored row could not be decoded.
        public static let corrupt = Code(rawValue: "corrupt")
        public static let invalidURL = Code(rawValue: "invalid_url")
    }

    public var code: Code
    public var message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { "store \(code.rawValue): \(message)" }
}

/// The writes of one transaction. Everything done through it commits together or not at all.
public protocol RunStoreTransaction {
    func run(_ runID: String) throws -> Run?
    func outcome(runID: String, commandID: String) throws -> CommandOutcome?
    /// Inserts (`previousVersion == nil`) or replaces the run, guarded by its version: when the
    /// stored run is not at `previousVersion`, throws `StoreError.versionConflict`.
    /// `nextDeadline` (from the state machine) indexes the run for the timer sweep;
    /// `partition` records which command partition the run's commands arrive on, so that only
    /// that partition's owner fires its timers (nil keeps what was stored).
    func save(_ run: Run, previousVersion: Int64?, nextDeadline: Timestamp?, partition: Int?) throws
    /// Returns the ids given to the rows, in order.
    func appendOutbox(_ messages: [OutboxMessage]) throws -> [Int64]
    /// Deletes outbox rows the broker confirmed.
    func removeOutbox(ids: [Int64]) throws
    /// The run's rows not yet confirmed by the broker, oldest first.
    func pendingOutbox(runID: String) throws -> [OutboxMessage]
    func recordOutcome(runID: String, commandID: String, _ outcome: CommandOutcome) throws
}

/// Durable runs, the outbox and de-duplication records. Small on purpose: SQLite and an
/// in-memory store implement it; PostgreSQL can later.
public protocol RunStore: Sendable {
    /// Runs `body` in one write transaction, serialised against every other writer (in this
    /// process and in others sharing the store). Throws from `body` roll back.
    func transaction<T>(_ body: (any RunStoreTransaction) throws -> T) throws -> T
    func run(_ runID: String) throws -> Run?
    /// Most recently updated first.
    func runs(status: RunStatus?, agentID: String?, limit: Int) throws -> [Run]
    /// Unconfirmed outbox rows, oldest first, written at or before `writtenBefore` (so that a
    /// sweep leaves alone what a live worker is about to publish itself).
    func pendingOutbox(writtenBefore: Timestamp, limit: Int) throws -> [OutboxMessage]
    func removeOutbox(ids: [Int64]) throws
    /// Ids of non-terminal runs with a deadline at or before `time`, earliest first, among
    /// the runs of `partitions` (all runs when nil).
    func runsDue(at time: Timestamp, partitions: [Int]?, limit: Int) throws -> [String]
    /// Counts one more failed or interrupted delivery of a message (or, with `increment`
    /// false, only notes its error) and returns the count so far: the poison-message guard.
    /// Its own transaction.
    func recordDeliveryAttempt(key: String, error: String?, increment: Bool, at time: Timestamp) throws -> Int
    /// The last error recorded for a message, if any.
    func lastDeliveryError(key: String) throws -> String?
}

extension RunStoreTransaction {
    public func save(_ run: Run, previousVersion: Int64?, nextDeadline: Timestamp?) throws {
        try save(run, previousVersion: previousVersion, nextDeadline: nextDeadline, partition: nil)
    }
}

extension RunStore {
    public func recordDeliveryAttempt(key: String, error: String?, at time: Timestamp) throws -> Int {
        try recordDeliveryAttempt(key: key, error: error, increment: true, at: time)
    }

    public func runsDue(at time: Timestamp, limit: Int) throws -> [String] {
        try runsDue(at: time, partitions: nil, limit: limit)
    }
}
