import AMQPClient
import Foundation
import RunContract
import RunStore
import RunStores
import RunWorkerTestKit
import RunTestSupport
import Testing

@testable import RunWorker

/// Step `step` (0 start, 1 require_action, 2 complete_action, 3 complete) of run `run-<i>`'s
/// life, and its command id.
func lifecycleCommand(run i: Int, step: Int) -> (command: JSONValue, id: String) {
    let id = "run-\(i)"
    let command: JSONValue
    switch step {
    case 0: command = ["command": "start", "run_id": .string(id)]
    case 1: command = ["command": "require_action", "run_id": .string(id),
                       "action": ["id": "a", "type": "tool_call", "tool": "t", "args": ["i": .int(Int64(i))]]]
    case 2: command = ["command": "complete_action", "run_id": .string(id), "action_id": "a", "result": .int(Int64(i))]
    default: command = ["command": "complete", "run_id": .string(id)]
    }
    return (command, "\(id)-s\(step)")
}

/// Publishes the four commands of `runs` runs interleaved (every run's step 1, then every
/// run's step 2, ...), in order on one channel, without waiting for replies.
func publishLifecycles(_ client: ContractClient, runs: Range<Int>, steps: Range<Int> = 0..<4) throws {
    for step in steps {
        for i in runs {
            let (command, id) = lifecycleCommand(run: i, step: step)
            try client.send(command, id: id, reply: false)
        }
        try client.confirmAll()
    }
}

/// Checks every run's events: the lifecycle in order, seq gapless from 1, each seq first seen
/// after the one before it, duplicates (same seq) identical; no command was refused. Returns
/// how many events came more than once.
@discardableResult
func checkLifecycles(events: [RunEvent], rejections: [CommandRejected], runs: Int) -> Int {
    #expect(rejections.isEmpty, "rejections: \(rejections.prefix(3))")
    var byRun: [String: [Int64: RunEvent]] = [:]
    var repeats = 0
    for e in events {
        if let seen = byRun[e.runID]?[e.seq] {
            repeats += 1
            #expect(seen == e, "a repeated seq must be the same event: \(e.runID) seq \(e.seq)")
        } else {
            let highest = byRun[e.runID]?.keys.max() ?? 0
            #expect(e.seq == highest + 1, "\(e.runID): seq \(e.seq) first seen after seq \(highest)")
        }
        byRun[e.runID, default: [:]][e.seq] = e
    }
    #expect(byRun.count == runs)
    for (run, events) in byRun {
        #expect(events.keys.sorted() == [1, 2, 3, 4, 5], "\(run): seqs \(events.keys.sorted())")
        #expect((1...5).compactMap { events[$0]?.type } == [.created, .started, .actionRequired, .actionCompleted, .completed],
                "\(run)")
    }
    return repeats
}

func checkLifecycles(_ client: ContractClient, runs: Int) throws {
    checkLifecycles(events: client.runEvents, rejections: client.rejections, runs: runs)
}

/// Starts two workers on one store and waits until they split the 4 partitions evenly.
func startTwoWorkers(
    prefix: String, store: String, extraEnv: [String: String] = [:]
) throws -> (WorkerProcess, WorkerProcess) {
    let a = try WorkerProcess(prefix: prefix, store: store, extraEnv: extraEnv)
    let b = try WorkerProcess(prefix: prefix, store: store, extraEnv: extraEnv)
    try a.waitReady()
    try b.waitReady()
    try WorkerProcess.waitBalanced([a, b], partitions: 4, timeout: 10)
    return (a, b)
}

@Suite(.serialized, .requiresBroker, .ownThread) struct MultiWorkerTests {
    /// Two workers share the partitions and the SQLite file; 200 runs' commands interleaved
    /// are all applied in order, once.
    @Test func twoWorkersTwoHundredRuns() async throws {
        let prefix = uniquePrefix("two")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let store = tempStore(prefix)
        let (a, b) = try startTwoWorkers(prefix: prefix, store: store)
        #expect(a.ownedPartitions.count == 2 && b.ownedPartitions.count == 2)
        #expect(a.ownedPartitions.isDisjoint(with: b.ownedPartitions))

        try publishLifecycles(client, runs: 0..<200)
        // Distinct events: a batch republished (a lease lost under load, say) repeats some.
        try client.waitForEvents(timeout: 60) { _ in Set(client.runEvents.map(\.eventID)).count >= 1000 }
        try checkLifecycles(client, runs: 200)
        let runs = try await openRunStore(url: store).runs(status: .completed, agentID: nil, limit: 1000)
        #expect(runs.count == 200 && runs.allSatisfy { $0.version == 5 })
        #expect(a.terminate() == 0)
        #expect(b.terminate() == 0)
        // Both did work, and no command was applied twice (final counters, written at exit).
        // A batch applied but not acked (its partition moved on) comes back as a duplicate, so
        // applied and duplicates together cover the 800.
        let counters = [a, b].compactMap { $0.status?.counters }
        let applied: [Int] = counters.map(\.applied)
        let totalApplied: Int = applied.reduce(0, +)
        let totalDuplicates: Int = counters.map(\.duplicates).reduce(0, +)
        #expect(applied.allSatisfy { $0 > 0 } && totalApplied <= 800, "applied per worker: \(applied)")
        #expect(totalApplied + totalDuplicates >= 800, "applied \(totalApplied), duplicates \(totalDuplicates)")
    }

    /// One of two workers killed with SIGKILL mid-stream: the other takes over its
    /// partitions; nothing is lost, nothing applied twice, every run's seq is gapless.
    @Test func killOneWorkerMidStream() async throws {
        let prefix = uniquePrefix("kill")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let store = tempStore(prefix)
        let (a, b) = try startTwoWorkers(prefix: prefix, store: store, extraEnv: WorkerProcess.takeoverEnvironment)
        #expect(a.ownedPartitions.count == 2 && b.ownedPartitions.count == 2)
        try publishLifecycles(client, runs: 0..<300, steps: 0..<2)
        try client.waitForEvents(timeout: 30) { $0.count >= 100 }
        a.kill()
        try publishLifecycles(client, runs: 0..<300, steps: 2..<4)
        try client.waitForEvents(timeout: 60) { evs in
            Set(evs.filter { $0.routingKey.hasSuffix(".completed") }.map(\.routingKey)).count >= 300
        }
        try checkLifecycles(client, runs: 300)
        #expect(b.ownedPartitions.count == 4)
        let runs = try await openRunStore(url: store).runs(status: nil, agentID: nil, limit: 1000)
        #expect(runs.count == 300 && runs.allSatisfy { $0.status == .completed && $0.version == 5 })
        #expect(b.terminate() == 0)
    }

    /// A worker that joins later gets a share: the first releases partitions to it.
    @Test func lateJoinerGetsAShare() throws {
        let prefix = uniquePrefix("join")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let store = tempStore(prefix)
        let a = try WorkerProcess(prefix: prefix, store: store)
        try a.waitReady()
        #expect(a.ownedPartitions.count == 4)
        let b = try WorkerProcess(prefix: prefix, store: store)
        try b.waitReady()
        try WorkerProcess.waitBalanced([a, b], partitions: 4, timeout: 10)
        try publishLifecycles(client, runs: 0..<50)
        try client.waitForEvents(timeout: 30) { _ in Set(client.runEvents.map(\.eventID)).count >= 250 }
        try checkLifecycles(client, runs: 50)
        #expect(a.terminate() == 0)
        #expect(b.terminate() == 0)
    }
}
