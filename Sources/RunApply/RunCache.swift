import RunContract
import RunStore
import Synchronization

/// The runs this worker wrote last, so that a command does not load and decode its run's
/// stored snapshot every time (issue 11: the load was 7 % of a command's CPU).
///
/// An entry is trusted only under the partition lease it was written under: it records the
/// run's partition and that lease's epoch, and is used only by a batch fenced with the same
/// lease. The store checks the fence in the batch's own transaction and bumps a partition's
/// epoch whenever its ownership changes, so a batch that commits under that lease knows that
/// no other worker wrote the partition's runs since the entry was made. A run changed anyway
/// (a commit without fence, a second process on the file without leases) is still caught by
/// the version-checked write when it appended events (a heartbeat appends none: see `RunStore`): the conflict evicts the batch's runs and the batch is decided
/// again from the store. Finished runs are not kept (retention may remove them, and commands
/// for them are rare). A command from a partition queue always writes its run back
/// (version-checked, to record the partition), refusals included, so its answer is checked
/// like any write. Not covered: a batch that writes nothing at all (only repeats of
/// commands already answered, or timers the run's copy shows not due) commits nothing, so
/// nothing checks its fence; a worker that lost its lease without knowing it may answer such
/// a repeat with its cached snapshot, as it would have answered from a store read it could not
/// fence either.
///
/// Bounded by count and by bytes (`Run.approximateBytes`): two generations of at most
/// `capacity / 2` entries and `byteBudget / 2` bytes each, the older dropped when the newer
/// fills (an approximate LRU without a list to maintain). A run larger than a sixteenth of a
/// generation is not kept: its commands load it from the store, a slower path but a bounded one,
/// so that a few runs with inputs of a megabyte cannot push out thousands of small ones.
public final class RunCache: Sendable {
    struct Entry {
        var run: Run
        var partition: Int
        var epoch: Int64
        var bytes: Int
    }

    private struct Generation {
        var entries: [String: Entry] = [:]
        var bytes = 0

        mutating func remove(_ id: String) -> Entry? {
            guard let entry = entries.removeValue(forKey: id) else { return nil }
            bytes -= entry.bytes
            return entry
        }
    }

    private struct Generations {
        var current = Generation()
        var previous = Generation()
    }

    public let capacity: Int
    /// The bytes the cache may hold (both generations).
    public let byteBudget: Int
    /// The largest run kept, in bytes.
    public var maxEntryBytes: Int { byteBudget / 32 }
    private let state = Mutex(Generations())

    /// - byteBudget: default 64 MiB, the run cache's share of the default memory budget.
    public init(capacity: Int = 8192, byteBudget: Int = 64 << 20) {
        self.capacity = max(capacity, 2)
        self.byteBudget = max(byteBudget, 64 << 10)
    }

    public var count: Int { state.withLock { $0.current.entries.count + $0.previous.entries.count } }

    /// The bytes held now (both generations, by `Run.approximateBytes`).
    public var bytes: Int { state.withLock { $0.current.bytes + $0.previous.bytes } }

    /// The entries for `runIDs` usable under `leases` (their partition's lease at the epoch
    /// they were written under).
    func runs(_ runIDs: Set<String>, under leases: [PartitionLease]) -> [String: Run] {
        guard !leases.isEmpty else { return [:] }
        return state.withLock { g in
            var found: [String: Run] = [:]
            for id in runIDs {
                guard let entry = g.current.entries[id] ?? g.previous.entries[id],
                    leases.contains(PartitionLease(partition: entry.partition, epoch: entry.epoch))
                else { continue }
                found[id] = entry.run
            }
            return found
        }
    }

    /// Records what a committed batch wrote, under the leases it was fenced with. A write
    /// without a known partition keeps the entry's; without a lease for it, nothing is kept.
    func committed(_ writes: [RunWrite], under leases: [PartitionLease]) {
        // Measured before the lock: walking a large input must not hold up readers.
        let sizes = writes.map { $0.run.status.isTerminal ? 0 : $0.run.approximateBytes }
        state.withLock { g in
            for (write, bytes) in zip(writes, sizes) {
                let id = write.run.runID
                let known = g.current.remove(id) ?? g.previous.remove(id)
                guard !write.run.status.isTerminal, let partition = write.partition ?? known?.partition,
                    let lease = leases.first(where: { $0.partition == partition })
                else { continue }
                guard bytes <= maxEntryBytes else { continue }
                if g.current.entries.count >= capacity / 2 || g.current.bytes + bytes > byteBudget / 2 {
                    g.previous = g.current
                    g.current = Generation()
                }
                g.current.entries[id] = Entry(run: write.run, partition: partition, epoch: lease.epoch, bytes: bytes)
                g.current.bytes += bytes
            }
        }
    }

    /// Forgets `runIDs` (a batch that failed or conflicted: the store decides again).
    func evict(_ runIDs: Set<String>) {
        state.withLock { g in
            for id in runIDs {
                _ = g.current.remove(id)
                _ = g.previous.remove(id)
            }
        }
    }
}
