// Compact JSON output into a byte buffer (no whitespace, keys in the object's order).
//
// Decisions:
// - `"` and `\` are escaped; control characters become `\n`, `\r`, `\t` or `\u00XX`
//   (lower-case hex). Everything else, non-ASCII included, is written as UTF-8.
// - Doubles print in Swift's shortest round-tripping form, so an integral double keeps its
//   fraction (`3.0`) and parses back as `.double(3)`, not `.int(3)`. Exponents look like
//   `1e-05` / `1e+16`, which is valid JSON.
// - A non-finite double (only constructible by hand; the parser never yields one) is written
//   as `null`, since JSON has no spelling for it.

extension JSONValue {
    /// The compact JSON text of this value, as UTF-8.
    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128)
        write(to: &out)
        return out
    }

    /// The compact JSON text as a `String` (for logs and tests).
    public var jsonString: String { String(decoding: serialized(), as: UTF8.self) }

    /// Appends the compact JSON text of this value to `out`.
    public func write(to out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: JSONWriter.null)
        case .bool(let v): out.append(contentsOf: v ? JSONWriter.true : JSONWriter.false)
        case .int(let v): JSONWriter.writeInt(v, to: &out)
        case .double(let v): JSONWriter.writeDouble(v, to: &out)
        case .string(let s): JSONWriter.writeString(s, to: &out)
        case .array(let a):
            out.append(0x5B)
            var first = true
            for e in a {
                if !first { out.append(0x2C) }
                first = false
                e.write(to: &out)
            }
            out.append(0x5D)
        case .object(let o):
            o.write(to: &out)
        }
    }
}

extension JSONObject {
    /// Appends the compact JSON text of this object, keys in order.
    public func write(to out: inout [UInt8]) {
        out.append(0x7B)
        var first = true
        for (k, v) in entries {
            if !first { out.append(0x2C) }
            first = false
            JSONWriter.writeString(k, to: &out)
            out.append(0x3A)
            v.write(to: &out)
        }
        out.append(0x7D)
    }

    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(to: &out)
        return out
    }
}

enum JSONWriter {
    static let null: [UInt8] = Array("null".utf8)
    static let `true`: [UInt8] = Array("true".utf8)
    static let `false`: [UInt8] = Array("false".utf8)
    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    static func writeInt(_ v: Int64, to out: inout [UInt8]) {
        if v < 0 { out.append(0x2D) }
        var m = v.magnitude
        if m < 10 {
            out.append(0x30 + UInt8(m))
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
            UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var n = 0
        withUnsafeMutableBytes(of: &digits) { d in
            while m > 0 {
                d[n] = 0x30 + UInt8(m % 10)
                m /= 10
                n += 1
            }
            while n > 0 {
                n -= 1
                out.append(d[n])
            }
        }
    }

    static func writeDouble(_ v: Double, to out: inout [UInt8]) {
        guard v.isFinite else {
            out.append(contentsOf: null)
            return
        }
        out.append(contentsOf: v.description.utf8)
    }

    static func writeString(_ s: String, to out: inout [UInt8]) {
        out.append(0x22)
        var s = s
        s.withUTF8 { bytes in
            var runStart = 0
            for (k, c) in bytes.enumerated() where c < 0x20 || c == 0x22 || c == 0x5C {
                if runStart < k { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<k])) }
                runStart = k + 1
                out.append(0x5C)
                switch c {
                case 0x22, 0x5C: out.append(c)
                case 0x0A: out.append(0x6E)
                case 0x0D: out.append(0x72)
                case 0x09: out.append(0x74)
                default:
                    out.append(0x75)
                    out.append(0x30)
                    out.append(0x30)
                    out.append(hex[Int(c >> 4)])
                    out.append(hex[Int(c & 0xF)])
                }
            }
            if runStart < bytes.count {
                out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<bytes.count]))
            }
        }
        out.append(0x22)
    }
}

/// Writes one JSON object straight to bytes, member by member, with the same output as
/// building a `JSONObject` and serializing it: for the hot encoders (events, stored runs),
/// where the intermediate object (an array of entries, a linear key search per insertion)
/// cost more than the writing. The caller writes each key once.
public struct JSONObjectWriter {
    public private(set) var bytes: [UInt8]
    private var members = 0

    public init(capacity: Int = 512) {
        bytes = []
        bytes.reserveCapacity(capacity)
        bytes.append(0x7B)
    }

    private mutating func key(_ key: String) {
        if members > 0 { bytes.append(0x2C) }
        members += 1
        JSONWriter.writeString(key, to: &bytes)
        bytes.append(0x3A)
    }

    /// `key: value`; nothing when `value` is nil (as `JSONObject.set`).
    public mutating func set(_ key: String, _ value: JSONValue?) {
        guard let value else { return }
        self.key(key)
        value.write(to: &bytes)
    }

    public mutating func set(_ key: String, _ value: JSONObject?) {
        guard let value else { return }
        self.key(key)
        value.write(to: &bytes)
    }

    public mutating func set(_ key: String, string value: String?) {
        guard let value else { return }
        self.key(key)
        JSONWriter.writeString(value, to: &bytes)
    }

    public mutating func set(_ key: String, int value: Int64?) {
        guard let value else { return }
        self.key(key)
        JSONWriter.writeInt(value, to: &bytes)
    }

    /// `key: {...}`, the nested object written by `body` into this writer's own buffer (no
    /// intermediate object, no buffer of its own).
    public mutating func setObject(_ key: String, _ body: (inout JSONObjectWriter) -> Void) {
        self.key(key)
        // The buffer moves to the nested writer and back, never shared (so never copied).
        var taken: [UInt8] = []
        swap(&taken, &bytes)
        var nested = JSONObjectWriter(continuing: [])
        swap(&nested.bytes, &taken)
        nested.bytes.append(0x7B)
        body(&nested)
        swap(&nested.bytes, &bytes)
        bytes.append(0x7D)
    }

    private init(continuing bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// `key: ` followed by `json`, already-serialized JSON the caller vouches for.
    public mutating func set(_ key: String, raw json: [UInt8]) {
        self.key(key)
        bytes.append(contentsOf: json)
    }

    /// `key: "value"`, or `key: null` when nil.
    public mutating func setNullable(_ key: String, string value: String?) {
        self.key(key)
        if let value { JSONWriter.writeString(value, to: &bytes) } else { bytes.append(contentsOf: JSONWriter.null) }
    }

    /// The object's bytes, closed.
    public consuming func finish() -> [UInt8] {
        bytes.append(0x7D)
        return bytes
    }
}
