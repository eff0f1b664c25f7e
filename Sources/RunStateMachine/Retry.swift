import RunContract

extension RunStateMachine {
    /// The delay, in seconds, before the attempt after attempt `n` (1-based) starts:
    /// `delay_s * backoff^(n-1)`, capped at `max_delay_s`, then shortened by up to 20% of jitter.
    /// The jitter comes from a hash of `"<run_id>:<n>"`, not from a random generator, so a
    /// replayed command schedules the same retry and tests can reproduce it.
    static func retryDelay(afterAttempt n: Int, runID: String, policy: RetryPolicy?) -> Double {
        let base = policy?.delayS ?? 1.0
        let backoff = policy?.backoff ?? 2.0
        var delay = base * power(backoff, max(0, n - 1))
        if let cap = policy?.maxDelayS { delay = min(delay, cap) }
        // Far beyond any useful schedule; keeps the arithmetic finite.
        let ceiling = 100.0 * 365 * 24 * 3600
        if !(delay <= ceiling) { delay = ceiling }
        return delay * (1 - 0.2 * jitterUnit(runID: runID, attempt: n))
    }

    /// A number in [0, 1) derived from FNV-1a (64-bit) of `"<run_id>:<attempt>"`.
    static func jitterUnit(runID: String, attempt: Int) -> Double {
        let hash = FNV1a.hash("\(runID):\(attempt)".utf8)
        // The top 53 bits fill a Double's mantissa exactly: the result is below 1.
        return Double(hash >> 11) * 0x1p-53
    }

    /// `base^exponent` by squaring, without Foundation.
    static func power(_ base: Double, _ exponent: Int) -> Double {
        var result = 1.0
        var b = base
        var e = exponent
        while e > 0 {
            if e & 1 == 1 { result *= b }
            b *= b
            e >>= 1
        }
        return result
    }
}
