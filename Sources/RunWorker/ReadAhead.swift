/// Deliveries read from the broker but not yet applied, in arrival order, with their bodies'
/// bytes counted: the loop stops reading the connection while they fill the read-ahead share
/// of the memory budget. RabbitMQ counts prefetch in messages (it does not implement
/// `prefetch_size`), so 8 consumers at 256 could put 2 048 bodies of up to 1 MiB in memory;
/// what the broker sends while the loop does not read waits in the sockets' kernel buffers
/// and, past them, in the broker.
struct ReadAhead {
    private(set) var items: [Received] = []
    /// The bodies' bytes of `items`.
    private(set) var bytes = 0

    var isEmpty: Bool { items.isEmpty }
    var count: Int { items.count }

    mutating func append(_ r: Received) {
        items.append(r)
        bytes += r.command.body.count
    }

    /// The next batch, taken from the front: at most `count` deliveries and `bytes` of bodies
    /// (always at least one).
    mutating func takeBatch(count: Int, bytes limit: Int) -> [Received] {
        let n = Received.batchLength(items, count: count, bytes: limit)
        let batch = Array(items.prefix(n))
        items.removeFirst(n)
        bytes -= batch.reduce(0) { $0 + $1.command.body.count }
        return batch
    }

    /// Everything, emptying the buffer.
    mutating func takeAll() -> [Received] {
        defer { removeAll() }
        return items
    }

    /// Puts deliveries back at the front (a batch that must be applied again).
    mutating func putBack(_ batch: [Received]) {
        items.insert(contentsOf: batch, at: 0)
        bytes += batch.reduce(0) { $0 + $1.command.body.count }
    }

    mutating func removeAll() {
        items = []
        bytes = 0
    }

    mutating func removeAll(where drop: (Received) -> Bool) {
        items.removeAll(where: drop)
        bytes = items.reduce(0) { $0 + $1.command.body.count }
    }

    /// Whether the loop may read more from the connection when it does not have to: below
    /// `limit` bytes. Reading is never skipped when the loop waits for confirms or has nothing
    /// to apply; then what arrives ahead of the confirm is read too, so the bound is
    /// `limit` plus what one wait lets in, not a hard cap.
    func mayReadMore(limit: Int) -> Bool { bytes < limit }
}
