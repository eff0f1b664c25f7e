/// The names the worker declares, all derived from one prefix (contract "Topology").
public struct Topology: Sendable, Equatable {
    /// The commands exchange's type; see `commandsExchange`.
    public static let commandsExchangeType = "x-modulus-hash"

    public var prefix: String
    public var partitions: Int

    public init(prefix: String = "runs", partitions: Int = 8) {
        self.prefix = prefix
        self.partitions = partitions
    }

    /// Producers publish here with routing key = run id. An `x-modulus-hash` exchange (plugin
    /// rabbitmq_sharding): hash(routing key) mod the number of bound queues, over the bound
    /// queues in sorted order, so a run id always lands in the same partition, whatever the
    /// order of binding and across broker restarts. (The consistent-hash exchange of 3.10
    /// rebuilds its ring on restart and moved 168 of 200 run ids in our test.)
    public var commandsExchange: String { "\(prefix).commands" }
    /// Topic exchange, routing key `run.<run_id>.<event_type>`.
    public var eventsExchange: String { "\(prefix).events" }
    /// Exchange and queue of messages that can never be applied.
    public var deadExchange: String { "\(prefix).dead" }
    public var deadQueue: String { "\(prefix).dead" }
    /// Every live worker consumes this queue; its consumer count is the number of workers,
    /// from which each derives its fair share of partitions.
    public var presenceQueue: String { "\(prefix).workers" }

    public func partitionQueue(_ index: Int) -> String { "\(prefix).commands.\(index)" }
    public var partitionQueues: [String] { (0..<partitions).map(partitionQueue) }
}
