import AMQPClient
import Foundation

/// The names the worker declares, all derived from one prefix (contract "Topology"), and the
/// arguments its queues are declared with.
public struct Topology: Sendable, Equatable {
    /// The commands exchange's type; see `commandsExchange`.
    public static let commandsExchangeType = "x-modulus-hash"

    /// What the partition and dead-letter queues are (`partition_queue_type`).
    public enum QueueType: String, Sendable, Equatable, CaseIterable {
        /// A durable classic queue on the node that declared it; one consumer per partition
        /// through an exclusive consumer.
        case classic
        /// A replicated quorum queue: survives the loss of a minority of the cluster's nodes;
        /// one consumer per partition through single active consumer.
        case quorum
    }

    public var prefix: String
    public var partitions: Int
    public var queueType: QueueType
    /// `x-delivery-limit` of quorum partition queues (the `delivery_limit` setting).
    public var deliveryLimit: Int

    public init(prefix: String = "runs", partitions: Int = 8, queueType: QueueType = .classic, deliveryLimit: Int = 5) {
        self.prefix = prefix
        self.partitions = partitions
        self.queueType = queueType
        self.deliveryLimit = deliveryLimit
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

    /// Webhooks (only when enabled): a durable queue bound to the events exchange with `run.#`,
    /// which the webhook dispatcher consumes, and the delay queues its retries wait in (one per
    /// delay, dead-lettering back into it).
    public var webhooksQueue: String { "\(prefix).webhooks" }
    public static let webhooksBinding = "run.#"
    public func webhookDelayQueue(milliseconds: Int) -> String { "\(prefix).webhooks.delay.\(milliseconds)" }

    public func partitionQueue(_ index: Int) -> String { "\(prefix).commands.\(index)" }
    public var partitionQueues: [String] { (0..<partitions).map(partitionQueue) }

    /// The arguments of every partition queue. Classic: none. Quorum: single active consumer
    /// (quorum queues do not enforce exclusive consumers, and it can only be set when the
    /// queue is declared), the broker's own delivery limit, and the dead-letter exchange, so
    /// that a message the broker gives up on lands in the dead-letter queue instead of being
    /// dropped.
    public var partitionQueueArguments: AMQPTable {
        switch queueType {
        case .classic:
            return [:]
        case .quorum:
            var arguments = AMQPTable()
            arguments["x-queue-type"] = "quorum"
            arguments["x-single-active-consumer"] = true
            arguments["x-delivery-limit"] = .int64(Int64(deliveryLimit))
            arguments["x-dead-letter-exchange"] = .string(deadExchange)
            return arguments
        }
    }

    /// The arguments of the dead-letter queue: the same queue type, nothing else.
    public var deadQueueArguments: AMQPTable {
        switch queueType {
        case .classic: return [:]
        case .quorum: return ["x-queue-type": "quorum"]
        }
    }

    /// Partition queues are consumed by one worker at a time: classic ones through an
    /// exclusive consumer, quorum ones through the queue's single active consumer (an
    /// `exclusive` flag would be accepted there and not enforced).
    public var exclusivePartitionConsumers: Bool { queueType == .classic }
}

/// A queue exists with other arguments than this worker declares (the broker's 406
/// PRECONDITION_FAILED): workers sharing a prefix disagree on a setting, or the setting was
/// changed while the queues existed. Retrying cannot cure it, so the worker stops.
public struct TopologyMismatch: Error, CustomStringConvertible, Sendable {
    public var queue: String
    /// The queue argument the broker named (`x-queue-type`, `durable`, ...), when it did.
    public var argument: String?
    /// The setting behind that argument and this worker's value of it, when one is.
    public var setting: (key: String, value: String)?
    /// The broker's reply text.
    public var brokerMessage: String

    public init(queue: String, brokerMessage: String, topology: Topology) {
        self.queue = queue
        self.brokerMessage = brokerMessage
        argument = Self.inequivalentArgument(in: brokerMessage)
        switch argument ?? "" {
        case "x-queue-type", "x-single-active-consumer", "x-dead-letter-exchange":
            setting = ("partition_queue_type", topology.queueType.rawValue)
        case "x-delivery-limit":
            setting = topology.queueType == .quorum
                ? ("delivery_limit", String(topology.deliveryLimit)) : ("partition_queue_type", topology.queueType.rawValue)
        default:
            setting = nil
        }
    }

    /// The argument named by RabbitMQ's "inequivalent arg 'x-queue-type' for queue ..." text.
    static func inequivalentArgument(in message: String) -> String? {
        guard let start = message.range(of: "inequivalent arg '")?.upperBound,
              let end = message[start...].firstIndex(of: "'") else { return nil }
        return String(message[start..<end])
    }

    public var description: String {
        let what: String
        if let argument, let setting {
            what = "its \(argument) differs from what \(setting.key) = \(setting.value) declares"
        } else if let argument {
            what = "its \(argument) differs"
        } else {
            what = "its arguments differ"
        }
        return """
            queue \(queue) exists with other arguments than this worker declares: \(what). Every worker \
            sharing a prefix must use the same partition_queue_type and delivery_limit; to change them, stop \
            the workers, let the queues drain, delete them, then start the workers again. The broker said: \
            \(brokerMessage)
            """
    }
}
