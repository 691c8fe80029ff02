/// libFuzzer target for what the daemon reads from others and from its own store directory (docs/
/// security.md "Every number from outside is checked"): `.tw/ctl` requests (`ControlRequest.parse`),
/// `.tw/engine` lines (`EngineReport.parse`), the namespace table (`NamespaceTable(decoding:)`) and the
/// directory journal (`DirectoryChange.decodeFile`). None may trap, and what each accepts must survive
/// a round trip through its own encoder.
///
/// Input: one byte that picks the reader, then its bytes. Built with `-sanitize=fuzzer,address
/// -D FUZZING` (Tools/fuzz/run.sh) it is a libFuzzer binary; built plainly it replays files.
import BlockStore
import ControlPlane
import FuzzSupport
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String, line: UInt = #line) {
    if !condition() { fatalError("invariant failed: \(message())", line: line) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch data[0] % 4 {
    case 0:
        if let request = try? ControlRequest.parse(input) {
            let again = try? ControlRequest.parse(ControlJSON.encode(request))
            require(again == request, "request \(request) does not survive its JSON")
        }
    case 1:
        if let report = EngineReport.parse(input) {
            require(report.counters.count <= EngineReport.maxCounters, "accepted \(report.counters.count) counters")
            require(EngineReport.parse(Array(ControlJSON.encode(report).dropLast())) == report, "report does not survive its JSON")
        }
    case 2:
        if let table = try? NamespaceTable(decoding: input) {
            for ns in table.byID.values {
                require(ns.ttlSeconds <= NamespaceInfo.maxTTLSeconds && ns.mode <= 0o7777 && BlockName.isValidNamespace(ns.name),
                        "accepted namespace \(ns)")
            }
            let again = try? NamespaceTable(decoding: table.encoded())
            require(again?.byID == table.byID, "namespace table does not survive its encoding")
        }
    default:
        if let (changes, end) = DirectoryChange.decodeFile(input) {
            require(end <= input.count, "journal ends at \(end) of \(input.count) bytes")
            var bytes = DirectoryChange.header()
            for c in changes { bytes += c.encoded() }
            require(DirectoryChange.decodeFile(bytes)?.changes == changes, "journal records do not survive their encoding")
        }
    }
    return 0
}

func seeds() -> [(name: String, bytes: [UInt8])] {
    var journal = DirectoryChange.header()
    journal += DirectoryChange.create(ns: 1, id: 7, parent: 0, name: "ab", ownership: BlockOwnership(uid: 1000, gid: 1000, mode: 0o755),
                                      modifiedNanoseconds: 1).encoded()
    journal += DirectoryChange.move(ns: 1, id: 7, parent: 0, name: "cd").encoded()
    journal += DirectoryChange.remove(ns: 1, id: 7).encoded()
    return [
        ("ctl-json", [0] + Array(#"{"command":"ns-set","ns":"llama","quota":1073741824,"ttl":3600}"#.utf8)),
        ("ctl-line", [0] + Array("ns-set ns=llama quota=1073741824 ttl=18446744073709551615".utf8)),
        ("ctl-evict", [0] + Array("evict ns=x older_than=5184000000".utf8)),
        ("engine", [1] + Array(#"{"engine":"vllm","instance":"h-1","counters":{"blocks_loaded_dram":3}}"#.utf8)),
        ("namespaces", [2] + Array("v1 1 llama 0 0 755 off 1700000000\nv3 2 m 1000 1000 700 lz4 1 0 18446744073709551615 1 sync\n".utf8)),
        ("journal", [3] + journal),
    ]
}

runFuzzTarget(seeds: seeds) { fuzz($0!, $1) }
