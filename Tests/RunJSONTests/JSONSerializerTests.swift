import RunTestSupport
import Testing

@testable import RunJSON

@Suite struct JSONSerializerTests {
    static let cases: [(JSONValue, String)] = [
        (.null, "null"),
        (.bool(true), "true"),
        (.bool(false), "false"),
        (.int(0), "0"),
        (.int(-7), "-7"),
        (.int(1_234_567_890), "1234567890"),
        (.int(.max), "9223372036854775807"),
        (.int(.min), "-9223372036854775808"),
        (.double(3), "3.0"),
        (.double(-0.5), "-0.5"),
        (.double(0.1), "0.1"),
        (.double(1e-5), "1e-05"),
        (.double(1e16), "1e+16"),
        (.double(.nan), "null"),
        (.double(.infinity), "null"),
        (.string("plain"), #""plain""#),
        (.string("q\"b\\s/"), #""q\"b\\s/""#),
        (.string("l1\nl2\r\t"), #""l1\nl2\r\t""#),
        (.string("\u{0}\u{1}\u{8}\u{C}\u{1F}"), #""\u0000\u0001\u0008\u000c\u001f""#),
        (.string("é✓😀"), "\"é✓😀\""),
        ([], "[]"),
        ([1, "a", nil], #"[1,"a",null]"#),
        ([:], "{}"),
        (["b": 1, "a": [true, ["x": 2.5]]], #"{"b":1,"a":[true,{"x":2.5}]}"#),
    ]

    /// Output is compact, keeps key order, escapes quotes, backslashes and control characters,
    /// and prints integral doubles with a fraction so they stay doubles.
    @Test(arguments: cases)
    func serializes(_ value: JSONValue, _ expected: String) {
        #expect(value.jsonString == expected)
    }

    /// Doubles print in a form that parses back to the very same bits.
    @Test(arguments: [0.1, 1.0 / 3.0, Double.leastNonzeroMagnitude, Double.greatestFiniteMagnitude, -2.5e-10, 123_456_789.123_456_78, 3.0, 1e21])
    func doublesRoundTrip(_ d: Double) throws {
        let back = try JSONValue.parse(JSONValue.double(d).serialized())
        guard case .double(let e) = back else {
            Issue.record("\(d) came back as \(back)")
            return
        }
        #expect(e.bitPattern == d.bitPattern)
    }

    /// For many generated values (all kinds, nesting, awkward strings), parsing the serialized
    /// form gives back an equal value with the same key order.
    @Test func generatedValuesRoundTrip() throws {
        var rng = SplitMix(seed: 0x5EED)
        for _ in 0..<500 {
            let v = randomValue(&rng, depth: 0)
            let text = v.serialized()
            let back = try JSONValue.parse(text)
            #expect(back == v)
            #expect(back.serialized() == text, "key order or number kind changed")
        }
    }
}


func randomString(_ rng: inout SplitMix) -> String {
    let alphabet: [Unicode.Scalar] = ["a", "Z", "0", " ", "\"", "\\", "/", "\n", "\u{0}", "\u{1F}", "\u{7F}", "é", "✓", "😀", "\u{2028}", "\u{FFFF}"]
    var s = ""
    for _ in 0..<Int.random(in: 0...12, using: &rng) {
        s.unicodeScalars.append(alphabet.randomElement(using: &rng)!)
    }
    return s
}

func randomValue(_ rng: inout SplitMix, depth: Int) -> JSONValue {
    let kind = Int.random(in: 0...(depth > 4 ? 5 : 7), using: &rng)
    switch kind {
    case 0: return .null
    case 1: return .bool(Bool.random(using: &rng))
    case 2: return .int(Int64.random(in: .min ... .max, using: &rng))
    case 3: return .int(Int64.random(in: -1000...1000, using: &rng))
    case 4:
        let d = Double(bitPattern: UInt64.random(in: 0...UInt64.max, using: &rng))
        return .double(d.isFinite ? d : Double.random(in: -1e6...1e6, using: &rng))
    case 5: return .string(randomString(&rng))
    case 6: return .array((0..<Int.random(in: 0...4, using: &rng)).map { _ in randomValue(&rng, depth: depth + 1) })
    default:
        var o = JSONObject()
        for _ in 0..<Int.random(in: 0...4, using: &rng) {
            o[randomString(&rng)] = randomValue(&rng, depth: depth + 1)
        }
        return .object(o)
    }
}
