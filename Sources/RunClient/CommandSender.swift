import AMQPClient
import Foundation
import RunContract

/// What `RunClient.submit` returns: the command id used and, when the reply was awaited, the
/// worker's reply and its body as published.
public struct SendReceipt: Sendable, Hashable {
    public var commandID: String
    public var reply: CommandReply?
    public var replyBody: [UInt8]?
}

/// The sending side, on its own connection thread: one channel with publisher confirms and a
/// direct reply-to consumer (`amq.rabbitmq.reply-to`, no-ack, started before any publish on the
/// same channel, as RabbitMQ requires). Outgoing commands wait here until confirmed, then (when
/// awaited) until their reply arrives, matched by `correlation_id`. A lost connection keeps
/// them: after reconnecting they are published again, with the same command id, so the worker
/// applies each once and answers a repeat with the first outcome.
final class CommandSender: ConnectionHandler, @unchecked Sendable {
    static let replyTo = "amq.rabbitmq.reply-to"

    struct Outgoing: Sendable {
        var correlationID: String
        var commandID: String
        var exchange: String
        var routingKey: String
        var body: [UInt8]
        var awaitReply: Bool
        var deadline: Date
        var continuation: CheckedContinuation<SendReceipt, Error>
    }

    enum Job: Sendable {
        case send(Outgoing)
        case cancel(correlationID: String)
    }

    private struct Entry {
        var outgoing: Outgoing
        var sequence: Int
        var confirmed = false
        var returned = false
        var publishedOn: Int?  // connection generation
        var everPublished = false
    }

    private var entries: [String: Entry] = [:]
    private var nextSequence = 0
    /// Confirm delivery tags of the current connection → correlation id.
    private var tags: [UInt64: String] = [:]
    private var channel: UInt16 = 0
    private var generation = 0
    private var connected = false
    private var lastConnectError: AMQPError?

    var wantsConnection: Bool { !entries.isEmpty }
    var nextDeadline: Date? { entries.values.map(\.outgoing.deadline).min() }

    func connected(_ conn: BlockingConnection, reconnect: Bool) throws {
        channel = try conn.openChannel()
        try conn.confirmSelect(channel: channel)
        _ = try conn.consume(channel: channel, queue: Self.replyTo, noAck: true)
        generation += 1
        tags.removeAll()
        connected = true
        lastConnectError = nil
        // What was not settled on the lost connection goes out again, in the order it was sent.
        for e in entries.values.sorted(by: { $0.sequence < $1.sequence }) {
            try publish(e.outgoing.correlationID, conn)
        }
    }

    func connectFailed(_ error: AMQPError, failures: Int, everConnected: Bool) -> Bool {
        lastConnectError = error
        // Never connected yet: the URL, the credentials or the broker are wrong; say so now
        // rather than at each command's deadline.
        if !everConnected {
            for id in Array(entries.keys) {
                finish(id, .failure(RunClientError(.connectionFailed, "cannot connect to the broker: \(error.message)", underlying: error)))
            }
        }
        return true
    }

    func disconnected(_ error: AMQPError) {
        connected = false
        tags.removeAll()
        lastConnectError = error
        for id in Array(entries.keys) { entries[id]?.publishedOn = nil }
    }

    func perform(_ job: Job, conn: BlockingConnection?) throws {
        switch job {
        case .send(let o):
            entries[o.correlationID] = Entry(outgoing: o, sequence: nextSequence)
            nextSequence += 1
            if let conn, connected { try publish(o.correlationID, conn) }
        case .cancel(let id):
            finish(id, .failure(CancellationError()))
        }
    }

    private func publish(_ id: String, _ conn: BlockingConnection) throws {
        guard var e = entries[id] else { return }
        let o = e.outgoing
        var properties = AMQPProperties(contentType: "application/json", deliveryMode: 2, messageID: o.commandID)
        if o.awaitReply {
            properties.replyTo = Self.replyTo
            properties.correlationID = o.correlationID
        }
        e.confirmed = false
        e.returned = false
        e.publishedOn = generation
        e.everPublished = true
        entries[id] = e
        let tag = try conn.publish(channel: channel, exchange: o.exchange, routingKey: o.routingKey, body: o.body,
                                   properties: properties, mandatory: true)
        if let tag { tags[tag] = id }
    }

    func handle(_ event: AMQPEvent, conn: BlockingConnection) throws {
        switch event {
        case .confirm(let c) where c.channel == channel:
            guard let id = tags.removeValue(forKey: c.deliveryTag), var e = entries[id] else { return }
            if !c.acked {
                // A channel the broker closed nacks what it had not confirmed; the close that
                // follows says why (handled below).
                if !conn.isChannelOpen(channel) {
                    tags[c.deliveryTag] = id
                    return
                }
                finish(id, .failure(RunClientError(.notConfirmed, "the broker refused the command (nack)")))
            } else if e.returned {
                finish(id, .failure(RunClientError(
                    .unroutable,
                    "no queue is bound to \(e.outgoing.exchange): is a runworker with this prefix running?")))
            } else if !e.outgoing.awaitReply {
                finish(id, .success(SendReceipt(commandID: e.outgoing.commandID, reply: nil, replyBody: nil)))
            } else {
                e.confirmed = true
                entries[id] = e
            }
        case .returned(let r) where r.channel == channel:
            // basic.return comes before the confirm of the same message.
            if let id = r.properties.correlationID ?? entries.first(where: { $0.value.outgoing.commandID == r.properties.messageID })?.key {
                entries[id]?.returned = true
            }
        case .delivery(let d) where d.channel == channel:
            guard let id = d.properties.correlationID, let e = entries[id], e.outgoing.awaitReply else { return }
            do {
                let reply = try CommandReply.decode(d.body)
                finish(id, .success(SendReceipt(commandID: e.outgoing.commandID, reply: reply, replyBody: d.body)))
            } catch {
                finish(id, .failure(RunClientError(.malformedReply, "the reply to \(e.outgoing.commandID) cannot be read: \(error)")))
            }
        case .channelClosed(let ch, let error) where ch == channel:
            if error.isNotFound {
                // The commands exchange does not exist: no worker with this prefix ever ran.
                for id in Set(tags.values) {
                    guard let e = entries[id] else { continue }
                    finish(id, .failure(RunClientError(
                        .unroutable, "\(e.outgoing.exchange) does not exist: is a runworker with this prefix running? (\(error.message))")))
                }
            }
            // Start over on a fresh connection (and channel); pending commands go out again.
            throw AMQPError(.connectionClosed, "the command channel was closed: \(error.message)")
        case .consumerCancelled(let ch, _) where ch == channel:
            throw AMQPError(.connectionClosed, "the reply consumer was cancelled")
        default:
            return
        }
    }

    func tick(now: Date) {
        for (id, e) in entries where e.outgoing.deadline <= now {
            let o = e.outgoing
            let message =
                if !e.everPublished {
                    "\(o.commandID) not sent: no connection to the broker (\(lastConnectError?.message ?? "connecting"))"
                } else if o.awaitReply {
                    "no reply to \(o.commandID) in time (is a worker running?); the command may still be applied"
                } else {
                    "the broker did not confirm \(o.commandID) in time"
                }
            finish(id, .failure(RunClientError(.timedOut, message)))
        }
    }

    func stopped() {
        for id in Array(entries.keys) { finish(id, .failure(RunClientError(.closed, "the client was closed"))) }
    }

    private func finish(_ id: String, _ result: Result<SendReceipt, Error>) {
        guard let e = entries.removeValue(forKey: id) else { return }
        e.outgoing.continuation.resume(with: result)
    }
}
