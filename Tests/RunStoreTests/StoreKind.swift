import Foundation
#if canImport(Glibc)
import Glibc
#endif
import RunContract
import Synchronization
import RunTestSupport
import Testing

@testable import RunStore
@testable import RunStorePostgres
@testable import RunStores
@testable import RunStoreSQLite

func ms(_ milliseconds: Int64) -> Timestamp { Timestamp(milliseconds: milliseconds) }

/// A run with every kind of field filled in, so that a storage round trip has something to lose.
func sampleRun(
    _ id: String, status: RunStatus = .running, version: Int64 = 2, agent: String? = "agent-1", updated: Int64 = 1_000
) -> Run {
    Run(
        runID: id, status: status, version: version, agentID: agent, input: ["q": "2+2"], metadata: ["team": "a"],
        config: RunConfig(timeoutS: 30),
        actions: [
            Action(
                id: "a-1", type: .toolCall, fields: ["tool": "calc", "args": ["x": 1]], status: .completed,
                requestedAt: ms(900), result: 4)
        ],
        createdAt: ms(500), startedAt: ms(600), updatedAt: ms(updated), attemptStartedAt: ms(600))
}

func outboxRow(_ run: String, _ seq: Int64, at milliseconds: Int64 = 1_000) -> OutboxMessage {
    OutboxMessage(
        runID: run, seq: seq, type: "started", status: "running", routingKey: "run.\(run).started",
        messageID: "\(run):\(seq)", body: Array("{\"seq\":\(seq)}".utf8), writtenAt: ms(milliseconds))
}

/// A write that creates `run`.
func create(_ run: Run, deadline: Timestamp? = nil, partition: Int? = nil) -> RunWrite {
    RunWrite(run: run, previousVersion: nil, nextDeadline: deadline, partition: partition)
}

/// A write that moves `run` on from `previousVersion`.
func update(_ run: Run, from previousVersion: Int64, deadline: Timestamp? = nil, partition: Int? = nil) -> RunWrite {
    RunWrite(run: run, previousVersion: previousVersion, nextDeadline: deadline, partition: partition)
}

func key(_ run: String, _ command: String) -> CommandKey { CommandKey(runID: run, commandID: command) }

let started = CommandOutcome(command: "start", error: nil)

/// Whether `error` is a `StoreError` with `code`.
func isStoreError(_ error: any Error, _ code: StoreError.Code) -> Bool { (error as? StoreError)?.code == code }

/// Everything a store holds that a commit can write, for checking that nothing was.
struct Contents: Equatable {
    var runs: [String]
    var outbox: [Int64]
    var outcomes: [CommandKey: CommandOutcome]

    init(_ store: any RunStore, outcomes keys: Set<CommandKey>) async throws {
        runs = try await store.runs(status: nil, agentID: nil, limit: 1_000).map(\.runID).sorted()
        outbox = try await store.pendingOutbox(writtenBefore: ms(.max), limit: 1_000).map(\.id)
        outcomes = try await store.load(runIDs: [], commands: keys).outcomes
    }
}
