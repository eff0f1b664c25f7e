import Foundation
import Testing

@testable import RunWorker

@Suite(.serialized) struct InteropTests {
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
        let python = Process()
        python.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        python.arguments = ["python3", script.path, amqpURL, prefix, "pika-run-1"]
        let out = Pipe()
        python.standardOutput = out
        python.standardError = out
        try python.run()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        python.waitUntilExit()
        #expect(python.terminationStatus == 0, "pika script: \(output)")
        #expect(output.contains("pika interop: ok"))
        #expect(worker.terminate() == 0)
    }
}
