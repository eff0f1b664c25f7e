import Foundation
import Testing
@testable import AMQPClient

@Suite(.timeLimit(.minutes(2)))
struct BrokerTests {
    /// A confirmed publish reaches a consumer with its body, and an ack removes it from the queue.
    @Test func publishConfirmConsumeAck() async throws {
        try await withChannel { conn, ch in
            let q = unique("roundtrip")
            // Not auto-delete: the queue must outlive the consumer; x-expires cleans up after a failed run.
            try await ch.queueDeclare(q, arguments: ["x-expires": 60_000])
            try await ch.confirmSelect()
            let tag = try await ch.publish(Array("hello".utf8), routingKey: q)
            #expect(tag == 1)
            let confirms = try await ch.waitForConfirms(timeout: 5)
            #expect(confirms.acked == [1] && confirms.nacked.isEmpty)
            let consumer = try await ch.consume(q)
            let d = try await within(5, "delivery") { try await consumer.next(upTo: 1) }
            #expect(d.count == 1)
            #expect(d.first?.body == Array("hello".utf8))
            #expect(d.first?.routingKey == q)
            #expect(d.first?.consumerTag == consumer.consumerTag)
            try await ch.ack(d[0].deliveryTag)
            try await consumer.cancel()
            let info = try await ch.queueDeclare(q, passive: true)
            #expect(info.messageCount == 0)
            try await ch.queueDelete(q)
        }
    }

    /// A nack with requeue brings the message back with `redelivered` set.
    @Test func nackRequeueRedelivers() async throws {
        try await withChannel { conn, ch in
            let q = unique("nack")
            try await ch.queueDeclare(q, autoDelete: true)
            try await ch.publish(Array("x".utf8), routingKey: q)
            let consumer = try await ch.consume(q)
            let first = try await within(5, "first delivery") { try await consumer.next(upTo: 1) }.first
            #expect(first?.redelivered == false)
            try await ch.nack(first!.deliveryTag, requeue: true)
            let second = try await within(5, "redelivery") { try await consumer.next(upTo: 1) }.first
            #expect(second?.redelivered == true)
            #expect(second?.body == Array("x".utf8))
            try await ch.ack(second!.deliveryTag)
            try await ch.queueDelete(q)
        }
    }

    /// reject(requeue: false) dead-letters into the configured exchange, with an x-death header.
    @Test func rejectDeadLetters() async throws {
        try await withChannel { conn, ch in
            let dlx = unique("dlx"), dlq = unique("dlq"), q = unique("work")
            try await ch.exchangeDeclare(dlx, type: .fanout, autoDelete: true)
            try await ch.queueDeclare(dlq, autoDelete: true)
            try await ch.queueBind(dlq, exchange: dlx)
            try await ch.queueDeclare(q, autoDelete: true, arguments: ["x-dead-letter-exchange": .string(dlx)])
            try await ch.publish(Array("dead".utf8), routingKey: q)
            let consumer = try await ch.consume(q)
            let d = try await within(5, "delivery") { try await consumer.next(upTo: 1) }
            try await ch.reject(d[0].deliveryTag, requeue: false)
            let dead = try await ch.consume(dlq)
            let got = try await within(5, "dead letter") { try await dead.next(upTo: 1) }
            #expect(got.first?.body == Array("dead".utf8))
            let xDeath = got.first?.properties.headers?["x-death"]?.arrayValue
            #expect(xDeath?.first?.tableValue?["reason"] == .string("rejected"))
            #expect(xDeath?.first?.tableValue?["queue"] == .string(q))
            try await ch.ack(got[0].deliveryTag)
            try await ch.queueDelete(q)
            try await ch.queueDelete(dlq)
            try await ch.exchangeDelete(dlx)
        }
    }

    /// Every property and every header kind (nested tables and arrays included) survives a round trip.
    @Test func propertiesAndHeadersRoundTrip() async throws {
        try await withChannel { conn, ch in
            let q = unique("props")
            try await ch.queueDeclare(q, autoDelete: true)
            let headers: AMQPTable = [
                "bool": .bool(true), "i8": .int8(-8), "u8": .uint8(200), "i16": .int16(-1600),
                "u16": .uint16(60000), "i32": .int32(-320000), "u32": .uint32(4_000_000_000),
                "i64": .int64(-6_400_000_000_000), "f": .float(1.5), "d": .double(-2.25),
                "dec": .decimal(scale: 2, value: 12345), "s": "text ✓", "bytes": .bytes([0, 1, 255]),
                "ts": .timestamp(Date(timeIntervalSince1970: 1_700_000_000)), "void": .void,
                "array": [1, "two", [3, 4], ["k": "v"]],
                "table": ["nested": ["deeper": .bool(false)], "list": ["a", "b"]],
            ]
            let props = AMQPProperties(
                contentType: "application/json", contentEncoding: "identity", headers: headers,
                deliveryMode: 2, priority: 5, correlationID: "corr-1", replyTo: "reply.q",
                expiration: "60000", messageID: "msg-1", timestamp: Date(timeIntervalSince1970: 1_700_000_123),
                type: "run.started", userID: "guest", appID: "runworker-tests")
            try await ch.publish(Array("{}".utf8), routingKey: q, properties: props)
            let consumer = try await ch.consume(q, noAck: true)
            let d = try await within(5, "delivery") { try await consumer.next(upTo: 1) }
            #expect(d.first?.properties == props)
            #expect(d.first?.properties.headers?.keys == headers.keys)
            try await ch.queueDelete(q)
        }
    }

    /// A 1 MiB body (many frames) arrives byte for byte.
    @Test func largeBody() async throws {
        try await withChannel { conn, ch in
            let q = unique("large")
            try await ch.queueDeclare(q, autoDelete: true)
            let body = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
            try await ch.confirmSelect()
            try await ch.publish(body, routingKey: q)
            #expect(try await ch.waitForConfirms(timeout: 10).acked == [1])
            let got = try await within(10, "get") { try await ch.get(q, noAck: true) }
            #expect(got?.body.count == body.count)
            #expect(got?.body == body)
            try await ch.queueDelete(q)
        }
    }

    /// Redeclaring a queue with other arguments fails with 406 on that channel only; the connection goes on.
    @Test func preconditionFailedKeepsConnection() async throws {
        try await withChannel { conn, ch in
            let q = unique("conflict")
            try await ch.queueDeclare(q, autoDelete: true, arguments: ["x-max-length": 10])
            let consumer = try await ch.consume(q)  // keeps the auto-delete queue alive
            let ch2 = try await conn.openChannel()
            do {
                try await ch2.queueDeclare(q, autoDelete: true, arguments: ["x-max-length": 20])
                Issue.record("conflicting declare succeeded")
            } catch let e as AMQPError {
                #expect(e.code == .channelClosed)
                #expect(e.isPreconditionFailed)
                #expect(e.replyCode == 406)
                #expect(e.failedMethod == "queue.declare")
            }
            // The dead channel refuses work; a new channel works.
            await #expect(throws: AMQPError.self) { try await ch2.publish([1], routingKey: q) }
            let ch3 = try await conn.openChannel()
            try await ch3.publish(Array("after".utf8), routingKey: q)
            let d = try await within(5, "delivery after error") { try await consumer.next(upTo: 1) }
            #expect(d.first?.body == Array("after".utf8))
            try await ch.ack(d[0].deliveryTag)
            try await ch3.queueDelete(q)
        }
    }

    /// Passive declare reports NOT_FOUND for a missing queue, and counts for an existing one.
    @Test func passiveDeclare() async throws {
        try await withChannel { conn, ch in
            do {
                let ch2 = try await conn.openChannel()
                try await ch2.queueDeclare(unique("missing"), passive: true)
                Issue.record("passive declare of a missing queue succeeded")
            } catch let e as AMQPError {
                #expect(e.isNotFound && e.code == .channelClosed)
            }
            let q = unique("passive")
            try await ch.queueDeclare(q, arguments: ["x-expires": 60_000])
            try await ch.confirmSelect()
            for _ in 0..<3 { try await ch.publish([1], routingKey: q) }
            _ = try await ch.waitForConfirms(timeout: 5)
            let info = try await ch.queueDeclare(q, passive: true)
            #expect(info.name == q)
            #expect(info.messageCount == 3)
            #expect(info.consumerCount == 0)
            let ch4 = try await conn.openChannel()
            try await ch4.qos(prefetchCount: 1)
            let consumer = try await ch4.consume(q)
            _ = try await within(5, "delivery") { try await consumer.next(upTo: 1) }
            let info2 = try await ch.queueDeclare(q, passive: true)
            #expect(info2.messageCount == 2)
            #expect(info2.consumerCount == 1)
            try await ch.queueDelete(q)
        }
    }

    /// A wrong password fails fast with authenticationFailed and ACCESS_REFUSED.
    @Test func wrongPassword() async throws {
        let start = Date()
        do {
            _ = try await connect { $0.password = "definitely-wrong" }
            Issue.record("login with a wrong password succeeded")
        } catch let e as AMQPError {
            #expect(e.code == .authenticationFailed)
            #expect(e.replyCode == 403)
            #expect(!e.description.contains("definitely-wrong"))
        }
        #expect(Date().timeIntervalSince(start) < 4)
    }

    /// Connecting to a port nobody listens on fails fast with connectionRefused.
    @Test func connectionRefused() async throws {
        let start = Date()
        do {
            _ = try await connect { $0.port = 1; $0.host = "127.0.0.1" }
            Issue.record("connected to a closed port")
        } catch let e as AMQPError {
            #expect(e.code == .connectionRefused)
        }
        #expect(Date().timeIntervalSince(start) < 4)
    }

    /// One consumer sees 1 000 messages in publish order.
    @Test func thousandInOrder() async throws {
        try await withChannel { conn, ch in
            let q = unique("order")
            try await ch.queueDeclare(q, autoDelete: true)
            try await ch.qos(prefetchCount: 200)
            let consumer = try await ch.consume(q)
            let pub = try await conn.openChannel()
            try await pub.confirmSelect()
            for i in 0..<1000 { try await pub.publish(Array(String(i).utf8), routingKey: q) }
            let confirms = try await pub.waitForConfirms(timeout: 10)
            #expect(confirms.acked.count == 1000)
            var seen: [Int] = []
            try await within(20, "1000 deliveries") { [consumer] in
                var seen: [Int] = []
                while seen.count < 1000 {
                    let batch = try await consumer.next(upTo: 500)
                    if batch.isEmpty { break }
                    seen += batch.map { Int(String(decoding: $0.body, as: UTF8.self))! }
                    try await consumer.channel.ack(batch.last!.deliveryTag, multiple: true)
                }
                return seen
            }.forEach { seen.append($0) }
            #expect(seen == Array(0..<1000))
            try await ch.queueDelete(q)
        }
    }

    /// A mandatory publish that no queue is bound for comes back as a returned message.
    @Test func mandatoryReturn() async throws {
        try await withChannel { conn, ch in
            let x = unique("noroute")
            try await ch.exchangeDeclare(x, type: .direct, autoDelete: false)
            try await ch.publish(Array("lost".utf8), exchange: x, routingKey: "nowhere",
                                 properties: AMQPProperties(messageID: "m1"), mandatory: true)
            let returned = conn.returnedMessages
            let r = try await within(5, "returned message") { try await returned.next(upTo: 1) }
            #expect(r.first?.replyCode == 312)
            #expect(r.first?.exchange == x)
            #expect(r.first?.routingKey == "nowhere")
            #expect(r.first?.body == Array("lost".utf8))
            #expect(r.first?.properties.messageID == "m1")
            try await ch.exchangeDelete(x)
        }
    }

    /// Broker nacks (reject-publish overflow) are reported per delivery tag.
    @Test func confirmNacksPerTag() async throws {
        try await withChannel { conn, ch in
            let q = unique("overflow")
            try await ch.queueDeclare(q, arguments: ["x-expires": 60_000, "x-max-length": 1, "x-overflow": "reject-publish"])
            try await ch.confirmSelect()
            var tags: [UInt64] = []
            for i in 0..<3 { tags.append(try await ch.publish([UInt8(i)], routingKey: q)!) }
            #expect(tags == [1, 2, 3])
            let r = try await ch.waitForConfirms(timeout: 5)
            #expect(Set(r.acked + r.nacked) == Set(tags))
            #expect(r.acked.count + r.nacked.count == 3)
            #expect(r.nacked.count >= 1)
            #expect(r.acked.contains(1))
            try await ch.queueDelete(q)
        }
    }

    /// basic.get returns nil on an empty queue and the message otherwise; a cancelled consumer's stream ends.
    @Test func getAndCancel() async throws {
        try await withChannel { conn, ch in
            let q = unique("get")
            try await ch.queueDeclare(q, arguments: ["x-expires": 60_000])
            #expect(try await ch.get(q) == nil)
            try await ch.confirmSelect()
            try await ch.publish(Array("a".utf8), routingKey: q)
            try await ch.publish(Array("b".utf8), routingKey: q)
            _ = try await ch.waitForConfirms(timeout: 5)
            let got = try await ch.get(q)
            #expect(got?.body == Array("a".utf8))
            #expect(got?.messageCount == 1)
            try await ch.ack(got!.deliveryTag)
            let consumer = try await ch.consume(q)
            let d = try await within(5, "delivery") { try await consumer.next(upTo: 10) }
            #expect(d.map(\.body) == [Array("b".utf8)])
            try await ch.ack(d[0].deliveryTag)
            try await consumer.cancel()
            let rest = try await within(5, "end of stream") { try await consumer.next(upTo: 10) }
            #expect(rest.isEmpty)
            try await ch.queueDelete(q)
        }
    }

    /// A broker-side cancel (the queue is deleted) ends the consumer's stream.
    @Test func brokerCancelEndsStream() async throws {
        try await withChannel { conn, ch in
            let q = unique("brokercancel")
            try await ch.queueDeclare(q)
            let consumer = try await ch.consume(q)
            let other = try await conn.openChannel()
            try await other.queueDelete(q)
            let rest = try await within(5, "end of stream") { try await consumer.next(upTo: 10) }
            #expect(rest.isEmpty)
        }
    }

    /// With heartbeat=1 an idle connection survives 4 s and still publishes and consumes.
    @Test func heartbeatsKeepIdleConnectionAlive() async throws {
        let conn = try await connect { $0.heartbeat = 1 }
        let hb = try await conn.withBlockingConnection { $0.heartbeat }
        #expect(hb == 1)
        try await Task.sleep(nanoseconds: 4_000_000_000)
        let ch = try await conn.openChannel()
        let q = unique("heartbeat")
        try await ch.queueDeclare(q, autoDelete: true)
        try await ch.publish(Array("alive".utf8), routingKey: q)
        let consumer = try await ch.consume(q, noAck: true)
        let d = try await within(5, "delivery") { try await consumer.next(upTo: 1) }
        #expect(d.first?.body == Array("alive".utf8))
        try await ch.queueDelete(q)
        await conn.close()
    }

    /// When the broker force-closes the connection, consumers and waiters end with connectionClosed, no hang.
    @Test func forcedCloseIsReported() async throws {
        let name = unique("forced")
        let conn = try await connect { $0.connectionName = name }
        let ch = try await conn.openChannel()
        let q = unique("forcedq")
        try await ch.queueDeclare(q, autoDelete: true)
        let consumer = try await ch.consume(q)
        // Find our connection's pid by its unique name and close only it.
        var pid: String?
        for _ in 0..<20 where pid == nil {
            let list = try run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"])
            pid = list.split(separator: "\n").first { $0.contains(name) }.map { String($0.split(separator: "\t")[0]) }
            if pid == nil { try await Task.sleep(nanoseconds: 200_000_000) }
        }
        let target = try #require(pid)
        try run(["rabbitmqctl", "close_connection", target, "test forced close"])
        do {
            let r = try await within(10, "consumer end") { try await consumer.next(upTo: 1) }
            Issue.record("stream ended without error: \(r)")
        } catch let e as AMQPError {
            #expect(e.code == .connectionClosed)
            #expect(e.isConnectionForced)
        }
        do {
            try await ch.publish([1], routingKey: q)
            Issue.record("publish after loss succeeded")
        } catch let e as AMQPError {
            #expect(e.code == .connectionClosed)
        }
        #expect(await conn.isOpen == false)
        await conn.close()
    }

    /// The blocking layer keeps deliveries that arrive during synchronous RPCs and drains them in a batch.
    @Test func blockingBatchKeepsFramesAcrossRPCs() async throws {
        let cfg = try config()
        let q = unique("blocking")
        let result: [String] = try await Task.detached {
            let c = try BlockingConnection(configuration: cfg)
            defer { c.close() }
            let ch = try c.openChannel()
            try c.queueDeclare(channel: ch, name: q, autoDelete: true)
            try c.confirmSelect(channel: ch)
            _ = try c.consume(channel: ch, queue: q)
            for i in 0..<50 { try c.publish(channel: ch, exchange: "", routingKey: q, body: Array("m\(i)".utf8)) }
            let confirms = try c.waitForConfirms(channel: ch, timeout: 5)
            guard confirms.acked.count == 50 else { throw TestTimeout(what: "confirms") }
            // Deliveries arrive while these RPCs wait; they must not be lost.
            for _ in 0..<5 { try c.queueDeclare(channel: ch, name: q, passive: true) }
            var got: [AMQPDelivery] = []
            let deadline = Date().addingTimeInterval(5)
            while got.count < 50 && Date() < deadline {
                got += try c.nextDeliveries(max: 100, timeout: 1)
            }
            if let last = got.last { try c.ack(channel: ch, deliveryTag: last.deliveryTag, multiple: true) }
            try c.queueDelete(channel: ch, queue: q)
            return got.map { String(decoding: $0.body, as: UTF8.self) }
        }.value
        #expect(result == (0..<50).map { "m\($0)" })
    }
}
