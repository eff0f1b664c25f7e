import RunTestSupport
import Testing

@testable import RunWebhooks

/// The retry schedule for any settings (RunWorkerTests checks the default one): growth,
/// bounds, jitter, and out-of-range inputs.
@Suite struct BackoffTests {
    /// For random settings, the base delay doubles from `initial_backoff_s` until it reaches
    /// `max_backoff_s` and stays there, never below 1 ms; the jittered delay is never longer
    /// than the base (the delay queue's TTL) and at most 20% shorter.
    @Test(arguments: [1, 2, 3, 0x5EED] as [UInt64])
    func growthAndBounds(seed: UInt64) {
        var random = SplitMix(seed: seed)
        for _ in 0..<200 {
            let initial = Double.random(in: 0.001...60, using: &random)
            let maximum = initial * Double.random(in: 1...10_000, using: &random)
            let b = WebhookBackoff(initialS: initial, maxS: maximum)
            let cap = max(1, Int((maximum * 1000).rounded()))
            var previous = 0
            for attempt in 1...40 {
                let base = b.baseMilliseconds(afterAttempt: attempt)
                let expected = max(1, Int((min(maximum, initial * Double(1 << UInt64(attempt - 1))) * 1000).rounded()))
                #expect(base == expected, "initial \(initial) max \(maximum) attempt \(attempt)")
                #expect(base >= previous && base <= cap)
                previous = base
                let r = Double.random(in: 0..<1, using: &random)
                let delay = b.delayMilliseconds(afterAttempt: attempt, random: r)
                #expect(delay >= 1 && delay <= base)
                #expect(Double(delay) >= Double(base) * (1 - WebhookBackoff.jitter) - 0.5)
            }
            #expect(b.baseMilliseconds(afterAttempt: 40) == cap)
        }
    }

    /// An attempt number below 1 counts as the first; a huge one stays at the cap.
    @Test func attemptNumbersOutOfRange() {
        let b = WebhookBackoff(initialS: 2, maxS: 30)
        #expect(b.baseMilliseconds(afterAttempt: 0) == 2_000)
        #expect(b.baseMilliseconds(afterAttempt: -7) == 2_000)
        #expect(b.baseMilliseconds(afterAttempt: Int.max) == 30_000)
        #expect(b.delayMilliseconds(afterAttempt: 0, random: 0) == 2_000)
    }

    /// The random input is clamped to 0...1: below gives the base, above gives the base less 20%.
    @Test func randomIsClamped() {
        let b = WebhookBackoff(initialS: 10, maxS: 10)
        #expect(b.delayMilliseconds(afterAttempt: 1, random: -3) == 10_000)
        #expect(b.delayMilliseconds(afterAttempt: 1, random: 0) == 10_000)
        #expect(b.delayMilliseconds(afterAttempt: 1, random: 1) == 8_000)
        #expect(b.delayMilliseconds(afterAttempt: 1, random: 7) == 8_000)
        #expect(b.delayMilliseconds(afterAttempt: 1, random: 0.25) == 9_500)
    }

    /// Milliseconds are rounded to the nearest, and a delay is never shorter than 1 ms.
    @Test func roundingAndFloor() {
        #expect(WebhookBackoff(initialS: 0.0015, maxS: 1).baseMilliseconds(afterAttempt: 1) == 2)
        #expect(WebhookBackoff(initialS: 0.0014, maxS: 1).baseMilliseconds(afterAttempt: 1) == 1)
        #expect(WebhookBackoff(initialS: 0.0001, maxS: 1).baseMilliseconds(afterAttempt: 1) == 1)
        #expect(WebhookBackoff(initialS: 0.0001, maxS: 1).delayMilliseconds(afterAttempt: 1, random: 1) == 1)
        #expect(WebhookBackoff(initialS: 0.001, maxS: 0.001).delayMilliseconds(afterAttempt: 5, random: 1) == 1)
    }
}
