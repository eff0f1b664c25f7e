import Foundation
import RunContract
import RunStore
import RunStores
import RunWorkerTestKit
import RunTestSupport
import Testing

/// The store, not the broker, decides who owns a partition. A worker that stalls (SIGSTOP) or
/// is cut off from the broker while its database still answers loses its partitions once its
/// leases run out, and from then on nothing of it lands: no write (its commits are fenced by
/// the lease epoch) and no event (it checks its leases before publishing).
@Suite(.serialized, .requiresBroker, .ownThread) struct FencingTests {
    /// Short leases and heartbeats, so that the takeover happens within seconds: the broker
    /// drops a silent worker's connection (and its exclusive consumers) after two heartbeats.
    static let leaseEnvironment = ["RUNWORKER_LEASE_TTL_S": "2"]
    /// Small batches, a small prefetch, and one batch in flight: after each commit the worker
    /// waits for the broker's confirms without holding SQLite's write lock, so that a SIGSTOP
    /// outside a write transaction (below) finds such a moment within a few tries. With 16
    /// batches in flight the next commit began at once, a busy worker almost always held the
    /// lock, and on CI the stop came only when it had applied everything.
    static let isolatedEnvironment = leaseEnvironment.merging([
        "RUNWORKER_BATCH_SIZE": "2", "RUNWORKER_PREFETCH": "16", "RUNWORKER_PIPELINE_DEPTH": "1",
    ]) { $1 }
    static func heartbeatURL(_ url: String, seconds: Int = 1) -> String { url + (url.contains("?") ? "&" : "?") + "heartbeat=\(seconds)" }

    /// A worker SIGSTOPped in the middle of a stream, holding every partition with deliveries
    /// in hand; a second worker takes the partitions over once the leases expire and finishes
    /// the stream. Then the first is resumed: not one write of it lands and not one event of
    /// it is published.
    @Test(arguments: StoreKind.durable) func suspendedWorkerIsFenced(kind: StoreKind) async throws {
        try await takeover(kind, name: "stop") { a, _, store in
            try await suspendOutsideWriteLock(a, store: store)
            return { a.resume() }
        }
    }

    /// SIGSTOP, at a moment the worker holds no SQLite write lock. A process frozen inside a
    /// write transaction keeps the file locked, and every other worker on the host waits for
    /// it: that is SQLite's single writer, not something a lease can change (PostgreSQL runs
    /// each commit as one statement on the server, which finishes it without the client).
    private func suspendOutsideWriteLock(_ a: WorkerProcess, store: String) async throws {
        a.suspend()
        guard store.hasPrefix("sqlite://") else { return }
        // A stopped worker does not release the lock: a short busy timeout is enough.
        let probe = try SQLiteRunStore(path: storePath(store), synchronous: .normal, busyTimeoutSeconds: 0.02)
        for attempt in 1...300 {
            // A write of its own (a membership row that expires at once) succeeds only when
            // no transaction holds the lock.
            if (try? await probe.heartbeat(workerID: "lock-probe", ttl: 0.001)) != nil {
                print("stopped outside a write transaction at attempt \(attempt)")
                return
            }
            // A blocking sleep, not `Task.sleep`: on a loaded machine an awaiting test resumes
            // late (seconds, on CI), and A ran free all that time.
            a.resume()
            usleep(UInt32.random(in: 1_000...10_000))
            a.suspend()
        }
        a.resume()
        throw TestKitError(.timedOut, "could not stop the worker outside a write transaction")
    }

    /// The same with the worker's broker connection cut (a relay that stops forwarding without
    /// closing anything) while its database connection stays: it stops renewing its leases, a
    /// second worker takes over, and when the network heals nothing of the first lands.
    @Test(arguments: StoreKind.durable) func cutOffWorkerIsFenced(kind: StoreKind) async throws {
        try await takeover(kind, name: "cut", throughRelay: true) { _, relay, _ in
            relay!.cut()
            return { relay!.heal() }
        }
    }

    /// A worker stalled past its leases while its broker connection survives (no heartbeats, so
    /// the broker keeps its consumers and their deliveries): when it resumes, it must find out
    /// from the store that its leases are gone before it writes or publishes anything, and
    /// hand the partitions over. Deterministic: every one of its four leases is reported lost.
    @Test(arguments: StoreKind.durable) func stalledWorkerChecksItsLeasesFirst(kind: StoreKind) async throws {
        if kind == .postgres, !TestPostgres.available {
            try Test.cancel("needs a PostgreSQL at RUNWORKER_TEST_POSTGRES_URL; scripts/test starts one")
        }
        let prefix = uniquePrefix("stall")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let (store, cleanUp) = kind.workerStore(prefix)
        defer { cleanUp() }
        let noHeartbeat = Self.heartbeatURL(amqpURL, seconds: 0)
        let a = try WorkerProcess(prefix: prefix, store: store, extraEnv: Self.isolatedEnvironment, amqpURL: noHeartbeat)
        try a.waitReady(timeout: 120)
        try a.waitForStatus("A holds every partition") { $0.partitions.count == 4 }
        let b = try WorkerProcess(prefix: prefix, store: store, extraEnv: Self.leaseEnvironment)
        try WorkerProcess.waitBalanced([a, b], partitions: 4, timeout: 30)

        let runs = 400
        try publishLifecycles(client, runs: 0..<runs)
        try a.waitForStatus("A is working", timeout: 60) { $0.counters.applied >= 100 }
        try await suspendOutsideWriteLock(a, store: store)
        // B takes A's leases once they expire, but not A's queues: A's consumers are still there.
        try await Task.sleep(for: .seconds(4))
        #expect(b.ownedPartitions.count == 2, "B cannot consume A's queues while A's connection lives")
        a.resume()
        try a.waitForStatus("A dropped its partitions", timeout: 30) { $0.counters.leasesLost >= 2 }
        try client.waitForEvents(timeout: 120) { _ in
            Set(client.runEvents.filter { $0.type == .completed }.map(\.runID)).count >= runs
        }
        checkLifecycles(events: client.runEvents, rejections: client.rejections, runs: runs)
        let stored = try await storedRuns(store)
        #expect(stored.count == runs && stored.values.allSatisfy { $0.status == .completed && $0.version == 5 })
        print("stall \(kind): A \(a.status.map { "\($0.counters)" } ?? "-"), B \(b.status.map { "\($0.counters)" } ?? "-")")
        #expect(a.terminate() == 0)
        #expect(b.terminate() == 0)
    }

    /// Worker A takes all partitions and starts on 800 runs; `isolate` stops it mid-stream and
    /// returns what ends the isolation. Worker B takes over and finishes; the outbox drains; then
    /// A comes back, and until it has exited nothing may change: no event, no stored run.
    private func takeover(
        _ kind: StoreKind, name: String, throughRelay: Bool = false,
        isolate: (WorkerProcess, TCPRelay?, String) async throws -> () -> Void
    ) async throws {
        if kind == .postgres, !TestPostgres.available {
            try Test.cancel("needs a PostgreSQL at RUNWORKER_TEST_POSTGRES_URL; scripts/test starts one")
        }
        let prefix = uniquePrefix(name)
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let (store, cleanUp) = kind.workerStore(prefix)
        defer { cleanUp() }
        let brokerURL = URLComponents(string: amqpURL)
        let relay = throughRelay ? try TCPRelay(toHost: brokerURL?.host ?? "127.0.0.1", port: brokerURL?.port ?? 5672) : nil
        defer { relay?.stop() }

        // Small batches keep A busy for a while, so that it is isolated mid-stream, with
        // deliveries in hand and, often, a commit or a publish under way. A small prefetch keeps
        // what the broker sends a stopped A within the socket buffers: a broker blocked writing
        // to a full socket notices the missed heartbeats only after its send timeout (15 s).
        let a = try WorkerProcess(
            prefix: prefix, store: store, extraEnv: Self.isolatedEnvironment,
            amqpURL: Self.heartbeatURL(relay?.url(replacing: amqpURL) ?? amqpURL))
        try a.waitReady(timeout: 120)
        try a.waitForStatus("A holds every partition") { $0.partitions.count == 4 }

        // A works through the stream with one small batch in flight (`isolatedEnvironment`), so
        // it is far from done when it is isolated (with SIGSTOP: after a few tries, at most a
        // few milliseconds of running each; the check below says whether that held).
        let runs = 800
        try publishLifecycles(client, runs: 0..<runs)
        try a.waitForStatus("A is working", timeout: 60) { $0.counters.applied >= 200 }
        let end = try await isolate(a, relay, store)
        let appliedByA = a.status?.counters.applied ?? 0
        let sessionsOfA = a.status?.counters.connections ?? 0
        // Well short of all 4 commands per run: B must take over a real part of the stream.
        #expect(appliedByA < 2 * runs, "A applied \(appliedByA) of \(4 * runs) commands before it was isolated: too few left for the test to prove anything")

        let b = try WorkerProcess(
            prefix: prefix, store: store, extraEnv: Self.leaseEnvironment, amqpURL: Self.heartbeatURL(amqpURL))
        try b.waitForStatus("B took every partition", timeout: 90) { $0.partitions.count == 4 }
        try client.waitForEvents(timeout: 120) { _ in
            Set(client.runEvents.filter { $0.type == .completed }.map(\.runID)).count >= runs
        }
        try await withStoreReader(store) { reader in
            try await eventually("B's outbox drained", timeout: 30) {
                try await reader.pendingOutbox(writtenBefore: Timestamp(milliseconds: .max), limit: 1).isEmpty
            }
        }
        // B's outbox is empty, so all it published is confirmed: the sentinel brings it all in.
        try client.drainUntilSentinel()
        let eventsBefore = client.events.count
        let storedBefore = try await storedRuns(store)
        #expect(storedBefore.count == runs)
        #expect(storedBefore.values.allSatisfy { $0.status == .completed && $0.version == 5 })
        let leasesBefore = try await withStoreReader(store) { try await $0.leases() }

        // A comes back to partitions that are no longer its own. Once it has connected again (a
        // new session: it has swept, claimed and published whatever it would) and holds no
        // partition, it is stopped (SIGTERM: it finishes what it has in hand) and the sentinel
        // brings in all it published: the checks cover everything A did until its exit.
        end()
        try a.waitForStatus("A connected again, holding no partition", timeout: 60) {
            $0.connected && $0.counters.connections > sessionsOfA && $0.partitions.isEmpty
        }
        #expect(a.terminate() == 0)
        try client.drainUntilSentinel()
        let late = client.events[eventsBefore...].map { "\($0.properties.type ?? "?") \($0.routingKey)" }
        #expect(late.isEmpty, "events published after the takeover: \(late.prefix(5))")
        let storedAfter = try await storedRuns(store)
        #expect(storedAfter == storedBefore, "stored runs changed after the takeover")
        // B took every lease with a newer epoch than A's.
        #expect(leasesBefore.count == 4 && leasesBefore.allSatisfy { $0.epoch >= 2 })
        checkLifecycles(events: client.runEvents, rejections: client.rejections, runs: runs)
        let statusA = a.status
        print("\(name) \(kind): \(runs) runs, A \(statusA.map { "\($0.counters)" } ?? "-")")

        #expect(b.terminate() == 0)
    }

    /// Every stored run by id.
    private func storedRuns(_ store: String) async throws -> [String: Run] {
        try await withStoreReader(store) { reader in
            Dictionary(uniqueKeysWithValues: try await reader.runs(status: nil, agentID: nil, limit: 10_000).map { ($0.runID, $0) })
        }
    }
}

/// Opens the store at `url` for reading (running a PostgreSQL store's client meanwhile).
func withStoreReader<T>(_ url: String, _ body: (any RunStore) async throws -> T) async throws -> T {
    let store = try openRunStore(url: url)
    let client: Task<Void, Error>? = (store as? PostgresRunStore).map { pg in Task { try await pg.run() } }
    defer { client?.cancel() }
    return try await body(store)
}

