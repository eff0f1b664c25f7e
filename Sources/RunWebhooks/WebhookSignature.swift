import Crypto
import Foundation

/// `Runworker-Signature: v1=<hex>`: HMAC-SHA256 keyed with the worker's `webhooks.secret` over
/// `<timestamp>.<body>`, where timestamp is the `Runworker-Timestamp` header (unix seconds, as
/// sent) and body the exact bytes POSTed. A receiver recomputes it, compares in constant time,
/// and refuses timestamps too far from its clock (a replayed request keeps its old timestamp:
/// changing it breaks the signature).
public enum WebhookSignature {
    /// The version tag before `=`: a future scheme gets a new one, and a header may then carry
    /// both, separated by commas.
    public static let scheme = "v1"

    /// The signed bytes: the timestamp's decimal digits, a dot, the body.
    public static func payload(timestamp: Int64, body: [UInt8]) -> [UInt8] {
        Array("\(timestamp).".utf8) + body
    }

    /// Lowercase hex of HMAC-SHA256(secret, payload).
    public static func hex(secret: String, timestamp: Int64, body: [UInt8]) -> String {
        let key = SymmetricKey(data: Array(secret.utf8))
        let mac = HMAC<SHA256>.authenticationCode(for: payload(timestamp: timestamp, body: body), using: key)
        return mac.map { byte in
            let digits = Array("0123456789abcdef".utf8)
            return String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]], as: UTF8.self)
        }.joined()
    }

    /// The header's value: `v1=<hex>`.
    public static func header(secret: String, timestamp: Int64, body: [UInt8]) -> String {
        "\(scheme)=" + hex(secret: secret, timestamp: timestamp, body: body)
    }

    /// What a receiver does (here for tests and Swift receivers): the header holds a `v1=` value
    /// that matches, compared in constant time, and the timestamp is within `tolerance` seconds
    /// of `now`.
    public static func verify(
        header: String, secret: String, timestamp: String, body: [UInt8], now: Int64, tolerance: Int64 = 300
    ) -> Bool {
        guard let ts = Int64(timestamp), abs(now - ts) <= tolerance else { return false }
        let key = SymmetricKey(data: Array(secret.utf8))
        for part in header.split(separator: ",") {
            let item = part.trimmingCharacters(in: .whitespaces)
            guard item.hasPrefix("\(scheme)="), let mac = Self.bytes(hex: item.dropFirst(scheme.count + 1)) else { continue }
            if HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: payload(timestamp: ts, body: body), using: key) {
                return true
            }
        }
        return false
    }

    private static func bytes(hex: Substring) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count == 64 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(32)
        var i = 0
        while i < digits.count {
            guard let hi = nibble(digits[i]), let lo = nibble(digits[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        case 0x41...0x46: c - 0x41 + 10
        default: nil
        }
    }
}
