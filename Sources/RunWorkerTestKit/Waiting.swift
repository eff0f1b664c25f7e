import Foundation

/// What the kit throws: a timeout, a process that exited too early, a broker that refused.
/// `description` says what was awaited and what was seen.
public struct TestKitError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// A condition did not hold within its deadline.
        public static let timedOut = Code("timed_out")
        /// A `runworker` process exited while it was expected to run.
        public static let exited = Code("exited")
        /// The broker did not confirm every published message.
        public static let notConfirmed = Code("not_confirmed")
        /// A helper program could not be started.
        public static let process = Code("process")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}

/// Polls `condition` every `poll` seconds until it holds; throws `TestKitError.timedOut` naming
/// `what` (and `explain()`, if given) when `timeout` seconds pass first. An error thrown by
/// `condition` ends the wait at once.
public func waitUntil(_ what: String, timeout: Double, poll: Double = 0.05, explain: () -> String = { "" },
                      _ condition: () throws -> Bool) throws {
    BlockingGuard.check("waitUntil(\(what))")
    let deadline = Date().addingTimeInterval(timeout)
    while try !condition() {
        guard Date() < deadline else {
            let more = explain()
            throw TestKitError(.timedOut, "\(what) after \(timeout) s" + (more.isEmpty ? "" : "\n\(more)"))
        }
        Thread.sleep(forTimeInterval: poll)
    }
}

extension Process {
    /// Waits at most `timeout` seconds for the process to exit; whether it did.
    @discardableResult
    public func waitForExit(timeout: Double) -> Bool {
        BlockingGuard.check("waitForExit")
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning {
            guard Date() < deadline else { return false }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return true
    }

    /// Waits at most `timeout` seconds for the process to exit; past that, stops it (SIGTERM,
    /// SIGKILL 5 s later) and throws `TestKitError.timedOut`. Returns the exit status.
    @discardableResult
    public func waitForExitOrKill(_ what: String, timeout: Double) throws -> Int32 {
        if !waitForExit(timeout: timeout) {
            terminate()
            if !waitForExit(timeout: 5) {
                kill(processIdentifier, SIGKILL)
                waitForExit(timeout: 10)
            }
            throw TestKitError(.timedOut, "\(what) still running after \(timeout) s; stopped")
        }
        return terminationStatus
    }
}

/// The async form of `waitUntil`: polls `condition` every `poll` seconds with `Task.sleep`, so
/// the wait holds no thread. Throws `TestKitError.timedOut` naming `what` when `timeout` passes.
/// (A name of its own: with one name, a closure that does not await picks the blocking form.)
public func eventually(_ what: String, timeout: Double, poll: Double = 0.05, explain: () -> String = { "" },
                      _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(timeout)
    while try await !condition() {
        guard ContinuousClock.now < deadline else {
            let more = explain()
            throw TestKitError(.timedOut, "\(what) after \(timeout) s" + (more.isEmpty ? "" : "\n\(more)"))
        }
        try await Task.sleep(for: .seconds(poll))
    }
}
