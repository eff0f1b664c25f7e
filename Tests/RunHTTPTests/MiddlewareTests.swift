import Hummingbird
import HummingbirdTesting
import RunContract
import RunStore
import Testing

@testable import RunHTTP

/// What `APIErrorMiddleware` decides before and around the endpoints: the bearer token, the
/// methods served, the query-size bound, HEAD, unknown paths; and the board's static files.
@Suite struct MiddlewareTests {
    static let token = "s3cret-token-of-24-chars"

    // MARK: token

    /// With a token, the API needs `Authorization: Bearer <token>`: a missing, wrong, truncated
    /// or non-Bearer one is 401 `unauthorized` with `WWW-Authenticate: Bearer`.
    @Test func tokenIsRequired() async throws {
        let server = try TestServer(store: try await seededStore(), token: Self.token)
        let refused: [HTTPFields] = [
            [:], [.authorization: "Bearer wrong-token-of-24-chars"], [.authorization: "Bearer s3cret-token-of-24-char"],
            [.authorization: "Bearer \(Self.token)x"], [.authorization: "Basic \(Self.token)"], [.authorization: Self.token],
            [.authorization: "Bearer"], [.authorization: "Bearer "],
        ]
        try await server.test { client in
            for headers in refused {
                let answer = try await client.get("/v1/runs", headers: headers)
                #expect(answer.status == .unauthorized, "\(headers)")
                #expect(answer.headers[.wwwAuthenticate] == "Bearer", "\(headers)")
                #expect(try answer.errorCode() == "unauthorized", "\(headers)")
                #expect(try answer.json()["error"]?["message"] == "a valid bearer token is required")
            }
        }
    }

    /// The right token is taken with the scheme in any case and spaces around the token.
    @Test func rightTokenIsTaken() async throws {
        let server = try TestServer(store: try await seededStore(), token: Self.token)
        try await server.test { client in
            for value in ["Bearer \(Self.token)", "bearer \(Self.token)", "BEARER \(Self.token)", "Bearer   \(Self.token)  "] {
                let answer = try await client.get("/v1/runs", headers: [.authorization: value])
                #expect(answer.status == .ok, "\(value)")
                #expect(answer.headers[.wwwAuthenticate] == nil)
            }
            #expect(try await client.get("/metrics", headers: [.authorization: "Bearer \(Self.token)"]).status == .ok)
        }
    }

    /// Health and the board's files are open; metrics, the API and unknown paths are not
    /// (the token is checked before routing).
    @Test func openAndGuardedPaths() async throws {
        let server = try TestServer(token: Self.token)
        try await server.test { client in
            for path in ["/healthz", "/", "/index.html", "/board.js", "/board.css"] {
                #expect(try await client.get(path).status == .ok, "\(path)")
            }
            // Open, and unready here (not connected): answered, not refused.
            #expect(try await client.get("/readyz").status == .serviceUnavailable)
            for path in ["/metrics", "/v1/runs", "/v1/runs/r-a", "/v1/runs/r-a/events", "/v1/runs/r-a/chain", "/v1/counts",
                         "/v1/events/stream", "/nope", "/healthz/extra"] {
                #expect(try await client.get(path).status == .unauthorized, "\(path)")
            }
            let unknown = try await client.get("/nope", headers: [.authorization: "Bearer \(Self.token)"])
            #expect(unknown.status == .notFound)
        }
    }

    /// `access_token` in the query is taken for the event stream only (here the stream then
    /// refuses its bad filter, which shows the token passed); elsewhere it is ignored.
    @Test func queryTokenIsForTheStreamOnly() async throws {
        let server = try TestServer(token: Self.token)
        try await server.test { client in
            let stream = try await client.get("/v1/events/stream?access_token=\(Self.token)&type=bogus")
            #expect(stream.status == .badRequest)
            #expect(try stream.errorCode() == "validation_error")
            let wrong = try await client.get("/v1/events/stream?access_token=wrong&type=bogus")
            #expect(wrong.status == .unauthorized)
            #expect(try await client.get("/v1/counts?access_token=\(Self.token)").status == .unauthorized)
            #expect(try await client.get("/metrics?access_token=\(Self.token)").status == .unauthorized)
        }
        #expect(server.feed.subscriberCount == 0)
    }

    /// Without a token, or with an empty one, nothing is checked.
    @Test(arguments: [nil, ""] as [String?])
    func noTokenChecksNothing(token: String?) async throws {
        let server = try TestServer(store: try await seededStore(), token: token)
        try await server.test { client in
            let runs = try await client.get("/v1/runs")
            let metrics = try await client.get("/metrics")
            let anything = try await client.get("/v1/runs", headers: [.authorization: "Bearer anything"])
            #expect(runs.status == .ok)
            #expect(metrics.status == .ok)
            #expect(anything.status == .ok)
        }
    }

    /// The comparison is exact: same bytes, same length.
    @Test func constantTimeEqual() {
        #expect(APIErrorMiddleware.constantTimeEqual("", ""))
        #expect(APIErrorMiddleware.constantTimeEqual("s3cret", "s3cret"))
        #expect(APIErrorMiddleware.constantTimeEqual("clé", "clé"))
        #expect(!APIErrorMiddleware.constantTimeEqual("s3cret", "s3creT"))
        #expect(!APIErrorMiddleware.constantTimeEqual("s3cret", "s3cre"))
        #expect(!APIErrorMiddleware.constantTimeEqual("s3cre", "s3cret"))
        #expect(!APIErrorMiddleware.constantTimeEqual("", "a"))
        #expect(!APIErrorMiddleware.constantTimeEqual("a\u{0}", "a"))
    }

    // MARK: methods

    /// Only GET and HEAD are served: any other method, on a known or unknown path, is 405
    /// `method_not_allowed` with `Allow: GET, HEAD`, before the token is looked at.
    @Test func otherMethodsAre405() async throws {
        let server = try TestServer(token: Self.token)
        try await server.test { client in
            for (method, path) in [
                (HTTPRequest.Method.post, "/v1/runs"), (.put, "/v1/runs/r-a"), (.delete, "/v1/runs/r-a"), (.patch, "/v1/counts"),
                (.options, "/healthz"), (.post, "/nope"),
            ] {
                let answer = try await client.execute(uri: path, method: method, body: ByteBuffer(bytes: Array("{}".utf8)))
                #expect(answer.status == .methodNotAllowed, "\(method) \(path)")
                #expect(answer.headers[.allow] == "GET, HEAD", "\(method) \(path)")
                #expect(try answer.errorCode() == "method_not_allowed", "\(method) \(path)")
            }
        }
    }

    // MARK: query size

    /// A query string of more than 4096 bytes is 414 `payload_too_large` on any path (before
    /// the token); 4096 bytes are accepted.
    @Test func overlongQueryIs414() async throws {
        let server = try TestServer(token: Self.token)
        try await server.test { client in
            let limit = APIErrorMiddleware.maxQueryBytes
            let fits = try await client.get("/healthz?x=" + String(repeating: "a", count: limit - 2))
            #expect(fits.status == .ok)
            for path in ["/healthz", "/v1/runs", "/nope"] {
                let answer = try await client.get(path + "?x=" + String(repeating: "a", count: limit - 1))
                #expect(answer.status == .uriTooLong, "\(path)")
                #expect(try answer.errorCode() == "payload_too_large", "\(path)")
                #expect(try answer.json()["error"]?["message"] == "the query string is longer than 4096 bytes")
            }
        }
    }

    // MARK: Host names (DNS rebinding)

    /// A loopback listener without a token serves only loopback host names, with or without a
    /// port and in any case; any other name (a DNS name rebound to 127.0.0.1) is refused. (The
    /// router test client always sends `localhost`: the refusal itself, 421 with a JSON error,
    /// is tested against a real worker in IntegrationTests.HTTPTests.)
    @Test(arguments: [
        ("127.0.0.1:8080", true), ("127.0.0.1", true), ("localhost", true), ("LocalHost:1", true), ("[::1]:8080", true),
        ("[::1]", true), ("evil.example", false), ("evil.example:8080", false), ("127.0.0.1.evil.example", false),
        ("localhost.evil.example:80", false), ("[::2]:8080", false), ("127.0.0.2:80", true), ("128.0.0.1", false),
        ("127.0.0.256", false), ("127.0.0", false), ("localhost:80x", false),
        ("[::1]evil", false), ("", false),
    ])
    func loopbackNames(authority: String, served: Bool) {
        #expect(APIErrorMiddleware.isLoopbackName(authority) == served, "\(authority)")
    }

    /// With the host check on, a request to a loopback name is served as before.
    @Test func hostCheckServesLoopbackNames() async throws {
        let server = try TestServer(store: try await seededStore(), checkHost: true)
        try await server.test { client in
            let runs = try await client.get("/v1/runs")
            let health = try await client.get("/healthz")
            #expect(runs.status == .ok)
            #expect(health.status == .ok)
        }
    }

    // MARK: Headers on every answer

    /// Every answer, success or error, API or board, forbids content sniffing and framing by
    /// another page; the board's own policy keeps its directives.
    @Test func everyAnswerForbidsSniffingAndFraming() async throws {
        let server = try TestServer(store: try await seededStore())
        try await server.test { client in
            for path in ["/healthz", "/v1/runs/r-a", "/v1/runs/nope", "/nowhere", "/v1/runs?limit=x", "/metrics"] {
                let answer = try await client.get(path)
                #expect(answer.headers[.xContentTypeOptions] == "nosniff", "\(path)")
                #expect(answer.headers[.contentSecurityPolicy] == "frame-ancestors 'none'", "\(path)")
            }
            let post = try await client.execute(uri: "/v1/runs", method: .post)
            #expect(post.headers[.contentSecurityPolicy] == "frame-ancestors 'none'")
            let page = try await client.get("/")
            #expect(page.headers[.xContentTypeOptions] == "nosniff")
            #expect(page.headers[.contentSecurityPolicy] == "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        }
    }

    // MARK: HEAD

    /// HEAD is GET without a body on every GET endpoint: the same status, content type and
    /// length (the router generates HEAD endpoints; without that every HEAD was a 404).
    @Test func headIsGetWithoutBody() async throws {
        let server = try TestServer(store: try await seededStore())
        try await server.test { client in
            for path in ["/healthz", "/v1/runs/r-a", "/v1/runs?status=completed", "/v1/runs/r-a/events", "/v1/counts", "/"] {
                let get = try await client.get(path)
                let head = try await client.execute(uri: path, method: .head)
                #expect(!get.bytes.isEmpty, "\(path)")
                #expect(head.status == get.status, "\(path)")
                #expect(head.headers[.contentType] == get.headers[.contentType], "\(path)")
                #expect(head.headers[.contentLength] == String(get.bytes.count), "\(path)")
                #expect(head.body.readableBytes == 0, "\(path)")
            }
        }
    }

    /// Given a HEAD endpoint, the middleware hands the handler a GET and sends its answer's
    /// status and headers (content length included) without the body.
    @Test func middlewareTurnsHeadIntoGet() async throws {
        let method = try #require(HTTPFields.Element.Name("x-seen-method"))
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: APIErrorMiddleware(token: nil, logger: TestServer.logger))
        router.on("/probe", method: .head) { request, _ in
            Response(
                status: .accepted, headers: [.contentType: "text/plain", method: request.method.rawValue],
                body: .init(byteBuffer: ByteBuffer(bytes: Array("payload".utf8))))
        }
        try await Application(router: router, logger: TestServer.logger).test(.router) { client in
            let answer = try await client.execute(uri: "/probe", method: .head)
            #expect(answer.status == .accepted)
            #expect(answer.headers[method] == "GET")
            #expect(answer.headers[.contentType] == "text/plain")
            #expect(answer.headers[.contentLength] == "7")
            #expect(answer.body.readableBytes == 0)
        }
    }

    // MARK: unknown paths

    /// An unknown path is 404 `not_found` in the contract's error shape, naming the path.
    @Test(arguments: ["/nope", "/v1/run", "/v1/runs/r-a/unknown", "/v1"])
    func unknownPathIs404(path: String) async throws {
        let server = try TestServer(store: try await seededStore())
        try await server.test { client in
            let answer = try await client.get(path)
            #expect(answer.status == .notFound)
            #expect(answer.headers[.contentType] == "application/json")
            #expect(try answer.errorCode() == "not_found")
            #expect(try answer.json()["error"]?["message"]?.stringValue == "no such endpoint: \(path)")
        }
    }

    // MARK: board

    /// The board's files are served from the module's resources with their content types, no
    /// caching, no sniffing and a same-origin content security policy; `/` is `index.html`.
    @Test func boardFiles() async throws {
        let board = try Board.load()
        let server = try TestServer(board: board)
        try await server.test { client in
            for (path, name, type) in [
                ("/", "index.html", "text/html; charset=utf-8"), ("/index.html", "index.html", "text/html; charset=utf-8"),
                ("/board.js", "board.js", "application/javascript; charset=utf-8"), ("/board.css", "board.css", "text/css; charset=utf-8"),
            ] {
                let answer = try await client.get(path)
                #expect(answer.status == .ok, "\(path)")
                #expect(answer.headers[.contentType] == type, "\(path)")
                #expect(answer.headers[.cacheControl] == "no-cache", "\(path)")
                #expect(answer.headers[.xContentTypeOptions] == "nosniff", "\(path)")
                #expect(answer.headers[.contentSecurityPolicy] == "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'", "\(path)")
                #expect(answer.headers[RunsAPI.referrerPolicy] == "no-referrer", "\(path)")
                #expect(answer.bytes == board.files[name]?.bytes, "\(path)")
                #expect(!answer.bytes.isEmpty, "\(path)")
            }
        }
    }

    /// An old board link with `?token=` is redirected (303, never cached, no referrer) to the
    /// same page with the token, percent-encoded, in the fragment, which no request carries.
    @Test func boardQueryTokenRedirectsToTheFragment() async throws {
        let server = try TestServer(token: "board-token+0123456789/=")
        try await server.test { client in
            for (path, location) in [
                ("/?token=board-token%2B0123456789%2F%3D", "./#token=board-token%2B0123456789%2F%3D"),
                ("/index.html?token=abc", "index.html#token=abc"),
            ] {
                let answer = try await client.get(path)
                #expect(answer.status == .seeOther, "\(path)")
                #expect(answer.headers[.location] == location, "\(path)")
                #expect(answer.headers[.cacheControl] == "no-store")
                #expect(answer.headers[RunsAPI.referrerPolicy] == "no-referrer")
            }
            #expect(try await client.get("/?other=1").status == .ok)
        }
    }

    /// A board file missing from the resources is answered 404 `not_found` with its name.
    @Test func missingBoardFileIs404() async throws {
        let server = try TestServer(board: Board(files: [:]))
        try await server.test { client in
            let answer = try await client.get("/board.js")
            #expect(answer.status == .notFound)
            #expect(try answer.errorCode() == "not_found")
            #expect(try answer.json()["error"]?["message"] == "board.js")
        }
    }
}
