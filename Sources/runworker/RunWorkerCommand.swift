import ArgumentParser
import Foundation
import Glibc
import Logging
import Prometheus
import RunHTTP
import RunWebhooks
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

    /// mallopt(M_ARENA_MAX, n): <malloc.h> is not in Swift's Glibc module, so by symbol.
    static func limitMallocArenas(_ n: Int32) {
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
        let M_ARENA_MAX: Int32 = -8
        _ = unsafeBitCast(symbol, to: Mallopt.self)(M_ARENA_MAX, n)
    }

    func run() async throws {
        // glibc gives each thread that contends for malloc an arena of its own (up to eight per
        // core), and each arena keeps the high-water mark of the large bodies it once held:
        // runbench large peaked at 272 MiB with the default, 243 MiB with two, at the same speed.
        // MALLOC_ARENA_MAX in the environment still decides.
        if ProcessInfo.processInfo.environment["MALLOC_ARENA_MAX"] == nil { Self.limitMallocArenas(2) }
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
        var services = [ServiceGroupConfiguration.ServiceConfiguration(service: worker)]
        if settings.webhooks.enabled {
            // Its own connection and thread, beside the command loop; it stops before the worker
            // (graceful shutdown runs in reverse order), while the store is still open.
            services.append(.init(service: WebhookDispatcher(
                settings: settings, store: worker.store, logger: logger,
                metricsFactory: RunHTTPServer.metricsFactory(registry), shared: worker.shared)))
        }
        if let endpoint = try settings.httpEndpoint() {
            // The HTTP side is an aid, not the job: when it cannot listen (the port is taken by
            // another worker on this host) the worker logs it and goes on without it.
            services.append(.init(
                service: try RunHTTPServer(worker: worker, endpoint: endpoint, registry: registry, logger: logger),
                successTerminationBehavior: .ignore, failureTerminationBehavior: .ignore))
        }
        // Graceful shutdown runs in reverse order: the HTTP side stops first, then the worker
        // finishes its batch in flight. A client that stops reading an event stream cannot hold
        // that up for more than the limit: then everything is cancelled, and the worker still
        // stops after its batch.
        var configuration = ServiceGroupConfiguration(
            services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        configuration.maximumGracefulShutdownDuration = .seconds(60)
        try await ServiceGroup(configuration: configuration).run()
    }
}
