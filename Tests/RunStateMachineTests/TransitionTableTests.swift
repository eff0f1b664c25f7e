import RunContract
import Testing

@testable import RunStateMachine

/// The states of the contract's table, each reached by driving the machine itself.
enum Fixture: String, CaseIterable, Sendable {
    case none, created, running, waiting, retrying, completed, failed, cancelled

    static let retry3 = RetryPolicy(maxAttempts: 3, delayS: 1)

    func harness() throws -> Harness {
        var h = Harness()
        let spec = RunSpec(config: config(retry: Self.retry3))
        switch self {
        case .none: break
        case .created: try h.send(.create(spec))
        case .running: try h.send(.start(spec))
        case .waiting:
            try h.send(.start(spec))
            try h.send(.requireAction([toolCall("a-1")]))
        case .retrying:
            try h.send(.start(spec))
            try h.send(.fail(error: ErrorInfo(message: "flaky"), retryable: true))
        case .completed:
            try h.send(.start(spec))
            try h.send(.complete(result: .string("ok"), usage: nil))
        case .failed:
            try h.send(.start(spec))
            try h.send(.fail(error: ErrorInfo(message: "broken"), retryable: false))
        case .cancelled:
            try h.send(.create(spec))
            try h.send(.cancel(reason: "not needed"))
        }
        return h
    }
}

/// The commands of the table, with fields that are valid for the fixtures.
enum CommandCase: String, CaseIterable, Sendable {
    case create, start, requireAction, completeAction, failAction, complete, failFatal, failRetryable, cancel
    case heartbeatAction, rerun

    var kind: Command.Kind {
        switch self {
        case .create: .create(RunSpec(config: config(retry: Fixture.retry3)))
        case .start: .start(RunSpec(config: config(retry: Fixture.retry3)))
        case .requireAction: .requireAction([toolCall("a-new")])
        case .completeAction: .completeAction(actionID: "a-1", result: .int(4))
        case .failAction: .failAction(actionID: "a-1", error: ErrorInfo(message: "tool crashed"))
        case .complete: .complete(result: .string("done"), usage: nil)
        case .failFatal: .fail(error: ErrorInfo(message: "boom"), retryable: false)
        case .failRetryable: .fail(error: ErrorInfo(message: "boom"), retryable: true)
        case .cancel: .cancel(reason: "user asked")
        case .heartbeatAction: .heartbeatAction(actionID: "a-1", details: .object(["progress": .double(0.5)]))
        // The table passes no previous run: an unknown id is refused for its missing previous run.
        case .rerun: .rerun(RunSpec(previousRunID: "r0"))
        }
    }
}

enum Expectation: Sendable, Hashable {
    case accepted(RunStatus, [EventType])
    case refused(RunError.Code)
}

struct TableCase: Sendable, CustomTestStringConvertible {
    var fixture: Fixture
    var command: CommandCase
    var expectation: Expectation
    var testDescription: String { "\(command.rawValue) on \(fixture.rawValue)" }
}

/// The contract's table, written out cell by cell: every (state, command) pair.
let transitionTable: [TableCase] = {
    let invalid = Expectation.refused(.invalidTransition)
    let notFound = Expectation.refused(.runNotFound)
    let exists = Expectation.refused(.runExists)
    let terminalRow: [CommandCase: Expectation] = [
        .create: exists, .start: invalid, .requireAction: invalid, .completeAction: invalid,
        .failAction: invalid, .complete: invalid, .failFatal: invalid, .failRetryable: invalid, .cancel: invalid,
        .heartbeatAction: invalid, .rerun: exists,
    ]
    let rows: [Fixture: [CommandCase: Expectation]] = [
        .none: [
            .create: .accepted(.created, [.created]), .start: .accepted(.running, [.created, .started]),
            .requireAction: notFound, .completeAction: notFound, .failAction: notFound, .complete: notFound,
            .failFatal: notFound, .failRetryable: notFound, .cancel: notFound, .heartbeatAction: notFound,
            .rerun: notFound,
        ],
        .created: [
            .create: exists, .start: .accepted(.running, [.started]), .requireAction: invalid,
            .completeAction: invalid, .failAction: invalid, .complete: invalid, .failFatal: invalid,
            .failRetryable: invalid, .cancel: .accepted(.cancelled, [.cancelled]), .heartbeatAction: invalid,
            .rerun: exists,
        ],
        .running: [
            .create: exists, .start: invalid, .requireAction: .accepted(.waiting, [.actionRequired]),
            .completeAction: invalid, .failAction: invalid, .complete: .accepted(.completed, [.completed]),
            .failFatal: .accepted(.failed, [.failed]), .failRetryable: .accepted(.retrying, [.retryScheduled]),
            .cancel: .accepted(.cancelled, [.cancelled]), .heartbeatAction: invalid, .rerun: exists,
        ],
        .waiting: [
            .create: exists, .start: invalid, .requireAction: .accepted(.waiting, [.actionRequired]),
            .completeAction: .accepted(.running, [.actionCompleted]),
            .failAction: .accepted(.running, [.actionFailed]), .complete: invalid,
            .failFatal: .accepted(.failed, [.failed]), .failRetryable: .accepted(.retrying, [.retryScheduled]),
            .cancel: .accepted(.cancelled, [.cancelled]),
            // A heartbeat changes no state and emits nothing.
            .heartbeatAction: .accepted(.waiting, []), .rerun: exists,
        ],
        .retrying: [
            .create: exists, .start: invalid, .requireAction: invalid, .completeAction: invalid,
            .failAction: invalid, .complete: invalid, .failFatal: invalid, .failRetryable: invalid,
            .cancel: .accepted(.cancelled, [.cancelled]), .heartbeatAction: invalid, .rerun: exists,
        ],
        .completed: terminalRow, .failed: terminalRow, .cancelled: terminalRow,
    ]
    return Fixture.allCases.flatMap { fixture in
        CommandCase.allCases.map { c in TableCase(fixture: fixture, command: c, expectation: rows[fixture]![c]!) }
    }
}()

/// Every (state × command) pair of the contract is accepted with exactly the table's events and
/// resulting status, or refused with exactly the table's code and without any change.
@Test(arguments: transitionTable)
func transitionTableCell(_ cell: TableCase) throws {
    let h = try cell.fixture.harness()
    let before = h.run
    let now = h.now.plus(ms: 10)
    let result = h.machine.apply(command(cell.command.kind, id: "c-table"), to: before, at: now)
    switch (cell.expectation, result) {
    case (.accepted(let status, let types), .success(let t)):
        #expect(t.run.status == status)
        #expect(t.events.map(\.type) == types)
        guard !types.isEmpty else {
            #expect(t.run.version == before?.version)
            return
        }
        #expect(t.events.last?.status == status)
        #expect(t.events.first?.previousStatus == before?.status)
        #expect(t.events.map(\.seq) == Array((before?.version ?? 0) + 1...(before?.version ?? 0) + Int64(types.count)))
        #expect(t.run.version == t.events.last?.seq)
        #expect(t.events.allSatisfy { $0.commandID == "c-table" && $0.occurredAt == now && $0.runID == "r1" })
    case (.refused(let code), .failure(let error)):
        #expect(error.code == code, "\(error)")
        #expect(!error.message.isEmpty)
    case (let expected, let actual):
        Issue.record("expected \(expected), got \(actual)")
    }
}

/// The fixtures really are in the state they are named for (the table means nothing otherwise).
@Test(arguments: Fixture.allCases)
func fixtureIsInItsState(_ fixture: Fixture) throws {
    let run = try fixture.harness().run
    #expect(run?.status.rawValue == (fixture == .none ? nil : fixture.rawValue))
}
