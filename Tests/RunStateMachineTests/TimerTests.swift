import RunContract
import Testing

@testable import RunStateMachine

/// The start timeout fires exactly at created_at + start_timeout_s, not 1 ms before, and is
/// never retried even when timeouts are.
@Test func startTimeoutFiresAtDeadline() throws {
    var h = Harness()
    let retry = RetryPolicy(maxAttempts: 3, retryTimeouts: true)
    try h.send(.create(RunSpec(config: config(startTimeoutS: 30, retry: retry))))
    let deadline = t0.plus(s: 30)
    #expect(RunStateMachine.nextDeadline(of: h.run!) == deadline)
    #expect(h.machine.advance(h.run!, to: deadline.plus(ms: -1)) == nil)
    let t = try #require(h.machine.advance(h.run!, to: deadline))
    #expect(t.events.map(\.type) == [.timedOut])
    let e = t.events[0]
    #expect(e.status == .failed && e.previousStatus == .created && e.stopReason == .timeout && e.commandID == nil)
    #expect(e.error?.code == "start_timeout" && e.seq == 2)
    #expect(t.run.stopReason == .timeout && t.run.completedAt == deadline)
    #expect(h.machine.advance(t.run, to: deadline.plus(s: 100)) == nil)
}

/// A started run no longer has a start timeout.
@Test func startTimeoutIrrelevantOnceStarted() throws {
    var h = Harness()
    try h.send(.create(RunSpec(config: config(startTimeoutS: 30))))
    h.now = t0.plus(s: 10)
    try h.send(.start(RunSpec()))
    #expect(RunStateMachine.nextDeadline(of: h.run!) == nil)
    #expect(h.machine.advance(h.run!, to: t0.plus(s: 31)) == nil)
}

/// The attempt timeout fires at attempt_started_at + timeout_s, cancels pending actions and
/// fails the run with stop_reason `timeout`.
@Test func attemptTimeoutFiresAtDeadline() throws {
    var h = Harness()
    try h.send(.create(RunSpec(config: config(timeoutS: 5))))
    h.now = t0.plus(s: 2)
    try h.send(.start(RunSpec()))
    try h.send(.requireAction([toolCall("a-1")]))
    let deadline = t0.plus(s: 7)
    #expect(RunStateMachine.nextDeadline(of: h.run!) == deadline)
    #expect(h.machine.advance(h.run!, to: deadline.plus(ms: -1)) == nil)
    let t = try #require(h.machine.advance(h.run!, to: deadline))
    #expect(t.events.map(\.type) == [.timedOut])
    #expect(t.events[0].stopReason == .timeout && t.events[0].stoppedActionIDs == ["a-1"])
    #expect(t.events[0].previousStatus == .waiting && t.events[0].error?.code == "timeout")
    #expect(t.run.status == .failed && t.run.actions[0].status == .cancelled)
}

/// An action timeout marks that action timed out (`action_failed`, status unchanged), cancels
/// the others and fails the run with stop_reason `action_timeout`.
@Test func actionTimeoutFiresAtDeadline() throws {
    var h = Harness()
    try h.send(.start(RunSpec(config: config(actionTimeoutS: 60))))
    h.now = t0.plus(s: 1)
    try h.send(.requireAction([toolCall("slow"), toolCall("fast", timeoutS: 3)]))
    let deadline = t0.plus(s: 4)
    #expect(RunStateMachine.nextDeadline(of: h.run!) == deadline)
    #expect(h.machine.advance(h.run!, to: deadline.plus(ms: -1)) == nil)
    let t = try #require(h.machine.advance(h.run!, to: deadline))
    #expect(t.events.map(\.type) == [.actionFailed, .timedOut])
    #expect(t.events.map(\.status) == [.waiting, .failed])
    #expect(t.events[0].action?.id == "fast" && t.events[0].action?.status == .timedOut)
    #expect(t.events[0].action?.error?.code == "action_timeout")
    #expect(t.events[1].stopReason == .actionTimeout && t.events[1].stoppedActionIDs == ["slow"])
    #expect(t.run.actions.map(\.status) == [.cancelled, .timedOut])
    #expect(t.run.stopReason == .actionTimeout)
}

/// Deadlines that are no longer relevant do nothing: a completed action's, or any of a finished run.
@Test func settledDeadlinesAreNoOps() throws {
    var h = Harness()
    try h.send(.start(RunSpec(config: config(timeoutS: 100, actionTimeoutS: 5))))
    try h.send(.requireAction([toolCall("a-1")]))
    try h.send(.completeAction(actionID: "a-1", result: nil))
    #expect(RunStateMachine.nextDeadline(of: h.run!) == t0.plus(s: 100))
    #expect(h.machine.advance(h.run!, to: t0.plus(s: 50)) == nil)
    try h.send(.complete(result: nil, usage: nil))
    #expect(RunStateMachine.nextDeadline(of: h.run!) == nil)
    #expect(h.machine.advance(h.run!, to: t0.plus(s: 1000)) == nil)
}

/// With `retry_timeouts` and attempts left a timeout emits `timed_out` then `retry_scheduled`,
/// and the next attempt starts after the delay; the last attempt's timeout ends with `max_attempts`.
@Test(arguments: [false, true])
func retriedTimeouts(byAction: Bool) throws {
    var h = Harness()
    let policy = RetryPolicy(maxAttempts: 2, delayS: 1, retryTimeouts: true)
    try h.send(.start(RunSpec(config: config(timeoutS: 10, actionTimeoutS: byAction ? 2 : nil, retry: policy))))
    try h.send(.requireAction([toolCall()]))
    let firstDeadline = t0.plus(s: byAction ? 2 : 10)
    let t = try #require(h.machine.advance(h.run!, to: firstDeadline))
    let expectedTypes: [EventType] =
        byAction ? [.actionFailed, .timedOut, .retryScheduled] : [.timedOut, .retryScheduled]
    #expect(t.events.map(\.type) == expectedTypes)
    let timedOut = try #require(t.events.first { $0.type == .timedOut })
    #expect(timedOut.status == .retrying && timedOut.stopReason == (byAction ? .actionTimeout : .timeout))
    #expect(t.run.status == .retrying && t.run.stopReason == nil)
    #expect(t.events.last?.nextAttemptAt == t.run.nextAttemptAt)
    h.advance(to: firstDeadline)  // records the transition above
    let restart = try #require(h.run?.nextAttemptAt)
    h.advance(to: restart)
    #expect(h.run?.status == .running && h.run?.attempt == 2)
    try h.send(.requireAction([toolCall()]))
    let secondDeadline = restart.plus(s: byAction ? 2 : 10)
    #expect(RunStateMachine.nextDeadline(of: h.run!) == secondDeadline)
    let last = h.advance(to: secondDeadline)
    #expect(last.last?.type == .timedOut && last.last?.stopReason == .maxAttempts)
    #expect(h.run?.status == .failed && h.run?.stopReason == .maxAttempts)
}

/// Without `retry_timeouts` a timeout fails the run even if attempts remain.
@Test func timeoutsAreNotRetriedByDefault() throws {
    var h = Harness()
    try h.send(.start(RunSpec(config: config(timeoutS: 1, retry: RetryPolicy(maxAttempts: 5)))))
    let fired = h.advance(to: t0.plus(s: 1))
    #expect(fired.map(\.type) == [.timedOut])
    #expect(h.run?.status == .failed && h.run?.stopReason == .timeout)
}

/// When both an action timeout and the attempt timeout are overdue, the one that fell due first wins;
/// at the same instant the action timeout wins.
@Test func earliestOverdueTimerFiresFirst() throws {
    var h = Harness()
    try h.send(.start(RunSpec(config: config(timeoutS: 5))))
    try h.send(.requireAction([toolCall("late", timeoutS: 8), toolCall("same", timeoutS: 5)]))
    let afterBoth = try #require(h.machine.advance(h.run!, to: t0.plus(s: 60)))
    #expect(afterBoth.events.map(\.type) == [.actionFailed, .timedOut])
    #expect(afterBoth.events[0].action?.id == "same")

    var g = Harness()
    try g.send(.start(RunSpec(config: config(timeoutS: 5))))
    try g.send(.requireAction([toolCall("late", timeoutS: 8)]))
    let attemptFirst = try #require(g.machine.advance(g.run!, to: t0.plus(s: 60)))
    #expect(attemptFirst.events.map(\.type) == [.timedOut])
    #expect(attemptFirst.events[0].stopReason == .timeout)
}

/// nextDeadline is the minimum of the deadlines that matter in the current status.
@Test func nextDeadlineValues() throws {
    var h = Harness(defaults: config(timeoutS: 100, startTimeoutS: 20, actionTimeoutS: 50))
    try h.send(.create(RunSpec()))
    #expect(RunStateMachine.nextDeadline(of: h.run!) == t0.plus(s: 20))
    h.now = t0.plus(s: 10)
    try h.send(.start(RunSpec()))
    #expect(RunStateMachine.nextDeadline(of: h.run!) == t0.plus(s: 110))
    h.now = t0.plus(s: 20)
    try h.send(.requireAction([toolCall("a"), toolCall("b", timeoutS: 30)]))
    #expect(RunStateMachine.nextDeadline(of: h.run!) == t0.plus(s: 50))
    try h.send(.completeAction(actionID: "b", result: nil))
    #expect(RunStateMachine.nextDeadline(of: h.run!) == t0.plus(s: 70))
    try h.send(.completeAction(actionID: "a", result: nil))
    #expect(RunStateMachine.nextDeadline(of: h.run!) == t0.plus(s: 110))
    try h.send(.cancel(reason: nil))
    #expect(RunStateMachine.nextDeadline(of: h.run!) == nil)
}
