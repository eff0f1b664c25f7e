import GRDB
import GRDBSQLite

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
    private let statement: OpaquePointer

    /// Resets `statement` and clears its bindings (parameters not bound are NULL).
    init(_ db: Database, _ statement: Statement) {
        self.db = db
        self.statement = statement.sqliteStatement
        sqlite3_reset(self.statement)
        sqlite3_clear_bindings(self.statement)
    }

    // SQLite copies what is bound with SQLITE_TRANSIENT before the call returns, so a Swift
    // string's temporary C form is enough.
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    func bind(_ index: Int32, _ value: String) {
        sqlite3_bind_text(statement, index, value, -1, Self.transient)
    }

    func bind(_ index: Int32, _ value: String?) {
        if let value { bind(index, value) } else { sqlite3_bind_null(statement, index) }
    }

    func bind(_ index: Int32, _ value: Int64) {
        sqlite3_bind_int64(statement, index, value)
    }

    func bind(_ index: Int32, _ value: Int) { bind(index, Int64(value)) }

    func bind(_ index: Int32, _ value: Int64?) {
        if let value { bind(index, value) } else { sqlite3_bind_null(statement, index) }
    }

    func bind(_ index: Int32, _ value: Int?) { bind(index, value.map(Int64.init)) }

    func bind(_ index: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { buffer in
            if let base = buffer.baseAddress {
                sqlite3_bind_blob(statement, index, base, Int32(buffer.count), Self.transient)
            } else {
                sqlite3_bind_zeroblob(statement, index, 0)  // an empty blob, not NULL
            }
        }
    }

    /// Runs the statement to its end (an INSERT, UPDATE or DELETE).
    func execute() throws {
        while true {
            switch sqlite3_step(statement) {
            case SQLITE_DONE: return
            case SQLITE_ROW: continue
            case let code: throw failure(code)
            }
        }
    }

    /// Runs a query and hands each row to `row` (read with `string` and `bytes`), until it
    /// returns false or the rows end; then resets the statement, which ends its read.
    func query(_ row: (SQLiteBinder) throws -> Bool) throws {
        defer { sqlite3_reset(statement) }
        while true {
            switch sqlite3_step(statement) {
            case SQLITE_DONE: return
            case SQLITE_ROW: if try !row(self) { return }
            case let code: throw failure(code)
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
    private func failure(_ code: Int32) -> DatabaseError {
        let error = DatabaseError(resultCode: ResultCode(rawValue: code), message: db.lastErrorMessage, sql: nil)
        sqlite3_reset(statement)
        return error
    }
}
