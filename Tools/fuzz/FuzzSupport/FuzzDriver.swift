import Platform
#if canImport(Glibc)
import Glibc
#endif
#if FUZZING
import CLibFuzzer
#endif

/// The entry of every fuzz target (Tools/fuzz/run.sh). Built with `-D FUZZING` (and
/// `-sanitize=fuzzer,address`) it hands the command line to libFuzzer's driver; built plainly it
/// replays: `TARGET FILE|DIR...` runs each file (or each file of a directory) through `fuzz` once.
/// Either way `TARGET --write-seeds DIR` writes the target's generated seed corpus.
public func runFuzzTarget(seeds: () -> [(name: String, bytes: [UInt8])],
                          fuzz: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> Never {
    let arguments = CommandLine.arguments
    if arguments.count == 3 && arguments[1] == "--write-seeds" {
        for (name, bytes) in seeds() {
            let path = arguments[2] + "/" + name
            do { try FileSystem.writeFileAtomically(path, bytes: bytes, directory: arguments[2]) } catch {
                fatalError("cannot write \(path): \(error)")
            }
        }
        exit(0)
    }
    #if FUZZING
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
    #else
    var files: [String] = []
    for p in arguments.dropFirst() {
        if let names = try? FileSystem.listDirectory(p) {
            files += names.filter { !$0.hasPrefix(".") }.map { p + "/" + $0 }
        } else {
            files.append(p)
        }
    }
    for path in files.sorted() {
        let bytes: [UInt8]
        do { bytes = try FileSystem.readFile(path) } catch { fatalError("cannot read \(path): \(error)") }
        if !bytes.isEmpty { _ = bytes.withUnsafeBufferPointer { fuzz($0.baseAddress!, $0.count) } }
    }
    print("replayed \(files.count) inputs")
    exit(0)
    #endif
}
