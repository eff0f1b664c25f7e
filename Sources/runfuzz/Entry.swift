import Foundation

// Built two ways. With `-D FUZZING -sanitize=fuzzer` (scripts/fuzz), libFuzzer owns `main`
// and calls `LLVMFuzzerTestOneInput`; the target comes from RUNFUZZ_TARGET. Without it (every
// other build), `runfuzz TARGET FILE...` replays inputs, so that a finding can be rerun and
// debugged in a normal build.

let selectedTarget: FuzzTarget = {
    let name = ProcessInfo.processInfo.environment["RUNFUZZ_TARGET"] ?? "json"
    guard let t = FuzzTarget(rawValue: name) else {
        fatalError("RUNFUZZ_TARGET must be one of \(FuzzTarget.allCases.map(\.rawValue))")
    }
    return t
}()

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    selectedTarget.run(bytes)
    return 0
}

/// libFuzzer's driver, for programs that own `main` (SwiftPM links an executable's entry point
/// as `<module>_main`, so libFuzzer's own `main` is not used).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

@_cdecl("runfuzz_main")
public func runfuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in fuzzOneInput(data, size) }
}
#else
@main
struct Replay {
    static func main() throws {
        let args = CommandLine.arguments.dropFirst()
        guard let name = args.first, let target = FuzzTarget(rawValue: name) else {
            print("usage: runfuzz json|command|processor FILE_OR_DIRECTORY...")
            exit(2)
        }
        var count = 0
        for path in args.dropFirst() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { continue }
            let files = isDirectory.boolValue
                ? try FileManager.default.contentsOfDirectory(atPath: path).sorted().map { path + "/" + $0 } : [path]
            for f in files {
                guard let data = FileManager.default.contents(atPath: f) else { continue }
                target.run(Array(data))
                count += 1
            }
        }
        print("runfuzz \(name): \(count) inputs replayed, no finding")
    }
}
#endif
