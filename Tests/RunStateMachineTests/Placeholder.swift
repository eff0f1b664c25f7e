import Testing
@testable import RunStateMachine
