// swift-tools-version: 6.1
import PackageDescription

// Layers, bottom to top:
//   CRabbitMQ (system librabbitmq) + CRabbitMQShim (what Swift cannot call)
//   AMQPClient        Swift AMQP 0-9-1 client over librabbitmq, no C types leak out
//   RunContract       the wire contract: JSON values, commands, events, snapshots, codec
//   RunStateMachine   the pure run state machine (no I/O, time passed in)
let package = Package(
    name: "runworker",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "AMQPClient", targets: ["AMQPClient"]),
        .library(name: "RunContract", targets: ["RunContract"]),
        .library(name: "RunStateMachine", targets: ["RunStateMachine"]),
    ],
    dependencies: [
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
    ],
    targets: [
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        .target(name: "CRabbitMQShim", dependencies: ["CRabbitMQ"]),
        .target(name: "AMQPClient", dependencies: ["CRabbitMQ", "CRabbitMQShim"]),
        .target(name: "RunContract"),
        .target(name: "RunStateMachine", dependencies: ["RunContract"]),

        .testTarget(name: "AMQPClientTests", dependencies: ["AMQPClient"]),
        .testTarget(name: "RunContractTests", dependencies: ["RunContract"]),
        .testTarget(
            name: "RunStateMachineTests",
            dependencies: [
                "RunStateMachine",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
    ]
)
