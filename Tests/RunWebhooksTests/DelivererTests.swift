import AMQPClient
import Foundation
import MetricsTestKit
import RunContract
import RunStore
import RunTestSupport
import Synchronization
import Testing

@testable import RunWebhooks
@testable import RunWorker

/// The deliverer's decisions that RunWorkerTests does not cover: store errors, the cache's
/// reads, unresolved hosts, stopping, stored invalid URLs, attempt headers, status classes,
/// the request's shape, metrics and counters, and the bound on POSTs in flight.
@Suite struct DelivererTests {
    static let completed = eventBody("r1", seq: 3, type: "completed", status: "completed")

    // MARK: events

    /// An event is a JSON object with string `run_id` and `type`; its id is the message id, else
    /// `<run>:<seq>`, else `<run>:<type>`.
    @Test func eventFields() throws {
        let full = try #require(WebhookEvent(body: Self.completed, messageID: "m-1"))
        #expect(full.runID == "r1" && full.type == "completed" && full.status == "completed" && full.eventID == "m-1")
        #expect(WebhookEvent(body: Self.completed, messageID: nil)?.eventID == "r1:3")
        let bare = try #require(WebhookEvent(body: Array(#"{"run_id":"r2","type":"started"}"#.utf8), messageID: nil))
        #expect(bare.eventID == "r2:started")
        #expect(bare.status == nil)
        for body in ["", "not json", "[1]", #"{"type":"completed"}"#, #"{"run_id":"r1"}"#, #"{"run_id":7,"type":"completed"}"#,
                     #"{"run_id":"r1","type":null}"#] {
            #expect(WebhookEvent(body: Array(body.utf8), messageID: "m") == nil, "\(body)")
        }
    }

    // MARK: store

    /// A store that does not answer gives the delivery back to the queue: nothing POSTed,
    /// nothing cached, nothing counted.
    @Test func storeErrorRequeues() async throws {
        let store = ControllableStore()
        try await seedRun(store, "r1", webhook: WebhookConfig(url: "https://hooks.example/r1"))
        store.fail()
        let poster = ScriptedPoster()
        let shared = SharedStatus(workerID: "w")
        let d = makeDeliverer(store: store, poster: poster, shared: shared)
        #expect(await d.handle(body: Self.completed, messageID: nil, headers: nil) == .requeue)
        #expect(poster.requests.isEmpty)
        #expect(d.cache.count == 0)
        #expect(shared.webhooks == WebhookCounters())
    }

    /// The store is read once per run, a run that is gone included, however many events follow.
    @Test func oneStoreReadPerRun() async throws {
        let store = ControllableStore()
        try await seedRun(store, "r1", webhook: WebhookConfig(url: "https://hooks.example/r1", events: [.started, .completed]))
        let poster = ScriptedPoster()
        let d = makeDeliverer(store: store, poster: poster)
        for (seq, type, status) in [(2, "started", "running"), (3, "action_required", "waiting"), (4, "completed", "completed")] {
            #expect(await d.handle(body: eventBody("r1", seq: seq, type: type, status: status), messageID: nil, headers: nil) == .ack)
        }
        #expect(store.reads == 1)
        #expect(poster.requests.count == 2)
        for seq in 1...3 {
            #expect(await d.handle(body: eventBody("gone", seq: seq, type: "failed", status: "failed"), messageID: nil, headers: nil) == .ack)
        }
        #expect(store.reads == 2)
        #expect(d.cache.get("gone") == .missing)
        #expect(poster.requests.count == 2)
    }

    // MARK: targets

    /// A host that does not resolve is a failed attempt: retried with the backoff, and given up
    /// at the last attempt, never POSTed.
    @Test func unresolvedHostIsAFailedAttempt() async throws {
        let store = InMemoryRunStore()
        try await seedRun(store, "r1", webhook: WebhookConfig(url: "https://nowhere.example/"))
        let poster = ScriptedPoster()
        let metrics = TestMetrics()
        let d = makeDeliverer(store: store, poster: poster, factory: metrics, resolution: .failure(.init("no such host"))) {
            $0.initialBackoffS = 1.5
        }
        #expect(await d.handle(body: Self.completed, messageID: nil, headers: nil) == .retry(attempt: 2, delayMS: 1_500, queueMS: 1_500))
        #expect(await d.handle(body: Self.completed, messageID: nil, headers: [WebhookDeliverer.attemptHeader: .int64(2)])
            == .retry(attempt: 3, delayMS: 3_000, queueMS: 3_000))
        #expect(await d.handle(body: Self.completed, messageID: nil, headers: [WebhookDeliverer.attemptHeader: .int64(3)]) == .ack)
        #expect(poster.requests.isEmpty)
        #expect(try metrics.expectCounter("runworker_webhook_retries_total").totalValue == 2)
        #expect(try metrics.expectCounter("runworker_webhook_failed_total", [("reason", "max_attempts")]).totalValue == 1)
    }

    /// A stored webhook URL that is not valid (written before validation, or by hand) is given
    /// up at once: acked, counted as `invalid_url`, never POSTed.
    @Test func invalidStoredURLIsGivenUp() async throws {
        let store = InMemoryRunStore()
        try await seedRun(store, "r1", webhook: WebhookConfig(url: "gopher://hooks.example/"))
        let poster = ScriptedPoster()
        let metrics = TestMetrics()
        let d = makeDeliverer(store: store, poster: poster, factory: metrics)
        #expect(await d.handle(body: Self.completed, messageID: nil, headers: nil) == .ack)
        #expect(poster.requests.isEmpty)
        #expect(try metrics.expectCounter("runworker_webhook_failed_total", [("reason", "invalid_url")]).totalValue == 1)
    }

    // MARK: stopping

    /// Once stopping, a delivery that would be POSTed goes back to the queue; one that needs no
    /// POST is still acked.
    @Test func stoppingRequeuesBeforeThePost() async throws {
        let store = InMemoryRunStore()
        try await seedRun(store, "r1", webhook: WebhookConfig(url: "https://hooks.example/r1"))
        let poster = ScriptedPoster()
        let d = makeDeliverer(store: store, poster: poster)
        d.stopping.set()
        #expect(await d.handle(body: Self.completed, messageID: nil, headers: nil) == .requeue)
        #expect(await d.handle(body: eventBody("r1", seq: 2, type: "started", status: "running"), messageID: nil, headers: nil) == .ack)
        #expect(await d.handle(body: Array("junk".utf8), messageID: nil, headers: nil) == .ack)
        #expect(poster.requests.isEmpty)
    }

    /// A delivery waiting for a POST slot when the dispatcher stops goes back to the queue; the
    /// POST under way finishes and is acked.
    @Test func stoppingWhileWaitingForASlot() async throws {
        let store = InMemoryRunStore()
        try await seedRun(store, "r1", webhook: WebhookConfig(url: "https://hooks.example/r1"))
        let poster = GatedPoster()
        let d = makeDeliverer(store: store, poster: poster) { $0.concurrency = 1 }
        let first = Task { await d.handle(body: Self.completed, messageID: "e1", headers: nil) }
        var entered = poster.entered.makeAsyncIterator()
        await entered.next()
        let second = Task { await d.handle(body: Self.completed, messageID: "e2", headers: nil) }
        d.stopping.set()
        poster.open()
        #expect(await first.value == .ack)
        #expect(await second.value == .requeue)
        #expect(poster.maxInFlight == 1)
    }

    // MARK: attempts and answers

    /// The attempt is the header's integer of any width; absent, zero or negative it is 1.
    @Test(arguments: [
        (nil, "1"), (AMQPFieldValue.int64(0), "1"), (.int64(-3), "1"), (.int32(2), "2"), (.uint8(2), "2"), (.int16(2), "2"),
        (.string("2"), "1"),
    ] as [(AMQPFieldValue?, String)])
    func attemptHeader(value: AMQPFieldValue?, sent: String) async throws {
        let store = InMemoryRunStore()
        try await seedRun(store, "r1", webhook: WebhookConfig(url: "https://hooks.example/r1"))
        let poster = ScriptedPoster()
        let d = makeDeliverer(store: store, poster: poster)
        let headers: AMQPTable? = value.map { [WebhookDeliverer.attemptHeader: $0] }
        #expect(await d.handle(body: Self.completed, messageID: nil, headers: headers) == .ack)
        #expect(poster.requests.first?.header("Runworker-Attempt") == sent)
    }

    /// Only a 2xx answer delivers; any other status is a failed attempt.
    @Test(arguments: [(200, true), (204, true), (299, true), (199, false), (300, false), (304, false), (404, false), (503, false)])
    func onlyTwoHundredsDeliver(status: Int, delivered: Bool) async throws {
        let store = InMemoryRunStore()
        try await seedRun(store, "r1", webhook: WebhookConfig(url: "https://hooks.example/r1"))
        let d = makeDeliverer(store: store, poster: ScriptedPoster([.success(status)]))
        let outcome = await d.handle(body: Self.completed, messageID: nil, headers: nil)
        #expect(outcome == (delivered ? .ack : .retry(attempt: 2, delayMS: 1_000, queueMS: 1_000)))
    }

    /// The POST goes to the URL as configured (query included) with the settings' timeout,
    /// the headers in a fixed order, and a signature a receiver verifies.
    @Test func requestShape() async throws {
        let store = InMemoryRunStore()
        try await seedRun(store, "r1", webhook: WebhookConfig(url: "https://hooks.example/r1?token=abc"))
        let poster = ScriptedPoster()
        let d = makeDeliverer(store: store, poster: poster) { $0.timeoutS = 2.5 }
        #expect(await d.handle(body: Self.completed, messageID: nil, headers: nil) == .ack)
        let request = try #require(poster.requests.first)
        #expect(request.url == "https://hooks.example/r1?token=abc")
        #expect(request.timeoutS == 2.5)
        #expect(request.body == Self.completed)
        #expect(request.headers.map(\.0) == [
            "Content-Type", "User-Agent", "Runworker-Event-Id", "Runworker-Timestamp", "Runworker-Signature", "Runworker-Attempt",
        ])
        #expect(request.header("User-Agent") == "runworker-webhooks/1")
        #expect(request.header("Runworker-Event-Id") == "r1:3")
        let signature = try #require(request.header("Runworker-Signature"))
        let timestamp = try #require(request.header("Runworker-Timestamp"))
        #expect(WebhookSignature.verify(
            header: signature, secret: "unit-test-secret-0123", timestamp: timestamp, body: request.body, now: 1_700_000_000))
    }

    // MARK: metrics

    /// Each outcome is counted once, in the metrics (failures by reason, POST times) and in the
    /// counters `/readyz` shows, which exist (zero) from the start.
    @Test func metricsAndCounters() async throws {
        let store = InMemoryRunStore()
        try await seedRun(store, "ok", webhook: WebhookConfig(url: "https://hooks.example/ok"))
        try await seedRun(store, "bad", webhook: WebhookConfig(url: "https://hooks.example/bad"))
        try await seedRun(store, "inside", webhook: WebhookConfig(url: "http://10.0.0.7/hook"))
        let metrics = TestMetrics()
        let shared = SharedStatus(workerID: "w")
        let d = makeDeliverer(store: store, poster: ScriptedPoster([.success(200), .success(500), .failure(.init())]), factory: metrics, shared: shared)
        #expect(shared.webhooks == WebhookCounters())

        let done = { (run: String) in eventBody(run, seq: 3, type: "completed", status: "completed") }
        #expect(await d.handle(body: done("ok"), messageID: nil, headers: nil) == .ack)
        #expect(await d.handle(body: done("bad"), messageID: nil, headers: nil) == .retry(attempt: 2, delayMS: 1_000, queueMS: 1_000))
        #expect(await d.handle(body: done("bad"), messageID: nil, headers: [WebhookDeliverer.attemptHeader: 3]) == .ack)
        #expect(await d.handle(body: done("inside"), messageID: nil, headers: nil) == .ack)
        #expect(await d.handle(body: eventBody("ok", seq: 2, type: "started", status: "running"), messageID: nil, headers: nil) == .ack)

        var expected = WebhookCounters()
        expected.delivered = 1
        expected.retried = 1
        expected.failed = 2
        expected.skipped = 1
        #expect(shared.webhooks == expected)
        #expect(try metrics.expectCounter("runworker_webhook_delivered_total").totalValue == 1)
        #expect(try metrics.expectCounter("runworker_webhook_retries_total").totalValue == 1)
        #expect(try metrics.expectCounter("runworker_webhook_failed_total", [("reason", "max_attempts")]).totalValue == 1)
        #expect(try metrics.expectCounter("runworker_webhook_failed_total", [("reason", "private_target")]).totalValue == 1)
        // A POST that threw (a refused connection) is not timed; the two answered ones are.
        #expect(try metrics.expectTimer("runworker_webhook_post_seconds").values.count == 2)
    }

    // MARK: concurrency

    /// At most `concurrency` POSTs are in flight; the others wait for a slot and then go out.
    @Test func postsInFlightAreBounded() async throws {
        let store = InMemoryRunStore()
        try await seedRun(store, "r1", webhook: WebhookConfig(url: "https://hooks.example/r1"))
        let poster = GatedPoster()
        let d = makeDeliverer(store: store, poster: poster) { $0.concurrency = 2 }
        await withTaskGroup(of: WebhookOutcome.self) { group in
            for i in 0..<6 {
                group.addTask { await d.handle(body: Self.completed, messageID: "e\(i)", headers: nil) }
            }
            var entered = poster.entered.makeAsyncIterator()
            await entered.next()
            await entered.next()
            poster.open()
            var outcomes: [WebhookOutcome] = []
            for await outcome in group { outcomes.append(outcome) }
            #expect(outcomes == Array(repeating: .ack, count: 6))
        }
        #expect(poster.maxInFlight == 2)
    }

    /// A waiter on the semaphore goes on only after a permit is given back; permits are counted.
    @Test func semaphoreWaitsForASignal() async {
        let semaphore = AsyncSemaphore(1)
        await semaphore.wait()
        let log = Log()
        let waiter = Task {
            await semaphore.wait()
            log.append("waiter")
        }
        log.append("signal")
        semaphore.signal()
        await waiter.value
        #expect(log.entries == ["signal", "waiter"])
        semaphore.signal()
        await semaphore.wait()  // the permit given back is there
    }

    final class Log: Sendable {
        private let lines = Mutex<[String]>([])
        func append(_ line: String) { lines.withLock { $0.append(line) } }
        var entries: [String] { lines.withLock { $0 } }
    }

    // MARK: dispatcher loop

    /// The loop's prefetch is the POST slots plus room for deliveries that need no POST, and
    /// stopping it stops its deliverer taking new POSTs.
    @Test func loopPrefetchAndStop() throws {
        var settings = WorkerSettings()
        settings.webhooks.concurrency = 8
        let d = makeDeliverer(store: InMemoryRunStore(), poster: ScriptedPoster())
        let loop = WebhookLoop(settings: settings, deliverer: d, logger: quietLogger, shared: nil, waker: try Waker())
        #expect(loop.prefetch == 136)
        settings.webhooks.concurrency = 1024
        #expect(WebhookLoop(settings: settings, deliverer: d, logger: quietLogger, shared: nil, waker: try Waker()).prefetch == 1152)
        #expect(!loop.isStopped && !d.stopping.isSet)
        loop.stop()
        #expect(loop.isStopped && d.stopping.isSet)
        #expect(WebhookLoop.deathHeaders.contains("x-death"))
        #expect(!WebhookLoop.deathHeaders.contains(WebhookDeliverer.attemptHeader))
    }
}
