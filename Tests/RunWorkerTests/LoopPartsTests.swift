import RunContract
import RunStore
import Testing

@testable import RunApply
@testable import RunWorker

// The worker loop's decisions, each a value type driven by hand: no broker, no store, no clock.

@Suite struct PartitionBalancerTests {
    /// The fair share is the partitions divided by the live workers, rounded up, so every
    /// partition has an owner; a count of 0 (nobody seen yet) counts as this worker alone.
    @Test(arguments: [(8, 1, 8), (8, 2, 4), (8, 3, 3), (8, 8, 1), (8, 9, 1), (8, 0, 8), (1, 5, 1), (1024, 3, 342)])
    func fairShare(partitions: Int, workers: Int, share: Int) {
        #expect(PartitionBalancer.fairShare(partitions: partitions, workers: workers) == share)
    }

    /// A worker with nothing tries every partition, starting at its own offset, until it
    /// holds its share.
    @Test func claimsFromItsOffset() {
        let b = PartitionBalancer(partitions: 8, offset: 5)
        #expect(b.plan(liveWorkers: 2) == .claim(candidates: [5, 6, 7, 0, 1, 2, 3, 4], want: 4))
    }

    /// Partitions already held are not candidates; holding the share means keeping it.
    @Test func keepsItsShare() {
        var b = PartitionBalancer(partitions: 8, offset: 0)
        for p in [0, 2, 4, 6] { b.claimed(p) }
        #expect(b.plan(liveWorkers: 2) == .keep)
        #expect(b.plan(liveWorkers: 1) == .claim(candidates: [1, 3, 5, 7], want: 4))
    }

    /// When a worker joins, the extras go, highest first, so workers converge on a stable split.
    @Test func releasesHighestFirst() {
        var b = PartitionBalancer(partitions: 8, offset: 3)
        for p in 0..<8 { b.claimed(p) }
        #expect(b.plan(liveWorkers: 2) == .release([7, 6, 5, 4]))
        #expect(b.plan(liveWorkers: 3) == .release([7, 6, 5, 4, 3]))
        for p in [7, 6, 5, 4] { b.released(p) }
        #expect(b.plan(liveWorkers: 2) == .keep)
    }

    /// A partition the broker took away is claimed again; a lost connection loses everything.
    @Test func lostPartitionsAreClaimedAgain() {
        var b = PartitionBalancer(partitions: 4, offset: 0)
        for p in 0..<4 { b.claimed(p) }
        b.lost(2)
        #expect(b.plan(liveWorkers: 1) == .claim(candidates: [2], want: 1))
        b.reset()
        #expect(b.owned.isEmpty)
    }

    /// Any offset, even negative or past the count, names a partition.
    @Test func offsetIsNormalised() {
        #expect(PartitionBalancer(partitions: 8, offset: -3).offset == 5)
        #expect(PartitionBalancer(partitions: 8, offset: 19).offset == 3)
    }
}

@Suite struct ConfirmPipelineTests {
    /// A batch completes only when all its messages are confirmed and every earlier batch has
    /// completed: acks leave in the order the batches were applied.
    @Test func completesInOrder() throws {
        var p = ConfirmPipeline<String>(depth: 4)
        p.published(tags: 1...3, completion: "A")
        p.published(tags: 4...5, completion: "B")
        try p.confirmed(tag: 4, acked: true)
        try p.confirmed(tag: 5, acked: true)
        #expect(p.takeCompleted().isEmpty)
        try p.confirmed(tag: 1, acked: true)
        try p.confirmed(tag: 3, acked: true)
        #expect(p.takeCompleted().isEmpty)
        try p.confirmed(tag: 2, acked: true)
        #expect(p.takeCompleted() == ["A", "B"])
        #expect(p.isEmpty)
    }

    /// A batch that published nothing (all duplicates answered without events, say) completes
    /// as soon as those before it do, not before.
    @Test func emptyBatchWaitsForThoseBefore() throws {
        var p = ConfirmPipeline<String>(depth: 4)
        p.published(tags: nil, completion: "alone")
        #expect(p.takeCompleted() == ["alone"])
        p.published(tags: 1...1, completion: "A")
        p.published(tags: nil, completion: "empty")
        #expect(p.takeCompleted().isEmpty)
        try p.confirmed(tag: 1, acked: true)
        #expect(p.takeCompleted() == ["A", "empty"])
    }

    /// A nack stops everything: the caller must not ack and restarts the session.
    @Test func nackThrows() {
        var p = ConfirmPipeline<String>(depth: 2)
        p.published(tags: 1...2, completion: "A")
        #expect(throws: ConfirmPipeline<String>.Nacked(deliveryTag: 2)) { try p.confirmed(tag: 2, acked: false) }
        #expect(p.takeCompleted().isEmpty)
    }

    /// The pipeline is full at its depth; a confirm for a tag it does not track changes nothing.
    @Test func depthAndStrayConfirms() throws {
        var p = ConfirmPipeline<Int>(depth: 2)
        p.published(tags: 1...1, completion: 1)
        #expect(!p.isFull)
        p.published(tags: 2...2, completion: 2)
        #expect(p.isFull && p.count == 2 && p.pending == [1, 2])
        try p.confirmed(tag: 99, acked: true)
        #expect(p.takeCompleted().isEmpty)
        p.reset()
        #expect(p.isEmpty)
    }
}

@Suite struct PoisonGuardTests {
    let guardian = PoisonGuard(deliveryLimit: 5)

    /// A redelivered message is applied until its deliveries pass the limit; the dead letter
    /// reports the deliveries before this one.
    @Test func redeliveries() {
        #expect(guardian.redelivered(attempts: 1) == .apply)
        #expect(guardian.redelivered(attempts: 5) == .apply)
        #expect(guardian.redelivered(attempts: 6) == .deadLetter(attempts: 5))
    }

    /// A failing message is requeued with a pause that grows (capped at 1 s) and is
    /// dead-lettered at the limit.
    @Test func failures() {
        #expect(guardian.failed(failures: 1) == .requeue(pauseSeconds: 0.1))
        #expect(guardian.failed(failures: 4) == .requeue(pauseSeconds: 0.4))
        #expect(guardian.failed(failures: 5) == .deadLetter(attempts: 5))
        #expect(PoisonGuard(deliveryLimit: 50).failed(failures: 30) == .requeue(pauseSeconds: 1))
    }

    /// A message is known by its command id, or else by a hash of its routing key and body.
    @Test func messageKeys() {
        #expect(PoisonGuard.messageKey(routingKey: "r1", messageID: "c1", body: [1]) == "id:r1:c1")
        let a = PoisonGuard.messageKey(routingKey: "r1", messageID: nil, body: Array("x".utf8))
        #expect(a == PoisonGuard.messageKey(routingKey: "r1", messageID: "", body: Array("x".utf8)))
        #expect(a != PoisonGuard.messageKey(routingKey: "r1", messageID: nil, body: Array("y".utf8)))
        #expect(a.hasPrefix("hash:"))
    }
}

@Suite struct LoopScheduleTests {
    /// Every chore is due at the start; then each comes back one interval after it ran.
    @Test func choresComeDue() {
        var s = LoopSchedule(renewLeases: 3, rebalance: 1, outboxSweep: 5, timerSweep: 0.1, status: 0.2)
        #expect(s.due(at: 100) == [.renewLeases, .rebalance, .outboxSweep, .timerSweep, .status])
        #expect(s.due(at: 100.05).isEmpty)
        #expect(s.due(at: 100.1) == [.timerSweep])
        #expect(s.due(at: 100.2) == [.timerSweep, .status])
        #expect(s.due(at: 101) == [.rebalance, .timerSweep, .status])
        #expect(s.due(at: 103) == [.renewLeases, .rebalance, .timerSweep, .status])
        #expect(s.due(at: 105) == [.rebalance, .outboxSweep, .timerSweep, .status])
    }

    /// The loop waits until the earliest chore (never negative, never past the limit), and a
    /// chore asked for `soon` is due at once.
    @Test func waitsAndSoon() {
        var s = LoopSchedule(renewLeases: 3, rebalance: 1, outboxSweep: 5, timerSweep: 0.5, status: 0.2)
        _ = s.due(at: 10)
        #expect(abs(s.wait(at: 10, limit: 1) - 0.2) < 1e-9)
        #expect(s.wait(at: 10, limit: 0.1) == 0.1)
        #expect(s.wait(at: 11, limit: 1) == 0)
        s.soon(.timerSweep)
        #expect(s.wait(at: 10, limit: 1) == 0)
        #expect(s.due(at: 10) == [.timerSweep])
    }
}

@Suite struct ReconnectBackoffTests {
    /// Reconnect delays double up to the cap and start afresh after a session that was up.
    @Test func doublesAndResets() {
        var b = ReconnectBackoff(initial: 0.2, max: 1)
        #expect([b.next(sessionWasUp: false), b.next(sessionWasUp: false), b.next(sessionWasUp: false),
                 b.next(sessionWasUp: false)] == [0.2, 0.4, 0.8, 1])
        #expect(b.next(sessionWasUp: true) == 0.2)
        #expect(b.next(sessionWasUp: false) == 0.4)
    }
}

@Suite struct AckTests {
    /// One `basic.ack` with `multiple` per channel, at the highest tag read on it.
    @Test func highestTagPerChannel() {
        func r(_ channel: UInt16, _ tag: UInt64) -> Received {
            Received(channel: channel, tag: tag, redelivered: false, command: InboundCommand(body: [], routingKey: "r"))
        }
        #expect(Received.highestTags([r(3, 7), r(2, 4), r(3, 9), r(2, 5), r(3, 8)]) == [
            Ack(channel: 2, tag: 5, multiple: true), Ack(channel: 3, tag: 9, multiple: true),
        ])
        #expect(Received.highestTags([]).isEmpty)
    }
}

@Suite struct LeaseTableTests {
    func lease(_ p: Int, _ e: Int64) -> PartitionLease { PartitionLease(partition: p, epoch: e) }

    /// Leases are trusted for half their ttl from when the call that took them was sent;
    /// holding none, there is nothing to protect.
    @Test func validForHalfTheTTLFromTheCall() {
        var t = LeaseTable(ttl: 10)
        #expect(t.isValid(at: 0))
        t.acquired(lease(0, 1), sentAt: 100)
        #expect(t.isValid(at: 104.9))
        #expect(!t.isValid(at: 105))
        // A later acquisition does not extend the older lease's trust.
        t.acquired(lease(1, 3), sentAt: 103)
        #expect(!t.isValid(at: 105))
        #expect(t.partitions == [0, 1])
    }

    /// A renewal restarts the safe half from when it was sent, forgets and returns what the
    /// store did not keep, and leaves alone a lease taken again meanwhile (another epoch).
    @Test func renewalDropsWhatWasLost() {
        var t = LeaseTable(ttl: 10)
        t.acquired(lease(0, 1), sentAt: 0)
        t.acquired(lease(1, 1), sentAt: 0)
        t.acquired(lease(2, 1), sentAt: 0)
        let held = t.all
        t.remove([2])
        t.acquired(lease(2, 5), sentAt: 1)
        let lost = t.renewed(held: held, kept: [lease(0, 1)], sentAt: 3)
        #expect(lost == [1])
        #expect(t.all == [lease(0, 1), lease(2, 5)])
        #expect(t.isValid(at: 7.9) && !t.isValid(at: 8))
    }

    /// Giving everything up empties the table (and it is trivially valid again); unused leases
    /// are those without a consumer.
    @Test func removeAllAndUnused() {
        var t = LeaseTable(ttl: 4)
        t.acquired(lease(0, 1), sentAt: 0)
        t.acquired(lease(3, 2), sentAt: 0)
        #expect(t.unused(consumed: [0]) == [lease(3, 2)])
        #expect(t.removeAll() == 2)
        #expect(t.isEmpty && t.isValid(at: 100))
    }
}

@Suite struct BatchLengthTests {
    static func received(_ sizes: [Int]) -> [Received] {
        sizes.enumerated().map { i, n in
            Received(channel: 1, tag: UInt64(i + 1), redelivered: false,
                     command: InboundCommand(body: [UInt8](repeating: 0x20, count: n), routingKey: "r"))
        }
    }

    /// A batch stops at the count or at the byte bound, whichever comes first, and always takes
    /// the first delivery, however large, so that a body over the bound is applied alone.
    @Test func boundedByCountAndBytes() {
        #expect(Received.batchLength(Self.received([10, 10, 10, 10]), count: 3, bytes: 1_000) == 3)
        #expect(Received.batchLength(Self.received([400, 400, 400, 400]), count: 512, bytes: 1_000) == 2)
        #expect(Received.batchLength(Self.received([400, 600, 1]), count: 512, bytes: 1_000) == 2)
        #expect(Received.batchLength(Self.received([5_000, 10]), count: 512, bytes: 1_000) == 1)
        #expect(Received.batchLength(Self.received([]), count: 512, bytes: 1_000) == 0)
    }

    /// The default budget (256 MiB) bounds a batch at 8 MiB of bodies: 41 of 200 KB, not 512.
    @Test func defaultShare() {
        let settings = WorkerSettings()
        #expect(settings.batchBytes == 8 << 20)
        #expect(Received.batchLength(Self.received(Array(repeating: 200_000, count: 512)), count: 512, bytes: settings.batchBytes) == 41)
    }
}

@Suite struct ReadAheadTests {
    /// The read-ahead counts its bodies' bytes through every way in and out: appended,
    /// taken as a batch, put back at the front, dropped by channel, taken whole.
    @Test func countsBytesInAndOut() {
        var r = ReadAhead()
        for d in BatchLengthTests.received([100, 200, 300, 400]) { r.append(d) }
        #expect(r.bytes == 1_000 && r.count == 4)
        let batch = r.takeBatch(count: 512, bytes: 350)
        #expect(batch.map(\.command.body.count) == [100, 200] && r.bytes == 700)
        r.putBack(batch)
        #expect(r.items.map(\.command.body.count) == [100, 200, 300, 400] && r.bytes == 1_000)
        var other = BatchLengthTests.received([50])[0]
        other.channel = 2
        r.append(other)
        r.removeAll { $0.channel == 1 }
        #expect(r.count == 1 && r.bytes == 50)
        #expect(r.takeAll().count == 1 && r.isEmpty && r.bytes == 0)
    }

    /// Reading stops once the bytes reach the limit, not before.
    @Test func mayReadMoreBelowTheLimit() {
        var r = ReadAhead()
        #expect(r.mayReadMore(limit: 1))
        for d in BatchLengthTests.received([600, 399]) { r.append(d) }
        #expect(r.mayReadMore(limit: 1_000))
        r.append(BatchLengthTests.received([1])[0])
        #expect(!r.mayReadMore(limit: 1_000))
        #expect(WorkerSettings().readAheadBytes == 16 << 20)
    }
}
