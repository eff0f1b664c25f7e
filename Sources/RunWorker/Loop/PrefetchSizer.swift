/// Sizes each partition consumer's prefetch by bytes. RabbitMQ counts prefetch in messages
/// (it does not implement `prefetch_size`), so a count that suits 300-byte commands lets 2 048
/// deliveries of 200 KB into the worker at once. The sizer divides the deliveries' share of the
/// memory budget among the consumers by a size it expects of the next bodies, between `floor`
/// and the configured prefetch. Pure: the driver feeds the sizes in and applies the counts
/// (`basic.qos`, then the consumer is started again, since RabbitMQ applies a consumer's
/// prefetch only when it starts).
///
/// The expected size is cautious: it starts at the largest body allowed, rises at once to a
/// larger body and falls back slowly (a 256th of the difference per body). A count once given
/// is only taken back by deliveries the broker has already sent, which the worker must read
/// through to stop the consumer, so the sizer errs low and widens once small bodies are seen
/// (about 900 of them take it from 1 MiB to full prefetch).
struct PrefetchSizer: Sendable, Equatable {
    /// Bytes the deliveries read but not yet applied may take, all consumers together.
    let shareBytes: Int
    /// The configured prefetch: the most any consumer gets.
    let ceiling: Int
    /// The fewest a consumer gets, so that batches stay more than a message long.
    let floor: Int
    /// The body size the counts are made for.
    private(set) var expectedBytes: Double

    init(shareBytes: Int, ceiling: Int, largestBody: Int, floor: Int = 4) {
        self.shareBytes = shareBytes
        self.ceiling = max(1, ceiling)
        self.floor = min(max(1, floor), self.ceiling)
        expectedBytes = Double(max(1, largestBody))
    }

    mutating func observe(bodyBytes: Int) {
        let b = Double(max(bodyBytes, 1))
        expectedBytes = b >= expectedBytes ? b : expectedBytes + (b - expectedBytes) / 256
    }

    /// The prefetch for each of `consumers` consumers: the share divided among them by the
    /// expected body, rounded down to a power of two (so that a drifting size does not restart
    /// consumers over and over), within `floor...ceiling`.
    func prefetch(consumers: Int) -> Int {
        let fits = Double(shareBytes) / (Double(max(1, consumers)) * expectedBytes)
        guard fits < Double(ceiling) else { return ceiling }
        var p = 1
        while Double(p * 2) <= fits { p *= 2 }
        return min(ceiling, max(floor, p))
    }

    /// Whether a consumer at `current` should be started again at `wanted`: only when they are
    /// at least a factor of two apart.
    static func worthChanging(from current: Int, to wanted: Int) -> Bool {
        wanted * 2 <= current || wanted >= current * 2
    }
}
