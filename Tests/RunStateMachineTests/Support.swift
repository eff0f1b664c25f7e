import RunContract
import Testing

@testable import RunStateMachine

/// An arbitrary fixed instant; tests move time by adding to it, never by sleeping.
let t0 = Timestamp(milliseconds: 1_700_000_000_000)

extension Timestamp {
    func plus(ms: Int64) -> Timestamp { Timestamp(milliseconds: milliseconds + ms) }
    func plus(s: Double) -> Timestamp { adding(seconds: s) }
}

func command(_ kind: Command.Kind, run: String = "r1", id: String? = nil, expected: Int64? = nil) -> Command {
    Command(runID: run, commandID: id, expectedVersion: expected, kind: kind)
}

func toolCall(_ id: String? = nil, timeoutS: Double? = nil) -> ActionRequest {
    ActionRequest(
        id: id, type: .toolCall, timeoutS: timeoutS,
        fields: ["tool": .string("calculator"), "args": .object(["expression": .string("2 + 2")])])
}

func config(
    timeoutS: Double? = nil, startTimeoutS: Double? = nil, actionTimeoutS: Double? = nil, retry: RetryPolicy? = nil
) -> RunConfig {
    RunConfig(timeoutS: timeoutS, startTimeoutS: startTimeoutS, actionTimeoutS: actionTimeoutS, retry: retry)
}

extension Result {
    var refusal: Failure? {
        if case .failure(let e) = self { return e }
        return nil
    }
}

/// Drives one run through the machine the way the worker would: keeps the stored run and every
/// event appended so far, and checks the bookkeeping of each transition as it goes.
struct Harness {
    var machine: RunStateMachine
    var run: Run?
    var events: [RunEvent] = []
    var now: Timestamp = t0
    var runID = "r1"
    private var commandCount = 0

    init(defaults: RunConfig = RunConfig()) {
        machine = RunStateMachine(defaults: defaults)
    }

    /// Applies a command that must be accepted, and returns its transition.
    @discardableResult
    mutating func send(_ kind: Command.Kind, expected: Int64? = nil) throws -> Transition {
        commandCount += 1
        let c = command(kind, run: runID, id: "c-\(commandCount)", expected: expected)
        let transition = try machine.apply(c, to: run, at: now).get()
        record(transition)
        return transition
    }

    /// Applies a command that must be refused, checks that nothing changed, and returns the refusal.
    /// An accepted command is a test failure, and its transition is not recorded.
    mutating func refuse(
        _ kind: Command.Kind, expected: Int64? = nil, sourceLocation: SourceLocation = #_sourceLocation
    ) -> RunError? {
        let (runBefore, eventsBefore) = (run, events)
        let c = command(kind, run: runID, id: "c-x", expected: expected)
        switch machine.apply(c, to: run, at: now) {
        case .success(let t):
            Issue.record(
                "\(kind.name) was accepted (\(t.events.map(\.type.rawValue))), expected a refusal",
                sourceLocation: sourceLocation)
            return nil
        case .failure(let error):
            #expect(run == runBefore, "a refused \(kind.name) changed the run", sourceLocation: sourceLocation)
            #expect(events == eventsBefore, "a refused \(kind.name) added events", sourceLocation: sourceLocation)
            return error
        }
    }

    /// Moves time to `instant` and fires whatever is due then, one `advance` at a time.
    @discardableResult
    mutating func advance(to instant: Timestamp) -> [RunEvent] {
        now = instant
        var fired: [RunEvent] = []
        while let run, let transition = machine.advance(run, to: now) {
            record(transition)
            fired += transition.events
        }
        return fired
    }

    private mutating func record(_ transition: Transition) {
        run = transition.run
        events += transition.events
    }
}
