import Foundation
import RunContract
import RunWorkerTestKit
import Synchronization
import RunTestSupport
import Testing

/// The worker's own HTTP side against a real worker process, broker and store: health,
/// metrics, the runs API with history, the live stream, bad input, the token, retention.
@Suite(.serialized, .requiresBroker, .ownThread) struct HTTPTests {
    static func get(_ base: String, _ path: String, headers: [String: String] = [:], timeout: Double = 10) throws -> HTTPProbe.Answer {
        try HTTPProbe.request(base, path, headers: headers, timeout: timeout)
    }

    static func json(_ answer: HTTPProbe.Answer) throws -> JSONValue { try JSONValue.parse(answer.body) }

    /// Three runs go through their lives while an event stream is open: the stream shows them
    /// live, the API answers snapshots, history (the same events as published, in seq order),
    /// pages, filters and counts, the metrics count what happened, and bad input gets a 4xx
    /// with a contract code, on either store.
    @Test(arguments: StoreKind.durableAvailable) func runsAPIAndStream(kind: StoreKind) throws {
        let prefix = uniquePrefix("http")
        let (store, cleanUp) = kind.workerStore(prefix)
        defer { cleanUp() }
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: store)
        defer { _ = worker.terminate() }
        try worker.waitReady()
        let base = try #require(worker.httpBase, "the status file names the HTTP address")

        #expect(try Self.get(base, "/healthz").status == 200)
        // The loopback listener has no token: a name other than a loopback one (a DNS name
        // rebound to 127.0.0.1 by a web page) is refused with a JSON error.
        let forged = try Self.get(base, "/v1/runs", headers: ["Host": "attacker.example:80"])
        #expect(forged.status == 421, "\(forged.text)")
        #expect(try Self.json(forged)["error"]?["code"] == "misdirected_request")
        #expect(try Self.get(base, "/healthz", headers: ["Host": "localhost"]).status == 200)
        let ready = try Self.get(base, "/readyz")
        let readyBody = try Self.json(ready)
        #expect(ready.status == 200 && readyBody["ready"] == .bool(true), "\(ready.text)")

        func call(_ command: JSONValue, _ id: String) throws -> CommandReply { try client.call(command, id: id) }
        var streamed: [String] = []
        var dataLines: [JSONValue] = []
        let sawAll = try HTTPProbe.stream(base, "/v1/events/stream?run_id=r-a,r-b", timeout: 30, onOpen: {
            // The stream consumes from the broker before it answers: nothing published from
            // now on is missed.
            _ = try call(["command": "start", "run_id": "r-a", "agent_id": "agent-x", "input": ["q": 1]], "a1")
            _ = try call(["command": "require_action", "run_id": "r-a",
                          "action": ["id": "act-1", "type": "tool_call", "tool": "calc", "args": ["x": 2]]], "a2")
            _ = try call(["command": "complete_action", "run_id": "r-a", "action_id": "act-1", "result": 4], "a3")
            _ = try call(["command": "complete", "run_id": "r-a", "result": "4"], "a4")
            _ = try call(["command": "start", "run_id": "r-b", "agent_id": "agent-y"], "b1")
            _ = try call(["command": "fail", "run_id": "r-b", "error": ["message": "boom", "code": "tool_error"]], "b2")
            _ = try call(["command": "create", "run_id": "r-c", "agent_id": "agent-x"], "c1")
            _ = try call(["command": "cancel", "run_id": "r-c"], "c2")
            let refused = try call(["command": "complete", "run_id": "r-c"], "c3")
            #expect(refused.error?.code == .invalidTransition)
        }) { line in
            if line.hasPrefix("event: ") { streamed.append(String(line.dropFirst(7))) }
            if line.hasPrefix("data: ") { dataLines.append(try JSONValue.parse(Array(line.dropFirst(6).utf8))) }
            return streamed.filter { $0 != "command_rejected" }.count >= 8
        }
        #expect(sawAll, "streamed: \(streamed)")
        #expect(streamed == ["created", "started", "action_required", "action_completed", "completed", "created", "started", "failed"])
        #expect(!dataLines.contains { $0["run_id"] == "r-c" }, "the run_id filter keeps r-c out")

        // The snapshot, as replies carry it.
        let a = try Self.get(base, "/v1/runs/r-a")
        #expect(a.status == 200)
        let snapshot = try Self.json(a)
        #expect(snapshot["status"] == "completed" && snapshot["version"] == .int(5) && snapshot["agent_id"] == "agent-x")

        // History: the published events, in seq order, the same bodies the subscriber saw.
        try client.waitForEvents(timeout: 20) { _ in client.runEvents.count >= 10 }
        let history = try Self.json(try Self.get(base, "/v1/runs/r-a/events"))
        let events = try #require(history["events"]?.arrayValue)
        #expect(events.map { $0["type"]?.stringValue ?? "" } == ["created", "started", "action_required", "action_completed", "completed"])
        #expect(events.map { $0["seq"]?.intValue ?? 0 } == [1, 2, 3, 4, 5])
        let published = client.runEvents.filter { $0.runID == "r-a" }.sorted { $0.seq < $1.seq }
        #expect(try events.map { try RunEvent.decode($0.serialized()) } == published)
        let after = try Self.json(try Self.get(base, "/v1/runs/r-a/events?after_seq=3"))
        #expect(after["events"]?.arrayValue?.map { $0["seq"]?.intValue ?? 0 } == [4, 5])
        let failed = try Self.json(try Self.get(base, "/v1/runs/r-b/events"))
        #expect(failed["events"]?.arrayValue?.last?["error"]?["message"] == "boom")

        // Lists: newest first, filters, cursor pages.
        let all = try Self.json(try Self.get(base, "/v1/runs"))
        #expect(all["runs"]?.arrayValue?.map { $0["run_id"]?.stringValue ?? "" } == ["r-c", "r-b", "r-a"])
        let done = try Self.json(try Self.get(base, "/v1/runs?status=completed,failed"))
        #expect(done["runs"]?.arrayValue?.map { $0["run_id"]?.stringValue ?? "" } == ["r-b", "r-a"])
        let agent = try Self.json(try Self.get(base, "/v1/runs?agent_id=agent-x&status=cancelled"))
        #expect(agent["runs"]?.arrayValue?.map { $0["run_id"]?.stringValue ?? "" } == ["r-c"])
        var paged: [String] = []
        var cursor: String? = nil
        repeat {
            let page = try Self.json(try Self.get(base, "/v1/runs?limit=1" + (cursor.map { "&cursor=\($0)" } ?? "")))
            paged += page["runs"]?.arrayValue?.map { $0["run_id"]?.stringValue ?? "" } ?? []
            cursor = page["next_cursor"]?.stringValue
        } while cursor != nil && paged.count < 10
        #expect(paged == ["r-c", "r-b", "r-a"])
        let counts = try Self.json(try Self.get(base, "/v1/counts"))
        #expect(counts["total"] == .int(3) && counts["runs_by_status"]?["cancelled"] == .int(1))

        // Bad input: a 4xx with a contract code, and the worker keeps serving.
        for (path, status, code) in [
            ("/v1/runs?limit=0", 400, "validation_error"), ("/v1/runs?limit=abc", 400, "validation_error"),
            ("/v1/runs?status=bogus", 400, "validation_error"), ("/v1/runs?cursor=%%%", 400, "validation_error"),
            ("/v1/runs?created_after=yesterday", 400, "validation_error"),
            ("/v1/runs/" + String(repeating: "x", count: 300), 400, "payload_too_large"),
            ("/v1/runs/nobody", 404, "run_not_found"), ("/v1/runs/nobody/events", 404, "run_not_found"),
            ("/v1/runs/r-a/events?after_seq=-1", 400, "validation_error"),
            ("/v1/events/stream?type=bogus", 400, "validation_error"), ("/nope", 404, "not_found"),
            ("/v1/runs?agent_id=" + String(repeating: "a", count: 5000), 414, "payload_too_large"),
        ] {
            let answer = try Self.get(base, path)
            #expect(answer.status == status, "\(path): \(answer.status) \(answer.text)")
            #expect((try? Self.json(answer))?["error"]?["code"]?.stringValue == code, "\(path): \(answer.text)")
        }
        let post = try HTTPProbe.request(base, "/v1/runs", method: "POST")
        let postBody = try Self.json(post)
        #expect(post.status == 405 && postBody["error"]?["code"] == "method_not_allowed")

        // Metrics: what happened, counted once, in Prometheus' text format.
        let metrics = try Self.get(base, "/metrics")
        #expect(metrics.status == 200 && metrics.headers["content-type"]?.hasPrefix("text/plain") == true)
        func value(_ name: String, _ labels: [String]) -> Double? {
            metrics.text.split(separator: "\n").first { line in
                line.hasPrefix(name + "{") && labels.allSatisfy { line.contains($0) } || (labels.isEmpty && line.hasPrefix(name + " "))
            }.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        #expect(value("runworker_commands_total", [#"command="start""#, #"outcome="applied""#]) == 2, "\(metrics.text)")
        #expect(value("runworker_commands_total", [#"command="complete""#, #"outcome="refused""#]) == 1)
        #expect(value("runworker_refusals_total", [#"code="invalid_transition""#]) == 1)
        #expect(value("runworker_runs_finished_total", [#"status="completed""#, #"stop_reason="completed""#]) == 1)
        #expect(value("runworker_runs_finished_total", [#"status="failed""#, #"stop_reason="error""#]) == 1)
        #expect(value("runworker_runs_finished_total", [#"status="cancelled""#]) == 1)
        #expect(value("runworker_action_duration_seconds_count", [#"agent_id="agent-x""#, #"action_type="tool_call""#]) == 1)
        #expect(value("runworker_run_duration_seconds_count", [#"agent_id="agent-x""#]) == 2)
        #expect((value("runworker_batch_size_count", []) ?? 0) >= 1)
        #expect((value("runworker_commit_seconds_count", []) ?? 0) >= 1)
        #expect(value("runworker_partitions_owned", []) == 4)
        #expect(worker.terminate() == 0)
    }

    /// Beyond loopback the worker refuses to start without a token; with one, every endpoint
    /// but health and the board asks for it (header, or `access_token` for the stream).
    @Test func tokenGuardsTheAPI() throws {
        let prefix = uniquePrefix("httptoken")
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }

        let refused = try WorkerProcess(prefix: prefix, store: store, extraEnv: ["RUNWORKER_HTTP_ADDRESS": "0.0.0.0:0"])
        try waitUntil("the worker refuses a non-loopback address without a token", timeout: 30, explain: { refused.log }) {
            !refused.isRunning
        }
        #expect(refused.process.terminationStatus != 0 && refused.log.contains("http_token"), "\(refused.log)")

        let token = "s3cret-token-of-24-chars"
        let worker = try WorkerProcess(
            prefix: prefix, store: store, extraEnv: ["RUNWORKER_HTTP_ADDRESS": "0.0.0.0:0", "RUNWORKER_HTTP_TOKEN": token])
        defer { _ = worker.terminate() }
        try worker.waitReady()
        let address = try #require(worker.status?.httpAddress)
        let base = "http://127.0.0.1:" + (address.split(separator: ":").last.map(String.init) ?? "")
        #expect(try Self.get(base, "/healthz").status == 200)
        #expect(try Self.get(base, "/readyz").status == 200)
        #expect(try Self.get(base, "/").status == 200)
        let missing = try Self.get(base, "/v1/runs")
        #expect(missing.status == 401 && missing.headers["www-authenticate"] == "Bearer")
        let missingBody = try Self.json(missing)
        #expect(missingBody["error"]?["code"] == "unauthorized")
        #expect(try Self.get(base, "/metrics").status == 401)
        #expect(try Self.get(base, "/v1/runs", headers: ["Authorization": "Bearer wrong-token-of-24-chars"]).status == 401)
        #expect(try Self.get(base, "/v1/runs", headers: ["Authorization": "Bearer \(token)"]).status == 200)
        #expect(try Self.get(base, "/metrics", headers: ["Authorization": "Bearer \(token)"]).status == 200)
        #expect(try Self.get(base, "/v1/counts?access_token=\(token)").status == 401, "the query token is for the stream only")
        #expect(try HTTPProbe.stream(base, "/v1/events/stream?access_token=\(token)", timeout: 10) { $0 == ": connected" })
        #expect(try Self.get(base, "/v1/events/stream").status == 401)
        // With a token, another host name is not refused: the token protects.
        #expect(try Self.get(base, "/v1/runs", headers: ["Authorization": "Bearer \(token)", "Host": "runs.example"]).status == 200)
        #expect(worker.terminate() == 0)
    }

    /// The value of a metric line (`name{labels} value`) in a /metrics answer.
    static func metric(_ text: String, _ line: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(line + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    /// Streams are capped: with `http.max_streams` open, one more is answered 503
    /// `too_many_streams` with Retry-After while /healthz still answers, and a slot comes back
    /// once a client leaves; with a token, one more than `http.max_streams_per_token` is
    /// answered 429.
    @Test func streamBeyondTheCapIsRefused() throws {
        let prefix = uniquePrefix("httpcap")
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let client = try ContractClient(prefix: prefix, bind: "none")
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: store, extraEnv: ["RUNWORKER_HTTP_MAX_STREAMS": "3"])
        defer { _ = worker.terminate() }
        try worker.waitReady()
        let base = try #require(worker.httpBase)
        var open = try (0..<3).map { _ in try HTTPProbe.StalledStream(base, "/v1/events/stream") }
        #expect(open.map(\.status) == [200, 200, 200], "\(open.map(\.head))")
        let refused = try Self.get(base, "/v1/events/stream")
        #expect(refused.status == 503, "\(refused.text)")
        #expect(try Self.json(refused)["error"]?["code"] == "too_many_streams")
        #expect(refused.headers["retry-after"] == "10")
        #expect(try Self.get(base, "/healthz").status == 200)
        #expect(try Self.get(base, "/v1/runs").status == 200)
        let metrics = try Self.get(base, "/metrics").text
        #expect(Self.metric(metrics, #"runworker_http_streams_refused_total{reason="max_streams"}"#) == 1, "\(metrics)")

        // A client that leaves gives its slot back (noticed at the stream's next write: an
        // event, here a command's, or a keepalive).
        open.removeLast().close()
        var n = 0
        try waitUntil("a slot comes back once a client left", timeout: 40, poll: 0.5) {
            n += 1
            _ = try client.send(["command": "start", "run_id": .string("cap-\(n)")], id: "cap-\(n)", reply: false)
            let again = try HTTPProbe.StalledStream(base, "/v1/events/stream")
            guard again.status == 200 else { return false }
            open.append(again)
            return true
        }
        open.forEach { $0.close() }
        #expect(worker.terminate() == 0)

        let token = "stream-cap-token-0123456789"
        let guarded = try WorkerProcess(prefix: prefix, store: store, extraEnv: [
            "RUNWORKER_HTTP_ADDRESS": "0.0.0.0:0", "RUNWORKER_HTTP_TOKEN": token, "RUNWORKER_HTTP_MAX_STREAMS_PER_TOKEN": "1",
        ])
        defer { _ = guarded.terminate() }
        try guarded.waitReady()
        let port = try #require(guarded.status?.httpAddress?.split(separator: ":").last)
        let tokenBase = "http://127.0.0.1:\(port)"
        let first = try HTTPProbe.StalledStream(tokenBase, "/v1/events/stream", headers: ["Authorization": "Bearer \(token)"])
        #expect(first.status == 200, "\(first.head)")
        let second = try Self.get(tokenBase, "/v1/events/stream", headers: ["Authorization": "Bearer \(token)"])
        #expect(second.status == 429, "\(second.text)")
        #expect(try Self.json(second)["error"]?["code"] == "too_many_streams")
        #expect(second.headers["retry-after"] == "10")
        first.close()
        #expect(guarded.terminate() == 0)
    }

    /// Stalled clients (they read nothing, with small socket buffers) are disconnected once the
    /// events they did not read pass their buffer (`http.stream_buffer_kib`), while the worker's
    /// memory stays bounded (on main each held every event: 12 MB each here) and it answers
    /// /healthz and commands throughout.
    @Test func stalledStreamsAreDisconnected() throws {
        let prefix = uniquePrefix("httpstall")
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let client = try ContractClient(prefix: prefix, bind: "none")
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: store, extraEnv: ["RUNWORKER_HTTP_STREAM_BUFFER_KIB": "256"])
        defer { _ = worker.terminate() }
        try worker.waitReady()
        let base = try #require(worker.httpBase)
        let streams = 20
        let stalled = try (0..<streams).map { _ in try HTTPProbe.StalledStream(base, "/v1/events/stream") }
        #expect(stalled.allSatisfy { $0.status == 200 })
        let before = try #require(worker.memory)

        // 120 runs with 100 KB inputs: each `created` event carries its input, 12 MB in all
        // for every stream.
        let runs = 120
        let input = String(repeating: "i", count: 100_000)
        for i in 0..<runs {
            try client.send(["command": "start", "run_id": .string("stall-\(i)"), "input": ["text": .string(input)]], id: "s\(i)", reply: false)
        }
        try client.confirmAll(timeout: 30)
        try waitUntil("the worker applied every command", timeout: 60, poll: 0.2) {
            (try? Self.json(try Self.get(base, "/v1/counts"))["total"]) == .int(Int64(runs))
        }
        try waitUntil("every stalled stream is cut off", timeout: 30, poll: 0.2) {
            Self.metric(try Self.get(base, "/metrics").text, "runworker_http_stream_overflows_total") == Double(streams)
        }
        let after = try #require(worker.memory)
        #expect(try Self.get(base, "/healthz").status == 200)
        #expect(try client.call(["command": "start", "run_id": "after-stall"], id: "after").ok)
        let metrics = try Self.get(base, "/metrics").text
        #expect(Self.metric(metrics, "runworker_http_streams_open") == 0, "\(metrics)")
        // Each stream held at most 256 KiB here, plus what the HTTP library took for its socket;
        // the run cache takes its share too (12 MB of runs). On main the 20 streams alone held
        // a frame of every event each: 240 MB.
        let grewMiB = Double(after.peak - before.rss) / 1_048_576
        print("stalled streams: VmRSS \(before.rss >> 20) MiB before, \(after.rss >> 20) MiB after, peak \(after.peak >> 20) MiB (+\(Int(grewMiB)) MiB)")
        #expect(grewMiB < 120, "the worker grew by \(grewMiB) MiB")
        // The clients see the end of their streams (after the little their sockets held).
        for stream in stalled { #expect(stream.closedByServer(timeout: 10)) }
        #expect(worker.terminate() == 0)
    }

    /// List items leave inputs out unless asked (`include=input`), and a page with inputs stops
    /// before 4 MiB with a cursor that walks every run once; `GET /v1/runs/{id}` has the input.
    @Test func listsLeaveInputsOutAndBoundPages() throws {
        let prefix = uniquePrefix("httplist")
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let client = try ContractClient(prefix: prefix, bind: "none")
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: store)
        defer { _ = worker.terminate() }
        try worker.waitReady()
        let base = try #require(worker.httpBase)
        let input = String(repeating: "x", count: 600_000)
        for i in 0..<10 {
            try client.send(["command": "start", "run_id": .string("big-\(i)"), "input": ["text": .string(input)]], id: "b\(i)", reply: false)
        }
        try client.confirmAll(timeout: 30)
        try waitUntil("the worker applied every command", timeout: 60, poll: 0.2) {
            (try? Self.json(try Self.get(base, "/v1/counts"))["total"]) == .int(10)
        }
        let summaries = try Self.get(base, "/v1/runs?limit=500")
        let items = try #require(try Self.json(summaries)["runs"]?.arrayValue)
        #expect(items.count == 10 && items.allSatisfy { $0["input"] == nil && $0["status"] == "running" })
        #expect(summaries.body.count < 20_000, "\(summaries.body.count) bytes")
        #expect(try Self.json(try Self.get(base, "/v1/runs/big-3"))["input"]?["text"]?.stringValue == input)

        var seen: [String] = []
        var cursor: String? = nil
        var pages = 0
        repeat {
            let page = try Self.get(base, "/v1/runs?limit=500&include=input" + (cursor.map { "&cursor=\($0)" } ?? ""), timeout: 30)
            #expect(page.status == 200 && page.body.count <= (4 << 20) + 1024, "\(page.body.count) bytes")
            let body = try Self.json(page)
            let runs = body["runs"]?.arrayValue ?? []
            #expect(runs.allSatisfy { $0["input"]?["text"]?.stringValue == input })
            seen += runs.map { $0["run_id"]?.stringValue ?? "" }
            cursor = body["next_cursor"]?.stringValue
            pages += 1
        } while cursor != nil && pages < 20
        #expect(pages >= 2, "600 KB inputs: 6 to a page")
        // Every run once (their order is by creation time, which partitions decide).
        #expect(seen.count == 10 && Set(seen) == Set((0..<10).map { "big-\($0)" }), "\(seen)")
        #expect(worker.terminate() == 0)
    }

    /// Retention removes a finished run with its history once its time has passed, leaves a
    /// live run alone, and a later command for the removed run is answered run_not_found with
    /// a message that says why.
    @Test func retentionRemovesFinishedRuns() throws {
        let prefix = uniquePrefix("httpret")
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: store, extraEnv: [
            "RUNWORKER_RETENTION_FINISHED_RUNS": "1s", "RUNWORKER_RETENTION_INTERVAL_S": "0.2",
        ])
        defer { _ = worker.terminate() }
        try worker.waitReady()
        let base = try #require(worker.httpBase)
        _ = try client.call(["command": "start", "run_id": "done"], id: "d1")
        _ = try client.call(["command": "complete", "run_id": "done"], id: "d2")
        _ = try client.call(["command": "start", "run_id": "live"], id: "l1")
        #expect(try Self.get(base, "/v1/runs/done").status == 200)
        try waitUntil("retention removes the finished run", timeout: 30) { try Self.get(base, "/v1/runs/done").status == 404 }
        #expect(try Self.get(base, "/v1/runs/done/events").status == 404)
        #expect(try Self.get(base, "/v1/runs/live").status == 200)
        let late = try client.call(["command": "complete", "run_id": "done"], id: "d3")
        #expect(late.error?.code == .runNotFound && late.error?.message.contains("retention") == true, "\(String(describing: late.error))")
        let metrics = try Self.get(base, "/metrics").text
        #expect(metrics.contains(#"runworker_retention_removed_total{what="runs"} 1"#), "\(metrics)")
        #expect(worker.terminate() == 0)
    }

    /// docs/openapi.yaml validates, and the live server agrees with it: schemathesis (PyPI)
    /// fuzzes every GET operation but the endless stream against a worker holding runs in
    /// several states, with its token, and fails on a 5xx or on any status, content type,
    /// header or body the document does not describe (and on an unsupported method answered
    /// without 405 and Allow).
    @Test func openAPIDocumentMatchesTheServer() throws {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let script = repo.appendingPathComponent("Tests/IntegrationTests/http/openapi_check.sh").path
        let validated = try runProgram("/bin/bash", [script], timeout: 120)
        #expect(validated.status == 0, "\(validated.output)")

        let prefix = uniquePrefix("oapi")
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let token = "openapi-check-token-0123456789"
        let worker = try WorkerProcess(
            prefix: prefix, store: store, extraEnv: ["RUNWORKER_HTTP_ADDRESS": "0.0.0.0:0", "RUNWORKER_HTTP_TOKEN": token])
        defer { _ = worker.terminate() }
        try worker.waitReady()
        // Runs in every status, so that the fuzzer follows real ids into snapshots and histories.
        _ = try client.call(["command": "create", "run_id": "o-created", "agent_id": "a"], id: "1")
        _ = try client.call(["command": "start", "run_id": "o-waiting", "agent_id": "a"], id: "2")
        _ = try client.call(["command": "require_action", "run_id": "o-waiting",
                             "action": ["type": "tool_call", "tool": "t", "args": [:], "timeout_s": 600]], id: "3")
        _ = try client.call(["command": "start", "run_id": "o-retrying", "config": ["retry": ["max_attempts": 3, "delay_s": 600]]], id: "4")
        _ = try client.call(["command": "fail", "run_id": "o-retrying", "error": ["message": "x"], "retryable": true], id: "5")
        _ = try client.call(["command": "start", "run_id": "o-done", "agent_id": "b"], id: "6")
        _ = try client.call(["command": "complete", "run_id": "o-done", "result": ["ok": true]], id: "7")
        _ = try client.call(["command": "start", "run_id": "o-failed"], id: "8")
        _ = try client.call(["command": "fail", "run_id": "o-failed", "error": ["message": "no", "code": "e"]], id: "9")
        _ = try client.call(["command": "create", "run_id": "o-cancelled"], id: "10")
        _ = try client.call(["command": "cancel", "run_id": "o-cancelled", "reason": "test"], id: "11")
        let port = try #require(worker.status?.httpAddress?.split(separator: ":").last)
        var env = ProcessInfo.processInfo.environment
        env["OPENAPI_EXTRA_CHECKS"] = "unsupported_method"
        env["OPENAPI_MAX_EXAMPLES"] = "30"
        let fuzzed = try runProgram("/bin/bash", [script, "http://127.0.0.1:\(port)", token], environment: env, timeout: 600)
        #expect(fuzzed.status == 0, "\(fuzzed.output)")
        #expect(worker.isRunning, "the worker survives the fuzzing: \(worker.log.suffix(2000))")
        #expect(worker.terminate() == 0)
    }

    /// Two workers on one host with the same HTTP port: the second cannot listen, says so,
    /// and works on without HTTP (the first keeps answering).
    @Test func takenPortLeavesTheWorkerRunning() throws {
        let prefix = uniquePrefix("httpport")
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let first = try WorkerProcess(prefix: prefix, store: store)
        defer { _ = first.terminate() }
        try first.waitReady()
        let address = try #require(first.status?.httpAddress)
        let second = try WorkerProcess(prefix: prefix, store: store, extraEnv: ["RUNWORKER_HTTP_ADDRESS": address])
        defer { _ = second.terminate() }
        try second.waitReady()
        try waitUntil("the second worker reports its HTTP failure", timeout: 30, explain: { second.log }) {
            second.log.contains("HTTP listener failed")
        }
        let reply = try client.call(["command": "start", "run_id": "p1"], id: "p1")
        #expect(reply.ok)
        #expect(second.isRunning && second.status?.httpAddress == nil)
        #expect(try Self.get("http://" + address, "/v1/runs/p1").status == 200)
        #expect(second.terminate() == 0)
        #expect(first.terminate() == 0)
    }
}
