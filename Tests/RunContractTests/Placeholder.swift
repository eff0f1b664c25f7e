import Testing
@testable import RunContract
