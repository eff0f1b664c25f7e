import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where the kit's blocking waits may run. Swift concurrency's cooperative pool has one thread
/// per core (two on CI's machine): a test that sleeps or blocks on a socket there starves every
/// other test of the process. So in a test process every blocking wait of this kit checks that
/// its thread was marked as one that may block (a test's own thread, see RunTestSupport's
/// `.ownThread`, or a thread the test started itself), and stops the process when it was not:
/// a blocking wait on the pool is a bug in the test, found the first time it runs.
/// Outside a test process (runbench, runchaos) nothing is checked.
public enum BlockingGuard {
    /// Whether this process is a test bundle (SwiftPM names it `…PackageTests.xctest`).
    public static let enforced: Bool = {
        if ProcessInfo.processInfo.environment["RUNWORKER_BLOCKING_GUARD"] == "0" { return false }
        return CommandLine.arguments.first?.hasSuffix(".xctest") ?? false
    }()

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// Marks the calling thread as one whose blocking starves no other test.
    public static func markThreadMayBlock() {
        pthread_setspecific(key, UnsafeRawPointer(bitPattern: 1))
    }

    /// Whether the calling thread may block: marked, or not a test process.
    public static var currentThreadMayBlock: Bool {
        !enforced || pthread_getspecific(key) != nil
    }

    /// Call before blocking: stops a test process whose blocking wait runs on an unmarked
    /// (cooperative pool) thread, naming the wait.
    public static func check(_ what: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
        guard !currentThreadMayBlock else { return }
        fatalError("blocking wait on the cooperative pool: \(what()). Run the test with the .ownThread trait, "
            + "or wait with the async form", file: file, line: line)
    }

    /// Runs `body` on a new thread of its own (marked), and awaits its result without holding
    /// a pool thread: for a blocking call made from an async context.
    public static func onOwnThread<T: Sendable>(
        _ name: String = "blocking", _ body: @escaping @Sendable () throws -> T
    ) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let thread = Thread {
                markThreadMayBlock()
                continuation.resume(with: Result { try body() })
            }
            thread.name = name
            thread.start()
        }
    }
}
