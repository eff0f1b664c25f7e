import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import RunContract

/// Reads a run's stored events from a worker's HTTP API (`GET /v1/runs/{id}/events?after_seq=`),
/// to fill what a subscription missed. Bounded: 5 s per request, at most `maxPages` pages.
struct HistoryClient: Sendable {
    struct Item: Sendable {
        var seq: Int64?
        var update: RunUpdate
    }

    var base: String
    var token: String?
    var timeout: Double = 5
    var maxPages = 20

    /// Events with `after < seq < before` (no upper bound when `before` is nil), in order.
    func events(runID: String, after: Int64, before: Int64?) async throws -> [Item] {
        var out: [Item] = []
        var cursor = after
        for _ in 0..<maxPages {
            let page = try await fetch(runID: runID, after: cursor)
            if page.isEmpty { break }
            for item in page {
                guard let s = item.seq else { continue }
                if let before, s >= before { return out }
                out.append(item)
                cursor = max(cursor, s)
            }
            if let before, cursor >= before - 1 { break }
        }
        return out
    }

    private func fetch(runID: String, after: Int64) async throws -> [Item] {
        let id = runID.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-_"))) ?? runID
        let root = base.hasSuffix("/") ? String(base.dropLast()) : base
        guard let url = URL(string: "\(root)/v1/runs/\(id)/events?after_seq=\(after)") else {
            throw RunClientError(.invalidCommand, "not a URL: \(root)")
        }
        var request = URLRequest(url: url, timeoutInterval: timeout)
        if let token, !token.isEmpty { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        let (data, status) = try await Self.get(request)
        if status == 404 { return [] }  // no such run (yet): nothing missed
        guard (200..<300).contains(status) else {
            throw RunClientError(.connectionFailed, "history of \(runID): HTTP \(status)")
        }
        let json = try JSONValue.parse(Array(data))
        guard let events = json["events"]?.arrayValue else {
            throw RunClientError(.malformedReply, "history of \(runID): no events array")
        }
        return events.map { e in
            let body = e.serialized()
            return Item(seq: e["seq"]?.intValue,
                        update: RunUpdate.decode(json: e, body: body, routingKey: "run.\(runID).\(e["type"]?.stringValue ?? "")",
                                                 amqpType: nil))
        }
    }

    /// URLSession's completion handler, bridged (its async API is not on every platform).
    private static func get(_ request: URLRequest) async throws -> (Data, Int) {
        try await withCheckedThrowingContinuation { continuation in
            URLSession.shared.dataTask(with: request) { data, response, error in
                if let error {
                    continuation.resume(throwing: error)
                } else {
                    continuation.resume(returning: (data ?? Data(), (response as? HTTPURLResponse)?.statusCode ?? 0))
                }
            }.resume()
        }
    }
}
