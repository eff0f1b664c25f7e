import AMQPClient
import Foundation

/// Where the worker is and how patient the client is.
public struct RunClientConfiguration: Sendable {
    /// The broker (heartbeat, TLS, ... from the `amqp://` URL).
    public var amqp: AMQPConfiguration
    /// The worker's prefix: commands go to `<prefix>.commands`, events come from `<prefix>.events`.
    public var prefix: String
    /// Default bound of `send` when it awaits the reply (confirm and reply together), seconds.
    public var replyTimeout: Double
    /// Bound of a `send` that does not await the reply (the broker's confirm), seconds.
    public var confirmTimeout: Double
    public var reconnect: ReconnectPolicy
    /// Base URL of a worker's HTTP API (`http://host:port`). When set, a subscription reads the
    /// events it missed (a gap, a reconnect) back from `GET /v1/runs/{id}/events?after_seq=`
    /// instead of reporting a gap.
    public var historyURL: String?
    /// Bearer token of that API.
    public var historyToken: String?

    public init(amqp: AMQPConfiguration, prefix: String = "runs", replyTimeout: Double = 15, confirmTimeout: Double = 10,
                reconnect: ReconnectPolicy = ReconnectPolicy(), historyURL: String? = nil, historyToken: String? = nil) {
        self.amqp = amqp
        self.prefix = prefix
        self.replyTimeout = replyTimeout
        self.confirmTimeout = confirmTimeout
        self.reconnect = reconnect
        self.historyURL = historyURL
        self.historyToken = historyToken
    }

    /// Parses `url` (`amqp://` or `amqps://`); throws `AMQPError(.invalidURL)`.
    public init(url: String, prefix: String = "runs", replyTimeout: Double = 15, historyURL: String? = nil) throws {
        var amqp = try AMQPConfiguration(url: url)
        if amqp.connectionName == nil { amqp.connectionName = "RunClient" }
        self.init(amqp: amqp, prefix: prefix, replyTimeout: replyTimeout, historyURL: historyURL)
    }

    public var commandsExchange: String { "\(prefix).commands" }
    public var eventsExchange: String { "\(prefix).events" }
}

/// How a lost connection is re-established: exponential backoff from `initialDelay` up to
/// `maxDelay`, with jitter; `maxAttempts` failed attempts in a row end a subscription with the
/// last error (nil: retry for ever).
public struct ReconnectPolicy: Sendable, Hashable {
    public var initialDelay: Double
    public var maxDelay: Double
    public var maxAttempts: Int?

    public init(initialDelay: Double = 0.1, maxDelay: Double = 5, maxAttempts: Int? = nil) {
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.maxAttempts = maxAttempts
    }

    /// Seconds to wait after `failures` failed attempts in a row (0: the connection was just lost).
    public func delay(afterFailures failures: Int) -> Double {
        let base = min(maxDelay, initialDelay * pow(2, Double(min(failures, 30))))
        return base * Double.random(in: 0.8...1.2)
    }
}

/// A failure of the client itself (the transport), as opposed to the worker refusing a command
/// (that is a `RunError` with the contract's code).
public struct RunClientError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// No confirm or no reply in time. The command may still be applied: send it again with
        /// the same command id to learn its outcome (the worker answers a repeat with the first).
        public static let timedOut = Code("timedOut")
        /// Nothing is bound to the commands exchange: no worker with this prefix ever ran.
        public static let unroutable = Code("unroutable")
        /// The broker refused the message (a nack).
        public static let notConfirmed = Code("notConfirmed")
        /// The broker cannot be reached (see `underlying`).
        public static let connectionFailed = Code("connectionFailed")
        /// The client or the subscription was closed.
        public static let closed = Code("closed")
        /// The command cannot be sent (a run id outside the contract's grammar).
        public static let invalidCommand = Code("invalidCommand")
        /// The worker's reply could not be read.
        public static let malformedReply = Code("malformedReply")
    }

    public var code: Code
    public var message: String
    /// The AMQP error behind a connection failure.
    public var underlying: AMQPError?

    public init(_ code: Code, _ message: String, underlying: AMQPError? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String { "\(code): \(message)" }
}
