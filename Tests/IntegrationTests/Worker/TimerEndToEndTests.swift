import AMQPClient
import Foundation
import RunContract
import RunStore
import RunWorkerTestKit
import RunTestSupport
import Testing

@testable import RunWorker

/// How late an event came after the deadline it fired for, in ms (from the event's own time).
func lateness(_ event: RunEvent, deadline: Timestamp) -> Int64 { event.occurredAt.milliseconds - deadline.milliseconds }

@Suite(.serialized, .requiresBroker, .ownThread) struct TimerEndToEndTests {
    /// Each timeout kind fires on a real worker, within a second of its deadline: start
    /// timeout, attempt timeout, and action timeout (action_failed, then timed_out).
    @Test func eachTimeoutKindFires() throws {
        let prefix = uniquePrefix("timeouts")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix))
        try worker.waitReady()

        let created = try client.call(["command": "create", "run_id": "start-to", "config": ["start_timeout_s": 0.3]], id: "c1")
        let started = try client.call(["command": "start", "run_id": "attempt-to", "config": ["timeout_s": 0.3]], id: "c2")
        _ = try client.call(["command": "start", "run_id": "action-to"], id: "c3")
        let waiting = try client.call(["command": "require_action", "run_id": "action-to",
                                       "action": ["id": "a1", "type": "tool_call", "tool": "slow", "args": [:], "timeout_s": 0.3]],
                                      id: "c4")
        try client.waitForEvents(timeout: 10) { evs in evs.filter { $0.routingKey.hasSuffix(".timed_out") }.count >= 3 }

        let timedOut = Dictionary(uniqueKeysWithValues: client.runEvents.filter { $0.type == .timedOut }.map { ($0.runID, $0) })
        #expect(timedOut["start-to"]?.stopReason == .timeout && timedOut["start-to"]?.status == .failed)
        #expect(timedOut["attempt-to"]?.stopReason == .timeout)
        #expect(timedOut["action-to"]?.stopReason == .actionTimeout)
        let actionFailed = client.runEvents.first { $0.runID == "action-to" && $0.type == .actionFailed }
        #expect(actionFailed?.action?.error?.code == "action_timeout")
        #expect(actionFailed.map { $0.seq + 1 } == timedOut["action-to"]?.seq)

        // Worst-case lateness, printed for the record; bounded by the contract's "within one second".
        var late: [Int64] = []
        if let c = created.run, let e = timedOut["start-to"] { late.append(lateness(e, deadline: c.createdAt.adding(seconds: 0.3))) }
        if let s = started.run, let e = timedOut["attempt-to"], let at = s.startedAt { late.append(lateness(e, deadline: at.adding(seconds: 0.3))) }
        if let d = waiting.run?.pendingActions.first?.deadline, let e = timedOut["action-to"] { late.append(lateness(e, deadline: d)) }
        print("timer lateness ms: \(late)")
        #expect(late.count == 3 && late.allSatisfy { $0 >= 0 && $0 < 1_000 })
        expectSchemaValid(client)
    }

    /// A timer whose run completed in time does nothing; a retry succeeds on attempt 2 and
    /// another run exhausts its attempts with stop_reason max_attempts.
    @Test func lateTimerAndRetries() throws {
        let prefix = uniquePrefix("retries")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix))
        try worker.waitReady()

        _ = try client.call(["command": "start", "run_id": "quick", "config": ["timeout_s": 0.3]], id: "q1")
        #expect(try client.call(["command": "complete", "run_id": "quick"], id: "q2").ok)

        let retry: JSONValue = ["max_attempts": 2, "delay_s": 0.2]
        _ = try client.call(["command": "start", "run_id": "flaky", "config": ["retry": retry]], id: "f1")
        let scheduled = try client.call(["command": "fail", "run_id": "flaky", "error": ["message": "boom"], "retryable": true], id: "f2")
        #expect(scheduled.run?.status == .retrying)
        try client.waitForEvents(timeout: 10) { evs in evs.contains { $0.routingKey == "run.flaky.started" && (try? RunEvent.decode($0.body).attempt) == 2 } }
        let second = try client.call(["command": "complete", "run_id": "flaky", "result": "ok"], id: "f3")
        #expect(second.run?.status == .completed && second.run?.attempt == 2)

        _ = try client.call(["command": "start", "run_id": "doomed", "config": ["retry": retry]], id: "d1")
        _ = try client.call(["command": "fail", "run_id": "doomed", "error": ["message": "1"], "retryable": true], id: "d2")
        try client.waitForEvents(timeout: 10) { evs in evs.contains { $0.routingKey == "run.doomed.started" && (try? RunEvent.decode($0.body).attempt) == 2 } }
        let last = try client.call(["command": "fail", "run_id": "doomed", "error": ["message": "2"], "retryable": true], id: "d3")
        #expect(last.run?.status == .failed && last.run?.stopReason == .maxAttempts)

        // A sentinel run whose deadline comes after "quick"'s: the sweep fires due timers
        // earliest first, so once the sentinel has timed out, "quick"'s timer would have fired.
        _ = try client.call(["command": "start", "run_id": "sentinel", "config": ["timeout_s": 0.3]], id: "s1")
        try client.waitForEvents(timeout: 10) { evs in evs.contains { $0.routingKey == "run.sentinel.timed_out" } }
        #expect(!client.runEvents.contains { $0.runID == "quick" && $0.type == .timedOut })
        #expect(client.runEvents.filter { $0.runID == "flaky" }.map(\.type)
                == [.created, .started, .retryScheduled, .started, .completed])
        expectSchemaValid(client)
        #expect(worker.terminate() == 0)
    }

    /// A deadline that elapses while no worker runs fires when one starts again (late by
    /// the downtime), exactly once.
    @Test func timeoutSurvivesWorkerRestart() throws {
        let prefix = uniquePrefix("restart")
        let store = tempStore(prefix)
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let first = try WorkerProcess(prefix: prefix, store: store, extraEnv: WorkerProcess.takeoverEnvironment)
        try first.waitReady()
        let r = try client.call(["command": "start", "run_id": "r1", "config": ["timeout_s": 1.5]], id: "c1")
        first.kill()
        // No worker runs until the deadline has passed (the second starts after it).
        let deadline = try #require(r.run?.startedAt).adding(seconds: 1.5)
        try waitUntil("the deadline passed", timeout: 10) { Date().timeIntervalSince1970 * 1000 > Double(deadline.milliseconds) }
        let second = try WorkerProcess(prefix: prefix, store: store, extraEnv: WorkerProcess.takeoverEnvironment)
        try second.waitReady()
        try client.waitForEvents(timeout: 10) { evs in evs.contains { $0.routingKey == "run.r1.timed_out" } }
        let e = try #require(client.runEvents.first { $0.type == .timedOut })
        #expect(e.occurredAt >= deadline)
        // Once the worker has exited and the sentinel is back, every event it published is in.
        #expect(second.terminate() == 0)
        try client.drainUntilSentinel()
        // Once: one event (one seq, one message id). Delivery is at-least-once, so a copy of
        // it may come again (a worker killed between confirm and outbox cleanup), never a second event.
        let fired = client.events.filter { $0.routingKey == "run.r1.timed_out" }
        #expect(Set(fired.map { $0.properties.messageID ?? "" }).count == 1, "\(second.log)")
        #expect(Set(fired.map(\.body)).count == 1)
    }

    /// Two workers, many timers: each run times out exactly once (one event, one seq).
    @Test func twoWorkersFireEachTimerOnce() throws {
        let prefix = uniquePrefix("twotimers")
        let store = tempStore(prefix)
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let (a, b) = try startTwoWorkers(prefix: prefix, store: store)
        for i in 0..<40 {
            try client.send(["command": "start", "run_id": .string("t\(i)"), "config": ["timeout_s": 0.5]], id: "c\(i)", reply: false)
        }
        try client.confirmAll()
        try client.waitForEvents(timeout: 15) { evs in evs.filter { $0.routingKey.hasSuffix(".timed_out") }.count >= 40 }
        // Once both workers have exited and the sentinel is back, every event they published is in.
        #expect(a.terminate() == 0)
        #expect(b.terminate() == 0)
        try client.drainUntilSentinel()
        let timedOut = client.events.filter { $0.routingKey.hasSuffix(".timed_out") }
        #expect(timedOut.count == 40)
        #expect(Set(timedOut.map(\.routingKey)).count == 40)
        // The workers' own count agrees: 40 deadlines fired in all (final counters, written at exit).
        let fired = [a, b].map { $0.status?.counters.timersFired ?? 0 }
        #expect(fired.reduce(0, +) == 40, "timers fired per worker: \(fired)")
    }
}
