/// libFuzzer target for the naming rules of docs/design.md ("Naming") in `BlockName`, the check the file
/// system applies to every name (`BlockName.checkComponent`), how a path becomes a key and back
/// (`BlockPath`, docs/format.md "Keys"), and the segment file names (`SegmentFormat.parseFileName`).
///
/// Input: one byte that picks a fan-out directory, then the name's bytes.
/// Every rule is checked against a plain restatement of docs/design.md, written differently from the code.
///
/// Built with `-sanitize=fuzzer,address -D FUZZING` (Tools/fuzz/run.sh) it is a libFuzzer binary.
/// Built plainly it replays: `FuzzBlockNames FILE|DIR...` runs each file once;
/// `FuzzBlockNames --write-seeds DIR` writes the generated seed corpus.
import BlockStore
import WarehouseCore
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

/// docs/design.md's character classes, spelled out.
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
    let validComponent = (1...255).contains(name.count) && !name.contains(UInt8(ascii: "/")) && !name.contains(0) && !dotName
    require(BlockName.isValidComponent(name) == validComponent && BlockName.isValidComponent(slice) == validComponent,
            "isValidComponent(\(name)) != \(validComponent)")
    require(!canonical || validComponent, "canonical hash \(text) is not a valid name")

    let textBytes = Array(text.utf8)
    let validNamespace = (1...128).contains(textBytes.count) && textBytes[0] != UInt8(ascii: ".")
        && textBytes.allSatisfy(Characters.namespace.contains)
    require(BlockName.isValidNamespace(text) == validNamespace, "isValidNamespace(\(textBytes)) != \(validNamespace)")
    // A namespace is a directory of the mount: it must be a path component, and never the control area.
    require(!validNamespace || (BlockName.isValidComponent(textBytes) && text != ".tw"), "namespace \(text) is not a path component")

    // The check of every file and directory name.
    let isUTF8 = String(validating: name, as: UTF8.self) != nil
    switch BlockName.checkComponent(name) {
    case .success(let accepted):
        require(validComponent && isUTF8 && Array(accepted.utf8) == name, "checkComponent accepted \(name)")
    case .failure(.tooLong):
        require(name.count > 255, "\(name.count) bytes refused as too long")
    case .failure(.invalid):
        require(name.count <= 255 && (!validComponent || !isUTF8), "checkComponent refused \(name)")
    }

    // Paths and keys: a name in the namespace, and in the fan-out directory the first byte picks.
    guard validComponent && isUTF8 else { return }
    let digits = Array("0123456789abcdef")
    let directory = String([digits[Int(fanoutDirectory >> 4)], digits[Int(fanoutDirectory & 15)]])
    let top = BlockPath.key(directory: "", name: text)
    require(top == (canonical ? "/" + text : text), "the key of \(text) in the namespace is \(top)")
    let nested = BlockPath.key(directory: directory, name: text)
    let isCanonicalPath = canonical && expectedFanout == fanoutDirectory
    require(nested == (isCanonicalPath ? text : directory + "/" + text), "the key of \(directory)/\(text) is \(nested)")
    for (dir, key) in [("", top), (directory, nested)] {
        require(BlockPath.isValidKey(key), "key \(key) is not valid")
        require(BlockPath.relativePath(ofKey: key) == (dir.isEmpty ? text : dir + "/" + text), "key \(key) does not map back to its path")
        let split = BlockPath.split(key: key)
        require(split.directory == dir && split.name == text, "key \(key) splits into \(split)")
        require(BlockPath.key(relativePath: dir.isEmpty ? text : dir + "/" + text) == key, "path of \(key) does not map to it")
    }
    // Distinct paths never share a key.
    require(top != nested, "\(text) and \(directory)/\(text) share the key \(top)")

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
        ("canonical-other-fanout", 0x00, "0a1b2c3d4e5f6071"),
        ("nested-file", 0x3f, "3f-shard.kvcache.safetensors"),
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
