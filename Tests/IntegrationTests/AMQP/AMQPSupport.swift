import Foundation
import Testing
@testable import AMQPClient

/// Helpers of the AMQP broker tests, in a namespace so that they cannot clash with the worker
/// tests' top-level names in the same target.
///
/// Every wait here is bounded by a deadline; a `BlockingConnection` is created, used and closed
/// on the test's own thread.
enum AMQPTest {
    static let url = ProcessInfo.processInfo.environment["RUNWORKER_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/"

    /// A name no other run uses: `test.<name>.<uuid>`.
    static func unique(_ name: String) -> String { "test.\(name).\(UUID().uuidString.prefix(12))" }

    static func configuration(_ mutate: (inout AMQPConfiguration) -> Void = { _ in }) throws -> AMQPConfiguration {
        var c = try AMQPConfiguration(url: url)
        c.connectionTimeout = 5
        c.rpcTimeout = 10
        mutate(&c)
        return c
    }

    static func connect(_ mutate: (inout AMQPConfiguration) -> Void = { _ in }) throws -> BlockingConnection {
        try BlockingConnection(configuration: configuration(mutate))
    }

    /// A fresh connection and an open channel; the connection is closed afterwards, whatever happens.
    static func withChannel<T>(_ body: (BlockingConnection, UInt16) throws -> T) throws -> T {
        let conn = try connect()
        defer { conn.close() }
        return try body(conn, try conn.openChannel())
    }

    struct Timeout: Error, CustomStringConvertible {
        var what: String
        var description: String { "timed out: \(what)" }
    }

    /// Reads events until `match` returns a value, for at most `seconds`. Events that do not
    /// match are dropped. Throws `Timeout` at the deadline.
    static func waitForEvent<T>(_ conn: BlockingConnection, within seconds: Double, _ what: String,
                                _ match: (AMQPEvent) -> T?) throws -> T {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 { throw Timeout(what: what) }
            if let e = try conn.nextEvent(timeout: remaining), let t = match(e) { return t }
        }
    }

    /// The next delivery on `channel` (any consumer), waiting at most `seconds`.
    static func nextDelivery(_ conn: BlockingConnection, channel: UInt16, within seconds: Double = 5) throws -> AMQPDelivery {
        try waitForEvent(conn, within: seconds, "delivery on channel \(channel)") { e in
            if case .delivery(let d) = e, d.channel == channel { d } else { nil }
        }
    }

    /// Runs a command for at most `seconds` and returns its exit status and output (standard
    /// output and error). Output goes to a file, not a pipe, so that a daemon the command leaves
    /// behind holding the pipe open cannot hang the test.
    @discardableResult
    static func shell(_ args: [String], timeout seconds: Double = 60) throws -> (status: Int32, output: String) {
        let path = NSTemporaryDirectory() + "amqp-test-\(UUID().uuidString.prefix(8)).out"
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        let deadline = Date().addingTimeInterval(seconds)
        while p.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        if p.isRunning {
            p.terminate()
            throw Timeout(what: "\(args.joined(separator: " ")): \(text)")
        }
        return (p.terminationStatus, text)
    }
}
