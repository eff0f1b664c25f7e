import RunContract
import Testing

@testable import RunStateMachine

/// A retryable failure schedules a retry; when the delay elapses attempt 2 starts and can complete.
@Test func retryToSuccessOnSecondAttempt() throws {
    var h = Harness()
    let policy = RetryPolicy(maxAttempts: 3, delayS: 2, backoff: 2)
    try h.send(.start(RunSpec(config: config(retry: policy))))
    try h.send(.requireAction([toolCall("a-1")]))
    h.now = t0.plus(ms: 1000)
    let failed = try h.send(.fail(error: ErrorInfo(message: "flaky", code: "E"), retryable: true))
    let scheduled = try #require(failed.events.first)
    #expect(failed.events.map(\.type) == [.retryScheduled])
    #expect(scheduled.status == .retrying && scheduled.attempt == 1)
    #expect(scheduled.stoppedActionIDs == ["a-1"] && scheduled.error == ErrorInfo(message: "flaky", code: "E"))
    let next = try #require(scheduled.nextAttemptAt)
    #expect(next == h.now.adding(seconds: RunStateMachine.retryDelay(afterAttempt: 1, runID: "r1", policy: policy)))
    #expect(failed.run.nextAttemptAt == next && failed.run.stopReason == nil)
    #expect(RunStateMachine.nextDeadline(of: failed.run) == next)

    #expect(h.advance(to: next.plus(ms: -1)).isEmpty)
    let started = h.advance(to: next)
    #expect(started.map(\.type) == [.started])
    #expect(started.first?.attempt == 2 && started.first?.commandID == nil)
    #expect(h.run?.status == .running && h.run?.attempt == 2)
    #expect(h.run?.attemptStartedAt == next && h.run?.startedAt == t0)
    #expect(h.run?.error == nil && h.run?.nextAttemptAt == nil)

    let done = try h.send(.complete(result: .bool(true), usage: nil))
    #expect(done.run.status == .completed && done.events.first?.attempt == 2)
    #expect(h.events.map(\.seq) == Array(1...Int64(h.events.count)))
}

/// When no attempt is left a retryable failure ends the run with stop_reason `max_attempts`.
@Test func retriesExhaustToMaxAttempts() throws {
    var h = Harness()
    try h.send(.start(RunSpec(config: config(retry: RetryPolicy(maxAttempts: 2, delayS: 1)))))
    try h.send(.fail(error: ErrorInfo(message: "1"), retryable: true))
    h.advance(to: t0.plus(s: 10))
    #expect(h.run?.attempt == 2)
    let last = try h.send(.fail(error: ErrorInfo(message: "2"), retryable: true))
    #expect(last.events.map(\.type) == [.failed])
    #expect(last.run.status == .failed && last.run.stopReason == .maxAttempts)
    #expect(last.events.first?.stopReason == .maxAttempts)
    #expect(RunStateMachine.nextDeadline(of: last.run) == nil)
}

/// Without a retry policy `max_attempts` is 1: a retryable failure fails at once, with `max_attempts`.
@Test func noPolicyMeansNoRetry() throws {
    var h = Harness()
    try h.send(.start(RunSpec()))
    let t = try h.send(.fail(error: ErrorInfo(message: "x"), retryable: true))
    #expect(t.run.status == .failed && t.run.stopReason == .maxAttempts)
}

/// A retrying run can be cancelled; the scheduled retry then never fires.
@Test func cancelDuringRetrying() throws {
    var h = Harness()
    try h.send(.start(RunSpec(config: config(retry: RetryPolicy(maxAttempts: 3, delayS: 1)))))
    try h.send(.fail(error: ErrorInfo(message: "x"), retryable: true))
    let t = try h.send(.cancel(reason: "stop"))
    #expect(t.events.map(\.type) == [.cancelled] && t.events.first?.previousStatus == .retrying)
    #expect(t.run.nextAttemptAt == nil && t.run.stopReason == .cancelled)
    #expect(h.advance(to: t0.plus(s: 3600)).isEmpty)
}

struct DelayCase: Sendable, CustomTestStringConvertible {
    var attempt: Int
    var policy: RetryPolicy
    /// Before jitter.
    var base: Double
    var testDescription: String { "attempt \(attempt), \(policy) → \(base)s" }
}

/// Backoff multiplies the delay after each attempt, the cap bounds it, defaults are 1s and ×2;
/// jitter only shortens, by at most 20%.
@Test(arguments: [
    DelayCase(attempt: 1, policy: RetryPolicy(delayS: 2, backoff: 3), base: 2),
    DelayCase(attempt: 2, policy: RetryPolicy(delayS: 2, backoff: 3), base: 6),
    DelayCase(attempt: 4, policy: RetryPolicy(delayS: 2, backoff: 3), base: 54),
    DelayCase(attempt: 4, policy: RetryPolicy(delayS: 2, backoff: 3, maxDelayS: 10), base: 10),
    DelayCase(attempt: 3, policy: RetryPolicy(delayS: 0.5), base: 2),
    DelayCase(attempt: 3, policy: RetryPolicy(maxAttempts: 5), base: 4),
    DelayCase(attempt: 1, policy: RetryPolicy(delayS: 7, backoff: 1), base: 7),
    DelayCase(attempt: 10_000, policy: RetryPolicy(delayS: 1, maxDelayS: 60), base: 60),
])
func backoffCapAndJitterBounds(_ c: DelayCase) {
    for runID in ["r1", "r2", "run-42", "x"] {
        let delay = RunStateMachine.retryDelay(afterAttempt: c.attempt, runID: runID, policy: c.policy)
        #expect(delay <= c.base && delay > c.base * 0.8, "\(runID): \(delay)")
        let u = RunStateMachine.jitterUnit(runID: runID, attempt: c.attempt)
        #expect(abs(delay - c.base * (1 - 0.2 * u)) < 1e-9)
    }
}

/// Jitter is reproducible for the same run and attempt, differs between runs, and spreads over
/// [0, 1) rather than sticking to a constant.
@Test func jitterIsDeterministicAndSpread() {
    #expect(RunStateMachine.jitterUnit(runID: "r1", attempt: 1) == RunStateMachine.jitterUnit(runID: "r1", attempt: 1))
    let values = (0..<1000).map { RunStateMachine.jitterUnit(runID: "run-\($0)", attempt: 1) }
    #expect(values.allSatisfy { $0 >= 0 && $0 < 1 })
    #expect(Set(values).count > 990)
    #expect(values.contains { $0 < 0.1 } && values.contains { $0 > 0.9 })
    // FNV-1a 64 of "r1:1", top 53 bits over 2^53.
    let hash = FNV1a.hash("r1:1".utf8)
    #expect(RunStateMachine.jitterUnit(runID: "r1", attempt: 1) == Double(hash >> 11) / 9_007_199_254_740_992)
}

/// An unbounded backoff does not overflow the timestamp arithmetic.
@Test func hugeDelaysStayFinite() throws {
    var h = Harness()
    try h.send(.start(RunSpec(config: config(retry: RetryPolicy(maxAttempts: 3, delayS: 1e300, backoff: 1e300)))))
    let t = try h.send(.fail(error: ErrorInfo(message: "x"), retryable: true))
    let next = try #require(t.run.nextAttemptAt)
    #expect(next > t0)
}
