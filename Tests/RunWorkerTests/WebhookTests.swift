import AMQPClient
import CoreMetrics
import Foundation
import RunContract
import RunStore
import Synchronization
import Testing

@testable import RunWebhooks
@testable import RunWorker

/// Webhooks without a network: the signature, `config.webhook`, the settings, the target rules,
/// the backoff schedule and the deliverer's decisions.
@Suite struct WebhookTests {
    // MARK: signature

    /// Vectors computed independently with Python's `hmac`:
    /// hmac.new(secret, b"1700000000." + body, hashlib.sha256).hexdigest()
    @Test func signatureMatchesPythonHMAC() {
        let body = Array(#"{"run_id":"r-1","seq":3,"type":"completed","status":"completed"}"#.utf8)
        #expect(WebhookSignature.header(secret: "whsec-test-0123456789", timestamp: 1_700_000_000, body: body)
            == "v1=69c0acba4a3991598e07193085c28d13e7fa923ce1b2005d979e0bbbe38062d4")
        // hmac.new(b"key", b"0.", hashlib.sha256).hexdigest(): the payload is "<timestamp>.<body>".
        #expect(WebhookSignature.payload(timestamp: 0, body: []) == Array("0.".utf8))
        #expect(WebhookSignature.hex(secret: "key", timestamp: 0, body: [])
            == "85841b4efc3cd7776c3c8f9b7cca9e281c550e5d19889d78e9e669c6337f000d")
    }

    @Test func verifyAcceptsOnlyTheRightSignatureInTime() {
        let body = Array(#"{"a":1}"#.utf8)
        let header = WebhookSignature.header(secret: "s3cret-s3cret-s3cret", timestamp: 1000, body: body)
        #expect(WebhookSignature.verify(header: header, secret: "s3cret-s3cret-s3cret", timestamp: "1000", body: body, now: 1100))
        #expect(WebhookSignature.verify(header: "v0=abc, " + header, secret: "s3cret-s3cret-s3cret", timestamp: "1000", body: body, now: 1000))
        #expect(!WebhookSignature.verify(header: header, secret: "other-secret-value!!", timestamp: "1000", body: body, now: 1000))
        #expect(!WebhookSignature.verify(header: header, secret: "s3cret-s3cret-s3cret", timestamp: "1001", body: body, now: 1000))
        #expect(!WebhookSignature.verify(header: header, secret: "s3cret-s3cret-s3cret", timestamp: "1000", body: body + [0x20], now: 1000))
        #expect(!WebhookSignature.verify(header: header, secret: "s3cret-s3cret-s3cret", timestamp: "1000", body: body, now: 1000 + 301))
    }

    // MARK: config.webhook

    @Test func webhookConfigDecodesEncodesAndMerges() throws {
        let config = try RunConfig(json: ["webhook": ["url": "https://hooks.example.com/x?t=1", "events": ["completed", "failed", "completed"]]])
        #expect(config.webhook == WebhookConfig(url: "https://hooks.example.com/x?t=1", events: [.completed, .failed]))
        #expect(config.jsonObject["webhook"] == ["url": "https://hooks.example.com/x?t=1", "events": ["completed", "failed"]])
        #expect(try RunConfig(json: config.jsonObject) == config)
        #expect(try RunConfig(json: ["webhook": ["url": "http://h:8080"]]).webhook?.events == nil)
        #expect(try RunConfig(json: ["webhook": .null]).webhook == nil)

        // merged: a run's own wins; events not given are inherited field by field.
        let inherited = RunConfig(timeoutS: 5, webhook: WebhookConfig(url: "https://a.example/", events: [.started]))
        #expect(RunConfig(webhook: WebhookConfig(url: "https://b.example/")).merged(over: inherited).webhook
            == WebhookConfig(url: "https://b.example/", events: [.started]))
        #expect(RunConfig().merged(over: inherited).webhook == inherited.webhook)
        #expect(RunConfig(webhook: WebhookConfig(url: "https://b.example/")).merged(over: RunConfig()).webhook?.url == "https://b.example/")
    }

    static let invalidWebhooks: [(JSONValue, String)] = [
        (["url": "ftp://example.com/"], "config.webhook.url"),
        (["url": "https://"], "config.webhook.url"),
        (["url": "example.com/hook"], "config.webhook.url"),
        (["url": "https://user:pw@example.com/"], "config.webhook.url"),
        (["url": "https://exa mple.com/"], "config.webhook.url"),
        (["url": "https://example.com:0/"], "config.webhook.url"),
        (["url": "https://example.com:99999/"], "config.webhook.url"),
        (["url": "https://[::1/"], "config.webhook.url"),
        (["url": 7], "config.webhook.url"),
        ([:], "config.webhook.url is required"),
        (["url": "https://example.com", "events": ["completed", "finished"]], "config.webhook.events"),
        (["url": "https://example.com", "events": "completed"], "config.webhook.events"),
        ("https://example.com", "config.webhook must be an object"),
    ]

    @Test(arguments: invalidWebhooks)
    func invalidWebhookIsValidationError(_ webhook: JSONValue, _ message: String) {
        #expect {
            try RunConfig(json: ["webhook": webhook], path: "config")
        } throws: { error in
            guard let e = error as? RunError else { return false }
            return e.code == .validationError && e.message.contains(message)
        }
    }

    @Test func validURLs() {
        for url in [
            "http://example.com", "https://example.com/", "HTTPS://Example.COM:8443/a/b?c=d#e", "http://127.0.0.1:9/x",
            "http://[::1]:8080/hook", "https://[2001:db8::1]/", "http://under_score.example/",
        ] {
            #expect(WebhookConfig.isValidURL(url), "\(url)")
        }
        #expect(WebhookURL("http://[::1]:8080/hook")?.host == "::1")
        #expect(WebhookURL("http://[::1]:8080/hook")?.port == 8080)
        #expect(WebhookURL("https://Example.com/a?token=x")?.port == 443)
        #expect(WebhookURL("https://Example.com/a?token=x")?.host == "example.com")
        #expect(WebhookURL("https://Example.com/a?token=x")?.redacted == "https://Example.com/a")
        #expect(WebhookURL("http://h/")?.port == 80)
    }

    /// A create command with config.webhook is stored with it; a bad one is refused.
    @Test func commandsCarryTheWebhook() async throws {
        let store = InMemoryRunStore()
        let batch = try await processor(store).process([
            inbound(["command": "start", "run_id": "r1", "config": ["webhook": ["url": "https://h.example/x", "events": ["completed"]]]], id: "c1"),
            inbound(["command": "start", "run_id": "r2", "config": ["webhook": ["url": "file:///etc/passwd"]]], runID: "r2", id: "c2"),
        ])
        #expect(try await store.run("r1")?.config.webhook == WebhookConfig(url: "https://h.example/x", events: [.completed]))
        #expect(try await store.run("r2") == nil)
        let refused = try replies(batch).last
        #expect(refused?.ok == false && refused?.error?.code == .validationError)
    }

    // MARK: settings

    @Test func settings() throws {
        var s = WorkerSettings()
        #expect(s.webhooks == WebhookSettings())
        #expect(!s.webhooks.enabled && s.webhooks.maxAttempts == 10 && s.webhooks.initialBackoffS == 1 && s.webhooks.maxBackoffS == 300)
        #expect(s.webhooks.timeoutS == 10 && s.webhooks.concurrency == 8 && !s.webhooks.allowPrivateTargets)
        try s.validate()
        try s.apply(environment: ["RUNWORKER_WEBHOOKS_ENABLED": "true"])
        #expect { try s.validate() } throws: { "\($0)".contains("webhooks.secret") }
        try s.apply(environment: ["RUNWORKER_WEBHOOK_SECRET": "short"])
        #expect { try s.validate() } throws: { "\($0)".contains("at least 16") }
        try s.apply(environment: ["RUNWORKER_WEBHOOK_SECRET": "a-secret-of-enough-length"])
        try s.validate()
        #expect(s.webhooks.secret == "a-secret-of-enough-length")
        // The table's own name wins over the short one.
        try s.apply(environment: ["RUNWORKER_WEBHOOK_SECRET": "the-short-name-value", "RUNWORKER_WEBHOOKS_SECRET": "the-table-name-value"])
        #expect(s.webhooks.secret == "the-table-name-value")
        try s.apply(yaml: """
            webhooks:
              default_url: https://hooks.example.com/all
              allow_private_targets: true
              max_attempts: 3
              initial_backoff_s: 0.5
              max_backoff_s: 4
              timeout_s: 2
              concurrency: 2
            """)
        #expect(s.webhooks.defaultURL == "https://hooks.example.com/all" && s.webhooks.allowPrivateTargets)
        #expect(s.webhooks.maxAttempts == 3 && s.webhooks.initialBackoffS == 0.5 && s.webhooks.maxBackoffS == 4)
        #expect(s.webhooks.timeoutS == 2 && s.webhooks.concurrency == 2)
        try s.validate()
        try s.apply(arguments: ["--webhooks.max-attempts", "0"])
        #expect { try s.validate() } throws: { "\($0)".contains("webhooks.max_attempts") }
        try s.apply(arguments: ["--webhooks.max-attempts=2", "--webhooks.default-url", "gopher://x"])
        #expect { try s.validate() } throws: { "\($0)".contains("webhooks.default_url") }
        try s.apply(arguments: ["--webhooks.default-url", "null", "--webhooks.max-backoff-s", "0.1"])
        #expect { try s.validate() } throws: { "\($0)".contains("webhooks.max_backoff_s") }
        #expect(throws: SettingsError.self) { try s.apply(environment: ["RUNWORKER_WEBHOOKS_ENABLED": "maybe"]) }
        #expect(WorkerSettings.table.first { $0.key == "webhooks.secret" }?.get(s) == "(set)")
    }

    // MARK: targets

    @Test func addressClasses() {
        let cases: [(String, AddressClass)] = [
            ("127.0.0.1", .loopback), ("127.255.0.9", .loopback), ("10.1.2.3", .private), ("172.16.0.1", .private),
            ("172.31.255.255", .private), ("172.32.0.1", .global), ("192.168.1.1", .private), ("169.254.169.254", .linkLocal),
            ("0.0.0.0", .unspecified), ("100.64.0.1", .private), ("224.0.0.1", .multicast), ("255.255.255.255", .reserved),
            ("8.8.8.8", .global), ("93.184.216.34", .global),
            ("::1", .loopback), ("::", .unspecified), ("fc00::1", .private), ("fd12:3456::1", .private),
            ("fe80::1", .linkLocal), ("febf::1", .linkLocal), ("ff02::1", .multicast), ("::ffff:127.0.0.1", .loopback),
            ("::ffff:10.0.0.1", .private), ("::ffff:8.8.8.8", .global), ("2001:4860:4860::8888", .global), ("[::1]", .loopback),
        ]
        for (address, expected) in cases {
            #expect(AddressClass.of(numeric: address) == expected, "\(address)")
        }
        #expect(AddressClass.of(numeric: "example.com") == nil)
    }

    @Test func targetPolicy() async {
        let resolver: @Sendable (String, Int) -> Result<[ResolvedAddress], TargetPolicy.ResolveError> = { host, _ in
            switch host {
            case "public.example": .success([ResolvedAddress(text: "93.184.216.34", kind: .global)])
            case "mixed.example":
                .success([ResolvedAddress(text: "93.184.216.34", kind: .global), ResolvedAddress(text: "10.0.0.5", kind: .private)])
            case "inside.example": .success([ResolvedAddress(text: "fd00::5", kind: .private)])
            default: .failure(.init("Name or service not known"))
            }
        }
        let strict = TargetPolicy(allowPrivate: false, resolve: resolver)
        #expect(await strict.check(WebhookURL("https://public.example/h")!) == .allowed)
        #expect(await strict.check(WebhookURL("http://8.8.8.8/h")!) == .allowed)
        for url in ["https://mixed.example/", "https://inside.example/", "http://127.0.0.1:9/", "http://[::1]/", "http://localhost:80/",
                    "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/"] {
            guard case .refused(let reason, _) = await strict.check(WebhookURL(url)!) else {
                Issue.record("\(url) not refused")
                continue
            }
            #expect(reason == "private_target")
        }
        guard case .unresolved = await strict.check(WebhookURL("https://nowhere.example/")!) else {
            Issue.record("an unresolvable host is a failed attempt")
            return
        }
        let lax = TargetPolicy(allowPrivate: true, resolve: resolver)
        #expect(await lax.check(WebhookURL("http://127.0.0.1:9/")!) == .allowed)
        #expect(await lax.check(WebhookURL("https://inside.example/")!) == .allowed)
        // The real resolver knows localhost and numeric hosts.
        if case .success(let addresses) = TargetPolicy.getaddrinfo("127.0.0.1", 80) {
            #expect(addresses.map(\.kind) == [.loopback])
        } else {
            Issue.record("getaddrinfo failed for 127.0.0.1")
        }
    }

    // MARK: backoff

    @Test func backoffSchedule() {
        let b = WebhookBackoff(initialS: 1, maxS: 300)
        #expect((1...11).map { b.baseMilliseconds(afterAttempt: $0) }
            == [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000, 300_000])
        #expect(b.delayMilliseconds(afterAttempt: 1, random: 0) == 1_000)
        #expect(b.delayMilliseconds(afterAttempt: 1, random: 0.999_999) == 800)
        #expect(b.delayMilliseconds(afterAttempt: 3, random: 0.5) == 3_600)
        #expect(b.baseMilliseconds(afterAttempt: 1_000) == 300_000)
        let small = WebhookBackoff(initialS: 0.2, maxS: 0.5)
        #expect((1...4).map { small.baseMilliseconds(afterAttempt: $0) } == [200, 400, 500, 500])
        for attempt in 1...20 {
            for r in stride(from: 0.0, to: 1, by: 0.1) {
                let d = b.delayMilliseconds(afterAttempt: attempt, random: r)
                let base = b.baseMilliseconds(afterAttempt: attempt)
                #expect(d <= base && Double(d) >= Double(base) * 0.8 - 1)
            }
        }
    }

    // MARK: deliverer

    final class FakePoster: WebhookPoster, Sendable {
        struct Request: Sendable {
            var url: String
            var headers: [String: String]
            var body: [UInt8]
        }
        let answers: Mutex<[Result<Int, FakeError>]>
        let requests = Mutex<[Request]>([])
        struct FakeError: Error {}

        init(_ answers: [Result<Int, FakeError>]) { self.answers = Mutex(answers) }

        func post(url: String, headers: [(String, String)], body: [UInt8], timeoutS: Double) async throws -> Int {
            requests.withLock { $0.append(Request(url: url, headers: Dictionary(headers, uniquingKeysWith: { a, _ in a }), body: body)) }
            let answer = answers.withLock { $0.isEmpty ? .success(200) : $0.removeFirst() }
            return try answer.get()
        }
    }

    func seed(_ store: InMemoryRunStore, _ runID: String, webhook: WebhookConfig?) async throws {
        let run = Run(runID: runID, status: .running, version: 2, config: RunConfig(webhook: webhook),
                      createdAt: Timestamp(milliseconds: 1), updatedAt: Timestamp(milliseconds: 1))
        _ = try await store.commit(StoreCommit(runs: [RunWrite(run: run, previousVersion: nil, nextDeadline: nil, partition: 0)]))
    }

    func deliverer(_ store: any RunStore, _ poster: FakePoster, _ configure: (inout WebhookSettings) -> Void = { _ in })
        -> WebhookDeliverer
    {
        var s = WebhookSettings()
        s.enabled = true
        s.secret = "unit-test-secret-0123"
        s.maxAttempts = 3
        configure(&s)
        let resolver: @Sendable (String, Int) -> Result<[ResolvedAddress], TargetPolicy.ResolveError> = { _, _ in
            .success([ResolvedAddress(text: "93.184.216.34", kind: .global)])
        }
        return WebhookDeliverer(
            settings: s, store: store, poster: poster, metrics: WebhookMetrics(factory: NOOPMetricsHandler.instance, shared: nil),
            logger: .init(label: "test"), policy: TargetPolicy(allowPrivate: s.allowPrivateTargets, resolve: resolver),
            now: { 1_700_000_000 }, random: { 0 }, storePauseS: 0)
    }

    func event(_ runID: String, seq: Int, type: String, status: String) -> [UInt8] {
        Array(#"{"run_id":"\#(runID)","seq":\#(seq),"type":"\#(type)","status":"\#(status)","extra":[1, 2]}"#.utf8)
    }

    @Test func deliversTerminalEventsSigned() async throws {
        let store = InMemoryRunStore()
        try await seed(store, "r1", webhook: WebhookConfig(url: "https://hooks.example/r1"))
        let poster = FakePoster([])
        let d = deliverer(store, poster)
        #expect(await d.handle(body: event("r1", seq: 2, type: "started", status: "running"), messageID: "r1:2", headers: nil) == .ack)
        #expect(poster.requests.withLock { $0.isEmpty })
        let body = event("r1", seq: 3, type: "completed", status: "completed")
        #expect(await d.handle(body: body, messageID: "r1:3", headers: nil) == .ack)
        let sent = try #require(poster.requests.withLock { $0.first })
        #expect(sent.url == "https://hooks.example/r1")
        #expect(sent.body == body)
        #expect(sent.headers["Content-Type"] == "application/json")
        #expect(sent.headers["Runworker-Event-Id"] == "r1:3")
        #expect(sent.headers["Runworker-Timestamp"] == "1700000000")
        #expect(sent.headers["Runworker-Signature"] == WebhookSignature.header(secret: "unit-test-secret-0123", timestamp: 1_700_000_000, body: body))
        #expect(sent.headers["Runworker-Attempt"] == "1")
        // One store read per run: the cache answers the second time.
        #expect(d.cache.get("r1") == .webhook(WebhookConfig(url: "https://hooks.example/r1")))
    }

    @Test func filtersDefaultsAndSkips() async throws {
        let store = InMemoryRunStore()
        try await seed(store, "own", webhook: WebhookConfig(url: "https://own.example/", events: [.started, .actionRequired]))
        try await seed(store, "plain", webhook: nil)
        let poster = FakePoster([])
        let withDefault = deliverer(store, poster) { $0.defaultURL = "https://default.example/hook" }
        #expect(await withDefault.handle(body: event("own", seq: 2, type: "started", status: "running"), messageID: nil, headers: nil) == .ack)
        #expect(await withDefault.handle(body: event("own", seq: 9, type: "completed", status: "completed"), messageID: nil, headers: nil) == .ack)
        #expect(await withDefault.handle(body: event("plain", seq: 5, type: "failed", status: "failed"), messageID: nil, headers: nil) == .ack)
        #expect(await withDefault.handle(body: event("plain", seq: 4, type: "retry_scheduled", status: "retrying"), messageID: nil, headers: nil) == .ack)
        #expect(await withDefault.handle(body: event("gone", seq: 5, type: "failed", status: "failed"), messageID: nil, headers: nil) == .ack)
        #expect(await withDefault.handle(body: Array("not json".utf8), messageID: nil, headers: nil) == .ack)
        #expect(await withDefault.handle(body: event("plain", seq: 0, type: "command_rejected", status: "x"), messageID: nil, headers: nil) == .ack)
        #expect(poster.requests.withLock { $0.map(\.url) } == ["https://own.example/", "https://default.example/hook"])
        #expect(poster.requests.withLock { $0.map { $0.headers["Runworker-Event-Id"] } } == ["own:2", "plain:5"])
        // Without a default, a run without a webhook posts nothing.
        let none = FakePoster([])
        #expect(await deliverer(store, none).handle(body: event("plain", seq: 5, type: "failed", status: "failed"), messageID: nil, headers: nil) == .ack)
        #expect(none.requests.withLock { $0.isEmpty })
    }

    @Test func retriesThenGivesUp() async throws {
        let store = InMemoryRunStore()
        try await seed(store, "r1", webhook: WebhookConfig(url: "https://hooks.example/r1"))
        let poster = FakePoster([.success(500), .failure(.init()), .success(302)])
        let d = deliverer(store, poster) { $0.initialBackoffS = 2 }
        let body = event("r1", seq: 3, type: "completed", status: "completed")
        #expect(await d.handle(body: body, messageID: "r1:3", headers: nil) == .retry(attempt: 2, delayMS: 2_000, queueMS: 2_000))
        #expect(await d.handle(body: body, messageID: "r1:3", headers: [WebhookDeliverer.attemptHeader: 2]) == .retry(attempt: 3, delayMS: 4_000, queueMS: 4_000))
        // The last attempt (max_attempts = 3) fails (a redirect is not followed): given up, acked.
        #expect(await d.handle(body: body, messageID: "r1:3", headers: [WebhookDeliverer.attemptHeader: 3]) == .ack)
        #expect(poster.requests.withLock { $0.map { $0.headers["Runworker-Attempt"] } } == ["1", "2", "3"])
    }

    @Test func refusesPrivateTargetsAtOnce() async throws {
        let store = InMemoryRunStore()
        try await seed(store, "r1", webhook: WebhookConfig(url: "http://127.0.0.1:9/hook"))
        let poster = FakePoster([])
        let strict = deliverer(store, poster)
        #expect(await strict.handle(body: event("r1", seq: 3, type: "completed", status: "completed"), messageID: nil, headers: nil) == .ack)
        #expect(poster.requests.withLock { $0.isEmpty })
        let lax = deliverer(store, poster) { $0.allowPrivateTargets = true }
        #expect(await lax.handle(body: event("r1", seq: 3, type: "completed", status: "completed"), messageID: nil, headers: nil) == .ack)
        #expect(poster.requests.withLock { $0.count } == 1)
    }

    @Test func targetCacheIsBounded() {
        let cache = WebhookTargetCache(capacity: 3)
        for i in 0..<10 { cache.put("r\(i)", .webhook(nil)) }
        #expect(cache.count == 3)
        #expect(cache.get("r9") == .webhook(nil) && cache.get("r0") == nil)
        let expiring = WebhookTargetCache(capacity: 3, ttlS: 0)
        expiring.put("r1", .missing)
        #expect(expiring.get("r1") == nil)
    }
}
