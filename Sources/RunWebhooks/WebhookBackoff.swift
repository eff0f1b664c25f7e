/// When a failed delivery is tried again: `initial_backoff_s` after the first failure,
/// doubling after each one, capped at `max_backoff_s`, then shortened by up to 20% at random
/// (jitter, so that the retries of events that failed together spread out).
///
/// A retry waits in the delay queue of its base delay (`<prefix>.webhooks.delay.<ms>`):
/// messages there expire in arrival order, so one can be held back behind the message ahead
/// of it by at most the jitter (20% of the base), never by a longer delay.
public struct WebhookBackoff: Sendable, Hashable {
    public var initialS: Double
    public var maxS: Double
    public static let jitter = 0.2

    public init(initialS: Double, maxS: Double) {
        self.initialS = initialS
        self.maxS = maxS
    }

    /// The base delay after `failedAttempt` (1 = the first POST) failed, in milliseconds.
    public func baseMilliseconds(afterAttempt failedAttempt: Int) -> Int {
        let exponent = Double(max(0, min(failedAttempt - 1, 62)))
        let seconds = min(maxS, initialS * pow2(exponent))
        return max(1, Int((seconds * 1000).rounded()))
    }

    /// The delay to wait, in milliseconds: the base shortened by `random` (0..<1) times the
    /// jitter.
    public func delayMilliseconds(afterAttempt failedAttempt: Int, random: Double) -> Int {
        let base = Double(baseMilliseconds(afterAttempt: failedAttempt))
        return max(1, Int((base * (1 - Self.jitter * min(max(random, 0), 1))).rounded()))
    }

    private func pow2(_ e: Double) -> Double {
        var r = 1.0
        for _ in 0..<Int(e) { r *= 2 }
        return r
    }
}
