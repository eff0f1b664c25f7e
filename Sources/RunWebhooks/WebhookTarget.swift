import Foundation
import RunContract

#if canImport(Glibc)
import Glibc
#endif

/// A webhook URL taken apart: scheme, host (IPv6 without brackets) and port.
public struct WebhookURL: Sendable, Hashable {
    public var url: String
    public var isHTTPS: Bool
    public var host: String
    public var port: Int

    /// Nil unless `WebhookConfig.isValidURL` accepts it.
    public init?(_ url: String) {
        guard WebhookConfig.isValidURL(url) else { return nil }
        self.url = url
        isHTTPS = url.lowercased().hasPrefix("https://")
        let rest = url.dropFirst(isHTTPS ? 8 : 7)
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        var port: Int?
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { port = Int(after.dropFirst()) }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            port = Int(authority[authority.index(after: colon)...])
        } else {
            host = String(authority)
        }
        host = host.lowercased()
        self.port = port ?? (isHTTPS ? 443 : 80)
    }

    /// Scheme, host, port and path, without the query (which may carry a token), for logs.
    public var redacted: String {
        let cut = url.firstIndex { $0 == "?" || $0 == "#" } ?? url.endIndex
        return String(url[..<cut])
    }
}

/// Where a resolved address points, for the private-target rule.
public enum AddressClass: String, Sendable, Hashable {
    case global
    case unspecified, loopback, `private`, linkLocal = "link_local", multicast, reserved

    /// Loopback, private (RFC 1918, CGNAT 100.64/10, fc00::/7), link-local (169.254/16,
    /// fe80::/10), unspecified (0.0.0.0/8, ::), multicast and reserved (240/4) addresses: what a
    /// webhook may not reach unless `webhooks.allow_private_targets`.
    public var isRefusedByDefault: Bool { self != .global }

    /// An IPv4 address, 4 bytes in network order.
    public static func ipv4(_ a: [UInt8]) -> AddressClass {
        precondition(a.count == 4)
        switch (a[0], a[1]) {
        case (0, _): return .unspecified
        case (127, _): return .loopback
        case (10, _): return .private
        case (172, 16...31): return .private
        case (192, 168): return .private
        case (100, 64...127): return .private
        case (169, 254): return .linkLocal
        case (224...239, _): return .multicast
        case (240...255, _): return .reserved
        default: return .global
        }
    }

    /// An IPv6 address, 16 bytes in network order. IPv4-mapped (::ffff:a.b.c.d) and
    /// IPv4-compatible forms are judged by their IPv4 address.
    public static func ipv6(_ a: [UInt8]) -> AddressClass {
        precondition(a.count == 16)
        let head = a[0..<10]
        if head.allSatisfy({ $0 == 0 }) {
            if a[10] == 0xFF && a[11] == 0xFF { return ipv4(Array(a[12..<16])) }
            if a[10] == 0 && a[11] == 0 {
                if a[12..<15].allSatisfy({ $0 == 0 }) {
                    if a[15] == 0 { return .unspecified }
                    if a[15] == 1 { return .loopback }
                }
                return ipv4(Array(a[12..<16]))  // deprecated IPv4-compatible ::a.b.c.d
            }
        }
        if a[0] & 0xFE == 0xFC { return .private }  // fc00::/7 unique local
        if a[0] == 0xFE && a[1] & 0xC0 == 0x80 { return .linkLocal }  // fe80::/10
        if a[0] == 0xFE && a[1] & 0xC0 == 0xC0 { return .private }  // fec0::/10, old site-local
        if a[0] == 0xFF { return .multicast }
        return .global
    }

    /// The class of a numeric address (`10.0.0.1`, `::1`, `[fe80::1]`); nil when it is not one.
    public static func of(numeric text: String) -> AddressClass? {
        var host = text
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { ipv4(Array($0)) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { ipv6(Array($0)) }
        }
        return nil
    }
}

/// A resolved address of a webhook host, printable and classified.
public struct ResolvedAddress: Sendable, Hashable, CustomStringConvertible {
    public var text: String
    public var kind: AddressClass
    public var description: String { text }
}

/// The outcome of checking a webhook URL before a POST.
public enum TargetCheck: Sendable, Equatable {
    case allowed
    /// Never POSTed to: the reason label and a message for the log.
    case refused(reason: String, message: String)
    /// The host did not resolve: a failed attempt (DNS can recover), not a refusal.
    case unresolved(String)
}

/// Resolves webhook hosts and applies the private-target rule. A host is refused when ANY of
/// its addresses is not global (a name with a public and a private address could be steered to
/// the private one). The HTTP client resolves the name again when it connects, so a name whose
/// answers change between the two (DNS rebinding) is not fully covered: a receiver that needs
/// that guarantee should sit behind an egress proxy.
public struct TargetPolicy: Sendable {
    public var allowPrivate: Bool
    /// Host name to addresses; blocking (getaddrinfo), so it is called off the cooperative pool.
    public var resolve: @Sendable (String, Int) -> Result<[ResolvedAddress], ResolveError>

    public struct ResolveError: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    public init(
        allowPrivate: Bool,
        resolve: @escaping @Sendable (String, Int) -> Result<[ResolvedAddress], ResolveError> = TargetPolicy.getaddrinfo
    ) {
        self.allowPrivate = allowPrivate
        self.resolve = resolve
    }

    /// Checks `url` (already valid by the contract's rules).
    public func check(_ url: WebhookURL) async -> TargetCheck {
        if allowPrivate { return .allowed }
        if url.host == "localhost" || url.host.hasSuffix(".localhost") {
            return .refused(reason: "private_target", message: "\(url.host) is a loopback name")
        }
        let addresses: [ResolvedAddress]
        if let kind = AddressClass.of(numeric: url.host) {
            addresses = [ResolvedAddress(text: url.host, kind: kind)]
        } else {
            let resolve = self.resolve
            let host = url.host
            let port = url.port
            let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<[ResolvedAddress], ResolveError>, Never>) in
                DispatchQueue.global().async { continuation.resume(returning: resolve(host, port)) }
            }
            switch result {
            case .success(let a): addresses = a
            case .failure(let e): return .unresolved("\(url.host) does not resolve: \(e)")
            }
        }
        guard !addresses.isEmpty else { return .unresolved("\(url.host) resolves to no address") }
        if let bad = addresses.first(where: { $0.kind.isRefusedByDefault }) {
            return .refused(
                reason: "private_target",
                message: "\(url.host) resolves to \(bad.text), a \(bad.kind.rawValue) address (webhooks.allow_private_targets is false)")
        }
        return .allowed
    }

    /// A NUL-terminated C buffer as text.
    private static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The system resolver: every TCP address of `host`.
    public static func getaddrinfo(_ host: String, _ port: Int) -> Result<[ResolvedAddress], ResolveError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = Glibc.getaddrinfo(host, String(port), &hints, &list)
        guard status == 0 else { return .failure(ResolveError(String(cString: gai_strerror(status)))) }
        defer { freeaddrinfo(list) }
        var out: [ResolvedAddress] = []
        var p = list
        while let info = p {
            defer { p = info.pointee.ai_next }
            guard let sa = info.pointee.ai_addr else { continue }
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            switch Int32(sa.pointee.sa_family) {
            case AF_INET:
                var a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                inet_ntop(AF_INET, &a, &buffer, socklen_t(buffer.count))
                let kind = withUnsafeBytes(of: &a) { AddressClass.ipv4(Array($0)) }
                out.append(ResolvedAddress(text: Self.text(buffer), kind: kind))
            case AF_INET6:
                var a = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                inet_ntop(AF_INET6, &a, &buffer, socklen_t(buffer.count))
                let kind = withUnsafeBytes(of: &a) { AddressClass.ipv6(Array($0)) }
                out.append(ResolvedAddress(text: Self.text(buffer), kind: kind))
            default:
                continue
            }
        }
        return .success(out)
    }
}
