// twctl: operate a token warehouse — status, verify, compact, bench.
import ArgumentParser
import BlockStore
import Foundation
import Platform

@main
struct TWCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "twctl",
        abstract: "Operate a TokenWarehouse: status, verify, compact, evict, prefetch, namespaces, replay, plan, benchmarks.",
        subcommands: [Status.self, Verify.self, Compact.self, Evict.self, Prefetch.self, Namespace.self, Replay.self, Plan.self,
                       TraceCommand.self, Bench.self, Cluster.self])
}

/// Prints a JSON object on stdout (for --json).
func printJSON(_ object: [String: Any]) {
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}

func failure(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("twctl: \(message)\n".utf8))
    return ExitCode(1)
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a mounted warehouse's capacity, use, namespaces and recovery.")

    @Argument(help: "The mount point.") var mount: String
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let path = mount + "/.tw/status"
        guard let data = FileManager.default.contents(atPath: path),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw failure("\(mount) is not a mounted warehouse (cannot read \(path))")
        }
        if json {
            printJSON(object)
            return
        }
        func n(_ key: String) -> UInt64 { (object[key] as? NSNumber)?.uint64Value ?? 0 }
        print("store       \(object["store"] ?? "?")  (sync \(object["sync"] ?? "?"))")
        print("blocks      \(n("blocks"))")
        print("used        \(SizeParser.format(n("used_bytes"))) of \(SizeParser.format(n("capacity_bytes"))) in \(n("segments")) segments; dead \(SizeParser.format(n("dead_bytes")))")
        print("traffic     \(n("puts")) puts (\(SizeParser.format(n("bytes_written")))), \(n("gets")) gets (\(SizeParser.format(n("bytes_read")))), \(n("corrupt_reads")) corrupt reads refused")
        print("space       \(n("evicted_segments")) segments evicted (\(n("evicted_blocks")) blocks, \(n("reinserted_blocks")) reinserted), \(n("compacted_segments")) compacted (\(SizeParser.format(n("reclaimed_bytes"))) reclaimed)")
        if let usage = object["namespace_usage"] as? [String: [String: Any]] {
            for (name, u) in usage.sorted(by: { $0.key < $1.key }) {
                let blocks = (u["blocks"] as? NSNumber)?.intValue ?? 0
                let bytes = (u["logical_bytes"] as? NSNumber)?.uint64Value ?? 0
                let quota = (u["quota_bytes"] as? NSNumber)?.uint64Value ?? 0
                let ttl = (u["ttl_seconds"] as? NSNumber)?.uint64Value ?? 0
                print("namespace   \(name): \(blocks) blocks, \(SizeParser.format(bytes)), compression \(u["compression"] ?? "off")"
                      + (quota > 0 ? ", quota \(SizeParser.format(quota))" : "") + (ttl > 0 ? ", ttl \(ttl)s" : "")
                      + ((u["pinned"] as? Bool) == true ? ", pinned" : ""))
            }
        }
        if let t = object["dram_tier"] as? [String: Any], (t["enabled"] as? Bool) == true {
            func tn(_ key: String) -> UInt64 { (t[key] as? NSNumber)?.uint64Value ?? 0 }
            print("dram tier   \(t["path"] ?? "?"): \(tn("resident_blocks")) blocks, \(SizeParser.format(tn("resident_bytes"))) of \(SizeParser.format(tn("capacity_bytes"))); "
                  + "\(tn("mount_hits")) mount hits, \(tn("mount_misses")) misses, \(tn("map_hits")) map hits, \(tn("evictions")) evictions (\(t["policy"] ?? "?"))")
        } else {
            print("dram tier   off")
        }
        if let h = object["hit_ratios"] as? [String: Any] {
            print("hit ratios  \(String(format: "%.3f", (h["dram"] as? Double) ?? 0)) DRAM, \(String(format: "%.3f", (h["nvme"] as? Double) ?? 0)) NVMe (of block reads that found their block)")
        }
        if let p = object["prefetch"] as? [String: Any], (p["enabled"] as? Bool) == true {
            print("prefetch    \(p["hinted"] ?? 0) hinted, \(p["loaded"] ?? 0) loaded (\(p["loaded_hinted"] ?? 0) hinted, \(p["loaded_chain"] ?? 0) chain, \(p["loaded_learned"] ?? 0) learned), "
                  + "\(p["used"] ?? 0) used, \(p["wasted"] ?? 0) wasted; \(p["already_resident"] ?? 0) already resident, \(p["missing"] ?? 0) missing, "
                  + "\(p["late"] ?? 0) late, \(p["dropped"] ?? 0) dropped")
        }
        if let remote = object["remote"] as? [String: Any], (remote["enabled"] as? Bool) == true {
            print(remoteStatusLine(remote))
        }
        if let c = object["compaction"] as? [String: Any], ((c["runs"] as? NSNumber)?.intValue ?? 0) > 0 {
            print("compaction \((c["running"] as? Bool) == true ? "running" : "last run"): \(c["segments_compacted"] ?? 0) segments, \(SizeParser.format((c["bytes_reclaimed"] as? NSNumber)?.uint64Value ?? 0)) reclaimed")
        }
        if let r = object["recovery"] as? [String: Any] {
            print("recovery    \(r["segments_from_summary"] ?? 0) segments from summaries, \(r["segments_scanned"] ?? 0) scanned, \(r["corrupt_records"] ?? 0) corrupt records, \(r["torn_tail_bytes"] ?? 0) torn-tail bytes, \(r["seconds"] ?? 0) s")
        }
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Read every record of a store and list each damaged one; exit 1 if any.")

    @Option(help: "The store directory.") var store: String
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: store, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw failure("\(store) is not a directory (give the store directory twfs was started with)")
        }
        let device = try DirectoryStorageDevice(directory: store)
        let tty = isatty(2) != 0
        let report = try StoreVerifier.verify(device: device) { done, total in
            if tty && !json { FileHandle.standardError.write(Data("\rverifying segment \(done)/\(total)".utf8)) }
        }
        if tty && !json { FileHandle.standardError.write(Data("\n".utf8)) }
        if json {
            printJSON(["segments": report.segments, "records": report.records, "bytes_read": report.bytes,
                       "damaged": report.findings.map { ["segment": $0.segment, "offset": $0.offset, "length": $0.length, "reason": $0.reason] }])
        } else {
            for f in report.findings { print("DAMAGED \(f)") }
            print("\(report.segments) segments, \(report.records) valid records, \(report.findings.count) damaged regions")
        }
        if !report.findings.isEmpty { throw ExitCode(1) }
    }
}

struct Compact: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rewrite segments whose dead share passes a threshold: online through a mount's daemon, or offline on a store no daemon holds.")

    @Argument(help: "The mount point (online compaction through the daemon).") var mount: String?
    @Option(help: "The store directory (offline; the store must not be mounted).") var store: String?
    @Option(help: "Compact segments with at least this share of dead bytes (0 to 1).") var threshold: Double = 0.3
    @Option(help: "Stop after moving this many bytes (e.g. 10G).") var maxBytes: String?
    @Option(help: "Online: bytes per second compaction may read and write, so reads keep their latency (0: no limit).") var rate = "64M"
    @Flag(help: "Only list what would be compacted.") var dryRun = false
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        if (mount == nil) == (store == nil) { throw ValidationError("give a mount point (online) or --store DIR (offline), not both") }
        if !(0...1).contains(threshold) { throw ValidationError("--threshold \(threshold) is not between 0 and 1") }
    }

    func run() throws {
        let limit = try maxBytes.map { text -> UInt64 in
            guard let v = SizeParser.parse(text) else { throw failure("--max-bytes: '\(text)' is not a size") }
            return v
        }
        if let mount {
            guard let r = rate == "0" ? 0 : SizeParser.parse(rate) else { throw failure("--rate: '\(rate)' is not a size per second (256M, 0)") }
            try compactOnline(mount: mount, threshold: threshold, maxBytes: limit, rate: r, dryRun: dryRun, json: json)
            return
        }
        guard let store else { return }
        let maxBytesOffline = limit ?? .max
        let space = try FileSystem.space(of: store)
        let configuration = StoreConfiguration(capacity: max(space.total, 1 << 30), sync: .always, backgroundCompaction: false)
        let opened: BlockStore
        do {
            opened = try BlockStore(directory: store, configuration: configuration)
        } catch let e as StoreError {
            if case .locked(let why) = e { throw failure("\(why); compact it online or unmount it first") }
            throw failure("cannot open \(store): \(e)")
        }
        defer { try? opened.close() }
        let candidates = opened.compactionCandidates(threshold: threshold)
        if dryRun {
            if json {
                printJSON(["candidates": candidates.map { ["segment": $0.id, "bytes": $0.bytes, "dead_ratio": $0.deadShare] }])
            } else {
                for c in candidates { print("segment \(c.id): \(SizeParser.format(c.bytes)), \(Int(c.deadShare * 100))% dead") }
                print("\(candidates.count) segments would be compacted")
            }
            return
        }
        let tty = isatty(1) != 0 && !json
        let total = max(1, candidates.count)
        let report = try opened.compact(threshold: threshold, maxBytes: maxBytesOffline, progress: { r in
            if tty {
                let width = 30, filled = width * min(r.segmentsCompacted, total) / total
                let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
                FileHandle.standardOutput.write(Data("\r[\(bar)] \(r.segmentsCompacted)/\(total) segments, \(SizeParser.format(r.bytesReclaimed)) reclaimed".utf8))
            } else if !json {
                print("compacted \(r.segmentsCompacted)/\(total) segments, \(SizeParser.format(r.bytesReclaimed)) reclaimed")
            }
        })
        if tty { print("") }
        if json {
            printJSON(["segments_compacted": report.segmentsCompacted, "blocks_moved": report.blocksMoved,
                       "bytes_moved": report.bytesMoved, "bytes_reclaimed": report.bytesReclaimed])
        } else {
            print("done: \(report.segmentsCompacted) segments compacted, \(report.blocksMoved) blocks moved, \(SizeParser.format(report.bytesReclaimed)) reclaimed")
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Benchmarks that print ratios against baselines measured in the same run.",
                                                    subcommands: [StoreBench.self, PolicyBench.self])
}
