import AMQPClient
import Foundation
#if canImport(Glibc)
import Glibc
#endif

// Interim, until AMQPClient's own Waker lands.
final class Waker: Sendable {
    let readFD: Int32
    let writeFD: Int32
    init() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw AMQPError(.socketError, "pipe failed") }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        readFD = fds[0]
        writeFD = fds[1]
    }
    deinit {
        close(readFD)
        close(writeFD)
    }
    func signal() {
        var one: UInt8 = 1
        _ = write(writeFD, &one, 1)
    }
    func drain() {
        var sink = [UInt8](repeating: 0, count: 64)
        while read(readFD, &sink, 64) > 0 {}
    }
}

extension BlockingConnection {
    func nextEvent(timeout: Double, waker: Waker) throws -> AMQPEvent? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if hasBufferedEvents { return try nextEvent(timeout: 0) }
            let left = deadline.timeIntervalSinceNow
            var fds = [pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: waker.readFD, events: Int16(POLLIN), revents: 0)]
            let ms = Int32(max(0, min(left, 0.5)) * 1000)
            _ = poll(&fds, 2, ms)
            if fds[1].revents != 0 {
                waker.drain()
                return try nextEvent(timeout: 0)
            }
            if let e = try nextEvent(timeout: 0) { return e }
            if Date() >= deadline { return nil }
        }
    }
}
