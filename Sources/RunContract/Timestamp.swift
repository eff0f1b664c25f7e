/// A point in time with millisecond precision, as the contract writes it (`occurred_at`:
/// RFC 3339 in UTC with milliseconds). The state machine takes it as an input and never
/// reads a clock.
public struct Timestamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    public var milliseconds: Int64

    public init(milliseconds: Int64) { self.milliseconds = milliseconds }
    /// Seconds since the epoch, rounded to the millisecond; saturates like `adding(seconds:)`
    /// (NaN is the epoch).
    public init(seconds: Double) { self = Timestamp(milliseconds: 0).adding(seconds: seconds) }

    public static func < (a: Timestamp, b: Timestamp) -> Bool { a.milliseconds < b.milliseconds }

    /// This time plus a duration in seconds (fractions allowed, negative goes back), rounded to
    /// the millisecond. Saturates at the ends of the millisecond range instead of trapping:
    /// huge durations and ±infinity give the largest or smallest timestamp. NaN adds nothing
    /// (the time comes back unchanged): a deadline computed from a broken duration then fires
    /// at once instead of the worker trapping, and tests can see it.
    public func adding(seconds: Double) -> Timestamp {
        guard !seconds.isNaN else { return self }
        let ms = (seconds * 1000).rounded()
        // -2^63 is exactly Int64.min; 2^63 is one past Int64.max.
        guard ms >= -0x1p63 else { return Timestamp(milliseconds: .min) }
        guard ms < 0x1p63 else { return Timestamp(milliseconds: .max) }
        let (sum, overflow) = milliseconds.addingReportingOverflow(Int64(ms))
        guard !overflow else { return Timestamp(milliseconds: ms > 0 ? .max : .min) }
        return Timestamp(milliseconds: sum)
    }

    public var description: String { rfc3339 }
}
