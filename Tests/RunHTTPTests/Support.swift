import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Prometheus
import RunContract
import RunStore
import Testing

@testable import RunHTTP
@testable import RunWorker

/// The worker's HTTP side as `RunHTTPServer` assembles it (`RunHTTPServer.makeRouter`), served
/// in memory by HummingbirdTesting's router framework: no listener, no broker. The event feed
/// points at a port where no broker listens (127.0.0.1:1): a test that takes a stream slot
/// starts its consuming thread, which fails to connect and stops when the slot is given back;
/// no stream is ever answered 200.
struct TestServer: Sendable {
    let store: any RunStore
    let shared: SharedStatus
    let registry: PrometheusCollectorRegistry
    let feed: EventFeed
    let application: Application<RouterResponder<BasicRequestContext>>

    static let logger: Logger = {
        var logger = Logger(label: "RunHTTPTests")
        logger.logLevel = .critical
        return logger
    }()

    static let noBroker = "amqp://guest:guest@127.0.0.1:1/"

    init(
        store: any RunStore = InMemoryRunStore(), token: String? = nil, checkHost: Bool = false, board: Board? = nil,
        limits: StreamLimits = StreamLimits()
    ) throws {
        self.store = store
        shared = SharedStatus(workerID: "w-test")
        registry = PrometheusCollectorRegistry()
        feed = EventFeed(amqpURLs: [Self.noBroker], exchange: "test.events", logger: Self.logger, limits: limits)
        let api = RunsAPI(store: store, shared: shared, registry: registry, feed: feed, board: try board ?? Board.load())
        let router = RunHTTPServer.makeRouter(api: api, token: token, checkHost: checkHost, logger: Self.logger)
        application = Application(router: router, logger: Self.logger)
    }

    /// Runs `body` with a client whose requests go straight to the router.
    func test(_ body: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        try await application.test(.router, body)
    }

    /// The loop's status as the HTTP side reads it.
    func setStatus(_ change: (inout WorkerStatus) -> Void) {
        var status = shared.status
        change(&status)
        shared.update(status)
    }
}

extension TestClientProtocol {
    func get(_ uri: String, headers: HTTPFields = [:]) async throws -> TestResponse {
        try await execute(uri: uri, method: .get, headers: headers)
    }
}

extension TestResponse {
    var bytes: [UInt8] { Array(body.readableBytesView) }
    var text: String { String(decoding: bytes, as: UTF8.self) }
    func json() throws -> JSONValue { try JSONValue.parse(bytes) }

    /// The contract's error shape, `{"error": {"code", "message"}}` and nothing else: its code.
    func errorCode() throws -> String? {
        let body = try json()
        guard body.objectValue?.keys == ["error"], let error = body["error"]?.objectValue,
            Set(error.keys) == ["code", "message"], error["message"]?.stringValue != nil
        else { return nil }
        return error["code"]?.stringValue
    }
}

func ms(_ milliseconds: Int64) -> Timestamp { Timestamp(milliseconds: milliseconds) }

/// A run as the store keeps it; times in milliseconds.
func storedRun(
    _ id: String, _ status: RunStatus, agent: String? = nil, created: Int64, updated: Int64? = nil,
    version: Int64 = 1, previous: String? = nil
) -> Run {
    Run(
        runID: id, status: status, version: version, agentID: agent, input: ["q": "2+2"], previousRunID: previous,
        createdAt: ms(created), updatedAt: ms(updated ?? created))
}

/// The event body the worker would publish, with a space in it: the history must splice it
/// exactly as stored.
func eventBody(_ runID: String, _ seq: Int64, _ type: String) -> [UInt8] {
    Array(#"{"run_id": "\#(runID)","seq":\#(seq),"type":"\#(type)"}"#.utf8)
}

/// Commits `run` with its events (seq 1, 2, ...) in one batch, as the worker does.
func seed(_ store: any RunStore, _ run: Run, events: [String] = []) async throws {
    let outbox = events.enumerated().map { i, type in
        let seq = Int64(i + 1)
        return OutboxMessage(
            runID: run.runID, seq: seq, type: type, status: run.status.rawValue, routingKey: "run.\(run.runID).\(type)",
            messageID: "\(run.runID):\(seq)", body: eventBody(run.runID, seq, type), writtenAt: run.updatedAt)
    }
    _ = try await store.commit(StoreCommit(
        runs: [RunWrite(run: run, previousVersion: nil, nextDeadline: nil, partition: 0)], outbox: outbox))
}

/// Four runs, newest first r-d, r-c, r-b, r-a, with their histories:
///   r-a completed, agent-x, 5 events (confirmed by the broker); r-b failed, agent-y, 3 events;
///   r-c cancelled, agent-x, 2 events; r-d running, agent-y, 2 events.
func seededStore() async throws -> InMemoryRunStore {
    let store = InMemoryRunStore()
    try await seed(
        store, storedRun("r-a", .completed, agent: "agent-x", created: 1_000, updated: 5_000, version: 5),
        events: ["created", "started", "action_required", "action_completed", "completed"])
    try await seed(
        store, storedRun("r-b", .failed, agent: "agent-y", created: 2_000, updated: 2_500, version: 3),
        events: ["created", "started", "failed"])
    try await seed(
        store, storedRun("r-c", .cancelled, agent: "agent-x", created: 3_000, updated: 6_000, version: 2),
        events: ["created", "cancelled"])
    try await seed(
        store, storedRun("r-d", .running, agent: "agent-y", created: 4_000, updated: 4_000, version: 2),
        events: ["created", "started"])
    // The broker confirmed r-a's events: they stay as its history.
    let confirmed = try await store.history(runID: "r-a", afterSeq: 0, limit: 100).map(\.id)
    try await store.removeOutbox(ids: confirmed)
    return store
}

