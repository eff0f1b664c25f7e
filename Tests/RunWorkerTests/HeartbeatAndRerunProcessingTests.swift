import RunContract
import RunStateMachine
import RunStore
import Testing

@testable import RunWorker

/// The processor's part of contract 1.1's commands: a heartbeat is stored although it adds no
/// event, and a rerun reads the run it starts from.
@Suite struct HeartbeatAndRerunProcessingTests {
    @Test func heartbeatIsStoredWithoutEvent() async throws {
        let store = InMemoryRunStore()
        let applier = processor(store)
        _ = try await applier.process([
            inbound(["command": "start", "run_id": "r1"], id: "c1"),
            inbound(["command": "require_action", "run_id": "r1",
                     "action": ["id": "a-1", "type": "tool_call", "tool": "t", "args": [:], "heartbeat_timeout_s": 30]], id: "c2"),
        ])
        let batch = try await applier.process([
            inbound(["command": "heartbeat_action", "run_id": "r1", "action_id": "a-1", "details": ["pct": 50]], id: "c3")
        ])
        #expect(try events(batch).isEmpty)
        #expect(batch.results.first?.refusal == nil)
        // The reply carries the recorded heartbeat.
        let reply = try #require(batch.messages.first { $0.destination == .reply })
        let answer = try CommandReply.decode(reply.body)
        #expect(answer.ok && answer.run?.pendingActions.first?.heartbeatCount == 1)
        let stored = try #require(try await store.run("r1"))
        #expect(stored.version == 3 && stored.actions[0].heartbeatCount == 1)
        #expect(stored.actions[0].heartbeatDetails == .object(["pct": .int(50)]))
        #expect(stored.actions[0].heartbeatDeadline == Timestamp(milliseconds: 1_000).adding(seconds: 30))
        // A repeated heartbeat (same id) is not counted twice.
        _ = try await applier.process([
            inbound(["command": "heartbeat_action", "run_id": "r1", "action_id": "a-1"], id: "c3")
        ])
        #expect(try await store.run("r1")?.actions[0].heartbeatCount == 1)
    }

    @Test func rerunReadsThePreviousRun() async throws {
        let store = InMemoryRunStore()
        let applier = processor(store)
        _ = try await applier.process([
            inbound(["command": "start", "run_id": "old", "agent_id": "ag", "input": ["q": 1]], runID: "old", id: "c1"),
        ])
        let early = try await applier.process([
            inbound(["command": "rerun", "run_id": "new", "previous_run_id": "old"], runID: "new", id: "c2")
        ])
        #expect(early.results.first?.refusal?.code == .invalidTransition)
        _ = try await applier.process([
            inbound(["command": "fail", "run_id": "old", "error": ["message": "x"]], runID: "old", id: "c3")
        ])
        let batch = try await applier.process([
            inbound(["command": "rerun", "run_id": "new2", "previous_run_id": "old"], runID: "new2", id: "c4"),
            inbound(["command": "rerun", "run_id": "new3", "previous_run_id": "missing"], runID: "new3", id: "c5"),
        ])
        #expect(try events(batch).map(\.type) == [.created, .started])
        #expect(batch.results.last?.refusal?.code == .runNotFound)
        let run = try #require(try await store.run("new2"))
        #expect(run.previousRunID == "old" && run.agentID == "ag" && run.input == .object(["q": .int(1)]))
        // The previous run is only read.
        #expect(try await store.run("old")?.version == 3)
    }
}
