import RunContract

/// Keeps one message that cannot be handled from blocking its partition forever: it counts
/// each message's failed or interrupted deliveries (durably, in the store) and dead-letters
/// the message once the count passes `deliveryLimit`. Pure: the driver records the counts
/// and performs the verdicts.
struct PoisonGuard: Sendable, Equatable {
    enum Verdict: Sendable, Equatable {
        case apply
        /// Publish to `<prefix>.dead` with `x-delivery-attempts` = `attempts`, then ack.
        case deadLetter(attempts: Int)
        /// Give it (and what follows it) back to the queue, after this pause.
        case requeue(pauseSeconds: Double)
    }

    let deliveryLimit: Int

    /// A redelivered message (its worker may have died on it): `attempts` counts this delivery.
    func redelivered(attempts: Int) -> Verdict {
        attempts > deliveryLimit ? .deadLetter(attempts: attempts - 1) : .apply
    }

    /// Handling failed; `failures` is the count so far, this one included. Requeued messages
    /// wait a pause that grows with the failures: never a hot loop on one message.
    func failed(failures: Int) -> Verdict {
        failures >= deliveryLimit ? .deadLetter(attempts: failures) : .requeue(pauseSeconds: min(0.1 * Double(failures), 1))
    }

    /// Identifies a message across deliveries: its command id when it has one, else a hash
    /// of its routing key and body.
    static func messageKey(routingKey: String, messageID: String?, body: [UInt8]) -> String {
        if let id = messageID, !id.isEmpty { return "id:\(routingKey):\(id)" }
        var h = FNV1a()
        h.combine(routingKey.utf8)
        h.combine(body)
        return "hash:\(String(h.value, radix: 16))"
    }
}
