import AMQPClient
import Foundation
import RunContract
import RunStore
import RunWorker
import RunWorkerTestKit
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The `stream` phase (scripts/cluster-demo): runs streamed at a fixed rate through workers that
/// someone else started (on other hosts), while faults are injected at given times; then every
/// run's events are checked against its commands and each fault's failover is timed.
///
/// A fault is `SECONDS:COMMAND`, run with `bash -c` that many seconds after the first publish
/// (on a thread of its own, so a fault may take its time: `ip link set x down; sleep 8; ...`).
struct Fault: Sendable {
    var at: Double
    var command: String

    init(_ spec: String) throws {
        guard let colon = spec.firstIndex(of: ":"), let at = Double(spec[..<colon]), at >= 0 else {
            throw BenchError("a fault is SECONDS:COMMAND, not \(spec)")
        }
        self.at = at
        command = String(spec[spec.index(after: colon)...])
    }

    /// A short name for the summary line: the fault's label before `=` when it has one
    /// (`kill_node=scripts/...`), else its position.
    func label(_ index: Int) -> String {
        if let eq = command.firstIndex(of: "="), !command[..<eq].contains(" ") { return String(command[..<eq]) }
        return "fault\(index + 1)"
    }

    var shellCommand: String {
        if let eq = command.firstIndex(of: "="), !command[..<eq].contains(" ") { return String(command[command.index(after: eq)...]) }
        return command
    }
}

/// Every event and refusal of the stream, by run, with the first arrival of each command's
/// first event.
struct StreamRecord: Sendable {
    /// Per run index: seq → event type (the first copy; later copies are compared with it).
    var seqs: [[Int64: EventType]]
    /// Copies of an event already received (same run and seq): at-least-once redeliveries.
    var repeats = 0
    /// A copy that differs from the first one of its seq: never allowed.
    var conflicting = 0
    var rejections: [Int] = []
    var firstEventNs: [UInt64]
    var otherMessages = 0
}

/// Subscribes to every event of the prefix on its own connection and records them until told
/// to stop.
final class StreamSubscriber: @unchecked Sendable {
    let url: String
    let exchange: String
    let load: RunLoad
    let complete = Atomic<Int>(0)
    private let stopFlag = Atomic<Bool>(false)
    private let ready = DispatchSemaphore(value: 0)
    private var thread: Joinable?
    private(set) var record: StreamRecord

    init(url: String, exchange: String, load: RunLoad) {
        self.url = url
        self.exchange = exchange
        self.load = load
        record = StreamRecord(
            seqs: Array(repeating: [:], count: load.runs.count),
            firstEventNs: Array(repeating: 0, count: load.commandCount))
    }

    func start() throws {
        thread = Joinable(name: "runbench-stream-subscriber") { [self] in
            defer { self.ready.signal() }
            try self.consume()
        }
        ready.wait()
    }

    func stop() throws -> StreamRecord {
        stopFlag.store(true, ordering: .releasing)
        try thread?.join()
        return record
    }

    private func consume() throws {
        let conn = try subscribeToEvents(url: url, exchange: exchange)
        defer { conn.close() }
        ready.signal()
        var r = record
        var done = 0
        while !stopFlag.load(ordering: .acquiring) {
            guard let first = try conn.nextEvent(timeout: 0.05) else { continue }
            let t = nowNs()
            for case .delivery(let d) in [first] + (try conn.drainEvents()) {
                let prefix = Array("run.r".utf8)
                guard let run = Subscriber.runIndex(routingKey: d.routingKey, prefix: prefix), load.runs.contains(run) else {
                    r.otherMessages += 1
                    continue
                }
                let i = run - load.runs.lowerBound
                if d.properties.type == "command_rejected" {
                    r.rejections.append(run)
                    continue
                }
                guard let e = try? RunEvent.decode(d.body) else {
                    r.otherMessages += 1
                    continue
                }
                if let seen = r.seqs[i][e.seq] {
                    r.repeats += 1
                    if seen != e.type { r.conflicting += 1 }
                    continue
                }
                r.seqs[i][e.seq] = e.type
                if r.seqs[i].count == 5 { done += 1 }
                if let id = e.commandID, let (cr, step) = RunLoad.parseCommandID(Array(id.utf8), from: 0),
                   cr == run, let k = load.index(run: cr, step: step), r.firstEventNs[k] == 0
                {
                    r.firstEventNs[k] = t
                }
            }
            complete.store(done, ordering: .releasing)
        }
        record = r
    }
}

extension RunLoad {
    /// The position of command (run, step) in publish order: the inverse of `command(_:)`.
    func index(run: Int, step: Int) -> Int? {
        let rel = run - runs.lowerBound
        guard rel >= 0, rel < runs.count, (0..<4).contains(step) else { return nil }
        let c = rel / chunk
        let base = c * chunk
        let n = min(chunk, runs.count - base)
        let k = c * 4 * chunk + step * n + (rel - base)
        return k < commandCount ? k : nil
    }
}

extension Bench {
    /// Streams `runs` runs at `--stream-rate` through the workers already serving `--prefix`,
    /// injects the faults, and prints one line:
    /// `cluster-demo runs N wrong W lost L duplicated D failover_s <fault>=S ... redelivered R`.
    func phaseStream() throws {
        guard let prefix = o.prefix else { throw BenchError("--phases stream needs --prefix (the workers' prefix)") }
        let faults = try o.faults.map(Fault.init)
        let t = Topology(prefix: prefix, partitions: o.partitions, queueType: o.queueType == "quorum" ? .quorum : .classic)
        let load = RunLoad(runs: 0..<runs, chunk: min(250, max(1, runs / 4)))
        let rate = o.streamRate
        say("stream: \(load.runs.count) runs (\(load.commandCount) commands) at \(fmt(rate)) cmd/s on \(prefix), "
            + "\(faults.count) faults, \(o.badMessages) malformed messages")
        let sub = StreamSubscriber(url: o.amqpURL, exchange: t.eventsExchange, load: load)
        try sub.start()

        // Malformed on purpose: each must end in the dead-letter queue, nothing else may.
        let deadBefore = try deadLetterCount(t)
        if o.badMessages > 0 {
            let conn = try BlockingConnection(url: o.amqpURL)
            let ch = try conn.openChannel()
            try conn.confirmSelect(channel: ch)
            for i in 0..<o.badMessages {
                _ = try conn.publish(channel: ch, exchange: t.commandsExchange, routingKey: "bad-\(i)",
                                     body: Array("{not json \(i)".utf8), properties: AMQPProperties(deliveryMode: 2))
            }
            _ = try conn.waitForConfirms(channel: ch, timeout: 30)
            conn.close()
        }

        let prod = Producer(url: o.amqpURL, exchange: t.commandsExchange, load: load, rate: rate, window: o.window)
        let started = nowNs()
        prod.start()
        // Faults on their own threads, each at its time; their start times are kept.
        let faultStarts = Mutex<[UInt64]>(Array(repeating: 0, count: faults.count))
        var faultThreads: [Joinable] = []
        for (i, f) in faults.enumerated() {
            faultThreads.append(Joinable(name: "runbench-fault-\(i)") {
                let due = started + UInt64(f.at * 1e9)
                let now = nowNs()
                if now < due { sleepNs(due - now) }
                faultStarts.withLock { $0[i] = nowNs() }
                say("fault \(f.label(i)) at \(fmt(Double(nowNs() - started) / 1e9, 1)) s: \(f.shellCommand)")
                let (status, output) = try runCommand("/bin/bash", ["-c", f.shellCommand], timeout: 600)
                for line in output.split(separator: "\n") { say("  \(line)") }
                say("fault \(f.label(i)) done after \(fmt(Double(nowNs() - started) / 1e9, 1)) s (exit \(status))")
            })
        }
        let p = try prod.join()
        for f in faultThreads { try f.join() }
        // Wait for every run to finish, or for the stream to go quiet.
        var last = -1
        var lastChange = nowNs()
        while sub.complete.load(ordering: .acquiring) < load.runs.count {
            let n = sub.complete.load(ordering: .acquiring)
            if n != last { last = n; lastChange = nowNs() }
            if Double(nowNs() - lastChange) / 1e9 > o.quietTimeout {
                say("stream: no run finished for \(fmt(o.quietTimeout)) s, \(n) of \(load.runs.count) complete")
                break
            }
            sleepNs(20_000_000)
        }
        sleepNs(1_000_000_000)  // late copies
        let r = try sub.stop()

        let expected: [Int64: EventType] = [1: .created, 2: .started, 3: .actionRequired, 4: .actionCompleted, 5: .completed]
        var lost = 0, wrong = 0, duplicated = 0
        for (i, seqs) in r.seqs.enumerated() {
            let missing = expected.keys.filter { seqs[$0] == nil }
            let extra = seqs.keys.filter { $0 > 5 }
            let mismatched = expected.contains { seqs[$0.key] != nil && seqs[$0.key] != $0.value }
            if !missing.isEmpty { lost += 1 }
            if !extra.isEmpty { duplicated += 1 }
            if mismatched || r.rejections.contains(load.runs.lowerBound + i) { wrong += 1 }
            if (!missing.isEmpty || !extra.isEmpty || mismatched), lost + duplicated + wrong <= 5 {
                say("run r\(load.runs.lowerBound + i): seqs \(seqs.keys.sorted()) types \(seqs.sorted { $0.key < $1.key }.map(\.value.rawValue))")
            }
        }
        wrong += r.conflicting
        // The store agrees: every run completed, at the version its events counted.
        if let url = o.checkStore {
            let mismatched = try storeMismatches(url: url, load: load, record: r)
            if mismatched > 0 { say("stream: \(mismatched) stored runs disagree with their events") }
            wrong += mismatched
        }
        if p.nacked > 0 { say("stream: \(p.nacked) commands nacked by the broker") }
        let deadAfter = try deadLetterCount(t)
        let dead = deadAfter.map { a in deadBefore.map { a - $0 } ?? a }
        if let dead, dead != o.badMessages {
            say("stream: \(dead) dead letters, expected \(o.badMessages) (the malformed ones)")
            wrong += abs(dead - o.badMessages)
        }

        // A fault's failover: the longest wait for a first event among the commands published
        // in the second after it began (the time until every partition was served again).
        var failovers: [String] = []
        let starts = faultStarts.withLock { $0 }
        for (i, f) in faults.enumerated() {
            let from = starts[i], to = starts[i] + 1_000_000_000
            var worst = 0.0
            var unanswered = 0
            for k in 0..<load.commandCount where p.publishNs[k] >= from && p.publishNs[k] < to {
                if r.firstEventNs[k] == 0 { unanswered += 1; continue }
                worst = max(worst, Double(Int64(r.firstEventNs[k]) - Int64(p.publishNs[k])) / 1e9)
            }
            failovers.append("\(f.label(i))=\(unanswered > 0 ? "none" : fmt(worst, 1))")
        }
        let seconds = Double(nowNs() - started) / 1e9
        say("stream: \(r.repeats) events received more than once (at-least-once), \(r.rejections.count) refusals, "
            + "\(dead.map(String.init) ?? "?") dead letters, \(fmt(seconds, 1)) s in all")
        print("cluster-demo runs \(load.runs.count) wrong \(wrong) lost \(lost) duplicated \(duplicated) failover_s "
              + failovers.joined(separator: " ") + " redelivered \(r.repeats)")
        if wrong + lost + duplicated > 0 { failures.append("stream: wrong \(wrong) lost \(lost) duplicated \(duplicated)") }
    }

    /// Messages in the prefix's dead-letter queue (nil if it cannot be read).
    private func deadLetterCount(_ t: Topology) throws -> Int? {
        let conn = try BlockingConnection(url: o.amqpURL)
        defer { conn.close() }
        let ch = try conn.openChannel()
        return (try? conn.queueDeclare(channel: ch, name: t.deadQueue, passive: true)).map { Int($0.messageCount) }
    }
}


extension Bench {
    /// Stored runs of the load that are not completed at the version their events reached.
    func storeMismatches(url: String, load: RunLoad, record: StreamRecord) throws -> Int {
        try withBenchStore(url: url) { store in
            var bad = 0
            for run in load.runs {
                let events = record.seqs[run - load.runs.lowerBound]
                let stored = try await store.run(RunLoad.runID(run))
                if stored?.status != .completed || stored?.version != Int64(events.count) { bad += 1 }
            }
            return bad
        }
    }
}
