import Foundation
import RunContract
import RunStore
import RunStores
import RunWorker
import RunWorkerTestKit

/// Issue 11's two load-shape targets: throughput that does not depend on how many runs the
/// store holds, and a backlog drained at full speed with memory bounded by the prefetch.
extension Bench {
    var bigStoreRuns: Int { o.bigStoreRuns ?? (o.quick ? 50_000 : 1_000_000) }
    var backlogCommands: Int { o.backlogCommands ?? (o.quick ? 20_000 : 500_000) }

    /// The one-worker load on a store that already holds `runs` finished runs, then on one
    /// that holds `bigStoreRuns`: the rates should be within 10 %, and RSS flat.
    func phaseBigStore() throws {
        var figures: [(held: Int, rate: Double, us: Double, rssMiB: Double, fileMiB: Double)] = []
        for held in [runs, bigStoreRuns] {
            let t = Topology(prefix: "\(runID)-big\(held)", partitions: o.partitions)
            defer { deleteTopology(t, url: o.amqpURL) }
            let started = Date()
            try prefill(storeURL(t), runs: held)
            say("store size: \(held) finished runs written in \(fmt(Date().timeIntervalSince(started), 1)) s (\(fmt(storeMiB(t), 1)) MiB)")
            let w = try startWorkers(t, count: 1)
            defer { stopWorkers(w, "store size \(held)") }
            let load = RunLoad(runs: 0..<runs)
            let cpu = CPUMeter(["worker": [w[0].pid], "broker": brokerPIDs, "runbench": [getpid()]])
            let r = try drive(t, load, eventsPerRun: 5)
            let us = cpu.microsecondsPer(load.commandCount)["worker"] ?? .nan
            check("store size \(held)", r, load: load, eventsPerRun: 5)
            let rss = Double(w[0].memoryKiB.rss) / 1024
            figures.append((held, r.rate, us, rss, storeMiB(t)))
            say("store size: with \(held) runs stored, \(fmt(r.rate)) cmd/s, worker \(fmt(us)) µs/cmd, VmRSS \(fmt(rss, 1)) MiB")
        }
        let (small, big) = (figures[0], figures[1])
        bigStoreRatio = big.rate / small.rate
        rows.append(("7 store size: \(small.held) / \(big.held) runs", "\(runs) runs, \(runs * 4) cmds each",
                     "\(fmt(small.rate)) / \(fmt(big.rate)) cmd/s (x\(fmt(bigStoreRatio, 2)))",
                     "worker \(fmt(small.us)) / \(fmt(big.us)) µs/cmd, VmRSS \(fmt(small.rssMiB, 1)) / \(fmt(big.rssMiB, 1)) MiB, "
                        + "store \(fmt(small.fileMiB, 0)) / \(fmt(big.fileMiB, 0)) MiB"))
    }

    /// `backlogCommands` commands queued while no worker runs, then one worker drains them:
    /// the rate from its start to the last event, and its peak RSS (VmHWM) against phase
    /// one's, since only a prefetch's worth of deliveries is ever in the worker.
    func phaseBacklog() throws {
        let t = Topology(prefix: "\(runID)-backlog", partitions: o.partitions)
        defer { deleteTopology(t, url: o.amqpURL) }
        // A first worker declares the topology, then stops: the queues stay.
        stopWorkers(try startWorkers(t, count: 1), "backlog (declare)")
        let load = RunLoad(runs: 0..<max(1, backlogCommands / 4))
        let sub = Subscriber(url: o.amqpURL, exchange: t.eventsExchange, load: load, eventsPerRun: 5)
        try sub.start()
        let prod = Producer(url: o.amqpURL, exchange: t.commandsExchange, load: load, window: o.window)
        prod.start()
        let p = try prod.join()
        say("backlog: \(load.commandCount) commands queued in \(fmt(Double(p.lastPublishNs - p.firstPublishNs) / 1e9, 1)) s")
        let startedNs = nowNs()
        let w = try startWorkers(t, count: 1)
        defer { stopWorkers(w, "backlog") }
        let cpu = CPUMeter(["worker": [w[0].pid], "broker": brokerPIDs, "runbench": [getpid()]])
        let s = try sub.wait(idleTimeout: 60)
        let us = cpu.microsecondsPer(load.commandCount)["worker"] ?? .nan
        let rate = Double(load.commandCount) / (Double(Int64(s.lastEventNs) - Int64(startedNs)) / 1e9)
        check("backlog", Outcome(prod: p, sub: s, rate: rate), load: load, eventsPerRun: 5)
        let hwm = Double(w[0].memoryKiB.hwm) / 1024
        backlogLine = "backlog_cmd_s \(fmt(rate)) backlog_rss_mib \(fmt(hwm, 1))"
        rows.append(("8 backlog drained by 1 process", "\(load.commandCount) cmds queued first",
                     "\(fmt(rate)) cmd/s",
                     "peak VmRSS (VmHWM) \(fmt(hwm, 1)) MiB, worker \(fmt(us)) µs/cmd, "
                        + "from the worker's start (connect, leases) to the last event"))
        say("backlog: drained at \(fmt(rate)) cmd/s, worker \(fmt(us)) µs/cmd, peak VmRSS \(fmt(hwm, 1)) MiB")
    }

    /// Agent-sized payloads: `largeRuns` runs whose `start` carries a 200 KB input, whose action
    /// result is 20 KB and whose result 50 KB (each run's different), through one worker on its
    /// default settings, memory budget included. Prints MB/s of command bodies, commands/s, the
    /// worker's CPU per command, its peak RSS (VmHWM) against the budget, and the store's bytes
    /// on disk per byte of input (and per byte of all three payloads), measured once the worker
    /// has stopped.
    func phaseLarge() throws {
        let t = Topology(prefix: "\(runID)-large", partitions: o.partitions)
        defer { deleteTopology(t, url: o.amqpURL) }
        let w = try startWorkers(t, count: 1)
        var running = true
        defer { if running { stopWorkers(w, "large") } }
        let payload = RunLoad.Payload(inputBytes: 200_000, actionResultBytes: 20_000, resultBytes: 50_000)
        let load = RunLoad(runs: 0..<largeRuns, payload: payload)
        let budget = WorkerSettings().memoryBudgetMiB
        say("large: \(load.runs.count) runs, \(load.commandCount) commands; 200 KB inputs, 20 KB action results, 50 KB results; "
            + "memory budget \(budget) MiB (the default)")
        let cpu = CPUMeter(["worker": [w[0].pid], "broker": brokerPIDs, "runbench": [getpid()]])
        let r = try drive(t, load, eventsPerRun: 5)
        let usage = cpu.cores()
        let us = cpu.microsecondsPer(load.commandCount)
        check("large", r, load: load, eventsPerRun: 5)
        let seconds = Double(load.commandCount) / r.rate
        let mbPerSecond = Double(r.prod.bytes) / 1e6 / seconds
        let hwm = Double(w[0].memoryKiB.hwm) / 1024
        stopWorkers(w, "large")
        running = false
        let disk = storeBytes(t)
        let input = Double(load.runs.count * payload.inputBytes)
        let allPayloads = Double(load.runs.count * (payload.inputBytes + payload.actionResultBytes + payload.resultBytes))
        let perInput = disk / input
        largeLine = "large_mb_s \(fmt(mbPerSecond, 1)) large_cmd_s \(fmt(r.rate)) large_us_per_cmd \(fmt(us["worker"] ?? .nan)) "
            + "large_rss_mib \(fmt(hwm, 1)) large_disk_per_input \(fmt(perInput, 2))"
        rows.append(("9 large payloads, 1 process", "\(load.runs.count) runs (200/20/50 KB), \(load.commandCount) cmds",
                     "\(fmt(mbPerSecond, 1)) MB/s, \(fmt(r.rate)) cmd/s",
                     "peak VmRSS \(fmt(hwm, 1)) MiB of a \(budget) MiB budget; store \(fmt(disk / 1_048_576, 0)) MiB = "
                        + "\(fmt(perInput, 2)) x input (\(fmt(disk / allPayloads, 2)) x all payloads); " + cpuText(usage, us: us)))
        say("large: \(fmt(mbPerSecond, 1)) MB/s, \(fmt(r.rate)) cmd/s, worker \(fmt(us["worker"] ?? .nan)) µs/cmd, peak VmRSS "
            + "\(fmt(hwm, 1)) MiB (budget \(budget) MiB); store \(fmt(disk / 1_048_576, 1)) MiB for \(fmt(input / 1_048_576, 1)) MiB "
            + "of input: \(fmt(perInput, 2)) bytes per input byte, \(fmt(disk / allPayloads, 2)) per payload byte")
    }

    /// Bytes the store of `t` takes on disk: the SQLite file with its WAL, or on PostgreSQL the
    /// tables of the phase's schema with their indexes and TOAST (`pg_total_relation_size`).
    func storeBytes(_ t: Topology) -> Double {
        guard o.store == "postgres" else { return storeMiB(t) * 1_048_576 }
        let url = storeURL(t)
        guard let schema = URLComponents(string: url)?.queryItems?.first(where: { $0.name == "schema" })?.value else { return .nan }
        let sql = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            + "WHERE n.nspname = '\(schema)' AND c.relkind = 'r'"
        let out = Proc.output("/usr/bin/env", ["psql", o.postgresURL, "-Atc", sql])
        return out.flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? .nan
    }

    /// The store URL a phase's workers use.
    func storeURL(_ t: Topology) -> String { storeURL(prefix: t.prefix) }

    /// The store of `prefix`: a SQLite file in the run's directory, or a schema of the
    /// PostgreSQL named after it.
    func storeURL(prefix: String) -> String {
        o.store == "postgres"
            ? o.postgresURL + (o.postgresURL.contains("?") ? "&" : "?") + "schema=" + prefix.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "_" }
            : "sqlite://\(dir)/\(prefix).sqlite"
    }

    /// Writes `runs` finished runs (ids `p0`, `p1`, ...; the load's are `r0`, ...) with their
    /// four command records each, 2 000 runs a transaction: what a store holds after that
    /// many runs, minus the event history (which retention bounds, and whose rows would
    /// otherwise have to be marked published one by one).
    func prefill(_ url: String, runs: Int) throws {
        let synchronous: SQLiteRunStore.Synchronous = o.synchronous?.uppercased() == "NORMAL" ? .normal : .full
        let partitions = o.partitions
        try withBenchStore(url: url, synchronous: synchronous) { store in
            try await store.prepare()
            let now = Timestamp(seconds: Date().timeIntervalSince1970 - 3600)
            let steps = ["start", "require_action", "complete_action", "complete"]
            var i = 0
            while i < runs {
                var commit = StoreCommit()
                for n in i..<min(runs, i + 2_000) {
                    let id = "p\(n)"
                    let action = Action(
                        id: "a1", type: .toolCall, fields: ["tool": "search", "args": ["q": "prefill"]], status: .completed,
                        requestedAt: now, result: ["ok": true], attempt: 1)
                    let run = Run(
                        runID: id, status: .completed, version: 5, agentID: "bench", input: ["task": "prefill"],
                        actions: [action], result: ["answer": 42], stopReason: .completed, createdAt: now, startedAt: now,
                        updatedAt: now, completedAt: now, attemptStartedAt: now)
                    commit.runs.append(RunWrite(run: run, previousVersion: nil, nextDeadline: nil, partition: n % partitions))
                    for step in 0..<4 {
                        commit.outcomes.append((CommandKey(runID: id, commandID: "\(id)-\(step)"),
                                                CommandOutcome(command: steps[step], error: nil)))
                    }
                }
                _ = try await store.commit(commit)
                i += 2_000
            }
        }
    }
}
