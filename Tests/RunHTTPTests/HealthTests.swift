import Hummingbird
import HummingbirdTesting
import Prometheus
import RunContract
import RunStore
import RunTestSupport
import Testing

@testable import RunHTTP
@testable import RunWorker

/// Liveness, readiness (each check, its order, the reason) and the metrics export.
@Suite struct HealthTests {
    /// `/healthz` answers 200 `{"status": "ok"}` whatever the worker's state.
    @Test func healthIsAlwaysOK() async throws {
        let server = try TestServer()
        try await server.test { client in
            let answer = try await client.get("/healthz")
            #expect(answer.status == .ok)
            #expect(answer.headers[.contentType] == "application/json")
            #expect(try answer.json() == ["status": "ok"])
        }
    }

    /// A worker not connected to the broker is not ready: 503, the broker's check first in
    /// `reason`, every check's state in `checks`, no webhooks key while webhooks are off.
    @Test func notConnectedIsNotReady() async throws {
        let server = try TestServer()
        try await server.test { client in
            let answer = try await client.get("/readyz")
            #expect(answer.status == .serviceUnavailable)
            let body = try answer.json()
            #expect(body["ready"] == false)
            #expect(body["reason"] == "broker: not connected to the broker")
            #expect(body["checks"] == [
                "broker": "not connected to the broker", "store": "ok", "partitions": "partitions not claimed yet",
            ])
            #expect(body["webhooks"] == nil)
        }
    }

    /// Connected, partitions claimed and the store answering: 200, every check `ok`, no reason.
    @Test func readyWhenEveryCheckPasses() async throws {
        let server = try TestServer()
        server.setStatus {
            $0.connected = true
            $0.ready = true
        }
        try await server.test { client in
            let answer = try await client.get("/readyz")
            #expect(answer.status == .ok)
            let body = try answer.json()
            #expect(body == ["ready": true, "checks": ["broker": "ok", "store": "ok", "partitions": "ok"]])
        }
    }

    /// Each failing check, alone, makes the worker unready with its own text; with several, the
    /// reason names the first in the order broker, store, partitions.
    @Test func eachCheckAndTheirOrder() async throws {
        let server = try TestServer()
        let cases: [(String, (inout WorkerStatus) -> Void)] = [
            ("broker: publishing blocked by the broker: low on disk", {
                $0.connected = true
                $0.ready = true
                $0.brokerBlocked = "low on disk"
            }),
            ("store: cannot write: disk full", {
                $0.connected = true
                $0.ready = true
                $0.brokerBlocked = nil
                $0.storeError = "disk full"
            }),
            ("partitions: partitions not claimed yet", {
                $0.storeError = nil
                $0.ready = false
            }),
            ("broker: not connected to the broker", {
                $0.connected = false
                $0.storeError = "disk full"
            }),
        ]
        for (reason, change) in cases {
            server.setStatus(change)
            try await server.test { client in
                let answer = try await client.get("/readyz")
                #expect(answer.status == .serviceUnavailable, "\(reason)")
                #expect(try answer.json()["reason"]?.stringValue == reason)
            }
        }
    }

    /// A store that does not answer reads makes the worker unready, with the store's error.
    @Test func storeDownIsNotReady() async throws {
        let store = ControllableStore()
        let server = try TestServer(store: store)
        server.setStatus {
            $0.connected = true
            $0.ready = true
        }
        store.fail()
        try await server.test { client in
            let answer = try await client.get("/readyz")
            #expect(answer.status == .serviceUnavailable)
            let body = try answer.json()
            #expect(body["checks"]?["store"] == "the store did not answer: store unavailable: connection refused")
            #expect(body["reason"] == "store: the store did not answer: store unavailable: connection refused")
            // Liveness does not read the store.
            #expect(try await client.get("/healthz").status == .ok)
        }
    }

    /// A store read that hangs (and ignores cancellation) makes /readyz answer 503 at its 2 s
    /// bound, not when the read ends: the answer does not wait for the stuck read. (The time
    /// limit turns the old behaviour, an answer only after `release()`, into a failure.)
    @Test(.timeLimit(.minutes(1))) func stuckStoreReadAnswersAtTheBound() async throws {
        let store = ControllableStore()
        let server = try TestServer(store: store)
        server.setStatus {
            $0.connected = true
            $0.ready = true
        }
        store.stall()
        defer { store.release() }
        try await server.test { client in
            let answer = try await client.get("/readyz")
            #expect(answer.status == .serviceUnavailable)
            #expect(try answer.json()["checks"]?["store"] == "the store did not answer within 2 s")
        }
    }

    /// The webhook dispatcher's counters are shown, and its being disconnected does not make
    /// the worker unready.
    @Test func webhooksAreInformational() async throws {
        let server = try TestServer()
        server.setStatus {
            $0.connected = true
            $0.ready = true
        }
        server.shared.updateWebhooks {
            $0.connected = false
            $0.delivered = 7
            $0.failed = 2
        }
        try await server.test { client in
            let answer = try await client.get("/readyz")
            #expect(answer.status == .ok)
            #expect(try answer.json()["webhooks"] == [
                "connected": false, "delivered": 7, "retried": 0, "failed": 2, "skipped": 0,
            ])
        }
    }

    /// `/metrics` exports the registry the worker's metrics write to, in Prometheus' text format.
    @Test func metricsExportTheRegistry() async throws {
        let server = try TestServer()
        server.registry.makeCounter(descriptor: MetricNameDescriptor(
            namespace: "runworker", metricName: "test_things", unitName: "total", helpText: "Things counted by the test.")
        ).increment(by: Int64(3))
        server.registry.makeGauge(descriptor: MetricNameDescriptor(
            namespace: "runworker", metricName: "test_level", unitName: "", helpText: "")
        ).set(to: 1.5)
        try await server.test { client in
            let answer = try await client.get("/metrics")
            #expect(answer.status == .ok)
            #expect(answer.headers[.contentType] == "text/plain; version=0.0.4; charset=utf-8")
            let lines = answer.text.split(separator: "\n")
            #expect(lines.contains("runworker_test_things_total 3"), "\(answer.text)")
            #expect(lines.contains("runworker_test_level 1.5"), "\(answer.text)")
            #expect(lines.contains("# TYPE runworker_test_things_total counter"), "\(answer.text)")
            #expect(lines.contains("# HELP runworker_test_things_total Things counted by the test."), "\(answer.text)")
        }
    }
}
