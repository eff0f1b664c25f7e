import CoreMetrics
import RunApply
import RunContract

/// The worker's metrics, through swift-metrics: the HTTP side exports them in Prometheus'
/// format (`/metrics`); any other backend works the same way. Names follow Prometheus'
/// conventions (`_total` counters, base units, `_seconds`).
///
/// Used from the loop's thread only (the handlers themselves are thread-safe); labelled
/// metrics are created on first use and kept, so the hot path does no registry lookups.
final class WorkerMetrics {
    private let factory: any MetricsFactory
    private var counters: [String: Counter] = [:]
    private var recorders: [String: Recorder] = [:]

    let batchSize: Recorder
    let applySeconds: Timer
    let commitSeconds: Timer
    let publishSeconds: Timer
    let confirmSeconds: Timer
    let partitionsOwned: Gauge
    let leasesLost: Counter
    let reconnects: Counter
    let timerLateness: Recorder
    let runAttempts: Recorder

    init(factory: any MetricsFactory) {
        self.factory = factory
        batchSize = Recorder(label: "runworker_batch_size", factory: factory)
        applySeconds = Timer(label: "runworker_apply_seconds", factory: factory)
        commitSeconds = Timer(label: "runworker_commit_seconds", factory: factory)
        publishSeconds = Timer(label: "runworker_publish_seconds", factory: factory)
        confirmSeconds = Timer(label: "runworker_confirm_seconds", factory: factory)
        partitionsOwned = Gauge(label: "runworker_partitions_owned", factory: factory)
        leasesLost = Counter(label: "runworker_leases_lost_total", factory: factory)
        reconnects = Counter(label: "runworker_reconnects_total", factory: factory)
        timerLateness = Recorder(label: "runworker_timer_lateness_seconds", factory: factory)
        runAttempts = Recorder(label: "runworker_run_attempts", factory: factory)
    }

    private func counter(_ label: String, _ dimensions: [(String, String)]) -> Counter {
        Self.cached(&counters, label, dimensions) { Counter(label: label, dimensions: dimensions, factory: factory) }
    }

    private func recorder(_ label: String, _ dimensions: [(String, String)]) -> Recorder {
        Self.cached(&recorders, label, dimensions) { Recorder(label: label, dimensions: dimensions, factory: factory) }
    }

    /// The metric of this label and these dimensions, made on first use.
    private static func cached<M>(_ cache: inout [String: M], _ label: String, _ dimensions: [(String, String)], _ make: () -> M) -> M {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        if let m = cache[key] { return m }
        let m = make()
        cache[key] = m
        return m
    }

    /// A command's name as a label: one of the contract's, or `unknown` (a body may say
    /// anything, and every distinct label value is a new series).
    static func commandLabel(_ name: String?) -> String { name.flatMap { CommandName(rawValue: $0)?.rawValue } ?? "unknown" }

    /// A confirmed batch: what each item did, and what happened to runs. The results are
    /// tallied first, so a batch of hundreds of commands touches a handful of counters (each
    /// lookup builds a key string: 1.4 % of the worker's CPU when done per command).
    func count(_ results: [CommandResult], _ observations: [RunObservation]) {
        var tally: [(Tally, Int)] = []
        for r in results {
            let key: Tally
            switch r.kind {
            case .applied: key = .command(Self.commandLabel(r.command), "applied")
            case .refused(let error): key = .refused(Self.commandLabel(r.command), error.code)
            case .duplicate: key = .command(Self.commandLabel(r.command), "duplicate")
            case .deadLettered(let error): key = .deadLettered(error.code)
            case .timerFired: key = .timerFired
            }
            if let i = tally.firstIndex(where: { $0.0 == key }) { tally[i].1 += 1 } else { tally.append((key, 1)) }
        }
        for (key, n) in tally {
            switch key {
            case .command(let label, let outcome):
                counter("runworker_commands_total", [("command", label), ("outcome", outcome)]).increment(by: n)
            case .refused(let label, let code):
                counter("runworker_commands_total", [("command", label), ("outcome", "refused")]).increment(by: n)
                counter("runworker_refusals_total", [("code", code.rawValue)]).increment(by: n)
            case .deadLettered(let code):
                counter("runworker_dead_letters_total", [("reason", code.rawValue)]).increment(by: n)
            case .timerFired:
                counter("runworker_timers_fired_total", []).increment(by: n)
            }
        }
        for o in observations {
            switch o {
            case .runFinished(let status, let stopReason, let agentID, let duration, let attempts):
                let finished = RunFinishedKey(status: status, stopReason: stopReason)
                if let c = runsFinished[finished] {
                    c.increment()
                } else {
                    let c = counter("runworker_runs_finished_total", [
                        ("status", status.rawValue), ("stop_reason", stopReason?.rawValue ?? "none"),
                    ])
                    runsFinished[finished] = c
                    c.increment()
                }
                let agent = label(agentID)
                if let r = runDurations[agent] {
                    r.record(duration)
                } else {
                    let r = recorder("runworker_run_duration_seconds", [("agent_id", agent)])
                    runDurations[agent] = r
                    r.record(duration)
                }
                runAttempts.record(attempts)
            case .actionFinished(let agentID, let type, let status, let duration):
                let key = ActionKey(agent: label(agentID), type: type, status: status)
                if let r = actionDurations[key] {
                    r.record(duration)
                } else {
                    let r = recorder("runworker_action_duration_seconds", [
                        ("agent_id", key.agent), ("action_type", type), ("status", status.rawValue),
                    ])
                    actionDurations[key] = r
                    r.record(duration)
                }
            case .timerFired(let lateness):
                timerLateness.record(max(0, lateness))
            }
        }
    }

    /// What one result adds to (`count`'s tally).
    private enum Tally: Equatable {
        /// By label, so that a batch of distinct unknown names tallies as one `unknown`.
        case command(String, String)
        case refused(String, RunError.Code)
        case deadLettered(RunError.Code)
        case timerFired
    }

    // The metrics of every run and action that finishes, by typed keys: building the generic
    // cache's key string for each was most of the allocations `count` made.
    private struct RunFinishedKey: Hashable {
        let status: RunStatus
        let stopReason: StopReason?
    }

    private struct ActionKey: Hashable {
        let agent: String
        let type: String
        let status: ActionStatus
    }

    private var runsFinished: [RunFinishedKey: Counter] = [:]
    private var runDurations: [String: Recorder] = [:]
    private var actionDurations: [ActionKey: Recorder] = [:]

    func deadLettered(reason: String) {
        counter("runworker_dead_letters_total", [("reason", reason)]).increment()
    }

    /// Agent ids are the users' own: a run without one is labelled `none`, and past
    /// `maxAgentLabels` distinct ids the rest share `other`, so a flood of ids cannot grow the
    /// metrics without bound.
    private var agentLabels: Set<String> = []
    static let maxAgentLabels = 200

    func label(_ agentID: String?) -> String {
        guard let id = agentID, !id.isEmpty else { return "none" }
        if agentLabels.contains(id) { return id }
        guard agentLabels.count < Self.maxAgentLabels else { return "other" }
        agentLabels.insert(id)
        return id
    }
}
