import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A blocking HTTP/1.1 client for tests, on a plain socket: one request per connection
/// (`Connection: close`), answers read to the end or, for a stream, line by line with a
/// deadline. Only `http://host:port` on IPv4 addresses.
public enum HTTPProbe {
    public struct Answer: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: [UInt8]
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// GET (or another method) `path` from `base` (`http://127.0.0.1:8080`).
    public static func request(
        _ base: String, _ path: String, method: String = "GET", headers: [String: String] = [:], timeout: Double = 10
    ) throws -> Answer {
        let fd = try connect(base, timeout: timeout)
        defer { close(fd) }
        try send(fd, request(base, path, method: method, headers: headers))
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { data += buffer[0..<n] } else if n == 0 { break } else if errno != EAGAIN && errno != EINTR { break }
        }
        return try parse(data)
    }

    /// Opens `path` as a stream and calls `line` with each line (without its newline) until it
    /// returns true (then true) or `timeout` passes (then false). The status line and headers
    /// are passed too, so a caller can check them.
    public static func stream(
        _ base: String, _ path: String, headers: [String: String] = [:], timeout: Double, onOpen: (() throws -> Void)? = nil,
        line: (String) throws -> Bool
    ) throws -> Bool {
        let fd = try connect(base, timeout: 0.2)
        defer { close(fd) }
        try send(fd, request(base, path, method: "GET", headers: headers))
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let deadline = Date().addingTimeInterval(timeout)
        var opened = false
        while Date() < deadline {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n == 0 { return false }
            if n < 0 {
                guard errno == EAGAIN || errno == EINTR else { return false }
                continue
            }
            pending += buffer[0..<n]
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                var text = String(decoding: pending[..<newline], as: UTF8.self)
                if text.hasSuffix("\r") { text.removeLast() }
                pending.removeSubrange(...newline)
                if try line(text) { return true }
                // The head ends with an empty line; after it, the stream is open.
                if !opened, text.isEmpty {
                    opened = true
                    try onOpen?()
                }
            }
        }
        return false
    }

    /// A stream client that stops reading: it opens `path` with a small receive buffer, reads
    /// the answer's head (and whatever came with it), then reads nothing, so that the server's
    /// writes pile up (a stalled client, or an attacker's). `closedByServer` tells later whether
    /// the server gave up on it.
    public final class StalledStream: @unchecked Sendable {
        // @unchecked: one test thread uses it; `fd` is closed once, in `close()`.
        public let status: Int
        public let head: String
        private var fd: Int32

        public init(_ base: String, _ path: String, headers: [String: String] = [:], receiveBuffer: Int32 = 4096) throws {
            let fd = try HTTPProbe.connect(base, timeout: 10, receiveBuffer: receiveBuffer)
            self.fd = fd
            do {
                try HTTPProbe.send(fd, HTTPProbe.request(base, path, method: "GET", headers: headers))
                var data: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                let separator: [UInt8] = Array("\r\n\r\n".utf8)
                while !data.indices.contains(where: { data[$0...].starts(with: separator) }) {
                    let n = recv(fd, &buffer, buffer.count, 0)
                    guard n > 0 else { throw TestKitError(.process, "the stream's head did not come: \(String(decoding: data, as: UTF8.self))") }
                    data += buffer[0..<n]
                }
                let end = data.indices.first { data[$0...].starts(with: separator) }!
                head = String(decoding: data[..<end], as: UTF8.self)
                status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
            } catch {
                Glibc.close(fd)
                throw error
            }
        }

        /// Whether the server closed the connection: reads (and drops) what is buffered until
        /// the end of the stream, a reset, or `timeout` seconds without it.
        public func closedByServer(timeout: Double) -> Bool {
            guard fd >= 0 else { return false }
            var tv = timeval(tv_sec: 0, tv_usec: 200_000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var buffer = [UInt8](repeating: 0, count: 65_536)
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n == 0 { return true }
                if n < 0 && errno != EAGAIN && errno != EINTR { return errno == ECONNRESET }
            }
            return false
        }

        public func close() {
            guard fd >= 0 else { return }
            Glibc.close(fd)
            fd = -1
        }

        deinit { close() }
    }

    /// The request's bytes; a `Host` in `headers` replaces the base's.
    static func request(_ base: String, _ path: String, method: String, headers: [String: String]) -> [UInt8] {
        let host = headers.first { $0.key.lowercased() == "host" }?.value ?? hostPort(base).0
        var text = "\(method) \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n"
        for (k, v) in headers where k.lowercased() != "host" { text += "\(k): \(v)\r\n" }
        return Array((text + "\r\n").utf8)
    }

    public static func hostPort(_ base: String) -> (String, UInt16) {
        var rest = base
        if let r = rest.range(of: "://") { rest = String(rest[r.upperBound...]) }
        if let slash = rest.firstIndex(of: "/") { rest = String(rest[..<slash]) }
        let parts = rest.split(separator: ":")
        return (String(parts.first ?? "127.0.0.1"), parts.count > 1 ? UInt16(parts[1]) ?? 80 : 80)
    }

    /// A connected socket; `receiveBuffer` sets its receive buffer before it connects, so that
    /// the window the server sees is small from the start.
    static func connect(_ base: String, timeout: Double, receiveBuffer: Int32? = nil) throws -> Int32 {
        let (host, port) = hostPort(base)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestKitError(.process, "socket: \(String(cString: strerror(errno)))") }
        if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &address.sin_addr)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw TestKitError(.process, "connect to \(host):\(port): \(message)")
        }
        return fd
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestKitError(.process, "send: \(String(cString: strerror(errno)))") }
            sent += n
        }
    }

    /// Status, headers (names lowercased) and body; a chunked body is reassembled.
    public static func parse(_ data: [UInt8]) throws -> Answer {
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let end = data.indices.first(where: { data[$0...].starts(with: separator) }) else {
            throw TestKitError(.process, "no HTTP head in \(data.count) bytes: \(String(decoding: data, as: UTF8.self))")
        }
        let head = String(decoding: data[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = head[0].split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw TestKitError(.process, "bad status line \(head[0])") }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = Array(data[(end + 4)...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            var out: [UInt8] = []
            var i = 0
            while i < body.count {
                guard let lineEnd = body[i...].firstIndex(of: UInt8(ascii: "\n")) else { break }
                let sizeText = String(decoding: body[i..<lineEnd], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                guard let size = Int(sizeText.split(separator: ";").first ?? "", radix: 16), size > 0 else { break }
                let start = lineEnd + 1
                out += body[start..<min(start + size, body.count)]
                i = start + size + 2
            }
            body = out
        }
        return Answer(status: status, headers: headers, body: body)
    }
}
