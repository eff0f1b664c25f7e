import RunContract

/// What a subscriber that saw everything recorded, per run.
public struct Observed: Sendable {
    /// run id → seq → digest of the first copy.
    public var events: [String: [Int64: String]] = [:]
    /// run id → seq → hash of the first copy's body: a copy must be the same bytes.
    public var bodies: [String: [Int64: Int]] = [:]
    /// run id → highest seq up to which nothing is missing.
    public var contiguous: [String: Int64] = [:]
    /// Copies of an event already seen (at-least-once delivery allows them).
    public var repeats = 0
    /// Copies that differ from the first one of their seq, and refusals of one command with
    /// two different codes: never allowed.
    public var conflicting: [String] = []
    /// run id → command id → error code of its `command_rejected`.
    public var rejections: [String: [String: String]] = [:]
    public var rejectionCopies = 0
    public var undecodable = 0
    public var total = 0

    public init() {}

    /// Records one message from the events exchange (`type` is its AMQP `type` property).
    public mutating func record(type: String?, body: [UInt8]) {
        total += 1
        if type == "command_rejected" {
            guard let r = try? CommandRejected.decode(body), let id = r.commandID else {
                undecodable += 1
                return
            }
            if let first = rejections[r.runID]?[id] {
                rejectionCopies += 1
                if first != r.error.code.rawValue {
                    conflicting.append("\(r.runID): command \(id) refused \(first), then \(r.error.code.rawValue)")
                }
            } else {
                rejections[r.runID, default: [:]][id] = r.error.code.rawValue
            }
            return
        }
        guard let e = try? RunEvent.decode(body) else {
            undecodable += 1
            return
        }
        let d = digest(e)
        let hash = body.hashValue
        if let first = events[e.runID]?[e.seq] {
            repeats += 1
            if first != d {
                conflicting.append("\(e.runID): seq \(e.seq) was \(first), then \(d)")
            } else if bodies[e.runID]?[e.seq] != hash {
                conflicting.append("\(e.runID): seq \(e.seq) published again with a different body")
            }
            return
        }
        events[e.runID, default: [:]][e.seq] = d
        bodies[e.runID, default: [:]][e.seq] = hash
        var c = contiguous[e.runID] ?? 0
        while events[e.runID]?[c + 1] != nil { c += 1 }
        contiguous[e.runID] = c
    }

    /// Whether every planned event and refusal has arrived.
    public func isComplete(_ plans: [PlannedRun]) -> Bool {
        plans.allSatisfy { p in
            (contiguous[p.runID] ?? 0) >= Int64(p.events.count)
                && p.refusals.keys.allSatisfy { rejections[p.runID]?[$0] != nil }
        }
    }
}

/// The checker: the observed outcome against the model's, a line per violation.
public struct Report: Sendable {
    public private(set) var violations: [String] = []
    /// Planned events that never arrived, and commands given up by the worker.
    public private(set) var lost = 0
    /// Events beyond the model's (a command or timer applied more than once, or one applied
    /// that the model refused).
    public private(set) var duplicated = 0
    /// Called with each violation as it is found (for a live log).
    public var onViolation: (@Sendable (String) -> Void)?

    public init(onViolation: (@Sendable (String) -> Void)? = nil) {
        self.onViolation = onViolation
    }

    public mutating func violation(_ s: String) {
        violations.append(s)
        onViolation?(s)
    }

    /// Events: per run gapless, exactly the model's, in `seq` order (a repeat must equal its
    /// first copy); refusals: every one the model expects, with its code, and no other.
    /// `stuck`: runs the driver gave up waiting for.
    public mutating func check(_ plans: [PlannedRun], _ o: Observed, stuck: [String: String] = [:]) {
        for c in o.conflicting { violation("conflicting copies: \(c)") }
        if o.undecodable > 0 { violation("\(o.undecodable) messages on the events exchange did not decode") }
        let known = Set(plans.map(\.runID))
        for run in o.events.keys.sorted() where !known.contains(run) { violation("events for a run never planned: \(run)") }
        for run in o.rejections.keys.sorted() where !known.contains(run) { violation("refusals for a run never planned: \(run)") }
        for (run, seqs) in o.events where seqs.keys.contains(where: { $0 < 1 }) { violation("\(run): an event with seq < 1") }
        for p in plans {
            if let s = stuck[p.runID] { violation("\(p.runID) (\(p.shape)): \(s)") }
            let seen = o.events[p.runID] ?? [:]
            let last = max(seen.keys.max() ?? 0, Int64(p.events.count))
            var seq: Int64 = 1
            while seq <= last {
                let expected = seq <= p.events.count ? p.events[Int(seq) - 1] : nil
                switch (expected, seen[seq]) {
                case (let e?, nil):
                    lost += 1
                    violation("\(p.runID) (\(p.shape)): seq \(seq) missing, the model says \(e)")
                case (nil, let g?):
                    duplicated += 1
                    violation("\(p.runID) (\(p.shape)): seq \(seq) is \(g), beyond the model's \(p.events.count) events")
                case (let e?, let g?) where e != g:
                    violation("\(p.runID) (\(p.shape)): seq \(seq) is \(g), the model says \(e)")
                default:
                    break
                }
                seq += 1
            }
            let refusals = o.rejections[p.runID] ?? [:]
            for (id, code) in p.refusals.sorted(by: { $0.key < $1.key }) {
                if let got = refusals[id] {
                    if got != code { violation("\(p.runID) (\(p.shape)): command \(id) refused \(got), the model says \(code)") }
                } else {
                    violation("\(p.runID) (\(p.shape)): command \(id) got no command_rejected, the model refuses it \(code)")
                }
            }
            for (id, code) in refusals.sorted(by: { $0.key < $1.key }) where p.refusals[id] == nil {
                violation("\(p.runID) (\(p.shape)): command \(id) refused \(code), the model applies it")
            }
        }
    }

    /// The dead-letter queue must hold exactly the unattributable messages sent, each with
    /// its reason (by message id: a copy of one is at-least-once delivery, not a violation), and
    /// never a command given up after its delivery limit (`givenUp`, each one lost).
    public mutating func compareDeadLetters(_ plans: [PlannedRun], got: [String: String], givenUp: [String]) {
        var expected: [String: String] = [:]
        for p in plans { expected.merge(p.deadLetterIDs) { a, _ in a } }
        for g in givenUp {
            lost += 1
            violation("dead-lettered after its delivery limit: \(g)")
        }
        for (id, reason) in expected.sorted(by: { $0.key < $1.key }) {
            switch got[id] {
            case nil:
                lost += 1
                violation("message \(id) should be dead-lettered (\(reason)); it is not in the dead-letter queue")
            case let r? where r != reason:
                violation("message \(id) dead-lettered as \(r), the model says \(reason)")
            default:
                break
            }
        }
        for (id, reason) in got.sorted(by: { $0.key < $1.key }) where expected[id] == nil {
            violation("message \(id) dead-lettered (\(reason)), the model applies or refuses it")
        }
    }

    /// A stored snapshot must have the model's final status, at the version its events reached.
    public mutating func compareSnapshot(_ p: PlannedRun, status: String?, version: Int64?) {
        if status != p.finalStatus?.rawValue || version != Int64(p.events.count) {
            violation("\(p.runID) (\(p.shape)): stored \(status ?? "nothing") at version \(version.map(String.init) ?? "none"), the model says \(p.finalStatus?.rawValue ?? "?") at \(p.events.count)")
        }
    }
}
