// Reads typed fields out of a JSON object, naming the offending field by its full path
// (`config.retry.max_attempts`, `actions[1].args`) when it is missing or has the wrong type.
//
// Optional typed fields treat JSON `null` as absent (producers in many languages write
// `None`/`nil` that way). "Any JSON" fields (`input`, `result`, ...) keep `null` as a value.

/// The longest duration the contract accepts, in seconds (about 31 years). Larger values
/// would overflow millisecond timestamps when added to a time.
public let maxDurationSeconds: Double = 1_000_000_000

struct FieldReader {
    let object: JSONObject
    /// Prefix for field names in messages, e.g. `config` or `actions[1]`; empty at top level.
    let path: String
    let code: RunError.Code

    init(_ object: JSONObject, path: String = "", code: RunError.Code) {
        self.object = object
        self.path = path
        self.code = code
    }

    func name(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func error(_ message: String) -> RunError { RunError(code, message) }

    func nested(_ object: JSONObject, key: String) -> FieldReader {
        FieldReader(object, path: name(key), code: code)
    }

    /// The raw value, `null` included; nil only when the key is absent.
    func any(_ key: String) -> JSONValue? { object[key] }

    /// The value unless it is absent or `null`.
    func present(_ key: String) -> JSONValue? {
        guard let v = object[key], !v.isNull else { return nil }
        return v
    }

    func required(_ key: String) throws(RunError) -> JSONValue {
        guard let v = present(key) else { throw error("\(name(key)) is required") }
        return v
    }

    func string(_ key: String) throws(RunError) -> String? {
        guard let v = present(key) else { return nil }
        guard let s = v.stringValue else { throw error("\(name(key)) must be a string") }
        return s
    }

    func requiredString(_ key: String) throws(RunError) -> String {
        guard let s = try string(key) else { throw error("\(name(key)) is required") }
        return s
    }

    /// A non-empty string; an empty one is reported as the given message.
    func nonEmptyString(_ key: String) throws(RunError) -> String? {
        guard let v = present(key) else { return nil }
        guard let s = v.stringValue, !s.isEmpty else { throw error("\(name(key)) must be a non-empty string") }
        return s
    }

    func object(_ key: String) throws(RunError) -> JSONObject? {
        guard let v = present(key) else { return nil }
        guard let o = v.objectValue else { throw error("\(name(key)) must be an object") }
        return o
    }

    func requiredObject(_ key: String) throws(RunError) -> JSONObject {
        guard let o = try object(key) else { throw error("\(name(key)) is required") }
        return o
    }

    func bool(_ key: String) throws(RunError) -> Bool? {
        guard let v = present(key) else { return nil }
        guard let b = v.boolValue else { throw error("\(name(key)) must be a boolean") }
        return b
    }

    /// An integer (a double with no fraction counts) no smaller than `min`.
    func int(_ key: String, min: Int64) throws(RunError) -> Int64? {
        guard let v = present(key) else { return nil }
        guard let i = v.intValue, i >= min else {
            throw error("\(name(key)) must be an integer" + (min == .min ? "" : " >= \(min)"))
        }
        return i
    }

    func requiredInt(_ key: String, min: Int64) throws(RunError) -> Int64 {
        guard let i = try int(key, min: min) else { throw error("\(name(key)) is required") }
        return i
    }

    /// A number, finite (always, from the parser).
    func number(_ key: String) throws(RunError) -> Double? {
        guard let v = present(key) else { return nil }
        guard let d = v.doubleValue, d.isFinite else { throw error("\(name(key)) must be a number") }
        return d
    }

    /// Seconds: a number > 0 and at most `maxDurationSeconds`.
    func duration(_ key: String) throws(RunError) -> Double? {
        guard let v = present(key) else { return nil }
        guard let d = v.doubleValue, d > 0, d <= maxDurationSeconds else {
            throw error("\(name(key)) must be a number > 0 (seconds, at most 1000000000)")
        }
        return d
    }

    func timestamp(_ key: String) throws(RunError) -> Timestamp? {
        guard let v = present(key) else { return nil }
        guard let s = v.stringValue, let t = Timestamp(rfc3339: s) else {
            throw error("\(name(key)) must be an RFC 3339 time")
        }
        return t
    }

    func requiredTimestamp(_ key: String) throws(RunError) -> Timestamp {
        guard let t = try timestamp(key) else { throw error("\(name(key)) is required") }
        return t
    }

    /// Storage form: milliseconds since the epoch as an integer.
    func milliseconds(_ key: String) throws(RunError) -> Timestamp? {
        try int(key, min: .min).map { Timestamp(milliseconds: $0) }
    }

    func requiredMilliseconds(_ key: String) throws(RunError) -> Timestamp {
        guard let t = try milliseconds(key) else { throw error("\(name(key)) is required") }
        return t
    }

    func enumValue<E: RawRepresentable & CaseIterable>(_ key: String, _ type: E.Type) throws(RunError) -> E?
    where E.RawValue == String {
        guard let v = present(key) else { return nil }
        guard let s = v.stringValue, let e = E(rawValue: s) else {
            throw error("\(name(key)) must be one of " + E.allCases.map(\.rawValue).joined(separator: ", "))
        }
        return e
    }

    func requiredEnum<E: RawRepresentable & CaseIterable>(_ key: String, _ type: E.Type) throws(RunError) -> E
    where E.RawValue == String {
        guard let e = try enumValue(key, type) else { throw error("\(name(key)) is required") }
        return e
    }

    func stringList(_ key: String) throws(RunError) -> [String]? {
        guard let v = present(key) else { return nil }
        guard let a = v.arrayValue else { throw error("\(name(key)) must be a list of strings") }
        var out: [String] = []
        out.reserveCapacity(a.count)
        for e in a {
            guard let s = e.stringValue else { throw error("\(name(key)) must be a list of strings") }
            out.append(s)
        }
        return out
    }
}

extension JSONObject {
    /// Sets `key` only when `value` is non-nil.
    mutating func set(_ key: String, _ value: JSONValue?) {
        if let value { self[key] = value }
    }
}

extension JSONValue {
    /// Parses bytes that must hold a JSON object; failures are `malformed_message`.
    static func parseObject(_ bytes: some Collection<UInt8>, what: String) throws(RunError) -> JSONObject {
        let value: JSONValue
        do {
            value = try JSONValue.parse(bytes)
        } catch {
            throw RunError(.malformedMessage, "\(what) is not valid JSON: \(error)")
        }
        guard let object = value.objectValue else {
            throw RunError(.malformedMessage, "\(what) must be a JSON object, not \(value.kindName)")
        }
        return object
    }

    /// `object`, `array`, `string`, ... for messages.
    public var kindName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .int, .double: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}
