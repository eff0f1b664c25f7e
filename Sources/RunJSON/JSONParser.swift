// A strict RFC 8259 parser over bytes. No Foundation: the worker parses every command body
// with it, so it works on a contiguous buffer and builds strings only once per token.
//
// Decisions:
// - Integers (no fraction, no exponent) that fit `Int64` are `.int`; every other number is
//   `.double`. `-0` is the integer 0. A number too large for a finite double is refused.
// - Duplicate keys in one object are refused: two parsers that pick different winners would
//   let one message mean two things.
// - A `\u` escape of a lone surrogate (high without a following low, or a low on its own) is
//   refused, as are bytes that are not valid UTF-8 anywhere in a string.
// - Nesting deeper than `maxDepth` arrays/objects is refused, so hostile input cannot
//   exhaust the stack.
// - An object with more than `maxObjectMembers` members is refused (a generous bound; objects
//   are built with `JSONObject(uncheckedUniqueEntries:)` after the parser's own duplicate
//   check, so large objects cost linear time).

/// Why a byte sequence is not JSON, and where: `offset` is the byte index (0-based) at which
/// the parser gave up.
public struct JSONParseError: Error, Sendable, Hashable, CustomStringConvertible {
    public var offset: Int
    public var reason: String

    public init(offset: Int, reason: String) {
        self.offset = offset
        self.reason = reason
    }

    public var description: String { "\(reason) at byte \(offset)" }
}

extension JSONValue {
    /// The nesting limit `parse` applies unless told otherwise.
    public static let defaultMaxDepth = 128
    /// The per-object member limit `parse` applies unless told otherwise.
    public static let defaultMaxObjectMembers = 200_000

    /// Parses one JSON document (surrounding whitespace allowed, nothing else after it).
    public static func parse(
        _ bytes: some Collection<UInt8>, maxDepth: Int = defaultMaxDepth,
        maxObjectMembers: Int = defaultMaxObjectMembers
    ) throws(JSONParseError) -> JSONValue {
        let result: Result<JSONValue, JSONParseError>? = bytes.withContiguousStorageIfAvailable { buffer in
            var parser = JSONParser(buffer, maxDepth: maxDepth, maxObjectMembers: maxObjectMembers)
            return Result { () throws(JSONParseError) in try parser.parseDocument() }
        }
        if let result { return try result.get() }
        let copy = Array(bytes)
        return try copy.withUnsafeBufferPointer { buffer in
            var parser = JSONParser(buffer, maxDepth: maxDepth, maxObjectMembers: maxObjectMembers)
            return Result { () throws(JSONParseError) in try parser.parseDocument() }
        }.get()
    }

    /// Parses the UTF-8 of `text`.
    public static func parse(
        _ text: String, maxDepth: Int = defaultMaxDepth, maxObjectMembers: Int = defaultMaxObjectMembers
    ) throws(JSONParseError) -> JSONValue {
        try parse(Array(text.utf8), maxDepth: maxDepth, maxObjectMembers: maxObjectMembers)
    }
}

private enum Byte {
    static let quote: UInt8 = 0x22
    static let backslash: UInt8 = 0x5C
    static let slash: UInt8 = 0x2F
    static let comma: UInt8 = 0x2C
    static let colon: UInt8 = 0x3A
    static let openBrace: UInt8 = 0x7B
    static let closeBrace: UInt8 = 0x7D
    static let openBracket: UInt8 = 0x5B
    static let closeBracket: UInt8 = 0x5D
    static let minus: UInt8 = 0x2D
    static let plus: UInt8 = 0x2B
    static let dot: UInt8 = 0x2E
    static let zero: UInt8 = 0x30
    static let nine: UInt8 = 0x39
}

struct JSONParser {
    private let b: UnsafeBufferPointer<UInt8>
    private var i = 0
    private let maxDepth: Int
    private let maxObjectMembers: Int
    private var depth = 0

    init(_ bytes: UnsafeBufferPointer<UInt8>, maxDepth: Int, maxObjectMembers: Int) {
        self.b = bytes
        self.maxDepth = maxDepth
        self.maxObjectMembers = maxObjectMembers
    }

    mutating func parseDocument() throws(JSONParseError) -> JSONValue {
        skipWhitespace()
        let value = try parseValue()
        skipWhitespace()
        guard i == b.count else { throw fail("unexpected \(describe(b[i])) after the JSON value") }
        return value
    }

    private func fail(_ reason: String, at offset: Int? = nil) -> JSONParseError {
        JSONParseError(offset: offset ?? i, reason: reason)
    }

    private func describe(_ c: UInt8) -> String {
        if c >= 0x20 && c < 0x7F { return "'\(Character(Unicode.Scalar(c)))'" }
        return "byte 0x" + String(c, radix: 16, uppercase: true)
    }

    @inline(__always)
    private mutating func skipWhitespace() {
        while i < b.count {
            let c = b[i]
            guard c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 else { return }
            i += 1
        }
    }

    private mutating func parseValue() throws(JSONParseError) -> JSONValue {
        guard i < b.count else { throw fail("unexpected end of input, expected a value") }
        switch b[i] {
        case Byte.openBrace: return try parseObject()
        case Byte.openBracket: return try parseArray()
        case Byte.quote: return .string(try parseString())
        case UInt8(ascii: "t"):
            try literal("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null")
            return .null
        case Byte.minus, Byte.zero...Byte.nine:
            return try parseNumber()
        default:
            throw fail("unexpected \(describe(b[i])), expected a value")
        }
    }

    private mutating func literal(_ word: StaticString) throws(JSONParseError) {
        let start = i
        let n = word.utf8CodeUnitCount
        guard i + n <= b.count else { throw fail("invalid literal, expected \(word)", at: start) }
        let w = word.utf8Start
        for k in 0..<n where b[i + k] != w[k] {
            throw fail("invalid literal, expected \(word)", at: start)
        }
        i += n
    }

    private mutating func enter() throws(JSONParseError) {
        depth += 1
        if depth > maxDepth { throw fail("nesting deeper than \(maxDepth) levels") }
    }

    private mutating func parseArray() throws(JSONParseError) -> JSONValue {
        try enter()
        i += 1
        var elements: [JSONValue] = []
        skipWhitespace()
        if i < b.count, b[i] == Byte.closeBracket {
            i += 1
            depth -= 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            if i < b.count, b[i] == Byte.closeBracket, !elements.isEmpty {
                throw fail("trailing comma in array")
            }
            elements.append(try parseValue())
            skipWhitespace()
            guard i < b.count else { throw fail("unexpected end of input in array") }
            if b[i] == Byte.comma {
                i += 1
            } else if b[i] == Byte.closeBracket {
                i += 1
                break
            } else {
                throw fail("unexpected \(describe(b[i])), expected ',' or ']'")
            }
        }
        depth -= 1
        return .array(elements)
    }

    private mutating func parseObject() throws(JSONParseError) -> JSONValue {
        try enter()
        i += 1
        var entries: [(key: String, value: JSONValue)] = []
        var seen: Set<String> = []
        skipWhitespace()
        if i < b.count, b[i] == Byte.closeBrace {
            i += 1
            depth -= 1
            return .object(JSONObject())
        }
        // A command has four to eight members: one allocation instead of growing 1, 2, 4, 8.
        entries.reserveCapacity(8)
        while true {
            skipWhitespace()
            guard i < b.count else { throw fail("unexpected end of input in object") }
            guard b[i] == Byte.quote else {
                if b[i] == Byte.closeBrace, !entries.isEmpty { throw fail("trailing comma in object") }
                throw fail("unexpected \(describe(b[i])), expected a string key")
            }
            let keyOffset = i
            guard entries.count < maxObjectMembers else {
                throw fail("object has more than \(maxObjectMembers) members")
            }
            let key = try parseString()
            // Small objects (the common case) scan; big ones switch to a set.
            let duplicate: Bool
            if entries.count < 16 {
                duplicate = entries.contains { $0.key == key }
            } else {
                if seen.isEmpty { seen = Set(entries.map(\.key)) }
                duplicate = !seen.insert(key).inserted
            }
            if duplicate { throw fail("duplicate key \"\(key)\"", at: keyOffset) }
            skipWhitespace()
            guard i < b.count, b[i] == Byte.colon else {
                throw fail(i < b.count ? "unexpected \(describe(b[i])), expected ':'" : "unexpected end of input in object")
            }
            i += 1
            skipWhitespace()
            entries.append((key: key, value: try parseValue()))
            skipWhitespace()
            guard i < b.count else { throw fail("unexpected end of input in object") }
            if b[i] == Byte.comma {
                i += 1
            } else if b[i] == Byte.closeBrace {
                i += 1
                break
            } else {
                throw fail("unexpected \(describe(b[i])), expected ',' or '}'")
            }
        }
        depth -= 1
        return .object(JSONObject(uncheckedUniqueEntries: entries))
    }

    /// At the opening quote; leaves `i` after the closing quote.
    private mutating func parseString() throws(JSONParseError) -> String {
        let open = i
        i += 1
        let start = i
        // Fast path: no escapes, so the string is a slice of the input.
        while i < b.count {
            let c = b[i]
            if c == Byte.quote {
                let s = try makeString(UnsafeBufferPointer(rebasing: b[start..<i]), at: open)
                i += 1
                return s
            }
            if c == Byte.backslash { break }
            if c < 0x20 { throw fail("unescaped control character \(describe(c)) in string") }
            i += 1
        }
        guard i < b.count else { throw fail("unterminated string", at: open) }
        var out = [UInt8](UnsafeBufferPointer(rebasing: b[start..<i]))
        while i < b.count {
            let c = b[i]
            if c == Byte.quote {
                i += 1
                return try out.withUnsafeBufferPointer { buffer throws(JSONParseError) in
                    try makeString(buffer, at: open)
                }
            }
            if c < 0x20 { throw fail("unescaped control character \(describe(c)) in string") }
            if c != Byte.backslash {
                out.append(c)
                i += 1
                continue
            }
            let escapeStart = i
            i += 1
            guard i < b.count else { break }
            switch b[i] {
            case Byte.quote, Byte.backslash, Byte.slash: out.append(b[i])
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                i += 1
                var scalar = try hex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    guard i + 1 < b.count, b[i] == Byte.backslash, b[i + 1] == UInt8(ascii: "u") else {
                        throw fail("lone surrogate in \\u escape", at: escapeStart)
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else {
                        throw fail("lone surrogate in \\u escape", at: escapeStart)
                    }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw fail("lone surrogate in \\u escape", at: escapeStart)
                }
                appendUTF8(scalar, to: &out)
                continue  // hex4 already moved past the digits
            default:
                throw fail("invalid escape \\\(Character(Unicode.Scalar(b[i])))", at: escapeStart)
            }
            i += 1
        }
        throw fail("unterminated string", at: open)
    }

    private mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard i + 4 <= b.count else { throw fail("incomplete \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = b[i]
            let d: UInt8
            switch c {
            case Byte.zero...Byte.nine: d = c - Byte.zero
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
            default: throw fail("invalid hex digit \(describe(c)) in \\u escape")
            }
            v = v << 4 | UInt32(d)
            i += 1
        }
        return v
    }

    private func appendUTF8(_ v: UInt32, to out: inout [UInt8]) {
        switch v {
        case 0..<0x80:
            out.append(UInt8(v))
        case 0x80..<0x800:
            out.append(UInt8(0xC0 | v >> 6))
            out.append(UInt8(0x80 | v & 0x3F))
        case 0x800..<0x10000:
            out.append(UInt8(0xE0 | v >> 12))
            out.append(UInt8(0x80 | v >> 6 & 0x3F))
            out.append(UInt8(0x80 | v & 0x3F))
        default:
            out.append(UInt8(0xF0 | v >> 18))
            out.append(UInt8(0x80 | v >> 12 & 0x3F))
            out.append(UInt8(0x80 | v >> 6 & 0x3F))
            out.append(UInt8(0x80 | v & 0x3F))
        }
    }

    private func makeString(_ bytes: UnsafeBufferPointer<UInt8>, at offset: Int) throws(JSONParseError) -> String {
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw fail("invalid UTF-8 in string", at: offset)
        }
        return s
    }

    private mutating func parseNumber() throws(JSONParseError) -> JSONValue {
        let start = i
        let negative = b[i] == Byte.minus
        if negative { i += 1 }
        guard i < b.count, isDigit(b[i]) else { throw fail("expected a digit in number") }
        if b[i] == Byte.zero {
            i += 1
            if i < b.count, isDigit(b[i]) { throw fail("leading zero in number", at: start) }
        } else {
            while i < b.count, isDigit(b[i]) { i += 1 }
        }
        let integerEnd = i
        var isInteger = true
        if i < b.count, b[i] == Byte.dot {
            isInteger = false
            i += 1
            guard i < b.count, isDigit(b[i]) else { throw fail("expected a digit after the decimal point") }
            while i < b.count, isDigit(b[i]) { i += 1 }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            isInteger = false
            i += 1
            if i < b.count, b[i] == Byte.plus || b[i] == Byte.minus { i += 1 }
            guard i < b.count, isDigit(b[i]) else { throw fail("expected a digit in the exponent") }
            while i < b.count, isDigit(b[i]) { i += 1 }
        }
        if isInteger {
            // Accumulate negatively so that Int64.min fits.
            var v: Int64 = 0
            var overflow = false
            for k in (negative ? start + 1 : start)..<integerEnd {
                let (m, o1) = v.multipliedReportingOverflow(by: 10)
                let (s, o2) = m.subtractingReportingOverflow(Int64(b[k] - Byte.zero))
                if o1 || o2 {
                    overflow = true
                    break
                }
                v = s
            }
            if !overflow {
                if negative { return .int(v) }
                if v != .min { return .int(-v) }
            }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
        guard let d = Double(text), d.isFinite else { throw fail("number out of range", at: start) }
        return .double(d)
    }

    @inline(__always)
    private func isDigit(_ c: UInt8) -> Bool { c >= Byte.zero && c <= Byte.nine }
}
