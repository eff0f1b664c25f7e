/// Sizes each partition consumer's prefetch by bytes. RabbitMQ counts prefetch in messages
/// (it does not implement `prefetch_size`), so a count that suits 300-byte commands lets 2 048
/// deliveries of 200 KB into the worker at once. The sizer keeps a moving average of the bodies
/// delivered and gives each consumer as many deliveries as its part of the share allows,
/// between `floor` and the configured prefetch. Pure: the driver feeds the sizes in and applies
/// the counts (`basic.qos`, then the consumer is started again, since RabbitMQ applies a
/// consumer's prefetch only when it starts).
struct PrefetchSizer: Sendable, Equatable {
    /// Bytes the deliveries read but not yet applied may take, all consumers together.
    let shareBytes: Int
    /// The configured prefetch: the most any consumer gets.
    let ceiling: Int
    /// The fewest a consumer gets, so that batches stay more than a message long.
    let floor: Int
    /// The moving average of body sizes (1/64 weight to each new body); nil before the first.
    private(set) var averageBytes: Double?

    init(shareBytes: Int, ceiling: Int, floor: Int = 4) {
        self.shareBytes = shareBytes
        self.ceiling = max(1, ceiling)
        self.floor = min(max(1, floor), self.ceiling)
    }

    mutating func observe(bodyBytes: Int) {
        let b = Double(max(bodyBytes, 1))
        averageBytes = averageBytes.map { $0 + (b - $0) / 64 } ?? b
    }

    /// The prefetch for each of `consumers` consumers: the share divided among them by the
    /// average body, rounded down to a power of two (so that a drifting average does not
    /// restart consumers over and over), within `floor...ceiling`.
    func prefetch(consumers: Int) -> Int {
        guard let average = averageBytes else { return ceiling }
        let fits = Double(shareBytes) / (Double(max(1, consumers)) * average)
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
