import Foundation

/// Where a store lives, read from the `store` setting. One parser, one factory: the worker,
/// runctl and the tests all open stores through `openRunStore(url:)`.
public enum StoreLocation: Sendable, Hashable, CustomStringConvertible {
    /// `sqlite:///absolute/path.sqlite` or `sqlite://relative/path.sqlite`.
    case sqlite(path: String)
    /// `memory:`: nothing survives the process (for trying the worker and for tests).
    case memory
    /// `postgres://user:password@host:5432/db` (also `postgresql://`).
    case postgres(url: String)

    public init(url: String) throws(StoreError) {
        if url == "memory:" || url == "memory://" {
            self = .memory
        } else if url.hasPrefix("sqlite://") {
            let rest = String(url.dropFirst("sqlite://".count))
            guard !rest.isEmpty, rest != "/" else { throw StoreError(.invalidURL, "sqlite URL has no path: \(url)") }
            self = .sqlite(path: rest)
        } else if url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") {
            self = .postgres(url: url)
        } else {
            throw StoreError(
                .invalidURL,
                "unknown store URL \"\(Self.redacted(url))\": use sqlite:///absolute/path.sqlite, sqlite://relative/path.sqlite or memory:")
        }
    }

    /// The URL without its password, for logs and errors.
    public var description: String {
        switch self {
        case .sqlite(let path): "sqlite://\(path)"
        case .memory: "memory:"
        case .postgres(let url): Self.redacted(url)
        }
    }

    /// `scheme://user:secret@host` → `scheme://user:***@host`.
    static func redacted(_ url: String) -> String {
        guard let scheme = url.range(of: "://"), let at = url[scheme.upperBound...].firstIndex(of: "@") else { return url }
        let credentials = url[scheme.upperBound..<at]
        guard let colon = credentials.firstIndex(of: ":") else { return url }
        return String(url[..<colon]) + ":***" + String(url[at...])
    }
}

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
