import Foundation
import RunContract
import RunWorkerTestKit
import RunTestSupport
import Testing

@Suite(.serialized, .requiresBroker, .ownThread) struct StoreStallTests {
    /// A store transaction that waits longer than the broker's heartbeat timeout (another
    /// process holds SQLite's write lock for 6 s; heartbeats every second) does not cost the
    /// worker its connection: heartbeats and confirms go on while the store works off the
    /// loop's thread, and the command completes in the same session.
    @Test func storeStallKeepsTheConnection() throws {
        let prefix = uniquePrefix("stall")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let store = tempStore(prefix)
        let worker = try WorkerProcess(prefix: prefix, store: store, extraEnv: ["RUNWORKER_AMQP_URL": amqpURL + "?heartbeat=1"])
        try worker.waitReady()
        #expect(try client.call(["command": "start", "run_id": "warm"], id: "w1").ok)

        let marker = NSTemporaryDirectory() + "\(prefix).locked"
        defer { try? FileManager.default.removeItem(atPath: marker) }
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        holder.arguments = [
            "python3", "-c",
            """
            import sqlite3, sys, time
            c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
            c.execute('BEGIN IMMEDIATE')
            open(sys.argv[2], 'w').close()
            time.sleep(6)
            c.execute('COMMIT')
            """,
            storePath(store), marker,
        ]
        try holder.run()
        defer { _ = try? holder.waitForExitOrKill("sqlite lock holder", timeout: 20) }
        try waitUntil("the lock holder took SQLite's write lock", timeout: 10) {
            FileManager.default.fileExists(atPath: marker)
        }

        let sent = Date()
        let reply = try client.call(["command": "start", "run_id": "r1"], id: "c1")
        let waited = Date().timeIntervalSince(sent)
        #expect(reply.ok)
        #expect(waited > 3, "the command did not wait for the lock (\(waited) s): the test proves nothing")
        #expect(worker.status?.counters.connections == 1, "the worker lost its connection while the store was busy:\n\(worker.log)")
        #expect(worker.terminate() == 0)
    }
}
