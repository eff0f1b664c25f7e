import AMQPClient
import Foundation
import RunContract
import RunWorkerTestKit
import RunTestSupport
import Testing

/// Contract 1.1 on a real worker, broker and store: heartbeats keep an action alive past its
/// heartbeat timeout and a missed one times it out; a rerun starts a new run from a finished
/// one and the HTTP API shows the chain; every published message carries `contract_version`.
@Suite(.serialized, .requiresBroker, .ownThread) struct ContractOneOneTests {
    @Test func heartbeatsReRunsAndVersionHeader() throws {
        let prefix = uniquePrefix("v11")
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: store)
        defer { _ = worker.terminate() }
        try worker.waitReady()

        // Heartbeats every 0.4 s keep an action with a 3 s heartbeat timeout alive for 4 s, past
        // its timeout; a stall of up to 2.6 s between two beats (a loaded machine) changes nothing.
        _ = try client.call(["command": "start", "run_id": "hb-alive"], id: "a1")
        let required = try client.call(["command": "require_action", "run_id": "hb-alive",
                                        "action": ["id": "t1", "type": "tool_call", "tool": "crawl", "args": [:],
                                                   "heartbeat_timeout_s": 3]], id: "a2")
        #expect(required.run?.pendingActions.first?.heartbeatTimeoutS == 3)
        let versionBefore = try #require(required.run?.version)
        for n in 1...10 {
            Thread.sleep(forTimeInterval: 0.4)
            let beat = try client.call(["command": "heartbeat_action", "run_id": "hb-alive", "action_id": "t1",
                                        "details": ["page": .int(Int64(n))]], id: "beat-\(n)")
            #expect(beat.ok, "\(beat.error.map { "\($0)" } ?? "")")
            #expect(beat.run?.version == versionBefore)
            #expect(beat.run?.pendingActions.first?.heartbeatCount == n)
        }
        let done = try client.call(["command": "complete_action", "run_id": "hb-alive", "action_id": "t1",
                                    "result": "crawled"], id: "a3")
        #expect(done.ok && done.run?.status == .running)
        let action = try #require(client.runEvents.first { $0.runID == "hb-alive" && $0.type == .actionCompleted }?.action)
        #expect(action.heartbeatCount == 10 && action.heartbeatDetails == .object(["page": .int(10)]))

        // No heartbeat: the action and the run time out with heartbeat_timeout; a late
        // heartbeat is refused, so the agent learns its work was given up.
        _ = try client.call(["command": "start", "run_id": "hb-dead"], id: "d1")
        _ = try client.call(["command": "require_action", "run_id": "hb-dead",
                             "action": ["id": "t1", "type": "tool_call", "tool": "crawl", "args": [:],
                                        "heartbeat_timeout_s": 0.5]], id: "d2")
        try client.waitForEvents(timeout: 10) { evs in evs.contains { $0.routingKey == "run.hb-dead.timed_out" } }
        let timedOut = try #require(client.runEvents.first { $0.runID == "hb-dead" && $0.type == .timedOut })
        #expect(timedOut.stopReason == .actionTimeout && timedOut.error?.code == "heartbeat_timeout")
        let late = try client.call(["command": "heartbeat_action", "run_id": "hb-dead", "action_id": "t1"], id: "d3")
        #expect(!late.ok && late.error?.code == .invalidTransition)

        // Rerun the failed run twice over; the chain goes back to the first.
        let refused = try client.call(["command": "rerun", "run_id": "hb-alive-2", "previous_run_id": "hb-alive"], id: "r0")
        #expect(refused.error?.code == .invalidTransition, "hb-alive is still running")
        let second = try client.call(["command": "rerun", "run_id": "hb-dead-2", "previous_run_id": "hb-dead",
                                      "input": ["retry": true]], id: "r1")
        #expect(second.ok && second.run?.status == .running && second.run?.previousRunID == "hb-dead")
        _ = try client.call(["command": "cancel", "run_id": "hb-dead-2"], id: "r2")
        let third = try client.call(["command": "rerun", "run_id": "hb-dead-3", "previous_run_id": "hb-dead-2"], id: "r3")
        #expect(third.run?.input == .object(["retry": .bool(true)]), "inherited from the run it reruns")
        let missing = try client.call(["command": "rerun", "run_id": "x-1", "previous_run_id": "never-was"], id: "r4")
        #expect(missing.error?.code == .runNotFound)

        let base = try #require(worker.httpBase)
        let answer = try HTTPProbe.request(base, "/v1/runs/hb-dead-3/chain")
        #expect(answer.status == 200, "\(answer.text)")
        let chain = try JSONValue.parse(answer.body)["chain"]?.arrayValue ?? []
        #expect(chain.compactMap { $0["run_id"]?.stringValue } == ["hb-dead-3", "hb-dead-2", "hb-dead"])
        #expect(try HTTPProbe.request(base, "/v1/runs/nope/chain").status == 404)

        // Every message published (events, rejections) names the contract's version.
        try client.drain(for: 0.3)
        #expect(!client.events.isEmpty)
        for message in client.events {
            #expect(message.properties.headers?[ContractVersion.header] == .string(ContractVersion.current),
                    "\(message.routingKey)")
        }
        expectSchemaValid(client)
    }
}
