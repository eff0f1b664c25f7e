import AMQPClient
import Foundation
import RunContract
import RunStore
import Testing

@testable import RunWorker

@Suite(.serialized) struct PoisonTests {
    /// A command that can never be applied (its run's stored row is corrupt) is retried a
    /// bounded number of times with pauses, then dead-lettered with the last error, while
    /// other runs' commands go on.
    @Test func poisonMessageDeadLetteredAfterLimit() throws {
        let prefix = uniquePrefix("poison")
        let store = tempStore(prefix)
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: store, extraEnv: ["RUNWORKER_DELIVERY_LIMIT": "3"])
        try worker.waitReady()
        #expect(try client.call(["command": "start", "run_id": "bad"], id: "b1").ok)

        // Damage the stored run behind the worker's back.
        let path = String(store.dropFirst("sqlite://".count))
        let python = Process()
        python.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        python.arguments = ["python3", "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE runs SET body=x'7b7d' WHERE run_id='bad'\"); c.commit()",
            path]
        try python.run()
        python.waitUntilExit()
        #expect(python.terminationStatus == 0)

        try client.send(["command": "complete", "run_id": "bad"], id: "b2", reply: false)
        for i in 0..<20 { try client.send(["command": "start", "run_id": .string("ok\(i)")], id: "o\(i)", reply: false) }
        try client.confirmAll()

        var dead: AMQPDelivery?
        let ch = try client.conn.openChannel()
        let deadline = Date().addingTimeInterval(20)
        while dead == nil, Date() < deadline {
            dead = try client.conn.get(channel: ch, queue: client.topology.deadQueue, noAck: true)
            if dead == nil { Thread.sleep(forTimeInterval: 0.05) }
        }
        let d = try #require(dead)
        #expect(d.properties.messageID == "b2")
        #expect(d.properties.headers?["x-reason"] == .string("delivery_limit_exceeded"))
        #expect(d.properties.headers?["x-reason-message"]?.stringValue?.contains("cannot be decoded") == true)
        #expect(d.properties.headers?["x-delivery-attempts"]?.int64Value == 3)
        try client.waitForEvents(timeout: 10) { evs in evs.filter { $0.routingKey.hasSuffix(".started") && !$0.routingKey.contains(".bad.") }.count >= 20 }
        // Bounded: it failed exactly the limit's number of times, no hot loop.
        let failures = worker.log.components(separatedBy: "command failed").count - 1
        #expect(failures == 3, "\(failures) failures logged")
        #expect(worker.process.isRunning)
        #expect(worker.terminate() == 0)
    }
}
