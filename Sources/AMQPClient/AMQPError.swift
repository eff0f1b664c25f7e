/// An error from the AMQP layer. Match on `code`; for broker-side refusals `replyCode` holds the
/// AMQP reply code (406 PRECONDITION_FAILED, 404 NOT_FOUND, ...).
///
/// `description` holds no credentials; the broker's reply text is in `message`.
public struct AMQPError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, extensible: new codes can be added without breaking `switch`-free matching.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The URL could not be parsed or holds an invalid value.
        public static let invalidURL = Code("invalidURL")
        /// An argument was out of range or otherwise unusable.
        public static let invalidArgument = Code("invalidArgument")
        /// Nothing listens at the host and port (or the host is unreachable).
        public static let connectionRefused = Code("connectionRefused")
        /// The host name could not be resolved.
        public static let hostNotFound = Code("hostNotFound")
        /// The broker refused the credentials (ACCESS_REFUSED during login).
        public static let authenticationFailed = Code("authenticationFailed")
        /// The broker refused access to the virtual host.
        public static let accessRefused = Code("accessRefused")
        /// An operation did not complete in time.
        public static let timeout = Code("timeout")
        /// The connection is closed or was lost (broker closed it, socket error, heartbeat missed).
        public static let connectionClosed = Code("connectionClosed")
        /// The channel was closed by the broker (see `replyCode`) or is not open.
        public static let channelClosed = Code("channelClosed")
        /// TLS setup, handshake or verification failed.
        public static let tlsError = Code("tlsError")
        /// The peer sent something this client did not expect.
        public static let protocolError = Code("protocolError")
        /// A socket-level error.
        public static let socketError = Code("socketError")
        /// Publisher confirms are not enabled on the channel.
        public static let confirmsNotEnabled = Code("confirmsNotEnabled")
    }

    public var code: Code
    /// The broker's reply code, when the broker closed a channel or the connection.
    public var replyCode: UInt16?
    /// Human-readable detail (library status text or the broker's reply text).
    public var message: String
    /// AMQP class id and method id of the method that failed, when the broker said so.
    public var classID: UInt16?
    public var methodID: UInt16?
    /// The channel concerned, for channel-level errors.
    public var channel: UInt16?

    public init(_ code: Code, _ message: String, replyCode: UInt16? = nil,
                classID: UInt16? = nil, methodID: UInt16? = nil, channel: UInt16? = nil) {
        self.code = code
        self.message = message
        self.replyCode = replyCode
        self.classID = classID
        self.methodID = methodID
        self.channel = channel
    }

    public var isPreconditionFailed: Bool { replyCode == 406 }
    public var isNotFound: Bool { replyCode == 404 }
    public var isAccessRefused: Bool { replyCode == 403 }
    public var isResourceLocked: Bool { replyCode == 405 }
    public var isConnectionForced: Bool { replyCode == 320 }
    /// True when the connection is unusable afterwards.
    public var isConnectionLevel: Bool {
        code == .connectionClosed || code == .socketError || code == .authenticationFailed
            || code == .connectionRefused || code == .tlsError
    }

    /// The failed method as "class.method" when known, e.g. "queue.declare".
    public var failedMethod: String? {
        guard let c = classID, let m = methodID else { return nil }
        return AMQPError.methodName(classID: c, methodID: m)
    }

    public var description: String {
        var s = "AMQPError(\(code)"
        if let r = replyCode { s += ", reply \(r)" }
        if let ch = channel { s += ", channel \(ch)" }
        if let m = failedMethod { s += ", in \(m)" }
        s += "): \(message)"
        return s
    }

    static func methodName(classID: UInt16, methodID: UInt16) -> String {
        let classes: [UInt16: (String, [UInt16: String])] = [
            10: ("connection", [10: "start", 11: "start-ok", 40: "open", 50: "close"]),
            20: ("channel", [10: "open", 20: "flow", 40: "close"]),
            40: ("exchange", [10: "declare", 20: "delete", 30: "bind", 40: "unbind"]),
            50: ("queue", [10: "declare", 20: "bind", 30: "purge", 40: "delete", 50: "unbind"]),
            60: ("basic", [10: "qos", 20: "consume", 30: "cancel", 40: "publish", 70: "get",
                           80: "ack", 90: "reject", 110: "recover", 120: "nack"]),
            85: ("confirm", [10: "select"]),
            90: ("tx", [10: "select", 20: "commit", 30: "rollback"]),
        ]
        guard let (cn, methods) = classes[classID] else { return "\(classID).\(methodID)" }
        return "\(cn).\(methods[methodID] ?? String(methodID))"
    }
}
