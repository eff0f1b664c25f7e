import AMQPClient
import Foundation
import RunContract
import RunStore
import RunStores
import RunWorkerTestKit
import RunTestSupport
import Testing

@testable import RunWorker

// partition_queue_type=quorum on the shared broker (single active consumer, the declared
// arguments, queues of the other kind), and a worker that loses its node in a 3-node cluster
// (scripts/rabbit-cluster).

/// scripts/rabbit-cluster, from this file's path (Tests/IntegrationTests/Worker/<file>).
private let clusterScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("scripts/rabbit-cluster").path

/// scripts/rabbit-cluster needs root (or password-less sudo) and an installed RabbitMQ.
private let canRunCluster: Bool = {
    guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/rabbitmq-server")
        || FileManager.default.isExecutableFile(atPath: "/usr/lib/rabbitmq/bin/rabbitmq-server") else { return false }
    return getuid() == 0 || (try? runProgram("/usr/bin/sudo", ["-n", "true"], timeout: 10).status) == 0
}()

/// Runs scripts/rabbit-cluster; its output, or a `TestKitError` with it.
@discardableResult
private func cluster(_ arguments: String..., timeout: Double = 60) throws -> String {
    let r = try runProgram(clusterScript, arguments, timeout: timeout)
    guard r.status == 0 else {
        throw TestKitError(.cluster, "scripts/rabbit-cluster \(arguments.joined(separator: " ")) failed (\(r.status)):\n\(r.output)")
    }
    return r.output
}

extension TestKitError.Code {
    /// scripts/rabbit-cluster failed.
    static let cluster = Self("cluster")
}

/// Publishes `commands` in order and waits for the broker's confirms, publishing again, in
/// order, what it nacked (a quorum queue electing a new leader may refuse); the worker
/// recognises a repeat by its command id. Nothing else may publish on `client`'s channel: its
/// delivery tags are counted here (1, 2, ... per channel).
private func publishConfirmed(_ client: ContractClient, _ commands: [(command: JSONValue, id: String)],
                              nextTag: inout UInt64, timeout: Double = 30) throws {
    let deadline = Date().addingTimeInterval(timeout)
    var pending = commands
    while !pending.isEmpty {
        var byTag: [UInt64: Int] = [:]
        for (i, c) in pending.enumerated() {
            try client.send(c.command, id: c.id, reply: false)
            byTag[nextTag] = i
            nextTag += 1
        }
        let result = try client.conn.waitForConfirms(channel: client.channel, timeout: max(1, deadline.timeIntervalSinceNow))
        pending = result.nacked.sorted().compactMap { byTag[$0] }.map { pending[$0] }
        guard pending.isEmpty || Date() < deadline else {
            throw TestKitError(.notConfirmed, "the broker kept nacking \(pending.count) commands")
        }
    }
}

/// A worker on the shared broker with quorum partition queues.
private func quorumWorker(_ prefix: String, store: String, extraEnv: [String: String] = [:]) throws -> WorkerProcess {
    try WorkerProcess(prefix: prefix, store: store, extraEnv: ["RUNWORKER_PARTITION_QUEUE_TYPE": "quorum"].merging(extraEnv) { $1 })
}

@Suite(.serialized, .requiresBroker, .ownThread) struct QuorumPartitionTests {
    /// Quorum partition queues carry the declared arguments, and single active consumer keeps
    /// a second consumer of a partition idle while the worker consumes it; it takes over when
    /// the worker stops.
    @Test func secondConsumerGetsNothingWhileTheWorkerIsActive() throws {
        let prefix = uniquePrefix("sac")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try quorumWorker(prefix, store: tempStore(prefix))
        try worker.waitReady()
        try worker.waitForStatus("4 partitions", timeout: 10) { $0.partitions.count == 4 }

        let topology = Topology(prefix: prefix, partitions: 4)
        let other = try BlockingConnection(url: amqpURL)
        defer { other.close() }
        // The broker holds the queues to exactly these arguments: declaring them again is
        // accepted, and with single active consumer off it is refused.
        let expected: AMQPTable = [
            "x-queue-type": "quorum", "x-single-active-consumer": true, "x-delivery-limit": 5,
            "x-dead-letter-exchange": .string(topology.deadExchange),
        ]
        let declare = try other.openChannel()
        for q in topology.partitionQueues { try other.queueDeclare(channel: declare, name: q, durable: true, arguments: expected) }
        try other.queueDeclare(channel: declare, name: topology.deadQueue, durable: true, arguments: ["x-queue-type": "quorum"])
        var noSAC = expected
        noSAC["x-single-active-consumer"] = false
        #expect {
            try other.queueDeclare(channel: declare, name: topology.partitionQueue(0), durable: true, arguments: noSAC)
        } throws: { ($0 as? AMQPError)?.isPreconditionFailed == true }

        // A second consumer on every partition, as a second worker would be.
        let ch = try other.openChannel()
        try other.qos(channel: ch, prefetchCount: 50)
        for q in topology.partitionQueues { _ = try other.consume(channel: ch, queue: q) }

        try publishLifecycles(client, runs: 0..<50)
        try client.waitForEvents(timeout: 30) { _ in Set(client.runEvents.map(\.eventID)).count >= 250 }
        try checkLifecycles(client, runs: 50)
        var stolen: [AMQPDelivery] = []
        func drainOther(_ seconds: Double) throws {
            let until = Date().addingTimeInterval(seconds)
            while Date() < until {
                if let e = try other.nextEvent(timeout: 0.05), case .delivery(let d) = e { stolen.append(d) }
            }
        }
        try drainOther(0.5)
        #expect(stolen.isEmpty, "the second consumer got \(stolen.count) commands while the worker was active")
        try worker.waitForStatus("200 commands applied", timeout: 10) { $0.counters.applied == 200 }

        // The worker goes: the waiting consumer becomes the active one.
        #expect(worker.terminate() == 0)
        try client.send(lifecycleCommand(run: 99, step: 0).command, id: "after", reply: false)
        try client.confirmAll()
        try waitUntil("the second consumer did not take over", timeout: 10) {
            try drainOther(0.1)
            return stolen.contains { $0.properties.messageID == "after" }
        }
    }

    /// Queues of the other type, or with another delivery limit, stop the worker at once with
    /// a message naming the setting, instead of a reconnect loop.
    @Test func mismatchedQueuesStopTheWorker() throws {
        let prefix = uniquePrefix("mismatch")
        let topology = Topology(prefix: prefix, partitions: 4)
        defer { deleteTopology(topology, url: amqpURL) }
        let conn = try BlockingConnection(url: amqpURL)
        defer { conn.close() }
        let ch = try conn.openChannel()
        try conn.queueDeclare(channel: ch, name: topology.partitionQueue(2), durable: true)  // classic

        let first = try quorumWorker(prefix, store: tempStore(prefix))
        #expect(try first.process.waitForExitOrKill("a quorum worker against a classic queue", timeout: 30) != 0)
        #expect(first.log.contains("partition_queue_type = quorum") && first.log.contains(topology.partitionQueue(2)),
                "\(first.log)")
        #expect((first.status?.counters.connections ?? 0) == 0, "it must not have started a session: \(first.statusText)")

        // Quorum queues with delivery_limit 5, then a worker with another limit, then a classic one.
        try conn.queueDelete(channel: ch, queue: topology.partitionQueue(2))
        let second = try quorumWorker(prefix, store: tempStore(prefix))
        try second.waitReady()
        #expect(second.terminate() == 0)
        let third = try quorumWorker(prefix, store: tempStore(prefix), extraEnv: ["RUNWORKER_DELIVERY_LIMIT": "3"])
        #expect(try third.process.waitForExitOrKill("a worker with another delivery_limit", timeout: 30) != 0)
        #expect(third.log.contains("delivery_limit = 3"), "\(third.log)")
        let fourth = try WorkerProcess(prefix: prefix, store: tempStore(prefix))
        #expect(try fourth.process.waitForExitOrKill("a classic worker against quorum queues", timeout: 30) != 0)
        #expect(fourth.log.contains("partition_queue_type = classic"), "\(fourth.log)")
    }
}

@Suite(.serialized, .requiresBroker, .ownThread,
       .enabled(if: canRunCluster, "needs root or sudo and rabbitmq-server for scripts/rabbit-cluster"))
struct ClusterTests {
    /// A worker given all three nodes, with quorum partition queues, survives `kill -9` of the
    /// node it is connected to in the middle of 300 runs' commands: it moves to another node,
    /// takes its partitions back, and every run completes with events seq 1…5, gapless.
    @Test func workerSurvivesLosingItsNode() async throws {
        let runs = 300
        let t0 = Date()
        defer { _ = try? cluster("stop", timeout: 120) }
        try cluster("start", timeout: 120)
        let clusterStart = Date().timeIntervalSince(t0)
        let urls = try cluster("urls").trimmingCharacters(in: .whitespacesAndNewlines)
        let nodeURLs = urls.split(separator: ",").map(String.init)
        try #require(nodeURLs.count == 3)

        let prefix = uniquePrefix("cluster")
        let store = tempStore(prefix)
        let worker = try WorkerProcess(
            prefix: prefix, store: store, extraEnv: ["RUNWORKER_AMQP_URL": urls, "RUNWORKER_PARTITION_QUEUE_TYPE": "quorum"])
        defer { if worker.isRunning { worker.kill() } }
        try worker.waitReady()
        let ready = try worker.waitForStatus("4 partitions", timeout: 20) { $0.partitions.count == 4 }

        // Which node serves the worker: the one whose listener its connection (named
        // runworker-<id>) came in on.
        let connections = try cluster("ctl", "1", "list_connections", "port", "client_properties")
        let line = try #require(connections.split(separator: "\n").first { $0.contains("runworker-\(ready.workerID)") },
                                "no connection of worker \(ready.workerID):\n\(connections)")
        let port = try #require(Int(line.split(whereSeparator: { $0 == "\t" || $0 == " " }).first ?? ""))
        let victim = port - 5680
        try #require((1...3).contains(victim))
        let survivor = victim % 3 + 1

        // The queues as declared: quorum partition queues with single active consumer, the
        // delivery limit and the dead-letter exchange; a quorum dead-letter queue.
        let queues = try cluster("ctl", "\(survivor)", "list_queues", "name", "type", "arguments")
        for q in Topology(prefix: prefix, partitions: 4).partitionQueues {
            #expect(queues.contains(
                "\(q)\tquorum\t[{\"x-queue-type\",\"quorum\"},{\"x-single-active-consumer\",true},{\"x-delivery-limit\",5},"
                    + "{\"x-dead-letter-exchange\",\"\(prefix).dead\"}]"), "\(q): \(queues)")
        }
        #expect(queues.contains("\(prefix).dead\tquorum\t[{\"x-queue-type\",\"quorum\"}]"), "\(queues)")

        // Producer and subscriber on a node that stays up.
        let client = try ContractClient(amqpURL: nodeURLs[survivor - 1], prefix: prefix)
        var commands: [(command: JSONValue, id: String)] = []
        for step in 0..<4 { for i in 0..<runs { commands.append(lifecycleCommand(run: i, step: step)) } }
        /// The index in `commands` of the command behind an event (start gives seq 1 and 2).
        func commandIndex(_ e: RunEvent) -> Int? {
            guard let i = Int(e.runID.dropFirst("run-".count)) else { return nil }
            return ([0, 0, 0, 1, 2, 3][Int(min(e.seq, 5))]) * runs + i
        }
        // The kill, the first command published after it, and when that command's first event came.
        var killAt: Date?
        var killIndex: Int?
        var failover: Double?
        var seen = 0
        func observe(_ events: [ContractClient.Message]) {
            defer { seen = events.count }
            guard let killAt, let killIndex, failover == nil else { return }
            for m in events[seen...] where m.properties.type != "command_rejected" {
                if let e = try? RunEvent.decode(m.body), let i = commandIndex(e), i >= killIndex {
                    failover = Date().timeIntervalSince(killAt)
                    return
                }
            }
        }
        func explain() -> String {
            let kept = NSTemporaryDirectory() + "\(prefix)-worker.log"
            try? worker.log.write(toFile: kept, atomically: true, encoding: .utf8)
            let done = Set(client.runEvents.filter { $0.type == .completed }.map(\.runID)).count
            return "events \(client.events.count), runs completed \(done); status \(worker.statusText); worker log \(kept)"
        }

        var tag: UInt64 = 1
        let chunk = 60
        for start in stride(from: 0, to: commands.count, by: chunk) {
            if killAt == nil, start >= commands.count * 2 / 5 {
                // Timed from before the script, which waits for the node to leave epmd after the kill.
                killAt = Date()
                try cluster("kill", "\(victim)")
                killIndex = start
            }
            try publishConfirmed(client, Array(commands[start..<min(start + chunk, commands.count)]), nextTag: &tag)
            try client.drain(for: 0.02)
            observe(client.events)
        }
        do {
            try client.waitForEvents(timeout: 90) { events in
                observe(events)
                return Set(events.filter { $0.routingKey.hasSuffix(".completed") }.map(\.routingKey)).count >= runs
            }
        } catch {
            throw TestKitError(.timedOut, "\(error); \(explain())")
        }
        let repeats = checkLifecycles(events: client.runEvents, rejections: client.rejections, runs: runs)
        let status = try #require(worker.status)
        #expect(status.connected && status.counters.connections >= 2, "\(explain())")
        #expect(status.partitions.count == 4, "\(explain())")
        let all = try await openRunStore(url: store).runs(status: nil, agentID: nil, limit: 1000)
        #expect(all.count == runs && all.allSatisfy { $0.status == .completed && $0.version == 5 }, "\(explain())")

        // The node comes back and rejoins; the worker keeps going.
        let restartAt = Date()
        try cluster("restart", "\(victim)", timeout: 120)
        let restart = Date().timeIntervalSince(restartAt)
        #expect(worker.isRunning)
        #expect(worker.terminate() == 0)

        print("""
            cluster: start \(String(format: "%.1f", clusterStart)) s; worker on n\(victim), killed mid-stream \
            (client on n\(survivor)); first event of a command published after the kill \
            \(failover.map { String(format: "%.2f", $0) } ?? "-") s after it; sessions \(status.counters.connections), \
            duplicates \(status.counters.duplicates), outbox republished \(status.counters.outboxRepublished), \
            requeued \(status.counters.requeued); \(repeats) repeated events; n\(victim) restarted in \
            \(String(format: "%.1f", restart)) s
            """)
    }

    /// scripts/cluster-demo at CI's size: three workers in network namespaces of their own, a
    /// PostgreSQL and the 3-node cluster on addresses of their own, 300 runs streamed while the
    /// node leading most partitions is killed, a worker host is cut off for twice its lease and
    /// PostgreSQL restarts. Every run must complete as its commands say: nothing wrong, lost or
    /// applied twice, and each fault must end with commands answered again.
    @Test(.enabled(if: getuid() == 0, "network namespaces need root"))
    func clusterDemoAcrossNamespaces() throws {
        let script = URL(fileURLWithPath: clusterScript).deletingLastPathComponent().appendingPathComponent("cluster-demo").path
        let r = try runProgram(
            "/bin/bash", [script, "--runs", "300", "--rate", "100"],
            environment: ProcessInfo.processInfo.environment.merging(["RUNWORKER_BIN_DIR": binDir.path]) { $1 },
            timeout: 300)
        let summary = r.output.split(separator: "\n").last { $0.hasPrefix("cluster-demo runs ") }.map(String.init) ?? ""
        print(summary)
        #expect(r.status == 0, "\(r.output.suffix(4000))")
        let fields = summary.split(separator: " ").map(String.init)
        func value(_ name: String) -> String? { fields.firstIndex(of: name).flatMap { $0 + 1 < fields.count ? fields[$0 + 1] : nil } }
        #expect(value("runs") == "300", "\(summary)")
        #expect(value("wrong") == "0" && value("lost") == "0" && value("duplicated") == "0", "\(summary)")
        for fault in ["kill_node", "cut_worker", "restart_pg"] {
            let seconds = fields.first { $0.hasPrefix(fault + "=") }.flatMap { Double($0.dropFirst(fault.count + 1)) }
            #expect(seconds != nil, "\(fault) never served again: \(summary)")
        }
    }
}
