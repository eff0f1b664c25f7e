/// FNV-1a, 64-bit: a small, fast, non-cryptographic hash with a fixed definition, so that a
/// value computed here (a retry's jitter, a message's identity across redeliveries) is the same
/// in every process and every release. Not for anything an attacker may choose to collide.
public struct FNV1a: Sendable, Hashable {
    static let offsetBasis: UInt64 = 0xcbf2_9ce4_8422_2325
    static let prime: UInt64 = 0x0000_0100_0000_01b3

    /// The hash of everything combined so far (the offset basis before any byte).
    public private(set) var value: UInt64 = offsetBasis

    public init() {}

    /// Feeds more bytes; combining `a` then `b` equals combining `a + b`.
    public mutating func combine(_ bytes: some Sequence<UInt8>) {
        for byte in bytes { value = (value ^ UInt64(byte)) &* Self.prime }
    }

    /// The hash of `bytes` alone.
    public static func hash(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var h = FNV1a()
        h.combine(bytes)
        return h.value
    }
}
