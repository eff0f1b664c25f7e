import RunContract
import RunStateMachine
import RunStore
import Synchronization
import RunTestSupport
import Testing

@testable import RunApply
@testable import RunChaosKit
@testable import RunWorker

/// What the worker's own decision path (BatchApplier on the in-memory store) makes of a load:
/// every message it would publish recorded as the soak's subscriber records it, dead letters
/// counted by reason, timers fired at each `await` step.
func runThroughTheProcessor(_ plans: [PlannedRun]) async throws -> (Observed, [String: String], InMemoryRunStore) {
    let store = InMemoryRunStore()
    let clock = ManualClock(start: Timestamp(milliseconds: 1_900_000_000_000))
    let applier = BatchApplier(store: store, processor: CommandProcessor(machine: RunStateMachine()), clock: { clock.read() })
    var observed = Observed()
    var dead: [String: String] = [:]
    func take(_ batch: ProcessedBatch) {
        for m in batch.messages {
            switch m.destination {
            case .events: observed.record(type: m.type, body: m.body)
            case .dead:
                let reason = m.headers.first { $0.key == "x-reason" }.map { h -> String in
                    if case .string(let s) = h.value { s } else { "?" }
                }
                dead[m.messageID ?? "(none)"] = reason ?? "(none)"
            case .reply: break
            }
        }
    }
    for plan in plans {
        for step in plan.steps {
            switch step {
            case .send(let m):
                clock.advance(seconds: 0.001)
                take(try await applier.process([InboundCommand(
                    body: m.body, routingKey: m.routingKey, messageID: m.messageID, replyTo: nil, correlationID: nil)]))
            case .await(let seq):
                while (observed.contiguous[plan.runID] ?? 0) < seq {
                    guard let run = try await store.run(plan.runID), let due = RunStateMachine.nextDeadline(of: run) else { break }
                    clock.set(due)
                    take(try await applier.fireTimers(runIDs: [plan.runID]))
                }
            }
        }
    }
    return (observed, dead, store)
}

@Suite struct ChaosKitTests {
    /// A seed is a reproduction: the same seed gives the same messages and the same model.
    @Test func sameSeedSameLoad() {
        let a = planLoad(seed: 42, count: 300, prefix: "p", noise: 0.3)
        let b = planLoad(seed: 42, count: 300, prefix: "p", noise: 0.3)
        let c = planLoad(seed: 43, count: 300, prefix: "p", noise: 0.3)
        func bodies(_ plans: [PlannedRun]) -> [[UInt8]] {
            plans.flatMap { $0.steps.compactMap { if case .send(let m) = $0 { m.body } else { nil } } }
        }
        #expect(bodies(a) == bodies(b))
        #expect(a.map(\.events) == b.map(\.events))
        #expect(bodies(a) != bodies(c))
    }

    /// The load covers what the soak promises: every shape, every run ends terminal, and
    /// noise of each kind (refusals with several codes, repeats, dead letters of two reasons).
    @Test func theLoadCoversEveryShapeAndEndsEveryRun() {
        let plans = planLoad(seed: 7, count: 2_000, prefix: "p", noise: 0.2)
        #expect(Set(plans.map(\.shape)) == Set(Shapes.all.map(\.name)))
        #expect(plans.allSatisfy { $0.finalStatus?.isTerminal == true })
        let codes = Set(plans.flatMap(\.refusals.values))
        for code in ["run_not_found", "invalid_transition", "action_not_found", "version_conflict", "unknown_command", "validation_error"] {
            #expect(codes.contains(code), "no \(code) refusal in the load")
        }
        let dead = plans.reduce(into: [String: Int]()) { acc, p in for (k, v) in p.deadLetters { acc[k, default: 0] += v } }
        #expect(dead["malformed_message", default: 0] > 0)
        #expect(dead["validation_error", default: 0] > 0)
        let stops = Set(plans.compactMap { $0.events.last?.split(separator: " ").first { $0.hasPrefix("stop=") } })
        #expect(stops == ["stop=completed", "stop=error", "stop=cancelled", "stop=timeout", "stop=action_timeout", "stop=max_attempts"])
    }

    /// The model agrees with the worker's own processor on every run of a seeded load, run
    /// after run without faults: the checker finds nothing.
    @Test func theWorkersProcessorMatchesTheModel() async throws {
        let plans = planLoad(seed: 11, count: 600, prefix: "m", noise: 0.3)
        let (observed, dead, store) = try await runThroughTheProcessor(plans)
        var report = Report()
        report.check(plans, observed)
        report.compareDeadLetters(plans, got: dead, givenUp: [])
        for p in plans {
            let run = try await store.run(p.runID)
            report.compareSnapshot(p, status: run?.status.rawValue, version: run?.version)
        }
        #expect(report.violations == [])
        #expect(observed.isComplete(plans))
    }

    /// The hostile flood: every message refused or dead-lettered exactly as the model says,
    /// no run made, and both kinds of answer present.
    @Test func theFloodMatchesTheModel() async throws {
        let plans = planFlood(seed: 3, count: 1_500, prefix: "f")
        let (observed, dead, store) = try await runThroughTheProcessor(plans)
        var report = Report()
        report.check(plans, observed)
        report.compareDeadLetters(plans, got: dead, givenUp: [])
        #expect(report.violations == [])
        #expect(observed.events.isEmpty)
        #expect(Set(dead.values) == ["malformed_message", "validation_error", "payload_too_large"])
        #expect(Set(plans.flatMap(\.refusals.values)) == ["unknown_command", "validation_error", "run_not_found"])
        for p in plans.prefix(100) { #expect(try await store.run(p.runID) == nil) }
    }

    /// The checker catches what the soak exists to catch: a lost event, an event applied twice,
    /// a different event, a refusal missing or with another code, a refusal of an applied
    /// command, conflicting copies, dead letters off, a stored run off.
    @Test func theCheckerFindsEachKindOfViolation() async throws {
        let plans = planLoad(seed: 5, count: 200, prefix: "v", noise: 0.3)
        let (good, dead, _) = try await runThroughTheProcessor(plans)
        let withRefusal = plans.first { !$0.refusals.isEmpty }!
        let refused = withRefusal.refusals.first!
        let long = plans.first { $0.events.count >= 4 }!

        func violations(_ change: (inout Observed) -> Void) -> Report {
            var o = good
            change(&o)
            var r = Report()
            r.check(plans, o)
            return r
        }
        var r = violations { _ in }
        #expect(r.violations.isEmpty)

        r = violations { $0.events[long.runID]![2] = nil }
        #expect(r.lost == 1 && r.violations.count == 1)

        r = violations { $0.events[long.runID]![Int64(long.events.count) + 1] = "99 started created>running attempt=1" }
        #expect(r.duplicated == 1 && r.violations.count == 1)

        r = violations { $0.events[long.runID]![1] = $0.events[long.runID]![1]! + " cmd=other" }
        #expect(r.violations.count == 1)

        r = violations { $0.rejections[withRefusal.runID]![refused.key] = nil }
        #expect(r.violations.count == 1)

        r = violations { $0.rejections[withRefusal.runID]![refused.key] = "run_exists" }
        #expect(r.violations.count == 1)

        r = violations { $0.rejections[long.runID, default: [:]]["\(long.runID)-c1"] = "invalid_transition" }
        #expect(r.violations.count == 1)

        r = violations { $0.conflicting.append("x") }
        #expect(r.violations.count == 1)

        r = violations { $0.rejections["never-planned"] = ["c": "run_not_found"] }
        #expect(r.violations.count == 1)

        var d = Report()
        var fewer = dead
        fewer[dead.keys.sorted()[0]] = nil
        d.compareDeadLetters(plans, got: fewer, givenUp: [])
        #expect(d.lost == 1 && d.violations.count == 1)
        d = Report()
        var wrong = dead
        wrong[dead.keys.sorted()[0]] = "payload_too_large"
        d.compareDeadLetters(plans, got: wrong, givenUp: [])
        #expect(d.violations.count == 1)
        d = Report()
        var extra = dead
        extra["stray"] = "malformed_message"
        d.compareDeadLetters(plans, got: extra, givenUp: [])
        #expect(d.violations.count == 1)
        d = Report()
        d.compareDeadLetters(plans, got: dead, givenUp: ["run.x c-1"])
        #expect(d.lost == 1 && d.violations.count == 1)

        var s = Report()
        s.compareSnapshot(long, status: long.finalStatus?.rawValue, version: Int64(long.events.count) + 1)
        s.compareSnapshot(long, status: "running", version: Int64(long.events.count))
        s.compareSnapshot(long, status: nil, version: nil)
        #expect(s.violations.count == 3)
    }

    /// The subscriber's record: an event's copy that repeats is counted, one that differs is a
    /// conflict, gaps hold `contiguous` back.
    @Test func recordingEvents() {
        let machine = RunStateMachine()
        let t = machine.apply(
            Command(runID: "r", commandID: "c1", kind: .start(RunSpec())), to: nil, at: Timestamp(milliseconds: 1)
        )
        guard case .success(let transition) = t else {
            Issue.record("start refused")
            return
        }
        var o = Observed()
        let (created, started) = (transition.events[0], transition.events[1])
        o.record(type: "started", body: started.encode())
        #expect(o.contiguous["r"] == 0)
        o.record(type: "created", body: created.encode())
        #expect(o.contiguous["r"] == 2)
        o.record(type: "created", body: created.encode())
        #expect(o.repeats == 1 && o.conflicting.isEmpty)
        var sameDigest = created
        sameDigest.occurredAt = Timestamp(milliseconds: 99)
        o.record(type: "created", body: sameDigest.encode())
        #expect(o.conflicting.count == 1)  // a copy must be the same bytes
        var other = created
        other.commandID = "c9"
        o.record(type: "created", body: other.encode())
        #expect(o.conflicting.count == 2)
        o.record(type: "created", body: Array("{".utf8))
        #expect(o.undecodable == 1)
    }
}
