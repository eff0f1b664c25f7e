import AMQPClient
import ArgumentParser
import Foundation
import RunContract
import RunStore
import RunWorker

struct Watch: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print events live, for one run or all.")
    @Argument(help: "Only this run's events.") var runID: String?
    @Option(help: "Only this event type (e.g. completed, action_required, command_rejected).") var type: String?
    @Flag(help: "One JSON object per line, as published.") var json = false
    @Option(help: "Exit after this many events (default: run until interrupted).") var count: Int?
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        let settings = try connection.settings()
        let conn = try BlockingConnection(url: settings.amqpURL)
        defer { conn.close() }
        let channel = try conn.openChannel()
        let queue = try conn.queueDeclare(channel: channel, name: "", exclusive: true, autoDelete: true).name
        let key = "run.\(runID ?? "*").\(type ?? "#")"
        try conn.queueBind(channel: channel, queue: queue, exchange: settings.topology.eventsExchange, routingKey: key)
        _ = try conn.consume(channel: channel, queue: queue, noAck: true)
        // On stderr in every mode (stdout stays one JSON object per line with --json): once this
        // line is out, the queue is bound and no event published after it is missed.
        FileHandle.standardError.write(Data("watching \(settings.topology.eventsExchange) \(key)\n".utf8))
        var seen = 0
        while count.map({ seen < $0 }) ?? true {
            guard case .delivery(let d)? = try conn.nextEvent(timeout: 1) else { continue }
            seen += 1
            if json {
                print(String(decoding: d.body, as: UTF8.self))
            } else {
                print(Self.line(d.body))
            }
            fflush(nil)
        }
    }

    /// `12:00:01.123  run-42  #3  running → waiting  action_required  a-1 tool_call calculator`
    static func line(_ body: [UInt8]) -> String {
        if let e = try? RunEvent.decode(body) {
            let time = String(e.occurredAt.rfc3339.dropFirst(11).dropLast())
            var parts = [time, e.runID, "#\(e.seq)",
                         "\(e.previousStatus?.rawValue ?? "-") → \(e.status.rawValue)", e.type.rawValue]
            if let a = e.action {
                var desc = "\(a.id) \(a.type.rawValue)"
                if let tool = a.fields["tool"]?.stringValue { desc += " \(tool)" }
                if let r = a.result { desc += " result=\(String(decoding: r.serialized(), as: UTF8.self))" }
                if let err = a.error { desc += " error=\(err.message)" }
                parts.append(desc)
            }
            if e.attempt > 1 { parts.append("attempt=\(e.attempt)") }
            if let r = e.stopReason { parts.append("stop_reason=\(r.rawValue)") }
            if let err = e.error { parts.append("error=\(err.message)") }
            if let r = e.result { parts.append("result=\(String(decoding: r.serialized(), as: UTF8.self))") }
            if let c = e.commandID { parts.append("cmd=\(c)") }
            return parts.joined(separator: "  ")
        }
        if let r = try? CommandRejected.decode(body) {
            let time = String(r.occurredAt.rfc3339.dropFirst(11).dropLast())
            return [time, r.runID, "after #\(r.afterSeq)", "rejected", "\(r.command ?? "?")",
                    "\(r.error.code.rawValue): \(r.error.message)", "cmd=\(r.commandID ?? "-")"].joined(separator: "  ")
        }
        return String(decoding: body, as: UTF8.self)
    }
}

struct StoreOptions: ParsableArguments {
    @Option(help: "YAML config file (default config/runworker.yaml when it exists).")
    var config: String?
    @Option(help: "Store URL (default: the worker's, from config and RUNWORKER_STORE).")
    var store: String?

    func open() throws -> any RunStore {
        var s = try loadSettings(config)
        if let store { s.store = store }
        if case .sqlite(let path) = try StoreLocation(url: s.store), !FileManager.default.fileExists(atPath: path) {
            throw RunCtlFailure("no store at \(path) (run runctl where the worker runs, or pass --store)")
        }
        return try openRunStore(url: s.store)
    }
}

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one run from the store.")
    @Argument var runID: String
    @Flag(help: "Print the snapshot as JSON.") var json = false
    @OptionGroup var store: StoreOptions

    func run() async throws {
        guard let run = try await store.open().run(runID) else {
            printError("run_not_found: no run \"\(runID)\"")
            throw ExitCode(1)
        }
        print(json ? String(decoding: run.encodeSnapshot(), as: UTF8.self) : describe(run))
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List runs, most recently updated first.")
    @Option(help: "Only runs in this status.") var status: String?
    @Option(help: "Only runs of this agent_id.") var agent: String?
    @Option(help: "At most this many.") var limit = 50
    @Flag(help: "One snapshot JSON per line.") var json = false
    @OptionGroup var store: StoreOptions

    func run() async throws {
        var s: RunStatus?
        if let status {
            guard let v = RunStatus(rawValue: status) else {
                throw ValidationError("--status must be one of \(RunStatus.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            s = v
        }
        for run in try await store.open().runs(status: s, agentID: agent, limit: limit) {
            if json {
                print(String(decoding: run.encodeSnapshot(), as: UTF8.self))
            } else {
                let updated = run.updatedAt.rfc3339
                print("\(run.runID)\t\(run.status.rawValue)\tv\(run.version)\tattempt \(run.attempt)\t\(run.agentID ?? "-")\t\(updated)")
            }
        }
    }
}
