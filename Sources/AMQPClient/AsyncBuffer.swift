import Foundation

/// An unbounded buffer between the connection's owner thread (producer) and async consumers.
/// Supports taking several buffered elements at once.
///
/// `@unchecked Sendable` is safe: every stored property is read and written only while holding
/// `lock`, and continuations are resumed after the lock is released.
final class AsyncBuffer<Element: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Element] = []
    private var head = 0
    private var done = false
    private var failure: (any Error)?
    private var waiters: [(id: UInt64, max: Int, cont: CheckedContinuation<[Element], any Error>)] = []
    private var nextWaiterID: UInt64 = 0

    func yield(_ e: Element) {
        let resume: (CheckedContinuation<[Element], any Error>, [Element])? = lock.withLock {
            guard !done else { return nil }
            if !waiters.isEmpty {
                let w = waiters.removeFirst()
                return (w.cont, [e])
            }
            items.append(e)
            return nil
        }
        resume?.0.resume(returning: resume!.1)
    }

    /// Ends the sequence: buffered elements are still handed out, then `error` is thrown (or
    /// the sequence ends when nil). Only the first call counts.
    func finish(_ error: (any Error)? = nil) {
        let ws: [CheckedContinuation<[Element], any Error>] = lock.withLock {
            guard !done else { return [] }
            done = true
            failure = error
            let ws = waiters.map(\.cont)
            waiters = []
            return ws
        }
        for w in ws {
            if let error { w.resume(throwing: error) } else { w.resume(returning: []) }
        }
    }

    var isFinished: Bool { lock.withLock { done } }

    private func takeLocked(_ max: Int) -> [Element] {
        let n = Swift.min(max, items.count - head)
        let out = Array(items[head..<head + n])
        head += n
        if head == items.count { items.removeAll(keepingCapacity: true); head = 0 }
        return out
    }

    /// Waits for at least one element and returns up to `max` buffered ones; returns [] when
    /// finished cleanly, throws the finishing error otherwise (or CancellationError).
    func next(max: Int) async throws -> [Element] {
        let id: UInt64 = lock.withLock { nextWaiterID += 1; return nextWaiterID }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<[Element], any Error>) in
                let outcome: BufferOutcome<Element> = lock.withLock {
                    if head < items.count { return .items(takeLocked(max)) }
                    if done { return failure.map { .error($0) } ?? .items([]) }
                    if Task.isCancelled { return .error(CancellationError()) }
                    waiters.append((id, max, cont))
                    return .wait
                }
                switch outcome {
                case .items(let i): cont.resume(returning: i)
                case .error(let e): cont.resume(throwing: e)
                case .wait: break
                }
            }
        } onCancel: {
            let w: CheckedContinuation<[Element], any Error>? = lock.withLock {
                guard let i = waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return waiters.remove(at: i).cont
            }
            w?.resume(throwing: CancellationError())
        }
    }
}

private enum BufferOutcome<E> { case items([E]), error(any Error), wait }

/// An `AsyncSequence` over an `AsyncBuffer` (deliveries of a consumer, returned messages).
public struct AMQPMessageStream<Element: Sendable>: AsyncSequence, Sendable {
    let buffer: AsyncBuffer<Element>

    public struct AsyncIterator: AsyncIteratorProtocol, Sendable {
        let buffer: AsyncBuffer<Element>
        public mutating func next() async throws -> Element? {
            try await buffer.next(max: 1).first
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(buffer: buffer) }

    /// Waits for at least one element, then returns up to `max` already buffered elements;
    /// returns [] when the stream has ended.
    public func next(upTo max: Int) async throws -> [Element] {
        try await buffer.next(max: max)
    }
}
