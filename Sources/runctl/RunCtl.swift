import ArgumentParser
import Foundation
import RunClient
import RunContract
import RunStore
import RunWorker

@main
struct RunCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "runctl",
        abstract: "Drive and inspect runs of a runworker deployment.",
        discussion: """
            Commands are published to <prefix>.commands exactly as docs/CONTRACT.md describes; \
            runctl waits for the worker's reply unless --no-wait is given. A refusal exits 1 \
            with the contract's error code. Connection settings come from config/runworker.yaml, \
            then RUNWORKER_* variables, then flags. get, list, events and describe read \
            through a worker's HTTP API (--http, default the config's http_address), so they work \
            from any host and on either store; watch follows the events exchange.
            """,
        subcommands: [
            Create.self, Start.self, RequireAction.self, CompleteAction.self, FailAction.self, Complete.self,
            Fail.self, Cancel.self, Heartbeat.self, Rerun.self, Watch.self, Get.self, List.self, Events.self, Describe.self,
        ])
}

// MARK: - Shared options

struct ConnectionOptions: ParsableArguments {
    @Option(help: "YAML config file (default config/runworker.yaml when it exists).")
    var config: String?
    @Option(name: .customLong("amqp-url"), help: "Broker URL.")
    var amqpURL: String?
    @Option(help: "Prefix of the worker's exchanges and queues.")
    var prefix: String?

    func settings() throws -> WorkerSettings {
        var s = try loadSettings(config)
        if let amqpURL { s.amqpURL = amqpURL }
        if let prefix { s.prefix = prefix }
        return s
    }
}

struct CommandOptions: ParsableArguments {
    @OptionGroup var connection: ConnectionOptions
    @Option(name: .customLong("command-id"), help: "The command id (message_id); a random one by default.")
    var commandID: String?
    @Option(name: .customLong("expected-version"), help: "Apply only if the run is at this version.")
    var expectedVersion: Int64?
    @Flag(name: .customLong("no-wait"), help: "Publish and exit without waiting for the reply.")
    var noWait = false
    @Option(name: .customLong("wait"), help: "Seconds to wait for the reply.")
    var waitSeconds: Double = 15
    @Flag(help: "Print the reply as JSON.")
    var json = false
}

/// The worker's settings as runctl sees them: config file, then RUNWORKER_* variables.
func loadSettings(_ configFile: String?) throws -> WorkerSettings {
    try WorkerSettings.load(configFile: configFile, environment: ProcessInfo.processInfo.environment)
}

/// Parses a command-line JSON argument, naming the option on failure.
func jsonArgument(_ text: String?, _ option: String) throws -> JSONValue? {
    guard let text else { return nil }
    do { return try JSONValue.parse(text) } catch {
        throw ValidationError("\(option) is not valid JSON (\(error)); quote strings: '\"text\"'")
    }
}

// MARK: - Sending a command

/// A RunClient for the configured broker and prefix.
func makeClient(_ settings: WorkerSettings, replyTimeout: Double = 15) throws -> RunClient {
    var configuration = try RunClientConfiguration(url: settings.amqpURL, prefix: settings.prefix, replyTimeout: replyTimeout)
    configuration.amqp.connectionName = "runctl"
    return try RunClient(configuration: configuration)
}

func send(_ kind: Command.Kind, runID: String, _ options: CommandOptions) async throws {
    guard RunID.isValid(runID) else { throw ValidationError("run id must match [A-Za-z0-9_-]{1,128}") }
    let settings = try options.connection.settings()
    let commandID = options.commandID ?? "runctl-\(UUID().uuidString.lowercased())"
    let command = Command(runID: runID, commandID: commandID, expectedVersion: options.expectedVersion, kind: kind)
    let client = try makeClient(settings, replyTimeout: options.waitSeconds)
    defer { client.close() }

    let receipt: SendReceipt
    do {
        receipt = try await client.submit(command, awaitReply: !options.noWait)
    } catch let error as RunClientError where error.code == .unroutable {
        throw RunCtlFailure(
            "no queue is bound to \(settings.topology.commandsExchange): is a runworker with prefix \"\(settings.prefix)\" running?")
    } catch let error as RunClientError where error.code == .notConfirmed {
        throw RunCtlFailure("the broker refused the command")
    } catch let error as RunClientError where error.code == .timedOut && !options.noWait {
        throw RunCtlFailure("no reply within \(options.waitSeconds) s (is a worker running?); the command may still be applied")
    }
    guard let reply = receipt.reply, let body = receipt.replyBody else {
        print("published \(kind.name) for \(runID) (command id \(commandID))")
        return
    }
    if options.json { print(String(decoding: body, as: UTF8.self)) }
    switch reply.outcome() {
    case .failure(let error):
        if !options.json { printError("\(error.code.rawValue): \(error.message)") }
        throw ExitCode(1)
    case .success(let run):
        if !options.json { print("ok: " + describe(run)) }
    }
}

struct RunCtlFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

func printError(_ text: String) {
    FileHandle.standardError.write(Data(("error: " + text + "\n").utf8))
}

/// One paragraph a person can read: status, version, attempt, pending actions, outcome.
func describe(_ run: Run) -> String {
    var lines = ["\(run.runID) is \(run.status.rawValue) (version \(run.version), attempt \(run.attempt))"]
    if let agent = run.agentID { lines.append("  agent: \(agent)") }
    for a in run.pendingActions {
        lines.append("  pending action \(a.id): \(a.type.rawValue) \(a.fields.serializedText)")
    }
    if let r = run.stopReason { lines.append("  stop reason: \(r.rawValue)") }
    if let result = run.result { lines.append("  result: \(String(decoding: result.serialized(), as: UTF8.self))") }
    if let e = run.error { lines.append("  error: \(e.message)\(e.code.map { " (\($0))" } ?? "")") }
    return lines.joined(separator: "\n")
}

extension JSONObject {
    var serializedText: String { String(decoding: serialized(), as: UTF8.self) }
}

// MARK: - Run-creating commands

struct SpecOptions: ParsableArguments {
    @Option(name: .customLong("agent"), help: "agent_id.") var agent: String?
    @Option(help: "input, as JSON.") var input: String?
    @Option(help: "metadata, a JSON object.") var metadata: String?
    @Option(help: "config.timeout_s: seconds for one attempt.") var timeout: Double?
    @Option(name: .customLong("start-timeout"), help: "config.start_timeout_s.") var startTimeout: Double?
    @Option(name: .customLong("action-timeout"), help: "config.action_timeout_s.") var actionTimeout: Double?
    @Option(name: .customLong("max-attempts"), help: "config.retry.max_attempts.") var maxAttempts: Int?
    @Option(name: .customLong("retry-delay"), help: "config.retry.delay_s.") var retryDelay: Double?
    @Option(name: .customLong("previous-run-id"), help: "previous_run_id.") var previousRunID: String?

    func spec() throws -> RunSpec {
        var config: RunConfig?
        if timeout != nil || startTimeout != nil || actionTimeout != nil || maxAttempts != nil || retryDelay != nil {
            config = RunConfig(
                timeoutS: timeout, startTimeoutS: startTimeout, actionTimeoutS: actionTimeout,
                retry: (maxAttempts != nil || retryDelay != nil) ? RetryPolicy(maxAttempts: maxAttempts, delayS: retryDelay) : nil)
        }
        var meta: JSONObject?
        if let m = try jsonArgument(metadata, "--metadata") {
            guard let o = m.objectValue else { throw ValidationError("--metadata must be a JSON object") }
            meta = o
        }
        return RunSpec(agentID: agent, input: try jsonArgument(input, "--input"), metadata: meta, config: config,
                       previousRunID: previousRunID)
    }
}

struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Register a run without starting it.")
    @Argument var runID: String
    @OptionGroup var spec: SpecOptions
    @OptionGroup var options: CommandOptions
    func run() async throws { try await send(.create(try spec.spec()), runID: runID, options) }
}

struct Start: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start a run (creating it when unknown).")
    @Argument var runID: String
    @OptionGroup var spec: SpecOptions
    @OptionGroup var options: CommandOptions
    func run() async throws { try await send(.start(try spec.spec()), runID: runID, options) }
}

// MARK: - Actions

struct RequireAction: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "require-action",
        abstract: "Ask for outside work: a tool call (--tool, --args), a message (--to, --content) or a system action (--system).")
    @Argument var runID: String
    @Option(help: "Action id (generated by the worker when absent).") var id: String?
    @Option(help: "tool_call: the tool's name.") var tool: String?
    @Option(help: "tool_call: arguments, a JSON object.") var args: String?
    @Option(help: "send_message: the recipient.") var to: String?
    @Option(help: "send_message: the content, as JSON.") var content: String?
    @Option(help: "system_action: the action's name.") var system: String?
    @Option(help: "system_action: duration_s.") var duration: Double?
    @Option(name: .customLong("action-timeout"), help: "timeout_s of this action.") var actionTimeout: Double?
    @Option(name: .customLong("heartbeat-timeout"), help: "heartbeat_timeout_s of this action.") var heartbeatTimeout: Double?
    @OptionGroup var options: CommandOptions

    func run() async throws {
        var fields = JSONObject()
        let type: ActionType
        switch (tool, to, system) {
        case (let tool?, nil, nil):
            type = .toolCall
            fields["tool"] = .string(tool)
            fields["args"] = try jsonArgument(args, "--args") ?? .object([:])
        case (nil, let to?, nil):
            type = .sendMessage
            fields["recipient"] = .string(to)
            guard let c = try jsonArgument(content, "--content") else { throw ValidationError("--to needs --content") }
            fields["content"] = c
        case (nil, nil, let system?):
            type = .systemAction
            fields["action"] = .string(system)
            if let duration { fields["duration_s"] = .double(duration) }
        default:
            throw ValidationError("give exactly one of --tool, --to or --system")
        }
        let request = ActionRequest(id: id, type: type, timeoutS: actionTimeout, heartbeatTimeoutS: heartbeatTimeout, fields: fields)
        try await send(.requireAction([request]), runID: runID, options)
    }
}

struct CompleteAction: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "complete-action", abstract: "An outside action finished.")
    @Argument var runID: String
    @Argument var actionID: String
    @Option(help: "result, as JSON.") var result: String?
    @OptionGroup var options: CommandOptions
    func run() async throws {
        try await send(.completeAction(actionID: actionID, result: try jsonArgument(result, "--result")), runID: runID, options)
    }
}

struct FailAction: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fail-action", abstract: "An outside action failed.")
    @Argument var runID: String
    @Argument var actionID: String
    @Option(help: "error.message.") var message: String
    @Option(help: "error.code.") var code: String?
    @OptionGroup var options: CommandOptions
    func run() async throws {
        try await send(.failAction(actionID: actionID, error: ErrorInfo(message: message, code: code)), runID: runID, options)
    }
}

// MARK: - Ending a run

struct Complete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The run finished successfully.")
    @Argument var runID: String
    @Option(help: "result, as JSON.") var result: String?
    @Option(help: "usage, as JSON.") var usage: String?
    @OptionGroup var options: CommandOptions
    func run() async throws {
        try await send(.complete(result: try jsonArgument(result, "--result"), usage: try jsonArgument(usage, "--usage")),
                 runID: runID, options)
    }
}

struct Fail: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The run failed.")
    @Argument var runID: String
    @Option(help: "error.message.") var message: String
    @Option(help: "error.code.") var code: String?
    @Flag(help: "Retry the run when its retry policy allows.") var retryable = false
    @OptionGroup var options: CommandOptions
    func run() async throws {
        try await send(.fail(error: ErrorInfo(message: message, code: code), retryable: retryable), runID: runID, options)
    }
}

struct Cancel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop the run.")
    @Argument var runID: String
    @Option(help: "reason.") var reason: String?
    @OptionGroup var options: CommandOptions
    func run() async throws { try await send(.cancel(reason: reason), runID: runID, options) }
}

// MARK: - Contract 1.1

struct Heartbeat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "heartbeat", abstract: "A pending action is alive (heartbeat_action): moves its heartbeat deadline.")
    @Argument var runID: String
    @Argument var actionID: String
    @Option(help: "details, as JSON (progress, a cursor).") var details: String?
    @OptionGroup var options: CommandOptions
    func run() async throws {
        try await send(.heartbeatAction(actionID: actionID, details: try jsonArgument(details, "--details")), runID: runID, options)
    }
}

struct Rerun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create and start a new run from a finished one, inheriting what the options leave out.")
    @Argument(help: "The new run's id.") var runID: String
    @Option(name: .customLong("from"), help: "The finished run to run again (previous_run_id).") var previousRunID: String
    @OptionGroup var spec: SpecOptions
    @OptionGroup var options: CommandOptions
    func run() async throws {
        var given = try spec.spec()
        given.previousRunID = previousRunID
        try await send(.rerun(given), runID: runID, options)
    }
}
