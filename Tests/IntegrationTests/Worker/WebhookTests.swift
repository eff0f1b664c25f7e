import AMQPClient
import Foundation
import RunContract
import RunWorkerTestKit
import RunTestSupport
import Testing

@testable import RunWorker

#if canImport(Glibc)
import Glibc
#endif

/// Completion webhooks end to end: a real `runworker` with webhooks enabled POSTs to a real
/// HTTP receiver (Python's http.server, in a process of its own), which checks every
/// signature with the shared secret independently of the worker's code.
@Suite(.serialized, .requiresBroker, .ownThread) struct WebhookTests {
    static let secret = "integration-webhook-secret-42"

    /// Environment of a worker with webhooks on, quick retries, and loopback targets allowed
    /// (the receiver listens on 127.0.0.1) unless told otherwise.
    static func env(_ extra: [String: String] = [:]) -> [String: String] {
        var env = [
            "RUNWORKER_WEBHOOKS_ENABLED": "true", "RUNWORKER_WEBHOOK_SECRET": secret,
            "RUNWORKER_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true", "RUNWORKER_WEBHOOKS_INITIAL_BACKOFF_S": "0.2",
            "RUNWORKER_WEBHOOKS_MAX_BACKOFF_S": "1", "RUNWORKER_WEBHOOKS_TIMEOUT_S": "3",
        ]
        for (k, v) in extra { env[k] = v }
        return env
    }

    /// The delay queues the retries of `env()` use (base delays 0.2, 0.4, 0.8, 1 s), and a few more.
    static func cleanUp(_ client: ContractClient) {
        client.deleteTopology()
        for ms in [100, 200, 400, 800, 1000] {
            if let ch = try? client.conn.openChannel() {
                _ = try? client.conn.queueDelete(channel: ch, queue: client.topology.webhookDelayQueue(milliseconds: ms))
                try? client.conn.closeChannel(ch)
            }
        }
    }

    static func metric(_ worker: WorkerProcess, _ name: String, _ labels: [String] = []) throws -> Double? {
        let base = try #require(worker.httpBase)
        let text = try HTTPProbe.request(base, "/metrics").text
        return text.split(separator: "\n").first { line in
            (labels.isEmpty && line.hasPrefix(name + " ")) || (line.hasPrefix(name + "{") && labels.allSatisfy { line.contains($0) })
        }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    /// The published events by message id (`run:seq`), as bytes.
    static func published(_ client: ContractClient) -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        for e in client.events { if let id = e.properties.messageID { out[id] = e.body } }
        return out
    }

    /// A run with config.webhook gets exactly its terminal event; an `events` filter picks its
    /// types; a run without one gets nothing (no default_url). Each POST is the published
    /// event, byte for byte, with the headers and a signature the receiver verifies.
    @Test func deliversMatchingEventsSigned() throws {
        let receiver = try WebhookReceiver(secret: Self.secret)
        let prefix = uniquePrefix("hook")
        let client = try ContractClient(prefix: prefix)
        defer { Self.cleanUp(client) }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix), extraEnv: Self.env())
        try worker.waitReady()
        try worker.waitForStatus("webhook dispatcher connected") { $0.webhooks?.connected == true }

        var r = try client.call(["command": "start", "run_id": "r1", "config": ["webhook": ["url": .string(receiver.url("/r1"))]]], id: "a1")
        #expect(r.ok && r.run?.config.webhook?.url == receiver.url("/r1"))
        r = try client.call(["command": "require_action", "run_id": "r1",
                             "action": ["id": "t1", "type": "tool_call", "tool": "calc", "args": ["x": 1]]], id: "a2")
        r = try client.call(["command": "complete_action", "run_id": "r1", "action_id": "t1", "result": 2], id: "a3")
        r = try client.call(["command": "complete", "run_id": "r1", "result": ["answer": "é ✓"]], id: "a4")
        #expect(r.run?.status == .completed)

        r = try client.call(["command": "start", "run_id": "r2", "config": ["webhook": [
            "url": .string(receiver.url("/r2")), "events": ["started", "action_required"]]]], id: "b1")
        #expect(r.ok)
        _ = try client.call(["command": "require_action", "run_id": "r2",
                             "action": ["id": "m1", "type": "send_message", "recipient": "bob", "content": "hi"]], id: "b2")
        _ = try client.call(["command": "cancel", "run_id": "r2", "reason": "enough"], id: "b3")

        _ = try client.call(["command": "start", "run_id": "r3"], id: "c1")
        _ = try client.call(["command": "fail", "run_id": "r3", "error": ["message": "boom"]], id: "c2")
        // A bad webhook is refused like any invalid config.
        let bad = try client.call(["command": "start", "run_id": "r4", "config": ["webhook": ["url": "ftp://x.example/"]]], id: "d1")
        #expect(!bad.ok && bad.error?.code == .validationError)

        let requests = try receiver.waitForRequests(3)
        try client.waitForEvents { $0.count >= 13 }
        // A sentinel run's webhook: its terminal event entered the webhook queue after every event
        // above, so once it is POSTed and counted, the dispatcher has handled all of them.
        _ = try client.call(["command": "start", "run_id": "r5", "config": ["webhook": ["url": .string(receiver.url("/sentinel"))]]], id: "e1")
        _ = try client.call(["command": "complete", "run_id": "r5"], id: "e2")
        try waitUntil("the sentinel's POST", timeout: 30) { receiver.requests.contains { $0.path == "/sentinel" } }
        try worker.waitForStatus("the sentinel's delivery counted") { ($0.webhooks?.delivered ?? 0) >= 4 }
        #expect(receiver.requests.filter { $0.path != "/sentinel" }.count == 3, "\(receiver.requests.map(\.eventID))")
        let events = Self.published(client)
        #expect(Set(requests.map(\.eventID)) == ["r1:5", "r2:2", "r2:3"])
        for q in requests {
            #expect(q.verified, "signature of \(q.eventID)")
            #expect(q.status == 200)
            #expect(q.contentType == "application/json")
            #expect(q.attempt == "1")
            #expect(q.body == events[q.eventID], "\(q.eventID): the POSTed body is the published event")
            #expect(abs((Double(q.timestamp) ?? 0) - Date().timeIntervalSince1970) < 120)
        }
        #expect(requests.first { $0.eventID == "r1:5" }?.path == "/r1")
        let r2 = requests.filter { $0.path == "/r2" }.compactMap { try? RunEvent.decode($0.body) }.map(\.type)
        #expect(Set(r2) == [.started, .actionRequired])
        #expect(worker.status?.webhooks?.delivered == 4, "three and the sentinel's")
        #expect(try Self.metric(worker, "runworker_webhook_delivered_total") == 4)
        #expect(worker.terminate() == 0)
    }

    /// A receiver that answers 500 three times, then 200: the event is delivered on the fourth
    /// attempt, after backoff, with the same event id and body each time.
    @Test func retriesUntilTheReceiverRecovers() throws {
        let receiver = try WebhookReceiver(secret: Self.secret, failFirst: 3)
        let prefix = uniquePrefix("hookretry")
        let client = try ContractClient(prefix: prefix)
        defer { Self.cleanUp(client) }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix), extraEnv: Self.env())
        try worker.waitReady()
        _ = try client.call(["command": "start", "run_id": "r1", "config": ["webhook": ["url": .string(receiver.url("/hook"))]]], id: "a1")
        _ = try client.call(["command": "complete", "run_id": "r1"], id: "a2")
        let requests = try receiver.waitForRequests(4, timeout: 30)
        #expect(requests.map(\.status) == [500, 500, 500, 200])
        #expect(requests.map(\.attempt) == ["1", "2", "3", "4"])
        #expect(Set(requests.map(\.eventID)) == ["r1:3"])
        #expect(Set(requests.map(\.body)).count == 1 && requests.allSatisfy(\.verified))
        // Backoff 0.2, 0.4, 0.8 s (shortened by at most 20%).
        for (i, minimum) in [0.16, 0.32, 0.64].enumerated() {
            #expect(requests[i + 1].at - requests[i].at >= minimum - 0.05, "gap \(i + 1)")
        }
        let status = try worker.waitForStatus("delivered after retries") { $0.webhooks?.delivered == 1 }
        #expect(status.webhooks?.retried == 3 && status.webhooks?.failed == 0)
        #expect(try Self.metric(worker, "runworker_webhook_retries_total") == 3)
        #expect(worker.terminate() == 0)
        // Nothing can come once the worker has exited: exactly four POSTs, none after the 200.
        #expect(receiver.requests.count == 4)
    }

    /// A dead endpoint: max_attempts POSTs fail, then the worker gives up: the delivery is
    /// acked (nothing left in the queues), logged, and counted as failed.
    @Test func givesUpOnADeadEndpoint() throws {
        let port = try WebhookReceiver.freePort()
        let prefix = uniquePrefix("hookdead")
        let client = try ContractClient(prefix: prefix)
        defer { Self.cleanUp(client) }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix), extraEnv: Self.env([
            "RUNWORKER_WEBHOOKS_MAX_ATTEMPTS": "3", "RUNWORKER_WEBHOOKS_INITIAL_BACKOFF_S": "0.1",
        ]))
        try worker.waitReady()
        _ = try client.call(["command": "start", "run_id": "r1", "config": ["webhook": ["url": .string("http://127.0.0.1:\(port)/dead")]]], id: "a1")
        _ = try client.call(["command": "fail", "run_id": "r1", "error": ["message": "x"]], id: "a2")
        let status = try worker.waitForStatus("given up", timeout: 30) { $0.webhooks?.failed == 1 }
        #expect(status.webhooks?.retried == 2 && status.webhooks?.delivered == 0)
        #expect(try Self.metric(worker, "runworker_webhook_failed_total", [#"reason="max_attempts""#]) == 1)
        #expect(worker.log.contains("webhook given up"))
        let ch = try client.conn.openChannel()
        let queue = try client.conn.queueDeclare(channel: ch, name: client.topology.webhooksQueue, passive: true)
        #expect(queue.messageCount == 0)
        #expect(worker.terminate() == 0)
    }

    /// With allow_private_targets false (the default), a loopback URL is never POSTed to: the
    /// event is given up at once, with the reason in the metric.
    @Test func refusesLoopbackTargets() throws {
        let receiver = try WebhookReceiver(secret: Self.secret)
        let prefix = uniquePrefix("hookpriv")
        let client = try ContractClient(prefix: prefix)
        defer { Self.cleanUp(client) }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix), extraEnv: Self.env([
            "RUNWORKER_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "false",
        ]))
        try worker.waitReady()
        for (i, url) in [receiver.url("/a"), "http://localhost:\(receiver.port)/b", "http://[::1]:\(receiver.port)/c"].enumerated() {
            let r = try client.call(["command": "start", "run_id": .string("r\(i)"), "config": ["webhook": ["url": .string(url)]]], id: "s\(i)")
            #expect(r.ok)
            _ = try client.call(["command": "complete", "run_id": .string("r\(i)")], id: "c\(i)")
        }
        let status = try worker.waitForStatus("refused", timeout: 20) { $0.webhooks?.failed == 3 }
        #expect(status.webhooks?.retried == 0)
        #expect(try Self.metric(worker, "runworker_webhook_failed_total", [#"reason="private_target""#]) == 3)
        #expect(worker.log.contains("private target"))
        #expect(worker.terminate() == 0)
        // Nothing can come once the worker has exited: not one POST to a loopback target.
        #expect(receiver.requests.isEmpty)
    }

    /// At least once: a worker killed while its POST is under way never acked the event, so a
    /// new worker delivers it again (the receiver sees the same event id twice).
    @Test func redeliversAfterAWorkerDiesMidPOST() throws {
        let receiver = try WebhookReceiver(secret: Self.secret, hangS: 60, hangFirst: 1)
        let prefix = uniquePrefix("hookkill")
        let client = try ContractClient(prefix: prefix)
        defer { Self.cleanUp(client) }
        let store = tempStore(prefix)
        let env = Self.env(["RUNWORKER_WEBHOOKS_TIMEOUT_S": "30"]).merging(WorkerProcess.takeoverEnvironment) { $1 }
        let first = try WorkerProcess(prefix: prefix, store: store, extraEnv: env)
        try first.waitReady()
        _ = try client.call(["command": "start", "run_id": "r1", "config": ["webhook": ["url": .string(receiver.url("/k"))]]], id: "a1")
        _ = try client.call(["command": "complete", "run_id": "r1"], id: "a2")
        _ = try receiver.waitForRequests(1)  // held by the receiver
        first.kill()
        let second = try WorkerProcess(prefix: prefix, store: store, extraEnv: env)
        try second.waitReady()
        let requests = try receiver.waitForRequests(2, timeout: 30)
        #expect(requests.map(\.eventID) == ["r1:3", "r1:3"])
        #expect(requests.allSatisfy(\.verified) && requests[0].body == requests[1].body)
        try second.waitForStatus("delivered by the second worker") { $0.webhooks?.delivered == 1 }
        #expect(second.terminate() == 0)
    }

    /// An endpoint that hangs (every POST waits out timeout_s) does not slow the commands:
    /// the run's own commands, each of which produces a webhook event, are answered at their
    /// usual pace while the POSTs wait.
    @Test func commandsKeepTheirPaceWhileTheEndpointHangs() throws {
        let receiver = try WebhookReceiver(secret: Self.secret, hangS: 30)
        let prefix = uniquePrefix("hookhang")
        let client = try ContractClient(prefix: prefix)
        defer { Self.cleanUp(client) }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix), extraEnv: Self.env([
            "RUNWORKER_WEBHOOKS_TIMEOUT_S": "3", "RUNWORKER_WEBHOOKS_CONCURRENCY": "2",
        ]))
        try worker.waitReady()
        let all: JSONValue = .array(EventType.allCases.map { .string($0.rawValue) })
        _ = try client.call(["command": "start", "run_id": "slow", "config": ["webhook": ["url": .string(receiver.url("/slow")), "events": all]]], id: "s0")
        let held = try receiver.waitForRequests(1)[0].at  // the endpoint is now holding a POST
        var latencies: [Double] = []
        for i in 1...15 {
            let started = Date()
            let r = try client.call(["command": "require_action", "run_id": "slow",
                                     "action": ["id": .string("a\(i)"), "type": "system_action", "action": "wait"]], id: "ra\(i)")
            _ = try client.call(["command": "complete_action", "run_id": "slow", "action_id": .string("a\(i)")], id: "ca\(i)")
            latencies.append(Date().timeIntervalSince(started))
            #expect(r.ok)
        }
        let r = try client.call(["command": "complete", "run_id": "slow"], id: "done")
        #expect(r.run?.status == .completed && r.run?.version == 33)
        // Thirty commands in the time a single POST is held (3 s), each well under a second.
        #expect(latencies.reduce(0, +) < 6, "\(latencies)")
        #expect((latencies.max() ?? 0) < 2, "\(latencies)")
        // Only `concurrency` (2) POSTs at a time reach the hanging endpoint, each held until
        // the worker's timeout (3 s) frees its slot.
        let elapsed = Date().timeIntervalSince1970 - held
        #expect(receiver.requests.count <= 2 * (Int(elapsed / 3) + 1), "\(receiver.requests.count) in \(elapsed) s")
        #expect(worker.terminate(grace: 20) == 0)
    }
}

/// A webhook receiver in a process of its own: Python's ThreadingHTTPServer on 127.0.0.1 and
/// a free port. It answers 500 to the first `failFirst` POSTs and 200 after; with `hangS` it
/// holds every POST that long before answering. Each POST is recorded (one JSON line, written
/// when it arrives) with its headers, its body (base64) and whether its signature verifies
/// with `secret` (Python's hmac, timestamps within 5 minutes).
final class WebhookReceiver {
    struct Request {
        var path: String
        var status: Int
        var verified: Bool
        var eventID: String
        var attempt: String
        var contentType: String
        var timestamp: String
        var signature: String
        var body: [UInt8]
        var at: Double
    }

    static let script = #"""
        import base64, hashlib, hmac, json, os, sys, threading, time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        port_file, log_file, secret = sys.argv[1], sys.argv[2], sys.argv[3].encode()
        fail_first, hang_s, hang_first = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
        lock = threading.Lock()
        count = [0]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ts = self.headers.get("Runworker-Timestamp", "")
                signature = self.headers.get("Runworker-Signature", "")
                expected = "v1=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
                fresh = ts.isdigit() and abs(time.time() - int(ts)) < 300
                with lock:
                    count[0] += 1
                    status = 500 if count[0] <= fail_first else 200
                    hang = hang_s > 0 and (hang_first < 0 or count[0] <= hang_first)
                    record = {
                        "path": self.path, "status": status, "at": time.time(),
                        "verified": bool(fresh and hmac.compare_digest(signature, expected)),
                        "event_id": self.headers.get("Runworker-Event-Id", ""),
                        "attempt": self.headers.get("Runworker-Attempt", ""),
                        "content_type": self.headers.get("Content-Type", ""),
                        "timestamp": ts, "signature": signature,
                        "body": base64.b64encode(body).decode(),
                    }
                    with open(log_file, "a") as f:
                        f.write(json.dumps(record) + "\n")
                if hang:
                    time.sleep(hang_s)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.daemon_threads = True
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        with open(port_file + ".tmp", "w") as f:
            f.write(str(server.server_address[1]))
        os.rename(port_file + ".tmp", port_file)
        server.serve_forever()
        """#

    let process = Process()
    let port: Int
    private let base: String

    /// - hangFirst: how many POSTs hang `hangS` (the first ones); nil: all.
    init(secret: String, failFirst: Int = 0, hangS: Double = 0, hangFirst: Int? = nil) throws {
        let base = NSTemporaryDirectory() + "webhook-receiver-" + UUID().uuidString.prefix(8).lowercased()
        self.base = base
        try Self.script.write(toFile: base + ".py", atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: base + ".jsonl", contents: Data())
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", base + ".py", base + ".port", base + ".jsonl", secret, String(failFirst), String(hangS),
                             String(hangFirst ?? -1)]
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        var port: Int?
        try waitUntil("the webhook receiver did not start", timeout: 20) {
            port = (try? String(contentsOfFile: base + ".port", encoding: .utf8)).flatMap { Int($0) }
            return port != nil
        }
        self.port = port!
    }

    func url(_ path: String) -> String { "http://127.0.0.1:\(port)\(path)" }

    var requests: [Request] {
        let text = (try? String(contentsOfFile: base + ".jsonl", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            guard let j = try? JSONValue.parse(String(line)) else { return nil }
            return Request(
                path: j["path"]?.stringValue ?? "", status: Int(j["status"]?.intValue ?? 0), verified: j["verified"]?.boolValue ?? false,
                eventID: j["event_id"]?.stringValue ?? "", attempt: j["attempt"]?.stringValue ?? "",
                contentType: j["content_type"]?.stringValue ?? "", timestamp: j["timestamp"]?.stringValue ?? "",
                signature: j["signature"]?.stringValue ?? "",
                body: Array(Data(base64Encoded: j["body"]?.stringValue ?? "") ?? Data()), at: j["at"]?.doubleValue ?? 0)
        }
    }

    /// Waits until at least `count` POSTs arrived; returns them.
    func waitForRequests(_ count: Int, timeout: Double = 20) throws -> [Request] {
        var seen: [Request] = []
        try waitUntil("the receiver got fewer than \(count) POSTs", timeout: timeout, explain: { "\(seen.count): \(seen.map(\.eventID))" }) {
            seen = requests
            return seen.count >= count
        }
        return seen
    }

    /// A TCP port nothing listens on (bound, then closed).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw TestKitError(.exited, "cannot find a free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitForExit(timeout: 5)
        }
        for suffix in [".py", ".port", ".jsonl"] { try? FileManager.default.removeItem(atPath: base + suffix) }
    }
}
