import Foundation

/// AMQP basic properties. `nil` means "not set".
public struct AMQPProperties: Sendable, Hashable {
    public var contentType: String?
    public var contentEncoding: String?
    public var headers: AMQPTable?
    /// 1 = transient, 2 = persistent.
    public var deliveryMode: UInt8?
    public var priority: UInt8?
    public var correlationID: String?
    public var replyTo: String?
    /// Per-message TTL in milliseconds, as a decimal string (AMQP's own convention).
    public var expiration: String?
    public var messageID: String?
    /// Whole seconds.
    public var timestamp: Date?
    public var type: String?
    public var userID: String?
    public var appID: String?

    public init(contentType: String? = nil, contentEncoding: String? = nil,
                headers: AMQPTable? = nil, deliveryMode: UInt8? = nil, priority: UInt8? = nil,
                correlationID: String? = nil, replyTo: String? = nil, expiration: String? = nil,
                messageID: String? = nil, timestamp: Date? = nil, type: String? = nil,
                userID: String? = nil, appID: String? = nil) {
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.headers = headers
        self.deliveryMode = deliveryMode
        self.priority = priority
        self.correlationID = correlationID
        self.replyTo = replyTo
        self.expiration = expiration
        self.messageID = messageID
        self.timestamp = timestamp
        self.type = type
        self.userID = userID
        self.appID = appID
    }

    public static let persistent = AMQPProperties(deliveryMode: 2)
}

/// A message delivered to a consumer (`basic.deliver`) or fetched with `basic.get`.
public struct AMQPDelivery: Sendable, Hashable {
    /// The channel it arrived on; ack it on the same channel.
    public var channel: UInt16
    public var deliveryTag: UInt64
    public var redelivered: Bool
    public var exchange: String
    public var routingKey: String
    /// Empty for `basic.get`.
    public var consumerTag: String
    public var properties: AMQPProperties
    public var body: [UInt8]
    /// Messages left in the queue; only for `basic.get`.
    public var messageCount: UInt32?
}

/// A mandatory message the broker could not route (`basic.return` + its content).
public struct AMQPReturnedMessage: Sendable, Hashable {
    public var channel: UInt16
    public var replyCode: UInt16
    public var replyText: String
    public var exchange: String
    public var routingKey: String
    public var properties: AMQPProperties
    public var body: [UInt8]
}

/// The broker's verdict on one published message (per delivery tag; `multiple` already expanded).
public struct AMQPConfirm: Sendable, Hashable {
    public var channel: UInt16
    public var deliveryTag: UInt64
    public var acked: Bool
}

/// Confirms collected by `waitForConfirms`.
public struct AMQPConfirmResult: Sendable, Hashable {
    public var acked: [UInt64]
    public var nacked: [UInt64]
    public init(acked: [UInt64] = [], nacked: [UInt64] = []) {
        self.acked = acked
        self.nacked = nacked
    }
    public var allAcked: Bool { nacked.isEmpty }
}

/// Something the broker sent asynchronously.
public enum AMQPEvent: Sendable, Hashable {
    case delivery(AMQPDelivery)
    case confirm(AMQPConfirm)
    case returned(AMQPReturnedMessage)
    /// The broker cancelled a consumer (queue deleted, node down, ...).
    case consumerCancelled(channel: UInt16, consumerTag: String)
    /// The broker closed a channel; the connection is still usable.
    case channelClosed(channel: UInt16, error: AMQPError)
}

/// Exchange kinds; any other string works too (e.g. "x-consistent-hash").
public struct AMQPExchangeType: Sendable, Hashable, ExpressibleByStringLiteral {
    public let rawValue: String
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { rawValue = value }
    public static let direct = AMQPExchangeType("direct")
    public static let fanout = AMQPExchangeType("fanout")
    public static let topic = AMQPExchangeType("topic")
    public static let headers = AMQPExchangeType("headers")
}

/// Result of `queue.declare`.
public struct AMQPQueueInfo: Sendable, Hashable {
    public var name: String
    public var messageCount: UInt32
    public var consumerCount: UInt32
}

/// A message to publish, for `BlockingConnection.publishBatch`.
public struct AMQPOutgoingMessage: Sendable {
    public var exchange: String
    public var routingKey: String
    public var body: [UInt8]
    public var properties: AMQPProperties

    public init(exchange: String, routingKey: String, body: [UInt8], properties: AMQPProperties = AMQPProperties()) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.properties = properties
    }
}
