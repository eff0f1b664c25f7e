import RunContract
import Testing

@testable import RunStateMachine

/// `expected_version` equal to the run's version lets the command through.
@Test func expectedVersionMatchApplies() throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    let t = try h.send(.requireAction([toolCall()]), expected: 2)
    #expect(t.events.map(\.seq) == [3])
}

/// A stale `expected_version` is a `version_conflict` naming both versions, and changes nothing.
@Test func expectedVersionMismatchIsConflict() throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    try h.send(.requireAction([toolCall(), toolCall()]))
    let error = h.refuse(.cancel(reason: nil), expected: 3)
    #expect(error == RunError(.versionConflict, "expected_version 3 but run \"r1\" is at version 4"))
}

/// For an unknown run the version is 0: `create` with `expected_version: 0` works, any other is refused.
@Test func expectedVersionOfUnknownRunIsZero() throws {
    var h = Harness()
    #expect(h.refuse(.create(RunSpec()), expected: 1)?.code == .versionConflict)
    try h.send(.create(RunSpec()), expected: 0)
}

/// Run existence is checked before `expected_version`, and `expected_version` before the state.
@Test func checksRunInContractOrder() throws {
    var h = Harness()
    #expect(h.refuse(.complete(result: nil, usage: nil), expected: 7)?.code == .runNotFound)
    try h.send(.create(RunSpec()))
    #expect(h.refuse(.create(RunSpec()), expected: 7)?.code == .runExists)
    #expect(h.refuse(.complete(result: nil, usage: nil), expected: 7)?.code == .versionConflict)
    try h.send(.cancel(reason: nil))
    #expect(h.refuse(.cancel(reason: nil), expected: 1)?.code == .versionConflict)
    #expect(h.refuse(.cancel(reason: nil), expected: 2)?.code == .invalidTransition)
}

/// Refusals say what is wrong and what to do, with the run id and the offending ids.
@Test func refusalMessagesAreActionable() throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    try h.send(.requireAction([toolCall("a-1"), toolCall("a-2")]))
    #expect(
        h.refuse(.complete(result: nil, usage: nil))
            == RunError(.invalidTransition, "cannot complete run \"r1\": 2 actions are still pending (a-1, a-2)"))
    try h.send(.cancel(reason: nil))
    #expect(
        h.refuse(.start(RunSpec()))
            == RunError(
                .invalidTransition, "run \"r1\" is cancelled: no command applies to a terminal run (start refused)"))
}

/// An unknown `action_id` is `action_not_found`; a known one that is no longer pending is `invalid_transition`.
@Test func unknownVersusFinishedAction() throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    try h.send(.requireAction([toolCall("a-1"), toolCall("a-2")]))
    try h.send(.completeAction(actionID: "a-1", result: nil))
    let unknown = h.refuse(.completeAction(actionID: "nope", result: nil))
    #expect(unknown == RunError(.actionNotFound, "run \"r1\" has no action \"nope\" (pending: a-2)"))
    #expect(h.refuse(.failAction(actionID: "nope", error: ErrorInfo(message: "x")))?.code == .actionNotFound)
    #expect(h.refuse(.completeAction(actionID: "a-1", result: nil))?.code == .invalidTransition)
    #expect(h.refuse(.failAction(actionID: "a-1", error: ErrorInfo(message: "x")))?.code == .invalidTransition)
}

/// An action id the run already used, in any status, or repeated within one request, is a `validation_error`.
@Test func duplicateActionIDIsValidationError() throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    try h.send(.requireAction([toolCall("a-1"), toolCall("a-2")]))
    try h.send(.completeAction(actionID: "a-1", result: nil))
    #expect(h.refuse(.requireAction([toolCall("a-1")]))?.code == .validationError)
    #expect(h.refuse(.requireAction([toolCall("a-2")]))?.code == .validationError)
    #expect(h.refuse(.requireAction([toolCall("x"), toolCall("x")]))?.code == .validationError)
    // The refused requests added nothing.
    #expect(h.run?.actions.map(\.id) == ["a-1", "a-2"])
}

/// Generated ids are deterministic, distinct from each other and from ids producers chose,
/// including ids given later in the same request.
@Test func generatedActionIDsAreUnique() throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    // seq 3 and 4 would be "a-3" and "a-4"; the producer already claims both.
    let t = try h.send(.requireAction([toolCall(), toolCall("a-3"), toolCall("a-4"), toolCall()]))
    let ids = t.events.compactMap { $0.action?.id }
    #expect(ids == ["a-3-2", "a-3", "a-4", "a-6"])
    try h.send(.requireAction([toolCall(), toolCall()]))
    let all = h.run!.actions.map(\.id)
    #expect(Set(all).count == all.count)
    #expect(all.count == 6)
}

/// Several pending actions: one `action_required` each in request order; the run stays waiting
/// until the last is settled, failed actions included, and `fail_action` does not fail the run.
@Test func severalPendingActions() throws {
    var h = Harness()
    try h.send(.start(RunSpec(config: config(actionTimeoutS: 30))))
    h.now = t0.plus(ms: 500)
    let t = try h.send(.requireAction([toolCall("a"), toolCall("b", timeoutS: 5), toolCall("c")]))
    #expect(t.events.map(\.type) == [.actionRequired, .actionRequired, .actionRequired])
    #expect(t.events.map(\.previousStatus) == [.running, .waiting, .waiting])
    #expect(t.events.compactMap(\.action?.deadline) == [t0.plus(ms: 30_500), t0.plus(ms: 5_500), t0.plus(ms: 30_500)])

    let b = try h.send(.failAction(actionID: "b", error: ErrorInfo(message: "no", code: "E1")))
    #expect(b.run.status == .waiting)
    #expect(b.events.first?.action?.status == .failed)
    #expect(b.events.first?.action?.error == ErrorInfo(message: "no", code: "E1"))
    try h.send(.completeAction(actionID: "a", result: .int(1)))
    #expect(h.run?.status == .waiting)
    #expect(h.run?.pendingActions.map(\.id) == ["c"])
    let c = try h.send(.completeAction(actionID: "c", result: .int(3)))
    #expect(c.run.status == .running)
    #expect(c.events.first?.previousStatus == .waiting)
    #expect(h.run?.actions.map(\.status) == [.completed, .failed, .completed])
    #expect(h.run?.actions.first?.result == .int(1))
}

/// `start` on an unknown id creates and starts it in one go; the effective config (the run's
/// values over the worker's defaults) is stored and shown in the events.
@Test func startOnUnknownRunCreatesWithEffectiveConfig() throws {
    var h = Harness(defaults: config(timeoutS: 60, actionTimeoutS: 10, retry: RetryPolicy(maxAttempts: 2, delayS: 5)))
    let spec = RunSpec(agentID: "agent-7", input: .string("hi"), config: config(timeoutS: 5, retry: RetryPolicy(maxAttempts: 4)))
    let t = try h.send(.start(spec))
    let expected = config(timeoutS: 5, actionTimeoutS: 10, retry: RetryPolicy(maxAttempts: 4, delayS: 5))
    #expect(t.run.config == expected)
    #expect(t.events.map(\.type) == [.created, .started])
    #expect(t.events.map(\.seq) == [1, 2])
    #expect(t.events.map(\.previousStatus) == [nil, .created])
    #expect(t.events.first?.spec?.config == expected)
    #expect(t.events.first?.spec?.agentID == "agent-7")
    #expect(t.run.agentID == "agent-7" && t.run.input == .string("hi"))
    #expect(t.run.startedAt == t0 && t.run.attemptStartedAt == t0 && t.run.attempt == 1)
}

/// `start` on an existing created run ignores the spec it carries.
@Test func startOnExistingRunIgnoresSpec() throws {
    var h = Harness()
    try h.send(.create(RunSpec(agentID: "first", config: config(timeoutS: 5))))
    let t = try h.send(.start(RunSpec(agentID: "second", config: config(timeoutS: 99))))
    #expect(t.run.agentID == "first")
    #expect(t.run.config.timeoutS == 5)
    #expect(t.events.map(\.type) == [.started])
}

/// `complete` stores result and usage and ends the run with stop_reason `completed`.
@Test func completeStoresResult() throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    h.now = t0.plus(ms: 1234)
    let t = try h.send(.complete(result: .string("42"), usage: .object(["tokens": .int(9)])))
    #expect(t.run.stopReason == .completed && t.run.completedAt == t0.plus(ms: 1234))
    #expect(t.run.result == .string("42") && t.run.usage == .object(["tokens": .int(9)]))
    let e = try #require(t.events.first)
    #expect(e.stopReason == .completed && e.result == .string("42") && e.usage == .object(["tokens": .int(9)]))
}

/// `fail` and `cancel` cancel the pending actions (ids listed in the event) and stop the run.
@Test(arguments: [true, false])
func stoppingCancelsPendingActions(byCancel: Bool) throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    try h.send(.requireAction([toolCall("a-1"), toolCall("a-2"), toolCall("a-3")]))
    try h.send(.completeAction(actionID: "a-2", result: nil))
    let t =
        byCancel
        ? try h.send(.cancel(reason: "enough"))
        : try h.send(.fail(error: ErrorInfo(message: "bad"), retryable: false))
    let e = try #require(t.events.last)
    #expect(e.stoppedActionIDs == ["a-1", "a-3"])
    #expect(t.run.actions.map(\.status) == [.cancelled, .completed, .cancelled])
    #expect(t.run.pendingActions.isEmpty)
    if byCancel {
        #expect(e.type == .cancelled && e.reason == "enough" && e.stopReason == .cancelled)
    } else {
        #expect(e.type == .failed && e.stopReason == .error && e.error == ErrorInfo(message: "bad"))
        #expect(t.run.error == ErrorInfo(message: "bad"))
    }
}

/// A command for another run id than the stored run's is refused instead of corrupting it.
@Test func commandForAnotherRunIsRefused() throws {
    var h = Harness()
    try h.send(.create(RunSpec()))
    let result = h.machine.apply(command(.cancel(reason: nil), run: "r2"), to: h.run, at: t0)
    #expect(result.refusal?.code == .validationError)
}
