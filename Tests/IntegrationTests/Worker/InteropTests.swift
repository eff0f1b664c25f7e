import Foundation
import RunWorkerTestKit
import RunTestSupport
import Testing

@Suite(.serialized, .requiresBroker, .ownThread) struct InteropTests {
    /// A third-party client (pika, Python) drives a run through its life with nothing but
    /// the contract: replies, events, routing keys, ids, headers, a refusal and a duplicate.
    @Test func pikaDrivesARun() throws {
        let prefix = uniquePrefix("pika")
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: tempStore(prefix))
        try worker.waitReady()

        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("interop/pika_drive.py")
        let (status, output) = try runProgram("/usr/bin/env", ["python3", script.path, amqpURL, prefix, "pika-run-1"],
                                              timeout: 60)
        #expect(status == 0, "pika script: \(output)")
        #expect(output.contains("pika interop: ok"))
        #expect(worker.terminate() == 0)
    }
}
