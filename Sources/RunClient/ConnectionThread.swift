import AMQPClient
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The work done on a `ConnectionThread`. Every method is called on that thread only, so a
/// handler's state needs no lock; the `@unchecked Sendable` of the conforming classes rests on
/// that: after `ConnectionThread.init`, only the thread touches the handler.
protocol ConnectionHandler: AnyObject, Sendable {
    associatedtype Job: Sendable
    /// Whether a connection should be held now (a sender only while it has work to do).
    var wantsConnection: Bool { get }
    /// The earliest moment `tick` has something to do, if any.
    var nextDeadline: Date? { get }
    /// A new connection, the first (`reconnect` false) or a later one: open channels, declare.
    func connected(_ conn: BlockingConnection, reconnect: Bool) throws
    /// A connection attempt failed (`failures` in a row). Returns false to stop the thread.
    func connectFailed(_ error: AMQPError, failures: Int, everConnected: Bool) -> Bool
    /// The connection was lost (or dropped on request).
    func disconnected(_ error: AMQPError)
    /// Work submitted from another thread; `conn` is nil while there is no connection.
    func perform(_ job: Job, conn: BlockingConnection?) throws
    func handle(_ event: AMQPEvent, conn: BlockingConnection) throws
    /// Deadlines: called after every wake-up.
    func tick(now: Date)
    /// The thread ends (after `stop()` or a refused reconnect); finish every waiter.
    func stopped()
}

/// One `BlockingConnection` owned by one dedicated thread, never by the Swift concurrency pool:
/// librabbitmq blocks and a connection must stay on one thread. Async callers hand jobs over
/// (`submit`) and are resumed by the handler through continuations; the thread sleeps in
/// `nextEvent(timeout:waker:)` so that a job wakes it at once, and reconnects with backoff when
/// the connection is lost.
final class ConnectionThread<Handler: ConnectionHandler>: Sendable {
    private let handler: Handler
    private let configuration: AMQPConfiguration
    private let policy: ReconnectPolicy
    private let waker: Waker
    private let inbox = Mutex(Inbox())

    private struct Inbox {
        var jobs: [Handler.Job] = []
        var stopping = false
        var stopped = false
        var dropConnection = false
    }

    private let name: String

    /// The thread starts with `start()`; until then the caller may still set the handler up.
    init(name: String, configuration: AMQPConfiguration, policy: ReconnectPolicy, handler: Handler) throws {
        self.name = name
        self.handler = handler
        self.configuration = configuration
        self.policy = policy
        waker = try Waker()
    }

    /// Starts the thread (once).
    func start() {
        let thread = Thread { [self] in main() }
        thread.name = name
        thread.start()
    }

    /// Hands a job to the thread; false when the thread has stopped (the job is not run).
    @discardableResult
    func submit(_ job: Handler.Job) -> Bool {
        let accepted = inbox.withLock { s -> Bool in
            guard !s.stopping, !s.stopped else { return false }
            s.jobs.append(job)
            return true
        }
        if accepted { waker.signal() }
        return accepted
    }

    /// Ends the thread: the connection is closed and `handler.stopped()` called. Idempotent.
    func stop() {
        inbox.withLock { $0.stopping = true }
        waker.signal()
    }

    var isStopped: Bool { inbox.withLock { $0.stopped } }

    /// Closes the connection as if the network had dropped it; the thread reconnects. For tests
    /// and for callers that know the connection is stale.
    func dropConnection() {
        inbox.withLock { $0.dropConnection = true }
        waker.signal()
    }

    private func main() {
        var conn: BlockingConnection?
        var everConnected = false
        var failures = 0
        var retryAt = Date.distantPast

        func lose(_ error: Error) {
            conn?.close()
            conn = nil
            let e = (error as? AMQPError) ?? AMQPError(.connectionClosed, "\(error)")
            handler.disconnected(e)
            // The first attempt after a loss comes quickly (a broker restart takes seconds,
            // a dropped socket none); later ones back off.
            retryAt = Date().addingTimeInterval(policy.delay(afterFailures: 0))
        }

        while true {
            let (jobs, stopping, drop) = inbox.withLock { s in
                defer { s.jobs.removeAll(); s.dropConnection = false }
                return (s.jobs, s.stopping, s.dropConnection)
            }
            if stopping {
                conn?.close()
                conn = nil
                inbox.withLock { $0.stopped = true; $0.jobs.removeAll() }
                handler.stopped()
                return
            }
            if drop, conn != nil { lose(AMQPError(.connectionClosed, "connection dropped on request")) }
            for job in jobs {
                do { try handler.perform(job, conn: conn) } catch { lose(error) }
            }

            if conn == nil, handler.wantsConnection, Date() >= retryAt {
                do {
                    let c = try BlockingConnection(configuration: configuration)
                    conn = c
                    try handler.connected(c, reconnect: everConnected)
                    everConnected = true
                    failures = 0
                } catch {
                    conn?.close()
                    conn = nil
                    failures += 1
                    let e = (error as? AMQPError) ?? AMQPError(.connectionClosed, "\(error)")
                    if !handler.connectFailed(e, failures: failures, everConnected: everConnected) {
                        stop()
                        continue
                    }
                    retryAt = Date().addingTimeInterval(policy.delay(afterFailures: failures))
                }
            }

            handler.tick(now: Date())

            // Wait for frames, a job, the next deadline or the next reconnect attempt.
            var until = Date().addingTimeInterval(1)
            if let d = handler.nextDeadline, d < until { until = d }
            if conn == nil, handler.wantsConnection, retryAt < until { until = retryAt }
            let timeout = max(0, until.timeIntervalSinceNow)
            if let c = conn {
                do {
                    if let event = try c.nextEvent(timeout: timeout, waker: waker) {
                        try handler.handle(event, conn: c)
                        for event in try c.drainEvents(max: 1000) { try handler.handle(event, conn: c) }
                    }
                } catch {
                    lose(error)
                }
            } else {
                var fd = pollfd(fd: waker.fileDescriptor, events: Int16(POLLIN), revents: 0)
                _ = poll(&fd, 1, Int32((timeout * 1000).rounded(.up)))
                waker.drain()
            }
        }
    }
}
