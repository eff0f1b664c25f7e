import Foundation
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

/// A command id within its run: the key of the de-duplication record.
public struct CommandKey: Sendable, Hashable {
    public var runID: String
    public var commandID: String
    public init(runID: String, commandID: String) {
        self.runID = runID
        self.commandID = commandID
    }
}

public struct StoreError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }
        /// Another writer changed a run (or recorded a command id) since it was read: reload
        /// and decide again. Nothing was written.
        public static let versionConflict = Code(rawValue: "version_conflict")
        /// The store is busy, unreachable or out of space; the operation may succeed if
        /// retried later. Nothing was written.
        public static let unavailable = Code(rawValue: "unavailable")
        /// A stored row could not be decoded.
        public static let corrupt = Code(rawValue: "corrupt")
        /// The store refused the write for a reason retrying will not change (a constraint,
        /// a malformed statement): a defect, not an outage.
        public static let rejected = Code(rawValue: "rejected")
        public static let invalidURL = Code(rawValue: "invalid_url")
        /// A fenced commit's lease is no longer held by its worker at its epoch (another worker
        /// took the partition, or the lease expired by the store's clock). Nothing was written;
        /// retrying will not help: the worker must stop working on the partition.
        public static let leaseLost = Code(rawValue: "lease_lost")
    }

    public var code: Code
    public var message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { "store \(code.rawValue): \(message)" }

    /// Whether trying again later may succeed (the worker requeues rather than counting the
    /// delivery as a failure).
    public var isTransient: Bool { code == .unavailable || code == .versionConflict }
}

/// What a batch needs from the store before it is decided: its runs and the outcomes of its
/// command ids. Read without locks; `commit` detects anything that changed meanwhile.
public struct StoreSnapshot: Sendable {
    /// The runs asked for that exist.
    public var runs: [String: Run]
    /// The outcomes recorded for the command keys asked for.
    public var outcomes: [CommandKey: CommandOutcome]

    public init(runs: [String: Run] = [:], outcomes: [CommandKey: CommandOutcome] = [:]) {
        self.runs = runs
        self.outcomes = outcomes
    }
}

/// One run written by a batch.
public struct RunWrite: Sendable {
    public var run: Run
    /// The version the batch read; nil when the batch creates the run. The write fails with
    /// `versionConflict` when the stored run is not at this version (or exists, for nil).
    public var previousVersion: Int64?
    /// From the state machine; indexes the run for the timer sweep (ignored for terminal runs).
    public var nextDeadline: Timestamp?
    /// The command partition the run's commands arrive on, so that only that partition's
    /// owner fires its timers; nil keeps what was stored.
    public var partition: Int?

    public init(run: Run, previousVersion: Int64?, nextDeadline: Timestamp?, partition: Int?) {
        self.run = run
        self.previousVersion = previousVersion
        self.nextDeadline = nextDeadline
        self.partition = partition
    }
}

/// Which runs to list (`RunStore.listRuns`): every filter is optional; statuses match any.
public struct RunQuery: Sendable, Hashable {
    public var statuses: [RunStatus]
    public var agentID: String?
    public var createdAfter: Timestamp?
    public var createdBefore: Timestamp?
    public var updatedAfter: Timestamp?
    public var updatedBefore: Timestamp?
    public var limit: Int
    /// Where the previous page ended (exclusive).
    public var after: RunCursor?

    public init(
        statuses: [RunStatus] = [], agentID: String? = nil, createdAfter: Timestamp? = nil, createdBefore: Timestamp? = nil,
        updatedAfter: Timestamp? = nil, updatedBefore: Timestamp? = nil, limit: Int = 50, after: RunCursor? = nil
    ) {
        self.statuses = statuses
        self.agentID = agentID
        self.createdAfter = createdAfter
        self.createdBefore = createdBefore
        self.updatedAfter = updatedAfter
        self.updatedBefore = updatedBefore
        self.limit = limit
        self.after = after
    }

    /// Whether `run` passes the filters (not the cursor): the in-memory store's query, and
    /// the contract the other stores' SQL keeps.
    public func matches(_ run: Run) -> Bool {
        if !statuses.isEmpty && !statuses.contains(run.status) { return false }
        if let agentID, run.agentID != agentID { return false }
        let created = run.createdAt.milliseconds
        let updated = run.updatedAt.milliseconds
        if let t = createdAfter, created <= t.milliseconds { return false }
        if let t = createdBefore, created >= t.milliseconds { return false }
        if let t = updatedAfter, updated <= t.milliseconds { return false }
        if let t = updatedBefore, updated >= t.milliseconds { return false }
        return true
    }
}

/// A position in the newest-first order of runs: (creation time, run id).
public struct RunCursor: Sendable, Hashable, Comparable {
    public var createdAtMs: Int64
    public var runID: String
    public init(createdAtMs: Int64, runID: String) {
        self.createdAtMs = createdAtMs
        self.runID = runID
    }
    public init(_ run: Run) { self.init(createdAtMs: run.createdAt.milliseconds, runID: run.runID) }

    /// Ascending order; pages go in descending order.
    public static func < (a: RunCursor, b: RunCursor) -> Bool {
        a.createdAtMs != b.createdAtMs ? a.createdAtMs < b.createdAtMs : a.runID < b.runID
    }

    /// Opaque to clients: `<ms>.<run id>` in base64url without padding.
    public var token: String {
        Data("\(createdAtMs).\(runID)".utf8).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    public init?(token: String) {
        guard token.count <= 1024 else { return nil }
        var b64 = token.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while b64.count % 4 != 0 { b64 += "=" }
        guard let data = Data(base64Encoded: b64), let text = String(data: data, encoding: .utf8),
            let dot = text.firstIndex(of: "."), let ms = Int64(text[..<dot])
        else { return nil }
        let id = String(text[text.index(after: dot)...])
        guard !id.isEmpty else { return nil }
        self.init(createdAtMs: ms, runID: id)
    }
}

public struct RunPage: Sendable {
    public var runs: [Run]
    /// The cursor of the next page; nil on the last one.
    public var next: RunCursor?
    public init(runs: [Run], next: RunCursor?) {
        self.runs = runs
        self.next = next
    }

    /// A page from up to `limit + 1` rows in order: the extra row only says there is more.
    public init(rows: [Run], limit: Int) {
        if rows.count > limit {
            self.init(runs: Array(rows.prefix(limit)), next: RunCursor(rows[limit - 1]))
        } else {
            self.init(runs: rows, next: nil)
        }
    }
}

/// What one retention pass removed.
public struct PruneResult: Sendable, Hashable {
    public var runs = 0
    public var events = 0
    public var commands = 0
    public init(runs: Int = 0, events: Int = 0, commands: Int = 0) {
        self.runs = runs
        self.events = events
        self.commands = commands
    }
    public var total: Int { runs + events + commands }
}

/// Everything one batch writes, committed together or not at all.
public struct StoreCommit: Sendable {
    public var runs: [RunWrite]
    /// Appended in order; `commit` returns their ids.
    public var outbox: [OutboxMessage]
    /// De-duplication records. A key already recorded is a conflict (`versionConflict`):
    /// another writer applied that command meanwhile.
    public var outcomes: [(key: CommandKey, outcome: CommandOutcome)]
    /// Outbox rows of earlier batches that the broker confirmed, marked published in this
    /// transaction rather than one of their own (they stay as the run's history).
    public var removeOutbox: [Int64]
    /// When set, the commit checks in its own transaction that every listed lease is still
    /// held by `workerID` at its epoch and unexpired by the store's clock, and otherwise writes
    /// nothing and throws `leaseLost`. Nil or no leases: nothing is checked. An empty batch
    /// writes nothing and checks nothing.
    public var fence: (workerID: String, leases: [PartitionLease])?

    public init(
        runs: [RunWrite] = [], outbox: [OutboxMessage] = [], outcomes: [(key: CommandKey, outcome: CommandOutcome)] = [],
        removeOutbox: [Int64] = [], fence: (workerID: String, leases: [PartitionLease])? = nil
    ) {
        self.runs = runs
        self.outbox = outbox
        self.outcomes = outcomes
        self.removeOutbox = removeOutbox
        self.fence = fence
    }

    public var isEmpty: Bool { runs.isEmpty && outbox.isEmpty && outcomes.isEmpty && removeOutbox.isEmpty }

    /// A commit writes each run at most once (its state after the whole batch): two writes of
    /// one run in a commit are a caller's defect, refused as `rejected` before anything is written.
    public func checkOneWritePerRun() throws(StoreError) {
        var seen = Set<String>()
        for write in runs where !seen.insert(write.run.runID).inserted {
            throw StoreError(.rejected, "run \(write.run.runID) is written twice in one commit")
        }
    }
}

/// Durable runs, the outbox, de-duplication records and delivery counts.
///
/// The concurrency contract is optimistic: `load` reads without locking anything, the caller
/// decides in memory, and `commit` writes the whole batch in one transaction in which every
/// run write is checked against the version that was read (and every command id against
/// being recorded meanwhile). A conflict writes nothing and throws `versionConflict`; the
/// caller loads again and decides again. No store promises a global write lock. The version
/// moves only with events: a write that changes a run without one (a heartbeat) is not
/// detected by another writer's version check, so such writes rely on the partition lease
/// (one writer per run) rather than on the version.
///
/// Every method is async: a network store suspends, the embedded one runs on its own
/// serial queue; neither blocks the caller's thread.
public protocol RunStore: Sendable {
    /// Creates or migrates what the store needs (a network store, once it can connect);
    /// safe to call from several workers at once.
    func prepare() async throws
    /// The runs and command outcomes a batch needs, in one read.
    func load(runIDs: Set<String>, commands: Set<CommandKey>) async throws -> StoreSnapshot
    /// The whole batch path in one call: load the snapshot (and the unconfirmed outbox rows of
    /// runs whose commands were seen before), let `decide` turn it into a commit, commit it.
    /// The default (below) is `load` then `commit`; the embedded store does it all in one write
    /// transaction on its own queue (one hop, one transaction, no conflict possible).
    func loadDecideCommit<Decision: Sendable>(
        runIDs: Set<String>, commands: Set<CommandKey>,
        decide: @escaping @Sendable (StoreSnapshot, _ pendingOutbox: [OutboxMessage]) throws -> (StoreCommit, Decision)
    ) async throws -> (outboxIDs: [Int64], decision: Decision)
    /// Writes one batch atomically; returns the ids given to `batch.outbox`, in order. Each run
    /// appears at most once (`StoreCommit.checkOneWritePerRun`).
    func commit(_ batch: StoreCommit) async throws -> [Int64]
    /// The unconfirmed outbox rows of these runs, oldest first (a repeated command publishes
    /// them again in case the worker that wrote them died before the broker confirmed them).
    func pendingOutbox(runIDs: Set<String>) async throws -> [OutboxMessage]
    /// Unconfirmed outbox rows, oldest first, written at or before `writtenBefore` (so that a
    /// sweep leaves alone what a live worker is about to publish itself), of the runs of
    /// `partitions` (all when nil): a worker publishes only the leftovers of partitions it
    /// holds, so it never races their owner's newer events.
    func pendingOutbox(writtenBefore: Timestamp, partitions: [Int]?, limit: Int) async throws -> [OutboxMessage]
    /// Marks outbox rows the broker confirmed as published (when no batch came along to carry
    /// them); they stay as history until retention removes their run.
    func removeOutbox(ids: [Int64]) async throws
    /// Ids of non-terminal runs with a deadline at or before `time`, earliest first, among
    /// the runs of `partitions` (all runs when nil).
    func runsDue(at time: Timestamp, partitions: [Int]?, limit: Int) async throws -> [String]
    /// Counts one more failed or interrupted delivery of a message (or, with `increment`
    /// false, only notes its error) and returns the count so far: the poison-message guard.
    func recordDeliveryAttempt(key: String, error: String?, increment: Bool, at time: Timestamp) async throws -> Int
    /// The last error recorded for a message, if any.
    func lastDeliveryError(key: String) async throws -> String?

    // Reads for people and tools (runctl, the HTTP API).
    func run(_ runID: String) async throws -> Run?
    /// Most recently updated first.
    func runs(status: RunStatus?, agentID: String?, limit: Int) async throws -> [Run]
    /// A page of runs, newest first (by creation, then run id descending), and the cursor of
    /// the next page when there is one. Stable under writes: a run's place never moves.
    func listRuns(_ query: RunQuery) async throws -> RunPage
    /// A run's history: its outbox rows, published or not, with `seq` greater than `afterSeq`,
    /// in `seq` order (the outbox keeps a row once the broker confirmed it, marked published).
    func history(runID: String, afterSeq: Int64, limit: Int) async throws -> [OutboxMessage]
    /// How many runs are in each status.
    func runCounts() async throws -> [RunStatus: Int]
    /// Outbox rows not yet confirmed by the broker.
    func outboxDepth() async throws -> Int
    /// Retention, in one small transaction: removes up to `limit` terminal runs last updated
    /// before `finishedBefore` whose events were all confirmed, with their history, and up to
    /// `commandLimit` command records written before `commandsBefore` (a run has several). A removed run's command records
    /// stay until then: a repeat within the de-duplication window is still answered as one.
    func prune(finishedBefore: Timestamp, commandsBefore: Timestamp, limit: Int, commandLimit: Int) async throws -> PruneResult

    // Membership and partition ownership. The store is the authority, not the broker: live
    // workers are the rows not yet expired, and a partition belongs to the holder of its
    // unexpired lease. Every expiry is by the store's clock, never the caller's; `ttl` is in
    // seconds (positive and finite, else `rejected`).

    /// Records that `workerID` is alive until the store's clock plus `ttl`; returns the ids of
    /// the workers whose rows have not expired, sorted, this one included.
    func heartbeat(workerID: String, ttl: Double) async throws -> [String]
    /// Removes `workerID`'s row (a graceful stop).
    func leave(workerID: String) async throws
    /// Takes `partition` for `workerID` until the store's clock plus `ttl`: nil when another
    /// worker holds an unexpired lease on it. Taking it bumps the epoch (1 for a partition never
    /// leased); a worker that already holds it unexpired keeps its epoch and renews it. Two
    /// workers asking at once cannot both win.
    func acquireLease(partition: Int, workerID: String, ttl: Double) async throws -> PartitionLease?
    /// Extends those of `leases` still held by `workerID` at their epoch and unexpired, and
    /// returns them; the others are lost.
    func renewLeases(_ leases: [PartitionLease], workerID: String, ttl: Double) async throws -> [PartitionLease]
    /// Expires `lease` now if `workerID` holds it at its epoch, so another worker can take it
    /// at once (with the next epoch); otherwise does nothing.
    func releaseLease(_ lease: PartitionLease, workerID: String) async throws
    /// Every partition ever leased, by partition (for tests and tools).
    func leases() async throws -> [LeaseState]
}

extension RunStore {
    public func prepare() async throws {}

    /// Every partition's leftovers (tests and tools).
    public func pendingOutbox(writtenBefore: Timestamp, limit: Int) async throws -> [OutboxMessage] {
        try await pendingOutbox(writtenBefore: writtenBefore, partitions: nil, limit: limit)
    }

    /// `load`, then the pending outbox of the runs whose commands were seen before, then
    /// `decide`, then `commit`: optimistic, so a conflict throws `versionConflict` and the
    /// caller decides again.
    public func loadDecideCommit<Decision: Sendable>(
        runIDs: Set<String>, commands: Set<CommandKey>,
        decide: @escaping @Sendable (StoreSnapshot, _ pendingOutbox: [OutboxMessage]) throws -> (StoreCommit, Decision)
    ) async throws -> (outboxIDs: [Int64], decision: Decision) {
        let snapshot = try await load(runIDs: runIDs, commands: commands)
        let repeated = Set(snapshot.outcomes.keys.map(\.runID))
        let pending = repeated.isEmpty ? [] : try await pendingOutbox(runIDs: repeated)
        let (batch, decision) = try decide(snapshot, pending)
        return (batch.isEmpty ? [] : try await commit(batch), decision)
    }
}

/// For stores that do not keep leases (test doubles that wrap another store for its commits):
/// every call is refused as `rejected`. The stores of this module implement them all.
extension RunStore {
    public func heartbeat(workerID: String, ttl: Double) async throws -> [String] { throw Self.noLeases }
    public func leave(workerID: String) async throws { throw Self.noLeases }
    public func acquireLease(partition: Int, workerID: String, ttl: Double) async throws -> PartitionLease? {
        throw Self.noLeases
    }
    public func renewLeases(_ leases: [PartitionLease], workerID: String, ttl: Double) async throws -> [PartitionLease] {
        throw Self.noLeases
    }
    public func releaseLease(_ lease: PartitionLease, workerID: String) async throws { throw Self.noLeases }
    public func leases() async throws -> [LeaseState] { throw Self.noLeases }

    private static var noLeases: StoreError { StoreError(.rejected, "\(Self.self) keeps no partition leases") }
}
