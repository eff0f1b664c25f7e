import PropertyBased
import RunContract
import Testing

@testable import RunStateMachine

/// Random steps: which operation, a number to pick its details with, and how far time moves first (ms).
let steps = zip(Gen.int(in: 0...12), Gen.int(in: 0...1_000), Gen.int(in: 0...12_000)).array(of: 1...60)

/// A random but valid-looking config; `pick` decides which limits are set.
func randomConfig(_ pick: Int) -> RunConfig? {
    if pick % 5 == 0 { return nil }
    let retry: RetryPolicy? =
        pick % 3 == 0 ? nil : RetryPolicy(maxAttempts: 1 + pick % 3, delayS: 0.5, retryTimeouts: pick % 2 == 0)
    return RunConfig(
        timeoutS: pick % 4 == 0 ? nil : Double(5 + pick % 20), startTimeoutS: pick % 7 == 0 ? 10 : nil,
        actionTimeoutS: pick % 2 == 0 ? 3 : nil, retry: retry)
}

/// A command built from `pick`, with ids and versions that are sometimes right and sometimes not.
func randomCommand(_ op: Int, _ pick: Int, for run: Run?) -> Command.Kind? {
    let known = run?.actions.map(\.id) ?? []
    let actionID = (pick % 4 == 0 || known.isEmpty) ? "ghost-\(pick % 3)" : known[pick % known.count]
    switch op {
    case 0: return .create(RunSpec(config: randomConfig(pick)))
    case 1: return .start(RunSpec(config: randomConfig(pick)))
    case 2:
        let given: String? = pick % 3 == 0 ? nil : (pick % 3 == 1 ? "a-\(pick % 7)" : actionID)
        let count = 1 + pick % 3
        return .requireAction(
            (0..<count).map { i in toolCall(i == 0 ? given : nil, timeoutS: pick % 5 == 1 ? 2 : nil) })
    case 3: return .completeAction(actionID: actionID, result: .int(Int64(pick)))
    case 4: return .failAction(actionID: actionID, error: ErrorInfo(message: "e\(pick)"))
    case 5: return .complete(result: nil, usage: nil)
    case 6: return .fail(error: ErrorInfo(message: "f"), retryable: true)
    case 7: return .fail(error: ErrorInfo(message: "f"), retryable: false)
    case 8: return .cancel(reason: nil)
    default: return nil  // a timer step
    }
}

/// Checks what must hold of every stored run, whatever happened before.
func checkRunInvariants(_ run: Run, events: [RunEvent], machine: RunStateMachine) {
    #expect(run.version == Int64(events.count))
    #expect(run.version == events.last?.seq)
    #expect(events.map(\.seq) == Array(1...Int64(events.count)), "seq must be gapless from 1")
    #expect(run.status == events.last?.status)
    // The contract's definition of waiting, in both directions and for every status.
    #expect((run.status == .waiting) == !run.pendingActions.isEmpty, "\(run.status) with \(run.pendingActions.count) pending")
    #expect((run.status == .retrying) == (run.nextAttemptAt != nil))
    #expect(run.status.isTerminal == (run.stopReason != nil))
    #expect(run.status.isTerminal == (run.completedAt != nil))
    #expect(run.attempt >= 1 && run.attempt <= max(1, run.config.retry?.maxAttempts ?? 1))
    #expect(Set(run.actions.map(\.id)).count == run.actions.count, "action ids unique")
    // Timers: nothing fires before the next deadline, something fires at it.
    if let deadline = RunStateMachine.nextDeadline(of: run), deadline.milliseconds < Int64.max {
        #expect(machine.advance(run, to: deadline.plus(ms: -1)) == nil)
        #expect(machine.advance(run, to: deadline) != nil)
    } else {
        #expect(machine.advance(run, to: Timestamp(milliseconds: Int64.max)) == nil)
    }
}

/// Checks one accepted transition against the run it started from.
func checkTransition(_ t: Transition, from before: Run?) {
    #expect(!t.events.isEmpty, "an accepted transition records what happened")
    #expect(t.events.first?.seq == (before?.version ?? 0) + 1)
    #expect(t.events.first?.previousStatus == before?.status)
    for (a, b) in zip(t.events, t.events.dropFirst()) {
        #expect(b.previousStatus == a.status, "previous_status chains within one transition")
    }
    #expect(t.run.version == t.events.last?.seq)
}

/// Random command sequences with random time steps and timer firings keep every invariant:
/// gapless seq, version = last seq, waiting ⇔ pending actions, terminal runs absorb everything,
/// and the machine is a function (the same input gives the same output).
@Test func randomSequencesKeepInvariants() async {
    await propertyCheck(count: 300, input: steps) { steps in
        let machine = RunStateMachine(defaults: RunConfig(actionTimeoutS: 20))
        var run: Run?
        var events: [RunEvent] = []
        var now = t0
        for (index, (op, pick, dtMS)) in steps.enumerated() {
            now = now.plus(ms: Int64(dtMS))
            if let kind = randomCommand(op, pick, for: run) {
                let version = run?.version ?? 0
                let expected: Int64? =
                    switch op % 3 { case 0: nil; case 1: version; default: version + 1 }
                let c = command(kind, id: "c-\(index)", expected: pick % 4 == 0 ? expected : nil)
                let result = machine.apply(c, to: run, at: now)
                #expect(machine.apply(c, to: run, at: now) == result, "deterministic")
                switch result {
                case .success(let t):
                    #expect(!(run?.status.isTerminal ?? false), "a terminal run accepted \(kind.name)")
                    checkTransition(t, from: run)
                    #expect(t.events.allSatisfy { $0.commandID == "c-\(index)" && $0.occurredAt == now })
                    run = t.run
                    events += t.events
                case .failure(let error):
                    if let run, run.status.isTerminal {
                        #expect([.invalidTransition, .runExists, .versionConflict].contains(error.code))
                    }
                    #expect(!error.message.isEmpty)
                }
            } else if let current = run {
                // Timer steps: 9 fires one due timer, the others fire everything due.
                var state = current
                while let t = machine.advance(state, to: now) {
                    #expect(!state.status.isTerminal, "a terminal run fired a timer")
                    checkTransition(t, from: state)
                    #expect(t.events.allSatisfy { $0.commandID == nil && $0.occurredAt == now })
                    state = t.run
                    events += t.events
                    if op == 9 { break }
                }
                run = state
            }
            if let run { checkRunInvariants(run, events: events, machine: machine) }
        }
    }
}

/// Once terminal, a run refuses every command and no timer fires, however much time passes.
@Test func terminalRunsAbsorbEverything() async {
    await propertyCheck(count: 200, input: Gen.int(in: 0...2), Gen.int(in: 0...8), Gen.int(in: 0...1_000)) {
        ending, op, pick in
        var h = Harness()
        try h.send(.start(RunSpec(config: randomConfig(pick))))
        try h.send(.requireAction([toolCall("a-1")]))
        switch ending {
        case 0: try h.send(.cancel(reason: nil))
        case 1: try h.send(.fail(error: ErrorInfo(message: "x"), retryable: false))
        default:
            try h.send(.completeAction(actionID: "a-1", result: nil))
            try h.send(.complete(result: nil, usage: nil))
        }
        let run = try #require(h.run)
        #expect(run.status.isTerminal)
        let kind = try #require(randomCommand(op, pick, for: run))
        let refusal = h.machine.apply(command(kind), to: run, at: t0.plus(s: Double(pick))).refusal
        let expectedCode: RunError.Code = op == 0 ? .runExists : .invalidTransition
        #expect(refusal?.code == expectedCode)
        #expect(h.machine.advance(run, to: t0.plus(s: Double(pick) * 1000)) == nil)
        #expect(RunStateMachine.nextDeadline(of: run) == nil)
    }
}
