import Foundation
import Testing
@testable import AMQPClient

let brokerURL = ProcessInfo.processInfo.environment["RUNWORKER_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/"

func unique(_ prefix: String) -> String { "test.\(prefix).\(UUID().uuidString.prefix(12))" }

func config(_ mutate: (inout AMQPConfiguration) -> Void = { _ in }) throws -> AMQPConfiguration {
    var c = try AMQPConfiguration(url: brokerURL)
    c.connectionTimeout = 5
    mutate(&c)
    return c
}

func connect(_ mutate: (inout AMQPConfiguration) -> Void = { _ in }) async throws -> AMQPConnection {
    try await AMQPConnection.connect(config(mutate))
}

struct TestTimeout: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out: \(what)" }
}

/// Runs `body`, failing with TestTimeout after `seconds` instead of hanging the test run.
func within<T: Sendable>(_ seconds: Double, _ what: String = "operation",
                         _ body: @Sendable @escaping () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { g in
        g.addTask { try await body() }
        g.addTask {
            try await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
            throw TestTimeout(what: what)
        }
        let r = try await g.next()!
        g.cancelAll()
        return r
    }
}

/// A fresh connection and channel with an auto-deleted, server-side-unique queue setup helper.
func withChannel(_ body: (AMQPConnection, AMQPChannel) async throws -> Void) async throws {
    let conn = try await connect()
    do {
        let ch = try await conn.openChannel()
        try await body(conn, ch)
    } catch {
        await conn.close()
        throw error
    }
    await conn.close()
}

@discardableResult
func run(_ args: [String]) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = Pipe()
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}
