/// libFuzzer target for the naming rules of DESIGN.md ("Naming: namespaces and block files") in
/// `BlockName`, the block-file check the FUSE bridge applies (`BlockName.checkBlockFileName`), and the
/// segment file names of docs/format.md (`SegmentFormat.parseFileName`).
///
/// Input: one byte that is a fan-out directory (for `checkBlockFileName`), then the name's bytes.
/// Every rule is checked against a plain restatement of DESIGN.md, written differently from the code.
///
/// Built with `-sanitize=fuzzer,address -D FUZZING` (Tools/fuzz/run.sh) it is a libFuzzer binary.
/// Built plainly it replays: `FuzzBlockNames FILE|DIR...` runs each file once;
/// `FuzzBlockNames --write-seeds DIR` writes the generated seed corpus.
import BlockStore
#if canImport(Glibc)
import Glibc
#endif
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let fanoutDirectory = data[0]
    let name = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    checkNames(name, fanoutDirectory: fanoutDirectory)
    return 0
}

/// An invariant of the naming code failed: abort, so libFuzzer records the input.
func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String, line: UInt = #line) {
    if !condition() { fatalError("invariant failed: \(message())", line: line) }
}

/// DESIGN.md's character classes, spelled out.
enum Characters {
    static let lowerHex = Set("0123456789abcdef".utf8)
    static let namespace = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@+-".utf8)
}

func checkNames(_ name: [UInt8], fanoutDirectory: UInt8) {
    let allLowerHex = name.allSatisfy(Characters.lowerHex.contains)
    let canonical = (16...128).contains(name.count) && allLowerHex
    let text = String(decoding: name, as: UTF8.self)

    // The same answers for the bytes as an array and as a slice that does not start at index 0.
    let shifted = [0x2F] + name
    let slice = shifted[1...]

    require(BlockName.isCanonicalHash(name) == canonical && BlockName.isCanonicalHash(slice) == canonical,
            "isCanonicalHash(\(name)) != \(canonical)")
    let fanout = BlockName.isFanout(name)
    require(fanout == (name.count == 2 && allLowerHex) && BlockName.isFanout(slice) == fanout, "isFanout(\(name))")

    let expectedFanout = canonical ? UInt8(String(decoding: name.prefix(2), as: UTF8.self), radix: 16) : nil
    require(BlockName.fanout(of: name) == expectedFanout && BlockName.fanout(of: slice) == expectedFanout,
            "fanout(of: \(name)) is \(String(describing: BlockName.fanout(of: name))), not \(String(describing: expectedFanout))")

    let dotName = name == Array(".".utf8) || name == Array("..".utf8)
    let validKey = (1...255).contains(name.count) && !name.contains(UInt8(ascii: "/")) && !name.contains(0) && !dotName
    require(BlockName.isValidKey(name) == validKey && BlockName.isValidKey(slice) == validKey, "isValidKey(\(name)) != \(validKey)")
    require(!canonical || validKey, "canonical hash \(text) is not a valid key")

    let textBytes = Array(text.utf8)
    let validNamespace = (1...128).contains(textBytes.count) && textBytes[0] != UInt8(ascii: ".")
        && textBytes.allSatisfy(Characters.namespace.contains)
    require(BlockName.isValidNamespace(text) == validNamespace, "isValidNamespace(\(textBytes)) != \(validNamespace)")
    // A namespace is a directory of the mount: it must be a path component, and never the control area.
    require(!validNamespace || (BlockName.isValidKey(textBytes) && text != ".tw"), "namespace \(text) is not a path component")

    // The FUSE bridge's check of a block file name.
    let isUTF8 = String(validating: name, as: UTF8.self) != nil
    let direct = BlockName.checkBlockFileName(name, inFanout: nil)
    let inFanout = BlockName.checkBlockFileName(name, inFanout: fanoutDirectory)
    if name.count > 255 {
        require(direct == .tooLong && inFanout == .tooLong, "\(name.count) bytes not refused as too long")
    } else {
        require(direct == (isUTF8 && validKey ? nil : .invalid), "checkBlockFileName(\(name), nil) is \(String(describing: direct))")
        let expected: BlockName.FileNameError? = canonical && expectedFanout == fanoutDirectory ? nil : .invalid
        require(inFanout == expected, "checkBlockFileName(\(name), \(fanoutDirectory)) is \(String(describing: inFanout))")
    }
    // Whatever a fan-out directory accepts, the namespace directory accepts too.
    require(inFanout != nil || direct == nil, "\(text) accepted in a fan-out directory only")

    // Segment file names: a parsed name is exactly the name the store writes for that segment.
    if let parsed = SegmentFormat.parseFileName(text) {
        let written = parsed.isSummary ? SegmentFormat.summaryFileName(parsed.id) : SegmentFormat.dataFileName(parsed.id)
        require(written == text, "\(textBytes) parsed as segment \(parsed.id) whose file is \(written)")
    }
    if name.count >= 4 {
        let id = name.prefix(4).enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * $1.offset) }
        let data = SegmentFormat.parseFileName(SegmentFormat.dataFileName(id))
        let summary = SegmentFormat.parseFileName(SegmentFormat.summaryFileName(id))
        require(data?.id == id && data?.isSummary == false && summary?.id == id && summary?.isSummary == true,
                "segment \(id)'s file names do not parse back")
    }
}

/// Names of every kind, for the corpus.
func seeds() -> [(name: String, bytes: [UInt8])] {
    let names: [(String, UInt8, String)] = [
        ("canonical", 0x0a, "0a1b2c3d4e5f6071"),
        ("canonical-long", 0xff, "ff" + String(repeating: "0123456789abcdef", count: 7) + "abcdef0123456"),
        ("canonical-wrong-fanout", 0x00, "0a1b2c3d4e5f6071"),
        ("fanout", 0x00, "3f"),
        ("namespace", 0x00, "llama-8b@tp0"),
        ("compat-key", 0x00, "weights.part-0001.bin"),
        ("dots", 0x00, ".."),
        ("control", 0x00, ".tw"),
        ("utf8", 0x00, "m\u{00E9}lange"),
        ("segment", 0x00, "segment-0000000012.twlog"),
        ("summary", 0x00, "segment-4294967295.twsum"),
        // Regression: parsed as segment 12 although segment 12's file is segment-0000000012.twlog.
        ("segment-plus", 0x00, "segment-+000000012.twlog"),
    ]
    return names.map { ($0.0, [$0.1] + Array($0.2.utf8)) } + [
        ("not-utf8", [0x00, 0x61, 0xC3, 0x28]),
        ("nul", [0x00, 0x61, 0x00, 0x62]),
        ("too-long", [0x00] + [UInt8](repeating: 0x61, count: 256)),
    ]
}

// MARK: entry

runFuzzTarget(seeds: seeds) { fuzz($0!, $1) }
