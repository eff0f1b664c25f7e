import RunContract
import RunStateMachine

/// A seeded generator (SplitMix64): the same seed gives the same load and fault schedule.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    public mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }
}

/// One message as published: body, routing key and `message_id` (nil: none).
public struct PlannedMessage: Sendable {
    public var routingKey: String
    public var messageID: String?
    public var body: [UInt8]
}

/// What the driver does next for a run: publish a message, or wait until the run's events have
/// reached a `seq` (a timer must fire, or a retry start, before the next command means the same
/// thing whenever it arrives).
public enum Step: Sendable {
    case send(PlannedMessage)
    case await(seq: Int64)
}

/// The parts of an event that the model predicts exactly (no clocks, no generated payloads).
/// Two events are the same when their digests are.
public func digest(_ e: RunEvent) -> String {
    var s = "\(e.seq) \(e.type.rawValue) \(e.previousStatus?.rawValue ?? "-")>\(e.status.rawValue) attempt=\(e.attempt)"
    if let c = e.commandID { s += " cmd=\(c)" }
    if let a = e.action {
        s += " action=\(a.id):\(a.status.rawValue)"
        // Heartbeats add no event; the count on the action's later events shows each was
        // applied exactly once.
        if a.heartbeatCount > 0 { s += " heartbeats=\(a.heartbeatCount)" }
    }
    if let r = e.stopReason { s += " stop=\(r.rawValue)" }
    if let code = e.error?.code { s += " error=\(code)" }
    if let ids = e.stoppedActionIDs, !ids.isEmpty { s += " stopped=\(ids.joined(separator: ","))" }
    return s
}

/// A run's load and what the model says must come of it.
public struct PlannedRun: Sendable {
    public var runID: String
    public var shape: String
    public var steps: [Step] = []
    /// The model's events, in `seq` order.
    public var events: [String] = []
    /// Attributable refusals: command id → the contract's error code (a repeat of a refused
    /// command is answered with the same code).
    public var refusals: [String: String] = [:]
    /// Messages sent for this run that cannot be attributed (dead-lettered), by reason.
    public var deadLetters: [String: Int] = [:]
    /// The same, by message id: a dead letter may come twice (a worker that dies between
    /// publishing it and acking the message), so the checker compares ids, not counts.
    public var deadLetterIDs: [String: String] = [:]
    public var finalStatus: RunStatus?
    public var commands = 0
}

/// Builds one run's lifecycle by driving the pure state machine (the model) while choosing
/// commands: every command's expected outcome is what the model answered when it was chosen.
struct RunPlanner {
    let machine = RunStateMachine(defaults: RunConfig())
    var rng: SeededRandom
    var plan: PlannedRun
    private var run: Run?
    private var now = Timestamp(milliseconds: 1_800_000_000_000)
    private var nextCommand = 0
    /// Sent commands with an id: what to resend as a duplicate.
    private var sent: [PlannedMessage] = []
    /// Outcome by command id, for repeats (nil: applied).
    private var outcomes: [String: String?] = [:]
    private var actionCounter = 0
    let noise: Double

    init(runID: String, rng: SeededRandom, noise: Double) {
        self.rng = rng
        self.noise = noise
        plan = PlannedRun(runID: runID, shape: "")
    }

    var status: RunStatus? { run?.status }
    var pendingActionIDs: [String] { run?.pendingActions.map(\.id) ?? [] }

    // MARK: sending through the model

    /// Publishes `fields` as command `name` and records the model's outcome. Returns whether
    /// the model applied it.
    @discardableResult
    mutating func send(_ name: String, _ fields: JSONObject = [:], id: String? = nil) -> Bool {
        nextCommand += 1
        let commandID = id ?? "\(plan.runID)-c\(nextCommand)"
        var body: [(key: String, value: JSONValue)] = [("command", .string(name)), ("run_id", .string(plan.runID))]
        body += fields.entries
        let message = PlannedMessage(
            routingKey: plan.runID, messageID: commandID, body: JSONValue.object(JSONObject(body)).serialized())
        return publish(message)
    }

    /// Publishes a prepared message; the model decides as the worker must.
    @discardableResult
    mutating func publish(_ message: PlannedMessage) -> Bool {
        plan.steps.append(.send(message))
        plan.commands += 1
        now = now.adding(seconds: 0.001)
        let envelope: CommandEnvelope
        do {
            envelope = try CommandEnvelope.parse(body: message.body, routingKey: message.routingKey, messageID: message.messageID)
        } catch {
            plan.deadLetters[error.code.rawValue, default: 0] += 1
            if let id = message.messageID { plan.deadLetterIDs[id] = error.code.rawValue }
            return false
        }
        if let id = envelope.commandID, let earlier = outcomes[id] {
            // A repeat: answered with the first outcome, applied never again.
            return earlier == nil
        }
        let refusal: String?
        do {
            let command = try envelope.decodeCommand()
            switch machine.apply(command, to: run, at: now) {
            case .success(let t):
                run = t.run
                plan.events += t.events.map(digest)
                refusal = nil
            case .failure(let e):
                refusal = e.code.rawValue
            }
        } catch {
            refusal = error.code.rawValue
        }
        if let id = envelope.commandID {
            outcomes[id] = .some(refusal)
            if let refusal { plan.refusals[id] = refusal }
            sent.append(message)
        }
        return refusal == nil
    }

    /// Lets every timer of the run fire (the model jumps to each deadline), then waits for the
    /// worker's events to reach the same `seq`. Returns at once when nothing is scheduled.
    mutating func letTimersFire() {
        guard let r = run, RunStateMachine.nextDeadline(of: r) != nil else { return }
        while let r = run, let deadline = RunStateMachine.nextDeadline(of: r) {
            now = deadline > now ? deadline : now
            guard let t = machine.advance(r, to: now) else { break }
            run = t.run
            plan.events += t.events.map(digest)
        }
        plan.steps.append(.await(seq: run?.version ?? 0))
    }

    // MARK: noise: commands the model refuses, repeats, malformed messages

    /// With probability `noise`, sends something that must change nothing: a repeat of an
    /// earlier command, a command that is too early or too late, a stale `expected_version`,
    /// an unknown command, bad fields, or an unattributable message.
    mutating func maybeNoise() {
        guard rng.chance(noise) else { return }
        switch Int.random(in: 0..<9, using: &rng) {
        case 0, 1:
            if let m = sent.randomElement(using: &rng) { publish(m) }  // duplicate command id
        case 2:
            refused("complete_action", ["action_id": .string("nope-\(nextCommand)")])
        case 3:
            refused("start", [:])
        case 4:
            refused("complete", ["result": "early"])
        case 5:
            refused("cancel", ["expected_version": .int((run?.version ?? 0) + 7)])
        case 6:
            send("frobnicate", ["x": 1])  // unknown_command (attributable)
        case 7:
            send("fail", ["error": "not an object"])  // validation_error
        default:
            nextCommand += 1
            let bad: [UInt8] =
                rng.chance(0.5)
                ? Array("{\"command\":\"start\",\"run_id\":\"\(plan.runID)\",".utf8)  // not JSON
                : JSONValue.object(["command": "start", "run_id": .string("other-\(plan.runID)")]).serialized()  // run_id ≠ key
            publish(PlannedMessage(routingKey: plan.runID, messageID: "\(plan.runID)-c\(nextCommand)", body: bad))
        }
    }

    /// Sends a command only when the model refuses it (noise must not change the lifecycle).
    private mutating func refused(_ name: String, _ fields: JSONObject) {
        var fieldsWithRun: [(key: String, value: JSONValue)] = [("command", .string(name)), ("run_id", .string(plan.runID))]
        fieldsWithRun += fields.entries
        let body = JSONValue.object(JSONObject(fieldsWithRun)).serialized()
        if let envelope = try? CommandEnvelope.parse(body: body, routingKey: plan.runID, messageID: nil),
           let command = try? envelope.decodeCommand(), case .success = machine.apply(command, to: run, at: now)
        {
            return
        }
        send(name, fields)
    }

    // MARK: building blocks

    mutating func actionRequest(timeout: Double? = nil) -> JSONObject {
        actionCounter += 1
        var a: [(key: String, value: JSONValue)]
        switch Int.random(in: 0..<3, using: &rng) {
        case 0: a = [("type", "tool_call"), ("tool", "search"), ("args", ["q": .string("n\(actionCounter)")])]
        case 1: a = [("type", "send_message"), ("recipient", "user"), ("content", "hello")]
        default: a = [("type", "system_action"), ("action", "sleep")]
        }
        if rng.chance(0.5) { a.append(("id", .string("act\(actionCounter)"))) }
        if let timeout { a.append(("timeout_s", .double(timeout))) }
        return JSONObject(a)
    }

    /// Requires 1–3 actions (one command or several) and finishes each (completed or failed).
    mutating func actionsRoundTrip() {
        let n = Int.random(in: 1...3, using: &rng)
        if rng.chance(0.5) {
            send("require_action", ["actions": .array((0..<n).map { _ in .object(actionRequest()) })])
        } else {
            for _ in 0..<n {
                send("require_action", ["action": .object(actionRequest())])
                maybeNoise()
            }
        }
        for id in pendingActionIDs.shuffled(using: &rng) {
            if rng.chance(0.8) {
                send("complete_action", ["action_id": .string(id), "result": ["ok": true]])
            } else {
                send("fail_action", ["action_id": .string(id), "error": ["message": "tool broke", "code": "E_TOOL"]])
            }
            maybeNoise()
        }
    }

    mutating func finish() {
        plan.finalStatus = run?.status
        // Too late: a command on a finished run is refused.
        if let s = run?.status, s.isTerminal, rng.chance(noise * 2) { send("complete", ["result": "late"]) }
        plan.finalStatus = run?.status
    }
}

/// The lifecycles of the load, each driven through the model.
public enum Shapes {
    static let all: [(name: String, weight: Int, build: @Sendable (inout RunPlanner) -> Void)] = [
        ("happy", 30, happy),
        ("action_failures", 10, actionFailures),
        ("retry_then_complete", 10, retryThenComplete),
        ("retries_exhausted", 5, retriesExhausted),
        ("cancel", 15, cancelAnywhere),
        ("start_timeout", 4, startTimeout),
        ("attempt_timeout", 4, attemptTimeout),
        ("action_timeout", 5, actionTimeout),
        ("action_timeout_retried", 4, actionTimeoutRetried),
        ("fail", 8, failed),
        ("created_only_then_start", 5, createThenStart),
        ("heartbeats", 6, heartbeats),
        ("heartbeat_timeout", 3, heartbeatTimeout),
    ]

    static func pick(_ rng: inout SeededRandom) -> (String, @Sendable (inout RunPlanner) -> Void) {
        let total = all.reduce(0) { $0 + $1.weight }
        var x = Int.random(in: 0..<total, using: &rng)
        for s in all {
            if x < s.weight { return (s.name, s.build) }
            x -= s.weight
        }
        return (all[0].name, all[0].build)
    }

    static func begin(_ p: inout RunPlanner, config: JSONObject? = nil, createFirst: Bool = false) {
        if p.rng.chance(p.noise) { p.maybeNoise() }  // maybe a command before the run exists
        var input: JSONObject = ["task": .string(p.plan.runID)]
        // One run in twenty carries an agent-sized input (64-512 KiB, its own bytes): the
        // workers' memory budget must hold with them mixed into the load (the soak's RSS check).
        if p.rng.chance(0.05) { input = JSONObject(input.entries + [("transcript", .string(Self.transcript(&p.rng)))]) }
        var fields: JSONObject = ["agent_id": "agent-chaos", "input": .object(input)]
        if let config { fields = JSONObject(fields.entries + [("config", .object(config))]) }
        if createFirst {
            p.send("create", fields)
            p.maybeNoise()
            p.send("start")
        } else {
            p.send("start", fields)
        }
        p.maybeNoise()
    }

    /// 64-512 KiB of text: a seeded 64-character line repeated, each run's different.
    static func transcript(_ rng: inout SeededRandom) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789 ")
        let line = String((0..<63).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] }) + "\n"
        return String(repeating: line, count: Int.random(in: 1_024...8_192, using: &rng))
    }

    static func happy(_ p: inout RunPlanner) {
        begin(&p, createFirst: p.rng.chance(0.3))
        for _ in 0..<Int.random(in: 0...3, using: &p.rng) { p.actionsRoundTrip() }
        p.send("complete", ["result": ["answer": 42], "usage": ["tokens": 10]])
        p.finish()
    }

    static func actionFailures(_ p: inout RunPlanner) {
        begin(&p)
        p.send("require_action", ["action": .object(p.actionRequest())])
        for id in p.pendingActionIDs { p.send("fail_action", ["action_id": .string(id), "error": ["message": "no"]]) }
        p.maybeNoise()
        p.actionsRoundTrip()
        if p.rng.chance(0.5) {
            p.send("complete", ["result": "done"])
        } else {
            p.send("fail", ["error": ["message": "gave up", "code": "E_AGENT"]])
        }
        p.finish()
    }

    static let quickRetry: JSONObject = ["retry": ["max_attempts": 3, "delay_s": 0.3, "backoff": 1.5]]

    static func retryThenComplete(_ p: inout RunPlanner) {
        begin(&p, config: quickRetry)
        for _ in 0..<Int.random(in: 1...2, using: &p.rng) {
            if p.rng.chance(0.5) { p.actionsRoundTrip() }
            p.send("fail", ["error": ["message": "flaky", "code": "E_FLAKY"], "retryable": true])
            p.letTimersFire()  // retry_scheduled, then started at attempt + 1
            p.maybeNoise()
        }
        p.actionsRoundTrip()
        p.send("complete", ["result": "third time lucky"])
        p.finish()
    }

    static func retriesExhausted(_ p: inout RunPlanner) {
        begin(&p, config: ["retry": ["max_attempts": 2, "delay_s": 0.2]])
        p.send("fail", ["error": ["message": "flaky"], "retryable": true])
        p.letTimersFire()
        p.maybeNoise()
        p.send("fail", ["error": ["message": "still flaky"], "retryable": true])  // no attempt left
        p.finish()
    }

    static func cancelAnywhere(_ p: inout RunPlanner) {
        switch Int.random(in: 0..<4, using: &p.rng) {
        case 0:  // created
            p.send("create", ["agent_id": "agent-chaos"])
            p.maybeNoise()
        case 1:  // running
            begin(&p)
        case 2:  // waiting
            begin(&p)
            p.send("require_action", ["actions": [.object(p.actionRequest()), .object(p.actionRequest())]])
            p.maybeNoise()
        default:  // retrying: a delay long enough that the cancel always comes first
            begin(&p, config: ["retry": ["max_attempts": 2, "delay_s": 3600, "max_delay_s": 7200]])
            p.send("fail", ["error": ["message": "flaky"], "retryable": true])
            p.maybeNoise()
        }
        p.send("cancel", ["reason": "user pressed stop"])
        p.finish()
    }

    static func startTimeout(_ p: inout RunPlanner) {
        p.send("create", ["agent_id": "agent-chaos", "config": ["start_timeout_s": .double(Double.random(in: 0.5...2, using: &p.rng))]])
        p.letTimersFire()
        p.maybeNoise()
        p.send("start")  // too late
        p.finish()
    }

    static func attemptTimeout(_ p: inout RunPlanner) {
        let retried = p.rng.chance(0.5)
        var config: [(key: String, value: JSONValue)] = [("timeout_s", .double(Double.random(in: 0.5...2, using: &p.rng)))]
        if retried { config.append(("retry", ["max_attempts": 2, "delay_s": 0.2, "retry_timeouts": true])) }
        begin(&p, config: JSONObject(config))
        p.letTimersFire()  // timed out (and retried, and timed out again)
        p.finish()
    }

    static func actionTimeout(_ p: inout RunPlanner) {
        begin(&p)
        p.send("require_action", ["action": .object(p.actionRequest(timeout: Double.random(in: 0.5...2, using: &p.rng)))])
        p.letTimersFire()
        p.maybeNoise()
        p.finish()
    }

    static func actionTimeoutRetried(_ p: inout RunPlanner) {
        begin(&p, config: ["retry": ["max_attempts": 2, "delay_s": 0.3, "retry_timeouts": true]])
        p.send("require_action", ["action": .object(p.actionRequest(timeout: 0.5))])
        p.letTimersFire()  // action_failed, timed_out, retry_scheduled, started (attempt 2)
        p.maybeNoise()
        p.actionsRoundTrip()
        p.send("complete", ["result": "second attempt"])
        p.finish()
    }

    static func failed(_ p: inout RunPlanner) {
        begin(&p)
        if p.rng.chance(0.5) { p.actionsRoundTrip() }
        p.send("fail", ["error": ["message": "the agent crashed", "code": "E_CRASH"], "retryable": .bool(p.rng.chance(0.5))])
        p.finish()
    }

    /// An action heartbeated 1–5 times (repeats among the noise must not count twice), then
    /// completed; a heartbeat for an unknown action and one after completion are refused. The
    /// heartbeat timeout is long enough never to fire during a soak.
    static func heartbeats(_ p: inout RunPlanner) {
        begin(&p)
        var request = p.actionRequest()
        request["heartbeat_timeout_s"] = 600
        p.send("require_action", ["action": .object(request)])
        guard let id = p.pendingActionIDs.first else { return p.finish() }
        for n in 0..<Int.random(in: 1...5, using: &p.rng) {
            p.send("heartbeat_action", ["action_id": .string(id), "details": ["done": .int(Int64(n))]])
            p.maybeNoise()
        }
        if p.rng.chance(0.3) { p.send("heartbeat_action", ["action_id": "no-such-action"]) }
        p.send("complete_action", ["action_id": .string(id), "result": "crawled"])
        p.send("heartbeat_action", ["action_id": .string(id)])
        p.send("complete", ["result": "done"])
        p.finish()
    }

    /// An action that never heartbeats times out by its heartbeat timeout; a late heartbeat
    /// is refused. (No heartbeat is sent before the timeout: under faults it could arrive after
    /// the deadline, and the model cannot know.)
    static func heartbeatTimeout(_ p: inout RunPlanner) {
        begin(&p)
        var request = p.actionRequest(timeout: 60)
        request["heartbeat_timeout_s"] = .double(Double.random(in: 0.5...1.5, using: &p.rng))
        p.send("require_action", ["action": .object(request)])
        let id = p.pendingActionIDs.first
        p.letTimersFire()  // action_failed (heartbeat_timeout), timed_out
        if let id { p.send("heartbeat_action", ["action_id": .string(id)]) }
        p.finish()
    }

    static func createThenStart(_ p: inout RunPlanner) {
        begin(&p, createFirst: true)
        p.actionsRoundTrip()
        p.send("complete")
        p.finish()
    }
}

/// The whole load: `count` runs, each from its own generator derived from the seed.
public func planLoad(seed: UInt64, count: Int, prefix: String, noise: Double) -> [PlannedRun] {
    (0..<count).map { i in
        var rng = SeededRandom(seed: seed &+ UInt64(i) &* 0x2545_F491_4F6C_DD1D)
        let (shape, build) = Shapes.pick(&rng)
        var p = RunPlanner(runID: "\(prefix)-r\(i)", rng: rng, noise: noise)
        p.plan.shape = shape
        build(&p)
        return p.plan
    }
}

/// Runs sent while a fault holds (the disk-full fault sends them while the store cannot
/// write, so that the workers have something to fail on): plain lifecycles without timers or
/// noise (nothing in them waits), checked like the rest of the load. Each starts with an input
/// of `inputBytes`, so that storing them needs new pages (a store with room left in its write-ahead
/// log would otherwise absorb small writes on a full disk). 768 KiB: the store keeps a large
/// input once now (it was three copies of 256 KiB), and 20 probes of 256 KiB (5 MiB) could fit
/// in the 4 MiB a busy soak's log had left: a fresh-clone run saw the log at 4035 KiB before and
/// after the window and no worker meet the full disk. 20 x 768 KiB is what 256 KiB wrote before.
public func planProbes(seed: UInt64, count: Int, prefix: String, inputBytes: Int = 768 * 1024) -> [PlannedRun] {
    (0..<count).map { i in
        let rng = SeededRandom(seed: seed ^ (UInt64(i + 1) &* 0x9E37_79B9))
        var p = RunPlanner(runID: "\(prefix)-probe\(i)", rng: rng, noise: 0)
        p.plan.shape = "probe"
        p.send("start", ["agent_id": "agent-chaos", "input": ["blob": .string(String(repeating: "x", count: inputBytes))]])
        p.actionsRoundTrip()
        p.send("complete", ["result": "probe done"])
        p.finish()
        return p.plan
    }
}

/// A flood of hostile messages, each on a run id of its own (so that it cannot change a
/// valid run): garbage bytes, JSON that is not an object, nesting past the limit, duplicate
/// keys, bad or mismatched run ids, bodies over the size limit, unknown commands, bad fields,
/// commands for runs that do not exist. Every one must be answered (`command_rejected`) or
/// dead-lettered with its reason; the model (the contract's codec and state machine) says which.
public func planFlood(seed: UInt64, count: Int, prefix: String, maxBodyBytes: Int = 1_048_576) -> [PlannedRun] {
    var rng = SeededRandom(seed: seed ^ 0xF100D)
    return (0..<count).map { i in
        let runID = "\(prefix)-h\(i)"
        var p = RunPlanner(runID: runID, rng: SeededRandom(seed: rng.next()), noise: 0)
        p.plan.shape = "hostile"
        let id = "\(runID)-x"
        func raw(_ body: [UInt8]) { p.publish(PlannedMessage(routingKey: runID, messageID: id, body: body)) }
        switch Int.random(in: 0..<100, using: &rng) {
        case 0..<12:
            raw((0..<Int.random(in: 1...300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
        case 12..<18:
            raw(Array(["[1,2,3]", "\"start\"", "42", "null", "", "{", "{\"command\":\"start\",\"run_id\":"].randomElement(using: &rng)!.utf8))
        case 18..<22:
            let depth = Int.random(in: 129...5_000, using: &rng)
            raw(Array((String(repeating: "[", count: depth) + String(repeating: "]", count: depth)).utf8))
        case 22..<28:
            raw(Array("{\"command\":\"start\",\"run_id\":\"\(runID)\",\"command\":\"cancel\"}".utf8))
        case 28..<34:
            raw(JSONValue.object(["command": "start", "run_id": .string(["a b", "", "é", String(repeating: "x", count: 129)].randomElement(using: &rng)!)]).serialized())
        case 34..<40:
            raw(JSONValue.object(["command": "start", "run_id": .string("\(runID)-other")]).serialized())
        case 40:
            raw(JSONValue.object(["command": "start", "run_id": .string(runID), "input": .string(String(repeating: "z", count: maxBodyBytes + 1))]).serialized())
        case 41..<55:
            p.send(["launch", "delete", "", "START", "start "].randomElement(using: &rng)!, ["x": 1], id: id)
        case 55..<75:
            let bad: [(String, JSONObject)] = [
                ("start", ["config": ["timeout_s": -1]]),
                ("start", ["config": ["retry": ["max_attempts": 0]]]),
                ("create", ["metadata": "not an object"]),
                ("require_action", [:]),
                ("require_action", ["action": ["type": "teleport"]]),
                ("fail_action", ["action_id": 7]),
                ("fail", ["error": ["code": "no message"]]),
                ("complete", ["expected_version": "three"]),
            ]
            let (name, fields) = bad.randomElement(using: &rng)!
            p.send(name, fields, id: id)
        default:
            let name = ["complete_action", "fail_action", "complete", "fail", "cancel", "require_action"].randomElement(using: &rng)!
            let fields: JSONObject =
                switch name {
                case "complete_action": ["action_id": "a1"]
                case "fail_action": ["action_id": "a1", "error": ["message": "m"]]
                case "fail": ["error": ["message": "m"]]
                case "require_action": ["action": ["type": "tool_call", "tool": "t", "args": [:]]]
                default: [:]
                }
            p.send(name, fields, id: id)  // run_not_found
        }
        p.finish()
        return p.plan
    }
}
