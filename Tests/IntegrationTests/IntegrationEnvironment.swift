import RunWorkerTestKit
import Testing

extension Trait where Self == ConditionTrait {
    /// For every suite that needs the broker at RUNWORKER_AMQP_URL: skipped with a message when
    /// none answers outside CI; always run (and failing without a broker) when CI is set.
    static var requiresBroker: Self {
        .enabled(if: TestEnvironment.brokerAvailable || TestEnvironment.isCI,
                 "needs a RabbitMQ at RUNWORKER_AMQP_URL; scripts/test starts one")
    }
}
