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
/// Bounded: two generations of `capacity / 2` entries, the older dropped when the newer fills
/// (an approximate LRU without a list to maintain).
public final class RunCache: Sendable {
    struct Entry {
        var run: Run
        var partition: Int
        var epoch: Int64
    }

    private struct Generations {
        var current: [String: Entry] = [:]
        var previous: [String: Entry] = [:]
    }

    public let capacity: Int
    private let state = Mutex(Generations())

    public init(capacity: Int = 8192) {
        self.capacity = max(capacity, 2)
    }

    public var count: Int { state.withLock { $0.current.count + $0.previous.count } }

    /// The entries for `runIDs` usable under `leases` (their partition's lease at the epoch
    /// they were written under).
    func runs(_ runIDs: Set<String>, under leases: [PartitionLease]) -> [String: Run] {
        guard !leases.isEmpty else { return [:] }
        return state.withLock { g in
            var found: [String: Run] = [:]
            for id in runIDs {
                guard let entry = g.current[id] ?? g.previous[id],
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
        state.withLock { g in
            for write in writes {
                let id = write.run.runID
                let known = g.current.removeValue(forKey: id) ?? g.previous.removeValue(forKey: id)
                guard !write.run.status.isTerminal, let partition = write.partition ?? known?.partition,
                    let lease = leases.first(where: { $0.partition == partition })
                else { continue }
                if g.current.count >= capacity / 2 {
                    g.previous = g.current
                    g.current = [:]
                    g.current.reserveCapacity(capacity / 2)
                }
                g.current[id] = Entry(run: write.run, partition: partition, epoch: lease.epoch)
            }
        }
    }

    /// Forgets `runIDs` (a batch that failed or conflicted: the store decides again).
    func evict(_ runIDs: Set<String>) {
        state.withLock { g in
            for id in runIDs {
                g.current.removeValue(forKey: id)
                g.previous.removeValue(forKey: id)
            }
        }
    }
}
