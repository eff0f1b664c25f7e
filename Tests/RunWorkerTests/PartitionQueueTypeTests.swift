import AMQPClient
import Testing

@testable import RunWorker

// partition_queue_type: the setting, the queue arguments it declares, and how a queue declared
// with other arguments is reported.

@Suite struct PartitionQueueTypeTests {
    /// The setting comes from the file, the variable and the flag; anything but classic or
    /// quorum is refused with a message naming it; the topology carries it.
    @Test func setting() throws {
        var s = WorkerSettings()
        #expect(s.partitionQueueType == .classic && s.topology.queueType == .classic)
        try s.apply(yaml: "partition_queue_type: quorum\n")
        #expect(s.partitionQueueType == .quorum)
        try s.apply(environment: ["RUNWORKER_PARTITION_QUEUE_TYPE": "Classic"])
        #expect(s.partitionQueueType == .classic)
        try s.apply(arguments: ["--partition-queue-type", "quorum", "--delivery-limit", "7"])
        #expect(s.topology == Topology(prefix: "runs", partitions: 8, queueType: .quorum, deliveryLimit: 7))
        #expect { try s.apply(environment: ["RUNWORKER_PARTITION_QUEUE_TYPE": "stream"]) } throws: {
            "\($0)".contains("partition_queue_type") && "\($0)".contains("stream")
        }
    }

    /// Classic queues keep today's declaration (no arguments, exclusive consumers); quorum
    /// partition queues get single active consumer, the delivery limit and the dead-letter
    /// exchange, and the dead-letter queue is a quorum queue too.
    @Test func queueArguments() {
        let classic = Topology(prefix: "p", partitions: 2)
        #expect(classic.partitionQueueArguments.isEmpty && classic.deadQueueArguments.isEmpty)
        #expect(classic.exclusivePartitionConsumers)
        let quorum = Topology(prefix: "p", partitions: 2, queueType: .quorum, deliveryLimit: 3)
        let args = quorum.partitionQueueArguments
        #expect(args["x-queue-type"] == "quorum")
        #expect(args["x-single-active-consumer"] == true)
        #expect(args["x-delivery-limit"]?.int64Value == 3)
        #expect(args["x-dead-letter-exchange"] == "p.dead")
        #expect(args.count == 4)
        #expect(quorum.deadQueueArguments == ["x-queue-type": "quorum"])
        #expect(!quorum.exclusivePartitionConsumers)
    }

    /// A 406 on a queue declaration names the queue, the argument and the setting behind it.
    @Test(arguments: [
        ("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'p.commands.0' in vhost '/': "
            + "received the value 'quorum' of type 'longstr' but current is none",
         "x-queue-type", "partition_queue_type = quorum"),
        ("PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'p.commands.0' in vhost '/': "
            + "received the value '3' of type 'long' but current is the value '5' of type 'long'",
         "x-delivery-limit", "delivery_limit = 3"),
    ])
    func mismatchNamesTheSetting(_ message: String, _ argument: String, _ setting: String) {
        let quorum = Topology(prefix: "p", partitions: 2, queueType: .quorum, deliveryLimit: 3)
        let m = TopologyMismatch(queue: "p.commands.0", brokerMessage: message, topology: quorum)
        #expect(m.argument == argument)
        #expect(m.description.contains(setting) && m.description.contains("p.commands.0"), "\(m)")
        let other = TopologyMismatch(queue: "p.dead", brokerMessage: "PRECONDITION_FAILED - something else", topology: quorum)
        #expect(other.argument == nil && other.setting == nil && other.description.contains("something else"))
    }
}
