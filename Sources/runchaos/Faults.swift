import Foundation
import RunChaosKit
import RunWorkerTestKit

#if canImport(Glibc)
import Glibc
#endif

/// The worker processes of the soak, each in a slot that a fault may empty and refill.
final class WorkerPool: @unchecked Sendable {
    let binary: String
    let amqpURL: String
    let prefix: String
    let store: String
    let directory: String
    let environment: [String: String?]
    private let lock = NSLock()
    private var slots: [WorkerProcess?]
    private var generation = 0
    private(set) var started = 0

    init(binary: String, amqpURL: String, prefix: String, store: String, directory: String,
         environment: [String: String?], count: Int) {
        self.binary = binary
        self.amqpURL = amqpURL
        self.prefix = prefix
        self.store = store
        self.directory = directory
        self.environment = environment
        slots = Array(repeating: nil, count: count)
    }

    var count: Int { slots.count }

    func start(_ i: Int) throws {
        let w: WorkerProcess = try lock.withLock {
            generation += 1
            started += 1
            return try WorkerProcess(
                binary: binary, amqpURL: amqpURL, prefix: prefix, store: store, environment: environment,
                logLevel: "info", directory: directory, name: "w\(i)-\(generation)", keepFiles: true)
        }
        lock.withLock { slots[i] = w }
        try w.waitReady(timeout: 120)
    }

    func worker(_ i: Int) -> WorkerProcess? { lock.withLock { slots[i] } }

    /// kill -9; the slot stays empty until `start`.
    func kill(_ i: Int) {
        guard let w = lock.withLock({ slots[i] }) else { return }
        w.kill()
        lock.withLock { slots[i] = nil }
    }

    func all() -> [WorkerProcess] { lock.withLock { slots.compactMap { $0 } } }

    func stopAll() {
        for w in all() { w.terminate(grace: 20) }
    }
}

/// One fault of the schedule.
enum FaultKind: String, Sendable, CaseIterable {
    case killWorker = "kill_worker"
    case pauseWorker = "pause_worker"
    case brokerRestart = "broker_restart"
    case brokerKill = "broker_kill"
    case postgresRestart = "postgres_restart"
}

struct ScheduledFault: Sendable {
    var at: Double
    var kind: FaultKind
    var worker: Int
    var pause: Double
}

/// Draws the fault schedule from the seed: the counts asked for, at uniform moments over
/// `span` seconds, in time order.
func scheduleFaults(seed: UInt64, span: Double, counts: [FaultKind: Int], workers: Int) -> [ScheduledFault] {
    var rng = SeededRandom(seed: seed ^ 0xFA17_5EED)
    var faults: [ScheduledFault] = []
    for kind in FaultKind.allCases {
        for _ in 0..<(counts[kind] ?? 0) {
            faults.append(ScheduledFault(
                at: Double.random(in: 0.05...0.95, using: &rng) * span, kind: kind,
                worker: Int.random(in: 0..<workers, using: &rng), pause: Double.random(in: 0.2...3, using: &rng)))
        }
    }
    return faults.sorted { $0.at < $1.at }
}

/// Runs the schedule on a thread of its own, one fault after another (a fault that is still
/// going on when the next one is due delays it).
final class FaultInjector: @unchecked Sendable {
    let schedule: [ScheduledFault]
    let pool: WorkerPool
    let scripts: String
    let brokerNode: String?
    let leaseTTL: Double
    private(set) var log: [String] = []
    private(set) var failures: [String] = []
    private let done = DispatchSemaphore(value: 0)

    init(schedule: [ScheduledFault], pool: WorkerPool, scripts: String, brokerNode: String?, leaseTTL: Double) {
        self.schedule = schedule
        self.pool = pool
        self.scripts = scripts
        self.brokerNode = brokerNode
        self.leaseTTL = leaseTTL
    }

    func start(at t0: Date) {
        let t = Thread { [self] in
            for f in schedule {
                let wait = t0.addingTimeInterval(f.at).timeIntervalSinceNow
                if wait > 0 { Thread.sleep(forTimeInterval: wait) }
                let began = Date()
                do {
                    try inject(f)
                    note(String(format: "%7.1f s %@ (%.1f s)", began.timeIntervalSince(t0), describe(f), Date().timeIntervalSince(began)))
                } catch {
                    failures.append("\(describe(f)): \(error)")
                    note("FAULT FAILED \(describe(f)): \(error)")
                }
            }
            done.signal()
        }
        t.name = "runchaos-faults"
        t.start()
    }

    func wait() { done.wait(); done.signal() }

    private func note(_ s: String) {
        log.append(s)
        say("fault " + s)
    }

    private func describe(_ f: ScheduledFault) -> String {
        switch f.kind {
        case .killWorker: "kill -9 worker \(f.worker), restarted after \(String(format: "%.1f", f.pause)) s"
        case .pauseWorker: "SIGSTOP worker \(f.worker) for \(String(format: "%.1f", leaseTTL * 2 + f.pause)) s (lease \(leaseTTL) s)"
        case .brokerRestart: "broker stop_app, start_app after \(String(format: "%.1f", f.pause)) s"
        case .brokerKill: "broker node kill -9, restarted after \(String(format: "%.1f", f.pause)) s"
        case .postgresRestart: "PostgreSQL restart"
        }
    }

    private func inject(_ f: ScheduledFault) throws {
        switch f.kind {
        case .killWorker:
            pool.kill(f.worker)
            Thread.sleep(forTimeInterval: f.pause)
            try pool.start(f.worker)
        case .pauseWorker:
            guard let w = pool.worker(f.worker) else { return }
            w.suspend()
            Thread.sleep(forTimeInterval: leaseTTL * 2 + f.pause)
            w.resume()
        case .brokerRestart:
            try script("broker-node", "stop_app", brokerNode!)
            Thread.sleep(forTimeInterval: f.pause)
            try script("broker-node", "start_app", brokerNode!)
        case .brokerKill:
            try script("broker-node", "kill", brokerNode!)
            Thread.sleep(forTimeInterval: f.pause)
            try script("broker-node", "restart", brokerNode!)
        case .postgresRestart:
            try script("postgres", "restart")
        }
    }

    private func script(_ name: String, _ args: String...) throws {
        let r = try runCommand("/usr/bin/env", ["bash", "\(scripts)/\(name)"] + args, timeout: 180)
        guard r.status == 0 else { throw ChaosError("\(name) \(args.joined(separator: " ")) exited \(r.status): \(r.output)") }
    }
}

struct ChaosError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
