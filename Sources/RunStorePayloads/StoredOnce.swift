import Crypto
#if canImport(Glibc)
import Glibc
#endif
import RunContract
import RunStore

// Large values stored once: what the durable stores share.
//
// A run's input (and its result, its actions' fields and results) is written into the run's
// row and again into the body of each event that carries it (`created` and `started` both carry
// the spec). Before a commit writes a run row or an outbox row, every value of the run of at
// least `PayloadCutter.minimumBytes` serialized bytes is looked for in the row's bytes; each
// place it is found is cut out, the value is kept once per run in a payload row keyed by its
// SHA-256, and the row keeps what is left plus references (offset in what is left, length,
// digest). Reading a row splices the payloads back in. No JSON is parsed or written again: the
// bytes read are the bytes written, by construction, whatever the bytes are.
//
// Decisions:
// - Values are found by their bytes (a linear-time search), not by where the encoders put
//   them, so the stores need no knowledge of the bodies' layout and a value an encoder wrote
//   differently is simply not cut (stored inline as before).
// - Payloads are keyed by (run id, SHA-256 of the bytes): the same value written on every
//   transition of a run lands on the same row, and a row never changes once written, so a
//   reference can never come to mean other bytes. Payloads go with their run (retention).
// - Only values that do not change once set are candidates (input, metadata, resume_from, the
//   result, an action's fields and result); heartbeat details change with every heartbeat and
//   would leave a payload behind each time.

/// A large value, kept once per run.
public struct Payload: Sendable, Hashable {
    public var runID: String
    /// Lower-case hex SHA-256 of `bytes`.
    public var digest: String
    public var bytes: [UInt8]

    public init(runID: String, bytes: [UInt8]) {
        self.runID = runID
        self.bytes = bytes
        self.digest = SHA256.hash(data: bytes).map { Self.hex[Int($0 >> 4)] + Self.hex[Int($0 & 0xF)] }.joined()
    }

    private static let hex = (0..<16).map { String($0, radix: 16) }
}

/// Where a payload goes back into a stored body: `length` bytes of payload `digest`, inserted
/// at `offset` of the stored (cut) body.
public struct PayloadRef: Sendable, Hashable {
    public var offset: Int
    public var length: Int
    public var digest: String

    public init(offset: Int, length: Int, digest: String) {
        self.offset = offset
        self.length = length
        self.digest = digest
    }
}

/// A body as a store keeps it: the bytes left after the cuts, and where the payloads go back
/// (no references: the body is stored whole).
public struct StoredBody: Sendable, Hashable {
    public var bytes: [UInt8]
    public var refs: [PayloadRef]

    public init(bytes: [UInt8], refs: [PayloadRef] = []) {
        self.bytes = bytes
        self.refs = refs
    }

    /// The references as a column holds them, `offset:length:digest` separated by `;`; nil
    /// when there are none (rows written before payloads existed read the same way).
    public var encodedRefs: String? {
        refs.isEmpty ? nil : refs.map { "\($0.offset):\($0.length):\($0.digest)" }.joined(separator: ";")
    }

    /// The references a column holds (nil or empty: none). A malformed column is `corrupt`.
    public static func decodeRefs(_ text: String?) throws(StoreError) -> [PayloadRef] {
        guard let text, !text.isEmpty else { return [] }
        var refs: [PayloadRef] = []
        for item in text.split(separator: ";") {
            let parts = item.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 3, let offset = Int(parts[0]), let length = Int(parts[1]), offset >= 0, length >= 0,
                parts[2].utf8.count == 64
            else {
                throw StoreError(.corrupt, "stored payload reference \"\(item.prefix(100))\" is malformed")
            }
            refs.append(PayloadRef(offset: offset, length: length, digest: String(parts[2])))
        }
        return refs
    }

    /// The body as written: the stored bytes with each payload spliced back at its offset.
    /// `payloads` maps digests to bytes; a missing or mis-sized payload is `corrupt`.
    public func spliced(_ payloads: [String: [UInt8]]) throws(StoreError) -> [UInt8] {
        guard !refs.isEmpty else { return bytes }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + refs.reduce(0) { $0 + $1.length })
        var at = 0
        for ref in refs {
            guard ref.offset >= at, ref.offset <= bytes.count else {
                throw StoreError(.corrupt, "stored payload reference at \(ref.offset) lies outside its body")
            }
            guard let payload = payloads[ref.digest], payload.count == ref.length else {
                throw StoreError(.corrupt, "stored payload \(ref.digest) is missing or not \(ref.length) bytes")
            }
            out.append(contentsOf: bytes[at..<ref.offset])
            out.append(contentsOf: payload)
            at = ref.offset
        }
        out.append(contentsOf: bytes[at...])
        return out
    }

    /// `bytes` with the payloads of `refs` spliced back, for rows read with their references.
    public static func read(_ bytes: [UInt8], refs text: String?, payloads: [String: [UInt8]]) throws(StoreError) -> [UInt8] {
        try StoredBody(bytes: bytes, refs: decodeRefs(text)).spliced(payloads)
    }
}

/// Cuts the large values of a commit's runs out of the bodies the commit writes, and collects
/// the payloads the cut bodies refer to (each once). A commit cuts its runs first (`cutRun`),
/// then its outbox rows (`cut`): a row's candidates are the values of its run as written by the
/// same commit (an event always comes with its run's write); rows of other runs stay whole.
public struct PayloadCutter {
    /// Values smaller than this stay inline: small runs pay nothing.
    public static let minimumBytes = 4_096

    private let minimumBytes: Int
    private var candidates: [String: [Candidate]] = [:]
    /// The payloads referred to by a body cut so far, in first-use order, each once.
    public private(set) var payloads: [Payload] = []
    private var used = Set<[String]>()

    public init(minimumBytes: Int = PayloadCutter.minimumBytes) {
        self.minimumBytes = minimumBytes
    }

    /// The run's storage form with its large values cut out; they become the candidates for the
    /// run's outbox rows. A run whose storage form is smaller than `minimumBytes` can hold no
    /// large value: nothing else is serialized for it.
    public mutating func cutRun(_ run: Run) -> StoredBody {
        let body = run.encodeForStorage()
        guard body.count >= minimumBytes else { return StoredBody(bytes: body) }
        var seen = Set<[UInt8]>()
        var list: [Candidate] = []
        for value in Self.values(of: run) {
            let bytes = value.serialized()
            guard bytes.count >= minimumBytes, seen.insert(bytes).inserted else { continue }
            list.append(Candidate(bytes: bytes))
        }
        // Longest first, so that a value inside another is cut only where the outer one is not.
        candidates[run.runID] = list.isEmpty ? nil : list.sorted { $0.bytes.count > $1.bytes.count }
        return cut(body, runID: run.runID)
    }

    /// The values of a run that never change once set, in no particular order.
    static func values(of run: Run) -> [JSONValue] {
        var values: [JSONValue] = []
        if let input = run.input { values.append(input) }
        if let metadata = run.metadata { values.append(.object(metadata)) }
        if let resumeFrom = run.resumeFrom { values.append(resumeFrom) }
        if let result = run.result { values.append(result) }
        for action in run.actions {
            values.append(contentsOf: action.fields.entries.map(\.value))
            if let result = action.result { values.append(result) }
        }
        return values
    }

    /// `body` of a row of run `runID` with every occurrence of the run's large values cut out.
    public mutating func cut(_ body: [UInt8], runID: String) -> StoredBody {
        guard var list = candidates[runID] else { return StoredBody(bytes: body) }
        // Cuts as (start, end, candidate index) in `body`'s coordinates, never overlapping.
        var cuts: [(start: Int, end: Int, index: Int)] = []
        for index in list.indices where list[index].bytes.count <= body.count {
            let length = list[index].bytes.count
            for start in list[index].occurrences(in: body) where !cuts.contains(where: { start < $0.end && $0.start < start + length }) {
                cuts.append((start, start + length, index))
            }
        }
        guard !cuts.isEmpty else { return StoredBody(bytes: body) }
        cuts.sort { $0.start < $1.start }
        var stored = StoredBody(bytes: [])
        stored.bytes.reserveCapacity(body.count - cuts.reduce(0) { $0 + $1.end - $1.start })
        var at = 0
        for cut in cuts {
            stored.bytes.append(contentsOf: body[at..<cut.start])
            let payload = list[cut.index].payload(of: runID)
            stored.refs.append(PayloadRef(offset: stored.bytes.count, length: cut.end - cut.start, digest: payload.digest))
            if used.insert([runID, payload.digest]).inserted { payloads.append(payload) }
            at = cut.end
        }
        stored.bytes.append(contentsOf: body[at...])
        candidates[runID] = list
        return stored
    }

    /// One large value: its bytes, and (made when first needed) its payload.
    struct Candidate {
        let bytes: [UInt8]
        private var payload: Payload?

        init(bytes: [UInt8]) { self.bytes = bytes }

        /// The value as a payload of run `runID`, hashed once.
        mutating func payload(of runID: String) -> Payload {
            if let payload { return payload }
            let made = Payload(runID: runID, bytes: bytes)
            payload = made
            return made
        }

        /// The start of every non-overlapping occurrence of `bytes` in `text`, left to right:
        /// glibc's memmem (the two-way algorithm), linear in both lengths whatever the bytes
        /// (a value cannot make a commit quadratic) and without a table. A Knuth–Morris–Pratt
        /// table of 4 bytes per byte of value, kept per candidate, held 184 MB at the peak of
        /// runbench large (2 000 runs of 200 KB).
        func occurrences(in text: [UInt8]) -> [Int] {
            let m = bytes.count
            guard m > 0, m <= text.count else { return [] }
            var starts: [Int] = []
            bytes.withUnsafeBytes { p in
                text.withUnsafeBytes { t in
                    guard let needle = p.baseAddress, let base = t.baseAddress else { return }
                    var from = 0
                    while t.count - from >= m, let hit = glibcMemmem(base + from, t.count - from, needle, m) {
                        let start = base.distance(to: UnsafeRawPointer(hit))
                        starts.append(start)
                        from = start + m  // non-overlapping: go on after a match
                    }
                }
            }
            return starts
        }
    }
}

/// glibc's memmem: a GNU extension, which Swift's Glibc module leaves out, so by symbol.
private typealias Memmem = @convention(c) (UnsafeRawPointer?, Int, UnsafeRawPointer?, Int) -> UnsafeMutableRawPointer?
private let glibcMemmem: Memmem = unsafeBitCast(dlsym(UnsafeMutableRawPointer(bitPattern: 0), "memmem")!, to: Memmem.self)
