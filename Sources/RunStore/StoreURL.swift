import Foundation

extension SQLiteRunStore {
    /// Opens the store a URL names, creating the SQLite file's folder when missing.
    /// `postgres://` is recognised and refused until the PostgreSQL store exists.
    public static func open(url: String, synchronous: Synchronous = .full) throws -> SQLiteRunStore {
        if url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") {
            throw StoreError(
                .invalidURL,
                "the PostgreSQL store is not available yet; use sqlite:///absolute/path.sqlite or sqlite://relative/path.sqlite")
        }
        let path = try Self.path(fromURL: url)
        let folder = (path as NSString).deletingLastPathComponent
        if !folder.isEmpty {
            try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        return try SQLiteRunStore(path: path, synchronous: synchronous)
    }
}
