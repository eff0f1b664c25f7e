import AMQPClient
import Foundation
import RunContract
import RunStore
import RunStores
import RunWorkerTestKit
import RunTestSupport
import Testing

@testable import RunWorker

/// End-to-end tests: real `runworker` processes against the real broker, driven through the
/// contract only. Serialized: each starts processes, and the machine has two cores.
@Suite(.serialized, .requiresBroker, .ownThread) struct WorkerEndToEndTests {
    /// A run's whole life yields the contract's events, routing keys, message ids, headers and
    /// replies, and the stored run matches the last reply.
    @Test func fullLifecycle() async throws {
        let prefix = uniquePrefix("life")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix))
        try worker.waitReady()

        var r = try client.call(["command": "start", "run_id": "run-1", "agent_id": "ag", "input": ["q": 1]], id: "c1")
        #expect(r.ok && r.run?.status == .running && r.run?.version == 2 && r.commandID == "c1")
        r = try client.call(["command": "require_action", "run_id": "run-1",
                             "actions": [["id": "a-1", "type": "tool_call", "tool": "calc", "args": ["x": 2]],
                                         ["type": "send_message", "recipient": "bob", "content": "hi"]]], id: "c2")
        #expect(r.run?.status == .waiting && r.run?.pendingActions.count == 2)
        let generated = try #require(r.run?.pendingActions.last?.id)
        r = try client.call(["command": "complete_action", "run_id": "run-1", "action_id": "a-1", "result": 4], id: "c3")
        #expect(r.run?.status == .waiting)
        r = try client.call(["command": "fail_action", "run_id": "run-1", "action_id": .string(generated),
                             "error": ["message": "bounced"]], id: "c4")
        #expect(r.run?.status == .running)
        r = try client.call(["command": "complete", "run_id": "run-1", "result": "done", "usage": ["tokens": 7]], id: "c5")
        #expect(r.run?.status == .completed && r.run?.stopReason == .completed && r.run?.version == 7)

        try client.waitForEvents { $0.count >= 7 }
        #expect(client.runEvents.map(\.type)
            == [.created, .started, .actionRequired, .actionRequired, .actionCompleted, .actionFailed, .completed])
        for (i, e) in client.events.enumerated() {
            let event = try RunEvent.decode(e.body)
            #expect(event.seq == Int64(i + 1))
            #expect(e.routingKey == "run.run-1.\(event.type.rawValue)")
            #expect(e.properties.messageID == "run-1:\(i + 1)")
            #expect(e.properties.deliveryMode == 2)
            #expect(e.properties.contentType == "application/json")
            let h = try #require(e.properties.headers)
            #expect(h["run_id"] == .string("run-1"))
            #expect(h["seq"]?.int64Value == Int64(i + 1))
            #expect(h["type"] == .string(event.type.rawValue))
            #expect(h["status"] == .string(event.status.rawValue))
        }
        let last = try RunEvent.decode(client.events.last!.body)
        #expect(last.type == .completed && last.result == "done" && last.usage == ["tokens": 7] && last.stopReason == .completed)
        expectSchemaValid(client)
        #expect(worker.terminate() == 0)
        let stored = try await openRunStore(url: tempStore(prefix)).run("run-1")
        #expect(stored?.status == .completed && stored?.version == 7)
    }

    /// A run too big for the run cache's share of the memory budget (16 MiB: a 4 MiB cache, runs
    /// of at most 128 KiB) is not cached: its commands read it from the store and apply as usual,
    /// while a small run beside it is cached. The worker says what its cache holds.
    @Test func runTooBigToCacheIsReadFromTheStore() async throws {
        let prefix = uniquePrefix("bigrun")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let worker = try WorkerProcess(prefix: prefix, store: store, extraEnv: ["RUNWORKER_MEMORY_BUDGET_MIB": "16"])
        defer { _ = worker.terminate() }
        try worker.waitReady()
        let input = JSONValue.string(String(repeating: "transcript ", count: 20_000))  // 220 KB
        #expect(try client.call(["command": "start", "run_id": "small"], id: "s1").ok)
        #expect(try client.call(["command": "start", "run_id": "big", "input": input], id: "b1").ok)
        _ = try client.call(["command": "require_action", "run_id": "big",
                             "action": ["id": "a1", "type": "tool_call", "tool": "read", "args": [:]]], id: "b2")
        let done = try client.call(["command": "complete_action", "run_id": "big", "action_id": "a1", "result": "ok"], id: "b3")
        #expect(done.run?.status == .running && done.run?.input == input)
        // Both runs are live (finished runs are never cached): only the small one is kept.
        let status = try worker.waitForStatus("four commands applied") { $0.counters.applied >= 4 }
        #expect(status.counters.runCacheRuns == 1, "only the small run is cached: \(status.counters)")
        #expect(status.counters.runCacheBytes > 0 && status.counters.runCacheBytes < 128 << 10)
        let finished = try client.call(["command": "complete", "run_id": "big", "result": "summary"], id: "b4")
        #expect(finished.ok && finished.run?.status == .completed && finished.run?.result == "summary")
        let stored = try await openRunStore(url: store).run("big")
        #expect(stored?.input == input && stored?.status == .completed)
    }

    /// Deliveries are read ahead by bytes, not by count: with a 16 MiB budget (1 MiB of
    /// read-ahead) and the default prefetch of 256, 100 starts of 250 KB that the broker pushes at
    /// once (queued while the worker is stopped) are never read more than the read-ahead and one
    /// body ahead of the batch being applied; the worker did leave its consumers unread, and
    /// every command applies once.
    @Test func readAheadIsBoundedByBytes() throws {
        let prefix = uniquePrefix("readahead")
        let client = try ContractClient(prefix: prefix, bind: "run.*.started")
        defer { client.deleteTopology() }
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let worker = try WorkerProcess(prefix: prefix, store: store, extraEnv: ["RUNWORKER_MEMORY_BUDGET_MIB": "16"])
        defer { _ = worker.terminate() }
        try worker.waitReady()
        try worker.waitForStatus("every partition claimed") { $0.partitions.count == 4 }
        let body = 250_000
        worker.suspend()
        for i in 0..<100 {
            let input = JSONValue.string(String(repeating: Character(UnicodeScalar(UInt8(97 + i % 26))), count: body))
            try client.send(["command": "start", "run_id": .string("big-\(i)"), "input": input], id: "c\(i)", reply: false)
        }
        try client.confirmAll(timeout: 30)
        worker.resume()
        try client.waitForEvents(timeout: 60) { $0.count >= 100 }
        let status = try worker.waitForStatus("100 commands applied", timeout: 30) { $0.counters.applied >= 100 }
        // Applied once each. (A slow debug worker may give its leases up between a commit and
        // its publish: the deliveries come again, are answered as duplicates and the event is
        // published again; that is the contract's at-least-once delivery of events.)
        #expect(Set(client.runEvents.map(\.runID)).count == 100)
        #expect(status.counters.applied == 100, "\(status.counters)")
        #expect(status.counters.readAheadFull > 0, "the read-ahead never filled: \(status.counters)")
        // The bound, and one command body (the input and its envelope) over it at most.
        #expect(status.counters.readAheadPeakBytes <= (1 << 20) + body + 1_000, "\(status.counters)")
    }

    /// Every refusal code comes back on reply_to, is published as command_rejected with
    /// after_seq, and changes nothing; the worker keeps serving.
    @Test func everyRefusalCode() async throws {
        let prefix = uniquePrefix("refuse")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix))
        try worker.waitReady()
        _ = try client.call(["command": "start", "run_id": "r1"], id: "setup-1")
        _ = try client.call(["command": "require_action", "run_id": "r1",
                             "action": ["id": "a1", "type": "system_action", "action": "sleep"]], id: "setup-2")
        _ = try client.call(["command": "complete_action", "run_id": "r1", "action_id": "a1"], id: "setup-3")

        let cases: [(JSONValue, RunError.Code)] = [
            (["command": "complete", "run_id": "nobody"], .runNotFound),
            (["command": "create", "run_id": "r1"], .runExists),
            (["command": "launch", "run_id": "r1"], .unknownCommand),
            (["command": "require_action", "run_id": "r1", "action": ["type": "tool_call"]], .validationError),
            (["command": "complete_action", "run_id": "r1", "action_id": "zzz"], .invalidTransition),
            (["command": "complete", "run_id": "r1", "expected_version": 1], .versionConflict),
        ]
        for (i, (command, code)) in cases.enumerated() {
            let reply = try client.call(command, id: "bad-\(i)")
            #expect(!reply.ok && reply.error?.code == code, "case \(i): \(reply)")
        }
        // action_not_found needs a waiting run; a second action makes one.
        _ = try client.call(["command": "require_action", "run_id": "r1",
                             "action": ["id": "a2", "type": "system_action", "action": "sleep"]], id: "setup-4")
        let notFound = try client.call(["command": "complete_action", "run_id": "r1", "action_id": "zzz"], id: "bad-nf")
        #expect(notFound.error?.code == .actionNotFound)
        let done = try client.call(["command": "cancel", "run_id": "r1", "reason": "enough"], id: "end")
        #expect(done.ok && done.run?.status == .cancelled)
        let late = try client.call(["command": "start", "run_id": "r1"], id: "late")
        #expect(late.error?.code == .invalidTransition)

        try client.waitForEvents { evs in evs.filter { $0.properties.type == "command_rejected" }.count >= cases.count + 2 }
        let rejected = client.rejections
        #expect(rejected.map(\.commandID) == (0..<cases.count).map { "bad-\($0)" } + ["bad-nf", "late"])
        #expect(rejected.first?.afterSeq == 0)  // unknown run
        #expect(rejected[1].afterSeq == 4)
        #expect(rejected.map(\.error.code) == cases.map(\.1) + [.actionNotFound, .invalidTransition])
        let stored = try await openRunStore(url: tempStore(prefix)).run("r1")
        #expect(stored?.status == .cancelled)
        #expect(worker.isRunning)
        expectSchemaValid(client)
    }

    /// A command delivered twice (same message id) is applied once; the repeat is answered
    /// with the first outcome, refusals included.
    @Test func duplicatesAppliedOnce() async throws {
        let prefix = uniquePrefix("dup")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix))
        try worker.waitReady()
        for _ in 0..<3 { try client.send(["command": "start", "run_id": "r1"], id: "s1", reply: false) }
        for _ in 0..<3 {
            try client.send(["command": "require_action", "run_id": "r1",
                             "action": ["type": "tool_call", "tool": "t", "args": [:]]], id: "s2", reply: false)
        }
        let first = try client.call(["command": "complete", "run_id": "r1"], id: "s3")
        let again = try client.call(["command": "complete", "run_id": "r1"], id: "s3")
        #expect(first.error?.code == .invalidTransition)
        #expect(again.error == first.error)
        // The body's command_id stands in for a missing message_id.
        try client.publish((["command": "cancel", "run_id": "r1", "command_id": "s4"] as JSONValue).serialized(), routingKey: "r1", id: nil)
        try client.publish((["command": "cancel", "run_id": "r1", "command_id": "s4"] as JSONValue).serialized(), routingKey: "r1", id: nil)
        try client.waitForEvents { evs in evs.contains { $0.routingKey == "run.r1.cancelled" } }
        let check = try client.call(["command": "cancel", "run_id": "r1"], id: "s5")
        #expect(check.error?.code == .invalidTransition)
        // A repeat may publish the first copy's events again while they await confirmation
        // (the contract allows it; subscribers drop a seq they have seen): one event per seq,
        // and a repeated seq is the same event.
        var bySeq: [Int64: RunEvent] = [:]
        for e in client.runEvents {
            if let seen = bySeq[e.seq] { #expect(seen == e, "seq \(e.seq) repeated with a different event") }
            bySeq[e.seq] = e
        }
        #expect(bySeq.keys.sorted().compactMap { bySeq[$0]?.type } == [.created, .started, .actionRequired, .cancelled])
        #expect(try await openRunStore(url: tempStore(prefix)).run("r1")?.version == 4)
        // The worker's own count (final, written at exit): s1, s2 and s4 applied, s3 and s5
        // refused, and six repeats answered (s1 and s2 twice each, s3 and s4 once).
        expectSchemaValid(client)
        #expect(worker.terminate() == 0)
        let counters = try #require(worker.status, "no status file").counters
        #expect(counters.applied == 3 && counters.refused == 2 && counters.duplicates == 6, "\(worker.statusText)")
    }

    /// Malformed, oversize and unattributable messages go to <prefix>.dead with the reason in
    /// headers, are answered when they ask, and the worker goes on serving.
    @Test func deadLettersAndStillServing() throws {
        let prefix = uniquePrefix("dead")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix), extraEnv: ["RUNWORKER_MAX_BODY_BYTES": "2048"])
        try worker.waitReady()
        let big: JSONValue = ["command": "start", "run_id": "r1", "input": .string(String(repeating: "x", count: 4000))]
        let bodies: [([UInt8], String, String)] = [
            (Array("{not json".utf8), "r1", "malformed_message"),
            (Array("[1]".utf8), "r1", "malformed_message"),
            ((["command": "start"] as JSONValue).serialized(), "r1", "validation_error"),
            ((["command": "start", "run_id": "r2"] as JSONValue).serialized(), "r1", "validation_error"),
            (big.serialized(), "r1", "payload_too_large"),
        ]
        for (i, (body, key, _)) in bodies.enumerated() {
            try client.publish(body, routingKey: key, id: "m\(i)")
        }
        for (i, (_, _, code)) in bodies.enumerated() {
            let reply = try client.reply("m\(i)")
            #expect(reply.error?.code.rawValue == code && reply.run == nil)
        }
        var dead: [AMQPDelivery] = []
        let ch = try client.conn.openChannel()
        try waitUntil("dead letters incomplete", timeout: 10, explain: { "\(dead.count) of \(bodies.count)" }) {
            while let d = try client.conn.get(channel: ch, queue: client.topology.deadQueue, noAck: true) { dead.append(d) }
            return dead.count >= bodies.count
        }
        #expect(dead.map(\.body) == bodies.map(\.0))
        #expect(dead.map { $0.properties.headers?["x-reason"]?.stringValue } == bodies.map(\.2))
        #expect(dead.allSatisfy { $0.properties.headers?["x-original-routing-key"] == .string("r1") })
        #expect(dead.allSatisfy { ($0.properties.headers?["x-reason-message"]?.stringValue?.isEmpty ?? true) == false })
        // Still serving.
        let ok = try client.call(["command": "start", "run_id": "r1"], id: "after")
        #expect(ok.ok && ok.run?.status == .running)
        #expect(worker.isRunning)
        expectSchemaValid(client)
    }

    /// SIGTERM: the worker finishes, closes cleanly and exits 0.
    @Test func gracefulShutdown() throws {
        let prefix = uniquePrefix("term")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix))
        try worker.waitReady()
        for i in 0..<200 { try client.send(["command": "start", "run_id": .string("r\(i)")], id: "c\(i)", reply: false) }
        try client.confirmAll()
        Thread.sleep(forTimeInterval: 0.1)
        // A clean stop: exit status 0, and the status file's last write (at exit) says disconnected.
        #expect(worker.terminate() == 0)
        let final = try #require(worker.status, "no status file")
        #expect(!final.connected && !final.ready, "\(worker.statusText)")
        // Whatever it had not applied is still queued; a new worker finishes it, none twice.
        let second = try WorkerProcess(prefix: prefix, store: tempStore(prefix))
        try second.waitReady()
        // Events may be published twice (delivery is at least once): count distinct ones.
        try client.waitForEvents { _ in Set(client.runEvents.map(\.eventID)).count >= 400 }
        let seqs = Dictionary(grouping: client.runEvents, by: \.runID).mapValues { $0.map(\.seq).sorted() }
        #expect(seqs.count == 200)
        #expect(seqs.values.allSatisfy { Set($0) == [1, 2] })
        #expect(second.terminate() == 0)
    }
}
