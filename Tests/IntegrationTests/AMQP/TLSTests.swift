import Foundation
import RunTestSupport
import Testing

@testable import AMQPClient

/// Starts the TLS node (scripts/tls-broker, idempotent) and returns its certificate folder.
private func startTLSBroker() throws -> String {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    let (status, output) = try AMQPTest.shell(["bash", root.appendingPathComponent("scripts/tls-broker").path, "start"],
                                              timeout: 120)
    guard status == 0 else { throw AMQPTest.Timeout(what: "scripts/tls-broker start failed: \(output)") }
    return "/tmp/runworker-tls/certs"
}

@Suite(.serialized, .requiresBroker, .ownThread) struct TLSTests {
    /// amqps:// with the test CA: publish, confirm, consume and ack over TLS, with and without
    /// a client certificate.
    @Test func roundTripOverTLS() throws {
        let certs = try startTLSBroker()
        for clientCert in [false, true] {
            var url = "amqps://guest:guest@localhost:5671/?cacertfile=\(certs)/ca.pem"
            if clientCert { url += "&certfile=\(certs)/client.pem&keyfile=\(certs)/client.key" }
            let conn = try BlockingConnection(url: url)
            defer { conn.close() }
            let ch = try conn.openChannel()
            let q = AMQPTest.unique("tls")
            try conn.queueDeclare(channel: ch, name: q, exclusive: true, autoDelete: true)
            try conn.confirmSelect(channel: ch)
            try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("over tls".utf8), properties: .persistent)
            // A batch over TLS goes message by message through the library, with the same tags.
            let tags = try conn.publishBatch(channel: ch, ["one", "two"].map {
                AMQPOutgoingMessage(exchange: "", routingKey: q, body: Array($0.utf8), properties: .persistent)
            })
            #expect(tags == 2...3)
            #expect(try conn.waitForConfirms(channel: ch, timeout: 5).allAcked)
            _ = try conn.consume(channel: ch, queue: q)
            var got: [String] = []
            for _ in 0..<3 {
                let d = try AMQPTest.nextDelivery(conn, channel: ch)
                got.append(String(decoding: d.body, as: UTF8.self))
                try conn.ack(channel: ch, deliveryTag: d.deliveryTag)
            }
            #expect(got == ["over tls", "one", "two"])
            try conn.queueDelete(channel: ch, queue: q)
        }
    }

    /// A server certificate from another CA is refused with a TLS error, quickly.
    @Test func wrongCAIsRefused() throws {
        let certs = try startTLSBroker()
        let started = Date()
        do {
            _ = try BlockingConnection(url: "amqps://guest:guest@localhost:5671/?cacertfile=\(certs)/other-ca.pem")
            Issue.record("connected with the wrong CA")
        } catch let error as AMQPError {
            #expect(error.code == .tlsError, "\(error)")
        }
        #expect(Date().timeIntervalSince(started) < 5)
    }

    /// Without verification (verify=false) the same wrong CA connects: the option is honoured.
    @Test func verificationCanBeTurnedOff() throws {
        let certs = try startTLSBroker()
        let conn = try BlockingConnection(
            url: "amqps://guest:guest@localhost:5671/?cacertfile=\(certs)/other-ca.pem&verify=false")
        defer { conn.close() }
        #expect(conn.isOpen)
        let ch = try conn.openChannel()
        #expect(conn.isChannelOpen(ch))
    }
}
