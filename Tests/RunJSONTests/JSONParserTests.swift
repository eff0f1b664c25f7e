import Testing

@testable import RunJSON

private func parse(_ text: String) throws(JSONParseError) -> JSONValue { try JSONValue.parse(text) }

struct ValidDocument: Sendable, CustomStringConvertible {
    let text: String
    let value: JSONValue
    var description: String { text }
}

@Suite struct JSONParserTests {
    static let valid: [ValidDocument] = [
        .init(text: "null", value: .null),
        .init(text: "true", value: .bool(true)),
        .init(text: " false ", value: .bool(false)),
        .init(text: "0", value: .int(0)),
        .init(text: "-0", value: .int(0)),
        .init(text: "42", value: .int(42)),
        .init(text: "-17", value: .int(-17)),
        .init(text: "9223372036854775807", value: .int(.max)),
        .init(text: "-9223372036854775808", value: .int(.min)),
        .init(text: "9223372036854775808", value: .double(9_223_372_036_854_775_808)),
        .init(text: "-9223372036854775809", value: .double(-9_223_372_036_854_775_808.0)),
        .init(text: "1.5", value: .double(1.5)),
        .init(text: "3.0", value: .double(3)),
        .init(text: "-0.25e2", value: .double(-25)),
        .init(text: "1E3", value: .double(1000)),
        .init(text: "1e-2", value: .double(0.01)),
        .init(text: "2e+2", value: .double(200)),
        .init(text: "\"\"", value: .string("")),
        .init(text: "\"héllo ✓\"", value: .string("héllo ✓")),
        .init(text: #""a\"b\\c\/d\b\f\n\r\t""#, value: .string("a\"b\\c/d\u{8}\u{C}\n\r\t")),
        .init(text: #""\u0041\u00e9\u2713""#, value: .string("Aé✓")),
        .init(text: #""\ud83d\ude00""#, value: .string("😀")),
        .init(text: #""x\uD834\uDD1Ey""#, value: .string("x𝄞y")),
        .init(text: "[]", value: .array([])),
        .init(text: "[1, \"a\", null, [true]]", value: [1, "a", nil, [true]]),
        .init(text: "{}", value: .object([:])),
        .init(text: "\t{ \"a\" : 1 ,\r\n \"b\":[{}]}\n", value: ["a": 1, "b": [[:]]]),
        .init(text: #"{"a":{"b":{"c":[1,{"d":null}]}}}"#, value: ["a": ["b": ["c": [1, ["d": nil]]]]]),
    ]

    /// Every kind of JSON value parses to the expected `JSONValue`, with integers exact and
    /// numbers beyond Int64 falling back to doubles.
    @Test(arguments: valid)
    func parsesValidDocuments(_ doc: ValidDocument) throws {
        let v = try parse(doc.text)
        #expect(v == doc.value)
        // Kinds matter, not only equality: 3.0 stays a double, 42 an integer.
        switch (v, doc.value) {
        case (.int, .int), (.double, .double), (.null, .null), (.bool, .bool), (.string, .string),
            (.array, .array), (.object, .object):
            break
        default: Issue.record("\(doc.text) parsed as \(v), expected \(doc.value)")
        }
    }

    /// Object keys come out in the order the document wrote them.
    @Test func keepsKeyOrder() throws {
        let v = try parse(#"{"z":1,"a":2,"m":3}"#)
        #expect(v.objectValue?.keys == ["z", "a", "m"])
    }

    static let invalid: [(String, String, Int)] = [
        ("", "unexpected end of input", 0),
        ("   ", "unexpected end of input", 3),
        ("[1,]", "trailing comma in array", 3),
        (#"{"a":1,}"#, "trailing comma in object", 7),
        ("[1 2]", "expected ',' or ']'", 3),
        (#"{"a" 1}"#, "expected ':'", 5),
        ("{a:1}", "expected a string key", 1),
        (#"{"a":1 "b":2}"#, "expected ',' or '}'", 7),
        ("// c\n1", "unexpected '/'", 0),
        ("[1] /* c */", "after the JSON value", 4),
        ("01", "leading zero", 0),
        ("-01", "leading zero", 0),
        ("1.", "expected a digit after the decimal point", 2),
        (".5", "unexpected '.'", 0),
        ("1e", "expected a digit in the exponent", 2),
        ("-", "expected a digit", 1),
        ("+1", "unexpected '+'", 0),
        ("1e400", "number out of range", 0),
        ("NaN", "unexpected 'N'", 0),
        ("tru", "expected true", 0),
        ("nul", "expected null", 0),
        ("True", "unexpected 'T'", 0),
        ("\"abc", "unterminated string", 0),
        ("\"a\nb\"", "unescaped control character", 2),
        ("\"a\tb\"", "unescaped control character", 2),
        (#""\x""#, "invalid escape", 1),
        (#""\u12""#, "incomplete \\u escape", 3),
        (#""\u12G4""#, "invalid hex digit", 5),
        (#""\ud800""#, "lone surrogate", 1),
        (#""\ud800\u0041""#, "lone surrogate", 1),
        (#""\udc00""#, "lone surrogate", 1),
        ("{\"a\":1,\"a\":2}", "duplicate key \"a\"", 7),
        ("[1]]", "unexpected ']' after the JSON value", 3),
        ("{} {}", "after the JSON value", 3),
        ("[", "unexpected end of input", 1),
        ("{\"a\":", "unexpected end of input", 5),
    ]

    /// Each kind of invalid input is refused with a reason and the byte offset where it went
    /// wrong.
    @Test(arguments: invalid)
    func refusesInvalidInput(_ text: String, _ reason: String, _ offset: Int) {
        do {
            let v = try parse(text)
            Issue.record("\(text.debugDescription) parsed as \(v)")
        } catch {
            #expect(error.reason.contains(reason), "\(text.debugDescription): \(error)")
            #expect(error.offset == offset, "\(text.debugDescription): \(error)")
            #expect(error.description.hasSuffix("at byte \(error.offset)"))
        }
    }

    /// Bytes that are not UTF-8 inside a string are refused rather than repaired.
    @Test func refusesInvalidUTF8() {
        let bytes: [UInt8] = [0x22, 0x61, 0xFF, 0x62, 0x22]
        #expect(throws: JSONParseError.self) { try JSONValue.parse(bytes) }
        let truncated: [UInt8] = [0x22, 0xE2, 0x9C, 0x22]
        #expect(throws: JSONParseError.self) { try JSONValue.parse(truncated) }
    }

    /// Duplicate keys are caught in big objects too, where the parser switches to a set.
    @Test func refusesDuplicateKeyInLargeObject() {
        let keys = (0..<40).map { "\"k\($0)\":\($0)" } + ["\"k3\":0"]
        #expect(throws: JSONParseError.self) { try parse("{" + keys.joined(separator: ",") + "}") }
    }

    /// Nesting up to the limit parses; one level more is refused instead of overflowing the
    /// stack, and hostile depth fails fast.
    @Test func enforcesDepthLimit() throws {
        let ok = String(repeating: "[", count: 128) + String(repeating: "]", count: 128)
        _ = try parse(ok)
        let tooDeep = String(repeating: "[", count: 129) + String(repeating: "]", count: 129)
        #expect(throws: JSONParseError.self) { try parse(tooDeep) }
        let objects = String(repeating: "{\"a\":", count: 129) + "1" + String(repeating: "}", count: 129)
        #expect(throws: JSONParseError.self) { try parse(objects) }
        let hostile = String(repeating: "[", count: 1_000_000)
        do {
            _ = try parse(hostile)
            Issue.record("a million brackets parsed")
        } catch {
            #expect(error.reason.contains("nesting deeper than 128"))
            #expect(error.offset == 128)
        }
        #expect(throws: JSONParseError.self) { try JSONValue.parse(Array("[[1]]".utf8), maxDepth: 1) }
    }

    /// Objects with more members than the limit are refused at the first member too many;
    /// the limit is adjustable, and a 1 MiB body of one large object parses (in linear time).
    @Test func enforcesObjectMemberLimit() throws {
        func object(_ n: Int) -> String { "{" + (0..<n).map { "\"k\($0)\":1" }.joined(separator: ",") + "}" }
        #expect(try parse(object(100_000)).objectValue?.count == 100_000)
        do {
            _ = try JSONValue.parse(object(1001), maxObjectMembers: 1000)
            Issue.record("1001 members parsed")
        } catch {
            #expect(error.reason == "object has more than 1000 members")
        }
        #expect(try JSONValue.parse(object(1001), maxObjectMembers: 2000).objectValue?.count == 1001)
        #expect(throws: JSONParseError.self) { try JSONValue.parse(object(3), maxObjectMembers: 2) }
    }

    /// Parsing works the same on non-contiguous collections as on arrays.
    @Test func parsesNonContiguousCollections() throws {
        let text = #"{"a":[1,2.5,"x"]}"#
        let v = try JSONValue.parse(text.utf8.lazy.map { $0 })
        #expect(v == ["a": [1, 2.5, "x"]])
    }
}
