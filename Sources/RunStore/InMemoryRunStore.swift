import RunContract
import Synchronization

/// A store in memory, for unit tests and for trying the worker without a disk. It keeps
/// `Run` values as they are (no encoding) and serialises transactions behind one lock; a
/// transaction that throws leaves nothing behind.
public final class InMemoryRunStore: RunStore {
    struct State {
        var runs: [String: (run: Run, nextDeadline: Timestamp?, partition: Int?)] = [:]
        var attempts: [String: (count: Int, error: String?)] = [:]
        var outcomes: [String: CommandOutcome] = [:]
        var outbox: [OutboxMessage] = []
        var nextOutboxID: Int64 = 1
    }

    private let state = Mutex(State())

    public init() {}

    public func transaction<T>(_ body: (any RunStoreTransaction) throws -> T) throws -> T {
        try state.withLock { state in
            let tx = Transaction(state: state)
            let result = try body(tx)
            state = tx.state
            return result
        }
    }

    public func run(_ runID: String) throws -> Run? {
        state.withLock { $0.runs[runID]?.run }
    }

    public func runs(status: RunStatus?, agentID: String?, limit: Int) throws -> [Run] {
        state.withLock { state in
            state.runs.values.map(\.run)
                .filter { (status == nil || $0.status == status) && (agentID == nil || $0.agentID == agentID) }
                .sorted { ($0.updatedAt, $1.runID) > ($1.updatedAt, $0.runID) }
                .prefix(limit).map { $0 }
        }
    }

    public func pendingOutbox(writtenBefore: Timestamp, limit: Int) throws -> [OutboxMessage] {
        state.withLock { state in Array(state.outbox.filter { $0.writtenAt <= writtenBefore }.prefix(limit)) }
    }

    public func removeOutbox(ids: [Int64]) throws {
        let remove = Set(ids)
        state.withLock { $0.outbox.removeAll { remove.contains($0.id) } }
    }

    public func runsDue(at time: Timestamp, partitions: [Int]?, limit: Int) throws -> [String] {
        state.withLock { state in
            state.runs.compactMap { id, entry -> (String, Timestamp)? in
                guard let d = entry.nextDeadline, d <= time else { return nil }
                if let partitions, !partitions.contains(entry.partition ?? -1) { return nil }
                return (id, d)
            }
            .sorted { $0.1 < $1.1 }.prefix(limit).map(\.0)
        }
    }

    public func recordDeliveryAttempt(key: String, error: String?, increment: Bool, at time: Timestamp) throws -> Int {
        state.withLock { state in
            let previous = state.attempts[key]
            let next = (previous.map { $0.count + (increment ? 1 : 0) } ?? 1, error ?? previous?.error)
            state.attempts[key] = next
            return next.0
        }
    }

    public func lastDeliveryError(key: String) throws -> String? {
        state.withLock { $0.attempts[key]?.error }
    }

    /// Works on a copy of the state; the store adopts it only when the body returns.
    private final class Transaction: RunStoreTransaction {
        var state: State
        init(state: State) { self.state = state }

        func run(_ runID: String) throws -> Run? { state.runs[runID]?.run }

        func outcome(runID: String, commandID: String) throws -> CommandOutcome? {
            state.outcomes["\(runID)\u{0}\(commandID)"]
        }

        func save(_ run: Run, previousVersion: Int64?, nextDeadline: Timestamp?, partition: Int?) throws {
            let current = state.runs[run.runID]?.run.version
            guard current == previousVersion else {
                throw StoreError(
                    .versionConflict,
                    "run \(run.runID) is at version \(current.map(String.init) ?? "none"), "
                        + "expected \(previousVersion.map(String.init) ?? "none")")
            }
            let keptPartition = partition ?? state.runs[run.runID]?.partition
            state.runs[run.runID] = (run, run.status.isTerminal ? nil : nextDeadline, keptPartition)
        }

        func appendOutbox(_ messages: [OutboxMessage]) throws -> [Int64] {
            messages.map { message in
                var m = message
                m.id = state.nextOutboxID
                state.nextOutboxID += 1
                state.outbox.append(m)
                return m.id
            }
        }

        func removeOutbox(ids: [Int64]) throws {
            let remove = Set(ids)
            state.outbox.removeAll { remove.contains($0.id) }
        }

        func pendingOutbox(runID: String) throws -> [OutboxMessage] {
            state.outbox.filter { $0.runID == runID }
        }

        func recordOutcome(runID: String, commandID: String, _ outcome: CommandOutcome) throws {
            let key = "\(runID)\u{0}\(commandID)"
            if state.outcomes[key] == nil { state.outcomes[key] = outcome }
        }
    }
}
