/// FNV-1a, 64-bit: a small, stable hash (the same on every machine and in every release),
/// for values that must be reproducible, such as retry jitter and message keys.
public struct FNV1a: Sendable, Hashable {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    public mutating func combine(_ bytes: some Sequence<UInt8>) {
        for b in bytes { value = (value ^ UInt64(b)) &* 0x100_0000_01b3 }
    }

    public static func hash(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var h = FNV1a()
        h.combine(bytes)
        return h.value
    }
}
