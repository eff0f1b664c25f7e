import Foundation
import RunContract
import RunTestSupport
import RunWorkerTestKit
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The HTTP listener's connection limits against a real worker process, with raw sockets:
/// a head that trickles, a kept-alive connection that idles, the connection cap (eviction of
/// waiting connections, refusal when all are busy), a request
/// that is not HTTP, and accepting when the process has no descriptor left. Timeouts are
/// short through the `http.*` settings; bounds are generous above and exact below.
@Suite(.serialized, .requiresBroker, .ownThread) struct HTTPConnectionTests {
    /// A worker with these `http.*` settings on a fresh prefix; `body` gets its HTTP base.
    static func withWorker(_ name: String, _ env: [String: String], _ body: (WorkerProcess, String) throws -> Void) throws {
        let prefix = uniquePrefix(name)
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let worker = try WorkerProcess(prefix: prefix, store: store, extraEnv: env)
        defer { _ = worker.terminate() }
        try worker.waitReady()
        let base = try #require(worker.httpBase, "the status file names the HTTP address")
        try body(worker, base)
        #expect(worker.terminate() == 0, "\(worker.log.suffix(3000))")
    }

    /// A head sent one byte at a time is cut at the header timeout from the connection's
    /// opening, unanswered, while the worker goes on answering others.
    @Test func tricklingHeadIsDisconnected() throws {
        try Self.withWorker("httptrickle", ["RUNWORKER_HTTP_HEADER_TIMEOUT_S": "1", "RUNWORKER_HTTP_IDLE_TIMEOUT_S": "30"]) { _, base in
            let sockets = try (0..<20).map { _ in try RawSocket(base) }
            let opened = Date()
            var open = Set(sockets.indices)
            var closedAfter: [Double] = []
            var received = 0
            // A valid start, then a header value one byte at a time: a head that never ends.
            for socket in sockets { #expect(socket.send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: ")) }
            while !open.isEmpty, Date().timeIntervalSince(opened) < 15 {
                for i in open {
                    // A closed socket refuses the byte or reads EOF.
                    if !sockets[i].send("a") || sockets[i].closedOrReceived(within: 0.01, received: &received) {
                        open.remove(i)
                        closedAfter.append(Date().timeIntervalSince(opened))
                    }
                }
                usleep(100_000)
            }
            #expect(open.isEmpty, "\(open.count) trickling connections still open after 15 s")
            #expect((closedAfter.min() ?? 0) >= 0.9, "closed after \(closedAfter) s: before the header timeout")
            #expect(received == 0, "a trickled head was answered")
            #expect(try HTTPProbe.request(base, "/healthz").status == 200)
        }
    }

    /// A kept-alive connection may wait longer than the header timeout between requests, is
    /// closed after the idle timeout, and a request within it is served.
    @Test func idleKeepAliveIsClosed() throws {
        try Self.withWorker("httpidle", ["RUNWORKER_HTTP_HEADER_TIMEOUT_S": "0.5", "RUNWORKER_HTTP_IDLE_TIMEOUT_S": "2"]) { _, base in
            let socket = try RawSocket(base)
            #expect(try socket.exchange("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").status == 200)
            // Beyond the header timeout, within the idle one: the connection still serves.
            usleep(1_200_000)
            #expect(try socket.exchange("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").status == 200)
            let answered = Date()
            var received = 0
            #expect(socket.closedOrReceived(within: 15, received: &received), "still open 15 s after the last answer")
            let idled = Date().timeIntervalSince(answered)
            #expect(received == 0)
            #expect(idled >= 1.8, "closed after \(idled) s of idling: sooner than the idle timeout")
        }
    }

    /// With `http.max_connections` N open and waiting, connection N+1 is served and the oldest
    /// waiting one closed for it (so idle sockets cannot lock out /healthz); with all N busy
    /// (event streams), N+1 is answered 503 (the API's error) and closed at once, and once one
    /// closes /healthz answers again; both are counted.
    @Test func capEvictsWaitingConnectionsAndRefusesWhenAllAreBusy() throws {
        let env = ["RUNWORKER_HTTP_MAX_CONNECTIONS": "3", "RUNWORKER_HTTP_HEADER_TIMEOUT_S": "30", "RUNWORKER_HTTP_IDLE_TIMEOUT_S": "30"]
        let healthz = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        try Self.withWorker("httpcap", env) { worker, base in
            // Each answers a request before the next one connects, so that the worker has taken
            // them in this order (sockets accepted together are taken on two event loops, in
            // either order); then they idle.
            var idle: [RawSocket] = []
            for _ in 0..<3 {
                idle.append(try RawSocket(base))
                #expect(try idle.last?.exchange(healthz).status == 200)
            }
            let newcomer = try RawSocket(base)
            #expect(try newcomer.exchange(healthz).status == 200, "served although the cap was reached")
            var received = 0
            #expect(
                idle[0].closedOrReceived(within: 10, received: &received) && received == 0,
                "the oldest idle one was closed: \((try? HTTPProbe.request(base, "/metrics").text) ?? "")\n\(worker.log.suffix(3000))")
            #expect(try idle[2].exchange(healthz).status == 200, "the others are still served")
            [idle[1], idle[2], newcomer].forEach { $0.close() }

            // Three event streams: every connection busy answering.
            var streams: [RawSocket] = []
            try waitUntil("three streams are open", timeout: 20) {
                guard streams.count < 3 else { return true }
                let socket = try RawSocket(base)
                guard socket.send("GET /v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
                    let head = try? socket.readHead(timeout: 5), head.hasPrefix("HTTP/1.1 200")
                else { return false }  // refused while the closed sockets' places were not yet free
                streams.append(socket)
                return streams.count == 3
            }
            let started = Date()
            let extra = try RawSocket(base)
            let answer = try HTTPProbe.parse(try extra.readToEnd(timeout: 10))
            let took = Date().timeIntervalSince(started)
            #expect(answer.status == 503, "\(answer.text)")
            #expect((try? JSONValue.parse(answer.body))?["error"]?["code"]?.stringValue == "unavailable", "\(answer.text)")
            #expect(answer.headers["connection"] == "close" && answer.headers["retry-after"] == "1")
            #expect(took < 5, "refused after \(took) s")

            streams[0].close()
            var metrics = ""
            try waitUntil("a place is free again, and the metrics count the refusal and the eviction", timeout: 10, explain: { metrics }) {
                guard let answer = try? HTTPProbe.request(base, "/metrics", timeout: 2), answer.status == 200 else { return false }
                metrics = answer.text
                func value(_ name: String) -> Double? {
                    metrics.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
                }
                return (value("runworker_http_connections_refused_total") ?? 0) >= 1
                    && (value("runworker_http_connections_evicted_total") ?? 0) >= 1
            }
            streams.forEach { $0.close() }
            #expect(worker.isRunning)
        }
    }

    /// A request the HTTP parser refuses gets a 400 with the API's JSON error and the
    /// connection closes; the worker goes on serving.
    @Test func malformedRequestGetsJSON400() throws {
        try Self.withWorker("httpbad", [:]) { _, base in
            for request in ["GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n", "HELLO WORLD\r\n\r\n", "GET / HTTP/9.9\r\n\r\n"] {
                let socket = try RawSocket(base)
                #expect(socket.send(request))
                let answer = try HTTPProbe.parse(try socket.readToEnd(timeout: 10))
                #expect(answer.status == 400, "\(request.debugDescription): \(answer.text)")
                #expect(answer.headers["content-type"] == "application/json" && answer.headers["x-content-type-options"] == "nosniff")
                #expect((try? JSONValue.parse(answer.body))?["error"]?["code"]?.stringValue == "validation_error", "\(answer.text)")
            }
            #expect(try HTTPProbe.request(base, "/healthz").status == 200)
        }
    }

    /// With its descriptors all taken (the process limit lowered under many open connections),
    /// the worker does not spin on the connections it cannot accept: it pauses accepting, uses
    /// little CPU, and serves again once the connections close.
    @Test func noSpinWhenDescriptorsRunOut() throws {
        let env = ["RUNWORKER_HTTP_MAX_CONNECTIONS": "5000", "RUNWORKER_HTTP_HEADER_TIMEOUT_S": "60", "RUNWORKER_HTTP_IDLE_TIMEOUT_S": "60"]
        try Self.withWorker("httpfd", env) { worker, base in
            let used = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(worker.pid)/fd").count
            // Room for 50 more descriptors, then the process's limit (util-linux's prlimit: Glibc's
            // prlimit(2) is not visible to Swift).
            let lowered = try runProgram("/usr/bin/prlimit", ["--pid", "\(worker.pid)", "--nofile=\(used + 50):\(used + 50)"], timeout: 10)
            try #require(lowered.status == 0, "prlimit: \(lowered.output)")
            var sockets: [RawSocket] = []
            defer { sockets.forEach { $0.close() } }
            for _ in 0..<150 { sockets.append(try RawSocket(base)) }
            // Accepting fails with EMFILE from here on; CPU over 3 s of that:
            usleep(500_000)
            let before = try Self.cpuSeconds(worker.pid)
            usleep(3_000_000)
            let used3s = try Self.cpuSeconds(worker.pid) - before
            #expect(used3s < 0.9, "the worker used \(used3s) s of CPU in 3 s while it could not accept")
            #expect(worker.isRunning)
            sockets.forEach { $0.close() }
            sockets = []
            try waitUntil("the worker accepts again", timeout: 20, explain: { worker.log.suffix(2000).description }) {
                (try? HTTPProbe.request(base, "/healthz", timeout: 2))?.status == 200
            }
            #expect(worker.log.contains("cannot accept connections, pausing"), "\(worker.log.suffix(2000))")
        }
    }

    /// User and system CPU seconds of a process so far (/proc/PID/stat, fields 14 and 15).
    static func cpuSeconds(_ pid: Int32) throws -> Double {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // The command name (field 2) may hold spaces; the fields after it are counted from ')'.
        let fields = stat[stat.index(after: try #require(stat.lastIndex(of: ")")))...].split(separator: " ")
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return (Double(fields[11]) ?? 0) / ticks + (Double(fields[12]) ?? 0) / ticks
    }
}

/// A blocking TCP connection to the worker's listener, for what `HTTPProbe` does not do:
/// keep-alive, partial heads, idling, reading until the server closes.
final class RawSocket {
    let fd: Int32
    private var closed = false

    init(_ base: String) throws {
        let (host, port) = HTTPProbe.hostPort(base)
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestKitError(.process, "socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &address.sin_addr)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw TestKitError(.process, "connect to \(host):\(port): \(message)")
        }
    }

    deinit { close() }

    func close() {
        if !closed { Glibc.close(fd) }
        closed = true
    }

    /// Sends all of `text`; false when the connection refuses it (closed or reset).
    func send(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return false }
            sent += n
        }
        return true
    }

    /// Waits up to `within` seconds for the connection to end (EOF or reset: true) or bytes
    /// to arrive (counted in `received`, true); false when nothing happened.
    func closedOrReceived(within seconds: Double, received: inout Int) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, Int32(seconds * 1000)) > 0 else { return false }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        if n > 0 { received += n }
        return true
    }

    /// Everything the server sends until it closes the connection, waiting at most `timeout`.
    func readToEnd(timeout: Double) throws -> [UInt8] {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { throw TestKitError(.process, "the server did not close within \(timeout) s (read \(data.count) bytes)") }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, Int32(left * 1000) + 1) > 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { data += buffer[0..<n] } else { return data }
        }
    }

    /// The head of an answer (up to its empty line), leaving the connection open.
    func readHead(timeout: Double) throws -> String {
        var data: [UInt8] = []
        var byte: UInt8 = 0
        let deadline = Date().addingTimeInterval(timeout)
        while !data.reversed().starts(with: [10, 13, 10, 13]) {
            guard deadline.timeIntervalSinceNow > 0 else { throw TestKitError(.process, "no head within \(timeout) s") }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 100) > 0 else { continue }
            guard recv(fd, &byte, 1, 0) == 1 else { throw TestKitError(.process, "the connection closed after \(data.count) bytes") }
            data.append(byte)
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Sends a request and reads one response (its head, and a body of `Content-Length`),
    /// leaving the connection open.
    func exchange(_ request: String, timeout: Double = 10) throws -> HTTPProbe.Answer {
        guard send(request) else { throw TestKitError(.process, "send failed: the connection is closed") }
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let deadline = Date().addingTimeInterval(timeout)
        while deadline.timeIntervalSinceNow > 0 {
            if let answer = try? HTTPProbe.parse(data), let length = answer.headers["content-length"].flatMap(Int.init),
                answer.body.count >= length
            {
                return answer
            }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 100) > 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { throw TestKitError(.process, "the connection closed after \(data.count) bytes") }
            data += buffer[0..<n]
        }
        throw TestKitError(.process, "no whole answer within \(timeout) s: \(String(decoding: data, as: UTF8.self))")
    }
}
