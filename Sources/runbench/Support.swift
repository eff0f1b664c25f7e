import Foundation
import RunStore
import RunStores
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Monotonic nanoseconds (CLOCK_MONOTONIC): every timestamp the benchmark compares comes from here.
func nowNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func sleepNs(_ ns: UInt64) {
    guard ns > 0 else { return }
    var ts = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    var rest = timespec()
    while nanosleep(&ts, &rest) != 0 && errno == EINTR { ts = rest }
}

/// A thread that can be joined, with the error its body threw.
/// `@unchecked Sendable`: `error` is written by the thread before `done` is signalled and read
/// only after `join` waited for it.
final class Joinable: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var error: Error?

    init(name: String, _ body: @escaping @Sendable () throws -> Void) {
        let thread = Thread { [self] in
            do { try body() } catch { self.error = error }
            self.done.signal()
        }
        thread.name = name
        thread.start()
    }

    func join() throws {
        done.wait()
        done.signal()  // joinable more than once
        if let error { throw error }
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

// MARK: - /proc

enum Proc {
    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    /// utime + stime of a process, in clock ticks.
    static func cpuTicks(_ pid: Int32) -> UInt64? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        // Fields after the command name start at field 3 (state); utime is 14, stime 15.
        let fields = s[s.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let u = UInt64(fields[11]), let k = UInt64(fields[12]) else { return nil }
        return u + k
    }

    /// (VmRSS, VmHWM) in KiB.
    static func memory(_ pid: Int32) -> (rss: Int, hwm: Int)? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        var rss = -1, hwm = -1
        for line in s.split(separator: "\n") {
            if line.hasPrefix("VmRSS:") { rss = Int(line.split(separator: " ")[1]) ?? -1 }
            if line.hasPrefix("VmHWM:") { hwm = Int(line.split(separator: " ")[1]) ?? -1 }
        }
        return rss < 0 || hwm < 0 ? nil : (rss, hwm)
    }

    /// Processes whose command name (`/proc/<pid>/comm`) is `name`: the broker is `beam.smp`.
    static func pids(named name: String) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { e in
            guard let pid = Int32(e),
                  let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8),
                  comm.trimmingCharacters(in: .whitespacesAndNewlines) == name else { return nil }
            return pid
        }
    }

    /// What a command printed, or nil when it could not run or failed.
    static func output(_ executable: String, _ arguments: [String]) -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return p.terminationStatus == 0 ? String(decoding: data, as: UTF8.self) : nil
    }
}

/// CPU used by a set of processes over an interval, in cores (1.0 = one core busy).
struct CPUMeter {
    let pids: [String: [Int32]]
    private var start: [String: UInt64] = [:]
    private var startNs: UInt64 = 0

    init(_ pids: [String: [Int32]]) {
        self.pids = pids
        startNs = nowNs()
        for (k, ps) in pids { start[k] = ps.compactMap(Proc.cpuTicks).reduce(0, +) }
    }

    /// CPU seconds each group used since the start.
    func seconds() -> [String: Double] {
        var out: [String: Double] = [:]
        for (k, ps) in pids {
            let ticks = ps.compactMap(Proc.cpuTicks).reduce(0, +)
            out[k] = Double(ticks &- (start[k] ?? 0)) / Proc.ticksPerSecond
        }
        return out
    }

    /// Microseconds of CPU per command of each group, for `commands` commands.
    func microsecondsPer(_ commands: Int) -> [String: Double] {
        seconds().mapValues { $0 / Double(max(1, commands)) * 1e6 }
    }

    func cores() -> [String: Double] {
        let wall = Double(nowNs() - startNs) / 1e9
        var out: [String: Double] = [:]
        for (k, ps) in pids {
            let ticks = ps.compactMap(Proc.cpuTicks).reduce(0, +)
            out[k] = Double(ticks &- (start[k] ?? 0)) / Proc.ticksPerSecond / wall
        }
        return out
    }
}

// MARK: - statistics and formatting

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let i = min(sorted.count - 1, max(0, Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1))
    return sorted[i]
}

func fmt(_ v: Double, _ decimals: Int = 0) -> String {
    guard v.isFinite else { return "n/a" }
    return String(format: "%.\(decimals)f", v)
}

func say(_ s: String) {
    FileHandle.standardError.write(Data(("[runbench] " + s + "\n").utf8))
}

/// Runs async work (a store's calls) to its end from a synchronous phase.
func blockingAwait<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let box = Mutex<Result<T, Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        let result: Result<T, Error>
        do { result = .success(try await body()) } catch { result = .failure(error) }
        box.withLock { $0 = result }
        done.signal()
    }
    done.wait()
    return try box.withLock { $0! }.get()
}

/// Opens the store at `url` for runbench's own reads and writes and runs `body` with it to its
/// end, from a synchronous phase; a PostgreSQL store's client runs meanwhile.
func withBenchStore<T: Sendable>(
    url: String, synchronous: SQLiteRunStore.Synchronous = .full, _ body: @escaping @Sendable (any RunStore) async throws -> T
) throws -> T {
    try blockingAwait {
        let store = try openRunStore(url: url, sqliteSynchronous: synchronous)
        let client: Task<Void, Error>? = (store as? PostgresRunStore).map { pg in Task { try await pg.run() } }
        defer { client?.cancel() }
        return try await body(store)
    }
}
