import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import Prometheus
import RunContract
import RunStore
import RunWorker
import ServiceLifecycle

/// The worker's HTTP side, one listener per worker: health, Prometheus metrics, the
/// read-only runs API over the worker's store (either kind), the live event stream and the run
/// board. docs/openapi.yaml describes it. Run it in the worker's `ServiceGroup`.
public struct RunHTTPServer: Service {
    let application: Application<RouterResponder<BasicRequestContext>>
    let feed: EventFeed
    let logger: Logger

    /// - registry: the Prometheus registry the worker's metrics factory writes to (what
    ///   `/metrics` exports).
    public init(worker: Worker, endpoint: HTTPEndpoint, registry: PrometheusCollectorRegistry, logger: Logger) throws {
        let settings = worker.settings
        self.logger = logger
        feed = EventFeed(
            amqpURLs: (try? settings.amqpURLs()) ?? [settings.amqpURL], exchange: settings.topology.eventsExchange,
            logger: logger, limits: StreamLimits(settings), metricsFactory: Self.metricsFactory(registry))
        let api = RunsAPI(store: worker.store, shared: worker.shared, registry: registry, feed: feed, board: try Board.load())
        let token = settings.httpToken.flatMap { $0.isEmpty ? nil : $0 }
        let router = Self.makeRouter(api: api, token: token, checkHost: endpoint.isLoopback && token == nil, logger: logger)
        let shared = worker.shared
        let limits = Self.connectionLimits(settings, logger: logger)
        let table = ConnectionTable(limit: limits.maxConnections)
        let metrics = ConnectionMetrics(factory: Self.metricsFactory(registry))
        application = Application(
            router: router,
            server: HTTPServerBuilder { responder in
                LimitedHTTP1Channel(responder: responder, limits: limits, table: table, metrics: metrics)
            },
            configuration: .init(address: .hostname(endpoint.host, port: endpoint.port), serverName: "runworker"),
            onServerRunning: { channel in
                // Before the first connection is accepted, in practice: the listener is bound
                // but its connections are taken from here on.
                do {
                    try await channel.eventLoop.submit {
                        try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler(logger: logger), position: .first)
                    }.get()
                } catch {
                    logger.warning("HTTP: cannot add the accept back-off", metadata: ["error": "\(error)"])
                }
                let port = channel.localAddress?.port ?? endpoint.port
                let host = endpoint.host.contains(":") ? "[\(endpoint.host)]" : endpoint.host
                shared.setHTTPAddress("\(host):\(port)")
                logger.info(
                    "HTTP listening",
                    metadata: [
                        "address": "\(host):\(port)", "max_connections": "\(limits.maxConnections)",
                        "header_timeout": "\(limits.headerTimeout)", "idle_timeout": "\(limits.idleTimeout)",
                    ])
            },
            logger: logger)
    }

    /// The `http.*` limits as the listener applies them; the connection cap lowered (and a
    /// warning logged) when the process's descriptor limit leaves it too little room.
    static func connectionLimits(_ settings: WorkerSettings, logger: Logger) -> HTTPConnectionLimits {
        let descriptors = HTTPConnectionLimits.descriptorLimit()
        let cap = HTTPConnectionLimits.effectiveMaxConnections(configured: settings.httpMaxConnections, descriptorLimit: descriptors)
        if cap < settings.httpMaxConnections {
            logger.warning(
                "HTTP: http.max_connections lowered to fit the descriptor limit",
                metadata: [
                    "configured": "\(settings.httpMaxConnections)", "applied": "\(cap)",
                    "descriptor_limit": "\(descriptors.map(String.init) ?? "none")",
                ])
        }
        return HTTPConnectionLimits(
            headerTimeout: .nanoseconds(Int64(settings.httpHeaderTimeoutS * 1e9)),
            idleTimeout: .nanoseconds(Int64(settings.httpIdleTimeoutS * 1e9)), maxConnections: cap)
    }

    /// The router the listener serves: the error, method, query-size, host and token middleware
    /// in front of every endpoint of `api`. An empty token is no token. `checkHost` (a loopback
    /// listener without a token) accepts only loopback host names. (The unit tests serve this
    /// same router in memory.)
    static func makeRouter(api: RunsAPI, token: String?, checkHost: Bool = false, logger: Logger) -> Router<BasicRequestContext> {
        // HEAD is routed to each GET endpoint (the middleware then drops the body): without
        // this option every HEAD found no route and answered 404.
        let router = Router(context: BasicRequestContext.self, options: .autoGenerateHeadEndpoints)
        router.add(middleware: APIErrorMiddleware(token: token.flatMap { $0.isEmpty ? nil : $0 }, checkHost: checkHost, logger: logger))
        api.register(on: router)
        return router
    }

    public func run() async throws {
        let feed = self.feed
        // Open event streams would hold the server past a graceful shutdown: end them first.
        do {
            try await withGracefulShutdownHandler {
                try await application.run()
            } onGracefulShutdown: {
                feed.finishAll()
            }
        } catch {
            logger.error("HTTP listener failed; the worker goes on without it", metadata: ["error": "\(error)"])
            throw error
        }
    }

    /// A Prometheus factory with buckets for what the worker measures: sub-millisecond stage
    /// times, batch sizes, and run and action durations from seconds to hours.
    public static func metricsFactory(_ registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
        ]
        let long: [Double] = [0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600]
        factory.valueHistogramBuckets = [
            "runworker_batch_size": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
            "runworker_run_attempts": [1, 2, 3, 5, 10],
            "runworker_timer_lateness_seconds": [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60],
            "runworker_run_duration_seconds": long,
            "runworker_action_duration_seconds": long,
        ]
        return factory
    }
}

/// The static files of the run board, read once at start from the module's resources.
struct Board: Sendable {
    var files: [String: (contentType: String, bytes: [UInt8])]

    static func load() throws -> Board {
        var files: [String: (String, [UInt8])] = [:]
        for (name, type) in [
            ("index.html", "text/html; charset=utf-8"), ("board.js", "application/javascript; charset=utf-8"),
            ("board.css", "text/css; charset=utf-8"),
        ] {
            guard let url = Bundle.module.url(forResource: name, withExtension: nil, subdirectory: "Board") else {
                throw BoardMissing(name: name)
            }
            files[name] = (type, [UInt8](try Data(contentsOf: url)))
        }
        return Board(files: files)
    }

    struct BoardMissing: Error, CustomStringConvertible {
        var name: String
        var description: String { "the run board's \(name) is missing from the installed resources" }
    }
}

/// An API error: the contract's error shape, `{"error": {"code", "message"}}`.
struct APIError: Error {
    var status: HTTPResponse.Status
    var code: String
    var message: String

    static func validation(_ message: String) -> APIError { APIError(status: .badRequest, code: "validation_error", message: message) }

    var bodyBytes: [UInt8] {
        let body: JSONObject = ["error": .object(["code": .string(code), "message": .string(message)])]
        return body.serialized()
    }

    var response: Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if status == .unauthorized { headers[.wwwAuthenticate] = "Bearer" }
        if status == .methodNotAllowed { headers[.allow] = "GET, HEAD" }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bodyBytes)))
    }

    /// The head of this error written below the router (a parser error, a refused connection):
    /// its length, the security headers every answer carries, and the connection closing.
    var closingHead: HTTPResponse {
        var headers: HTTPFields = [.contentType: "application/json", .contentLength: "\(bodyBytes.count)", .connection: "close"]
        APIErrorMiddleware.secure(&headers)
        return HTTPResponse(status: status, headerFields: headers)
    }
}

/// Every answer that is not a success carries a JSON error body with a contract code; the
/// bearer token is checked here (health and the board's files need none); only GET and HEAD
/// are served; oversized query strings are refused before routing.
struct APIErrorMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let token: String?
    /// Whether to refuse host names other than loopback ones (421): on a loopback listener
    /// without a token, a web page the machine's browser loads from elsewhere could otherwise
    /// read every run through a name that resolves to 127.0.0.1 (DNS rebinding). With a token,
    /// the token protects, and the browser cannot send it for another origin.
    var checkHost = false
    let logger: Logger
    static let maxQueryBytes = 4096
    static let loopbackHosts: Set<String> = ["127.0.0.1", "localhost", "[::1]"]
    static let open: Set<String> = ["/healthz", "/readyz", "/", "/index.html", "/board.js", "/board.css"]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        Self.secured(try await answer(request, context: context, next: next))
    }

    /// Every answer: no content sniffing, and never framed by another page (clickjacking). A
    /// page's own policy (the board's) keeps its directives and gains `frame-ancestors`.
    static func secured(_ response: Response) -> Response {
        var response = response
        secure(&response.headers)
        return response
    }

    static func secure(_ headers: inout HTTPFields) {
        headers[.xContentTypeOptions] = "nosniff"
        if let policy = headers[.contentSecurityPolicy], !policy.contains("frame-ancestors") {
            headers[.contentSecurityPolicy] = policy + "; frame-ancestors 'none'"
        } else if headers[.contentSecurityPolicy] == nil {
            headers[.contentSecurityPolicy] = "frame-ancestors 'none'"
        }
    }

    private func answer(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            if checkHost, !Self.servesHost(request) {
                throw APIError(
                    status: .misdirectedRequest, code: "misdirected_request",
                    message: "this listener answers only to 127.0.0.1, localhost or [::1] (set http_token to serve other names)")
            }
            guard request.method == .get || request.method == .head else {
                throw APIError(status: .methodNotAllowed, code: "method_not_allowed", message: "only GET is served")
            }
            if request.uri.query.map({ $0.utf8.count > Self.maxQueryBytes }) == true {
                throw APIError(status: .uriTooLong, code: "payload_too_large", message: "the query string is longer than \(Self.maxQueryBytes) bytes")
            }
            if let token, !Self.open.contains(request.uri.path) { try check(request, token: token) }
            // HEAD is GET without the body.
            guard request.method == .head else { return try await next(request, context) }
            var head = request.head
            head.method = .get
            let response = try await next(Request(head: head, body: request.body), context)
            return Response(status: response.status, headers: response.headers, body: .init())
        } catch let error as APIError {
            return error.response
        } catch let error as HTTPError where error.status == .notFound {
            return APIError(status: .notFound, code: "not_found", message: "no such endpoint: \(request.uri.path)").response
        } catch let error as StoreError {
            logger.warning("HTTP: store error", metadata: ["error": "\(error)", "path": .string(request.uri.path)])
            return APIError(status: .serviceUnavailable, code: "unavailable", message: "the store did not answer: \(error.code)").response
        } catch let error as HTTPError {
            return APIError(status: error.status, code: "validation_error", message: error.body ?? "\(error.status)").response
        } catch {
            logger.error("HTTP: unexpected error", metadata: ["error": "\(error)", "path": .string(request.uri.path)])
            return APIError(status: .internalServerError, code: "internal_error", message: "unexpected error").response
        }
    }

    /// Whether a request may be served under `checkHost`: it names a loopback host (with or
    /// without a port, in any case), or no host at all (HTTP/1.0; browsers always send one).
    static func servesHost(_ request: Request) -> Bool {
        guard let authority = request.head.authority ?? request.headers.first(where: { $0.name.canonicalName == "host" })?.value
        else { return true }
        return isLoopbackName(authority)
    }

    /// `localhost`, `[::1]` or an IPv4 literal in 127.0.0.0/8, with or without a port, in any case.
    static func isLoopbackName(_ authority: String) -> Bool {
        var host = Substring(authority.lowercased())
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return false }
            let rest = host[host.index(after: close)...]
            guard rest.isEmpty || (rest.first == ":" && rest.dropFirst().allSatisfy(\.isNumber)) else { return false }
            host = host[...close]
        } else if let colon = host.lastIndex(of: ":") {
            guard host[host.index(after: colon)...].allSatisfy(\.isNumber) else { return false }
            host = host[..<colon]
        }
        if loopbackHosts.contains(String(host)) { return true }
        let octets = host.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { $0.count <= 3 && UInt8($0) != nil }
    }

    private func check(_ request: Request, token: String) throws {
        var given = request.headers[.authorization].flatMap { h -> String? in
            h.lowercased().hasPrefix("bearer ") ? String(h.dropFirst(7)).trimmingCharacters(in: .whitespaces) : nil
        }
        // Browsers cannot give EventSource a header: the stream alone takes the token in its
        // query (elsewhere it would end up in proxies' logs for nothing).
        if given == nil, request.uri.path == "/v1/events/stream", let q = request.uri.queryParameters.get("access_token") {
            given = q
        }
        guard let given, Self.constantTimeEqual(given, token) else {
            throw APIError(status: .unauthorized, code: "unauthorized", message: "a valid bearer token is required")
        }
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var diff = UInt8(x.count == y.count ? 0 : 1)
        for i in 0..<max(x.count, y.count) { diff |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0) }
        return diff == 0
    }
}
