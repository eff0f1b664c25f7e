import Foundation

/// One AMQP field value (the types RabbitMQ understands in headers and arguments).
public enum AMQPFieldValue: Sendable, Hashable {
    case bool(Bool)
    case int8(Int8)
    case uint8(UInt8)
    case int16(Int16)
    case uint16(UInt16)
    case int32(Int32)
    case uint32(UInt32)
    case int64(Int64)
    case float(Float)
    case double(Double)
    /// `value / 10^scale`.
    case decimal(scale: UInt8, value: UInt32)
    case string(String)
    case bytes([UInt8])
    case array([AMQPFieldValue])
    case table(AMQPTable)
    /// Whole seconds since the epoch (AMQP timestamps have no sub-second part).
    case timestamp(Date)
    case void

    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var tableValue: AMQPTable? { if case .table(let t) = self { t } else { nil } }
    public var arrayValue: [AMQPFieldValue]? { if case .array(let a) = self { a } else { nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { b } else { nil } }
    /// Any integer kind widened to Int64.
    public var int64Value: Int64? {
        switch self {
        case .int8(let v): Int64(v)
        case .uint8(let v): Int64(v)
        case .int16(let v): Int64(v)
        case .uint16(let v): Int64(v)
        case .int32(let v): Int64(v)
        case .uint32(let v): Int64(v)
        case .int64(let v): v
        default: nil
        }
    }
}

extension AMQPFieldValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByFloatLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    /// Integer literals become `int64` (RabbitMQ accepts any integer kind for arguments).
    public init(integerLiteral value: Int64) { self = .int64(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(arrayLiteral elements: AMQPFieldValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, AMQPFieldValue)...) {
        self = .table(AMQPTable(elements))
    }
    public init(nilLiteral: ()) { self = .void }
}

/// An ordered AMQP field table. Keys keep insertion order (as on the wire); setting an existing
/// key replaces its value in place; setting `nil` removes it.
public struct AMQPTable: Sendable, Hashable, Sequence, ExpressibleByDictionaryLiteral {
    public private(set) var entries: [(key: String, value: AMQPFieldValue)]

    public init() { entries = [] }
    public init(_ pairs: [(String, AMQPFieldValue)]) {
        entries = []
        entries.reserveCapacity(pairs.count)
        for (k, v) in pairs { self[k] = v }
    }
    public init(dictionaryLiteral elements: (String, AMQPFieldValue)...) { self.init(elements) }

    public subscript(key: String) -> AMQPFieldValue? {
        get { entries.first(where: { $0.key == key })?.value }
        set {
            if let i = entries.firstIndex(where: { $0.key == key }) {
                if let v = newValue { entries[i].value = v } else { entries.remove(at: i) }
            } else if let v = newValue {
                entries.append((key, v))
            }
        }
    }

    /// Room for `capacity` entries, so that building a table of known size allocates once.
    public mutating func reserveCapacity(_ capacity: Int) { entries.reserveCapacity(capacity) }

    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }
    public var keys: [String] { entries.map(\.key) }

    public func makeIterator() -> IndexingIterator<[(key: String, value: AMQPFieldValue)]> {
        entries.makeIterator()
    }

    public static func == (a: AMQPTable, b: AMQPTable) -> Bool {
        a.entries.count == b.entries.count
            && zip(a.entries, b.entries).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }
    public func hash(into h: inout Hasher) {
        h.combine(entries.count)
        for e in entries { h.combine(e.key); h.combine(e.value) }
    }
}

extension AMQPTable: CustomStringConvertible {
    public var description: String {
        "[" + entries.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "]"
    }
}
