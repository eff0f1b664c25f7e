import Foundation
internal import CRabbitMQ

/// Scoped C memory for one librabbitmq call: every `amqp_bytes_t`/table built for a call lives
/// here and is freed together when the arena goes away (`withArena`). Never escapes the call.
///
/// A bump allocator over a few chunks: a batch of events (a dozen strings each, in its
/// properties and headers) once cost about 30 allocations per message, a fifth of all the
/// worker's allocations; now a batch takes a handful of chunks.
final class Arena {
    private var chunks: [UnsafeMutableRawPointer] = []
    private var next: UnsafeMutableRawPointer?
    private var left = 0
    private var chunkSize = 4096

    func allocate(_ size: Int, alignment: Int = 16) -> UnsafeMutableRawPointer {
        let size = max(size, 1)
        if let p = next {
            let padding = (alignment - Int(bitPattern: p) % alignment) % alignment
            if padding + size <= left {
                next = p + padding + size
                left -= padding + size
                return p + padding
            }
        }
        // Larger than a chunk (a big body): a block of its own, and the current chunk's room
        // stays for the small things that follow. malloc's alignment suits every C type here.
        if size > chunkSize {
            let p = malloc(size)!
            chunks.append(p)
            return p
        }
        // A fresh chunk, each twice the last up to 256 KiB, so a large batch takes few.
        let capacity = chunkSize
        chunkSize = min(chunkSize * 2, 256 * 1024)
        let p = malloc(capacity)!
        chunks.append(p)
        next = p + size
        left = capacity - size
        return p
    }

    func bytes(_ s: String) -> amqp_bytes_t {
        var s = s
        return s.withUTF8 { bytes(UnsafeRawBufferPointer($0)) }
    }

    func bytes(_ b: [UInt8]) -> amqp_bytes_t { b.withUnsafeBytes { bytes($0) } }

    func bytes(_ b: UnsafeRawBufferPointer) -> amqp_bytes_t {
        let p = allocate(b.count, alignment: 1)
        if let base = b.baseAddress, b.count > 0 { p.copyMemory(from: base, byteCount: b.count) }
        return amqp_bytes_t(len: b.count, bytes: p)
    }

    /// A NUL-terminated copy, for `const char *` parameters.
    func cString(_ s: String) -> UnsafePointer<CChar> {
        var s = s
        return s.withUTF8 { utf8 in
            let p = allocate(utf8.count + 1, alignment: 1)
            if let base = utf8.baseAddress { p.copyMemory(from: base, byteCount: utf8.count) }
            p.storeBytes(of: 0, toByteOffset: utf8.count, as: UInt8.self)
            return UnsafePointer(p.assumingMemoryBound(to: CChar.self))
        }
    }

    func table(_ t: AMQPTable?) -> amqp_table_t {
        guard let t, !t.isEmpty else { return amqp_empty_table }
        let entries = allocate(MemoryLayout<amqp_table_entry_t>.stride * t.count, alignment: MemoryLayout<amqp_table_entry_t>.alignment)
            .bindMemory(to: amqp_table_entry_t.self, capacity: t.count)
        for (i, e) in t.entries.enumerated() {
            entries[i] = amqp_table_entry_t(key: bytes(e.key), value: field(e.value))
        }
        return amqp_table_t(num_entries: Int32(t.count), entries: entries)
    }

    func field(_ v: AMQPFieldValue) -> amqp_field_value_t {
        var f = amqp_field_value_t()
        func kind(_ k: amqp_field_value_kind_t) { f.kind = UInt8(k.rawValue) }
        switch v {
        case .bool(let b): kind(AMQP_FIELD_KIND_BOOLEAN); f.value.boolean = b ? 1 : 0
        case .int8(let x): kind(AMQP_FIELD_KIND_I8); f.value.i8 = x
        case .uint8(let x): kind(AMQP_FIELD_KIND_U8); f.value.u8 = x
        case .int16(let x): kind(AMQP_FIELD_KIND_I16); f.value.i16 = x
        case .uint16(let x): kind(AMQP_FIELD_KIND_U16); f.value.u16 = x
        case .int32(let x): kind(AMQP_FIELD_KIND_I32); f.value.i32 = x
        case .uint32(let x): kind(AMQP_FIELD_KIND_U32); f.value.u32 = x
        case .int64(let x): kind(AMQP_FIELD_KIND_I64); f.value.i64 = x
        case .float(let x): kind(AMQP_FIELD_KIND_F32); f.value.f32 = x
        case .double(let x): kind(AMQP_FIELD_KIND_F64); f.value.f64 = x
        case .decimal(let scale, let value):
            kind(AMQP_FIELD_KIND_DECIMAL); f.value.decimal = amqp_decimal_t(decimals: scale, value: value)
        case .string(let s): kind(AMQP_FIELD_KIND_UTF8); f.value.bytes = bytes(s)
        case .bytes(let b): kind(AMQP_FIELD_KIND_BYTES); f.value.bytes = bytes(b)
        case .array(let a):
            kind(AMQP_FIELD_KIND_ARRAY)
            let items = allocate(MemoryLayout<amqp_field_value_t>.stride * a.count, alignment: MemoryLayout<amqp_field_value_t>.alignment)
                .bindMemory(to: amqp_field_value_t.self, capacity: max(a.count, 1))
            for (i, x) in a.enumerated() { items[i] = field(x) }
            f.value.array = amqp_array_t(num_entries: Int32(a.count), entries: items)
        case .table(let t): kind(AMQP_FIELD_KIND_TABLE); f.value.table = table(t)
        case .timestamp(let d):
            kind(AMQP_FIELD_KIND_TIMESTAMP); f.value.u64 = UInt64(max(0, d.timeIntervalSince1970))
        case .void: kind(AMQP_FIELD_KIND_VOID)
        }
        return f
    }

    func properties(_ p: AMQPProperties) -> amqp_basic_properties_t {
        var c = amqp_basic_properties_t()
        var flags: UInt32 = 0
        func str(_ s: String?, _ flag: Int32, _ set: (amqp_bytes_t) -> Void) {
            if let s { flags |= UInt32(flag); set(bytes(s)) }
        }
        str(p.contentType, AMQP_BASIC_CONTENT_TYPE_FLAG) { c.content_type = $0 }
        str(p.contentEncoding, AMQP_BASIC_CONTENT_ENCODING_FLAG) { c.content_encoding = $0 }
        if let h = p.headers { flags |= UInt32(AMQP_BASIC_HEADERS_FLAG); c.headers = table(h) }
        if let d = p.deliveryMode { flags |= UInt32(AMQP_BASIC_DELIVERY_MODE_FLAG); c.delivery_mode = d }
        if let d = p.priority { flags |= UInt32(AMQP_BASIC_PRIORITY_FLAG); c.priority = d }
        str(p.correlationID, AMQP_BASIC_CORRELATION_ID_FLAG) { c.correlation_id = $0 }
        str(p.replyTo, AMQP_BASIC_REPLY_TO_FLAG) { c.reply_to = $0 }
        str(p.expiration, AMQP_BASIC_EXPIRATION_FLAG) { c.expiration = $0 }
        str(p.messageID, AMQP_BASIC_MESSAGE_ID_FLAG) { c.message_id = $0 }
        if let t = p.timestamp {
            flags |= UInt32(AMQP_BASIC_TIMESTAMP_FLAG); c.timestamp = UInt64(max(0, t.timeIntervalSince1970))
        }
        str(p.type, AMQP_BASIC_TYPE_FLAG) { c.type = $0 }
        str(p.userID, AMQP_BASIC_USER_ID_FLAG) { c.user_id = $0 }
        str(p.appID, AMQP_BASIC_APP_ID_FLAG) { c.app_id = $0 }
        c._flags = flags
        return c
    }

    deinit { for c in chunks { free(c) } }
}

/// Runs `body` with a fresh arena; everything allocated in it is freed when `body` returns.
func withArena<T>(_ body: (Arena) throws -> T) rethrows -> T {
    let a = Arena()
    return try withExtendedLifetime(a) { try body(a) }
}

// MARK: decoding (copies everything out of library-owned memory)

extension String {
    init(amqp b: amqp_bytes_t) {
        guard b.len > 0, let p = b.bytes else { self = ""; return }
        self = String(decoding: UnsafeRawBufferPointer(start: p, count: b.len), as: UTF8.self)
    }
}

extension Array where Element == UInt8 {
    init(amqp b: amqp_bytes_t) {
        guard b.len > 0, let p = b.bytes else { self = []; return }
        self = Array(UnsafeRawBufferPointer(start: p, count: b.len))
    }
}

func decodeTable(_ t: amqp_table_t) -> AMQPTable {
    var out = AMQPTable()
    guard t.num_entries > 0, let e = t.entries else { return out }
    for i in 0..<Int(t.num_entries) {
        out[String(amqp: e[i].key)] = decodeField(e[i].value)
    }
    return out
}

func decodeField(_ f: amqp_field_value_t) -> AMQPFieldValue {
    let v = f.value
    switch UInt32(f.kind) {
    case AMQP_FIELD_KIND_BOOLEAN.rawValue: return .bool(v.boolean != 0)
    case AMQP_FIELD_KIND_I8.rawValue: return .int8(v.i8)
    case AMQP_FIELD_KIND_U8.rawValue: return .uint8(v.u8)
    case AMQP_FIELD_KIND_I16.rawValue: return .int16(v.i16)
    case AMQP_FIELD_KIND_U16.rawValue: return .uint16(v.u16)
    case AMQP_FIELD_KIND_I32.rawValue: return .int32(v.i32)
    case AMQP_FIELD_KIND_U32.rawValue: return .uint32(v.u32)
    case AMQP_FIELD_KIND_I64.rawValue: return .int64(v.i64)
    case AMQP_FIELD_KIND_U64.rawValue: return .int64(Int64(bitPattern: v.u64))
    case AMQP_FIELD_KIND_F32.rawValue: return .float(v.f32)
    case AMQP_FIELD_KIND_F64.rawValue: return .double(v.f64)
    case AMQP_FIELD_KIND_DECIMAL.rawValue: return .decimal(scale: v.decimal.decimals, value: v.decimal.value)
    case AMQP_FIELD_KIND_UTF8.rawValue: return .string(String(amqp: v.bytes))
    case AMQP_FIELD_KIND_BYTES.rawValue: return .bytes([UInt8](amqp: v.bytes))
    case AMQP_FIELD_KIND_ARRAY.rawValue:
        var items: [AMQPFieldValue] = []
        if v.array.num_entries > 0, let e = v.array.entries {
            for i in 0..<Int(v.array.num_entries) { items.append(decodeField(e[i])) }
        }
        return .array(items)
    case AMQP_FIELD_KIND_TABLE.rawValue: return .table(decodeTable(v.table))
    case AMQP_FIELD_KIND_TIMESTAMP.rawValue:
        return .timestamp(Date(timeIntervalSince1970: TimeInterval(v.u64)))
    default: return .void
    }
}

func decodeProperties(_ c: amqp_basic_properties_t) -> AMQPProperties {
    let f = c._flags
    func has(_ flag: Int32) -> Bool { f & UInt32(flag) != 0 }
    var p = AMQPProperties()
    if has(AMQP_BASIC_CONTENT_TYPE_FLAG) { p.contentType = String(amqp: c.content_type) }
    if has(AMQP_BASIC_CONTENT_ENCODING_FLAG) { p.contentEncoding = String(amqp: c.content_encoding) }
    if has(AMQP_BASIC_HEADERS_FLAG) { p.headers = decodeTable(c.headers) }
    if has(AMQP_BASIC_DELIVERY_MODE_FLAG) { p.deliveryMode = c.delivery_mode }
    if has(AMQP_BASIC_PRIORITY_FLAG) { p.priority = c.priority }
    if has(AMQP_BASIC_CORRELATION_ID_FLAG) { p.correlationID = String(amqp: c.correlation_id) }
    if has(AMQP_BASIC_REPLY_TO_FLAG) { p.replyTo = String(amqp: c.reply_to) }
    if has(AMQP_BASIC_EXPIRATION_FLAG) { p.expiration = String(amqp: c.expiration) }
    if has(AMQP_BASIC_MESSAGE_ID_FLAG) { p.messageID = String(amqp: c.message_id) }
    if has(AMQP_BASIC_TIMESTAMP_FLAG) { p.timestamp = Date(timeIntervalSince1970: TimeInterval(c.timestamp)) }
    if has(AMQP_BASIC_TYPE_FLAG) { p.type = String(amqp: c.type) }
    if has(AMQP_BASIC_USER_ID_FLAG) { p.userID = String(amqp: c.user_id) }
    if has(AMQP_BASIC_APP_ID_FLAG) { p.appID = String(amqp: c.app_id) }
    return p
}
