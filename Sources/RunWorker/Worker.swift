import AMQPClient
import Foundation
import Logging
import RunContract
import RunStateMachine
import RunStore
import ServiceLifecycle
import Synchronization

/// The worker as a service: `run()` returns after a graceful shutdown (SIGTERM/SIGINT through
/// a `ServiceGroup`), once the batch in flight is stored, published, confirmed and acked.
public final class Worker: Service {
    public let settings: WorkerSettings
    let logger: Logger
    let store: any RunStore
    let clock: @Sendable () -> Timestamp
    private let stopFlag = StopFlag()

    public init(
        settings: WorkerSettings, logger: Logger, store: (any RunStore)? = nil,
        clock: @escaping @Sendable () -> Timestamp = Worker.systemClock
    ) throws {
        self.settings = settings
        self.logger = logger
        self.clock = clock
        self.store = try store ?? SQLiteRunStore.open(
            url: settings.store, synchronous: settings.sqliteSynchronous == "NORMAL" ? .normal : .full)
    }

    public static let systemClock: @Sendable () -> Timestamp = {
        Timestamp(seconds: Date().timeIntervalSince1970)
    }

    /// Asks the loop to stop after the batch in flight.
    public func stop() { stopFlag.set() }

    public func run() async throws {
        let loop = WorkerLoop(
            settings: settings, logger: logger, stop: stopFlag,
            processor: CommandProcessor(
                store: store, machine: RunStateMachine(defaults: settings.runDefaults),
                maxBodyBytes: settings.maxBodyBytes, clock: clock))
        let stopFlag = self.stopFlag
        try await withGracefulShutdownHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
                // librabbitmq and the loop block: they get a thread of their own, which alone
                // touches the connection.
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
        } onGracefulShutdown: {
            stopFlag.set()
        }
    }
}

final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}

/// The command loop. Everything in it runs on one thread, which owns the AMQP connection.
/// `@unchecked Sendable`: it is handed to that thread once and used there only.
final class WorkerLoop: @unchecked Sendable {
    let settings: WorkerSettings
    let topology: Topology
    var logger: Logger
    let stop: StopFlag
    let processor: CommandProcessor
    let workerID = String(UInt64.random(in: 0...UInt64.max), radix: 36)

    // Per connection.
    var conn: BlockingConnection?
    var control: UInt16 = 0
    var publisher: UInt16 = 0
    /// Partition consumers: channel → partition index.
    var owned: [UInt16: Int] = [:]
    var nextRebalance = Date.distantPast
    var nextOutboxSweep = Date.distantPast
    var nextTimerSweep = Date.distantPast
    /// Outbox rows the broker confirmed, deleted with the next batch's transaction (or when idle).
    var confirmedOutbox: [Int64] = []
    /// Deliveries read but not yet applied, in arrival order.
    private var buffered: [Received] = []
    /// Published batches awaiting confirms, oldest first.
    private var inFlight: [InFlight] = []
    var maxInFlight: Int { settings.pipelineDepth }
    /// Where the loop's time goes, logged at debug level every 10 s.
    private var stats = LoopStats()
    var announcedReady = false
    /// Set once a session is connected: the next outage's backoff starts afresh.
    var sessionWasUp = false

    init(settings: WorkerSettings, logger: Logger, stop: StopFlag, processor: CommandProcessor) {
        self.settings = settings
        self.topology = settings.topology
        self.logger = logger
        self.stop = stop
        self.processor = processor
        self.logger[metadataKey: "worker"] = .string(workerID)
    }

    /// Runs sessions until asked to stop; a lost connection is re-established with backoff.
    func run() throws {
        var backoff = 0.2
        while !stop.isSet {
            do {
                try session()
                return
            } catch {
                close()
                if stop.isSet { return }
                if sessionWasUp {
                    sessionWasUp = false
                    backoff = 0.2
                }
                logger.warning("connection lost, reconnecting", metadata: ["error": "\(error)", "retry_in_s": "\(backoff)"])
                sleepUnlessStopped(backoff)
                backoff = min(backoff * 2, 10)
            }
        }
    }

    func sleepUnlessStopped(_ seconds: Double) {
        let until = Date().addingTimeInterval(seconds)
        while !stop.isSet, Date() < until { Thread.sleep(forTimeInterval: 0.05) }
    }

    // MARK: - Session

    private func session() throws {
        var config = try AMQPConfiguration(url: settings.amqpURL)
        if config.connectionName == nil { config.connectionName = "runworker-\(workerID)" }
        let conn = try BlockingConnection(configuration: config)
        self.conn = conn
        owned = [:]
        control = try conn.openChannel()
        try declareTopology(conn)
        publisher = try conn.openChannel()
        try conn.confirmSelect(channel: publisher)
        // Presence: every live worker consumes this queue, so its consumer count is the head count.
        let presence = try conn.openChannel()
        _ = try conn.consume(channel: presence, queue: topology.presenceQueue, noAck: true)

        try flushOutbox(olderThan: 0)
        nextRebalance = .distantPast
        logger.info("connected", metadata: ["broker": "\(config)", "prefix": "\(topology.prefix)"])
        sessionWasUp = true

        while !stop.isSet {
            let now = Date()
            if now >= nextRebalance {
                try rebalance(conn)
                nextRebalance = now.addingTimeInterval(settings.rebalanceIntervalS)
                if !announcedReady {
                    announcedReady = true
                    logger.info("runworker ready", metadata: ["partitions": "\(owned.values.sorted())"])
                }
            }
            if now >= nextOutboxSweep {
                // Rows a live worker is about to publish are younger than this; older ones
                // were left by a worker that died between commit and confirm.
                try flushOutbox(olderThan: 5)
                nextOutboxSweep = now.addingTimeInterval(5)
            }
            if now >= nextTimerSweep {
                nextTimerSweep = now.addingTimeInterval(settings.timerIntervalS)
                try sweepTimers(conn)
            }
            try processNextBatch(conn)
        }
        // Graceful stop: wait for the last confirms and ack; closing returns what is unapplied.
        logger.info("stopping: finishing in-flight batches, closing consumers and connection")
        try? drainInFlight(conn)
        close()
    }

    func close() {
        conn?.close()
        conn = nil
        owned = [:]
        // Unacked deliveries go back to their queues with the connection.
        buffered = []
        inFlight = []
    }

    private func declareTopology(_ conn: BlockingConnection) throws {
        let t = topology
        try conn.exchangeDeclare(
            channel: control, name: t.commandsExchange, type: AMQPExchangeType(Topology.commandsExchangeType), durable: true)
        try conn.exchangeDeclare(channel: control, name: t.eventsExchange, type: .topic, durable: true)
        try conn.exchangeDeclare(channel: control, name: t.deadExchange, type: .fanout, durable: true)
        _ = try conn.queueDeclare(channel: control, name: t.deadQueue, durable: true)
        try conn.queueBind(channel: control, queue: t.deadQueue, exchange: t.deadExchange, routingKey: "")
        _ = try conn.queueDeclare(channel: control, name: t.presenceQueue, durable: true)
        for q in t.partitionQueues {
            _ = try conn.queueDeclare(channel: control, name: q, durable: true)
            try conn.queueBind(channel: control, queue: q, exchange: t.commandsExchange, routingKey: "")
        }
    }

    // MARK: - Partition ownership

    /// Claims unowned partitions up to this worker's fair share and gives up extras.
    private func rebalance(_ conn: BlockingConnection) throws {
        if !conn.isChannelOpen(control) { control = try conn.openChannel() }
        let workers = max(1, Int(try conn.queueDeclare(channel: control, name: topology.presenceQueue, passive: true).consumerCount))
        let fair = (topology.partitions + workers - 1) / workers

        if owned.count > fair {
            // Finish what was applied; what is read but unapplied goes back with the channel.
            try drainInFlight(conn)
            // Highest partitions first, so workers converge on a stable split.
            for (channel, partition) in owned.sorted(by: { $0.value > $1.value }).prefix(owned.count - fair) {
                owned[channel] = nil
                buffered.removeAll { $0.channel == channel }
                try? conn.closeChannel(channel)
                logger.info("released partition", metadata: ["partition": "\(partition)", "workers": "\(workers)"])
            }
            return
        }
        guard owned.count < fair else { return }
        let mine = Set(owned.values)
        // Start at a per-worker offset so that workers starting together try different partitions.
        let offset = Int(UInt64(workerID, radix: 36)! % UInt64(topology.partitions))
        for step in 0..<topology.partitions where owned.count < fair {
            let partition = (offset + step) % topology.partitions
            guard !mine.contains(partition) else { continue }
            let queue = topology.partitionQueue(partition)
            let info = try conn.queueDeclare(channel: control, name: queue, passive: true)
            guard info.consumerCount == 0 else { continue }
            let channel = try conn.openChannel()
            do {
                try conn.qos(channel: channel, prefetchCount: UInt16(settings.prefetch))
                _ = try conn.consume(channel: channel, queue: queue, exclusive: true)
                owned[channel] = partition
                logger.info("claimed partition", metadata: ["partition": "\(partition)", "workers": "\(workers)"])
            } catch let error as AMQPError where !error.isConnectionLevel {
                // Another worker claimed it first (403 in exclusive use): the broker closed the channel.
                try? conn.closeChannel(channel)
            }
        }
    }

    // MARK: - Commands

    private struct Received {
        var channel: UInt16
        var tag: UInt64
        var redelivered: Bool
        var command: InboundCommand

        /// Identifies the message across deliveries, for the poison-message count.
        var key: String {
            if let id = command.messageID, !id.isEmpty { return "id:\(command.routingKey):\(id)" }
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in command.routingKey.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            for b in command.body { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            return "hash:\(String(h, radix: 16))"
        }
    }

    /// A batch whose events are published but not all confirmed yet. Its deliveries are
    /// acked, and its outbox rows released, only once every publish is confirmed.
    private struct InFlight {
        var firstTag: UInt64
        var lastTag: UInt64
        var outstanding: Int
        var acks: [(UInt16, UInt64)]
        var outboxIDs: [Int64]
        var results: [CommandResult]
    }

    /// One step of the loop. Batches are pipelined: while the broker confirms batch N's
    /// events, batch N+1 is applied and published (order is kept: one publishing channel, and
    /// acks and outbox deletions wait for the confirms).
    private func processNextBatch(_ conn: BlockingConnection) throws {
        // Block (until the next frame) whenever there is nothing to apply: no deliveries, or a
        // full pipeline. Polling instead would spin a core the broker needs.
        let canApply = !buffered.isEmpty && inFlight.count < maxInFlight
        let wait = canApply ? 0 : (inFlight.isEmpty ? min(0.1, settings.timerIntervalS) : 0.05)
        if wait > 0, let event = try conn.nextEvent(timeout: wait) { try handle(event) }
        for event in try conn.drainEvents(max: settings.batchSize * 2) { try handle(event) }
        try completeConfirmed(conn)

        guard !buffered.isEmpty else {
            if inFlight.isEmpty { removeConfirmedOutbox() }
            return
        }
        guard inFlight.count < maxInFlight else { return }  // the next step waits for confirms
        let batch = Array(buffered.prefix(settings.batchSize * 2))
        buffered.removeFirst(batch.count)

        // A redelivered message may be what killed a worker: take such batches one message at
        // a time, counting each delivery, so that only the culprit reaches the limit.
        if batch.contains(where: \.redelivered) {
            try drainInFlight(conn)
            try processOneByOne(conn, batch)
            return
        }
        let applyStart = DispatchTime.now().uptimeNanoseconds
        let applied = try applyWithRetries(batch.map(\.command), confirmedOutbox: confirmedOutbox)
        let publishStart = DispatchTime.now().uptimeNanoseconds
        switch applied {
        case .done(let processed):
            confirmedOutbox = []
            try publishPipelined(conn, processed.messages, acks: highestTags(batch), results: processed.results)
            stats.record(commands: batch.count, applyNs: publishStart - applyStart,
                         publishNs: DispatchTime.now().uptimeNanoseconds - publishStart, inFlight: inFlight.count)
            if let line = stats.report() { logger.debug("loop stats", metadata: line) }
        case .storeUnavailable(let error):
            try drainInFlight(conn)
            requeue(conn, batch, because: error)
        case .failed:
            // Something in the batch cannot be applied: find it.
            try drainInFlight(conn)
            try processOneByOne(conn, batch)
        }
    }

    /// Sorts one event from the connection: deliveries wait in `buffered`, confirms count
    /// down their batch.
    private func handle(_ event: AMQPEvent) throws {
        switch event {
        case .delivery(let d):
            guard let partition = owned[d.channel] else { return }  // released: the broker requeued it
            buffered.append(Received(
                channel: d.channel, tag: d.deliveryTag, redelivered: d.redelivered,
                command: InboundCommand(
                    body: d.body, routingKey: d.routingKey, messageID: d.properties.messageID,
                    replyTo: d.properties.replyTo, correlationID: d.properties.correlationID, partition: partition)))
        case .confirm(let c) where c.channel == publisher:
            guard c.acked else {
                // The broker could not take an event: start over; the outbox still has it and
                // the deliveries were not acked.
                throw AMQPError(.protocolError, "the broker refused (nacked) a published event")
            }
            if let i = inFlight.firstIndex(where: { $0.firstTag <= c.deliveryTag && c.deliveryTag <= $0.lastTag }) {
                inFlight[i].outstanding -= 1
            }
        case .consumerCancelled(let channel, _), .channelClosed(let channel, _):
            if let partition = owned.removeValue(forKey: channel) {
                logger.warning("lost partition", metadata: ["partition": "\(partition)"])
                buffered.removeAll { $0.channel == channel }
                nextRebalance = .distantPast
            }
            if channel == publisher || channel == control {
                throw AMQPError(.channelClosed, "worker channel \(channel) was closed by the broker")
            }
        case .confirm, .returned:
            break
        }
    }

    /// Acks the batches at the head of the pipeline whose events are all confirmed.
    private func completeConfirmed(_ conn: BlockingConnection) throws {
        while let head = inFlight.first, head.outstanding <= 0 {
            inFlight.removeFirst()
            for (channel, tag) in head.acks where conn.isChannelOpen(channel) {
                try conn.ack(channel: channel, deliveryTag: tag, multiple: true)
            }
            confirmedOutbox += head.outboxIDs
            log(head.results)
        }
    }

    /// Waits until every batch in the pipeline is confirmed and acked.
    private func drainInFlight(_ conn: BlockingConnection) throws {
        let deadline = Date().addingTimeInterval(30)
        try completeConfirmed(conn)
        while !inFlight.isEmpty {
            guard Date() < deadline else { throw AMQPError(.timeout, "no publisher confirms for 30 s") }
            if let event = try conn.nextEvent(timeout: 0.1) { try handle(event) }
            try completeConfirmed(conn)
        }
    }

    private enum Applied {
        case done(ProcessedBatch)
        /// The store is busy or down: nothing was written; try again later.
        case storeUnavailable(Error)
        /// Not a store outage: the input (or a stored run) is the problem.
        case failed(Error)
    }

    /// Applies commands, retrying a busy or unreachable store a few times with backoff.
    private func applyWithRetries(_ commands: [InboundCommand], confirmedOutbox: [Int64] = []) throws -> Applied {
        var delay = 0.05
        for attempt in 1...4 {
            do {
                let published = Set(inFlight.flatMap(\.outboxIDs))
                return .done(try processor.process(commands, confirmedOutbox: confirmedOutbox, published: published))
            } catch let error as StoreError where error.code == .unavailable || error.code == .versionConflict {
                if attempt == 4 || stop.isSet { return .storeUnavailable(error) }
                logger.warning("store busy, retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                sleepUnlessStopped(delay)
                delay *= 4
            } catch {
                return .failed(error)
            }
        }
        return .storeUnavailable(StoreError(.unavailable, "unreachable"))
    }

    /// The careful path: one message at a time, each acked on its own, with the poison guard.
    private func processOneByOne(_ conn: BlockingConnection, _ batch: [Received]) throws {
        for (i, r) in batch.enumerated() {
            let rest = Array(batch[i...])
            let now = processor.clock()
            var attempts = 0
            if r.redelivered {
                do {
                    attempts = try processor.store.recordDeliveryAttempt(key: r.key, error: nil, at: now)
                } catch {
                    requeue(conn, rest, because: error)
                    return
                }
                if attempts > settings.deliveryLimit {
                    let last = (try? processor.store.lastDeliveryError(key: r.key)) ?? nil
                    try deadLetterPoison(conn, r, attempts: attempts - 1, lastError: last ?? "redelivered after its handler stopped")
                    continue
                }
            }
            switch try applyWithRetries([r.command]) {
            case .done(let processed):
                try publishConfirmed(conn, processed.messages)
                try conn.ack(channel: r.channel, deliveryTag: r.tag)
                log(processed.results)
            case .storeUnavailable(let error):
                requeue(conn, rest, because: error)
                return
            case .failed(let error):
                let count = (try? processor.store.recordDeliveryAttempt(
                    key: r.key, error: "\(error)", increment: !r.redelivered, at: now)) ?? (attempts + 1)
                logger.error("command failed", metadata: [
                    "error": "\(error)", "attempts": "\(count)", "routing_key": .string(r.command.routingKey),
                    "command_id": .string(r.command.messageID ?? "-"),
                ])
                if count >= settings.deliveryLimit {
                    try deadLetterPoison(conn, r, attempts: count, lastError: "\(error)")
                    continue
                }
                // Back to the queue, with what followed it (order), after a pause that grows
                // with the failures: never a hot loop on one message.
                requeue(conn, rest, because: error, pause: min(0.1 * Double(count), 1))
                return
            }
        }
    }

    /// Gives deliveries back to their queues, with everything read after them (so that the
    /// queue order is kept), and pauses.
    private func requeue(_ conn: BlockingConnection, _ batch: [Received], because error: Error, pause: Double = 0.5) {
        let all = batch + buffered
        buffered = []
        logger.error("requeueing commands", metadata: ["error": "\(error)", "commands": "\(all.count)"])
        for r in all.reversed() {
            try? conn.nack(channel: r.channel, deliveryTag: r.tag, multiple: false, requeue: true)
        }
        sleepUnlessStopped(pause)
    }

    private func deadLetterPoison(_ conn: BlockingConnection, _ r: Received, attempts: Int, lastError: String) throws {
        let message = OutboundMessage(
            destination: .dead, routingKey: r.command.routingKey, messageID: r.command.messageID,
            headers: [
                ("x-reason", .string("delivery_limit_exceeded")), ("x-reason-message", .string(lastError)),
                ("x-original-routing-key", .string(r.command.routingKey)), ("x-delivery-attempts", .int(Int64(attempts))),
            ],
            body: r.command.body)
        try publishConfirmed(conn, [message])
        try conn.ack(channel: r.channel, deliveryTag: r.tag)
        logger.error("poison message dead-lettered", metadata: [
            "attempts": "\(attempts)", "routing_key": .string(r.command.routingKey), "error": .string(lastError),
        ])
    }

    // MARK: - Timers

    /// Fires the elapsed deadlines of runs in the partitions this worker owns. Only the owner
    /// of a run's partition fires it, inside the same loop as that partition's commands, so a
    /// timer never races a command; the store's version check makes a second firing a no-op.
    private func sweepTimers(_ conn: BlockingConnection) throws {
        guard !owned.isEmpty else { return }
        let now = processor.clock()
        let due: [String]
        do {
            due = try processor.store.runsDue(at: now, partitions: Array(owned.values), limit: 256)
            guard !due.isEmpty else { return }
            let fired = try processor.fireTimers(runIDs: due)
            try publishPipelined(conn, fired.messages, acks: [], results: fired.results)
        } catch let error as StoreError {
            logger.warning("timer sweep failed, will retry", metadata: ["error": "\(error)"])
            return
        }
        // A full page means more may be due: look again at once.
        if due.count == 256 { nextTimerSweep = .distantPast }
    }

    private func highestTags(_ batch: [Received]) -> [(UInt16, UInt64)] {
        var top: [UInt16: UInt64] = [:]
        for r in batch { top[r.channel] = max(top[r.channel] ?? 0, r.tag) }
        return top.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// Publishes in order, waits for every confirm, then deletes the confirmed outbox rows.
    /// A nack or a timeout throws: the session restarts, the deliveries are redelivered, and
    /// the outbox still holds the events.
    private func publishConfirmed(_ conn: BlockingConnection, _ messages: [OutboundMessage]) throws {
        guard !messages.isEmpty else { return }
        try drainInFlight(conn)
        try publishPipelined(conn, messages, acks: [], results: [])
        try drainInFlight(conn)
    }

    /// Publishes and returns at once; the batch joins the pipeline (see `completeConfirmed`).
    private func publishPipelined(
        _ conn: BlockingConnection, _ messages: [OutboundMessage], acks: [(UInt16, UInt64)], results: [CommandResult]
    ) throws {
        var first: UInt64 = 0
        var last: UInt64 = 0
        let timestamp = Date()
        for m in messages {
            var headers = AMQPTable()
            for (k, v) in m.headers {
                switch v {
                case .string(let s): headers[k] = .string(s)
                case .int(let i): headers[k] = .int64(i)
                }
            }
            let properties = AMQPProperties(
                contentType: "application/json", headers: headers.isEmpty ? nil : headers,
                deliveryMode: m.persistent ? 2 : 1, correlationID: m.correlationID, messageID: m.messageID,
                timestamp: timestamp, type: m.type)
            let exchange: String
            switch m.destination {
            case .events: exchange = topology.eventsExchange
            case .dead: exchange = topology.deadExchange
            case .reply: exchange = ""
            }
            let tag = try conn.publish(
                channel: publisher, exchange: exchange, routingKey: m.routingKey, body: m.body, properties: properties) ?? 0
            if first == 0 { first = tag }
            last = tag
        }
        inFlight.append(InFlight(
            firstTag: first == 0 ? 1 : first, lastTag: last, outstanding: messages.count, acks: acks,
            outboxIDs: messages.compactMap(\.outboxID), results: results))
        try completeConfirmed(conn)
    }

    /// Deletes confirmed outbox rows when no batch came along to carry them.
    private func removeConfirmedOutbox() {
        guard !confirmedOutbox.isEmpty else { return }
        do {
            try processor.store.removeOutbox(ids: confirmedOutbox)
            confirmedOutbox = []
        } catch {
            logger.warning("could not delete confirmed outbox rows, will retry", metadata: ["error": "\(error)"])
        }
    }

    /// Publishes outbox rows older than `seconds` (all of them at 0): events committed by a
    /// worker that died before the broker confirmed them.
    private func flushOutbox(olderThan seconds: Double) throws {
        guard let conn else { return }
        let cutoff = processor.clock().adding(seconds: -seconds)
        while true {
            let rows = try processor.store.pendingOutbox(writtenBefore: cutoff, limit: 500)
            guard !rows.isEmpty else { return }
            logger.info("publishing events left in the outbox", metadata: ["count": "\(rows.count)"])
            try publishConfirmed(conn, rows.map(OutboundMessage.init(outbox:)))
            if rows.count < 500 { return }
        }
    }

    private func log(_ results: [CommandResult]) {
        for r in results {
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

/// Counters of the batch loop, for tuning: how big batches are and where the time goes.
struct LoopStats {
    var batches = 0
    var commands = 0
    var applyNs: UInt64 = 0
    var publishNs: UInt64 = 0
    var inFlightSum = 0
    var since = Date()

    mutating func record(commands n: Int, applyNs a: UInt64, publishNs p: UInt64, inFlight: Int) {
        batches += 1
        commands += n
        applyNs += a
        publishNs += p
        inFlightSum += inFlight
    }

    /// Every 10 s: the figures since the last report, then a fresh start.
    mutating func report() -> Logger.Metadata? {
        let elapsed = Date().timeIntervalSince(since)
        guard elapsed >= 10, batches > 0 else { return nil }
        defer { self = LoopStats() }
        return [
            "batches": "\(batches)", "commands": "\(commands)", "avg_batch": "\(commands / batches)",
            "apply_ms": "\(applyNs / 1_000_000)", "publish_ms": "\(publishNs / 1_000_000)",
            "avg_in_flight": "\(Double(inFlightSum) / Double(batches))", "elapsed_ms": "\(Int(elapsed * 1000))",
        ]
    }
}
