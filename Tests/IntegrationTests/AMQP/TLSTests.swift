import Foundation
import Testing

@testable import AMQPClient

/// Starts the TLS node (scripts/tls-broker, idempotent) and returns its certificate folder.
/// Output goes to a file and the wait is bounded: a pipe would be held open by the node.
func startTLSBroker() throws -> String {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    let log = NSTemporaryDirectory() + "tls-broker-\(UUID().uuidString.prefix(8)).out"
    _ = FileManager.default.createFile(atPath: log, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: log) }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    defer { try? handle.close() }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/bash")
    p.arguments = [root.appendingPathComponent("scripts/tls-broker").path, "start"]
    p.standardOutput = handle
    p.standardError = handle
    try p.run()
    let deadline = Date().addingTimeInterval(120)
    while p.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
    let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
    if p.isRunning {
        p.terminate()
        throw TestTimeout(what: "scripts/tls-broker start: \(text)")
    }
    guard p.terminationStatus == 0 else { throw TestTimeout(what: "scripts/tls-broker start failed: \(text)") }
    return "/tmp/runworker-tls/certs"
}

@Suite(.serialized) struct TLSTests {
    /// amqps:// with the test CA: publish, confirm, consume and ack over TLS, with and without
    /// a client certificate.
    @Test func roundTripOverTLS() async throws {
        let certs = try startTLSBroker()
        for clientCert in [false, true] {
            var url = "amqps://guest:guest@localhost:5671/?cacertfile=\(certs)/ca.pem"
            if clientCert { url += "&certfile=\(certs)/client.pem&keyfile=\(certs)/client.key" }
            let conn = try await AMQPConnection.connect(url: url)
            let ch = try await conn.openChannel()
            let q = unique("tls")
            _ = try await ch.queueDeclare(q, exclusive: true, autoDelete: true)
            try await ch.confirmSelect()
            _ = try await ch.publish(Array("over tls".utf8), routingKey: q, properties: .persistent)
            #expect(try await ch.waitForConfirms(timeout: 5).allAcked)
            let consumer = try await ch.consume(q)
            let got = try await within(5) { try await consumer.next(upTo: 1) }
            #expect(got.first.map { String(decoding: $0.body, as: UTF8.self) } == "over tls")
            if let d = got.first { try await ch.ack(d.deliveryTag) }
            await conn.close()
        }
    }

    /// A server certificate from another CA is refused with a TLS error, quickly.
    @Test func wrongCAIsRefused() async throws {
        let certs = try startTLSBroker()
        let started = Date()
        do {
            _ = try await AMQPConnection.connect(url: "amqps://guest:guest@localhost:5671/?cacertfile=\(certs)/other-ca.pem")
            Issue.record("connected with the wrong CA")
        } catch let error as AMQPError {
            #expect(error.code == .tlsError, "\(error)")
        }
        #expect(Date().timeIntervalSince(started) < 5)
    }

    /// Without verification (verify=false) the same wrong CA connects: the option is honoured.
    @Test func verificationCanBeTurnedOff() async throws {
        let certs = try startTLSBroker()
        let conn = try await AMQPConnection.connect(
            url: "amqps://guest:guest@localhost:5671/?cacertfile=\(certs)/other-ca.pem&verify=false")
        #expect(await conn.isOpen)
        await conn.close()
    }
}
