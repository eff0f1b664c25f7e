/// A JSON value as the contract carries it: free-form `input`, `metadata`, `result`,
/// action fields. Objects keep their key order so that what a producer sent is what a
/// subscriber sees; integers stay exact (`Int64`) instead of passing through `Double`.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)
}

/// An ordered JSON object. Lookups are linear: contract objects are small, and order matters
/// more than asymptotics here. Equality ignores key order, as JSON does.
public struct JSONObject: Sendable, Hashable, Sequence, ExpressibleByDictionaryLiteral {
    public private(set) var entries: [(key: String, value: JSONValue)]

    public init() { entries = [] }
    /// Later duplicates replace earlier ones, in the earlier one's place.
    public init(_ entries: [(key: String, value: JSONValue)]) {
        if entries.count < 16 {
            self.entries = []
            for (k, v) in entries { self[k] = v }
            return
        }
        var index: [String: Int] = [:]
        var unique: [(key: String, value: JSONValue)] = []
        unique.reserveCapacity(entries.count)
        for entry in entries {
            if let i = index[entry.key] {
                unique[i].value = entry.value
            } else {
                index[entry.key] = unique.count
                unique.append(entry)
            }
        }
        self.entries = unique
    }

    /// For callers that already know the keys are distinct (the parser checks them itself):
    /// no de-duplication pass, so building a large object stays linear.
    public init(uncheckedUniqueEntries entries: [(key: String, value: JSONValue)]) {
        self.entries = entries
    }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self.init(elements.map { (key: $0.0, value: $0.1) })
    }

    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }
    public var keys: [String] { entries.map(\.key) }

    /// Setting `nil` removes the key; setting an existing key replaces it in place.
    public subscript(key: String) -> JSONValue? {
        get { entries.first(where: { $0.key == key })?.value }
        set {
            if let i = entries.firstIndex(where: { $0.key == key }) {
                if let newValue { entries[i].value = newValue } else { entries.remove(at: i) }
            } else if let newValue {
                entries.append((key: key, value: newValue))
            }
        }
    }

    public func makeIterator() -> IndexingIterator<[(key: String, value: JSONValue)]> {
        entries.makeIterator()
    }

    public static func == (a: JSONObject, b: JSONObject) -> Bool {
        guard a.count == b.count else { return false }
        for (k, v) in a.entries where b[k] != v { return false }
        return true
    }

    public func hash(into hasher: inout Hasher) {
        // Order-independent, to agree with ==.
        var acc = 0
        for (k, v) in entries {
            var h = Hasher()
            h.combine(k)
            h.combine(v)
            acc ^= h.finalize()
        }
        hasher.combine(count)
        hasher.combine(acc)
    }
}

extension JSONValue: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral
{
    public init(nilLiteral: ()) { self = .null }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(JSONObject(elements.map { (key: $0.0, value: $0.1) }))
    }
}

extension JSONValue {
    public var objectValue: JSONObject? { if case .object(let o) = self { o } else { nil } }
    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { a } else { nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var isNull: Bool { if case .null = self { true } else { false } }
    /// Integers and doubles both read as a number.
    public var doubleValue: Double? {
        switch self {
        case .int(let i): Double(i)
        case .double(let d): d
        default: nil
        }
    }
    /// A double with no fractional part counts as an integer (`3.0` is 3).
    public var intValue: Int64? {
        switch self {
        case .int(let i): i
        case .double(let d) where d.rounded() == d && abs(d) < 9.007_199_254_740_992e15: Int64(d)
        default: nil
        }
    }
    public subscript(key: String) -> JSONValue? { objectValue?[key] }
}
