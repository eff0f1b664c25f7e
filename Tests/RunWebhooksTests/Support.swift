import AMQPClient
import CoreMetrics
import Foundation
import Logging
import RunContract
import RunStore
import Synchronization

@testable import RunWebhooks
@testable import RunWorker

/// The POST, answered from a script (200 once the script is used up), every request kept.
final class ScriptedPoster: WebhookPoster {
    struct Request: Sendable {
        var url: String
        var headers: [(String, String)]
        var body: [UInt8]
        var timeoutS: Double

        func header(_ name: String) -> String? { headers.first { $0.0 == name }?.1 }
    }
    struct Refused: Error {}

    private let answers: Mutex<[Result<Int, Refused>]>
    private let log = Mutex<[Request]>([])

    init(_ answers: [Result<Int, Refused>] = []) { self.answers = Mutex(answers) }

    var requests: [Request] { log.withLock { $0 } }

    func post(url: String, headers: [(String, String)], body: [UInt8], timeoutS: Double) async throws -> Int {
        log.withLock { $0.append(Request(url: url, headers: headers, body: body, timeoutS: timeoutS)) }
        return try answers.withLock { $0.isEmpty ? .success(200) : $0.removeFirst() }.get()
    }
}

/// A POST that holds every request until `open()`: how many are in flight at once, and when
/// each one began (`entered`, one element per request).
final class GatedPoster: WebhookPoster {
    private struct State {
        var open = false
        var inFlight = 0
        var maxInFlight = 0
        var waiting: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())
    let entered: AsyncStream<Void>
    private let enter: AsyncStream<Void>.Continuation

    init() { (entered, enter) = AsyncStream<Void>.makeStream() }

    var maxInFlight: Int { state.withLock { $0.maxInFlight } }

    func post(url: String, headers: [(String, String)], body: [UInt8], timeoutS: Double) async throws -> Int {
        state.withLock { s in
            s.inFlight += 1
            s.maxInFlight = max(s.maxInFlight, s.inFlight)
        }
        enter.yield()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let go = state.withLock { s in
                if s.open { return true }
                s.waiting.append(c)
                return false
            }
            if go { c.resume() }
        }
        state.withLock { $0.inFlight -= 1 }
        return 200
    }

    func open() {
        let waiting = state.withLock { s in
            s.open = true
            defer { s.waiting = [] }
            return s.waiting
        }
        for c in waiting { c.resume() }
    }
}

/// The in-memory store, counting run reads, and refusing everything when told to.
final class ProbeStore: RunStore {
    let base = InMemoryRunStore()
    private let down = Atomic<Bool>(false)
    private let runReads = Atomic<Int>(0)

    var reads: Int { runReads.load(ordering: .acquiring) }
    func fail() { down.store(true, ordering: .releasing) }

    private func check() throws {
        if down.load(ordering: .acquiring) { throw StoreError(.unavailable, "connection refused") }
    }

    func load(runIDs: Set<String>, commands: Set<CommandKey>) async throws -> StoreSnapshot {
        try check()
        return try await base.load(runIDs: runIDs, commands: commands)
    }
    func commit(_ batch: StoreCommit) async throws -> [Int64] {
        try check()
        return try await base.commit(batch)
    }
    func pendingOutbox(runIDs: Set<String>) async throws -> [OutboxMessage] {
        try check()
        return try await base.pendingOutbox(runIDs: runIDs)
    }
    func pendingOutbox(writtenBefore: Timestamp, partitions: [Int]?, limit: Int) async throws -> [OutboxMessage] {
        try check()
        return try await base.pendingOutbox(writtenBefore: writtenBefore, partitions: partitions, limit: limit)
    }
    func removeOutbox(ids: [Int64]) async throws {
        try check()
        try await base.removeOutbox(ids: ids)
    }
    func runsDue(at time: Timestamp, partitions: [Int]?, limit: Int) async throws -> [String] {
        try check()
        return try await base.runsDue(at: time, partitions: partitions, limit: limit)
    }
    func recordDeliveryAttempt(key: String, error: String?, increment: Bool, at time: Timestamp) async throws -> Int {
        try check()
        return try await base.recordDeliveryAttempt(key: key, error: error, increment: increment, at: time)
    }
    func lastDeliveryError(key: String) async throws -> String? {
        try check()
        return try await base.lastDeliveryError(key: key)
    }
    func run(_ runID: String) async throws -> Run? {
        runReads.add(1, ordering: .acquiringAndReleasing)
        try check()
        return try await base.run(runID)
    }
    func runs(status: RunStatus?, agentID: String?, limit: Int) async throws -> [Run] {
        try check()
        return try await base.runs(status: status, agentID: agentID, limit: limit)
    }
    func listRuns(_ query: RunQuery) async throws -> RunPage {
        try check()
        return try await base.listRuns(query)
    }
    func history(runID: String, afterSeq: Int64, limit: Int) async throws -> [OutboxMessage] {
        try check()
        return try await base.history(runID: runID, afterSeq: afterSeq, limit: limit)
    }
    func runCounts() async throws -> [RunStatus: Int] {
        try check()
        return try await base.runCounts()
    }
    func outboxDepth() async throws -> Int {
        try check()
        return try await base.outboxDepth()
    }
    func prune(finishedBefore: Timestamp, commandsBefore: Timestamp, limit: Int, commandLimit: Int) async throws -> PruneResult {
        try check()
        return try await base.prune(
            finishedBefore: finishedBefore, commandsBefore: commandsBefore, limit: limit, commandLimit: commandLimit)
    }
}

/// Commits a running run with `webhook` (not validated: the store keeps what it is given).
func seedRun(_ store: any RunStore, _ runID: String, webhook: WebhookConfig?) async throws {
    let run = Run(
        runID: runID, status: .running, version: 2, config: RunConfig(webhook: webhook),
        createdAt: Timestamp(milliseconds: 1), updatedAt: Timestamp(milliseconds: 1))
    _ = try await store.commit(StoreCommit(runs: [RunWrite(run: run, previousVersion: nil, nextDeadline: nil, partition: 0)]))
}

/// An event body as the worker publishes it.
func eventBody(_ runID: String, seq: Int, type: String, status: String) -> [UInt8] {
    Array(#"{"run_id":"\#(runID)","seq":\#(seq),"type":"\#(type)","status":"\#(status)"}"#.utf8)
}

let quietLogger: Logger = {
    var logger = Logger(label: "RunWebhooksTests")
    logger.logLevel = .critical
    return logger
}()

/// A deliverer with a fixed clock (1 700 000 000) and no jitter; `maxAttempts` 3 unless configured.
/// Every host name resolves to `resolution` (by default one public address).
func makeDeliverer(
    store: any RunStore, poster: any WebhookPoster, factory: any MetricsFactory = NOOPMetricsHandler.instance,
    shared: SharedStatus? = nil,
    resolution: Result<[ResolvedAddress], TargetPolicy.ResolveError> = .success([
        ResolvedAddress(text: "93.184.216.34", kind: .global)
    ]),
    _ configure: (inout WebhookSettings) -> Void = { _ in }
) -> WebhookDeliverer {
    var s = WebhookSettings()
    s.enabled = true
    s.secret = "unit-test-secret-0123"
    s.maxAttempts = 3
    configure(&s)
    return WebhookDeliverer(
        settings: s, store: store, poster: poster, metrics: WebhookMetrics(factory: factory, shared: shared),
        logger: quietLogger, policy: TargetPolicy(allowPrivate: s.allowPrivateTargets, resolve: { _, _ in resolution }),
        now: { 1_700_000_000 }, random: { 0 }, storePauseS: 0)
}
