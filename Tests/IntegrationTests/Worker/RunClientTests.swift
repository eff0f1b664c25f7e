import AMQPClient
import Foundation
import RunClient
import RunWorker
import RunWorkerTestKit
import Synchronization
import RunTestSupport
import Testing

/// Gathers what a subscription yields, in a task of its own, so that a test can wait for it
/// with a deadline.
final class UpdateCollector: Sendable {
    private let updates = Mutex<[RunUpdate]>([])
    private let task = Mutex<Task<Void, Never>?>(nil)

    static func start(_ stream: EventStream) -> UpdateCollector {
        let c = UpdateCollector()
        c.task.withLock {
            $0 = Task {
                do { for try await u in stream { c.updates.withLock { $0.append(u) } } } catch {}
            }
        }
        return c
    }

    var all: [RunUpdate] { updates.withLock { $0 } }

    /// The updates once `done` holds for them; throws after `timeout` seconds.
    @discardableResult
    func wait(_ what: String, timeout: Double = 20, until done: ([RunUpdate]) -> Bool) async throws -> [RunUpdate] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let now = all
            if done(now) { return now }
            guard Date() < deadline else { throw TestKitError(.timedOut, "\(what) after \(timeout) s; got \(now.map(Self.short))") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    func stop() { task.withLock { $0?.cancel() } }

    /// `e3:action_required`, `rejected:run_exists`, `gap:3..<5`, `reconnected`.
    static func short(_ u: RunUpdate) -> String {
        switch u {
        case .event(let e): "e\(e.seq):\(e.type.rawValue)"
        case .rejected(let r): "rejected:\(r.error.code.rawValue)"
        case .gap(_, let expected, let got): "gap:\(expected)..<\(got)"
        case .reconnected: "reconnected"
        case .unrecognized(let u): "unrecognized:\(u.type ?? "?")"
        }
    }
}

@Suite(.serialized, .requiresBroker, .ownThread) struct RunClientTests {
    /// A run driven through RunClient: replies as snapshots, a refusal as a typed `RunError`,
    /// the run's events in order without gaps, and a repeated event dropped.
    @Test func drivesARun() async throws {
        let prefix = uniquePrefix("rclient")
        let store = tempStore(prefix)
        let topology = Topology(prefix: prefix, partitions: 4)
        defer {
            deleteTopology(topology, url: amqpURL)
            removeTempStore(store)
        }
        let worker = try WorkerProcess(prefix: prefix, store: store)
        defer { _ = worker.terminate() }
        try worker.waitReady()
        let client = try RunClient(url: amqpURL, prefix: prefix)
        defer { client.close() }

        let events = UpdateCollector.start(try await client.subscribe(runID: "rc-1", after: 0))
        defer { events.stop() }
        var run = try await client.call(.start(runID: "rc-1", agentID: "test", input: ["q": "2 + 2"], commandID: "c-1"))
        #expect(run.status == .running && run.version == 2 && run.agentID == "test")

        // A refusal: thrown as the contract's error, with its code and message.
        do {
            try await client.send(.create(runID: "rc-1", commandID: "c-2"))
            Issue.record("create of an existing run was accepted")
        } catch let error as RunError {
            #expect(error.code == .runExists, "\(error)")
            #expect(!error.message.isEmpty)
        }

        // A repeat of event 2 (as a worker publishing again after a crash would) is dropped.
        try await events.wait("started") { $0.contains { if case .event(let e) = $0 { e.seq == 2 } else { false } } }
        let copy = try #require(events.all.compactMap { if case .event(let e) = $0, e.seq == 2 { e } else { nil } }.first)
        let conn = try BlockingConnection(url: amqpURL)
        defer { conn.close() }
        let ch = try conn.openChannel()
        try conn.confirmSelect(channel: ch)
        _ = try conn.publish(channel: ch, exchange: topology.eventsExchange, routingKey: copy.routingKey, body: copy.encode(),
                             properties: AMQPProperties(deliveryMode: 2, messageID: copy.eventID, type: copy.type.rawValue))
        #expect(try conn.waitForConfirms(channel: ch, timeout: 10).allAcked)

        run = try await client.call(.requireAction(runID: "rc-1", .toolCall("add", args: ["a": 2, "b": 2], id: "a-1")))
        #expect(run.status == .waiting && run.pendingActions.map(\.id) == ["a-1"])
        run = try await client.call(.completeAction(runID: "rc-1", actionID: "a-1", result: 4))
        #expect(run.status == .running)
        // Not awaiting the reply: returns once the broker has it.
        #expect(try await client.send(.complete(runID: "rc-1", result: ["answer": 4]), awaitReply: false) == nil)

        let got = try await events.wait("the run's events") {
            $0.contains { if case .event(let e) = $0 { e.type == .completed } else { false } }
        }
        #expect(got.map(UpdateCollector.short)
            == ["e1:created", "e2:started", "rejected:run_exists", "e3:action_required", "e4:action_completed", "e5:completed"])
        // The same command id again: answered with its first outcome (ok, where a new start
        // would be refused), not applied again.
        run = try await client.call(.start(runID: "rc-1", commandID: "c-1"))
        #expect(run.version == 5 && run.status == .completed)
        await #expect(throws: RunClientError.self) {
            try await client.send(.cancel(runID: "not a run id"))
        }
        #expect(worker.terminate() == 0)
    }

    /// Transport failures are `RunClientError`s with a code, and come at once: no worker with
    /// the prefix (no exchange, or no queue bound), no broker at all.
    @Test func transportFailures() async throws {
        let nobody = try RunClient(url: amqpURL, prefix: uniquePrefix("nobody"))
        defer { nobody.close() }
        for awaitReply in [true, false] {
            do {
                try await nobody.send(.start(runID: "r"), awaitReply: awaitReply)
                Issue.record("sent to a prefix without exchanges")
            } catch let error as RunClientError {
                #expect(error.code == .unroutable, "\(error)")
            }
        }
        // The exchange exists but no queue is bound to it (basic.return).
        let prefix = uniquePrefix("unbound")
        let topology = Topology(prefix: prefix, partitions: 4)
        defer { deleteTopology(topology, url: amqpURL) }
        let conn = try BlockingConnection(url: amqpURL)
        defer { conn.close() }
        try conn.exchangeDeclare(channel: try conn.openChannel(), name: topology.commandsExchange, type: .direct, durable: true)
        let unbound = try RunClient(url: amqpURL, prefix: prefix)
        defer { unbound.close() }
        do {
            try await unbound.send(.start(runID: "r"))
            Issue.record("sent to an exchange without queues")
        } catch let error as RunClientError {
            #expect(error.code == .unroutable, "\(error)")
        }

        // Deadlines of two minutes: a client that retried instead of failing would answer only
        // then (with another code). The bound below is far from both that and scheduling noise
        // (a loaded CI machine once took 17 s to run this test's continuations).
        var configuration = try RunClientConfiguration(url: "amqp://guest:guest@127.0.0.1:1/", prefix: "runs", replyTimeout: 120)
        configuration.confirmTimeout = 120
        let closedPort = try RunClient(configuration: configuration)
        defer { closedPort.close() }
        let started = Date()
        do {
            try await closedPort.send(.start(runID: "r"))
            Issue.record("sent without a broker")
        } catch let error as RunClientError {
            #expect(error.code == .connectionFailed, "\(error)")
        }
        do {
            _ = try await closedPort.subscribe(binding: "run.#")
            Issue.record("subscribed without a broker")
        } catch let error as RunClientError {
            #expect(error.code == .connectionFailed, "\(error)")
        }
        #expect(Date().timeIntervalSince(started) < 60)
    }

    /// The client's connections go through a relay that is cut and then closed: the
    /// subscription reconnects and reports the gap (or reads the missed events back from the
    /// worker's history), and a command published into the cut is published again after the
    /// reconnect and applied once.
    @Test func reconnects() async throws {
        let prefix = uniquePrefix("rclient-re")
        let store = tempStore(prefix)
        defer {
            deleteTopology(Topology(prefix: prefix, partitions: 4), url: amqpURL)
            removeTempStore(store)
        }
        let worker = try WorkerProcess(prefix: prefix, store: store)
        defer { _ = worker.terminate() }
        try worker.waitReady()
        // One relay for the sender's connection, one for the subscriptions': healed one after
        // the other, so that the subscriptions are bound again before the command goes out again.
        let broker = try AMQPConfiguration(url: amqpURL)
        let senderRelay = try TCPRelay(toHost: broker.host, port: broker.port)
        let eventsRelay = try TCPRelay(toHost: broker.host, port: broker.port)
        defer { senderRelay.stop(); eventsRelay.stop() }

        var configuration = try RunClientConfiguration(url: senderRelay.url(replacing: amqpURL), prefix: prefix)
        configuration.reconnect = ReconnectPolicy(initialDelay: 0.05, maxDelay: 0.5)
        let sender = try RunClient(configuration: configuration)
        defer { sender.close() }
        configuration.amqp = try AMQPConfiguration(url: eventsRelay.url(replacing: amqpURL))
        let plainClient = try RunClient(configuration: configuration)
        defer { plainClient.close() }
        let http = try #require(worker.httpBase)
        configuration.historyURL = http
        let historyClient = try RunClient(configuration: configuration)
        defer { historyClient.close() }
        let direct = try RunClient(url: amqpURL, prefix: prefix)
        defer { direct.close() }

        let plain = UpdateCollector.start(try await plainClient.subscribe(runID: "rr-1", after: 0))
        let filled = UpdateCollector.start(try await historyClient.subscribe(runID: "rr-1", after: 0))
        defer { plain.stop(); filled.stop() }
        try await sender.send(.start(runID: "rr-1"))
        for c in [plain, filled] { try await c.wait("2 events") { $0.count == 2 } }

        // Cut: what the relays carry is dropped. Meanwhile the run moves on (events 3 and 4),
        // and a command is published into the cut.
        senderRelay.cut()
        eventsRelay.cut()
        try await direct.send(.requireAction(runID: "rr-1", .toolCall("add", args: [:], id: "a-1")))
        try await direct.send(.completeAction(runID: "rr-1", actionID: "a-1", result: 1))
        let stuck = Task { try await sender.call(.complete(runID: "rr-1", result: "done", commandID: "final"), timeout: 30) }
        try await Task.sleep(for: .milliseconds(300))
        // Healing closes the cut connections: the clients see the loss at once and reconnect.
        eventsRelay.heal()
        for c in [plain, filled] {
            try await c.wait("reconnected") { $0.contains(.reconnected) }
        }
        senderRelay.heal()

        let run = try await stuck.value
        #expect(run.status == .completed && run.version == 5, "applied once, after the reconnect")
        let p = try await plain.wait("plain: the completed event") { $0.contains { if case .event(let e) = $0 { e.seq == 5 } else { false } } }
        #expect(p.map(UpdateCollector.short) == ["e1:created", "e2:started", "reconnected", "gap:3..<5", "e5:completed"])
        let f = try await filled.wait("filled: the completed event") { $0.contains { if case .event(let e) = $0 { e.seq == 5 } else { false } } }
        #expect(f.map(UpdateCollector.short)
            == ["e1:created", "e2:started", "reconnected", "e3:action_required", "e4:action_completed", "e5:completed"])

        // The client-side hook does the same without a relay.
        let events = try await direct.subscribe(runID: "rr-2", after: 0)
        let hooked = UpdateCollector.start(events)
        defer { hooked.stop() }
        try await direct.send(.start(runID: "rr-2"))
        try await hooked.wait("2 events") { $0.count == 2 }
        events.simulateConnectionLoss()
        try await hooked.wait("reconnected") { $0.count == 3 }
        try await direct.send(.cancel(runID: "rr-2"))
        let h = try await hooked.wait("cancelled") { $0.count == 4 }
        #expect(h.map(UpdateCollector.short) == ["e1:created", "e2:started", "reconnected", "e3:cancelled"])
        #expect(worker.terminate() == 0)
    }

    /// The README's agent (docs/examples/swift-agent) runs against a worker, and so does its
    /// pika twin (docs/examples/pika_agent.py): neither can rot.
    @Test func exampleAgents() throws {
        let prefix = uniquePrefix("agent")
        let store = tempStore(prefix)
        defer {
            deleteTopology(Topology(prefix: prefix, partitions: 4), url: amqpURL)
            removeTempStore(store)
        }
        let worker = try WorkerProcess(prefix: prefix, store: store)
        defer { _ = worker.terminate() }
        try worker.waitReady()
        var env = ProcessInfo.processInfo.environment
        env["RUNWORKER_AMQP_URL"] = amqpURL
        env["RUNWORKER_PREFIX"] = prefix
        let expected = ["event #1 created: created", "event #2 started: running", "event #3 action_required: waiting",
                        "event #4 action_completed: running", "event #5 completed: completed"]

        let swift = try runProgram(binDir.appendingPathComponent("example-agent").path, ["swift-agent-1"], environment: env,
                                   timeout: 60)
        #expect(swift.status == 0, "\(swift.output)")
        #expect(swift.output.split(separator: "\n").map(String.init) == expected + ["swift-agent-1 completed, answer 4"])

        let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("docs/examples")
        let pika = try runProgram("/usr/bin/env", ["python3", examples.appendingPathComponent("pika_agent.py").path, "pika-agent-1"],
                                  environment: env, timeout: 60)
        #expect(pika.status == 0, "\(pika.output)")
        #expect(pika.output.split(separator: "\n").map(String.init) == expected + ["pika-agent-1 completed, answer 4"])
        #expect(worker.terminate() == 0)
    }
}
