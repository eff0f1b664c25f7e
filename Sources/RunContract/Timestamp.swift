/// A point in time with millisecond precision, as the contract writes it (`occurred_at`:
/// RFC 3339 in UTC with milliseconds). The state machine takes it as an input and never
/// reads a clock.
public struct Timestamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    public var milliseconds: Int64

    public init(milliseconds: Int64) { self.milliseconds = milliseconds }
    public init(seconds: Double) { self.milliseconds = Int64((seconds * 1000).rounded()) }

    public static func < (a: Timestamp, b: Timestamp) -> Bool { a.milliseconds < b.milliseconds }

    /// This time plus a duration in seconds (fractions allowed), rounded to the millisecond.
    public func adding(seconds: Double) -> Timestamp {
        Timestamp(milliseconds: milliseconds + Int64((seconds * 1000).rounded()))
    }

    public var description: String { rfc3339 }
}
