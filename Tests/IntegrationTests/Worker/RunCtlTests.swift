import Foundation
import RunContract
import RunWorkerTestKit
import RunTestSupport
import Testing

/// Runs `runctl` with the test broker and prefix (at most 30 s); returns exit status and
/// combined output.
func runctl(_ args: [String], prefix: String, store: String) throws -> (status: Int32, output: String) {
    var env = ProcessInfo.processInfo.environment
    env["RUNWORKER_AMQP_URL"] = amqpURL
    env["RUNWORKER_PREFIX"] = prefix
    env["RUNWORKER_STORE"] = store
    return try runProgram(binDir.appendingPathComponent("runctl").path, args, environment: env, timeout: 30)
}

@Suite(.serialized, .requiresBroker, .ownThread) struct RunCtlTests {
    /// The README walkthrough works: runctl drives a run, prints outcomes, exits 1 with the
    /// code on a refusal, reads the store, and `watch --json` prints the events.
    @Test func walkthrough() throws {
        let prefix = uniquePrefix("ctl")
        let store = tempStore(prefix)
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: store)
        try worker.waitReady()

        // The watcher writes to files (read with deadlines, never to end-of-file), says
        // "watching" on stderr once its queue is bound, and exits after the 6 events expected.
        let watchOut = NSTemporaryDirectory() + "\(prefix)-watch.out"
        let watchErr = NSTemporaryDirectory() + "\(prefix)-watch.err"
        for path in [watchOut, watchErr] { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        defer { for path in [watchOut, watchErr] { try? FileManager.default.removeItem(atPath: path) } }
        func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        let watcher = Process()
        watcher.executableURL = binDir.appendingPathComponent("runctl")
        watcher.arguments = ["watch", "run-42", "--json", "--count", "6", "--prefix", prefix, "--amqp-url", amqpURL]
        watcher.standardOutput = FileHandle(forWritingAtPath: watchOut)!
        watcher.standardError = FileHandle(forWritingAtPath: watchErr)!
        try watcher.run()
        defer { if watcher.isRunning { kill(watcher.processIdentifier, SIGKILL) } }
        try waitUntil("runctl watch did not bind its queue", timeout: 15, explain: { read(watchErr) }) {
            guard watcher.isRunning || read(watchErr).contains("watching") else {
                throw TestKitError(.exited, "runctl watch exited (\(watcher.terminationStatus)): \(read(watchErr))")
            }
            return read(watchErr).contains("watching")
        }

        var r = try runctl(["start", "run-42", "--agent", "demo", "--input", #"{"question": "2 + 2"}"#], prefix: prefix, store: store)
        #expect(r.status == 0 && r.output.contains("run-42 is running"), "\(r.output)")
        r = try runctl(["require-action", "run-42", "--tool", "calculator", "--args", #"{"expression": "2 + 2"}"#, "--id", "a-1",
                        "--heartbeat-timeout", "60"],
                       prefix: prefix, store: store)
        #expect(r.status == 0 && r.output.contains("pending action a-1"), "\(r.output)")
        r = try runctl(["heartbeat", "run-42", "a-1", "--details", #"{"step": 1}"#, "--json"], prefix: prefix, store: store)
        let beat = try CommandReply.decode(Array(r.output.utf8))
        #expect(r.status == 0 && beat.run?.pendingActions.first?.heartbeatCount == 1, "\(r.output)")
        r = try runctl(["complete", "run-42"], prefix: prefix, store: store)
        #expect(r.status == 1 && r.output.contains("invalid_transition"), "\(r.output)")
        r = try runctl(["complete-action", "run-42", "a-1", "--result", "4"], prefix: prefix, store: store)
        #expect(r.status == 0 && r.output.contains("run-42 is running"), "\(r.output)")
        r = try runctl(["complete", "run-42", "--result", #""4""#, "--json"], prefix: prefix, store: store)
        let reply = try CommandReply.decode(Array(r.output.utf8))
        #expect(r.status == 0 && reply.run?.status == .completed && reply.run?.result == "4")
        r = try runctl(["rerun", "run-42-b", "--from", "run-42", "--json"], prefix: prefix, store: store)
        let rerun = try CommandReply.decode(Array(r.output.utf8))
        #expect(r.status == 0 && rerun.run?.previousRunID == "run-42" && rerun.run?.agentID == "demo", "\(r.output)")
        // The reads go through the worker's HTTP API.
        let http = try #require(worker.httpBase)
        r = try runctl(["get", "run-42", "--http", http], prefix: prefix, store: store)
        #expect(r.status == 0 && r.output.contains("completed (version 5"), "\(r.output)")
        r = try runctl(["list", "--status", "completed", "--http", http], prefix: prefix, store: store)
        #expect(r.status == 0 && r.output.hasPrefix("run-42\tcompleted\tv5"), "\(r.output)")
        // Lists carry summaries: the result only when asked for.
        r = try runctl(["list", "--status", "completed", "--json", "--http", http], prefix: prefix, store: store)
        let summary = try JSONValue.parse(Array((r.output.split(separator: "\n").first ?? "").utf8))
        #expect(r.status == 0 && summary["run_id"] == "run-42" && summary["result"] == nil, "\(r.output)")
        r = try runctl(["list", "--status", "completed", "--json", "--include", "result", "--http", http], prefix: prefix, store: store)
        let full = try JSONValue.parse(Array((r.output.split(separator: "\n").first ?? "").utf8))
        #expect(r.status == 0 && full["result"] == "4", "\(r.output)")
        r = try runctl(["get", "nobody", "--http", http], prefix: prefix, store: store)
        #expect(r.status == 1 && r.output.contains("run_not_found"))
        r = try runctl(["events", "run-42", "--http", http], prefix: prefix, store: store)
        let timeline = r.output.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        #expect(r.status == 0 && timeline.map { $0.count > 6 ? String($0[6]) : "" }
            == ["created", "started", "action_required", "action_completed", "completed"], "\(r.output)")
        r = try runctl(["events", "run-42", "--json", "--http", http], prefix: prefix, store: store)
        #expect(try r.output.split(separator: "\n").map { try RunEvent.decode(Array($0.utf8)).seq } == [1, 2, 3, 4, 5])
        r = try runctl(["describe", "run-42", "--http", http], prefix: prefix, store: store)
        #expect(r.status == 0 && r.output.contains("timeline:") && r.output.contains("#5") && r.output.contains("stop_reason=completed"),
                "\(r.output)")
        r = try runctl(["get", "run-42", "--http", "http://127.0.0.1:1"], prefix: prefix, store: store)
        #expect(r.status != 0 && r.output.contains("cannot reach the HTTP API"), "\(r.output)")
        r = try runctl(["require-action", "run-42", "--tool", "x", "--args", "{bad"], prefix: prefix, store: store)
        #expect(r.status != 0 && r.output.contains("--args is not valid JSON"))

        let watchStatus = try watcher.waitForExitOrKill("runctl watch --count 6", timeout: 15)
        #expect(watchStatus == 0, "\(read(watchErr))")
        let lines = read(watchOut).split(separator: "\n").map(String.init)
        let types = try lines.filter { !$0.contains("command_rejected") }.map { try RunEvent.decode(Array($0.utf8)).type }
        #expect(types == [.created, .started, .actionRequired, .actionCompleted, .completed])
        #expect(lines.filter { $0.contains("command_rejected") }.count == 1)
        #expect(worker.terminate() == 0)
    }
}
