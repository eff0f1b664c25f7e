import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Runs a program to completion with its output (stdout and stderr) in a file, bounded by
/// `timeout` (SIGTERM, then SIGKILL 5 s later, and `TestKitError.timedOut`). Returns the exit
/// status (128 + the signal when killed) and the output.
///
/// posix_spawn and waitpid rather than Foundation's `Process`: a child spawned from a test
/// thread inherits that thread's blocked signals (SIGCHLD and SIGTERM among them), which hung
/// `runuser` in scripts/postgres, and `Process` left an exited script unreaped (a zombie it
/// still reported as running). Here the child starts with every signal unblocked and at its
/// default, and this function reaps it itself.
public func runCommand(
    _ path: String, _ arguments: [String], environment: [String: String]? = nil, timeout: Double
) throws -> (status: Int32, output: String) {
    BlockingGuard.check("runCommand(\(path))")
    let out = NSTemporaryDirectory() + "cmd-\(UUID().uuidString.prefix(8)).out"
    defer { unlink(out) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigmask(&attributes, &none)
    var all = sigset_t()
    sigfillset(&all)
    sigdelset(&all, SIGKILL)
    sigdelset(&all, SIGSTOP)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
    defer { for a in argv { free(a) } }
    let env = environment ?? ProcessInfo.processInfo.environment
    let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for e in envp { free(e) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
    guard rc == 0 else { throw TestKitError(.process, "cannot start \(path): \(String(cString: strerror(rc)))") }

    func reap(within seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f) }
            if r < 0 && errno != EINTR { return -1 }
            if Date() >= deadline { return nil }
            usleep(20_000)
        }
    }
    let output = { (try? String(contentsOfFile: out, encoding: .utf8)) ?? "" }
    if let status = reap(within: timeout) { return (status, output()) }
    kill(pid, SIGTERM)
    if reap(within: 5) == nil {
        kill(pid, SIGKILL)
        _ = reap(within: 10)
    }
    throw TestKitError(.timedOut, "\(path) \(arguments.joined(separator: " ")) still running after \(timeout) s; stopped:\n\(output().suffix(4000))")
}
