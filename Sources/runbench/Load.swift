import AMQPClient
import Foundation
import RunWorker
import Synchronization

/// The benchmark's load: runs through their full life, `start`, `require_action`,
/// `complete_action`, `complete` (4 commands, 5 events), interleaved in chunks of runs (all
/// starts of a chunk, then all require_actions, ...) so that a partition holds many runs at once
/// while each run's commands stay in order.
struct RunLoad: Sendable {
    var runs: Range<Int>
    var chunk = 250
    /// `heartbeat_action`s per run, sent while its action is pending (phase `heartbeat`); they
    /// add commands but no events, so every run still has 5 events.
    var heartbeats = 0
    /// Agent-sized payloads (phase `large`); none by default.
    var payload = Payload.none

    /// Sizes of the large strings a run carries: in its `start` input, its action's result and
    /// its result. Each run's strings are a different rotation of one random base64 text, so no
    /// two runs carry the same bytes (a store that shares equal values across runs, or a
    /// compressor, gains nothing) and building a body costs a copy, not random numbers.
    struct Payload: Sendable {
        var inputBytes = 0
        var actionResultBytes = 0
        var resultBytes = 0
        static let none = Payload()
        var isNone: Bool { inputBytes == 0 && actionResultBytes == 0 && resultBytes == 0 }

        static let text: [UInt8] = {
            let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
            var g = SystemRandomNumberGenerator()
            return (0..<(1 << 20)).map { _ in alphabet[Int(g.next() % 64)] }
        }()

        /// `count` bytes of the text starting at a place that depends on the run and the field.
        static func string(run: Int, field: Int, count: Int) -> String {
            let start = (run &* 7_919 &+ field &* 104_729) % text.count
            var out = [UInt8]()
            out.reserveCapacity(count)
            var i = start
            while out.count < count {
                let n = min(count - out.count, text.count - i)
                out += text[i..<(i + n)]
                i = 0
            }
            return String(decoding: out, as: UTF8.self)
        }
    }

    var stepsPerRun: Int { 4 + heartbeats }
    var commandCount: Int { runs.count * stepsPerRun }

    /// Command `k` (0-based within this load): its run and step.
    func command(_ k: Int) -> (run: Int, step: Int) {
        let c = k / (stepsPerRun * chunk)
        let base = c * chunk
        let n = min(chunk, runs.count - base)
        let j = k - c * stepsPerRun * chunk
        return (runs.lowerBound + base + j % n, j / n)
    }

    /// The body of (run, step): start, require_action, the heartbeats, complete_action, complete.
    func body(run: Int, step: Int) -> [UInt8] {
        if !payload.isNone { return largeBody(run: run, step: step) }
        guard heartbeats > 0, step >= 2 else { return Self.body(run: run, step: step) }
        if step >= 2 + heartbeats { return Self.body(run: run, step: step - heartbeats) }
        let r = Self.runID(run), c = Self.commandID(run: run, step: step)
        let s = #"{"command":"heartbeat_action","run_id":"\#(r)","command_id":"\#(c)","action_id":"a-1","details":{"done":\#(step - 1)}}"#
        return Array(s.utf8)
    }

    /// The four commands with this load's payloads in place of the small values.
    func largeBody(run: Int, step: Int) -> [UInt8] {
        let r = Self.runID(run), c = Self.commandID(run: run, step: step)
        let s: String
        switch step {
        case 0:
            let doc = Payload.string(run: run, field: 0, count: payload.inputBytes)
            s = #"{"command":"start","run_id":"\#(r)","command_id":"\#(c)","agent_id":"bench","input":{"question":"summarise","document":"\#(doc)"}}"#
        case 1:
            s = #"{"command":"require_action","run_id":"\#(r)","command_id":"\#(c)","action":{"id":"a-1","type":"tool_call","tool":"fetch","args":{"url":"https://example.com/\#(r)"}}}"#
        case 2:
            let out = Payload.string(run: run, field: 1, count: payload.actionResultBytes)
            s = #"{"command":"complete_action","run_id":"\#(r)","command_id":"\#(c)","action_id":"a-1","result":{"page":"\#(out)"}}"#
        default:
            let out = Payload.string(run: run, field: 2, count: payload.resultBytes)
            s = #"{"command":"complete","run_id":"\#(r)","command_id":"\#(c)","result":{"summary":"\#(out)"}}"#
        }
        return Array(s.utf8)
    }

    static func runID(_ run: Int) -> String { "r\(run)" }
    /// Unique per command; the worker echoes it in every event's `command_id`.
    static func commandID(run: Int, step: Int) -> String { "r\(run)-\(step)" }

    static func body(run: Int, step: Int) -> [UInt8] {
        let r = runID(run), c = commandID(run: run, step: step)
        let s: String
        switch step {
        case 0:
            s = #"{"command":"start","run_id":"\#(r)","command_id":"\#(c)","agent_id":"bench","input":{"question":"2 + 2"}}"#
        case 1:
            s = #"{"command":"require_action","run_id":"\#(r)","command_id":"\#(c)","action":{"id":"a-1","type":"tool_call","tool":"calculator","args":{"expression":"2 + 2"}}}"#
        case 2:
            s = #"{"command":"complete_action","run_id":"\#(r)","command_id":"\#(c)","action_id":"a-1","result":4}"#
        default:
            s = #"{"command":"complete","run_id":"\#(r)","command_id":"\#(c)","result":"4"}"#
        }
        return Array(s.utf8)
    }

    /// Parses "r<run>-<step>" (a command id of this benchmark) from the bytes at `i`.
    static func parseCommandID(_ b: [UInt8], from i: Int) -> (run: Int, step: Int)? {
        var i = i
        guard i < b.count, b[i] == UInt8(ascii: "r") else { return nil }
        i += 1
        var run = 0, digits = 0
        while i < b.count, b[i] >= 48, b[i] <= 57 { run = run * 10 + Int(b[i] - 48); i += 1; digits += 1 }
        guard digits > 0, i + 1 < b.count, b[i] == UInt8(ascii: "-") else { return nil }
        let step = Int(b[i + 1]) - 48
        return (0...3).contains(step) ? (run, step) : nil
    }

    /// The command id in an event body (`"command_id":"r12-3"`), found without a JSON parse.
    static func commandIDInBody(_ b: [UInt8]) -> (run: Int, step: Int)? {
        let key = Array(#""command_id""#.utf8)
        guard b.count > key.count else { return nil }
        var i = 0
        outer: while i + key.count < b.count {
            for j in 0..<key.count where b[i + j] != key[j] { i += 1; continue outer }
            var k = i + key.count
            while k < b.count, b[k] == 32 || b[k] == UInt8(ascii: ":") { k += 1 }
            guard k < b.count, b[k] == UInt8(ascii: "\"") else { return nil }
            return parseCommandID(b, from: k + 1)
        }
        return nil
    }
}

// MARK: - Producer

/// What the producer measured. Publish times are indexed like the load's commands.
struct ProducerResult: Sendable {
    var firstPublishNs: UInt64 = 0
    var lastPublishNs: UInt64 = 0
    var nacked = 0
    var publishNs: [UInt64] = []
    /// Bytes of command bodies published.
    var bytes = 0
}

/// Publishes the load's commands on its own connection (its own thread), persistent, with
/// publisher confirms kept in a sliding window, as fast as the broker accepts them or at a
/// fixed rate. `message_id` is the command id, routing key the run id.
final class Producer: @unchecked Sendable {
    let url: String
    let exchange: String
    let load: RunLoad
    let rate: Double?
    let window: Int
    private(set) var result = ProducerResult()
    private var thread: Joinable?

    init(url: String, exchange: String, load: RunLoad, rate: Double? = nil, window: Int = 500) {
        self.url = url
        self.exchange = exchange
        self.load = load
        self.rate = rate
        self.window = window
    }

    func start() {
        thread = Joinable(name: "runbench-producer") { [self] in try self.publishAll() }
    }

    @discardableResult
    func join() throws -> ProducerResult {
        try thread?.join()
        return result
    }

    private func publishAll() throws {
        let conn = try BlockingConnection(url: url)
        defer { conn.close() }
        let ch = try conn.openChannel()
        try conn.confirmSelect(channel: ch)
        let n = load.commandCount
        var r = ProducerResult()
        if rate != nil { r.publishNs = [UInt64](repeating: 0, count: n) }
        let intervalNs = rate.map { 1e9 / $0 }
        var nacked = 0
        func count(_ events: [AMQPEvent]) {
            for case .confirm(let c) in events where !c.acked { nacked += 1 }
        }
        let t0 = nowNs()
        for k in 0..<n {
            if let intervalNs {
                let due = t0 + UInt64(Double(k) * intervalNs)
                let now = nowNs()
                if now < due {
                    count(try conn.drainEvents())
                    let later = nowNs()
                    if later < due { sleepNs(due - later) }
                }
            }
            let (run, step) = load.command(k)
            let id = RunLoad.commandID(run: run, step: step)
            let props = AMQPProperties(contentType: "application/json", deliveryMode: 2, messageID: id)
            let t = nowNs()
            if k == 0 { r.firstPublishNs = t }
            let body = load.body(run: run, step: step)
            r.bytes += body.count
            _ = try conn.publish(channel: ch, exchange: exchange, routingKey: RunLoad.runID(run),
                                 body: body, properties: props)
            if rate != nil { r.publishNs[k] = t }
            // Sliding window: never more than 2 windows unconfirmed, drained back to one.
            if conn.unconfirmedCount(channel: ch) >= 2 * window {
                while conn.unconfirmedCount(channel: ch) > window {
                    if let e = try conn.nextEvent(timeout: 5) { count([e]) }
                    count(try conn.drainEvents())
                }
            }
        }
        r.lastPublishNs = nowNs()
        let final = try conn.waitForConfirms(channel: ch, timeout: 60)
        r.nacked = nacked + final.nacked.count
        result = r
    }
}

// MARK: - Subscriber

/// What a subscriber saw.
struct SubscriberResult: Sendable {
    var events = 0
    var rejected = 0
    var otherEvents = 0
    var lastEventNs: UInt64 = 0
    var eventBytes = 0
    /// Runs that did not get exactly 5 events (missing or duplicated).
    var incompleteRuns = 0
    var duplicateEvents = 0
    /// First event receipt per command, indexed like the load's commands (latency mode).
    var firstEventNs: [UInt64] = []
}

/// A third connection: an exclusive queue bound to the events exchange (`run.#`), consumed
/// with auto-ack, counting events per run, until `expectedEvents` arrived or `stop()`.
final class Subscriber: @unchecked Sendable {
    let url: String
    let exchange: String
    let load: RunLoad
    let expectedEvents: Int
    let eventsPerRun: Int
    let trackLatency: Bool
    let received = Atomic<Int>(0)
    private let stopFlag = Atomic<Bool>(false)
    private let ready = DispatchSemaphore(value: 0)
    private(set) var result = SubscriberResult()
    private var thread: Joinable?

    init(url: String, exchange: String, load: RunLoad, eventsPerRun: Int, trackLatency: Bool = false) {
        self.url = url
        self.exchange = exchange
        self.load = load
        self.eventsPerRun = eventsPerRun
        self.expectedEvents = load.runs.count * eventsPerRun
        self.trackLatency = trackLatency
    }

    /// Starts and returns once the queue is bound, so that no event is missed.
    func start() throws {
        thread = Joinable(name: "runbench-subscriber") { [self] in
            defer { self.ready.signal() }
            try self.consume()
        }
        ready.wait()
    }

    func stop() { stopFlag.store(true, ordering: .releasing) }

    /// Waits until every expected event arrived, or no event came for `idleTimeout` seconds.
    func wait(idleTimeout: Double) throws -> SubscriberResult {
        var last = -1
        var lastChange = nowNs()
        while received.load(ordering: .acquiring) < expectedEvents {
            let n = received.load(ordering: .acquiring)
            if n != last { last = n; lastChange = nowNs() }
            if Double(nowNs() - lastChange) / 1e9 > idleTimeout {
                say("subscriber: no event for \(idleTimeout) s, \(n) of \(expectedEvents) received")
                break
            }
            sleepNs(2_000_000)
        }
        stop()
        try thread?.join()
        return result
    }

    private func consume() throws {
        let conn = try subscribeToEvents(url: url, exchange: exchange)
        defer { conn.close() }
        ready.signal()

        var r = SubscriberResult()
        var perRun = [UInt8](repeating: 0, count: load.runs.count)
        if trackLatency { r.firstEventNs = [UInt64](repeating: 0, count: load.commandCount) }
        let prefix = Array("run.r".utf8)
        while !stopFlag.load(ordering: .acquiring) {
            guard let first = try conn.nextEvent(timeout: 0.05) else { continue }
            let t = nowNs()
            for case .delivery(let d) in [first] + (try conn.drainEvents()) {
                if d.properties.type == "command_rejected" {
                    r.rejected += 1
                    continue
                }
                // Routing key run.r<index>.<type>
                guard let run = Self.runIndex(routingKey: d.routingKey, prefix: prefix), load.runs.contains(run) else {
                    r.otherEvents += 1
                    continue
                }
                let i = run - load.runs.lowerBound
                perRun[i] &+= 1
                if perRun[i] > eventsPerRun { r.duplicateEvents += 1 }
                r.events += 1
                r.eventBytes += d.body.count
                r.lastEventNs = t
                // Latency counts the first event of each command, indexed in publish order.
                if trackLatency, let (cr, step) = RunLoad.commandIDInBody(d.body), load.runs.contains(cr),
                   let k = load.index(run: cr, step: step), r.firstEventNs[k] == 0
                {
                    r.firstEventNs[k] = t
                }
            }
            received.store(r.events, ordering: .releasing)
        }
        r.incompleteRuns = perRun.reduce(0) { $0 + ($1 == UInt8(eventsPerRun) ? 0 : 1) }
        result = r
    }

    /// The run index in a routing key `run.r<index>.<type>`.
    static func runIndex(routingKey: String, prefix: [UInt8]) -> Int? {
        let rk = Array(routingKey.utf8)
        guard rk.starts(with: prefix) else { return nil }
        var run = 0, i = prefix.count
        while i < rk.count, rk[i] >= 48, rk[i] <= 57 { run = run * 10 + Int(rk[i] - 48); i += 1 }
        return i > prefix.count && i < rk.count && rk[i] == UInt8(ascii: ".") ? run : nil
    }
}

/// A connection consuming (auto-ack) an exclusive queue bound to every event of `exchange`.
func subscribeToEvents(url: String, exchange: String) throws -> BlockingConnection {
    let conn = try BlockingConnection(url: url)
    do {
        let ch = try conn.openChannel()
        try conn.exchangeDeclare(channel: ch, name: exchange, type: .topic, durable: true)
        let q = try conn.queueDeclare(channel: ch, name: "", exclusive: true, autoDelete: true).name
        try conn.queueBind(channel: ch, queue: q, exchange: exchange, routingKey: "run.#")
        _ = try conn.consume(channel: ch, queue: q, noAck: true)
        return conn
    } catch {
        conn.close()
        throw error
    }
}
