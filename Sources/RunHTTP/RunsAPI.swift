import Foundation
import Hummingbird
import NIOCore
import Prometheus
import RunApply
import RunContract
import RunStore
import RunWorker
import Synchronization

/// The endpoints. Reads go to the store the worker uses, so every worker of a deployment
/// answers for every run (PostgreSQL), or for every run of its host (SQLite).
struct RunsAPI: Sendable {
    let store: any RunStore
    let shared: SharedStatus
    let registry: PrometheusCollectorRegistry
    let feed: EventFeed
    let board: Board

    static let maxRunIDBytes = 256
    static let defaultPageSize = 50
    static let maxPageSize = 500
    static let maxHistoryPage = 1000
    /// A comment line on an idle stream, so that proxies keep it open and a gone client is noticed.
    static let keepaliveSeconds = 15.0

    func register(on router: Router<BasicRequestContext>) {
        router.get("/healthz") { _, _ in json(["status": "ok"]) }
        router.get("/readyz") { _, _ in try await ready() }
        router.get("/metrics") { _, _ in metrics() }
        router.get("/v1/runs") { request, _ in try await listRuns(request) }
        router.get("/v1/runs/:id") { _, context in try await getRun(try runID(context)) }
        router.get("/v1/runs/:id/events") { request, context in try await history(try runID(context), request) }
        router.get("/v1/runs/:id/chain") { request, context in try await chain(try runID(context), request) }
        router.get("/v1/counts") { _, _ in try await counts() }
        router.get("/v1/events/stream") { request, _ in try await stream(request) }
        router.get("/") { request, _ in page(request) }
        router.get("/index.html") { request, _ in page(request) }
        router.get("/board.js") { _, _ in file("board.js") }
        router.get("/board.css") { _, _ in file("board.css") }
    }

    // MARK: - Health

    func ready() async throws -> Response {
        let status = shared.status
        var checks: [(String, String)] = []
        checks.append((
            "broker",
            !status.connected ? "not connected to the broker"
                : status.brokerBlocked.map { "publishing blocked by the broker: \($0)" } ?? "ok"))
        // A store that answers reads may still refuse writes (a full disk): the loop says so.
        if let error = status.storeError {
            checks.append(("store", "cannot write: \(error)"))
        } else {
            checks.append(("store", await storeAnswers()))
        }
        checks.append(("partitions", status.ready ? "ok" : "partitions not claimed yet"))
        let failing = checks.first { $0.1 != "ok" }
        var body: JSONObject = [
            "ready": .bool(failing == nil),
            "checks": .object(JSONObject(checks.map { ($0.0, JSONValue.string($0.1)) })),
        ]
        if let failing { body["reason"] = .string("\(failing.0): \(failing.1)") }
        // Informational: webhooks are delivered beside the commands, so their dispatcher being
        // down (it reconnects) does not make the worker unready.
        if let webhooks = status.webhooks { body["webhooks"] = .object(webhooks.json) }
        return json(body, status: failing == nil ? .ok : .serviceUnavailable)
    }

    /// One cheap read (a primary-key lookup), bounded to 2 s. The answer does not wait for a
    /// read that is stuck (a task group would: it awaits every child, and a blocked store read
    /// ignores cancellation, so /readyz took as long as the read); the read finishes on its own.
    private func storeAnswers() async -> String {
        let store = self.store
        let answer = FirstAnswer()
        return await withCheckedContinuation { (continuation: CheckedContinuation<String, Never>) in
            answer.set(continuation)
            Task {
                do {
                    _ = try await store.run("")
                    answer.resume("ok")
                } catch {
                    answer.resume("the store did not answer: \(error)")
                }
            }
            Task {
                try? await Task.sleep(for: .seconds(Self.readyStoreTimeoutSeconds))
                answer.resume("the store did not answer within \(Self.readyStoreTimeoutSeconds) s")
            }
        }
    }

    static let readyStoreTimeoutSeconds = 2

    func metrics() -> Response {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: buffer)))
    }

    // MARK: - Runs

    func listRuns(_ request: Request) async throws -> Response {
        let q = request.uri.queryParameters
        var query = RunQuery()
        query.statuses = try list(q, "status").map { text in
            guard let s = RunStatus(rawValue: text) else {
                throw APIError.validation("status must be one of \(RunStatus.allCases.map(\.rawValue).joined(separator: ", ")), got \(text)")
            }
            return s
        }
        if let agent = q.get("agent_id") {
            guard !agent.isEmpty, agent.utf8.count <= Self.maxRunIDBytes else {
                throw APIError.validation("agent_id must be 1 to \(Self.maxRunIDBytes) bytes")
            }
            query.agentID = agent
        }
        query.createdAfter = try time(q, "created_after")
        query.createdBefore = try time(q, "created_before")
        query.updatedAfter = try time(q, "updated_after")
        query.updatedBefore = try time(q, "updated_before")
        query.limit = try integer(q, "limit", in: 1...Int64(Self.maxPageSize)).map(Int.init) ?? Self.defaultPageSize
        if let cursor = q.get("cursor") {
            guard let c = RunCursor(token: cursor) else { throw APIError.validation("cursor is not one this API gave out") }
            query.after = c
        }
        return try await listPage(query, include: try included(q))
    }

    /// The `include` parameter: which of `listOmitted` to put back into list items.
    private func included(_ q: Parameters) throws -> Set<String> {
        Set(try list(q, "include").map { field in
            guard Self.listOmitted.contains(field) else {
                throw APIError.validation("include must be one or more of \(Self.listOmitted.joined(separator: ", ")), got \(field)")
            }
            return field
        })
    }

    /// A run as lists show it: its snapshot without the `listOmitted` fields `include` does not
    /// name, serialized.
    static func listItem(_ run: Run, include: Set<String>) -> [UInt8] {
        var item = run.snapshotJSON
        for field in listOmitted where !include.contains(field) { item[field] = nil }
        return JSONValue.object(item).serialized()
    }

    /// Fields of a snapshot that list items leave out unless `include` names them: what a run
    /// carries without bound (its input and result, up to a command's size each, and the
    /// pending actions' arguments). `GET /v1/runs/{id}` has them all.
    static let listOmitted = ["input", "result", "pending_actions"]
    /// Bytes of items one list page holds at most: the page ends early (with `next_cursor`)
    /// before the item that would pass it; its first item is always there, whatever its size.
    static let maxPageBytes = 4 << 20
    /// Runs read from the store at a time while a page is built: the first read takes
    /// `firstListChunk`, later ones as many as `maxPageBytes` holds at the sizes seen so far
    /// (the stores read whole runs, inputs included, even for summaries).
    static let firstListChunk = 8
    static let maxListChunk = 100

    /// One page of `query.limit` runs at most, each a summary (plus the `include`d fields),
    /// their JSON `maxPageBytes` at most; read in chunks so that large runs are never all in
    /// memory at once.
    func listPage(_ query: RunQuery, include: Set<String>) async throws -> Response {
        var query = query
        let limit = query.limit
        var out: [UInt8] = Array(#"{"runs":["#.utf8)
        var taken = 0
        var itemBytes = 0
        var next: RunCursor?
        var chunk = Self.firstListChunk
        var seenRuns = 0
        var seenBytes = 0
        reading: while taken < limit {
            query.limit = min(limit - taken, chunk)
            let page = try await store.listRuns(query)
            for run in page.runs {
                let bytes = Self.listItem(run, include: include)
                if taken > 0 && itemBytes + 1 + bytes.count > Self.maxPageBytes {
                    next = query.after
                    break reading
                }
                if taken > 0 { out.append(UInt8(ascii: ",")) }
                out += bytes
                itemBytes += bytes.count + (taken > 0 ? 1 : 0)
                taken += 1
                query.after = RunCursor(run)
                seenRuns += 1
                seenBytes += run.approximateBytes
            }
            // The store's cursor says whether runs are left after this chunk.
            next = page.next
            guard let more = page.next else { break }
            query.after = more
            chunk = max(1, min(Self.maxListChunk, Self.maxPageBytes / max(1, seenBytes / max(1, seenRuns))))
        }
        out += Array(#"],"next_cursor":"#.utf8)
        out += (next.map { JSONValue.string($0.token) } ?? .null).serialized()
        out.append(UInt8(ascii: "}"))
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: out)))
    }

    func getRun(_ id: String) async throws -> Response {
        guard let run = try await store.run(id) else { throw notFound(id) }
        return json(run.snapshotJSON)
    }

    /// Most runs `chain` follows back.
    static let maxChain = 100

    /// The run and the runs it was rerun from (`previous_run_id`), newest first: the run
    /// itself, then its previous run, and so on back to the first one (or one that retention
    /// removed, or `maxChain` runs, or the run whose item would take the items past
    /// `maxPageBytes`: the last item's `previous_run_id` says where to go on). Items are list
    /// items (summaries, and what `include` names).
    func chain(_ id: String, _ request: Request) async throws -> Response {
        let include = try included(request.uri.queryParameters)
        guard var run = try await store.run(id) else { throw notFound(id) }
        var items = Self.listItem(run, include: include)
        var count = 1
        var seen: Set<String> = [run.runID]
        // A previous run created after its successor is another run that reused the id once
        // retention removed the original: the chain ends there.
        while count < Self.maxChain, let previousID = run.previousRunID, seen.insert(previousID).inserted,
            let previous = try await store.run(previousID), previous.createdAt <= run.createdAt
        {
            let item = Self.listItem(previous, include: include)
            guard items.count + 1 + item.count <= Self.maxPageBytes else { break }
            items.append(UInt8(ascii: ","))
            items += item
            count += 1
            run = previous
        }
        var out: [UInt8] = Array(#"{"run_id":"#.utf8)
        out += JSONValue.string(id).serialized()
        out += Array(#","chain":["#.utf8)
        out += items
        out += Array("]}".utf8)
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: out)))
    }

    /// The run's history: the stored bodies, exactly as published, spliced into the answer.
    /// A page holds `limit` events at most and their bodies `maxPageBytes` at most (the first
    /// always): it ends before the event that would pass that, with `next_after_seq` saying
    /// where the next page begins (null when this one reached the end). The store is read in
    /// chunks, like lists, so that large events are never all in memory at once.
    func history(_ id: String, _ request: Request) async throws -> Response {
        let q = request.uri.queryParameters
        let after = try integer(q, "after_seq", in: 0...Int64.max) ?? 0
        let limit = try integer(q, "limit", in: 1...Int64(Self.maxHistoryPage)).map(Int.init) ?? Self.maxHistoryPage
        var out: [UInt8] = Array(#"{"run_id":"#.utf8)
        out += JSONValue.string(id).serialized()
        out += Array(#","events":["#.utf8)
        var taken = 0
        var bytes = 0
        var cursor = after
        var more = false
        var chunk = Self.firstListChunk
        reading: while taken < limit {
            let ask = min(limit - taken, chunk)
            let rows = try await store.history(runID: id, afterSeq: cursor, limit: ask)
            if taken == 0, rows.isEmpty, try await store.run(id) == nil { throw notFound(id) }
            for row in rows {
                if taken > 0 && bytes + 1 + row.body.count > Self.maxPageBytes {
                    more = true
                    break reading
                }
                if taken > 0 { out.append(UInt8(ascii: ",")) }
                out += row.body
                bytes += row.body.count + (taken > 0 ? 1 : 0)
                taken += 1
                cursor = row.seq
            }
            // A short chunk is the end of the history; a full page may have more after it.
            guard rows.count == ask else { break }
            more = taken == limit
            chunk = max(1, min(Self.maxListChunk, Self.maxPageBytes / max(1, bytes / max(1, taken))))
        }
        out += Array(#"],"next_after_seq":"#.utf8)
        out += (more ? JSONValue.int(cursor) : .null).serialized()
        out.append(UInt8(ascii: "}"))
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: out)))
    }

    func counts() async throws -> Response {
        let counts = try await store.runCounts()
        let total = counts.values.reduce(0, +)
        return json([
            "runs_by_status": .object(JSONObject(RunStatus.allCases.map { ($0.rawValue, JSONValue.int(Int64(counts[$0] ?? 0))) })),
            "total": .int(Int64(total)),
        ])
    }

    // MARK: - Live events

    static let eventTypes: Set<String> = Set(EventType.allCases.map(\.rawValue)).union([CommandRejected.type])

    func stream(_ request: Request) async throws -> Response {
        let q = request.uri.queryParameters
        var filter = EventFilter()
        filter.runIDs = Set(try list(q, "run_id").map { id in
            guard id.utf8.count <= Self.maxRunIDBytes else { throw APIError.validation("run_id is longer than \(Self.maxRunIDBytes) bytes") }
            return id
        })
        filter.types = Set(try list(q, "type").map { t in
            guard Self.eventTypes.contains(t) else { throw APIError.validation("type must be an event type, got \(t)") }
            return t
        })
        filter.statuses = Set(try list(q, "status").map { s in
            guard RunStatus(rawValue: s) != nil else { throw APIError.validation("status must be a run status, got \(s)") }
            return s
        })
        let subscription: Subscription
        do {
            subscription = try feed.subscribe(filter, token: Self.presentedToken(request))
        } catch {
            return Self.refusal(error)
        }
        guard await feed.waitUntilConsuming() else {
            subscription.cancel()
            throw APIError(status: .serviceUnavailable, code: "unavailable", message: "the event stream cannot reach the broker")
        }
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
            body: ResponseBody { writer in
                defer { subscription.cancel() }
                try await writer.write(ByteBuffer(string: ": connected\n\n"))
                // The events are written by a child task, so that a client that stops reading
                // (the write waits on its full socket) can be cut off: when its buffer
                // overflows, the watcher throws, the group cancels the writer's wait, and the
                // error closes the connection. The client reconnects and reads the store.
                let out = BodyWriterBox(writer)
                let ending: StreamBuffer.Ending = try await withThrowingTaskGroup(of: StreamBuffer.Ending.self) { group in
                    group.addTask { try await Self.pump(subscription.buffer, into: out) }
                    group.addTask {
                        await subscription.buffer.waitForOverflow()
                        try Task.checkCancellation()
                        throw StreamOverflowed()
                    }
                    group.addTask {
                        while true {
                            try await Task.sleep(for: .seconds(Self.keepaliveSeconds))
                            subscription.buffer.keepalive()
                        }
                    }
                    defer { group.cancelAll() }
                    return try await group.next() ?? .finished
                }
                if ending == .overflowed { throw StreamOverflowed() }
                try await writer.finish(nil)
            })
    }

    /// Writes the buffer's events and keepalives in order until it ends.
    private static func pump(_ buffer: StreamBuffer, into out: BodyWriterBox) async throws -> StreamBuffer.Ending {
        while true {
            switch await buffer.next() {
            case .event(let event): try await out.writer.write(frame(event))
            case .keepalive: try await out.writer.write(ByteBuffer(string: ": keepalive\n\n"))
            case .end(let ending): return ending
            }
        }
    }

    /// Seconds a refused stream is told to wait (`Retry-After`).
    static let streamRetryAfterSeconds = 10

    /// A stream beyond the caps: 429 when the client's token has its share open, 503 when the
    /// worker has all it serves; either says when to try again.
    static func refusal(_ refusal: StreamRefusal) -> Response {
        let error: APIError
        switch refusal {
        case .full(let max):
            error = APIError(
                status: .serviceUnavailable, code: "too_many_streams",
                message: "this worker serves \(max) event streams at once (http.max_streams); try again later")
        case .tokenFull(let max):
            error = APIError(
                status: .tooManyRequests, code: "too_many_streams",
                message: "\(max) event streams are open with this token (http.max_streams_per_token); close one or try again later")
        }
        var response = error.response
        response.headers[.retryAfter] = String(streamRetryAfterSeconds)
        return response
    }

    /// The bearer token a request carries (header, or the stream's `access_token`), if any.
    static func presentedToken(_ request: Request) -> String? {
        if let header = request.headers[.authorization], header.lowercased().hasPrefix("bearer ") {
            return String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        }
        return request.uri.queryParameters.get("access_token")
    }

    /// One server-sent event: id, event type, and the body on one `data:` line (the bodies
    /// are compact JSON, without newlines).
    static func frame(_ e: LiveEvent) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeString("id: \(e.eventID)\nevent: \(e.type)\ndata: ")
        b.writeBytes(e.body)
        b.writeString("\n\n")
        return b
    }

    // MARK: - Board

    /// `Referrer-Policy` (swift-http-types names no constant for it).
    static let referrerPolicy = HTTPFields.Element.Name("Referrer-Policy")!

    /// The board's page. An old link's `?token=` is redirected to the same page with the token
    /// in the fragment (`#token=`), which the page reads and which never leaves the browser:
    /// the token was in this one request line, it is in no later one, nor in a `Referer`.
    func page(_ request: Request) -> Response {
        guard let token = request.uri.queryParameters.get("token") else { return file("index.html") }
        let here = request.uri.path.hasSuffix("/index.html") ? "index.html" : "./"
        let fragment = token.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? ""
        return Response(
            status: .seeOther,
            headers: [.location: here + "#token=" + fragment, .cacheControl: "no-store", Self.referrerPolicy: "no-referrer"])
    }

    func file(_ name: String) -> Response {
        guard let f = board.files[name] else { return APIError(status: .notFound, code: "not_found", message: name).response }
        return Response(
            status: .ok,
            headers: [
                .contentType: f.contentType, .cacheControl: "no-cache", .xContentTypeOptions: "nosniff",
                .contentSecurityPolicy: "default-src 'self'; img-src 'self' data:",
                // The page's address is never sent on with its script, style or API loads.
                Self.referrerPolicy: "no-referrer",
            ],
            body: .init(byteBuffer: ByteBuffer(bytes: f.bytes)))
    }

    // MARK: - Parameters

    private func runID(_ context: BasicRequestContext) throws -> String {
        let raw = context.parameters.get("id") ?? ""
        let id = raw.removingPercentEncoding ?? raw
        guard !id.isEmpty else { throw APIError.validation("run_id is empty") }
        guard id.utf8.count <= Self.maxRunIDBytes else {
            throw APIError(status: .badRequest, code: "payload_too_large", message: "run_id is longer than \(Self.maxRunIDBytes) bytes")
        }
        return id
    }

    private func notFound(_ id: String) -> APIError {
        APIError(
            status: .notFound, code: "run_not_found",
            message: "run \(id) is unknown (never created, or finished and removed by retention)")
    }

    /// Every value of a parameter that may repeat or be comma-separated.
    private func list(_ q: Parameters, _ name: String) throws -> [String] {
        q.getAll(name).flatMap { $0.split(separator: ",", omittingEmptySubsequences: true) }.map {
            $0.trimmingCharacters(in: .whitespaces)
        }
    }

    private func time(_ q: Parameters, _ name: String) throws -> Timestamp? {
        guard let text = q.get(name) else { return nil }
        guard let t = Timestamp(rfc3339: text) else {
            throw APIError.validation("\(name) must be an RFC 3339 time like 2026-11-23T08:00:00.000Z, got \(text)")
        }
        return t
    }

    private func integer(_ q: Parameters, _ name: String, in range: ClosedRange<Int64>) throws -> Int64? {
        guard let text = q.get(name) else { return nil }
        guard let n = Int64(text), range.contains(n) else {
            throw APIError.validation("\(name) must be an integer from \(range.lowerBound) to \(range.upperBound), got \(text)")
        }
        return n
    }
}

func json(_ object: JSONObject, status: HTTPResponse.Status = .ok) -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: object.serialized())))
}

/// A stream ended because its client did not read: thrown out of the response body, which
/// closes the connection.
struct StreamOverflowed: Error {}

/// The response's body writer, handed to the one child task that writes the events.
/// `@unchecked Sendable`: only that child uses it, and the body closure, which owns the writer,
/// waits for the child (the task group) before it touches the writer again.
private final class BodyWriterBox: @unchecked Sendable {
    var writer: any ResponseBodyWriter
    init(_ writer: any ResponseBodyWriter) { self.writer = writer }
}

/// A continuation resumed by whichever answer comes first; later ones are dropped.
private final class FirstAnswer: Sendable {
    private let continuation = Mutex<CheckedContinuation<String, Never>?>(nil)

    func set(_ c: CheckedContinuation<String, Never>) { continuation.withLock { $0 = c } }

    func resume(_ answer: String) {
        continuation.withLock { c in
            c?.resume(returning: answer)
            c = nil
        }
    }
}
