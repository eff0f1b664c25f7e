// swift-tools-version: 6.1
import PackageDescription

// Layers, bottom to top:
//   CRabbitMQ (system librabbitmq) + CRabbitMQShim (what Swift cannot call)
//   AMQPClient        Swift AMQP 0-9-1 client over librabbitmq, no C types leak out
//   RunJSON           JSON values, a strict byte-level parser and serializer
//   RunContract       the wire contract: commands, events, snapshots, codec (re-exports RunJSON)
//   RunStateMachine   the pure run state machine (no I/O, time passed in)
//   RunStore          the store's protocol and values, the in-memory store (no database linked)
//   RunStorePayloads  large values stored once: cut out of rows, kept by digest, spliced back
//   RunStoreSQLite, RunStorePostgres   the durable stores; RunStores opens one by URL
//   RunApply          commands applied to the store in batches (processor, applier, run cache)
//   RunWorker         the worker: topology, partition ownership, batched command loop
//   runworker, runctl the executables
let package = Package(
    name: "runworker",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "AMQPClient", targets: ["AMQPClient"]),
        .library(name: "RunJSON", targets: ["RunJSON"]),
        .library(name: "RunContract", targets: ["RunContract"]),
        .library(name: "RunStateMachine", targets: ["RunStateMachine"]),
        .library(name: "RunClient", targets: ["RunClient"]),
        .executable(name: "example-agent", targets: ["example-agent"]),
    ],
    dependencies: [
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        // The HTTP listener's connection limits are channel handlers below Hummingbird's router.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.24.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // Webhooks: an HTTP/1.1 client with TLS, and HMAC-SHA256 for the signature (swift-crypto is
        // already in the graph through postgres-nio).
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        .target(name: "CRabbitMQShim", dependencies: ["CRabbitMQ"]),
        .target(name: "AMQPClient", dependencies: ["CRabbitMQ", "CRabbitMQShim"]),
        .target(name: "RunJSON"),
        .target(name: "RunContract", dependencies: ["RunJSON"]),
        .target(name: "RunStateMachine", dependencies: ["RunContract"]),
        // The Swift client for agents and tools: typed commands, replies, event streams, reconnects.
        .target(name: "RunClient", dependencies: ["AMQPClient", "RunContract"]),
        // The README's agent, runnable (and run by the integration tests); beside the pika version.
        .executableTarget(name: "example-agent", dependencies: ["RunClient"], path: "docs/examples/swift-agent"),
        // The store's protocol, its values and the in-memory store: no database linked.
        .target(name: "RunStore", dependencies: ["RunContract"]),
        // What the durable stores share to keep each large value once (SHA-256 from swift-crypto).
        .target(
            name: "RunStorePayloads",
            dependencies: ["RunContract", "RunStore", .product(name: "Crypto", package: "swift-crypto")]
        ),
        .target(
            name: "RunStoreSQLite",
            dependencies: [
                "RunContract", "RunStore", "RunStorePayloads",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
            ]
        ),
        .target(
            name: "RunStorePostgres",
            dependencies: [
                "RunContract", "RunStore", "RunStorePayloads",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Every store, and the URL that picks one (`openRunStore(url:)`).
        .target(name: "RunStores", dependencies: ["RunStore", "RunStoreSQLite", "RunStorePostgres"]),
        // Applying a batch of commands to the store: the processor, the batch applier, the run
        // cache. No broker, no database: the fuzz targets and the simulation link only this.
        .target(name: "RunApply", dependencies: ["RunContract", "RunStateMachine", "RunStore"]),
        .target(
            name: "RunWorker",
            dependencies: [
                "AMQPClient", "RunApply", "RunContract", "RunStateMachine", "RunStore", "RunStores",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // Completion webhooks: a dispatcher that consumes the worker's own durable webhook queue
        // and POSTs signed events. Its own target so that only `runworker` links the HTTP client.
        .target(
            name: "RunWebhooks",
            dependencies: [
                "AMQPClient", "RunContract", "RunStore", "RunStores", "RunWorker",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The worker's HTTP side: health, Prometheus metrics, the read-only runs API, the live
        // event stream and the run board (static files in Resources, no build step).
        .target(
            name: "RunHTTP",
            dependencies: [
                "AMQPClient", "RunApply", "RunContract", "RunStore", "RunWorker",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            resources: [.copy("Board")]
        ),
        .executableTarget(
            name: "runworker",
            dependencies: [
                "RunWorker", "RunHTTP", "RunWebhooks",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "runctl",
            dependencies: [
                "RunClient", "RunContract", "RunStore", "RunStores", "RunWorker",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // What the integration tests and the benchmark share: the `runworker` launcher (status
        // file, not log lines), a contract-only client, bounded waits. No Testing here.
        .target(name: "RunWorkerTestKit", dependencies: ["AMQPClient", "RunContract", "RunWorker"]),

        // The benchmark (scripts/bench): the broker's echo ceiling and the worker, in one run.
        .executableTarget(
            name: "runbench",
            dependencies: [
                "AMQPClient", "RunContract", "RunStore", "RunStores", "RunWorker", "RunWorkerTestKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // The chaos soak (scripts/chaos): faults while runs go through, every run checked
        // against the state machine as a model.
        .target(name: "RunChaosKit", dependencies: ["RunContract", "RunStateMachine"]),
        .executableTarget(
            name: "runchaos",
            dependencies: [
                "AMQPClient", "RunChaosKit", "RunContract", "RunWorker", "RunWorkerTestKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // Fuzz targets (scripts/fuzz builds them with libFuzzer; other builds replay inputs).
        .executableTarget(
            name: "runfuzz",
            dependencies: ["RunApply", "RunContract", "RunStateMachine", "RunStore"]
        ),

        // What every test target shares (Swift Testing only here): each test on a thread of its
        // own (`.ownThread`), a manual `Clock`, the store factory over memory, SQLite and
        // PostgreSQL, SplitMix.
        .target(
            name: "RunTestSupport",
            dependencies: ["RunContract", "RunStore", "RunStores", "RunWorkerTestKit"]
        ),

        // Unit tests: no broker, no database.
        .testTarget(name: "RunTestSupportTests", dependencies: ["RunTestSupport", "RunContract", "RunWorkerTestKit"]),
        .testTarget(name: "AMQPClientTests", dependencies: ["RunTestSupport", "AMQPClient"]),
        .testTarget(name: "RunJSONTests", dependencies: ["RunTestSupport", "RunJSON"]),
        .testTarget(name: "RunContractTests", dependencies: ["RunTestSupport", "RunContract"]),
        .testTarget(name: "RunClientTests", dependencies: ["RunTestSupport", "RunClient", "AMQPClient"]),
        .testTarget(
            name: "RunStoreTests", dependencies: ["RunTestSupport", "RunApply", "RunStateMachine", "RunStore", "RunStorePayloads", "RunStores"]),
        .testTarget(name: "RunWorkerTests", dependencies: ["RunTestSupport", "RunApply", "RunWorker", "RunStore", "RunStores", "RunWebhooks"]),
        .testTarget(name: "RunChaosKitTests", dependencies: ["RunTestSupport", "RunApply", "RunChaosKit", "RunWorker", "RunStore"]),
        // The HTTP side served in memory (HummingbirdTesting's router framework): no listener, no broker.
        .testTarget(
            name: "RunHTTPTests",
            dependencies: [
                "RunTestSupport", "RunContract", "RunHTTP", "RunStore", "RunWorker",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
            ]
        ),
        // Webhooks without a network: signatures, backoff, target rules, the deliverer's decisions.
        .testTarget(
            name: "RunWebhooksTests",
            dependencies: [
                "RunTestSupport", "AMQPClient", "RunContract", "RunStore", "RunWebhooks", "RunWorker",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
        // Integration tests: a real RabbitMQ (and the worker's own processes). Skipped with a
        // message when no broker answers outside CI; required when CI is set.
        // Depends on the executables so that `swift test` builds the binaries it launches.
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "RunTestSupport",
                "AMQPClient", "RunClient", "RunContract", "RunStore", "RunStores", "RunWorker", "RunWorkerTestKit", "runworker", "runctl",
                "example-agent",
            ],
            exclude: ["interop"]
        ),
        .testTarget(
            name: "RunStateMachineTests",
            dependencies: [
                "RunTestSupport",
                "RunStateMachine",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
    ]
)
