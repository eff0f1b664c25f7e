import Testing

@testable import RunWebhooks

/// `Runworker-Signature`: vectors beyond RunWorkerTests' ASCII ones, and what `verify` accepts
/// and refuses at its edges.
@Suite struct SignatureTests {
    /// Signatures match vectors computed independently with Python's hmac, for a UTF-8 secret
    /// and body, a key longer than SHA-256's 64-byte block, binary body bytes, and negative and
    /// extreme timestamps.
    @Test(arguments: [
        // python3: hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
        ("clé-secrète-ünïcode", 1_712_345_678 as Int64, Array(#"{"msg":"héllo"}"#.utf8),
         "71bd33b2eb6a3756d6a89ac14af19b733b28a4cc73afe703fbe3c4689c550a65"),
        (String(repeating: "k", count: 100), 1, [0x00, 0xFF, 0x0A, 0x0D, 0x2E],
         "9734dcf2c1a7972ab1d67ad6082e9df9d753aca31bd23688cec8fdde45640428"),
        ("whsec-test-0123456789", -5, Array("{}".utf8), "1926fd6d422a3fc008f5ff28f3166fa1d5cb4c79070328f422d6a750adf474b2"),
        ("whsec-test-0123456789", Int64.max, Array("x".utf8), "a0b49c0180517f736ae44af03a2f70c629e6a8c4413d633e6ef3b91ab3071825"),
    ] as [(String, Int64, [UInt8], String)])
    func pythonVectors(secret: String, timestamp: Int64, body: [UInt8], hex: String) {
        #expect(WebhookSignature.hex(secret: secret, timestamp: timestamp, body: body) == hex)
        #expect(WebhookSignature.header(secret: secret, timestamp: timestamp, body: body) == "v1=" + hex)
        #expect(WebhookSignature.verify(
            header: "v1=" + hex, secret: secret, timestamp: String(timestamp), body: body, now: timestamp))
    }

    /// The signed payload is the timestamp's decimal digits (sign included), a dot, the body.
    @Test func payloadLayout() {
        #expect(WebhookSignature.payload(timestamp: 1_700_000_000, body: [0x7B, 0x7D]) == Array("1700000000.{}".utf8))
        #expect(WebhookSignature.payload(timestamp: -5, body: []) == Array("-5.".utf8))
    }

    /// The hex is 64 lowercase digits.
    @Test func hexIsLowercase() {
        let hex = WebhookSignature.hex(secret: "ABCDEFGHIJKLMNOP", timestamp: 42, body: Array("BODY".utf8))
        #expect(hex.utf8.count == 64)
        #expect(hex.allSatisfy { "0123456789abcdef".contains($0) })
    }

    static let secret = "verify-secret-0123456789"
    static let body = Array(#"{"run_id":"r-1","type":"completed"}"#.utf8)
    static let hex = WebhookSignature.hex(secret: secret, timestamp: 1_000, body: body)

    static func verify(_ header: String, timestamp: String = "1000", now: Int64 = 1_000, tolerance: Int64 = 300) -> Bool {
        WebhookSignature.verify(header: header, secret: secret, timestamp: timestamp, body: body, now: now, tolerance: tolerance)
    }

    /// A matching `v1=` value is accepted in upper case, and anywhere in a comma-separated list.
    @Test func verifyAcceptsEquivalentForms() {
        #expect(Self.verify("v1=" + Self.hex.uppercased()))
        #expect(Self.verify("v1=" + String(repeating: "0", count: 64) + ",v1=" + Self.hex))
        #expect(Self.verify("v2=abc ,  v1=\(Self.hex)  "))
    }

    /// Values that are not a well-formed matching `v1=` MAC are refused.
    @Test func verifyRefusesMalformedHeaders() {
        let refused = [
            "", Self.hex, "=" + Self.hex, "v2=" + Self.hex, "V1=" + Self.hex, "v1=" + String(Self.hex.dropLast()),
            "v1=" + Self.hex + "00", "v1=" + String(Self.hex.dropLast()) + "g", "v1 =" + Self.hex, "v1=",
        ]
        for header in refused {
            #expect(!Self.verify(header), "\(header)")
        }
    }

    /// The timestamp must be an integer within the tolerance of now, on either side; the
    /// bounds themselves are accepted.
    @Test func verifyTimestampWindow() {
        let header = "v1=" + Self.hex
        #expect(Self.verify(header, now: 1_300))
        #expect(Self.verify(header, now: 700))
        #expect(!Self.verify(header, now: 1_301))
        #expect(!Self.verify(header, now: 699))
        #expect(Self.verify(header, now: 1_000, tolerance: 0))
        #expect(!Self.verify(header, now: 1_001, tolerance: 0))
        for timestamp in ["", "abc", "1000.0", "1e3", " 1000"] {
            #expect(!Self.verify(header, timestamp: timestamp), "\(timestamp)")
        }
    }
}
