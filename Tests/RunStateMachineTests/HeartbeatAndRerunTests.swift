import RunContract
import Testing

@testable import RunStateMachine

func heartbeatingCall(_ id: String, heartbeatS: Double, timeoutS: Double? = nil) -> ActionRequest {
    var request = toolCall(id, timeoutS: timeoutS)
    request.heartbeatTimeoutS = heartbeatS
    return request
}

/// A heartbeat moves the action's heartbeat deadline, records count, time and details, and
/// emits nothing: the version stays.
@Test func heartbeatExtendsDeadlineWithoutEvent() throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    try h.send(.requireAction([heartbeatingCall("a-1", heartbeatS: 10)]))
    #expect(RunStateMachine.nextDeadline(of: h.run!) == t0.plus(s: 10))
    let version = h.run!.version

    h.now = t0.plus(s: 9)
    let t = try h.send(.heartbeatAction(actionID: "a-1", details: .object(["step": .int(3)])))
    #expect(t.events.isEmpty && t.run.version == version && t.run.status == .waiting)
    let action = t.run.actions[0]
    #expect(action.heartbeatCount == 1 && action.lastHeartbeatAt == t0.plus(s: 9))
    #expect(action.heartbeatDetails == .object(["step": .int(3)]))
    #expect(action.heartbeatDeadline == t0.plus(s: 19))
    #expect(RunStateMachine.nextDeadline(of: t.run) == t0.plus(s: 19))
    #expect(h.machine.advance(t.run, to: t0.plus(s: 18.999)) == nil)

    // A heartbeat without details (or with null) keeps the last ones.
    h.now = t0.plus(s: 15)
    try h.send(.heartbeatAction(actionID: "a-1", details: .null))
    let again = try h.send(.heartbeatAction(actionID: "a-1", details: nil))
    #expect(again.run.actions[0].heartbeatCount == 3 && again.run.actions[0].heartbeatDetails == .object(["step": .int(3)]))
    #expect(RunStateMachine.nextDeadline(of: again.run) == t0.plus(s: 25))
}

/// No heartbeat in time: the action fails with `heartbeat_timeout` and the run times out with
/// stop_reason `action_timeout`, like an action timeout.
@Test func missedHeartbeatTimesOutTheAction() throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    try h.send(.requireAction([heartbeatingCall("a-1", heartbeatS: 5), toolCall("a-2")]))
    h.now = t0.plus(s: 3)
    try h.send(.heartbeatAction(actionID: "a-1", details: nil))
    let fired = h.advance(to: t0.plus(s: 8))
    #expect(fired.map(\.type) == [.actionFailed, .timedOut])
    #expect(fired[0].action?.id == "a-1" && fired[0].action?.status == .timedOut)
    #expect(fired[0].error?.code == "heartbeat_timeout")
    #expect(fired[1].stopReason == .actionTimeout && fired[1].error?.code == "heartbeat_timeout")
    #expect(fired[1].stoppedActionIDs == ["a-2"] && fired[1].status == .failed)
    #expect(h.run!.actions[0].heartbeatCount == 1)
}

/// A missed heartbeat is retried when timeouts are retryable, like any action timeout.
@Test func missedHeartbeatRetriesWhenTimeoutsDo() throws {
    var h = Harness()
    try h.send(.start(RunSpec(config: config(retry: RetryPolicy(maxAttempts: 2, delayS: 1, retryTimeouts: true)))))
    try h.send(.requireAction([heartbeatingCall("a-1", heartbeatS: 5)]))
    let fired = h.advance(to: t0.plus(s: 5))
    #expect(fired.map(\.type) == [.actionFailed, .timedOut, .retryScheduled])
    #expect(h.run!.status == .retrying)
}

/// Heartbeats for unknown, finished or other runs' actions are refused with the table's codes.
@Test func heartbeatRefusals() throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    #expect(h.refuse(.heartbeatAction(actionID: "a-1", details: nil))?.code == .invalidTransition)
    try h.send(.requireAction([toolCall("a-1"), toolCall("a-2")]))
    #expect(h.refuse(.heartbeatAction(actionID: "nope", details: nil))?.code == .actionNotFound)
    try h.send(.completeAction(actionID: "a-1", result: nil))
    #expect(h.refuse(.heartbeatAction(actionID: "a-1", details: nil))?.code == .invalidTransition)
    // An action without heartbeat_timeout_s still records heartbeats, and has no heartbeat deadline.
    let t = try h.send(.heartbeatAction(actionID: "a-2", details: .string("half way")))
    #expect(t.run.actions[1].heartbeatCount == 1 && t.run.actions[1].heartbeatDeadline == nil)
    #expect(RunStateMachine.nextDeadline(of: t.run) == nil)
}

func finishedRun(_ id: String, status: RunStatus = .failed) throws -> Run {
    let machine = RunStateMachine(defaults: RunConfig(timeoutS: 600))
    let spec = RunSpec(
        agentID: "agent-7", input: .object(["q": .string("2+2")]), metadata: ["team": .string("a")],
        config: config(actionTimeoutS: 30, retry: RetryPolicy(maxAttempts: 2, delayS: 1)))
    var run = try machine.apply(command(.start(spec), run: id), to: nil, at: t0).get().run
    let last: Command.Kind =
        switch status {
        case .completed: .complete(result: .int(4), usage: nil)
        case .cancelled: .cancel(reason: nil)
        default: .fail(error: ErrorInfo(message: "broken"), retryable: false)
        }
    if status != .running { run = try machine.apply(command(last, run: id), to: run, at: t0.plus(s: 1)).get().run }
    return run
}

/// A rerun creates and starts a new run that inherits the previous run's agent, input,
/// metadata and config; what it gives overrides them (config field by field).
@Test func rerunInheritsAndOverrides() throws {
    let previous = try finishedRun("r0")
    let machine = RunStateMachine(defaults: RunConfig(timeoutS: 999))
    let plain = try machine.apply(command(.rerun(RunSpec(previousRunID: "r0")), run: "r1"), to: nil, previous: previous, at: t0.plus(s: 5)).get()
    #expect(plain.events.map(\.type) == [.created, .started])
    #expect(plain.run.status == .running && plain.run.version == 2 && plain.run.attempt == 1)
    #expect(plain.run.previousRunID == "r0" && plain.run.agentID == "agent-7")
    #expect(plain.run.input == previous.input && plain.run.metadata == previous.metadata)
    #expect(plain.run.config == previous.config)
    #expect(plain.events[0].spec?.previousRunID == "r0")

    let given = RunSpec(
        input: .string("new input"), config: RunConfig(actionTimeoutS: 5), previousRunID: "r0",
        resumeFrom: .object(["step": .int(2)]))
    let t = try machine.apply(command(.rerun(given), run: "r2"), to: nil, previous: previous, at: t0.plus(s: 5)).get()
    #expect(t.run.input == .string("new input") && t.run.agentID == "agent-7")
    #expect(t.run.config.actionTimeoutS == 5 && t.run.config.timeoutS == 600 && t.run.config.retry == previous.config.retry)
    #expect(t.run.resumeFrom == .object(["step": .int(2)]))
}

/// A rerun needs a finished previous run and a new run id.
@Test func rerunRefusals() throws {
    let machine = RunStateMachine()
    let rerun = command(.rerun(RunSpec(previousRunID: "r0")), run: "r1")
    #expect(machine.apply(rerun, to: nil, previous: nil, at: t0).refusal?.code == .runNotFound)
    let running = try finishedRun("r0", status: .running)
    #expect(machine.apply(rerun, to: nil, previous: running, at: t0).refusal?.code == .invalidTransition)
    for status in [RunStatus.completed, .failed, .cancelled] {
        let done = try finishedRun("r0", status: status)
        #expect(try machine.apply(rerun, to: nil, previous: done, at: t0).get().run.status == .running)
        // The new id must be new.
        #expect(machine.apply(rerun, to: try finishedRun("r1", status: status), previous: done, at: t0).refusal?.code == .runExists)
    }
    let conflict = command(.rerun(RunSpec(previousRunID: "r0")), run: "r1", expected: 3)
    #expect(machine.apply(conflict, to: nil, previous: try finishedRun("r0"), at: t0).refusal?.code == .versionConflict)
    // expected_version is checked before the previous run's state, as the contract orders them.
    #expect(machine.apply(conflict, to: nil, previous: nil, at: t0).refusal?.code == .versionConflict)
    #expect(machine.apply(conflict, to: nil, previous: running, at: t0).refusal?.code == .versionConflict)
}
