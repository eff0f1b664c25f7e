/// Published batches awaiting the broker's confirms. A batch completes (its deliveries may be
/// acked, its outbox rows deleted) only when every message of it is confirmed **and** every
/// earlier batch has completed: acks leave in the order the batches were applied.
///
/// Pure bookkeeping: the driver publishes, feeds the confirms in and performs what
/// `takeCompleted` returns.
struct ConfirmPipeline<Completion: Sendable>: Sendable {
    struct Nacked: Error, Equatable {
        var deliveryTag: UInt64
    }

    private struct Batch: Sendable {
        var tags: ClosedRange<UInt64>?
        var outstanding: Int
        var completion: Completion
    }

    /// Batches in flight at most; the driver stops applying while the pipeline is full.
    let depth: Int
    private var batches: [Batch] = []

    init(depth: Int) {
        precondition(depth >= 1)
        self.depth = depth
    }

    var isEmpty: Bool { batches.isEmpty }
    var isFull: Bool { batches.count >= depth }
    var count: Int { batches.count }
    /// The completions still waiting, oldest first.
    var pending: [Completion] { batches.map(\.completion) }

    /// A batch was published with these confirm tags (consecutive on one channel; empty for a
    /// batch that published nothing, which completes as soon as those before it do).
    mutating func published(tags: ClosedRange<UInt64>?, completion: Completion) {
        batches.append(Batch(tags: tags, outstanding: tags?.count ?? 0, completion: completion))
    }

    /// One confirm from the broker. A nack means the broker did not take a message: the
    /// caller must not ack anything after it and should start the session over (the outbox
    /// still holds the events; the deliveries are redelivered).
    mutating func confirmed(tag: UInt64, acked: Bool) throws(Nacked) {
        guard acked else { throw Nacked(deliveryTag: tag) }
        if let i = batches.firstIndex(where: { $0.tags?.contains(tag) ?? false }) {
            batches[i].outstanding -= 1
        }
    }

    /// The batches at the head that are fully confirmed, oldest first; they leave the pipeline.
    mutating func takeCompleted() -> [Completion] {
        let n = batches.prefix { $0.outstanding <= 0 }.count
        defer { batches.removeFirst(n) }
        return batches.prefix(n).map(\.completion)
    }

    /// Changes what the batches in flight will do once confirmed (a consumer channel closed
    /// meanwhile: its acks must not reach whatever reuses the channel number).
    mutating func updatePending(_ change: (inout Completion) -> Void) {
        for i in batches.indices { change(&batches[i].completion) }
    }

    /// The connection is gone: nothing in flight will be confirmed.
    mutating func reset() { batches = [] }
}
