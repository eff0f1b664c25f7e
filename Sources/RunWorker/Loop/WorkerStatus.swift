import Foundation
import RunApply
import RunJSON
import Synchronization

/// What a worker can tell about itself: readiness, the partitions it holds, and counters.
/// Written to the `status_file` (JSON) for tests and supervisors, so they read numbers, not
/// log lines.
public struct WorkerStatus: Sendable, Equatable {
    public struct Counters: Sendable, Equatable {
        /// Commands applied (state changed).
        public var applied = 0
        /// Commands refused with a contract error code (answered and published as `command_rejected`).
        public var refused = 0
        /// Repeated command ids answered with their first outcome.
        public var duplicates = 0
        /// Unattributable messages dead-lettered (malformed, oversize, no run id).
        public var deadLettered = 0
        /// Deadlines fired (timeouts, retry delays).
        public var timersFired = 0
        /// Failed attempts at handling one message (the poison guard counts them).
        public var commandFailures = 0
        /// Messages dead-lettered by the poison guard.
        public var poisonDeadLettered = 0
        /// Deliveries given back to their queues (store unavailable, failures).
        public var requeued = 0
        /// Sessions that connected (1 + reconnects).
        public var connections = 0
        /// Outbox rows published by the sweep (left behind by a worker that died).
        public var outboxRepublished = 0
        /// Partitions whose lease this worker found taken or expired (it had stalled, or lost
        /// the store or the broker for longer than the lease).
        public var leasesLost = 0
        /// Commits the store refused because a lease was no longer held (nothing was written).
        public var fencedCommits = 0
        /// Batches committed (commands and fired timers), whether or not they changed a run.
        public var commits = 0
        /// Statements sent to a PostgreSQL store (each one round trip); 0 on other stores.
        public var storeRoundTrips = 0
        /// Of those, the ones sent by batch commits (loads and commits, not chores).
        public var batchRoundTrips = 0
        /// Wall time of the command batches' stages so far (`StageTimes`), nanoseconds, and
        /// the commands they carried: the benchmark divides one by the other.
        public var stagePrepareNs = 0
        public var stageDecideNs = 0
        public var stageStoreNs = 0
        public var stagePublishNs = 0
        public var stageCommands = 0
        /// What the run cache holds now: runs, and their bytes by `Run.approximateBytes`.
        public var runCacheRuns = 0
        public var runCacheBytes = 0
        /// Times the loop left the consumers' connection unread because the read-ahead was
        /// full, and the most body bytes the read-ahead has held.
        public var readAheadFull = 0
        public var readAheadPeakBytes = 0
    }

    public var workerID: String
    public var ready = false
    public var connected = false
    public var partitions: [Int] = []
    /// Where the HTTP listener is bound (`host:port`, the real port when 0 was asked); nil
    /// when it is off or not bound yet.
    public var httpAddress: String? = nil
    /// Why the store refused the last batch after its retries (full disk, database down);
    /// nil once a batch commits again. The worker is not ready meanwhile (`/readyz`).
    public var storeError: String? = nil
    /// The broker's reason while it blocks this worker's publishing (a resource alarm).
    public var brokerBlocked: String? = nil
    public var counters = Counters()
    /// The webhook dispatcher's counters; nil while webhooks are disabled.
    public var webhooks: WebhookCounters? = nil

    public init(workerID: String) { self.workerID = workerID }

    public var json: JSONObject {
        let c = counters
        var o: JSONObject = [
            "worker_id": .string(workerID), "ready": .bool(ready), "connected": .bool(connected),
            "partitions": .array(partitions.map { .int(Int64($0)) }),
            "http_address": httpAddress.map(JSONValue.string) ?? .null,
            "store_error": storeError.map(JSONValue.string) ?? .null,
            "broker_blocked": brokerBlocked.map(JSONValue.string) ?? .null,
            "counters": .object([
                "applied": .int(Int64(c.applied)), "refused": .int(Int64(c.refused)),
                "duplicates": .int(Int64(c.duplicates)), "dead_lettered": .int(Int64(c.deadLettered)),
                "timers_fired": .int(Int64(c.timersFired)), "command_failures": .int(Int64(c.commandFailures)),
                "poison_dead_lettered": .int(Int64(c.poisonDeadLettered)), "requeued": .int(Int64(c.requeued)),
                "connections": .int(Int64(c.connections)), "outbox_republished": .int(Int64(c.outboxRepublished)),
                "leases_lost": .int(Int64(c.leasesLost)), "fenced_commits": .int(Int64(c.fencedCommits)),
                "commits": .int(Int64(c.commits)), "store_round_trips": .int(Int64(c.storeRoundTrips)),
                "batch_round_trips": .int(Int64(c.batchRoundTrips)),
                "stage_prepare_ns": .int(Int64(c.stagePrepareNs)), "stage_decide_ns": .int(Int64(c.stageDecideNs)),
                "stage_store_ns": .int(Int64(c.stageStoreNs)), "stage_publish_ns": .int(Int64(c.stagePublishNs)),
                "stage_commands": .int(Int64(c.stageCommands)),
                "run_cache_runs": .int(Int64(c.runCacheRuns)), "run_cache_bytes": .int(Int64(c.runCacheBytes)),
                "read_ahead_full": .int(Int64(c.readAheadFull)), "read_ahead_peak_bytes": .int(Int64(c.readAheadPeakBytes)),
            ]),
        ]
        if let w = webhooks { o["webhooks"] = .object(w.json) }
        return o
    }

    /// Counts the outcome of applied items.
    mutating func count(_ results: [CommandResult]) {
        for r in results {
            switch r.kind {
            case .applied: counters.applied += 1
            case .refused: counters.refused += 1
            case .duplicate: counters.duplicates += 1
            case .deadLettered: counters.deadLettered += 1
            case .timerFired: counters.timersFired += 1
            }
        }
    }

    /// Writes the status atomically (a temporary file renamed over the old one), so a reader
    /// never sees half a document.
    func write(to path: String) throws {
        let temporary = path + ".tmp"
        try Data(json.serialized()).write(to: URL(fileURLWithPath: temporary))
        if rename(temporary, path) != 0 {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
        }
    }
}

/// What the webhook dispatcher has done since the process started.
public struct WebhookCounters: Sendable, Equatable {
    /// Whether its own broker connection is up and consuming.
    public var connected = false
    /// Events POSTed and answered with a 2xx.
    public var delivered = 0
    /// Failed attempts sent to wait for a retry.
    public var retried = 0
    /// Events given up (attempts exhausted, or a refused target).
    public var failed = 0
    /// Events read from the webhook queue that had no webhook to go to (or did not match).
    public var skipped = 0

    public init() {}

    public var json: JSONObject {
        [
            "connected": .bool(connected), "delivered": .int(Int64(delivered)), "retried": .int(Int64(retried)),
            "failed": .int(Int64(failed)), "skipped": .int(Int64(skipped)),
        ]
    }
}

/// The loop's latest status, where other threads (the HTTP side, housekeeping) read it.
public final class SharedStatus: Sendable {
    private let state: Mutex<(status: WorkerStatus, httpAddress: String?)>
    public let workerID: String

    public init(workerID: String) {
        self.workerID = workerID
        state = Mutex((WorkerStatus(workerID: workerID), nil))
    }

    private let webhookState = Mutex<WebhookCounters?>(nil)

    /// The loop's status with the webhook dispatcher's counters, if it runs.
    public var status: WorkerStatus {
        var status = state.withLock { $0.status }
        status.webhooks = webhooks
        return status
    }
    public var httpAddress: String? { state.withLock { $0.httpAddress } }
    public var webhooks: WebhookCounters? { webhookState.withLock { $0 } }

    /// Set by the webhook dispatcher; the loop copies it into the status file.
    public func updateWebhooks(_ update: (inout WebhookCounters) -> Void) {
        webhookState.withLock { state in
            var counters = state ?? WebhookCounters()
            update(&counters)
            state = counters
        }
    }

    func update(_ status: WorkerStatus) { state.withLock { $0.status = status } }
    /// Set by the HTTP listener once bound; the loop copies it into the status file.
    public func setHTTPAddress(_ address: String?) { state.withLock { $0.httpAddress = address } }
}
