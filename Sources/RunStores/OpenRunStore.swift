import Foundation
@_exported import RunStore
@_exported import RunStorePostgres
@_exported import RunStoreSQLite

/// Opens the store a URL names (creating a SQLite file's folder when missing). A PostgreSQL
/// store is a `Service`: run it (the worker adds it to its service group) and `prepare()` it.
public func openRunStore(url: String, sqliteSynchronous: SQLiteRunStore.Synchronous = .full) throws -> any RunStore {
    switch try StoreLocation(url: url) {
    case .memory:
        return InMemoryRunStore()
    case .sqlite(let path):
        let folder = (path as NSString).deletingLastPathComponent
        if !folder.isEmpty {
            try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        return try SQLiteRunStore(path: path, synchronous: sqliteSynchronous)
    case .postgres(let url):
        return try PostgresRunStore(url: url)
    }
}

extension SQLiteRunStore {
    /// Parses `sqlite:///absolute/path` and `sqlite://relative/path`.
    public static func path(fromURL url: String) throws -> String {
        guard case .sqlite(let path) = try StoreLocation(url: url) else {
            throw StoreError(.invalidURL, "not a sqlite:// URL: \(StoreLocation.redacted(url))")
        }
        return path
    }
}
