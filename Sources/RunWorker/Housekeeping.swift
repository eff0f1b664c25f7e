import CoreMetrics
import Logging
import RunContract
import RunStore

/// What a worker does beside its command loop, on the async side, never on the loop's
/// thread: it samples the outbox depth, and it applies retention when this worker holds
/// partition 0 (so one worker at a time prunes, and it changes hands with that lease).
struct Housekeeping: Sendable {
    let store: any RunStore
    let settings: WorkerSettings
    let shared: SharedStatus
    let clock: @Sendable () -> Timestamp
    let logger: Logger
    let outboxDepth: Gauge
    let prunedRuns: Counter
    let prunedEvents: Counter
    let prunedCommands: Counter
    /// Runs (with their history) and command records removed in one transaction: small, so
    /// that a pass never holds the store (SQLite's single writer) for long. While there is
    /// more, passes follow each other `busyGap` apart, which keeps up with several thousand
    /// runs finishing per second; otherwise every `retention.interval_s`.
    static let pruneBatch = 200
    static let commandBatch = 4000
    static let busyGap = Duration.milliseconds(20)

    init(
        store: any RunStore, settings: WorkerSettings, shared: SharedStatus, clock: @escaping @Sendable () -> Timestamp,
        logger: Logger, factory: any MetricsFactory
    ) {
        self.store = store
        self.settings = settings
        self.shared = shared
        self.clock = clock
        self.logger = logger
        outboxDepth = Gauge(label: "runworker_outbox_depth", factory: factory)
        prunedRuns = Counter(label: "runworker_retention_removed_total", dimensions: [("what", "runs")], factory: factory)
        prunedEvents = Counter(label: "runworker_retention_removed_total", dimensions: [("what", "events")], factory: factory)
        prunedCommands = Counter(label: "runworker_retention_removed_total", dimensions: [("what", "command_ids")], factory: factory)
    }

    var retains: Bool { settings.retentionFinishedRunsS != nil || settings.retentionCommandIDsS != nil }

    func run() async {
        var nextSample = ContinuousClock.now
        var nextPrune = ContinuousClock.now
        while !Task.isCancelled {
            let now = ContinuousClock.now
            if now >= nextSample {
                if let depth = try? await store.outboxDepth() { outboxDepth.record(depth) }
                nextSample = now + .seconds(5)
            }
            if retains, now >= nextPrune {
                if shared.status.partitions.contains(0) {
                    // A full batch means there is more: come back soon, but not at once.
                    let more = await prunePass()
                    nextPrune = ContinuousClock.now + (more ? Self.busyGap : .seconds(settings.retentionIntervalS))
                } else {
                    nextPrune = now + .seconds(min(settings.retentionIntervalS, 5))
                }
            }
            let wake = min(nextSample, retains ? nextPrune : nextSample)
            do { try await Task.sleep(until: wake, clock: .continuous) } catch { return }
        }
    }

    /// One small transaction of retention; true when it removed a full batch.
    func prunePass() async -> Bool {
        let now = clock()
        // off: a cutoff before every row.
        let finishedBefore = settings.retentionFinishedRunsS.map { now.adding(seconds: -$0) } ?? Timestamp(milliseconds: .min)
        let commandsBefore = settings.retentionCommandIDsS.map { now.adding(seconds: -$0) } ?? Timestamp(milliseconds: .min)
        do {
            let removed = try await store.prune(
                finishedBefore: finishedBefore, commandsBefore: commandsBefore, limit: Self.pruneBatch,
                commandLimit: Self.commandBatch)
            prunedRuns.increment(by: Int64(removed.runs))
            prunedEvents.increment(by: Int64(removed.events))
            prunedCommands.increment(by: Int64(removed.commands))
            if removed.total > 0 {
                logger.debug("retention pass", metadata: [
                    "runs": "\(removed.runs)", "events": "\(removed.events)", "command_ids": "\(removed.commands)",
                ])
            }
            return removed.runs >= Self.pruneBatch || removed.commands >= Self.commandBatch
        } catch {
            logger.warning("retention pass failed; trying again later", metadata: ["error": "\(error)"])
            return false
        }
    }
}
