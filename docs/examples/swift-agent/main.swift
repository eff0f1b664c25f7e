// An agent on RunClient: starts a run, asks for a tool call, performs it (a calculator),
// completes the action and the run, and prints the events it sees.
// Usage: example-agent [run-id]   (RUNWORKER_AMQP_URL, RUNWORKER_PREFIX as for the worker)
import Foundation
import RunClient

let env = ProcessInfo.processInfo.environment
let client = try RunClient(url: env["RUNWORKER_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/",
                           prefix: env["RUNWORKER_PREFIX"] ?? "runs")
let runID = CommandLine.arguments.dropFirst().first ?? "agent-\(UUID().uuidString.prefix(8))"

// Subscribe before starting, so that no event is missed; print them until the run ends.
let events = try await client.subscribe(runID: runID)
let printer = Task {
    for try await update in events {
        guard case .event(let e) = update else { print("  \(update)"); continue }
        print("event #\(e.seq) \(e.type.rawValue): \(e.status.rawValue)")
        if e.status.isTerminal { return }
    }
}

try await client.send(.start(runID: runID, agentID: "calculator", input: ["question": "2 + 2"]))
let run = try await client.call(.requireAction(runID: runID, .toolCall("add", args: ["a": 2, "b": 2])))
let action = run.pendingActions[0]
let sum = (action.fields["args"]?["a"]?.intValue ?? 0) + (action.fields["args"]?["b"]?.intValue ?? 0)
try await client.send(.completeAction(runID: runID, actionID: action.id, result: .int(sum)))
let done = try await client.call(.complete(runID: runID, result: ["answer": .int(sum)]))
try await printer.value
print("\(runID) \(done.status.rawValue), answer \(sum)")
