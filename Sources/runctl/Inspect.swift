import ArgumentParser
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import RunClient
import RunContract
import RunWorker

struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print events live, for one run or all.")
    @Argument(help: "Only this run's events.") var runID: String?
    @Option(help: "Only this event type (e.g. completed, action_required, command_rejected).") var type: String?
    @Flag(help: "One JSON object per line, as published.") var json = false
    @Option(help: "Exit after this many events (default: run until interrupted).") var count: Int?
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let settings = try connection.settings()
        let client = try makeClient(settings)
        defer { client.close() }
        let key = "run.\(runID ?? "*").\(type ?? "#")"
        // Repeats are dropped; gaps and reconnects are reported on stderr.
        let events = try await client.subscribe(binding: key)
        // On stderr in every mode (stdout stays one JSON object per line with --json): once this
        // line is out, the queue is bound and no event published after it is missed.
        FileHandle.standardError.write(Data("watching \(settings.topology.eventsExchange) \(key)\n".utf8))
        var seen = 0
        if let count, count <= 0 { return }
        for try await update in events {
            switch update {
            case .gap(let id, let expected, let got):
                FileHandle.standardError.write(Data("gap: \(id) events #\(expected)..#\(got - 1) were missed\n".utf8))
                continue
            case .reconnected:
                FileHandle.standardError.write(Data("reconnected; events published meanwhile were missed\n".utf8))
                continue
            default:
                break
            }
            seen += 1
            print(json ? String(decoding: Self.body(update), as: UTF8.self) : Self.line(update))
            fflush(nil)
            if let count, seen >= count { return }
        }
    }

    /// The message's body: events and rejections as the contract writes them (the worker's own
    /// encoding), anything unrecognized as it came.
    static func body(_ update: RunUpdate) -> [UInt8] {
        switch update {
        case .event(let e): e.encode()
        case .rejected(let r): r.encode()
        case .unrecognized(let u): u.body
        default: []
        }
    }

    static func line(_ body: [UInt8]) -> String { line(RunUpdate.decode(body: body)) }

    /// `12:00:01.123  run-42  #3  running → waiting  action_required  a-1 tool_call calculator`
    static func line(_ update: RunUpdate) -> String {
        switch update {
        case .event(let e):
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
        case .rejected(let r):
            let time = String(r.occurredAt.rfc3339.dropFirst(11).dropLast())
            return [time, r.runID, "after #\(r.afterSeq)", "rejected", "\(r.command ?? "?")",
                    "\(r.error.code.rawValue): \(r.error.message)", "cmd=\(r.commandID ?? "-")"].joined(separator: "  ")
        case .unrecognized(let u):
            return String(decoding: u.body, as: UTF8.self)
        case .gap, .reconnected:
            return ""
        }
    }
}

/// Where the HTTP API is: `--http`, else the worker's `http_address` from the config and
/// RUNWORKER_HTTP_ADDRESS; the token from `--token` or RUNWORKER_HTTP_TOKEN.
struct HTTPOptions: ParsableArguments {
    @Option(help: "YAML config file (default config/runworker.yaml when it exists).")
    var config: String?
    @Option(help: "Base URL of a worker's HTTP API (default: http://<http_address> from the config).")
    var http: String?
    @Option(help: "Bearer token of the HTTP API (default: http_token from the config).")
    var token: String?

    func client() throws -> APIClient {
        let settings = try loadSettings(config)
        var base = http
        if base == nil {
            guard let endpoint = try settings.httpEndpoint() else {
                throw RunCtlFailure("http_address is off in the config: pass --http http://host:port of a worker")
            }
            let host = endpoint.host == "0.0.0.0" ? "127.0.0.1" : endpoint.host
            base = "http://\(host.contains(":") ? "[\(host)]" : host):\(endpoint.port)"
        }
        return APIClient(base: base!, token: token ?? settings.httpToken)
    }
}

/// A blocking GET of the runs API, JSON in and out; an error answer becomes the contract's
/// `code: message` on stderr and exit status 1.
struct APIClient {
    var base: String
    var token: String?

    func get(_ path: String) throws -> JSONValue {
        guard let url = URL(string: base.hasSuffix("/") ? String(base.dropLast()) + path : base + path) else {
            throw RunCtlFailure("not a URL: \(base)\(path)")
        }
        var request = URLRequest(url: url, timeoutInterval: 15)
        if let token, !token.isEmpty { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        let box = ResponseBox()
        let done = DispatchSemaphore(value: 0)
        URLSession.shared.dataTask(with: request) { data, response, error in
            box.set(data, (response as? HTTPURLResponse)?.statusCode, error)
            done.signal()
        }.resume()
        done.wait()
        let (data, status, error) = box.get()
        if let error { throw RunCtlFailure("cannot reach the HTTP API at \(base): \(error.localizedDescription)") }
        let body = (try? JSONValue.parse(Array(data ?? Data()))) ?? .null
        guard let status, (200..<300).contains(status) else {
            let code = body["error"]?["code"]?.stringValue ?? "http_\(status ?? 0)"
            let message = body["error"]?["message"]?.stringValue ?? String(decoding: data ?? Data(), as: UTF8.self)
            printError("\(code): \(message)")
            throw ExitCode(1)
        }
        return body
    }

    /// A path segment or query value, percent-encoded.
    static func escape(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }
}

final class ResponseBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: (Data?, Int?, Error?) = (nil, nil, nil)
    func set(_ d: Data?, _ s: Int?, _ e: Error?) { lock.withLock { value = (d, s, e) } }
    func get() -> (Data?, Int?, Error?) { lock.withLock { value } }
}

struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one run (through a worker's HTTP API).")
    @Argument var runID: String
    @Flag(help: "Print the snapshot as JSON.") var json = false
    @OptionGroup var http: HTTPOptions

    func run() throws {
        let snapshot = try http.client().get("/v1/runs/\(APIClient.escape(runID))")
        print(json ? String(decoding: snapshot.serialized(), as: UTF8.self) : describe(try Run(snapshot: snapshot)))
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List runs, newest first (through a worker's HTTP API).")
    @Option(help: "Only runs in this status (several: comma-separated).") var status: String?
    @Option(help: "Only runs of this agent_id.") var agent: String?
    @Option(help: "At most this many.") var limit = 50
    @Flag(help: "One run summary JSON per line (a snapshot without input, result and pending actions).") var json = false
    @Option(help: "With --json, put these back into each line: input, result, pending_actions (comma-separated).")
    var include: String?
    @OptionGroup var http: HTTPOptions

    func run() throws {
        let client = try http.client()
        var query = ["limit=\(min(limit, 500))"]
        if let include { query.append("include=\(APIClient.escape(include))") }
        if let status { query.append("status=\(APIClient.escape(status))") }
        if let agent { query.append("agent_id=\(APIClient.escape(agent))") }
        var printed = 0
        var cursor: String?
        repeat {
            let page = try client.get("/v1/runs?" + (query + (cursor.map { ["cursor=\($0)"] } ?? [])).joined(separator: "&"))
            for snapshot in page["runs"]?.arrayValue ?? [] where printed < limit {
                printed += 1
                if json {
                    print(String(decoding: snapshot.serialized(), as: UTF8.self))
                } else {
                    let run = try Run(snapshot: snapshot)
                    print("\(run.runID)\t\(run.status.rawValue)\tv\(run.version)\tattempt \(run.attempt)\t\(run.agentID ?? "-")\t\(run.createdAt.rfc3339)")
                }
            }
            cursor = page["next_cursor"]?.stringValue
        } while cursor != nil && printed < limit
    }
}

/// All of a run's history, following `next_after_seq` past a page (a page ends at 1000 events
/// or 4 MiB of them).
func history(_ client: APIClient, _ runID: String) throws -> [JSONValue] {
    var events: [JSONValue] = []
    var after: Int64 = 0
    while true {
        let page = try client.get("/v1/runs/\(APIClient.escape(runID))/events?after_seq=\(after)")
        events += page["events"]?.arrayValue ?? []
        guard let next = page["next_after_seq"]?.intValue, next > after else { return events }
        after = next
    }
}

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A run's history: every event it published, in seq order.")
    @Argument var runID: String
    @Flag(help: "One event JSON per line, as published.") var json = false
    @OptionGroup var http: HTTPOptions

    func run() throws {
        for event in try history(try http.client(), runID) {
            let body = event.serialized()
            print(json ? String(decoding: body, as: UTF8.self) : Watch.line(body))
        }
    }
}

struct Describe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A run in full: snapshot, pending actions with their deadlines, and its timeline.")
    @Argument var runID: String
    @OptionGroup var http: HTTPOptions

    func run() throws {
        let client = try http.client()
        let run = try Run(snapshot: try client.get("/v1/runs/\(APIClient.escape(runID))"))
        var lines = [describe(run)]
        var times = ["created \(run.createdAt.rfc3339)"]
        if let t = run.startedAt { times.append("started \(t.rfc3339)") }
        times.append("updated \(run.updatedAt.rfc3339)")
        if let t = run.completedAt { times.append("finished \(t.rfc3339)") }
        if let t = run.nextAttemptAt { times.append("next attempt \(t.rfc3339)") }
        lines.append("  " + times.joined(separator: ", "))
        if !run.pendingActions.isEmpty {
            lines.append("pending actions:")
            for a in run.pendingActions {
                lines.append("  \(a.id)  \(a.type.rawValue)  requested \(a.requestedAt.rfc3339)  deadline \(a.deadline?.rfc3339 ?? "none")")
            }
        }
        lines.append("timeline:")
        for event in try history(client, runID) { lines.append("  " + Watch.line(event.serialized())) }
        print(lines.joined(separator: "\n"))
    }
}
