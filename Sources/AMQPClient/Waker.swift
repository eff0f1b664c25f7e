import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Wakes the thread that owns a `BlockingConnection` while it waits in
/// `nextEvent(timeout:waker:)`, e.g. when a store operation running on another thread is done.
///
/// A non-blocking, close-on-exec pipe (a Unix socket pair): `signal()` writes a byte, the owner
/// polls `fileDescriptor` and `drain()`s it. Signals coalesce: several signals before the owner looks
/// wake it once.
///
/// Sendable without `@unchecked`: its only state is two immutable descriptors, and `write`/`read`
/// on a socket are safe from any thread.
public final class Waker: Sendable {
    /// The read end, for `poll()`; readable while a signal is pending.
    public let fileDescriptor: Int32
    private let writeFD: Int32

    public init() throws {
        // A socket pair rather than pipe(): Swift's Glibc has no pipe2 or eventfd, and setting
        // CLOEXEC after pipe() would leak the descriptors into a process another thread spawns
        // in between. socketpair sets both flags atomically.
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else {
            throw AMQPError(.socketError, "cannot create the waker's socket pair: \(String(cString: strerror(errno)))")
        }
        fileDescriptor = fds[0]
        writeFD = fds[1]
    }

    deinit {
        close(fileDescriptor)
        close(writeFD)
    }

    /// Wakes the owner; callable from any thread, never blocks. A full pipe already holds a
    /// pending signal, so a failed write loses nothing.
    public func signal() {
        var one: UInt8 = 1
        while write(writeFD, &one, 1) < 0 && errno == EINTR {}
    }

    /// Empties the pipe; returns true when a signal was pending. The owner calls it (or
    /// `nextEvent(timeout:waker:)` does) before looking at what the signal announced.
    @discardableResult
    public func drain() -> Bool {
        var sink = [UInt8](repeating: 0, count: 64)
        var signalled = false
        while true {
            let n = read(fileDescriptor, &sink, sink.count)
            if n > 0 { signalled = true; continue }
            if n < 0 && errno == EINTR { continue }
            return signalled
        }
    }
}
