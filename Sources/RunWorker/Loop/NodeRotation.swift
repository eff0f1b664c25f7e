import AMQPClient
import Foundation

/// The broker nodes a worker may connect to (`amqp_url`, comma-separated) and which one to try
/// next. Pure: the driver connects to `url`, then reports how the attempt ended and waits the
/// delay it gets back.
///
/// The first node that answers wins. When a session ends, the next node is tried at once, and
/// so on in turn; only after a whole round of nodes refused does the worker wait, with the
/// backoff of a single node (`ReconnectBackoff`). With one URL this is exactly that backoff.
struct NodeRotation: Sendable, Equatable {
    /// The URLs in the order given; never empty.
    let urls: [String]
    /// The index of the node to connect to next (or connected to now).
    private(set) var current = 0
    /// Failed connection attempts since the last session or the last pause.
    private var failures = 0
    private var backoff: ReconnectBackoff

    init(urls: [String], backoff: ReconnectBackoff = ReconnectBackoff()) {
        precondition(!urls.isEmpty)
        self.urls = urls
        self.backoff = backoff
    }

    /// Parses a comma-separated list; each URL must be a valid amqp:// or amqps:// URL. Errors
    /// name the entry and never contain it (it may hold a password).
    init(list: String, backoff: ReconnectBackoff = ReconnectBackoff()) throws(SettingsError) {
        try self.init(urls: Self.parse(list), backoff: backoff)
    }

    static func parse(_ list: String) throws(SettingsError) -> [String] {
        let urls = list.split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        guard urls.contains(where: { !$0.isEmpty }) else { throw SettingsError("amqp_url must name at least one broker") }
        for (i, url) in urls.enumerated() {
            let which = urls.count == 1 ? "amqp_url" : "amqp_url entry \(i + 1) of \(urls.count)"
            guard !url.isEmpty else { throw SettingsError("\(which) is empty (a stray comma?)") }
            do {
                _ = try AMQPConfiguration(url: url)
            } catch let error as AMQPError {
                throw SettingsError("\(which): \(error.message)")
            } catch {
                throw SettingsError("\(which): \(error)")
            }
        }
        return urls
    }

    /// The node to connect to now.
    var url: String { urls[current] }

    /// The attempt at `url` failed before the session was up: the next node is tried at once,
    /// unless every node of this round failed; then the delay grows as `ReconnectBackoff`'s.
    /// Returns the seconds to wait before connecting to `url`.
    mutating func connectFailed() -> Double {
        current = (current + 1) % urls.count
        failures += 1
        guard failures >= urls.count else { return 0 }
        failures = 0
        return backoff.next(sessionWasUp: false)
    }

    /// A session that was up ended (the connection was lost): a new round starts at the next
    /// node, after the backoff's first, short delay (a node that accepts connections and then
    /// drops them must not make a hot loop). Returns the seconds to wait before connecting to `url`.
    mutating func sessionEnded() -> Double {
        current = (current + 1) % urls.count
        failures = 0
        return backoff.next(sessionWasUp: true)
    }
}

extension AMQPConfiguration {
    /// "host:port", for logs: no user, no password.
    var node: String { "\(host):\(port)" }
}
