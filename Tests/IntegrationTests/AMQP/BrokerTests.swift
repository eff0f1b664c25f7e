import Foundation
import RunTestSupport
import Testing
@testable import AMQPClient

@Suite(.requiresBroker, .ownThread, .timeLimit(.minutes(2)))
struct BrokerTests {
    /// A confirmed publish reaches a consumer with its body, and an ack removes it from the queue.
    @Test func publishConfirmConsumeAck() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("roundtrip")
            // Not auto-delete: the queue must outlive the consumer; x-expires cleans up after a failed run.
            try conn.queueDeclare(channel: ch, name: q, arguments: ["x-expires": 60_000])
            try conn.confirmSelect(channel: ch)
            let tag = try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("hello".utf8))
            #expect(tag == 1)
            let confirms = try conn.waitForConfirms(channel: ch, timeout: 5)
            #expect(confirms.acked == [1] && confirms.nacked.isEmpty)
            let consumerTag = try conn.consume(channel: ch, queue: q)
            let d = try AMQPTest.nextDelivery(conn, channel: ch)
            #expect(d.body == Array("hello".utf8))
            #expect(d.routingKey == q)
            #expect(d.consumerTag == consumerTag)
            try conn.ack(channel: ch, deliveryTag: d.deliveryTag)
            try conn.cancel(channel: ch, consumerTag: consumerTag)
            let info = try conn.queueDeclare(channel: ch, name: q, passive: true)
            #expect(info.messageCount == 0)
            try conn.queueDelete(channel: ch, queue: q)
        }
    }

    /// A nack with requeue brings the message back with `redelivered` set.
    @Test func nackRequeueRedelivers() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("nack")
            try conn.queueDeclare(channel: ch, name: q, autoDelete: true)
            try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("x".utf8))
            _ = try conn.consume(channel: ch, queue: q)
            let first = try AMQPTest.nextDelivery(conn, channel: ch)
            #expect(first.redelivered == false)
            try conn.nack(channel: ch, deliveryTag: first.deliveryTag, requeue: true)
            let second = try AMQPTest.nextDelivery(conn, channel: ch)
            #expect(second.redelivered == true)
            #expect(second.body == Array("x".utf8))
            try conn.ack(channel: ch, deliveryTag: second.deliveryTag)
            try conn.queueDelete(channel: ch, queue: q)
        }
    }

    /// reject(requeue: false) dead-letters into the configured exchange, with an x-death header.
    @Test func rejectDeadLetters() throws {
        try AMQPTest.withChannel { conn, ch in
            let dlx = AMQPTest.unique("dlx"), dlq = AMQPTest.unique("dlq"), q = AMQPTest.unique("work")
            try conn.exchangeDeclare(channel: ch, name: dlx, type: .fanout, autoDelete: true)
            try conn.queueDeclare(channel: ch, name: dlq, autoDelete: true)
            try conn.queueBind(channel: ch, queue: dlq, exchange: dlx)
            try conn.queueDeclare(channel: ch, name: q, autoDelete: true, arguments: ["x-dead-letter-exchange": .string(dlx)])
            try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("dead".utf8))
            let workTag = try conn.consume(channel: ch, queue: q)
            let d = try AMQPTest.nextDelivery(conn, channel: ch)
            #expect(d.consumerTag == workTag)
            try conn.reject(channel: ch, deliveryTag: d.deliveryTag, requeue: false)
            let deadTag = try conn.consume(channel: ch, queue: dlq)
            let got = try AMQPTest.nextDelivery(conn, channel: ch)
            #expect(got.consumerTag == deadTag)
            #expect(got.body == Array("dead".utf8))
            let xDeath = got.properties.headers?["x-death"]?.arrayValue
            #expect(xDeath?.first?.tableValue?["reason"] == .string("rejected"))
            #expect(xDeath?.first?.tableValue?["queue"] == .string(q))
            try conn.ack(channel: ch, deliveryTag: got.deliveryTag)
            try conn.queueDelete(channel: ch, queue: q)
            try conn.queueDelete(channel: ch, queue: dlq)
            try conn.exchangeDelete(channel: ch, name: dlx)
        }
    }

    /// Every property and every header kind (nested tables and arrays included) survives a round trip.
    @Test func propertiesAndHeadersRoundTrip() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("props")
            try conn.queueDeclare(channel: ch, name: q, autoDelete: true)
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
            try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("{}".utf8), properties: props)
            _ = try conn.consume(channel: ch, queue: q, noAck: true)
            let d = try AMQPTest.nextDelivery(conn, channel: ch)
            #expect(d.properties == props)
            #expect(d.properties.headers?.keys == headers.keys)
            try conn.queueDelete(channel: ch, queue: q)
        }
    }

    /// A 1 MiB body (many frames) arrives byte for byte.
    @Test func largeBody() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("large")
            try conn.queueDeclare(channel: ch, name: q, autoDelete: true)
            let body = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
            try conn.confirmSelect(channel: ch)
            try conn.publish(channel: ch, exchange: "", routingKey: q, body: body)
            #expect(try conn.waitForConfirms(channel: ch, timeout: 10).acked == [1])
            let got = try conn.get(channel: ch, queue: q, noAck: true)
            #expect(got?.body.count == body.count)
            #expect(got?.body == body)
            try conn.queueDelete(channel: ch, queue: q)
        }
    }

    /// Redeclaring a queue with other arguments fails with 406 on that channel only; the connection goes on.
    @Test func preconditionFailedKeepsConnection() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("conflict")
            try conn.queueDeclare(channel: ch, name: q, autoDelete: true, arguments: ["x-max-length": 10])
            _ = try conn.consume(channel: ch, queue: q)  // keeps the auto-delete queue alive
            let ch2 = try conn.openChannel()
            do {
                try conn.queueDeclare(channel: ch2, name: q, autoDelete: true, arguments: ["x-max-length": 20])
                Issue.record("conflicting declare succeeded")
            } catch let e as AMQPError {
                #expect(e.code == .channelClosed)
                #expect(e.isPreconditionFailed)
                #expect(e.replyCode == 406)
                #expect(e.failedMethod == "queue.declare")
            }
            // The dead channel refuses work; a new channel works.
            #expect(!conn.isChannelOpen(ch2))
            #expect(throws: AMQPError.self) { try conn.publish(channel: ch2, exchange: "", routingKey: q, body: [1]) }
            let ch3 = try conn.openChannel()
            try conn.publish(channel: ch3, exchange: "", routingKey: q, body: Array("after".utf8))
            let d = try AMQPTest.nextDelivery(conn, channel: ch)
            #expect(d.body == Array("after".utf8))
            try conn.ack(channel: ch, deliveryTag: d.deliveryTag)
            try conn.queueDelete(channel: ch3, queue: q)
        }
    }

    /// Passive declare reports NOT_FOUND for a missing queue, and counts for an existing one.
    @Test func passiveDeclare() throws {
        try AMQPTest.withChannel { conn, ch in
            do {
                let ch2 = try conn.openChannel()
                try conn.queueDeclare(channel: ch2, name: AMQPTest.unique("missing"), passive: true)
                Issue.record("passive declare of a missing queue succeeded")
            } catch let e as AMQPError {
                #expect(e.isNotFound && e.code == .channelClosed)
            }
            let q = AMQPTest.unique("passive")
            try conn.queueDeclare(channel: ch, name: q, arguments: ["x-expires": 60_000])
            try conn.confirmSelect(channel: ch)
            for _ in 0..<3 { try conn.publish(channel: ch, exchange: "", routingKey: q, body: [1]) }
            _ = try conn.waitForConfirms(channel: ch, timeout: 5)
            let info = try conn.queueDeclare(channel: ch, name: q, passive: true)
            #expect(info.name == q)
            #expect(info.messageCount == 3)
            #expect(info.consumerCount == 0)
            let ch4 = try conn.openChannel()
            try conn.qos(channel: ch4, prefetchCount: 1)
            _ = try conn.consume(channel: ch4, queue: q)
            _ = try AMQPTest.nextDelivery(conn, channel: ch4)
            let info2 = try conn.queueDeclare(channel: ch, name: q, passive: true)
            #expect(info2.messageCount == 2)
            #expect(info2.consumerCount == 1)
            try conn.queueDelete(channel: ch, queue: q)
        }
    }

    /// A wrong password fails fast with authenticationFailed and ACCESS_REFUSED.
    @Test func wrongPassword() throws {
        let start = Date()
        do {
            _ = try AMQPTest.connect { $0.password = "definitely-wrong" }
            Issue.record("login with a wrong password succeeded")
        } catch let e as AMQPError {
            #expect(e.code == .authenticationFailed)
            #expect(e.replyCode == 403)
            #expect(!e.description.contains("definitely-wrong"))
        }
        #expect(Date().timeIntervalSince(start) < 4)
    }

    /// Connecting to a port nobody listens on fails fast with connectionRefused.
    @Test func connectionRefused() throws {
        let start = Date()
        do {
            _ = try AMQPTest.connect { $0.port = 1; $0.host = "127.0.0.1" }
            Issue.record("connected to a closed port")
        } catch let e as AMQPError {
            #expect(e.code == .connectionRefused)
        }
        #expect(Date().timeIntervalSince(start) < 4)
    }

    /// One consumer sees 1 000 messages in publish order.
    @Test func thousandInOrder() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("order")
            try conn.queueDeclare(channel: ch, name: q, autoDelete: true)
            try conn.qos(channel: ch, prefetchCount: 200)
            _ = try conn.consume(channel: ch, queue: q)
            let pub = try conn.openChannel()
            try conn.confirmSelect(channel: pub)
            for i in 0..<1000 { try conn.publish(channel: pub, exchange: "", routingKey: q, body: Array(String(i).utf8)) }
            let confirms = try conn.waitForConfirms(channel: pub, timeout: 10)
            #expect(confirms.acked.count == 1000)
            var seen: [Int] = []
            let deadline = Date().addingTimeInterval(20)
            while seen.count < 1000 && Date() < deadline {
                let batch = try conn.nextDeliveries(max: 500, timeout: 1)
                guard let last = batch.last else { continue }
                seen += batch.map { Int(String(decoding: $0.body, as: UTF8.self))! }
                try conn.ack(channel: ch, deliveryTag: last.deliveryTag, multiple: true)
            }
            #expect(seen == Array(0..<1000))
            try conn.queueDelete(channel: ch, queue: q)
        }
    }

    /// A batch written with one socket write arrives as if published one by one: in order,
    /// bodies byte for byte (empty, small, and one of many frames), properties and headers
    /// intact, with consecutive confirm tags that continue the channel's count; the channel
    /// and connection stay usable afterwards.
    @Test func batchPublishIsOneByOneOnTheWire() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("batch")
            try conn.queueDeclare(channel: ch, name: q, autoDelete: true)
            try conn.confirmSelect(channel: ch)
            #expect(try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("before".utf8)) == 1)
            let large = (0..<(300 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
            // Over 1 MiB of bodies: the batch goes out in parts (publishPartBytes), still in order.
            let bodies: [[UInt8]] = [[], Array("{\"a\":1}".utf8), large] + (0..<200).map { Array("m\($0)".utf8) }
                + [large, large.reversed(), large, Array("tail".utf8)]
            let batch = bodies.enumerated().map { i, body in
                AMQPOutgoingMessage(
                    exchange: "", routingKey: q, body: body,
                    properties: AMQPProperties(
                        contentType: "application/json", headers: ["run_id": .string("r\(i)"), "seq": .int64(Int64(i))], deliveryMode: 2,
                        messageID: "id-\(i)", timestamp: Date(timeIntervalSince1970: 1_700_000_000), type: "run.started"))
            }
            let tags = try conn.publishBatch(channel: ch, batch)
            #expect(tags == 2...UInt64(1 + batch.count))
            #expect(try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("after".utf8)) == UInt64(2 + batch.count))
            let confirms = try conn.waitForConfirms(channel: ch, timeout: 10)
            #expect(confirms.nacked.isEmpty && Set(confirms.acked) == Set(1...UInt64(2 + batch.count)))
            #expect(try conn.get(channel: ch, queue: q, noAck: true)?.body == Array("before".utf8))
            for m in batch {
                let got = try conn.get(channel: ch, queue: q, noAck: true)
                #expect(got?.body == m.body)
                #expect(got?.properties == m.properties)
            }
            #expect(try conn.get(channel: ch, queue: q, noAck: true)?.body == Array("after".utf8))
            #expect(try conn.publishBatch(channel: ch, []) == nil)

            // A message that cannot be encoded (a routing key over 255 bytes) is refused before
            // anything is sent, even behind parts that could go out: the batch is not
            // published, the connection and its tags go on.
            let tooLong = AMQPOutgoingMessage(exchange: "", routingKey: String(repeating: "k", count: 300), body: [1])
            #expect(throws: AMQPError.self) {
                _ = try conn.publishBatch(channel: ch, Array(repeating: batch[2], count: 8) + [tooLong])
            }
            #expect(try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("still".utf8)) == UInt64(3 + batch.count))
            #expect(try conn.waitForConfirms(channel: ch, timeout: 10).nacked.isEmpty)
            #expect(try conn.get(channel: ch, queue: q, noAck: true)?.body == Array("still".utf8))
            try conn.queueDelete(channel: ch, queue: q)
        }
    }

    /// Closing a consumer channel gives every unacked delivery back to the queue in order,
    /// those read and those still in the socket or the library's buffers alike, and none of
    /// them surfaces on the channel opened next with the same number: what the worker's
    /// requeue (close, consume again) relies on, since nacking read deliveries one by one put
    /// them back behind the unread ones.
    @Test func closingAConsumerGivesEverythingBackInOrder() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("giveback")
            try conn.queueDeclare(channel: ch, name: q, autoDelete: false)
            defer { try? conn.queueDelete(channel: ch, queue: q) }
            try conn.confirmSelect(channel: ch)
            let bodies = (0..<40).map { Array("m\($0)-".utf8) + [UInt8](repeating: 0x61, count: 20_000) }
            _ = try conn.publishBatch(channel: ch, bodies.map { AMQPOutgoingMessage(exchange: "", routingKey: q, body: $0) })
            #expect(try conn.waitForConfirms(channel: ch, timeout: 10).nacked.isEmpty)

            func deliveries(_ n: Int, on channel: UInt16) throws -> [AMQPDelivery] {
                try (0..<n).map { _ in
                    try AMQPTest.waitForEvent(conn, within: 10, "a delivery") { e in
                        if case .delivery(let d) = e, d.channel == channel { d } else { nil }
                    }
                }
            }
            let consumer = try conn.openChannel()
            try conn.qos(channel: consumer, prefetchCount: 256)
            _ = try conn.consume(channel: consumer, queue: q)
            let first = try deliveries(5, on: consumer)
            #expect(first.map(\.body) == Array(bodies.prefix(5)))
            // The broker has sent all 40 by now (prefetch 256); 35 are unread.
            usleep(200_000)
            try conn.closeChannel(consumer)
            let again = try conn.openChannel()
            #expect(again == consumer, "the number is reused, which is the case that matters")
            try conn.qos(channel: again, prefetchCount: 256)
            _ = try conn.consume(channel: again, queue: q)
            let back = try deliveries(40, on: again)
            #expect(back.map(\.body) == bodies, "in queue order, each once")
            #expect(back.map(\.deliveryTag) == Array(1...40), "no delivery of the closed channel among them")
            try conn.ack(channel: again, deliveryTag: 40, multiple: true)
        }
    }

    /// A mandatory publish that no queue is bound for comes back as a returned message.
    @Test func mandatoryReturn() throws {
        try AMQPTest.withChannel { conn, ch in
            let x = AMQPTest.unique("noroute")
            try conn.exchangeDeclare(channel: ch, name: x, type: .direct, autoDelete: false)
            try conn.publish(channel: ch, exchange: x, routingKey: "nowhere", body: Array("lost".utf8),
                             properties: AMQPProperties(messageID: "m1"), mandatory: true)
            let r = try AMQPTest.waitForEvent(conn, within: 5, "returned message") { e in
                if case .returned(let r) = e { r } else { nil }
            }
            #expect(r.channel == ch)
            #expect(r.replyCode == 312)
            #expect(r.exchange == x)
            #expect(r.routingKey == "nowhere")
            #expect(r.body == Array("lost".utf8))
            #expect(r.properties.messageID == "m1")
            try conn.exchangeDelete(channel: ch, name: x)
        }
    }

    /// Broker nacks (reject-publish overflow) are reported per delivery tag.
    @Test func confirmNacksPerTag() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("overflow")
            try conn.queueDeclare(channel: ch, name: q,
                                  arguments: ["x-expires": 60_000, "x-max-length": 1, "x-overflow": "reject-publish"])
            try conn.confirmSelect(channel: ch)
            var tags: [UInt64] = []
            for i in 0..<3 { tags.append(try #require(try conn.publish(channel: ch, exchange: "", routingKey: q, body: [UInt8(i)]))) }
            #expect(tags == [1, 2, 3])
            let r = try conn.waitForConfirms(channel: ch, timeout: 5)
            #expect(Set(r.acked + r.nacked) == Set(tags))
            #expect(r.acked.count + r.nacked.count == 3)
            #expect(r.nacked.count >= 1)
            #expect(r.acked.contains(1))
            try conn.queueDelete(channel: ch, queue: q)
        }
    }

    /// basic.get returns nil on an empty queue and the message otherwise; a cancelled consumer gets nothing more.
    @Test func getAndCancel() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("get")
            try conn.queueDeclare(channel: ch, name: q, arguments: ["x-expires": 60_000])
            #expect(try conn.get(channel: ch, queue: q) == nil)
            try conn.confirmSelect(channel: ch)
            try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("a".utf8))
            try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("b".utf8))
            _ = try conn.waitForConfirms(channel: ch, timeout: 5)
            let got = try #require(try conn.get(channel: ch, queue: q))
            #expect(got.body == Array("a".utf8))
            #expect(got.messageCount == 1)
            try conn.ack(channel: ch, deliveryTag: got.deliveryTag)
            let consumerTag = try conn.consume(channel: ch, queue: q)
            let d = try AMQPTest.nextDelivery(conn, channel: ch)
            #expect(d.body == Array("b".utf8))
            try conn.ack(channel: ch, deliveryTag: d.deliveryTag)
            try conn.cancel(channel: ch, consumerTag: consumerTag)
            // After the cancel, a new message stays in the queue instead of being delivered.
            try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("c".utf8))
            _ = try conn.waitForConfirms(channel: ch, timeout: 5)
            let later = try conn.drainEvents() + (conn.nextEvent(timeout: 0.3).map { [$0] } ?? [])
            #expect(!later.contains { if case .delivery = $0 { true } else { false } })
            #expect(try conn.get(channel: ch, queue: q, noAck: true)?.body == Array("c".utf8))
            try conn.queueDelete(channel: ch, queue: q)
        }
    }

    /// A broker-side cancel (the queue is deleted) ends consumption with a consumerCancelled event.
    @Test func brokerCancelEndsStream() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("brokercancel")
            try conn.queueDeclare(channel: ch, name: q)
            let consumerTag = try conn.consume(channel: ch, queue: q)
            let other = try conn.openChannel()
            try conn.queueDelete(channel: other, queue: q)
            let cancelled = try AMQPTest.waitForEvent(conn, within: 5, "consumerCancelled") { e in
                if case .consumerCancelled(let c, let tag) = e { (c, tag) } else { nil }
            }
            #expect(cancelled.0 == ch)
            #expect(cancelled.1 == consumerTag)
            #expect(conn.isChannelOpen(ch))
        }
    }

    /// With heartbeat=1 a connection that only waits in nextEvent survives 4 s and still publishes and consumes.
    @Test func heartbeatsKeepIdleConnectionAlive() throws {
        let conn = try AMQPTest.connect { $0.heartbeat = 1 }
        defer { conn.close() }
        #expect(conn.heartbeat == 1)
        let idleUntil = Date().addingTimeInterval(4)
        while Date() < idleUntil {
            #expect(try conn.nextEvent(timeout: min(1, max(0, idleUntil.timeIntervalSinceNow))) == nil)
        }
        #expect(conn.isOpen)
        let ch = try conn.openChannel()
        let q = AMQPTest.unique("heartbeat")
        try conn.queueDeclare(channel: ch, name: q, autoDelete: true)
        try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("alive".utf8))
        _ = try conn.consume(channel: ch, queue: q, noAck: true)
        #expect(try AMQPTest.nextDelivery(conn, channel: ch).body == Array("alive".utf8))
        try conn.queueDelete(channel: ch, queue: q)
    }

    /// When the broker force-closes the connection, the next read and every later call fail with connectionClosed, no hang.
    @Test func forcedCloseIsReported() throws {
        let name = AMQPTest.unique("forced")
        let conn = try AMQPTest.connect { $0.connectionName = name }
        defer { conn.close() }
        let ch = try conn.openChannel()
        let q = AMQPTest.unique("forcedq")
        try conn.queueDeclare(channel: ch, name: q, autoDelete: true)
        _ = try conn.consume(channel: ch, queue: q)
        // Find our connection's pid by its unique name and close only it.
        var pid: String?
        for _ in 0..<20 where pid == nil {
            let list = try AMQPTest.shell(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"]).output
            pid = list.split(separator: "\n").first { $0.contains(name) }.map { String($0.split(separator: "\t")[0]) }
            if pid == nil { Thread.sleep(forTimeInterval: 0.2) }
        }
        let target = try #require(pid)
        try AMQPTest.shell(["rabbitmqctl", "close_connection", target, "test forced close"])
        do {
            let e = try AMQPTest.waitForEvent(conn, within: 10, "connection loss") { $0 }
            Issue.record("an event instead of the connection loss: \(e)")
        } catch let e as AMQPError {
            #expect(e.code == .connectionClosed)
            #expect(e.isConnectionForced)
        }
        do {
            try conn.publish(channel: ch, exchange: "", routingKey: q, body: [1])
            Issue.record("publish after loss succeeded")
        } catch let e as AMQPError {
            #expect(e.code == .connectionClosed)
        }
        #expect(conn.isOpen == false)
        #expect(conn.closeError?.isConnectionForced == true)
    }

    /// The blocking layer keeps deliveries that arrive during synchronous RPCs and drains them in a batch.
    @Test func blockingBatchKeepsFramesAcrossRPCs() throws {
        let got: [AMQPDelivery] = try AMQPTest.withChannel { c, ch in
            let q = AMQPTest.unique("blocking")
            try c.queueDeclare(channel: ch, name: q, autoDelete: true)
            try c.confirmSelect(channel: ch)
            _ = try c.consume(channel: ch, queue: q)
            for i in 0..<50 { try c.publish(channel: ch, exchange: "", routingKey: q, body: Array("m\(i)".utf8)) }
            let confirms = try c.waitForConfirms(channel: ch, timeout: 5)
            #expect(confirms.acked.count == 50)
            // Deliveries arrive while these RPCs wait; they must not be lost.
            for _ in 0..<5 { try c.queueDeclare(channel: ch, name: q, passive: true) }
            var got: [AMQPDelivery] = []
            let deadline = Date().addingTimeInterval(5)
            while got.count < 50 && Date() < deadline {
                got += try c.nextDeliveries(max: 100, timeout: 1)
            }
            if let last = got.last { try c.ack(channel: ch, deliveryTag: last.deliveryTag, multiple: true) }
            try c.queueDelete(channel: ch, queue: q)
            return got
        }
        #expect(got.map { String(decoding: $0.body, as: UTF8.self) } == (0..<50).map { "m\($0)" })
    }
}
