import Foundation
import RunWorkerTestKit
import Testing

/// A task executor with one thread of its own. A test that runs on it may block (a blocking
/// AMQP wait, a child process, a sleep) without holding one of the cooperative pool's threads,
/// of which CI's machine has two: blocked pool threads starve every async test of the process.
final class OwnThreadExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: `jobs` and `stopping` are only touched under `condition`'s lock.
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopping = false

    init(name: String) {
        let thread = Thread { [self] in serve() }
        thread.name = name
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Lets the thread end once its queue is empty.
    func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func serve() {
        BlockingGuard.markThreadMayBlock()
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            condition.unlock()
            for job in batch { job.runSynchronously(on: asUnownedTaskExecutor()) }
        }
    }
}

/// Runs each test case on a thread of its own (`OwnThreadExecutor`), sync and async tests
/// alike, so that its blocking waits starve nothing else. Every integration suite carries it.
///
/// Child tasks (`async let`, task groups) inherit the thread: a test that blocks it while
/// waiting for its own child task waits until its timeout, so block only for things outside
/// the test's tasks (a process, the broker). Unstructured tasks (`Task {}`) do not inherit it
/// and run on the pool, where the kit's blocking waits stop the process.
public struct OwnThreadTrait: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        let executor = OwnThreadExecutor(name: "test \(test.name)")
        defer { executor.shutdown() }
        try await withTaskExecutorPreference(executor) { try await function() }
    }
}

extension Trait where Self == OwnThreadTrait {
    /// Each test case on a thread of its own: see `OwnThreadTrait`.
    public static var ownThread: Self { OwnThreadTrait() }
}
