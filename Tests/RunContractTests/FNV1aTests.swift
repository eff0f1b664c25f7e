import Testing

@testable import RunContract

@Suite struct FNV1aTests {
    /// The published FNV-1a 64-bit test vectors (offset basis for the empty input).
    @Test(arguments: [
        ("", UInt64(0xcbf2_9ce4_8422_2325)),
        ("a", 0xaf63_dc4c_8601_ec8c),
        ("b", 0xaf63_df4c_8601_f1a5),
        ("foobar", 0x8594_4171_f739_67e8),
    ])
    func knownVectors(_ text: String, _ expected: UInt64) {
        #expect(FNV1a.hash(text.utf8) == expected)
        var h = FNV1a()
        h.combine(text.utf8)
        #expect(h.value == expected)
    }

    /// Combining in pieces gives the hash of the concatenation.
    @Test func incremental() {
        var h = FNV1a()
        h.combine("foo".utf8)
        h.combine([UInt8]())
        h.combine("bar".utf8)
        #expect(h.value == FNV1a.hash("foobar".utf8))
    }
}
