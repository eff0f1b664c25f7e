import GRDB
import GRDBSQLite
import RunStore

/// Binds and runs one of GRDB's cached statements with SQLite's own calls, for the batch
/// path's per-row statements (a run's update, an outbox row, a command record, a command-id
/// lookup). GRDB's `execute(arguments:)` builds an array of existential values per row, then
/// converts and binds each one; on that path GRDB's layer took about 8 % of the worker's CPU
/// at full speed. Only inside a database access of GRDB's (`read`, `write`, a transaction):
/// GRDB's own per-statement checks (suspension, observation, autocommit tracking) have nothing
/// to do for these statements, as this store registers no observers and they do not begin or
/// end transactions.
struct SQLiteBinder {
    private let db: Database
    /// Held so that the statement outlives this binder whatever GRDB's cache does meanwhile.
    private let owner: Statement
    private let statement: OpaquePointer
    /// The first `sqlite3_bind_*` that failed (thrown when the statement runs, as GRDB does).
    private var bindFailure: Int32 = SQLITE_OK
    /// The row's texts and blobs, copied once into one buffer and bound where they lie while the
    /// statement runs (`SQLITE_STATIC`): binding each Swift string on its own took two
    /// allocations (its C form, then SQLite's copy), a quarter of the worker's allocations.
    private var bytes: [UInt8] = []
    private var spans: [Span] = []

    private struct Span {
        let index: Int32
        let start: Int
        let count: Int
        let isText: Bool
    }

    /// Resets `statement` and clears its bindings (parameters not bound are NULL).
    init(_ db: Database, _ statement: Statement) {
        self.db = db
        owner = statement
        self.statement = statement.sqliteStatement
        sqlite3_reset(self.statement)
        sqlite3_clear_bindings(self.statement)
    }

    /// Room for a typical row at its first text or blob, so that appending does not regrow.
    private mutating func reserve(_ count: Int) {
        if spans.isEmpty { spans.reserveCapacity(8) }
        if bytes.capacity < bytes.count + count { bytes.reserveCapacity(max(512, 2 * (bytes.count + count))) }
    }

    mutating func bind(_ index: Int32, _ value: String) {
        reserve(value.utf8.count + 1)
        let start = bytes.count
        bytes.append(contentsOf: value.utf8)
        // Up to the first NUL, as GRDB binds text (a C string), so that what this writes is
        // what GRDB's queries match and what `string(_:)` reads back.
        let end = bytes[start...].firstIndex(of: 0) ?? bytes.count
        spans.append(Span(index: index, start: start, count: end - start, isText: true))
        bytes.append(0)  // NUL-terminated, and so never an empty buffer
    }

    mutating func bind(_ index: Int32, _ value: String?) {
        if let value { bind(index, value) } else { check(sqlite3_bind_null(statement, index)) }
    }

    mutating func bind(_ index: Int32, _ value: Int64) {
        check(sqlite3_bind_int64(statement, index, value))
    }

    mutating func bind(_ index: Int32, _ value: Int) { bind(index, Int64(value)) }

    mutating func bind(_ index: Int32, _ value: Int64?) {
        if let value { bind(index, value) } else { check(sqlite3_bind_null(statement, index)) }
    }

    mutating func bind(_ index: Int32, _ value: Int?) { bind(index, value.map(Int64.init)) }

    private mutating func check(_ code: Int32) {
        if code != SQLITE_OK, bindFailure == SQLITE_OK { bindFailure = code }
    }

    mutating func bind(_ index: Int32, _ value: [UInt8]) {
        reserve(value.count)
        let start = bytes.count
        bytes.append(contentsOf: value)
        spans.append(Span(index: index, start: start, count: value.count, isText: false))
    }

    /// Binds the texts and blobs where they lie in `bytes`, runs `body`, then unbinds them
    /// before the buffer may go (SQLite keeps a static binding's pointer until then).
    private func withBoundBytes<T>(_ body: () throws -> T) throws -> T {
        try bytes.withUnsafeBytes { buffer in
            var failed = bindFailure
            for span in spans where failed == SQLITE_OK {
                let code: Int32
                if let base = buffer.baseAddress {
                    let p = base + span.start
                    code = span.isText
                        ? sqlite3_bind_text(statement, span.index, p.assumingMemoryBound(to: CChar.self), Int32(span.count), nil /* SQLITE_STATIC */)
                        : sqlite3_bind_blob(statement, span.index, p, Int32(span.count), nil /* SQLITE_STATIC */)
                } else {
                    // Only empty blobs were bound: still values, not NULL.
                    code = sqlite3_bind_zeroblob(statement, span.index, 0)
                }
                failed = code
            }
            defer { if !spans.isEmpty { sqlite3_clear_bindings(statement) } }
            if failed != SQLITE_OK {
                throw DatabaseError(resultCode: ResultCode(rawValue: failed), message: db.lastErrorMessage, sql: nil)
            }
            return try body()
        }
    }

    /// Runs the statement to its end (an INSERT, UPDATE or DELETE).
    func execute() throws {
        try withBoundBytes {
            while true {
                switch sqlite3_step(statement) {
                case SQLITE_DONE: return
                case SQLITE_ROW: continue
                case let code: throw failure(code)
                }
            }
        }
    }

    /// Runs a query and hands each row to `row` (read with `string` and `bytes`), until it
    /// returns false or the rows end; then resets the statement, which ends its read.
    func query(_ row: (SQLiteBinder) throws -> Bool) throws {
        try withBoundBytes {
            defer { sqlite3_reset(statement) }
            while true {
                switch sqlite3_step(statement) {
                case SQLITE_DONE: return
                case SQLITE_ROW: if try !row(self) { return }
                case let code: throw failure(code)
                }
            }
        }
    }

    func string(_ column: Int32) -> String? {
        guard let text = sqlite3_column_text(statement, column) else { return nil }
        return String(cString: text)
    }

    func bytes(_ column: Int32) -> [UInt8] {
        let count = Int(sqlite3_column_bytes(statement, column))
        guard count > 0, let blob = sqlite3_column_blob(statement, column) else { return [] }
        return [UInt8](UnsafeRawBufferPointer(start: blob, count: count))
    }

    /// The error as GRDB reports it, so that `SQLiteRunStore.storeError` maps it the same way;
    /// the statement is reset so that it can be used again.
    /// An interrupt is GRDB cancelling the access (its own statements throw `CancellationError`
    /// then; the store interrupts nothing else).
    private func failure(_ code: Int32) -> any Error {
        let error = DatabaseError(resultCode: ResultCode(rawValue: code), message: db.lastErrorMessage, sql: nil)
        sqlite3_reset(statement)
        if code & 0xFF == SQLITE_INTERRUPT { return CancellationError() }
        return error
    }
}
