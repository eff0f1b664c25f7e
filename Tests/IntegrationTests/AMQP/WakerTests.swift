import Foundation
import Testing
@testable import AMQPClient

@Suite(.timeLimit(.minutes(1)))
struct WakerTests {
    /// A signal from another thread ends a long `nextEvent(timeout:waker:)` wait well under a second, with nil.
    @Test func signalFromAnotherThreadWakesTheWait() throws {
        let conn = try AMQPTest.connect()
        defer { conn.close() }
        let waker = try Waker()
        let start = ContinuousClock.now
        Thread.detachNewThread {
            Thread.sleep(forTimeInterval: 0.2)
            waker.signal()
        }
        let event = try conn.nextEvent(timeout: 10, waker: waker)
        let elapsed = ContinuousClock.now - start
        #expect(event == nil)
        #expect(elapsed >= .milliseconds(150))
        #expect(elapsed < .milliseconds(800))
        // The signal was drained: the next wait runs to its deadline.
        let again = ContinuousClock.now
        #expect(try conn.nextEvent(timeout: 0.2, waker: waker) == nil)
        #expect(ContinuousClock.now - again >= .milliseconds(150))
        #expect(conn.isOpen)
    }

    /// Signals sent before the wait are not lost, and several of them wake it once.
    @Test func signalsBeforeTheWaitCoalesce() throws {
        let conn = try AMQPTest.connect()
        defer { conn.close() }
        let waker = try Waker()
        for _ in 0..<3 { waker.signal() }
        let start = ContinuousClock.now
        #expect(try conn.nextEvent(timeout: 5, waker: waker) == nil)
        #expect(ContinuousClock.now - start < .milliseconds(100))
        #expect(!waker.drain())
    }

    /// With heartbeat=1, a connection that only waits in `nextEvent(timeout:waker:)` with 2 s timeouts stays open for 4 s and still works.
    @Test func longWaitsServiceHeartbeats() throws {
        let conn = try AMQPTest.connect { $0.heartbeat = 1 }
        defer { conn.close() }
        #expect(conn.heartbeat == 1)
        let waker = try Waker()
        let idleUntil = Date().addingTimeInterval(4)
        while Date() < idleUntil {
            #expect(try conn.nextEvent(timeout: 2, waker: waker) == nil)
        }
        #expect(conn.isOpen)
        let ch = try conn.openChannel()
        let q = AMQPTest.unique("wakerheartbeat")
        try conn.queueDeclare(channel: ch, name: q, autoDelete: true)
        try conn.confirmSelect(channel: ch)
        try conn.publish(channel: ch, exchange: "", routingKey: q, body: Array("alive".utf8))
        #expect(try conn.waitForConfirms(channel: ch, timeout: 5).acked == [1])
        _ = try conn.consume(channel: ch, queue: q, noAck: true)
        let d = try AMQPTest.waitForEvent(conn, within: 5, "delivery") { e in
            if case .delivery(let d) = e { d } else { nil }
        }
        #expect(d.body == Array("alive".utf8))
        try conn.queueDelete(channel: ch, queue: q)
    }

    /// A delivery published (by another connection on another thread) while the owner waits is returned at once, not at the timeout.
    @Test func deliveryWhileWaitingIsReturnedPromptly() throws {
        try AMQPTest.withChannel { conn, ch in
            let q = AMQPTest.unique("wakerdelivery")
            try conn.queueDeclare(channel: ch, name: q, arguments: ["x-expires": 60_000])
            let consumerTag = try conn.consume(channel: ch, queue: q)
            let waker = try Waker()
            let config = try AMQPTest.configuration()
            let publisher = Thread {
                Thread.sleep(forTimeInterval: 0.3)
                // This connection lives and dies on the publisher thread.
                guard let p = try? BlockingConnection(configuration: config),
                      let pch = try? p.openChannel() else { return }
                _ = try? p.publish(channel: pch, exchange: "", routingKey: q, body: Array("late".utf8))
                p.close()
            }
            let start = ContinuousClock.now
            publisher.start()
            var delivery: AMQPDelivery?
            while delivery == nil, ContinuousClock.now - start < .seconds(10) {
                if case .delivery(let d) = try conn.nextEvent(timeout: 10, waker: waker) { delivery = d }
            }
            let elapsed = ContinuousClock.now - start
            let d = try #require(delivery)
            #expect(d.body == Array("late".utf8))
            #expect(d.consumerTag == consumerTag)
            #expect(elapsed < .seconds(2))
            try conn.ack(channel: ch, deliveryTag: d.deliveryTag)
            try conn.queueDelete(channel: ch, queue: q)
        }
    }
}
