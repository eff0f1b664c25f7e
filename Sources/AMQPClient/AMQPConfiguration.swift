import Foundation

/// Where and how to connect. Usually parsed from an `amqp://` or `amqps://` URL:
///
///     amqp://user:pass@host:5672/vhost?heartbeat=30&name=worker-1
///
/// Query parameters: `heartbeat` (seconds, default 60, 0 disables), `connection_timeout`
/// (seconds), `channel_max`, `frame_max`, `name` (connection name shown by the broker),
/// `cacertfile`, `certfile`, `keyfile`, `verify` (`true`/`false`, `verify_peer`/`verify_none`;
/// peer and hostname verification are on by default), `auth_mechanism` (`plain` or `external`).
///
/// `description` never contains the password.
public struct AMQPConfiguration: Sendable, Hashable, CustomStringConvertible {
    public enum AuthMechanism: String, Sendable, Hashable { case plain, external }

    public struct TLS: Sendable, Hashable {
        public var caCertificateFile: String?
        public var certificateFile: String?
        public var keyFile: String?
        /// Verify the broker's certificate chain and host name (default true).
        public var verifyPeer: Bool
        public init(caCertificateFile: String? = nil, certificateFile: String? = nil,
                    keyFile: String? = nil, verifyPeer: Bool = true) {
            self.caCertificateFile = caCertificateFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.verifyPeer = verifyPeer
        }
    }

    public var host: String
    public var port: Int
    public var user: String
    public var password: String
    public var vhost: String
    /// Heartbeat interval in seconds; 0 disables heartbeats.
    public var heartbeat: Int
    /// Timeout for the TCP connect, TLS and AMQP handshakes, in seconds.
    public var connectionTimeout: Double
    /// Timeout of synchronous RPCs (declare, bind, ...), in seconds. When it expires the
    /// library closes the socket, so keep it generous.
    public var rpcTimeout: Double
    /// 0 lets the broker choose.
    public var channelMax: Int
    public var frameMax: Int
    /// Connection name shown in the broker's management UI and `rabbitmqctl`.
    public var connectionName: String?
    /// Non-nil means TLS (`amqps`).
    public var tls: TLS?
    public var authMechanism: AuthMechanism

    public init(host: String = "127.0.0.1", port: Int? = nil, user: String = "guest",
                password: String = "guest", vhost: String = "/", heartbeat: Int = 60,
                connectionTimeout: Double = 10, rpcTimeout: Double = 30, channelMax: Int = 0,
                frameMax: Int = 131_072, connectionName: String? = nil, tls: TLS? = nil,
                authMechanism: AuthMechanism = .plain) {
        self.host = host
        self.port = port ?? (tls == nil ? 5672 : 5671)
        self.user = user
        self.password = password
        self.vhost = vhost
        self.heartbeat = heartbeat
        self.connectionTimeout = connectionTimeout
        self.rpcTimeout = rpcTimeout
        self.channelMax = channelMax
        self.frameMax = frameMax
        self.connectionName = connectionName
        self.tls = tls
        self.authMechanism = authMechanism
    }

    /// Parses an `amqp://` or `amqps://` URL.
    public init(url: String) throws {
        func bad(_ why: String) -> AMQPError { AMQPError(.invalidURL, why) }
        guard let comps = URLComponents(string: url) else { throw bad("not a URL") }
        let scheme = comps.scheme?.lowercased()
        guard scheme == "amqp" || scheme == "amqps" else {
            throw bad("scheme must be amqp or amqps")
        }
        self.init(tls: scheme == "amqps" ? TLS() : nil)
        if let h = comps.host, !h.isEmpty {
            // Bracketed IPv6 literals come back with brackets on some platforms.
            host = h.hasPrefix("[") && h.hasSuffix("]") ? String(h.dropFirst().dropLast()) : h
        }
        if let p = comps.port {
            guard (1...65535).contains(p) else { throw bad("port out of range") }
            port = p
        }
        if let u = comps.percentEncodedUser {
            guard let d = u.removingPercentEncoding else { throw bad("bad percent-encoding in user") }
            user = d
        }
        if let p = comps.percentEncodedPassword {
            guard let d = p.removingPercentEncoding else { throw bad("bad percent-encoding in password") }
            password = d
        }
        let path = comps.percentEncodedPath
        if path.isEmpty || path == "/" {
            vhost = "/"
        } else {
            let raw = path.dropFirst()
            guard !raw.contains("/") else { throw bad("vhost must be one path segment (encode / as %2f)") }
            guard let d = String(raw).removingPercentEncoding else { throw bad("bad percent-encoding in vhost") }
            vhost = d
        }
        for item in comps.queryItems ?? [] {
            let value = item.value ?? ""
            func int(_ range: ClosedRange<Int>) throws -> Int {
                guard let v = Int(value), range.contains(v) else {
                    throw bad("\(item.name) must be an integer in \(range.lowerBound)...\(range.upperBound)")
                }
                return v
            }
            switch item.name {
            case "heartbeat": heartbeat = try int(0...65535)
            case "connection_timeout":
                guard let v = Double(value), v > 0 else { throw bad("connection_timeout must be a positive number") }
                connectionTimeout = v
            case "channel_max": channelMax = try int(0...65535)
            case "frame_max": frameMax = try int(4096...Int(Int32.max))
            case "name": connectionName = value
            case "cacertfile", "certfile", "keyfile", "verify":
                guard tls != nil else { throw bad("\(item.name) needs an amqps:// URL") }
                switch item.name {
                case "cacertfile": tls!.caCertificateFile = value
                case "certfile": tls!.certificateFile = value
                case "keyfile": tls!.keyFile = value
                default:
                    switch value.lowercased() {
                    case "true", "1", "yes", "verify_peer": tls!.verifyPeer = true
                    case "false", "0", "no", "verify_none": tls!.verifyPeer = false
                    default: throw bad("verify must be true or false")
                    }
                }
            case "auth_mechanism":
                guard let m = AuthMechanism(rawValue: value.lowercased()) else {
                    throw bad("auth_mechanism must be plain or external")
                }
                authMechanism = m
            default:
                throw bad("unknown query parameter \(item.name)")
            }
        }
    }

    public var isTLS: Bool { tls != nil }

    public var description: String {
        var s = "\(isTLS ? "amqps" : "amqp")://\(user)@\(host):\(port)/"
        s += vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? vhost
        var q = ["heartbeat=\(heartbeat)", "connection_timeout=\(connectionTimeout)"]
        if channelMax != 0 { q.append("channel_max=\(channelMax)") }
        q.append("frame_max=\(frameMax)")
        if let n = connectionName { q.append("name=\(n)") }
        if let t = tls {
            if let c = t.caCertificateFile { q.append("cacertfile=\(c)") }
            if let c = t.certificateFile { q.append("certfile=\(c)") }
            if let k = t.keyFile { q.append("keyfile=\(k)") }
            q.append("verify=\(t.verifyPeer)")
        }
        if authMechanism == .external { q.append("auth_mechanism=external") }
        return s + "?" + q.joined(separator: "&")
    }
}
