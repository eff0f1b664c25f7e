import Foundation
import RunWorkerTestKit
import RunTestSupport
import Testing

/// The run board in a real browser: headless Chromium (Debian's) drives the page a worker
/// serves while runs go through their lives, and `board/board_check.py` checks what the page
/// shows (rows and statuses arriving live, counts, filters, a run's timeline with its actions,
/// errors and a refusal), not just that it loads. With the token the worker asks for, in the
/// page's fragment (`/#token=`) or through an old `/?token=` link, the browser's network log is
/// checked too: the token is in no request line and no `Referer`.
@Suite(.serialized, .requiresBroker, .ownThread) struct BoardTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("board/board_check.py").path

    /// The board shows runs live without a token, with `#token=` (never sent in a request line
    /// or Referer; the stream takes it as a bearer header), and from an old `?token=` link,
    /// which is redirected to the fragment.
    @Test(arguments: [nil, "fragment", "query"] as [String?]) func boardShowsRunsLive(tokenIn: String?) throws {
        let withToken = tokenIn != nil
        let prefix = uniquePrefix("board")
        let store = tempStore(prefix)
        defer { removeTempStore(store) }
        let client = try ContractClient(prefix: prefix)
        defer { client.deleteTopology() }
        let token = "board-test-token-0123456789"
        let worker = try WorkerProcess(
            prefix: prefix, store: store,
            extraEnv: withToken ? ["RUNWORKER_HTTP_ADDRESS": "0.0.0.0:0", "RUNWORKER_HTTP_TOKEN": token] : [:])
        defer { _ = worker.terminate() }
        try worker.waitReady()
        let port = try #require(worker.status?.httpAddress?.split(separator: ":").last)
        var arguments = [Self.script, "--http", "http://127.0.0.1:\(port)", "--amqp", amqpURL, "--prefix", prefix]
        if let tokenIn { arguments += ["--token", token, "--token-in", tokenIn] }
        // RUNWORKER_BOARD_SCREENSHOT: where to keep a picture of the board (the README's).
        if let shot = ProcessInfo.processInfo.environment["RUNWORKER_BOARD_SCREENSHOT"], !withToken {
            arguments += ["--screenshot", shot]
        }
        let result = try runProgram("/usr/bin/env", ["python3"] + arguments, timeout: 300)
        #expect(result.status == 0, "\(result.output)\n--- worker log ---\n\(worker.log.suffix(3000))")
        #expect(worker.terminate() == 0)
    }
}
