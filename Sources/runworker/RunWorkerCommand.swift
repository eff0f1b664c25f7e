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
            Settings come from the config file, then RUNWORKER_* environment variables, then \
            flags (each layer overrides the one before). config/runworker.yaml documents them all. \
            Every setting is a flag, --<flag> VALUE or --<flag>=VALUE:

            """ + WorkerSettings.settingsHelp)

    @Option(help: "YAML config file (default config/runworker.yaml when it exists).")
    var config: String?

    /// Every other flag is a setting from `WorkerSettings.table`, applied (and checked) there.
    @Argument(parsing: .allUnrecognized, help: .hidden)
    var settings: [String] = []

    func run() async throws {
        var settings = try WorkerSettings.load(configFile: config, environment: ProcessInfo.processInfo.environment)
        try settings.apply(arguments: self.settings)
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
