import Testing
@testable import RunWorker
