import AMQPClient
import ArgumentParser
import Foundation
import RunChaosKit
import RunContract
import RunWorker
import RunWorkerTestKit
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The chaos soak (scripts/chaos): runs with random but valid lifecycles, faults at random
/// moments, and every run checked against the pure state machine replayed over the same
/// commands.
struct RunChaos: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "runchaos",
        abstract: "Soak runworker under faults and check every run against the state machine as a model.",
        discussion: "The last line: chaos runs N faults F violations V lost L duplicated D seed S.")

    @Option(help: "The runworker binary.")
    var runworker: String

    @Option(help: "Broker URL (a node the soak may restart when --broker-node is given).")
    var amqpURL = ProcessInfo.processInfo.environment["RUNWORKER_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/"

    @Option(help: "scripts/broker-node name of the broker at --amqp-url; none: no broker faults.")
    var brokerNode: String?

    @Option(help: "sqlite or postgres.")
    var store = "sqlite"

    @Option(help: "PostgreSQL URL for --store postgres (a schema of its own is made and dropped).")
    var postgresURL = ProcessInfo.processInfo.environment["RUNWORKER_TEST_POSTGRES_URL"]
        ?? "postgres://runworker:runworker@127.0.0.1:54329/runworker"

    @Option(help: "The seed of the load and the fault schedule (default: from the clock).")
    var seed: UInt64?

    @Option(help: "Runs in the load.")
    var runs = 10_000

    @Option(help: "Commands published per second (the load's pace).")
    var rate = 300.0

    @Option(help: "Runs whose commands interleave at any moment.")
    var window = 300

    @Option(help: "Share of steps followed by a command that must change nothing (refusals, repeats, malformed).")
    var noise = 0.15

    @Option(help: "Worker processes.")
    var workers = 3

    @Option(help: "kill -9 of a worker (restarted after a random pause).")
    var killWorker = 20

    @Option(help: "SIGSTOP of a worker past its lease, then SIGCONT.")
    var pauseWorker = 1

    @Option(help: "Broker stop_app / start_app (needs --broker-node).")
    var brokerRestart = 1

    @Option(help: "kill -9 of the broker node, then restart (needs --broker-node).")
    var brokerKill = 1

    @Option(help: "Broker memory alarms, publishers blocked (needs --broker-node).")
    var brokerAlarm = 1

    @Option(help: "PostgreSQL restarts (with --store postgres; scripts/postgres restart).")
    var postgresRestart = 1

    @Option(help: "The store's filesystem filled, held full, freed (with --store sqlite and --store-directory).")
    var diskFull = 1

    @Option(help: "Where the SQLite store goes: a small filesystem of its own for the disk-full fault (default: --directory, no disk-full fault).")
    var storeDirectory: String?

    @Option(help: "Hostile messages flooded in beside the load, as fast as the broker takes them.")
    var flood = 100_000

    @Option(help: "A worker's resident memory above this (MiB) is a violation: the workers' memory budget (memory.budget_mib, 256 by default), which must hold with large inputs mixed into the load.")
    var maxWorkerRSSMiB = 256

    @Option(help: "Partition lease TTL of the workers, seconds.")
    var leaseTTL = 3.0

    @Option(help: "The project's scripts folder (broker-node, postgres).")
    var scripts = "scripts"

    @Option(help: "Where the workers' logs, status files and SQLite store go (removed after a pass).")
    var directory = NSTemporaryDirectory() + "runworker-chaos"

    @Option(help: "Give up (exit 1) after this many seconds in all: a hung soak must not hang CI.")
    var deadline = 3600.0

    mutating func run() throws {
        let seed = self.seed ?? UInt64(Date().timeIntervalSince1970 * 1000) % 1_000_000_007
        let limit = deadline
        Thread.detachNewThread {
            Thread.sleep(forTimeInterval: limit)
            say("gave up after \(Int(limit)) s (--deadline); workers may be left running (scripts/chaos stops them)")
            print("chaos TIMED OUT seed \(seed)")
            Glibc.exit(1)
        }
        let prefix = "chaos\(seed % 100_000)x\(UInt32.random(in: 0...0xffff))"
        say("seed \(seed), prefix \(prefix), \(runs) runs at \(Int(rate)) cmd/s, \(workers) workers on \(store)")
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)

        let load = planLoad(seed: seed, count: runs, prefix: prefix, noise: noise)
        let diskFaults = store == "sqlite" && storeDirectory != nil ? diskFull : 0
        let probes = planProbes(seed: seed, count: 20 * diskFaults, prefix: prefix)
        let hostile = planFlood(seed: seed, count: flood, prefix: prefix)
        let plans = load + probes + hostile
        let commandCount = load.reduce(0) { $0 + $1.commands }
        var shapes: [String: Int] = [:]
        for p in plans { shapes[p.shape, default: 0] += 1 }
        let large = load.filter { $0.steps.contains { if case .send(let m) = $0 { m.body.count > 64 << 10 } else { false } } }
        say("load: \(large.count) runs start with a large input (64-512 KiB)")
        say("load: \(commandCount) messages, \(hostile.count) hostile ones beside it; shapes " + shapes.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))

        let schema = prefix.lowercased()
        let storeURL = store == "postgres"
            ? postgresURL + (postgresURL.contains("?") ? "&" : "?") + "schema=\(schema)"
            : "sqlite://\(storeDirectory ?? directory)/\(prefix).sqlite"
        let topology = Topology(prefix: prefix, partitions: 8)
        let pool = WorkerPool(
            binary: runworker, amqpURL: amqpURL, prefix: prefix, store: storeURL, directory: directory,
            environment: [
                "RUNWORKER_PARTITIONS": "8", "RUNWORKER_LEASE_TTL_S": "\(leaseTTL)",
                "RUNWORKER_REBALANCE_INTERVAL_S": "0.5", "RUNWORKER_TIMER_INTERVAL_S": "0.25",
            ],
            count: workers)
        let subscriber = Subscriber(url: amqpURL, exchange: topology.eventsExchange, queue: "\(prefix).chaos-events")
        var passed = false
        defer {
            pool.stopAll()
            subscriber.deleteQueue()
            deleteTopology(topology, url: amqpURL)
            if store == "sqlite", let d = storeDirectory {
                for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: "\(d)/\(prefix).sqlite\(suffix)") }
            }
            if store == "postgres" {
                _ = try? runCommand("/usr/bin/env", ["psql", postgresURL, "-q", "-c", "DROP SCHEMA IF EXISTS \(schema) CASCADE"], timeout: 60)
            }
            if passed { try? FileManager.default.removeItem(atPath: directory) } else { say("logs kept in \(directory)") }
        }

        try subscriber.start()
        for i in 0..<workers { try pool.start(i) }
        try WorkerProcess.waitBalanced(pool.all(), partitions: 8, timeout: 60)

        var counts: [FaultKind: Int] = [.killWorker: killWorker, .pauseWorker: pauseWorker]
        if brokerNode != nil {
            counts[.brokerRestart] = brokerRestart
            counts[.brokerKill] = brokerKill
            counts[.brokerAlarm] = brokerAlarm
        }
        if store == "postgres" { counts[.postgresRestart] = postgresRestart }
        counts[.diskFull] = diskFaults
        let span = Double(commandCount) / rate
        let schedule = scheduleFaults(seed: seed, span: span, counts: counts, workers: workers)
        let probePublisher = Publisher(url: amqpURL, exchange: topology.commandsExchange)
        defer { probePublisher.close() }
        let injector = FaultInjector(
            schedule: schedule, pool: pool, scripts: scripts, brokerNode: brokerNode, leaseTTL: leaseTTL,
            storeDirectory: store == "sqlite" ? storeDirectory : nil,
            probes: probes, publisher: probePublisher)

        let publisher = Publisher(url: amqpURL, exchange: topology.commandsExchange)
        defer { publisher.close() }
        let t0 = Date()
        injector.start(at: t0)
        let memory = MemorySampler(pool: pool)
        memory.start()
        // The flood spreads over the first 80 % of the load, beside it.
        let flooder = Flooder(
            url: amqpURL, exchange: topology.commandsExchange, plans: hostile,
            rate: max(50, Double(hostile.count) / max(1, span * 0.8)))
        flooder.start()
        let stuck = drive(load, publisher: publisher, subscriber: subscriber, t0: t0)
        say(String(format: "load sent in %.1f s (publisher reconnects %d, messages republished %d)",
                   Date().timeIntervalSince(t0), publisher.reconnects, publisher.republished))
        injector.wait()
        flooder.wait()
        say(String(format: "flood: %d hostile messages sent in %.1f s", hostile.count, flooder.seconds))
        // Every worker runs again for the end (a fault may have left a slot empty).
        for i in 0..<workers where pool.worker(i)?.isRunning != true { try pool.start(i) }

        // Wait until every run's events are in (or nothing has arrived for a while).
        var lastTotal = -1
        var quietSince = Date()
        let expectedEvents = plans.reduce(0) { $0 + $1.events.count }
        while Date().timeIntervalSince(quietSince) < 60 {
            let o = subscriber.snapshot
            if o.isComplete(plans) { break }
            if o.total != lastTotal {
                lastTotal = o.total
                quietSince = Date()
            }
            Thread.sleep(forTimeInterval: 0.5)
        }
        Thread.sleep(forTimeInterval: 1)  // late copies, so that they are compared too
        let observed = subscriber.stop()
        let peaks = memory.stop()
        say("events: \(expectedEvents) expected, \(observed.total) messages received (\(observed.repeats) repeated events, \(observed.rejectionCopies) repeated refusals; subscriber reconnects \(subscriber.reconnects.load(ordering: .relaxed)))")

        let shown = Atomic<Int>(0)
        var report = Report(onViolation: { v in
            if shown.add(1, ordering: .relaxed).newValue <= 50 { say("VIOLATION " + v) }
        })
        report.check(plans, observed, stuck: stuck)
        report.checkDeadLetters(plans, topology: topology, url: amqpURL)
        report.checkSnapshots(plans, worker: pool.all().first)
        for f in injector.failures { report.violation("fault: \(f)") }
        say("worker peak RSS (MiB) by process: \(peaks.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
        for (name, mib) in peaks where mib > maxWorkerRSSMiB {
            report.violation("worker \(name) reached \(mib) MiB resident, above \(maxWorkerRSSMiB)")
        }
        for w in pool.all() {
            let problems = w.log.split(separator: "\n").filter { $0.contains(" critical ") }
            for p in problems.prefix(3) { report.violation("worker log: \(p)") }
        }
        let faults = schedule.count
        print("chaos runs \(runs) faults \(faults) violations \(report.violations.count) lost \(report.lost) duplicated \(report.duplicated) seed \(seed)")
        passed = report.violations.isEmpty
        if !passed { throw ExitCode(1) }
    }

    /// Publishes every run's steps at `rate`, `window` runs at a time, each run's in order;
    /// a run waits at an `await` step until its events reach that seq. Returns the runs that
    /// waited in vain (300 s without the seq they needed).
    func drive(_ plans: [PlannedRun], publisher: Publisher, subscriber: Subscriber, t0: Date) -> [String: String] {
        var cursor = Array(repeating: 0, count: plans.count)
        var waitingSince = Array(repeating: Date.distantFuture, count: plans.count)
        var active: [Int] = []
        var next = 0
        var sent = 0
        var stuck: [String: String] = [:]
        var lastFlush = Date()
        while next < plans.count || !active.isEmpty {
            while active.count < window && next < plans.count {
                active.append(next)
                next += 1
            }
            var progressed = false
            var i = 0
            while i < active.count {
                let r = active[i]
                let plan = plans[r]
                if cursor[r] == plan.steps.count {
                    active.swapAt(i, active.count - 1)
                    active.removeLast()
                    continue
                }
                switch plan.steps[cursor[r]] {
                case .send(let m):
                    let allowed = Int(Date().timeIntervalSince(t0) * rate) + 1
                    if sent < allowed {
                        publisher.publish(m)
                        sent += 1
                        cursor[r] += 1
                        progressed = true
                    }
                case .await(let seq):
                    if subscriber.contiguous(plan.runID) >= seq {
                        cursor[r] += 1
                        waitingSince[r] = .distantFuture
                        progressed = true
                    } else if waitingSince[r] == .distantFuture {
                        waitingSince[r] = Date()
                    } else if Date().timeIntervalSince(waitingSince[r]) > 300 {
                        stuck[plan.runID] = "waited 300 s for seq \(seq), saw \(subscriber.contiguous(plan.runID))"
                        cursor[r] = plan.steps.count
                    }
                }
                i += 1
            }
            if publisher.pendingCount >= 200 || Date().timeIntervalSince(lastFlush) > 0.05 {
                publisher.flush()
                lastFlush = Date()
            }
            if !progressed { Thread.sleep(forTimeInterval: 0.005) }
        }
        publisher.flush()
        return stuck
    }
}

extension Report {
    /// Reads the dead-letter queue empty and compares it with the plans.
    mutating func checkDeadLetters(_ plans: [PlannedRun], topology: Topology, url: String) {
        var got: [String: String] = [:]
        var copies = 0
        var givenUp: [String] = []
        do {
            let c = try BlockingConnection(url: url)
            defer { c.close() }
            let ch = try c.openChannel()
            // Acked in batches, so that the prefetch bounds what is in flight (some bodies
            // are over 1 MiB); read until the queue says it is empty.
            try c.qos(channel: ch, prefetchCount: 500)
            _ = try c.consume(channel: ch, queue: topology.deadQueue)
            while true {
                let batch = try c.nextDeliveries(max: 500, timeout: 2)
                if let last = batch.last { try c.ack(channel: ch, deliveryTag: last.deliveryTag, multiple: true) }
                if batch.isEmpty {
                    let left = try c.queueDeclare(channel: ch, name: topology.deadQueue, passive: true)
                    if left.messageCount == 0 { break }
                    continue
                }
                for d in batch {
                let reason = d.properties.headers?["x-reason"]?.stringValue ?? "(none)"
                if reason == "delivery_limit_exceeded" {
                    givenUp.append("\(d.routingKey) \(d.properties.messageID ?? "") \(d.properties.headers?["x-reason-message"]?.stringValue ?? "")")
                    continue
                }
                let id = d.properties.messageID ?? "(no id) \(d.routingKey)"
                if let first = got[id] {
                    copies += 1
                    if first != reason { violation("message \(id) dead-lettered twice, as \(first) and as \(reason)") }
                    continue
                }
                got[id] = reason
                }
            }
        } catch {
            violation("could not read the dead-letter queue: \(error)")
            return
        }
        say("dead letters: \(got.count) messages (\(copies) copies)")
        compareDeadLetters(plans, got: got, givenUp: givenUp)
    }

    /// Reads every run's stored snapshot through a worker's HTTP API and compares it.
    mutating func checkSnapshots(_ plans: [PlannedRun], worker: WorkerProcess?) {
        guard let base = worker?.httpBase else {
            violation("no worker to read the snapshots from")
            return
        }
        var checked = 0
        // Hostile messages make no run: a sample is enough to see that none was made.
        let hostile = plans.filter { $0.shape == "hostile" }
        let sample = plans.filter { $0.shape != "hostile" } + hostile.prefix(200)
        for p in sample {
            do {
                if p.finalStatus == nil {
                    let a = try HTTPProbe.request(base, "/v1/runs/\(p.runID)")
                    if a.status != 404 { violation("\(p.runID) (\(p.shape)): GET answered \(a.status); the model made no run") }
                    checked += 1
                    continue
                }
                let a = try HTTPProbe.request(base, "/v1/runs/\(p.runID)")
                guard a.status == 200, let json = try? JSONValue.parse(a.body) else {
                    violation("\(p.runID): GET /v1/runs/\(p.runID) answered \(a.status)")
                    continue
                }
                compareSnapshot(p, status: json["status"]?.stringValue, version: json["version"]?.intValue)
                checked += 1
            } catch {
                violation("\(p.runID): \(error)")
            }
        }
        say("snapshots: \(checked) read and compared")
    }
}

RunChaos.main()
