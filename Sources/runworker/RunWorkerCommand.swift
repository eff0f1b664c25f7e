import ArgumentParser
import Foundation
import Logging
import Prometheus
import RunHTTP
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
        // The worker's metrics go to one Prometheus registry, which /metrics exports.
        let registry = PrometheusCollectorRegistry()
        let worker = try Worker(settings: settings, logger: logger, metricsFactory: RunHTTPServer.metricsFactory(registry))
        var services: [any Service] = [worker]
        if let endpoint = try settings.httpEndpoint() {
            services.append(try RunHTTPServer(worker: worker, endpoint: endpoint, registry: registry, logger: logger))
        }
        // Graceful shutdown runs in reverse order: the HTTP side stops first, then the worker
        // finishes its batch in flight.
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
