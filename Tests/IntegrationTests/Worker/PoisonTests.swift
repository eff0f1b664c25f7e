import AMQPClient
import Foundation
import RunContract
import RunStore
import RunWorkerTestKit
import RunTestSupport
import Testing

@testable import RunWorker

@Suite(.serialized, .requiresBroker, .ownThread) struct PoisonTests {
    /// A command that can never be applied (its run's stored row is corrupt) is retried a
    /// bounded number of times with pauses, then dead-lettered with the last error, while
    /// other runs' commands go on.
    @Test func poisonMessageDeadLetteredAfterLimit() throws {
        let prefix = uniquePrefix("poison")
        let store = tempStore(prefix)
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let first = try WorkerProcess(prefix: prefix, store: store)
        try first.waitReady()
        #expect(try client.call(["command": "start", "run_id": "bad"], id: "b1").ok)
        // Damage the stored run while no worker runs: a live one decides from the copy it
        // wrote (its run cache) and never reads the damaged row.
        #expect(first.terminate() == 0)
        let path = storePath(store)
        let python = try runProgram("/usr/bin/env", ["python3", "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE runs SET body=x'7b7d' WHERE run_id='bad'\"); c.commit()",
            path], timeout: 30)
        #expect(python.status == 0, "\(python.output)")
        let worker = try WorkerProcess(prefix: prefix, store: store, extraEnv: ["RUNWORKER_DELIVERY_LIMIT": "3"])
        try worker.waitReady()

        try client.send(["command": "complete", "run_id": "bad"], id: "b2", reply: false)
        for i in 0..<20 { try client.send(["command": "start", "run_id": .string("ok\(i)")], id: "o\(i)", reply: false) }
        try client.confirmAll()

        var dead: AMQPDelivery?
        let ch = try client.conn.openChannel()
        try waitUntil("nothing dead-lettered", timeout: 20, explain: { worker.log }) {
            dead = try client.conn.get(channel: ch, queue: client.topology.deadQueue, noAck: true)
            return dead != nil
        }
        let d = try #require(dead)
        #expect(d.properties.messageID == "b2")
        #expect(d.properties.headers?["x-reason"] == .string("delivery_limit_exceeded"))
        #expect(d.properties.headers?["x-reason-message"]?.stringValue?.contains("cannot be decoded") == true)
        #expect(d.properties.headers?["x-delivery-attempts"]?.int64Value == 3)
        try client.waitForEvents(timeout: 10) { evs in evs.filter { $0.routingKey.hasSuffix(".started") && !$0.routingKey.contains(".bad.") }.count >= 20 }
        #expect(worker.isRunning)
        #expect(worker.terminate() == 0)
        // Bounded: it failed exactly the limit's number of times, no hot loop (the status file's
        // last write, at exit, holds the final counters).
        let counters = try #require(worker.status, "no status file").counters
        #expect(counters.commandFailures == 3, "\(worker.statusText)")
        #expect(counters.poisonDeadLettered == 1, "\(worker.statusText)")
    }
}
