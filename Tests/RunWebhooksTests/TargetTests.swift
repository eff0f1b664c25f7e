import Synchronization
import Testing

@testable import RunWebhooks

/// Webhook URLs taken apart, and the private-target rule at its edges (RunWorkerTests checks
/// the common addresses and a mocked resolver).
@Suite struct TargetTests {
    // MARK: URLs

    /// Only http and https URLs with a plain host (and an optional numeric port) are taken.
    @Test(arguments: [
        "javascript:alert(1)", "ws://example.com/", "wss://example.com/", "http:/example.com", "//example.com/x",
        "mailto:a@example.com", "http://example.com:", "http://example.com:+80/", "http://example.com:65536/",
        "http://bücher.example/", "http://exa\tmple.com/", "https://[fe80::1%25eth0]/", "http://[::1]x/",
        "https://example.com/" + String(repeating: "a", count: 2030),
    ])
    func refusedURLs(url: String) {
        #expect(WebhookURL(url) == nil)
    }

    /// Scheme, host (lower-cased, IPv6 without brackets), port (explicit or the scheme's) and
    /// the redacted form (no query, no fragment).
    @Test(arguments: [
        ("HTTP://Hooks.Example.COM/a", false, "hooks.example.com", 80, "HTTP://Hooks.Example.COM/a"),
        ("https://h.example:65535", true, "h.example", 65_535, "https://h.example:65535"),
        ("http://h.example:8080?token=s3cret", false, "h.example", 8_080, "http://h.example:8080"),
        ("https://h.example/p#frag?x", true, "h.example", 443, "https://h.example/p"),
        ("https://[2001:DB8::1]/x?y", true, "2001:db8::1", 443, "https://[2001:DB8::1]/x"),
        ("http://[::ffff:127.0.0.1]:81/", false, "::ffff:127.0.0.1", 81, "http://[::ffff:127.0.0.1]:81/"),
    ] as [(String, Bool, String, Int, String)])
    func parsedURLs(url: String, https: Bool, host: String, port: Int, redacted: String) throws {
        let parsed = try #require(WebhookURL(url))
        #expect(parsed.url == url)
        #expect(parsed.isHTTPS == https)
        #expect(parsed.host == host)
        #expect(parsed.port == port)
        #expect(parsed.redacted == redacted)
    }

    // MARK: address classes

    /// The edges of each refused IPv4 range, and the global addresses just outside them.
    @Test(arguments: [
        ("9.255.255.255", AddressClass.global), ("10.0.0.0", .private), ("10.255.255.255", .private), ("11.0.0.0", .global),
        ("126.255.255.255", .global), ("127.0.0.0", .loopback), ("128.0.0.0", .global),
        ("172.15.255.255", .global), ("172.16.0.0", .private), ("172.31.255.255", .private), ("172.32.0.0", .global),
        ("192.167.255.255", .global), ("192.168.0.0", .private), ("192.169.0.0", .global),
        ("100.63.255.255", .global), ("100.64.0.0", .private), ("100.127.255.255", .private), ("100.128.0.0", .global),
        ("169.253.255.255", .global), ("169.254.0.0", .linkLocal), ("169.255.0.0", .global),
        ("0.255.255.255", .unspecified), ("1.0.0.0", .global),
        ("223.255.255.255", .global), ("224.0.0.0", .multicast), ("239.255.255.255", .multicast), ("240.0.0.0", .reserved),
    ])
    func ipv4Edges(address: String, kind: AddressClass) {
        #expect(AddressClass.of(numeric: address) == kind)
    }

    /// IPv6: unique local, link-local and the old site-local ranges at their edges, and IPv4
    /// inside IPv6 (mapped, and the deprecated compatible form, in which `::2` is 0.0.0.2)
    /// judged by its IPv4 address.
    @Test(arguments: [
        ("fbff::1", AddressClass.global), ("fc00::", .private), ("fdff:ffff::1", .private), ("fe00::1", .global),
        ("fe80::", .linkLocal), ("febf:ffff::1", .linkLocal), ("fec0::1", .private), ("feff::1", .private),
        ("ff00::", .multicast), ("::2", .unspecified), ("::10.1.2.3", .private), ("::127.0.0.1", .loopback),
        ("::ffff:169.254.169.254", .linkLocal), ("::ffff:0.0.0.0", .unspecified), ("2001:db8::1", .global),
        ("[fc00::1]", .private),
    ])
    func ipv6Edges(address: String, kind: AddressClass) {
        #expect(AddressClass.of(numeric: address) == kind)
    }

    /// Only global addresses are allowed by default.
    @Test func onlyGlobalIsAllowed() {
        let all: [AddressClass] = [.global, .unspecified, .loopback, .private, .linkLocal, .multicast, .reserved]
        #expect(all.filter { !$0.isRefusedByDefault } == [.global])
    }

    // MARK: policy

    /// Host names the resolver was asked for, with their ports.
    final class Resolver: Sendable {
        let asked = Mutex<[String]>([])
        let answer: Result<[ResolvedAddress], TargetPolicy.ResolveError>
        init(_ answer: Result<[ResolvedAddress], TargetPolicy.ResolveError>) { self.answer = answer }
        var resolve: @Sendable (String, Int) -> Result<[ResolvedAddress], TargetPolicy.ResolveError> {
            { host, port in
                self.asked.withLock { $0.append("\(host):\(port)") }
                return self.answer
            }
        }
    }

    /// Loopback names are refused and numeric hosts judged without asking the resolver; a
    /// name is resolved lower-cased with its port.
    @Test func whatIsResolved() async throws {
        let resolver = Resolver(.success([ResolvedAddress(text: "93.184.216.34", kind: .global)]))
        let policy = TargetPolicy(allowPrivate: false, resolve: resolver.resolve)
        for url in ["http://localhost/", "http://LOCALHOST:8080/", "https://api.localhost/", "http://a.b.localhost/"] {
            guard case .refused(let reason, let message) = await policy.check(try #require(WebhookURL(url))) else {
                Issue.record("\(url) not refused")
                continue
            }
            #expect(reason == "private_target")
            #expect(message.hasSuffix("is a loopback name"))
        }
        #expect(await policy.check(try #require(WebhookURL("http://93.184.216.34/"))) == .allowed)
        #expect(await policy.check(try #require(WebhookURL("http://[2001:db8::1]/"))) == .allowed)
        #expect(resolver.asked.withLock { $0 }.isEmpty)
        #expect(await policy.check(try #require(WebhookURL("https://Hooks.Example/x"))) == .allowed)
        #expect(await policy.check(try #require(WebhookURL("http://hooks.example:8080/x"))) == .allowed)
        #expect(resolver.asked.withLock { $0 } == ["hooks.example:443", "hooks.example:8080"])
    }

    /// With private targets allowed nothing is resolved or refused, loopback names included.
    @Test func allowPrivateChecksNothing() async throws {
        let resolver = Resolver(.failure(.init("unreachable")))
        let policy = TargetPolicy(allowPrivate: true, resolve: resolver.resolve)
        for url in ["http://localhost/", "http://10.0.0.1/", "https://nowhere.example/"] {
            #expect(await policy.check(try #require(WebhookURL(url))) == .allowed, "\(url)")
        }
        #expect(resolver.asked.withLock { $0 }.isEmpty)
    }

    /// A name that resolves to no address is a failed attempt (DNS may recover), not a refusal;
    /// a refusal names the offending address and its class.
    @Test func emptyAnswersAndRefusalMessages() async throws {
        let empty = TargetPolicy(allowPrivate: false, resolve: Resolver(.success([])).resolve)
        #expect(await empty.check(try #require(WebhookURL("https://void.example/"))) == .unresolved("void.example resolves to no address"))

        let metadata = TargetPolicy(allowPrivate: false, resolve: Resolver(.success([
            ResolvedAddress(text: "93.184.216.34", kind: .global), ResolvedAddress(text: "169.254.169.254", kind: .linkLocal),
        ])).resolve)
        #expect(await metadata.check(try #require(WebhookURL("https://meta.example/"))) == .refused(
            reason: "private_target",
            message: "meta.example resolves to 169.254.169.254, a link_local address (webhooks.allow_private_targets is false)"))

        let failing = TargetPolicy(allowPrivate: false, resolve: Resolver(.failure(.init("Name or service not known"))).resolve)
        #expect(await failing.check(try #require(WebhookURL("https://nowhere.example/")))
            == .unresolved("nowhere.example does not resolve: Name or service not known"))
    }

    /// Shorthand, decimal and hexadecimal spellings of 127.0.0.1 are not numeric to the
    /// policy, but the system resolver reads them as the loopback address (no DNS query), so
    /// they are refused all the same.
    @Test(arguments: ["http://127.1/", "http://2130706433/", "http://0x7f.1/", "http://017700000001/"])
    func obfuscatedLoopbackIsRefused(url: String) async throws {
        let parsed = try #require(WebhookURL(url))
        #expect(AddressClass.of(numeric: parsed.host) == nil)
        let policy = TargetPolicy(allowPrivate: false)
        guard case .refused(let reason, let message) = await policy.check(parsed) else {
            Issue.record("\(url) not refused")
            return
        }
        #expect(reason == "private_target")
        #expect(message.contains("127.0.0.1, a loopback address"), "\(message)")
    }
}
