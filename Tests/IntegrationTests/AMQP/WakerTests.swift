import Foundation
import RunTestSupport
import Testing
@testable import AMQPClient

@Suite(.requiresBroker, .ownThread, .timeLimit(.minutes(1)))
struct WakerTests {
    /// A signal from another thread ends a long `nextEvent(timeout:waker:)` wait, with nil: at the
    /// signal, not at the timeout (the bounds are half the timeout, so a busy machine cannot
    /// blur the two).
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
        #expect(elapsed < .seconds(5))
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
        #expect(try conn.nextEvent(timeout: 10, waker: waker) == nil)
        #expect(ContinuousClock.now - start < .seconds(5), "woken by the earlier signals, not at the timeout")
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
            #expect(elapsed < .seconds(5), "returned at the delivery, not at the 10 s timeout")
            try conn.ack(channel: ch, deliveryTag: d.deliveryTag)
            try conn.queueDelete(channel: ch, queue: q)
        }
    }
}

extension WakerTests {
    /// A broker that goes silent is noticed (missed heartbeats) during one long `nextEvent(timeout:waker:)` wait, not at its end.
    @Test func silentBrokerIsDetectedDuringALongWait() throws {
        var config = try AMQPTest.configuration { $0.heartbeat = 1 }
        let relay = try SilenceableRelay(host: config.host, port: config.port)
        defer { relay.stop() }
        config.host = "127.0.0.1"
        config.port = Int(relay.port)
        let conn = try BlockingConnection(configuration: config)
        defer { conn.close() }
        _ = try conn.openChannel()
        let waker = try Waker()
        relay.goSilent()
        let start = ContinuousClock.now
        do {
            let e = try conn.nextEvent(timeout: 30, waker: waker)
            Issue.record("the wait ended without noticing the silence: \(String(describing: e))")
        } catch let e as AMQPError {
            #expect(e.code == .connectionClosed)
        }
        // Missed heartbeats count after 2 × heartbeat; the wait looks every heartbeat/4. Half the
        // timeout tells "during the wait" from "at its end" on a busy machine too.
        #expect(ContinuousClock.now - start < .seconds(15))
        #expect(!conn.isOpen)
    }
}

/// A one-connection TCP relay to the broker that can stop relaying in both directions, so that
/// the broker looks silent while the TCP connection stays up.
///
/// `@unchecked Sendable` is safe: `silent` and `stopped` are guarded by `lock`; the descriptors
/// are used by the relay thread only, except `listenFD`, which is immutable.
private final class SilenceableRelay: @unchecked Sendable {
    let port: UInt16
    private let listenFD: Int32
    private let lock = NSLock()
    private var silent = false
    private var stopped = false

    init(host: String, port: Int) throws {
        var target = sockaddr_in()
        target.sin_family = sa_family_t(AF_INET)
        target.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &target.sin_addr) == 1 else {
            throw AMQPTest.Timeout(what: "relay: \(host) is not an IPv4 address")
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = in_addr_t(0x7F00_0001).bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bind(fd, sa, len) == 0 && listen(fd, 1) == 0 && getsockname(fd, sa, &len) == 0
            }
        }
        guard ok else { close(fd); throw AMQPTest.Timeout(what: "relay: cannot listen") }
        self.port = UInt16(bigEndian: addr.sin_port)
        listenFD = fd
        Thread.detachNewThread { [self, target] in self.relay(listening: fd, to: target) }
    }

    func goSilent() { lock.withLock { silent = true } }
    func stop() { lock.withLock { stopped = true } }

    private func relay(listening: Int32, to target: sockaddr_in) {
        defer { close(listening) }
        let deadline = ContinuousClock.now + .seconds(60)
        var listenPoll = [pollfd(fd: listening, events: Int16(POLLIN), revents: 0)]
        while poll(&listenPoll, 1, 100) == 0 {
            if lock.withLock({ stopped }) || ContinuousClock.now > deadline { return }
        }
        let client = accept(listening, nil, nil)
        let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client); close(upstream) }
        var t = target
        let connected = withUnsafePointer(to: &t) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard client >= 0, connected else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var fds = [pollfd(fd: client, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: upstream, events: Int16(POLLIN), revents: 0)]
        while ContinuousClock.now < deadline {
            let (quiet, done) = lock.withLock { (silent, stopped) }
            if done { return }
            if quiet { Thread.sleep(forTimeInterval: 0.05); continue }  // read nothing, forward nothing
            if poll(&fds, 2, 100) <= 0 { continue }
            for (from, to) in [(0, 1), (1, 0)] where fds[from].revents != 0 {
                let n = read(fds[from].fd, &buffer, buffer.count)
                if n <= 0 { return }
                var sent = 0
                while sent < n {
                    let w = buffer.withUnsafeBytes { write(fds[to].fd, $0.baseAddress! + sent, n - sent) }
                    if w <= 0 { return }
                    sent += w
                }
            }
        }
    }
}
