import AMQPClient
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where the integration tests find their broker and binaries, and whether they must run.
public enum TestEnvironment {
    /// `RUNWORKER_AMQP_URL`, or the local broker `scripts/test` starts.
    public static let amqpURL: String =
        ProcessInfo.processInfo.environment["RUNWORKER_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/"

    /// Whether this is a CI run (`CI` set to anything but empty, `0` or `false`): there the
    /// integration tests are required, and fail when the broker is missing.
    public static let isCI: Bool = {
        guard let v = ProcessInfo.processInfo.environment["CI"]?.lowercased() else { return false }
        return !["", "0", "false", "no"].contains(v)
    }()

    /// Whether something accepts a TCP connection at the host and port of `amqpURL` within
    /// two seconds (checked once per process).
    public static let brokerAvailable: Bool = {
        guard let config = try? AMQPConfiguration(url: amqpURL) else { return false }
        return canConnect(host: config.host, port: config.port, timeout: 2)
    }()

    /// The folder holding the running executable; SwiftPM puts `runworker` and `runctl` there
    /// next to the test bundle.
    public static let productsDirectory: URL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        .deletingLastPathComponent()

    /// A TCP connect to host:port, bounded by `timeout` seconds.
    public static func canConnect(host: String, port: Int, timeout: Double) -> Bool {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else { return false }
        defer { freeaddrinfo(first) }
        var next: UnsafeMutablePointer<addrinfo>? = first
        while let ai = next {
            next = ai.pointee.ai_next
            let fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype, ai.pointee.ai_protocol)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            if connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 { return true }
            guard errno == EINPROGRESS else { continue }
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            guard poll(&pfd, 1, Int32(timeout * 1000)) == 1 else { continue }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            if getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0, error == 0 { return true }
        }
        return false
    }
}
