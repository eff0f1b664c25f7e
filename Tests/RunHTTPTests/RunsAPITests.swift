import Hummingbird
import HummingbirdTesting
import RunContract
import RunStore
import RunTestSupport
import Testing

@testable import RunHTTP

/// The read-only runs API over an in-memory store: snapshots, lists with filters and pages,
/// histories, rerun chains, counts, and the answers to bad input.
@Suite struct RunsAPITests {
    static func ids(_ answer: TestResponse) throws -> [String] {
        try answer.json()["runs"]?.arrayValue?.map { $0["run_id"]?.stringValue ?? "?" } ?? []
    }

    // MARK: snapshot

    /// A known run is answered 200 with exactly its contract snapshot.
    @Test func snapshotOfAKnownRun() async throws {
        let store = try await seededStore()
        let run = try #require(try await store.run("r-a"))
        let server = try TestServer(store: store)
        try await server.test { client in
            let answer = try await client.get("/v1/runs/r-a")
            #expect(answer.status == .ok)
            #expect(answer.headers[.contentType] == "application/json")
            #expect(try answer.json() == .object(run.snapshotJSON))
        }
    }

    /// An unknown run is answered 404 `run_not_found` in the contract's error shape, with a
    /// message that names the run and says why it may be missing.
    @Test func unknownRunIs404() async throws {
        let server = try TestServer(store: try await seededStore())
        try await server.test { client in
            let answer = try await client.get("/v1/runs/nobody")
            #expect(answer.status == .notFound)
            #expect(answer.headers[.contentType] == "application/json")
            #expect(try answer.errorCode() == "run_not_found")
            #expect(try answer.json()["error"]?["message"]
                == "run nobody is unknown (never created, or finished and removed by retention)")
        }
    }

    /// The run id in the path is percent-decoded once: ids with a slash or a space are reachable.
    @Test func runIDIsPercentDecoded() async throws {
        let store = InMemoryRunStore()
        try await seed(store, storedRun("team/run 1", .running, created: 1_000), events: ["created"])
        let server = try TestServer(store: store)
        try await server.test { client in
            let answer = try await client.get("/v1/runs/team%2Frun%201")
            #expect(answer.status == .ok)
            #expect(try answer.json()["run_id"] == "team/run 1")
            let history = try await client.get("/v1/runs/team%2Frun%201/events")
            #expect(history.status == .ok)
            #expect(try history.json()["run_id"] == "team/run 1")
        }
    }

    /// A run id of 256 bytes is looked up; one of 257 is refused 400 `payload_too_large`.
    @Test func runIDLengthBound() async throws {
        let server = try TestServer()
        try await server.test { client in
            let longest = try await client.get("/v1/runs/" + String(repeating: "x", count: 256))
            #expect(longest.status == .notFound)
            #expect(try longest.errorCode() == "run_not_found")
            let tooLong = "/v1/runs/" + String(repeating: "x", count: 257)
            for path in [tooLong, tooLong + "/events", tooLong + "/chain"] {
                let answer = try await client.get(path)
                #expect(answer.status == .badRequest, "\(path.suffix(10))")
                #expect(try answer.errorCode() == "payload_too_large")
                #expect(try answer.json()["error"]?["message"] == "run_id is longer than 256 bytes")
            }
        }
    }

    // MARK: list

    /// Without filters: every run, newest first by creation, and no next page.
    @Test func listIsNewestFirst() async throws {
        let store = try await seededStore()
        let oldest = try #require(try await store.run("r-a"))
        let server = try TestServer(store: store)
        try await server.test { client in
            let answer = try await client.get("/v1/runs")
            #expect(answer.status == .ok)
            #expect(try Self.ids(answer) == ["r-d", "r-c", "r-b", "r-a"])
            #expect(try answer.json()["next_cursor"] == .null)
            // Each entry is the run's snapshot without input, result and pending actions.
            var summary = oldest.snapshotJSON
            for field in ["input", "result", "pending_actions"] { summary[field] = nil }
            #expect(try answer.json()["runs"]?.arrayValue?.last == .object(summary))
        }
    }

    /// Status filters take a comma-separated list, repeated parameters, or both (spaces
    /// trimmed); agent and time filters combine with them; times are exclusive bounds.
    @Test func listFilters() async throws {
        let server = try TestServer(store: try await seededStore())
        let t = { (milliseconds: Int64) in ms(milliseconds).rfc3339 }
        let cases: [(String, [String])] = [
            ("status=completed,failed", ["r-b", "r-a"]),
            ("status=completed&status=cancelled", ["r-c", "r-a"]),
            ("status=running,%20failed", ["r-d", "r-b"]),
            ("status=waiting", []),
            ("agent_id=agent-x", ["r-c", "r-a"]),
            ("agent_id=agent-x&status=cancelled", ["r-c"]),
            ("agent_id=nobody", []),
            ("created_after=\(t(2_000))", ["r-d", "r-c"]),
            ("created_before=\(t(3_000))", ["r-b", "r-a"]),
            ("created_after=\(t(1_000))&created_before=\(t(4_000))", ["r-c", "r-b"]),
            ("updated_after=\(t(5_000))", ["r-c"]),
            ("updated_before=\(t(4_000))", ["r-b"]),
        ]
        try await server.test { client in
            for (query, expected) in cases {
                let answer = try await client.get("/v1/runs?" + query)
                #expect(answer.status == .ok, "\(query)")
                #expect(try Self.ids(answer) == expected, "\(query)")
            }
        }
    }

    /// Pages of `limit` runs (500 at most) follow each other through their cursors, newest
    /// first, until the last, whose cursor is null.
    @Test func listPages() async throws {
        let server = try TestServer(store: try await seededStore())
        try await server.test { client in
            let first = try await client.get("/v1/runs?limit=3")
            #expect(try Self.ids(first) == ["r-d", "r-c", "r-b"])
            let cursor = try #require(try first.json()["next_cursor"]?.stringValue)
            let second = try await client.get("/v1/runs?limit=3&cursor=" + cursor)
            #expect(try Self.ids(second) == ["r-a"])
            #expect(try second.json()["next_cursor"] == .null)

            var walked: [String] = []
            var next: String? = nil
            var pages = 0
            repeat {
                let page = try await client.get("/v1/runs?limit=1" + (next.map { "&cursor=" + $0 } ?? ""))
                walked += try Self.ids(page)
                next = try page.json()["next_cursor"]?.stringValue
                pages += 1
            } while next != nil && pages < 10
            #expect(walked == ["r-d", "r-c", "r-b", "r-a"])
            #expect(pages == 4)

            // The largest page is accepted.
            #expect(try Self.ids(try await client.get("/v1/runs?limit=500")).count == 4)
        }
    }

    /// List items are summaries: no input, result or pending actions unless `include` names
    /// them (comma-separated or repeated); with all three an item is the full snapshot.
    @Test func listItemsAreSummaries() async throws {
        let store = InMemoryRunStore()
        var run = storedRun("r-1", .waiting, agent: "agent-x", created: 1_000)
        run.result = ["partial": 1]
        run.actions = [Action(id: "act-1", type: .toolCall, fields: ["tool": "calc", "args": ["x": 2]], requestedAt: ms(1_000))]
        try await seed(store, run, events: ["created"])
        let snapshot = run.snapshotJSON
        let server = try TestServer(store: store)
        try await server.test { client in
            let item = try #require(try await client.get("/v1/runs").json()["runs"]?.arrayValue?.first?.objectValue)
            #expect(item["input"] == nil && item["result"] == nil && item["pending_actions"] == nil)
            #expect(item["run_id"] == "r-1" && item["status"] == "waiting" && item["agent_id"] == "agent-x")
            let withInput = try #require(try await client.get("/v1/runs?include=input").json()["runs"]?.arrayValue?.first?.objectValue)
            #expect(withInput["input"] == ["q": "2+2"] && withInput["result"] == nil)
            for query in ["include=input,result,pending_actions", "include=input&include=result,pending_actions"] {
                let full = try await client.get("/v1/runs?" + query).json()["runs"]?.arrayValue?.first
                #expect(full == .object(snapshot), "\(query)")
            }
            let bad = try await client.get("/v1/runs?include=metadata")
            #expect(try bad.status == .badRequest && bad.errorCode() == "validation_error")
            #expect(try bad.json()["error"]?["message"] == "include must be one or more of input, result, pending_actions, got metadata")
        }
    }

    /// A page's items stay within `maxPageBytes`: with large inputs included the page ends early
    /// with a cursor, the pages walk every run once in order, and a run larger than the bound
    /// has a page to itself; without inputs every run fits one small page.
    @Test func listPagesAreBoundedInBytes() async throws {
        let store = InMemoryRunStore()
        var expected: [String] = []
        for i in 0..<12 {
            let id = "big-" + (i < 10 ? "0" : "") + String(i)
            var run = storedRun(id, .completed, created: Int64(1_000 + i))
            run.input = .string(String(repeating: "x", count: i == 5 ? 5 << 20 : 700_000))
            try await seed(store, run)
            expected.insert(id, at: 0)
        }
        let newestFirst = expected
        let server = try TestServer(store: store)
        try await server.test { client in
            let summaries = try await client.get("/v1/runs?limit=500")
            #expect(try Self.ids(summaries) == newestFirst)
            #expect(summaries.bytes.count < 12 * 1024, "\(summaries.bytes.count) bytes")

            var walked: [[String]] = []
            var next: String? = nil
            repeat {
                let page = try await client.get("/v1/runs?limit=500&include=input" + (next.map { "&cursor=" + $0 } ?? ""))
                #expect(page.status == .ok)
                let ids = try Self.ids(page)
                // The page's items are at most the bound, or one item alone (the 5 MiB run).
                #expect(page.bytes.count <= RunsAPI.maxPageBytes + 100 || ids.count == 1, "\(page.bytes.count) bytes")
                walked.append(ids)
                next = try page.json()["next_cursor"]?.stringValue
            } while next != nil && walked.count < 20
            #expect(walked.flatMap { $0 } == newestFirst)
            #expect(walked.contains(["big-05"]), "the oversized run has a page of its own: \(walked)")
            #expect(walked.count >= 3, "\(walked)")
            // A page that ends at its limit says where the next begins, and the last says none.
            let two = try await client.get("/v1/runs?limit=2")
            #expect(try Self.ids(two) == Array(newestFirst.prefix(2)) && two.json()["next_cursor"]?.stringValue != nil)
            let all = try await client.get("/v1/runs?limit=12")
            #expect(try Self.ids(all) == newestFirst && all.json()["next_cursor"] == .null)
        }
    }

    /// Bad list parameters are refused 400 `validation_error`, with a message naming the bound.
    @Test(arguments: [
        ("limit=0", "limit must be an integer from 1 to 500, got 0"),
        ("limit=501", "limit must be an integer from 1 to 500, got 501"),
        ("limit=-1", "limit must be an integer from 1 to 500, got -1"),
        ("limit=abc", "limit must be an integer from 1 to 500, got abc"),
        ("limit=1.5", "limit must be an integer from 1 to 500, got 1.5"),
        ("cursor=%25%25%25", "cursor is not one this API gave out"),
        ("status=bogus", "status must be one of created, running, waiting, retrying, completed, failed, cancelled, got bogus"),
        ("agent_id=", "agent_id must be 1 to 256 bytes"),
        ("agent_id=" + String(repeating: "a", count: 257), "agent_id must be 1 to 256 bytes"),
        ("created_after=yesterday", "created_after must be an RFC 3339 time like 2026-11-23T08:00:00.000Z, got yesterday"),
        ("updated_before=2026-13-01T00:00:00Z", "updated_before must be an RFC 3339 time like 2026-11-23T08:00:00.000Z, got 2026-13-01T00:00:00Z"),
    ])
    func badListParameters(query: String, message: String) async throws {
        let server = try TestServer(store: try await seededStore())
        try await server.test { client in
            let answer = try await client.get("/v1/runs?" + query)
            #expect(answer.status == .badRequest)
            #expect(try answer.errorCode() == "validation_error")
            #expect(try answer.json()["error"]?["message"]?.stringValue == message)
        }
    }

    // MARK: history

    /// The history is the stored event bodies, byte for byte (confirmed ones included), in seq
    /// order, inside `{"run_id", "events"}`.
    @Test func historySplicesTheStoredBodies() async throws {
        let server = try TestServer(store: try await seededStore())
        try await server.test { client in
            let answer = try await client.get("/v1/runs/r-a/events")
            #expect(answer.status == .ok)
            #expect(answer.headers[.contentType] == "application/json")
            let types = ["created", "started", "action_required", "action_completed", "completed"]
            let bodies = types.enumerated().map { i, type in eventBody("r-a", Int64(i + 1), type) }
            let expected = Array(#"{"run_id":"r-a","events":["#.utf8) + Array(bodies.joined(separator: Array(",".utf8)))
                + Array(#"],"next_after_seq":null}"#.utf8)
            #expect(answer.bytes == expected, "\(answer.text)")
            #expect(try answer.json()["events"]?.arrayValue?.map { $0["seq"]?.intValue ?? 0 } == [1, 2, 3, 4, 5])
        }
    }

    /// `after_seq` skips the events up to it and `limit` caps the page; both in seq order.
    @Test(arguments: [
        ("after_seq=3", [4, 5] as [Int64]), ("limit=2", [1, 2]), ("after_seq=1&limit=2", [2, 3]), ("after_seq=0&limit=1000", [1, 2, 3, 4, 5]),
        ("after_seq=5", []), ("after_seq=9223372036854775807", []),
    ])
    func historyAfterAndLimit(query: String, seqs: [Int64]) async throws {
        let server = try TestServer(store: try await seededStore())
        try await server.test { client in
            let answer = try await client.get("/v1/runs/r-a/events?" + query)
            #expect(answer.status == .ok)
            #expect(try answer.json()["events"]?.arrayValue?.map { $0["seq"]?.intValue ?? 0 } == seqs)
        }
    }

    /// A history page's bodies stay within `maxPageBytes`: with large events it ends early, its
    /// `next_after_seq` leads through every event once, in order, and the last page says null;
    /// a page that ends at its `limit` points on too.
    @Test func historyPagesAreBoundedInBytes() async throws {
        let store = InMemoryRunStore()
        let run = storedRun("h-big", .running, created: 1_000, version: 12)
        let outbox = (1...12).map { seq in
            OutboxMessage(
                runID: run.runID, seq: Int64(seq), type: "action_completed", status: "running",
                routingKey: "run.h-big.action_completed", messageID: "h-big:\(seq)",
                body: Array(#"{"seq":\#(seq),"result":""#.utf8) + Array(repeating: UInt8(ascii: "r"), count: 900_000) + Array(#""}"#.utf8),
                writtenAt: run.updatedAt)
        }
        _ = try await store.commit(StoreCommit(
            runs: [RunWrite(run: run, previousVersion: nil, nextDeadline: nil, partition: 0)], outbox: outbox))
        let server = try TestServer(store: store)
        try await server.test { client in
            var pages: [[Int64]] = []
            var after: Int64? = 0
            while let from = after, pages.count < 20 {
                let page = try await client.get("/v1/runs/h-big/events?after_seq=\(from)")
                #expect(page.bytes.count <= RunsAPI.maxPageBytes + 100, "\(page.bytes.count) bytes")
                let body = try page.json()
                pages.append(body["events"]?.arrayValue?.map { $0["seq"]?.intValue ?? 0 } ?? [])
                after = body["next_after_seq"]?.intValue
            }
            #expect(pages == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
            let limited = try await client.get("/v1/runs/h-big/events?limit=2").json()
            #expect(limited["next_after_seq"] == .int(2))
        }
    }

    /// Out-of-range or non-numeric `after_seq` and `limit` are refused 400 `validation_error`.
    @Test(arguments: [
        ("after_seq=-1", "after_seq must be an integer from 0 to 9223372036854775807, got -1"),
        ("after_seq=abc", "after_seq must be an integer from 0 to 9223372036854775807, got abc"),
        ("limit=0", "limit must be an integer from 1 to 1000, got 0"),
        ("limit=1001", "limit must be an integer from 1 to 1000, got 1001"),
    ])
    func badHistoryParameters(query: String, message: String) async throws {
        let server = try TestServer(store: try await seededStore())
        try await server.test { client in
            let answer = try await client.get("/v1/runs/r-a/events?" + query)
            #expect(answer.status == .badRequest)
            #expect(try answer.errorCode() == "validation_error")
            #expect(try answer.json()["error"]?["message"]?.stringValue == message)
        }
    }

    /// A known run without events has an empty history; an unknown run is 404 `run_not_found`.
    @Test func emptyAndUnknownHistory() async throws {
        let store = try await seededStore()
        try await seed(store, storedRun("quiet", .created, created: 9_000))
        let server = try TestServer(store: store)
        try await server.test { client in
            let quiet = try await client.get("/v1/runs/quiet/events")
            #expect(quiet.status == .ok)
            #expect(quiet.text == #"{"run_id":"quiet","events":[],"next_after_seq":null}"#)
            let unknown = try await client.get("/v1/runs/nobody/events")
            #expect(unknown.status == .notFound)
            #expect(try unknown.errorCode() == "run_not_found")
        }
    }

    // MARK: chain

    /// A chain's items stay within `maxPageBytes`: with large inputs included it stops at the
    /// run that would pass it (the last item's `previous_run_id` says where to go on), the run
    /// itself always there; without inputs the whole chain comes.
    @Test func chainIsBoundedInBytes() async throws {
        let store = InMemoryRunStore()
        for i in 1...8 {
            var run = storedRun("b\(i)", .failed, created: Int64(i * 1_000), previous: i > 1 ? "b\(i - 1)" : nil)
            run.input = .string(String(repeating: "x", count: 1_000_000))
            try await seed(store, run)
        }
        let server = try TestServer(store: store)
        try await server.test { client in
            let summaries = try await client.get("/v1/runs/b8/chain")
            #expect(try summaries.json()["chain"]?.arrayValue?.count == 8)
            let full = try await client.get("/v1/runs/b8/chain?include=input")
            let chain = try #require(try full.json()["chain"]?.arrayValue)
            #expect(chain.map { $0["run_id"]?.stringValue ?? "?" } == ["b8", "b7", "b6", "b5"])
            #expect(chain.last?["previous_run_id"] == "b4")
            #expect(full.bytes.count <= RunsAPI.maxPageBytes + 100)
        }
    }

    /// The chain follows `previous_run_id` back, newest first, and ends at the first run, at a
    /// previous run that is gone, at one created after its successor (an id reused), or at a
    /// run already in the chain.
    @Test func chainFollowsPreviousRuns() async throws {
        let store = InMemoryRunStore()
        try await seed(store, storedRun("g1", .failed, created: 1_000))
        try await seed(store, storedRun("g2", .failed, created: 2_000, previous: "g1"))
        try await seed(store, storedRun("g3", .running, created: 3_000, previous: "g2"))
        try await seed(store, storedRun("h2", .running, created: 2_000, previous: "h-gone"))
        try await seed(store, storedRun("k1", .running, created: 9_000))
        try await seed(store, storedRun("k2", .running, created: 2_000, previous: "k1"))
        try await seed(store, storedRun("c1", .running, created: 1_000, previous: "c2"))
        try await seed(store, storedRun("c2", .running, created: 1_000, previous: "c1"))
        let newest = try #require(try await store.run("g3"))
        let server = try TestServer(store: store)
        let cases: [(String, [String])] = [
            ("g3", ["g3", "g2", "g1"]), ("g2", ["g2", "g1"]), ("g1", ["g1"]), ("h2", ["h2"]), ("k2", ["k2"]),
            ("c1", ["c1", "c2"]),
        ]
        try await server.test { client in
            for (id, expected) in cases {
                let answer = try await client.get("/v1/runs/\(id)/chain")
                #expect(answer.status == .ok, "\(id)")
                let body = try answer.json()
                #expect(body["run_id"]?.stringValue == id)
                #expect(body["chain"]?.arrayValue?.map { $0["run_id"]?.stringValue ?? "?" } == expected, "\(id)")
            }
            // Items are list items: summaries, with what `include` names.
            let first = try await client.get("/v1/runs/g3/chain")
            let item = try #require(try first.json()["chain"]?.arrayValue?.first?.objectValue)
            #expect(item["input"] == nil && item["run_id"] == "g3")
            let full = try await client.get("/v1/runs/g3/chain?include=input,result,pending_actions")
            #expect(try full.json()["chain"]?.arrayValue?.first == .object(newest.snapshotJSON))
            #expect(try await client.get("/v1/runs/g3/chain?include=bogus").status == .badRequest)
            let unknown = try await client.get("/v1/runs/nobody/chain")
            #expect(unknown.status == .notFound)
            #expect(try unknown.errorCode() == "run_not_found")
        }
    }

    /// A chain longer than `RunsAPI.maxChain` is cut at that many runs.
    @Test func chainIsBounded() async throws {
        let store = InMemoryRunStore()
        let length = RunsAPI.maxChain + 20
        for i in 0..<length {
            try await seed(store, storedRun("n\(i)", .failed, created: Int64(1_000 + i), previous: i == 0 ? nil : "n\(i - 1)"))
        }
        let server = try TestServer(store: store)
        try await server.test { client in
            let chain = try #require(try await client.get("/v1/runs/n\(length - 1)/chain").json()["chain"]?.arrayValue)
            #expect(chain.count == RunsAPI.maxChain)
            #expect(chain.first?["run_id"]?.stringValue == "n\(length - 1)")
            #expect(chain.last?["run_id"]?.stringValue == "n\(length - RunsAPI.maxChain)")
        }
    }

    // MARK: counts

    /// Counts name every status, zeros included, and the total.
    @Test func countsEveryStatus() async throws {
        let seeded = try TestServer(store: try await seededStore())
        try await seeded.test { client in
            let answer = try await client.get("/v1/counts")
            #expect(answer.status == .ok)
            #expect(try answer.json() == [
                "runs_by_status": [
                    "created": 0, "running": 1, "waiting": 0, "retrying": 0, "completed": 1, "failed": 1, "cancelled": 1,
                ],
                "total": 4,
            ])
        }
        let empty = try TestServer()
        try await empty.test { client in
            let body = try await client.get("/v1/counts").json()
            #expect(body["total"] == 0)
            #expect(body["runs_by_status"]?.objectValue?.keys == RunStatus.allCases.map(\.rawValue))
        }
    }

    // MARK: stream (validation only: the feed is never started)

    /// Bad stream filters are refused 400 before anything subscribes to the broker.
    @Test(arguments: [
        "type=bogus", "status=bogus", "type=completed,bogus", "run_id=" + String(repeating: "r", count: 257),
    ])
    func badStreamFilters(query: String) async throws {
        let server = try TestServer()
        try await server.test { client in
            let answer = try await client.get("/v1/events/stream?" + query)
            #expect(answer.status == .badRequest)
            #expect(try answer.errorCode() == "validation_error")
        }
        #expect(server.feed.subscriberCount == 0)
    }

    // MARK: store errors

    /// When the store does not answer, every read is 503 `unavailable` (not a 500), and
    /// liveness still answers.
    @Test func storeDownIsUnavailable() async throws {
        let store = ControllableStore()
        try await seed(store, storedRun("r-a", .running, created: 1_000), events: ["created"])
        let server = try TestServer(store: store)
        store.fail()
        try await server.test { client in
            for path in ["/v1/runs", "/v1/runs/r-a", "/v1/runs/r-a/events", "/v1/runs/r-a/chain", "/v1/counts"] {
                let answer = try await client.get(path)
                #expect(answer.status == .serviceUnavailable, "\(path)")
                #expect(try answer.errorCode() == "unavailable", "\(path)")
                #expect(try answer.json()["error"]?["message"] == "the store did not answer: unavailable", "\(path)")
            }
            #expect(try await client.get("/healthz").status == .ok)
        }
    }
}
