import ArgumentParser
import Foundation
import Logging
import RunWorker
import ServiceLifecycle

/// `runworker`: consumes run commands, applies them, stores the result, publishes events.
@main
struct RunWorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "runworker",
        abstract: "Apply run commands from RabbitMQ to durable runs and publish every state change.",
        discussion: """
            Settings come from the config file, then RUNWORKER_* environment variables, then these \
            flags (each layer overrides the one before). config/runworker.yaml documents them all.
            """)

    @Option(help: "YAML config file (default config/runworker.yaml when it exists).")
    var config: String?

    @Option(name: .customLong("amqp-url"), help: "Broker URL, amqp:// or amqps://.")
    var amqpURL: String?

    @Option(help: "Prefix of every exchange and queue name.")
    var prefix: String?

    @Option(help: "Store URL: sqlite:///abs/path.sqlite or sqlite://relative/path.sqlite.")
    var store: String?

    @Option(help: "Unacknowledged deliveries per partition consumer.")
    var prefetch: Int?

    @Option(help: "Number of command partitions (the same for every worker).")
    var partitions: Int?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?

    func run() async throws {
        var settings = try WorkerSettings.load(configFile: config, environment: ProcessInfo.processInfo.environment)
        if let amqpURL { settings.amqpURL = amqpURL }
        if let prefix { settings.prefix = prefix }
        if let store { settings.store = store }
        if let prefetch { settings.prefetch = prefetch }
        if let partitions { settings.partitions = partitions }
        if let logLevel { settings.logLevel = try WorkerSettings.level(logLevel) }
        try settings.validate()

        let level = settings.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "runworker")
        let worker = try Worker(settings: settings, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [worker], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

