import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A TCP relay on 127.0.0.1 in front of a broker, for tests that cut a worker off the network
/// without telling it: after `cut()` the relay keeps every socket open but forwards nothing
/// (what it reads is thrown away, as a partitioned network drops packets), so neither side
/// sees a reset and each notices only by its own timeouts (heartbeats). `heal()` closes the
/// connections that were cut and forwards new ones again.
///
/// One thread per direction of each connection; every socket is closed by `stop()`.
public final class TCPRelay: Sendable {
    public let port: Int
    private let target: (host: String, port: Int)
    private let listener: Int32
    private let state = Mutex(State())

    private struct State {
        var cut = false
        var stopped = false
        /// Open sockets, and the generation of the cut they belong to.
        var sockets: [Int32: Int] = [:]
        var generation = 0
    }

    public init(toHost host: String, port targetPort: Int) throws {
        target = (host, targetPort)
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        guard listener >= 0 else { throw RelayError("socket: \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(listener, 16) == 0 else {
            close(listener)
            throw RelayError("bind/listen: \(String(cString: strerror(errno)))")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        self.port = Int(UInt16(bigEndian: address.sin_port))
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "tcp-relay-accept"
        thread.start()
    }

    /// An amqp:// URL like `url` that goes through this relay instead.
    public func url(replacing url: String) -> String {
        guard var components = URLComponents(string: url) else { return url }
        components.host = "127.0.0.1"
        components.port = port
        return components.string ?? url
    }

    /// From now on nothing goes through, on either side, and nothing is closed.
    public func cut() { state.withLock { $0.cut = true } }

    /// Closes the connections that were cut and forwards new connections again.
    public func heal() {
        let doomed: [Int32] = state.withLock { s in
            s.cut = false
            let old = s.sockets.filter { $0.value == s.generation }.map(\.key)
            s.generation += 1
            return old
        }
        for fd in doomed { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    /// Closes everything.
    public func stop() {
        let all: [Int32] = state.withLock { s in
            s.stopped = true
            return Array(s.sockets.keys)
        }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for fd in all { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    deinit { stop() }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            guard let upstream = connectTarget() else {
                close(client)
                continue
            }
            let registered = state.withLock { s -> Bool in
                guard !s.stopped else { return false }
                s.sockets[client] = s.generation
                s.sockets[upstream] = s.generation
                return true
            }
            guard registered else {
                close(client)
                close(upstream)
                return
            }
            let left = Thread { [self] in pump(from: client, to: upstream) }
            let right = Thread { [self] in pump(from: upstream, to: client) }
            left.start()
            right.start()
        }
    }

    private func connectTarget() -> Int32? {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var info: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(target.host, String(target.port), &hints, &info) == 0, let first = info else { return nil }
        defer { freeaddrinfo(info) }
        let fd = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
        guard fd >= 0 else { return nil }
        guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    /// Copies `source` to `sink` until either closes; while cut, reads and drops.
    private func pump(from source: Int32, to sink: Int32) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        defer {
            shutdown(source, Int32(SHUT_RDWR))
            shutdown(sink, Int32(SHUT_RDWR))
            let last = state.withLock { s -> Bool in
                s.sockets[source] = nil
                return s.sockets[sink] == nil
            }
            // The second pump of the pair to finish closes both descriptors.
            if last {
                close(source)
                close(sink)
            }
        }
        while true {
            let n = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return }
            if state.withLock({ $0.cut }) { continue }
            var sent = 0
            while sent < n {
                // send with MSG_NOSIGNAL, not write: a peer that heal() just shut down would
                // otherwise raise SIGPIPE and kill the whole test process.
                let w = buffer.withUnsafeBytes { send(sink, $0.baseAddress! + sent, n - sent, Int32(MSG_NOSIGNAL)) }
                if w < 0, errno == EINTR { continue }
                guard w > 0 else { return }
                sent += w
            }
        }
    }
}

public struct RelayError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
