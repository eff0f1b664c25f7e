import AMQPClient
import CoreMetrics
import Foundation
import Logging
import RunApply
import RunContract
import RunStateMachine
import RunStore
import RunStores
import ServiceLifecycle
import Synchronization

/// The worker as a service: `run()` returns after a graceful shutdown (SIGTERM/SIGINT through
/// a `ServiceGroup`) or cancellation, once the batch in flight is stored, published,
/// confirmed and acked.
public final class Worker: Service {
    public let settings: WorkerSettings
    let logger: Logger
    public let store: any RunStore
    let clock: @Sendable () -> Timestamp
    private let stopFlag = StopFlag()
    private let waker: Waker
    private let metricsFactory: any MetricsFactory
    /// The loop's latest status, for the HTTP side (readiness, partitions, counters).
    public let shared = SharedStatus(workerID: String(UInt64.random(in: 0...UInt64.max), radix: 36))

    /// - metricsFactory: where the worker's metrics go (the HTTP side passes its Prometheus
    ///   registry's); the process-wide `MetricsSystem` by default.
    public init(
        settings: WorkerSettings, logger: Logger, store: (any RunStore)? = nil,
        clock: @escaping @Sendable () -> Timestamp = Worker.systemClock, metricsFactory: (any MetricsFactory)? = nil
    ) throws {
        self.settings = settings
        self.logger = logger
        self.clock = clock
        self.metricsFactory = metricsFactory ?? MetricsSystem.factory
        self.waker = try Waker()
        self.store = try store ?? openRunStore(
            url: settings.store, sqliteSynchronous: settings.sqliteSynchronous == "NORMAL" ? .normal : .full)
    }

    public static let systemClock: @Sendable () -> Timestamp = {
        Timestamp(seconds: Date().timeIntervalSince1970)
    }

    /// Asks the loop to stop after the batch in flight.
    public func stop() {
        stopFlag.set()
        waker.signal()
    }

    public func run() async throws {
        var applier = BatchApplier(
            store: store,
            processor: CommandProcessor(machine: RunStateMachine(defaults: settings.runDefaults), maxBodyBytes: settings.maxBodyBytes),
            clock: clock)
        applier.cache = RunCache(byteBudget: settings.runCacheBytes)
        let metrics = WorkerMetrics(factory: metricsFactory)
        let loop = WorkerLoop(
            settings: settings, logger: logger, stop: stopFlag, waker: waker, applier: applier, metrics: metrics, shared: shared)
        let housekeeping = Housekeeping(
            store: store, settings: settings, shared: shared, clock: clock, logger: logger, factory: metricsFactory)
        // SIGTERM (graceful shutdown) or cancellation stops the loop after the batch in flight,
        // and also ends a wait for a store that is not reachable yet.
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                // A network store's client (PostgreSQL's connection pool) runs beside the loop
                // and stops after it. Detached, so that the graceful shutdown that stops the
                // loop does not stop the client first: the loop's last calls (the final
                // commit, giving back its leases) still need it.
                let storeClient = (store as? any Service).map { service in Task.detached { try await service.run() } }
                defer { storeClient?.cancel() }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    defer { group.cancelAll() }
                    try await prepareStore()
                    if !stopFlag.isSet {
                        group.addTask { await housekeeping.run() }
                        try await runLoopThread(loop)
                    }
                }
            } onGracefulShutdown: {
                self.stop()
            }
        } onCancel: {
            self.stop()
        }
    }

    /// Creates or migrates the store, waiting out a store that is not reachable yet (until
    /// asked to stop).
    private func prepareStore() async throws {
        var delay = 0.2
        while !stopFlag.isSet {
            do {
                logger.debug("preparing the store (creating or migrating its schema)")
                try await store.prepare()
                logger.debug("store ready")
                return
            } catch let error as StoreError where error.isTransient {
                logger.warning("store not ready, retrying", metadata: ["error": "\(error)", "retry_in_s": "\(delay)"])
                try? await Task.sleep(for: .seconds(delay))
                delay = min(delay * 2, 5)
            }
        }
    }

    /// librabbitmq blocks: the loop gets a thread of its own, which alone touches the
    /// connection. Store work runs elsewhere (see `WorkerLoop.awaitStore`).
    private func runLoopThread(_ loop: WorkerLoop) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            let thread = Thread {
                do {
                    try loop.run()
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            thread.name = "runworker-loop"
            thread.start()
        }
    }
}

final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}

/// A delivery read from a partition queue and not yet applied.
struct Received: Sendable {
    var channel: UInt16
    var tag: UInt64
    var redelivered: Bool
    var command: InboundCommand

    /// Identifies the message across deliveries, for the poison guard.
    var key: String { PoisonGuard.messageKey(routingKey: command.routingKey, messageID: command.messageID, body: command.body) }

    /// How many of `buffered`, from the front, the next batch takes: at most `count`, and no
    /// more bodies than `bytes` together, but always the first (a body alone over the bound is
    /// a batch of its own).
    static func batchLength(_ buffered: [Received], count: Int, bytes: Int) -> Int {
        var n = 0, total = 0
        for r in buffered.prefix(count) {
            total += r.command.body.count
            if n > 0 && total > bytes { break }
            n += 1
        }
        return n
    }

    /// The highest delivery tag per channel: one `basic.ack` with `multiple` acks a batch.
    static func highestTags(_ batch: [Received]) -> [Ack] {
        var top: [UInt16: UInt64] = [:]
        for r in batch { top[r.channel] = max(top[r.channel] ?? 0, r.tag) }
        return top.sorted { $0.key < $1.key }.map { Ack(channel: $0.key, tag: $0.value, multiple: true) }
    }
}

struct Ack: Sendable, Equatable {
    var channel: UInt16
    var tag: UInt64
    var multiple: Bool
}

/// What to do once a published batch is fully confirmed.
struct PublishedBatch: Sendable {
    var acks: [Ack] = []
    var outboxIDs: [Int64] = []
    var results: [CommandResult] = []
    var observations: [RunObservation] = []
    /// When its last message went out (monotonic nanoseconds): the confirm wait starts here.
    var publishedAtNs: UInt64 = 0
}

/// The driver: the only code here that performs I/O. It runs on one thread, which owns the
/// AMQP connection; the decisions are made by small pure parts (`PartitionBalancer`,
/// `ConfirmPipeline`, `PoisonGuard`, `LoopSchedule`, `CommandProcessor`) and the store is
/// called asynchronously through `awaitStore`, which keeps the connection serviced
/// (heartbeats, confirms, deliveries) while a transaction runs.
///
/// `@unchecked Sendable`: it is handed to that thread once and used there only.
final class WorkerLoop: @unchecked Sendable {
    let settings: WorkerSettings
    let topology: Topology
    var logger: Logger
    let stop: StopFlag
    let waker: Waker
    let applier: BatchApplier
    var store: any RunStore { applier.store }
    var workerID: String { shared.workerID }
    let poison: PoisonGuard
    /// The broker nodes (`amqp_url`) and which one to connect to next.
    var nodes: NodeRotation
    /// The live workers as the store last counted them (rows whose heartbeat has not expired).
    var knownWorkers = 1
    /// The partition leases this worker holds: the store's word on what it owns. A partition
    /// is consumed only under its lease, and every commit is fenced by them.
    var leases: LeaseTable

    // Per connection.
    var conn: BlockingConnection?
    /// Keys of messages this worker requeued because the store was out (`requeue`).
    private var requeuedForOutage: Set<String> = []
    /// When `status.storeError` was last set (monotonic seconds).
    private var storeErrorAt = 0.0
    var control: UInt16 = 0
    var publisher: UInt16 = 0
    /// Partition consumers: channel → partition.
    var channels: [UInt16: Int] = [:]
    var balancer: PartitionBalancer
    var pipeline: ConfirmPipeline<PublishedBatch>
    var schedule: LoopSchedule
    /// Outbox rows the broker confirmed, deleted with the next batch's commit (or when idle).
    var confirmedOutbox: [Int64] = []
    /// Deliveries read but not yet applied, in arrival order.
    var buffered: [Received] = []
    /// When the last batch of commands was applied (monotonic seconds).
    var lastBatchAt = 0.0
    /// Idle this long, the worker marks confirmed outbox rows in a transaction of their own.
    static let idleOutboxMarkS = 0.2
    static let outboxMarkBacklog = 4096
    var status: WorkerStatus
    var statusDirty = true
    let metrics: WorkerMetrics
    /// Where the HTTP side reads this loop's status (readiness, partitions, counters).
    let shared: SharedStatus
    var stats = LoopStats()

    init(
        settings: WorkerSettings, logger: Logger, stop: StopFlag, waker: Waker, applier: BatchApplier,
        metrics: WorkerMetrics, shared: SharedStatus
    ) {
        self.metrics = metrics
        self.shared = shared
        self.settings = settings
        self.topology = settings.topology
        self.logger = logger
        self.stop = stop
        self.waker = waker
        self.applier = applier
        self.poison = PoisonGuard(deliveryLimit: settings.deliveryLimit)
        // `validate()` has checked the list; unparsable, the URL fails at connect time as before.
        self.nodes = NodeRotation(urls: (try? settings.amqpURLs()) ?? [settings.amqpURL])
        self.leases = LeaseTable(ttl: settings.leaseTTLS)
        self.balancer = PartitionBalancer(
            partitions: settings.partitions, offset: Int(UInt64(shared.workerID, radix: 36)! % UInt64(settings.partitions)))
        self.pipeline = ConfirmPipeline(depth: settings.pipelineDepth)
        self.schedule = Self.newSchedule(settings)
        self.status = WorkerStatus(workerID: shared.workerID)
        self.logger[metadataKey: "worker"] = .string(shared.workerID)
    }

    static func newSchedule(_ settings: WorkerSettings) -> LoopSchedule {
        // Rows a live worker is about to publish are younger than the sweep's 5 s; older ones
        // were left by a worker that died between commit and confirm.
        LoopSchedule(
            renewLeases: settings.leaseTTLS / 3, rebalance: settings.rebalanceIntervalS, outboxSweep: 5,
            timerSweep: settings.timerIntervalS, status: 0.2)
    }

    /// Monotonic seconds, for the schedule.
    static func monotonic() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    /// Runs sessions until asked to stop; a lost connection is re-established, on the next
    /// broker node, with backoff (`NodeRotation`). Queues that exist with other arguments stop
    /// the worker: reconnecting cannot change them.
    func run() throws {
        defer { writeStatus(force: true) }
        while !stop.isSet {
            var wasUp = false
            do {
                try session(wasUp: &wasUp)
                leaveMembership()
                return
            } catch let error as TopologyMismatch {
                close()
                logger.critical("queues do not match this worker's settings; stopping", metadata: ["error": "\(error)"])
                throw error
            } catch {
                let node = Self.nodeName(nodes.url)
                close()
                if stop.isSet {
                    leaveMembership()
                    return
                }
                let delay = wasUp ? nodes.sessionEnded() : nodes.connectFailed()
                logger.warning(wasUp ? "connection lost, reconnecting" : "cannot connect", metadata: [
                    "error": "\(error)", "node": .string(node), "next_node": .string(Self.nodeName(nodes.url)),
                    "retry_in_s": "\(delay)",
                ])
                pause(delay)
            }
        }
    }

    /// host:port of a URL, for logs (never the credentials).
    static func nodeName(_ url: String) -> String {
        (try? AMQPConfiguration(url: url)).map(\.node) ?? "(invalid URL)"
    }

    // MARK: - Session

    private func session(wasUp: inout Bool) throws {
        var config = try AMQPConfiguration(url: nodes.url)
        if config.connectionName == nil { config.connectionName = "runworker-\(workerID)" }
        let conn = try BlockingConnection(configuration: config)
        self.conn = conn
        control = try conn.openChannel()
        try declareTopology(conn)
        publisher = try conn.openChannel()
        try conn.confirmSelect(channel: publisher)
        wasUp = true
        status.connected = true
        status.counters.connections += 1
        if status.counters.connections > 1 { metrics.reconnects.increment() }
        statusDirty = true
        schedule = Self.newSchedule(settings)
        logger.info("connected", metadata: [
            "broker": "\(config)", "prefix": "\(topology.prefix)", "queue_type": "\(topology.queueType.rawValue)",
        ])

        while !stop.isSet {
            try step(conn)
        }
        // Graceful stop: wait for the last confirms and ack; closing returns what is unapplied.
        logger.info("stopping: finishing in-flight batches, closing consumers and connection")
        try? drainPipeline()
        close()
    }

    func close() {
        conn?.close()
        conn = nil
        channels = [:]
        balancer.reset()
        // Unacked deliveries go back to their queues with the connection; unconfirmed events
        // stay in the outbox for the next sweep.
        buffered = []
        pipeline.reset()
        status.connected = false
        status.ready = false
        status.partitions = []
        statusDirty = true
        // Without its consumers the worker cannot serve its partitions: let others take them
        // at once rather than after the ttl.
        releaseLeases()
    }

    /// Declares the exchanges and the dead-letter and partition queues (idempotent, from any
    /// node of a cluster). A queue that exists with other arguments is a `TopologyMismatch`.
    private func declareTopology(_ conn: BlockingConnection) throws {
        let t = topology
        try conn.exchangeDeclare(
            channel: control, name: t.commandsExchange, type: AMQPExchangeType(Topology.commandsExchangeType), durable: true)
        try conn.exchangeDeclare(channel: control, name: t.eventsExchange, type: .topic, durable: true)
        try conn.exchangeDeclare(channel: control, name: t.deadExchange, type: .fanout, durable: true)
        try declareQueue(conn, t.deadQueue, arguments: t.deadQueueArguments)
        try conn.queueBind(channel: control, queue: t.deadQueue, exchange: t.deadExchange, routingKey: "")
        for q in t.partitionQueues {
            try declareQueue(conn, q, arguments: t.partitionQueueArguments)
            try conn.queueBind(channel: control, queue: q, exchange: t.commandsExchange, routingKey: "")
        }
        // Declared here, before any command is applied, so that no event published while the
        // webhook dispatcher (its own connection) is still connecting misses its queue.
        if settings.webhooks.enabled {
            try declareQueue(conn, t.webhooksQueue, arguments: t.deadQueueArguments)
            try conn.queueBind(channel: control, queue: t.webhooksQueue, exchange: t.eventsExchange, routingKey: Topology.webhooksBinding)
        }
    }

    private func declareQueue(_ conn: BlockingConnection, _ name: String, arguments: AMQPTable) throws {
        do {
            _ = try conn.queueDeclare(channel: control, name: name, durable: true, arguments: arguments)
        } catch let error as AMQPError where error.isPreconditionFailed && !error.isConnectionLevel {
            throw TopologyMismatch(queue: name, brokerMessage: error.message, topology: topology)
        }
    }

    // MARK: - The step

    /// One turn of the loop: wait for something to do, run the chores that are due, apply
    /// the next batch. Batches are pipelined: while the broker confirms batch N's events,
    /// batch N+1 is applied and published (order is kept: one publishing channel, and acks
    /// and outbox deletions wait for the confirms).
    private func step(_ conn: BlockingConnection) throws {
        let canApply = !buffered.isEmpty && !pipeline.isFull
        if !canApply {
            // Block until a frame arrives, a chore is due or the waker rings: polling instead
            // would spin a core the broker needs.
            try pump(timeout: schedule.wait(at: Self.monotonic(), limit: 0.1))
        }
        try pumpAvailable()

        for chore in schedule.due(at: Self.monotonic()) {
            switch chore {
            case .renewLeases: try renewLeases(conn)
            case .rebalance: try rebalance(conn)
            case .outboxSweep: try sweepOutbox(olderThan: 5)
            case .timerSweep: try sweepTimers()
            case .status: writeStatus()
            }
        }

        guard !buffered.isEmpty else {
            // Confirmed rows ride on the next batch's commit. A transaction of their own (an
            // fsync) waits until the worker has been idle a while or many are waiting: at a
            // low rate, marking them after every batch doubled the commits.
            if pipeline.isEmpty,
                Self.monotonic() - lastBatchAt >= Self.idleOutboxMarkS || confirmedOutbox.count >= Self.outboxMarkBacklog
            {
                try removeConfirmedOutbox()
            }
            return
        }
        guard !pipeline.isFull else { return }  // the next step waits for confirms
        // A worker that stalled past the safe half of its leases asks the store first.
        guard try confirmLeases() else {
            pause(0.5)
            return
        }
        guard !buffered.isEmpty else { return }  // what was read on lost partitions is gone
        let batch = Array(buffered.prefix(Received.batchLength(buffered, count: settings.batchSize * 2, bytes: settings.batchBytes)))
        buffered.removeFirst(batch.count)

        // A redelivered message may be what killed a worker: take such batches one message at
        // a time, counting each delivery, so that only the culprit reaches the limit.
        if batch.contains(where: \.redelivered) {
            try drainPipeline()
            try applyOneByOne(batch)
            return
        }
        let started = DispatchTime.now().uptimeNanoseconds
        lastBatchAt = Self.monotonic()
        let leased = leases.partitions
        switch try apply(batch.map { .command($0.command) }, partitions: Set(batch.compactMap(\.command.partition))) {
        case .applied(let processed):
            let applied = DispatchTime.now().uptimeNanoseconds
            guard try stillHolding(leased, after: batch) else { return }
            try publish(processed.messages, then: PublishedBatch(
                acks: Received.highestTags(batch), results: processed.results, observations: processed.observations))
            let published = DispatchTime.now().uptimeNanoseconds
            metrics.batchSize.record(batch.count)
            metrics.applySeconds.recordNanoseconds(Int64(applied - started))
            metrics.commitSeconds.recordNanoseconds(Int64(processed.commitNs))
            metrics.publishSeconds.recordNanoseconds(Int64(published - applied))
            status.counters.stagePrepareNs += Int(processed.stages.prepareNs)
            status.counters.stageDecideNs += Int(processed.stages.decideNs)
            status.counters.stageStoreNs += Int(processed.stages.storeNs)
            status.counters.stagePublishNs += Int(published - applied)
            status.counters.stageCommands += batch.count
            stats.record(commands: batch.count, applyNs: applied - started,
                         publishNs: DispatchTime.now().uptimeNanoseconds - applied, inFlight: pipeline.count)
            if let line = stats.report() { logger.debug("loop stats", metadata: line) }
        case .unavailable(let error):
            try drainPipeline()
            try requeue(batch, because: error, pause: 0.5)
        case .fenced:
            try leasesRefused(keeping: batch)
        case .failed:
            // Something in the batch cannot be applied: find it.
            try drainPipeline()
            try applyOneByOne(batch)
        }
    }

    // MARK: - Connection events

    /// Waits up to `timeout` for one event (or the waker), handling it.
    private func pump(timeout: Double) throws {
        guard let conn else { throw AMQPError(.connectionClosed, "not connected") }
        if let event = try conn.nextEvent(timeout: timeout, waker: waker) { try handle(event) }
        try completeConfirmed()
    }

    /// Handles what has already arrived, without waiting.
    private func pumpAvailable() throws {
        guard let conn else { throw AMQPError(.connectionClosed, "not connected") }
        for event in try conn.drainEvents(max: settings.batchSize * 2) { try handle(event) }
        try completeConfirmed()
    }

    /// Sorts one event from the connection: deliveries wait in `buffered`, confirms count
    /// down their batch.
    private func handle(_ event: AMQPEvent) throws {
        switch event {
        case .delivery(let d):
            guard let partition = channels[d.channel] else { return }  // released: the broker requeues it
            buffered.append(Received(
                channel: d.channel, tag: d.deliveryTag, redelivered: d.redelivered,
                command: InboundCommand(
                    body: d.body, routingKey: d.routingKey, messageID: d.properties.messageID,
                    replyTo: d.properties.replyTo, correlationID: d.properties.correlationID, partition: partition)))
        case .confirm(let c) where c.channel == publisher:
            do {
                try pipeline.confirmed(tag: c.deliveryTag, acked: c.acked)
            } catch {
                // The broker could not take an event: start over; the outbox still has it and
                // the deliveries were not acked.
                throw AMQPError(.protocolError, "the broker refused (nacked) a published event")
            }
        case .consumerCancelled(let channel, _), .channelClosed(let channel, _):
            // The partition's lease stays until the next rebalance claims it again (same epoch)
            // or gives it back.
            if let partition = channels[channel] {
                logger.warning("lost partition", metadata: ["partition": "\(partition)"])
                closeConsumer(channel)
                schedule.soon(.rebalance)
                partitionsChanged()
            }
            if channel == publisher || channel == control {
                throw AMQPError(.channelClosed, "worker channel \(channel) was closed by the broker")
            }
        case .confirm, .returned:
            break
        }
    }

    /// Acks the batches at the head of the pipeline whose events are all confirmed.
    private func completeConfirmed() throws {
        guard let conn else { return }
        for done in pipeline.takeCompleted() {
            for ack in done.acks where conn.isChannelOpen(ack.channel) {
                try conn.ack(channel: ack.channel, deliveryTag: ack.tag, multiple: ack.multiple)
            }
            confirmedOutbox += done.outboxIDs
            status.count(done.results)
            metrics.count(done.results, done.observations)
            if done.publishedAtNs > 0 {
                metrics.confirmSeconds.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds &- done.publishedAtNs))
            }
            statusDirty = true
            log(done.results)
        }
    }

    /// Waits until every batch in the pipeline is confirmed and acked.
    private func drainPipeline() throws {
        let deadline = Self.monotonic() + 30
        try completeConfirmed()
        while !pipeline.isEmpty {
            guard Self.monotonic() < deadline else { throw AMQPError(.timeout, "no publisher confirms for 30 s") }
            try pump(timeout: 0.1)
            // A broker that blocks publishing (a resource alarm) holds the confirms back: say
            // so while waiting for them (the status file is rewritten only when that changes).
            if conn?.blockedReason != status.brokerBlocked { writeStatus() }
        }
    }

    /// Waits `seconds` (or until asked to stop) while keeping the connection serviced; without
    /// a connection, just waits.
    private func pause(_ seconds: Double) {
        let until = Self.monotonic() + seconds
        while !stop.isSet, Self.monotonic() < until {
            let left = until - Self.monotonic()
            if conn != nil {
                do { try pump(timeout: min(left, 0.1)) } catch { return }
            } else {
                Thread.sleep(forTimeInterval: min(max(left, 0), 0.05))
            }
        }
    }

    // MARK: - The store, asynchronously

    /// Runs a store operation off this thread and waits for it while serving the connection:
    /// heartbeats go out, confirms are counted (and their batches acked), deliveries are
    /// buffered. A long transaction (a busy SQLite file, a slow database) therefore never
    /// stalls the connection.
    ///
    /// Without a connection it just waits, for at most `offlineLimit` seconds when given (a
    /// best-effort call while the session ends must not hold up a stop or a reconnect when
    /// the database does not answer).
    func awaitStore<T: Sendable>(offlineLimit: Double? = nil, _ operation: @escaping @Sendable () async throws -> T) throws -> T {
        let box = ResultBox<T>()
        let waker = self.waker
        Task {
            do { box.set(.success(try await operation())) } catch { box.set(.failure(error)) }
            waker.signal()
        }
        while true {
            if let result = box.take() { return try result.get() }
            if conn == nil {
                if let offlineLimit {
                    guard box.wait(seconds: offlineLimit) else { throw StoreError(.unavailable, "no answer within \(offlineLimit) s") }
                } else {
                    box.wait()
                }
                continue
            }
            do {
                try pump(timeout: 0.5)
                // A store call that outlives the safe half of the leases (a database that does
                // not answer): let the partitions go while it runs.
                abandonStalePartitions()
            } catch {
                // The connection died: let the store operation finish before the session is
                // torn down, so no two operations of this worker overlap.
                box.wait()
                throw error
            }
        }
    }

    enum Applied {
        case applied(ProcessedBatch)
        /// The store is busy, down or contended: nothing was written; try again later.
        case unavailable(Error)
        /// A partition lease is no longer this worker's: nothing was written.
        case fenced
        /// Not an outage: the input (or a stored run) is the problem.
        case failed(Error)
    }

    /// The one apply path, for commands and timers: load, decide, commit through the
    /// applier, retrying an unavailable store a few times with backoff (serving the
    /// connection meanwhile).
    private func apply(_ items: [WorkItem], partitions: Set<Int>) throws -> Applied {
        var delay = 0.05
        for attempt in 1...4 {
            // The fence holds the lease of every partition the items belong to; one missing
            // (lost while this waited) means nothing may be written for them.
            let fenceLeases = partitions.compactMap { leases.lease(for: $0) }
            guard fenceLeases.count == partitions.count else {
                status.counters.fencedCommits += 1
                return .fenced
            }
            let published = Set(pipeline.pending.flatMap(\.outboxIDs))
            let remove = confirmedOutbox
            let applier = self.applier
            let fence = (workerID: workerID, leases: fenceLeases)
            // Nothing else calls the store meanwhile (chores wait for this thread): the
            // difference is this batch's round trips.
            let tripsBefore = (store as? PostgresRunStore)?.roundTrips
            do {
                let processed = try awaitStore {
                    try await applier.apply(items, published: published, removeOutbox: remove, fence: fence)
                }
                confirmedOutbox.removeFirst(remove.count)
                status.counters.commits += 1
                if status.storeError != nil {
                    logger.notice("the store accepts writes again")
                    status.storeError = nil
                    statusDirty = true
                }
                if let tripsBefore, let postgres = store as? PostgresRunStore {
                    status.counters.batchRoundTrips += postgres.roundTrips - tripsBefore
                }
                return .applied(processed)
            } catch let error as StoreError where error.code == .leaseLost {
                status.counters.fencedCommits += 1
                statusDirty = true
                logger.warning("the store refused a commit: a partition lease is lost", metadata: ["error": "\(error)"])
                return .fenced
            } catch let error as StoreError where error.isTransient {
                if attempt == 4 || stop.isSet {
                    storeRefused(error)
                    return .unavailable(error)
                }
                logger.warning("store busy, retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                pause(delay)
                delay *= 4
            } catch let error as AMQPError {
                throw error
            } catch {
                return .failed(error)
            }
        }
        return .unavailable(StoreError(.unavailable, "unreachable"))
    }

    /// A write the store refused as unavailable (a full disk, an I/O error, a database that
    /// does not answer) makes the worker report it (status `store_error`, /readyz), whichever
    /// write met it: a batch after its retries, a redelivered command's attempt count, a lease
    /// renewal or claim, an outbox deletion. A full disk often meets one of the small writes
    /// first, the batch path never at all when its partitions were given up meanwhile and its
    /// deliveries come back redelivered. A commit that goes through clears it, as does a lease
    /// renewal 10 s after the last refusal.
    private func storeRefused(_ error: Error) {
        guard let error = error as? StoreError, error.code == .unavailable else { return }
        status.storeError = "\(error)"
        storeErrorAt = Self.monotonic()
        statusDirty = true
    }

    // MARK: - The careful path

    /// One message at a time, each acked on its own, with the poison guard.
    private func applyOneByOne(_ batch: [Received]) throws {
        for (i, r) in batch.enumerated() {
            let rest = Array(batch[i...])
            let key = r.key
            let store = self.store
            let now = applier.clock()
            // Nothing, not even the poison count, for a partition this worker no longer holds.
            guard try confirmLeases() else {
                try requeue(rest, because: StoreError(.unavailable, "cannot confirm the partition leases"), pause: 0.5)
                return
            }
            guard channels[r.channel] != nil else { continue }  // its partition was lost: back in its queue
            if r.redelivered {
                let attempts: Int
                // A message this worker gave back during an outage is not an attempt.
                let increment = requeuedForOutage.remove(key) == nil
                do {
                    attempts = try awaitStore { try await store.recordDeliveryAttempt(key: key, error: nil, increment: increment, at: now) }
                } catch let error as AMQPError {
                    throw error
                } catch {
                    storeRefused(error)
                    try requeue(rest, because: error, pause: 0.5)
                    return
                }
                if case .deadLetter(let n) = poison.redelivered(attempts: attempts) {
                    let last = (try? awaitStore { try await store.lastDeliveryError(key: key) }) ?? nil
                    try deadLetterPoison(r, attempts: n, lastError: last ?? "redelivered after its handler stopped")
                    continue
                }
            }
            guard channels[r.channel] != nil else { continue }  // lost while its attempts were counted
            let leased = leases.partitions
            switch try apply([.command(r.command)], partitions: Set([r.command.partition].compactMap { $0 })) {
            case .applied(let processed):
                guard try stillHolding(leased, after: rest) else { return }
                try publish(processed.messages,
                            then: PublishedBatch(
                                acks: [Ack(channel: r.channel, tag: r.tag, multiple: false)], results: processed.results,
                                observations: processed.observations))
                try drainPipeline()
            case .unavailable(let error):
                try requeue(rest, because: error, pause: 0.5)
                return
            case .fenced:
                try leasesRefused(keeping: rest)
                return
            case .failed(let error):
                let redelivered = r.redelivered
                let failures = (try? awaitStore {
                    try await store.recordDeliveryAttempt(key: key, error: "\(error)", increment: !redelivered, at: now)
                }) ?? 1
                status.counters.commandFailures += 1
                logger.error("command failed", metadata: [
                    "error": "\(error)", "attempts": "\(failures)", "routing_key": .string(r.command.routingKey),
                    "command_id": .string(r.command.messageID ?? "-"),
                ])
                switch poison.failed(failures: failures) {
                case .deadLetter(let n):
                    try deadLetterPoison(r, attempts: n, lastError: "\(error)")
                    continue
                case .requeue(let seconds):
                    // Back to the queue, with what followed it (order).
                    try requeue(rest, because: error, pause: seconds, outage: false)
                    return
                case .apply:
                    continue
                }
            }
        }
    }

    /// Gives deliveries back to their queues, with everything read after them (so that the
    /// queue order is kept), and pauses.
    private func requeue(_ batch: [Received], because error: Error, pause seconds: Double, outage: Bool = true) throws {
        let all = batch + buffered
        buffered = []
        if outage {
            // Given back because the store (or the lease check) was out, not because of the
            // message: its redelivery must not count toward the delivery limit, or an outage
            // longer than a few retries would dead-letter good commands.
            if requeuedForOutage.count > 100_000 { requeuedForOutage.removeAll() }
            for r in all { requeuedForOutage.insert(r.key) }
        }
        logger.error("requeueing commands", metadata: ["error": "\(error)", "commands": "\(all.count)"])
        status.counters.requeued += all.count
        statusDirty = true
        if let conn {
            for r in all.reversed() where conn.isChannelOpen(r.channel) {
                try conn.nack(channel: r.channel, deliveryTag: r.tag, multiple: false, requeue: true)
            }
        }
        pause(seconds)
    }

    private func deadLetterPoison(_ r: Received, attempts: Int, lastError: String) throws {
        // Lost meanwhile: the partition's owner counts and decides from now on.
        guard channels[r.channel] != nil, try confirmLeases(), channels[r.channel] != nil else { return }
        let headers = RunError(RunError.Code(rawValue: "delivery_limit_exceeded"), lastError)
            .deadLetterHeaders(originalRoutingKey: r.command.routingKey, deliveryAttempts: attempts)
        let message = OutboundMessage(
            destination: .dead, routingKey: r.command.routingKey, messageID: r.command.messageID, headers: headers,
            body: r.command.body)
        try publish([message], then: PublishedBatch(acks: [Ack(channel: r.channel, tag: r.tag, multiple: false)]))
        try drainPipeline()
        status.counters.poisonDeadLettered += 1
        metrics.deadLettered(reason: "delivery_limit_exceeded")
        logger.error("poison message dead-lettered", metadata: [
            "attempts": "\(attempts)", "routing_key": .string(r.command.routingKey), "error": .string(lastError),
        ])
    }

    // MARK: - Partition ownership

    /// Claims free partitions up to this worker's fair share and gives up extras. The store
    /// decides who owns a partition (its lease); the broker's consumer follows the lease.
    private func rebalance(_ conn: BlockingConnection) throws {
        if !conn.isChannelOpen(control) { control = try conn.openChannel() }
        let workers = knownWorkers
        switch balancer.plan(liveWorkers: workers) {
        case .keep:
            break
        case .release(let partitions):
            // Finish what was applied; what is read but unapplied goes back with the channel.
            try drainPipeline()
            for partition in partitions {
                guard let channel = channels.first(where: { $0.value == partition })?.key else { continue }
                channels[channel] = nil
                balancer.released(partition)
                buffered.removeAll { $0.channel == channel }
                try? conn.closeChannel(channel)
                logger.info("released partition", metadata: ["partition": "\(partition)", "workers": "\(workers)"])
            }
            partitionsChanged()
        case .claim(let candidates, let want):
            var claimed = 0
            claiming: for partition in candidates where claimed < want && !stop.isSet {
                let lease: PartitionLease
                switch try acquireLease(partition) {
                case .taken(let taken): lease = taken
                case .heldByAnother: continue claiming
                case .storeFailed: break claiming  // the next rebalance tries again
                }
                // The previous owner's committed but unconfirmed events go out before any new
                // event of the partition's runs.
                try sweepOutbox(olderThan: 0, partitions: [partition])
                // Given up while the sweep waited on the store (see abandonStalePartitions).
                guard leases.lease(for: partition) == lease else { continue }
                let channel = try conn.openChannel()
                do {
                    try conn.qos(channel: channel, prefetchCount: UInt16(settings.prefetch))
                    _ = try conn.consume(
                        channel: channel, queue: topology.partitionQueue(partition), exclusive: topology.exclusivePartitionConsumers)
                    channels[channel] = partition
                    balancer.claimed(partition)
                    claimed += 1
                    logger.info("claimed partition", metadata: [
                        "partition": "\(partition)", "epoch": "\(lease.epoch)", "workers": "\(workers)",
                    ])
                } catch let error as AMQPError where !error.isConnectionLevel {
                    // A stale consumer still holds the queue (403 in exclusive use: the previous
                    // owner's connection is not closed yet). The lease goes back below; a later
                    // rebalance tries again.
                    try? conn.closeChannel(channel)
                    logger.info("partition leased but its queue is still in use", metadata: [
                        "partition": "\(partition)", "error": "\(error)",
                    ])
                }
            }
            if claimed > 0 { partitionsChanged() }
        }
        // Leases without a consumer (released above, a failed consume, a consumer the broker
        // cancelled and that was not claimed back) go back to the store.
        let unused = leases.unused(consumed: balancer.owned)
        if !unused.isEmpty { releaseLeases(unused) }
        if !status.ready {
            status.ready = true
            statusDirty = true
            logger.info("runworker ready", metadata: ["partitions": "\(balancer.owned.sorted())"])
        }
    }

    enum AcquireOutcome {
        case taken(PartitionLease)
        case heldByAnother
        case storeFailed
    }

    /// Takes `partition`'s lease, unless another worker holds it or the store cannot say.
    private func acquireLease(_ partition: Int) throws -> AcquireOutcome {
        let store = self.store
        let workerID = self.workerID
        let ttl = settings.leaseTTLS
        let started = Self.monotonic()
        do {
            guard let lease = try awaitStore({ try await store.acquireLease(partition: partition, workerID: workerID, ttl: ttl) })
            else { return .heldByAnother }
            leases.acquired(lease, sentAt: started)
            return .taken(lease)
        } catch let error as AMQPError {
            throw error
        } catch {
            logger.warning("cannot take a partition lease", metadata: ["partition": "\(partition)", "error": "\(error)"])
            storeRefused(error)
            return .storeFailed
        }
    }

    /// The lease chore: a round trip to the broker, then this worker's heartbeat and its
    /// leases renewed in the store. A worker cut off from the broker blocks in the round trip
    /// and so stops renewing: its partitions move to workers that can serve them. Returns
    /// whether the store answered; lost leases are dropped.
    @discardableResult
    private func renewLeases(_ conn: BlockingConnection) throws -> Bool {
        let started = Self.monotonic()
        if !conn.isChannelOpen(control) { control = try conn.openChannel() }
        try conn.exchangeDeclare(
            channel: control, name: topology.commandsExchange, type: AMQPExchangeType(Topology.commandsExchangeType), durable: true)
        let store = self.store
        let workerID = self.workerID
        let ttl = settings.leaseTTLS
        let held = leases.all
        let live: [String]
        let kept: [PartitionLease]
        do {
            (live, kept) = try awaitStore {
                (try await store.heartbeat(workerID: workerID, ttl: ttl), try await store.renewLeases(held, workerID: workerID, ttl: ttl))
            }
        } catch let error as AMQPError {
            throw error
        } catch {
            logger.warning("cannot renew partition leases", metadata: ["error": "\(error)"])
            storeRefused(error)
            return false
        }
        // The store took this write; a refused batch long enough ago (with nothing refused
        // since) no longer makes the worker unready, even when no command comes to prove it.
        if status.storeError != nil, Self.monotonic() - storeErrorAt > 10 {
            logger.notice("the store accepts writes again")
            status.storeError = nil
            statusDirty = true
        }
        if knownWorkers != live.count { logger.info("live workers", metadata: ["workers": "\(live.count)"]) }
        knownWorkers = max(1, live.count)
        let lost = leases.renewed(held: held, kept: kept, sentAt: started)
        if !lost.isEmpty { try dropPartitions(lost) }
        return true
    }

    /// Whether this worker may act on its partitions now: within the safe half of its leases,
    /// or, past it, once the store has renewed them (lost ones are dropped).
    private func confirmLeases() throws -> Bool {
        guard !leases.isValid(at: Self.monotonic()) else { return true }
        guard let conn else { throw AMQPError(.connectionClosed, "not connected") }
        logger.warning("partition leases not renewed for half their ttl; checking them before going on")
        if try renewLeases(conn) { return true }
        abandonStalePartitions()
        return false
    }

    /// Past the safe half of its leases without a renewal (the store is down, or a store call
    /// hangs), the worker gives its partitions up on the broker: it closes their consumers, so
    /// that the consumer of whoever takes the lease next can become active (single active
    /// consumer hands a queue over only when the active one goes), and forgets the leases and
    /// what it read. It takes partitions again, through the store, once the store answers.
    func abandonStalePartitions() {
        guard !leases.isEmpty, !leases.isValid(at: Self.monotonic()) else { return }
        logger.warning("cannot confirm partition leases with the store; giving the partitions up", metadata: [
            "partitions": "\(balancer.owned.sorted())",
        ])
        let lost = leases.removeAll()
        status.counters.leasesLost += lost
        metrics.leasesLost.increment(by: Int64(lost))
        for channel in Array(channels.keys) { closeConsumer(channel) }
        buffered = []
        schedule.soon(.rebalance)
        partitionsChanged()
    }

    /// After a commit, before its events go out: true when every lease is still held. If one
    /// is not (the worker stalled between commit and publish), nothing of the batch is
    /// published or acked: its events stay in the outbox for whoever owns each partition now,
    /// and its deliveries on partitions still held are applied again (answered as duplicates,
    /// with the events republished in order).
    private func stillHolding(_ leased: Set<Int>, after batch: [Received]) throws -> Bool {
        let confirmed = try confirmLeases()
        guard confirmed, leased.isSubset(of: leases.partitions) else {
            buffered = batch.filter { channels[$0.channel] != nil } + buffered
            if !confirmed { pause(0.5) }
            return false
        }
        return true
    }

    /// The store refused a fenced commit: find out which leases are gone, drop them, and put
    /// the batch's deliveries on partitions still held back at the head of the line.
    private func leasesRefused(keeping batch: [Received]) throws {
        guard let conn else { throw AMQPError(.connectionClosed, "not connected") }
        if !(try renewLeases(conn)) { pause(0.5) }
        closeUnleasedConsumers()
        buffered = batch.filter { channels[$0.channel] != nil } + buffered
    }

    /// Closes a partition's consumer channel and forgets what was read from it and the acks
    /// of its batches still in flight: the broker returns the unacked deliveries to the queue,
    /// and a channel opened later may reuse the number.
    private func closeConsumer(_ channel: UInt16) {
        guard let partition = channels.removeValue(forKey: channel) else { return }
        balancer.lost(partition)
        buffered.removeAll { $0.channel == channel }
        pipeline.updatePending { $0.acks.removeAll { $0.channel == channel } }
        try? conn?.closeChannel(channel)
    }

    /// Consumers whose partition has no lease (lost while a store call ran) stop.
    private func closeUnleasedConsumers() {
        for (channel, partition) in channels where leases.lease(for: partition) == nil { closeConsumer(channel) }
    }

    /// Stops working on partitions whose lease is gone: closes their consumers (the broker
    /// returns their unacked deliveries to the queue, for the new owner) and forgets what was
    /// read from them. Batches already published on them were committed under the lease.
    private func dropPartitions(_ partitions: Set<Int>) throws {
        leases.remove(partitions)
        for partition in partitions.sorted() {
            status.counters.leasesLost += 1
            metrics.leasesLost.increment()
            logger.warning("partition lease lost; dropping the partition", metadata: ["partition": "\(partition)"])
            if let channel = channels.first(where: { $0.value == partition })?.key { closeConsumer(channel) }
        }
        schedule.soon(.rebalance)
        partitionsChanged()
    }

    /// Gives leases back to the store (expired at once) so that other workers can take the
    /// partitions without waiting for the ttl; best effort: they expire anyway.
    private func releaseLeases(_ released: [PartitionLease]? = nil) {
        let give = released ?? leases.all
        guard !give.isEmpty else { return }
        // Rows confirmed but not yet marked would otherwise be published again by the next
        // owner's sweep (they wait for a batch or an idle moment to be marked).
        try? removeConfirmedOutbox(offlineLimit: 2)
        leases.remove(give.map(\.partition))
        let store = self.store
        let workerID = self.workerID
        do {
            try awaitStore(offlineLimit: 2) { for lease in give { try await store.releaseLease(lease, workerID: workerID) } }
        } catch {
            logger.warning("could not give back partition leases; they expire after lease_ttl_s", metadata: ["error": "\(error)"])
        }
    }

    /// A graceful stop: this worker is no longer counted among the live ones.
    private func leaveMembership() {
        let store = self.store
        let workerID = self.workerID
        _ = try? awaitStore(offlineLimit: 2) { try await store.leave(workerID: workerID) }
    }

    private func partitionsChanged() {
        status.partitions = balancer.owned.sorted()
        metrics.partitionsOwned.record(status.partitions.count)
        statusDirty = true
        writeStatus()
    }

    // MARK: - Timers and the outbox

    /// Fires the elapsed deadlines of runs in the partitions this worker owns. Only the owner
    /// of a run's partition fires it, inside the same loop as that partition's commands, so a
    /// timer never races a command; the store's version check makes a second firing a no-op.
    private func sweepTimers() throws {
        guard !balancer.owned.isEmpty, !pipeline.isFull, try confirmLeases() else { return }
        let store = self.store
        let now = applier.clock()
        let partitions = balancer.owned.sorted()
        let limit = 256
        let due: [String]
        do {
            due = try awaitStore { try await store.runsDue(at: now, partitions: partitions, limit: limit) }
        } catch let error as AMQPError {
            throw error
        } catch {
            logger.warning("timer sweep failed, will retry", metadata: ["error": "\(error)"])
            return
        }
        guard !due.isEmpty else { return }
        let leased = leases.partitions
        switch try apply(due.map { .timer(runID: $0) }, partitions: Set(partitions)) {
        case .applied(let processed):
            // Stalled since the commit and a lease lost: the events wait in the outbox for the
            // partition's owner (or this worker's next sweep).
            guard try confirmLeases(), leased.isSubset(of: leases.partitions) else {
                // Before any newer event of the runs still held (the command path re-applies
                // its deliveries instead).
                try sweepOutbox(olderThan: 0, partitions: leased.intersection(leases.partitions).sorted())
                return
            }
            try publish(processed.messages, then: PublishedBatch(results: processed.results, observations: processed.observations))
        case .fenced:
            guard let conn else { throw AMQPError(.connectionClosed, "not connected") }
            try renewLeases(conn)
            return
        case .unavailable(let error), .failed(let error):
            logger.warning("timer sweep failed, will retry", metadata: ["error": "\(error)"])
            return
        }
        // A full page means more may be due: look again at once.
        if due.count == limit { schedule.soon(.timerSweep) }
    }

    /// Publishes outbox rows older than `seconds` (all of them at 0) of the runs of
    /// `partitions` (default: those this worker holds): events committed by a worker that
    /// died, stalled or lost its connection before the broker confirmed them. Never another
    /// worker's partitions: their owner may be publishing newer events of the same runs.
    private func sweepOutbox(olderThan seconds: Double, partitions only: [Int]? = nil) throws {
        let partitions = only ?? leases.partitions.sorted()
        guard !partitions.isEmpty else { return }
        let store = self.store
        let cutoff = applier.clock().adding(seconds: -seconds)
        while true {
            let skip = Set(pipeline.pending.flatMap(\.outboxIDs)).union(confirmedOutbox)
            let rows: [OutboxMessage]
            do {
                rows = try awaitStore { try await store.pendingOutbox(writtenBefore: cutoff, partitions: partitions, limit: 500) }
            } catch let error as AMQPError {
                throw error
            } catch {
                logger.warning("outbox sweep failed, will retry", metadata: ["error": "\(error)"])
                return
            }
            let fresh = rows.filter { !skip.contains($0.id) }
            guard !fresh.isEmpty, try confirmLeases(), leases.partitions.isSuperset(of: partitions) else { return }
            logger.info("publishing events left in the outbox", metadata: ["count": "\(fresh.count)"])
            status.counters.outboxRepublished += fresh.count
            try publish(fresh.map(OutboundMessage.init(outbox:)), then: PublishedBatch(outboxIDs: []))
            try drainPipeline()
            if rows.count < 500 { return }
        }
    }

    /// Marks confirmed outbox rows published when no batch came along to carry them.
    private func removeConfirmedOutbox(offlineLimit: Double? = nil) throws {
        guard !confirmedOutbox.isEmpty else { return }
        let ids = confirmedOutbox
        let store = self.store
        do {
            try awaitStore(offlineLimit: offlineLimit) { try await store.removeOutbox(ids: ids) }
            confirmedOutbox.removeFirst(ids.count)
        } catch let error as AMQPError {
            throw error
        } catch {
            logger.warning("could not delete confirmed outbox rows, will retry", metadata: ["error": "\(error)"])
            storeRefused(error)
        }
    }

    // MARK: - Publishing

    /// The one publish path: publishes in order on the confirming channel and adds the batch
    /// to the pipeline; `then` is done once every message is confirmed (see `completeConfirmed`).
    private func publish(_ messages: [OutboundMessage], then completion: PublishedBatch) throws {
        guard let conn else { throw AMQPError(.connectionClosed, "not connected") }
        var completion = completion
        completion.outboxIDs += messages.compactMap(\.outboxID)
        let timestamp = Date()
        let outgoing = messages.map { m in
            var headers = AMQPTable()
            headers.reserveCapacity(m.headers.count + 1)
            for (k, v) in m.headers {
                switch v {
                case .string(let s): headers[k] = .string(s)
                case .int(let i): headers[k] = .int64(i)
                }
            }
            headers[ContractVersion.header] = .string(ContractVersion.current)
            let exchange: String
            switch m.destination {
            case .events: exchange = topology.eventsExchange
            case .dead: exchange = topology.deadExchange
            case .reply: exchange = ""
            }
            return AMQPOutgoingMessage(
                exchange: exchange, routingKey: m.routingKey, body: m.body,
                properties: AMQPProperties(
                    contentType: "application/json", headers: headers,
                    deliveryMode: m.persistent ? 2 : 1, correlationID: m.correlationID, messageID: m.messageID,
                    timestamp: timestamp, type: m.type))
        }
        // One socket write for the batch's frames.
        let tags = try conn.publishBatch(channel: publisher, outgoing)
        completion.publishedAtNs = DispatchTime.now().uptimeNanoseconds
        pipeline.published(tags: tags, completion: completion)
        try completeConfirmed()
    }

    // MARK: - Reporting

    private func writeStatus(force: Bool = false) {
        if let http = shared.httpAddress, status.httpAddress != http {
            status.httpAddress = http
            statusDirty = true
        }
        if let webhooks = shared.webhooks, status.webhooks != webhooks {
            status.webhooks = webhooks
            statusDirty = true
        }
        let blocked = conn?.blockedReason
        if blocked != status.brokerBlocked {
            if let blocked {
                logger.warning("the broker blocks publishing (resource alarm); events wait", metadata: ["reason": .string(blocked)])
            } else {
                logger.notice("the broker unblocked publishing")
            }
            status.brokerBlocked = blocked
            statusDirty = true
        }
        guard statusDirty || force else { return }
        if let postgres = store as? PostgresRunStore { status.counters.storeRoundTrips = postgres.roundTrips }
        if let cache = applier.cache {
            status.counters.runCacheRuns = cache.count
            status.counters.runCacheBytes = cache.bytes
        }
        shared.update(status)
        guard let path = settings.statusFile else {
            statusDirty = false
            return
        }
        do {
            try status.write(to: path)
            statusDirty = false
        } catch {
            logger.warning("could not write the status file", metadata: ["path": .string(path), "error": "\(error)"])
        }
    }

    private func log(_ results: [CommandResult]) {
        // Most results are applied commands, logged at debug: below that level, skip them
        // without building their metadata.
        let debug = logger.logLevel <= .debug
        for r in results {
            if case .applied = r.kind, !debug { continue }
            var metadata: Logger.Metadata = [:]
            if let id = r.runID { metadata["run_id"] = .string(id) }
            if let id = r.commandID { metadata["command_id"] = .string(id) }
            if let c = r.command { metadata["command"] = .string(c) }
            switch r.kind {
            case .applied(let events):
                metadata["events"] = "\(events)"
                logger.debug("applied", metadata: metadata)
            case .duplicate(let outcome):
                metadata["first_outcome"] = .string(outcome.error?.code.rawValue ?? "ok")
                logger.info("duplicate command answered with its first outcome", metadata: metadata)
            case .refused(let error):
                metadata["code"] = .string(error.code.rawValue)
                metadata["reason"] = .string(error.message)
                logger.info("command refused", metadata: metadata)
            case .deadLettered(let error):
                metadata["code"] = .string(error.code.rawValue)
                metadata["reason"] = .string(error.message)
                logger.warning("message dead-lettered", metadata: metadata)
            case .timerFired(let events):
                metadata["events"] = "\(events)"
                logger.info("deadline fired", metadata: metadata)
            }
        }
    }
}

/// The result of an operation running on another thread, handed to the loop's thread.
final class ResultBox<T: Sendable>: Sendable {
    private let state = Mutex<Result<T, Error>?>(nil)
    private let done = DispatchSemaphore(value: 0)

    func set(_ result: Result<T, Error>) {
        state.withLock { $0 = result }
        done.signal()
    }

    /// The result once it is there (and only once).
    func take() -> Result<T, Error>? {
        state.withLock { r in
            defer { if r != nil { r = nil } }
            return r
        }
    }

    /// Blocks until the result is there (without taking it).
    func wait() {
        done.wait()
        done.signal()
    }

    /// Like `wait()`, for at most `seconds`; whether the result is there.
    func wait(seconds: Double) -> Bool {
        guard done.wait(timeout: .now() + seconds) == .success else { return false }
        done.signal()
        return true
    }
}

/// Counters of the batch loop, for tuning: how big batches are and where the time goes.
struct LoopStats {
    var batches = 0
    var commands = 0
    var applyNs: UInt64 = 0
    var publishNs: UInt64 = 0
    var inFlightSum = 0
    var since = DispatchTime.now().uptimeNanoseconds

    mutating func record(commands n: Int, applyNs a: UInt64, publishNs p: UInt64, inFlight: Int) {
        batches += 1
        commands += n
        applyNs += a
        publishNs += p
        inFlightSum += inFlight
    }

    /// Every 10 s: the figures since the last report, then a fresh start.
    mutating func report() -> Logger.Metadata? {
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - since) / 1e9
        guard elapsed >= 10, batches > 0 else { return nil }
        defer { self = LoopStats() }
        return [
            "batches": "\(batches)", "commands": "\(commands)", "avg_batch": "\(commands / batches)",
            "apply_ms": "\(applyNs / 1_000_000)", "publish_ms": "\(publishNs / 1_000_000)",
            "avg_in_flight": "\(Double(inFlightSum) / Double(batches))", "elapsed_ms": "\(Int(elapsed * 1000))",
        ]
    }
}
