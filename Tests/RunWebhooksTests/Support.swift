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
