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
    package static func redacted(_ url: String) -> String {
        guard let scheme = url.range(of: "://"), let at = url[scheme.upperBound...].firstIndex(of: "@") else { return url }
        let credentials = url[scheme.upperBound..<at]
        guard let colon = credentials.firstIndex(of: ":") else { return url }
        return String(url[..<colon]) + ":***" + String(url[at...])
    }
}
