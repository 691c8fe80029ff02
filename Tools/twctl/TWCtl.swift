// twctl: operate a token warehouse: status, verify, compact, evict, prefetch, namespaces, replay, plan,
// benchmarks. Talks to a daemon through its mount's control area with the typed schema of ControlPlane.
import ArgumentParser
import BlockStore
import CommandLineTypes
import ControlPlane
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

/// Prints one JSON object on stdout (for --json): twctl's own results, keys sorted.
func printJSON(_ object: [String: Any]) {
    guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else {
        print("{\"error\": \"the result could not be encoded as JSON\"}")
        return
    }
    print(String(decoding: data, as: UTF8.self))
}

/// Prints an encodable value of the daemon's schema as one JSON object.
func printJSON<T: Encodable>(_ value: T) {
    print(String(decoding: ControlJSON.encode(value), as: UTF8.self), terminator: "")
}

/// An error for a person: printed by ArgumentParser as "Error: MESSAGE", exit code 1.
struct Failure: Error, CustomStringConvertible {
    let description: String
}

func failure(_ message: String) -> Failure { Failure(description: message) }

/// The status of a mounted warehouse, as its reader may see it; nil when `mount` is not one.
func readStatus(_ mount: String) -> StatusReport? {
    guard let bytes = try? FileSystem.readFile(mount + "/.tw/status") else { return nil }
    return try? ControlJSON.decode(StatusReport.self, from: bytes)
}

func bytes(_ n: UInt64) -> String { ByteCount.approximate(n) }

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a mounted warehouse's capacity, use, namespaces and recovery.")

    @Argument(help: "The mount point.") var mount: String
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        guard let s = readStatus(mount) else { throw failure("\(mount) is not a mounted warehouse (cannot read \(mount)/.tw/status)") }
        if json {
            printJSON(s)
            return
        }
        print("store       \(s.store)  (sync \(s.sync))")
        print("blocks      \(s.blocks) in \(s.directories) directories")
        print("used        \(bytes(s.usedBytes)) of \(bytes(s.capacityBytes)) in \(s.segments) segments; dead \(bytes(s.deadBytes))")
        print("traffic     \(s.puts) puts (\(bytes(s.bytesWritten))), \(s.gets) gets (\(bytes(s.bytesRead))), \(s.corruptReads) corrupt reads refused")
        print("space       \(s.evictedSegments) segments evicted (\(s.evictedBlocks) blocks, \(s.reinsertedBlocks) reinserted), \(s.compactedSegments) compacted (\(bytes(s.reclaimedBytes)) reclaimed)")
        for (name, u) in s.namespaceUsage.sorted(by: { $0.key < $1.key }) {
            print("namespace   \(name): \(u.blocks) blocks, \(bytes(u.logicalBytes)) (\(bytes(u.storedBytes)) stored), compression \(u.compression)"
                  + (u.quotaBytes > 0 ? ", quota \(bytes(u.quotaBytes))" : "") + (u.ttlSeconds > 0 ? ", ttl \(TimeSpan(seconds: u.ttlSeconds))" : "")
                  + (u.pinned ? ", pinned" : ""))
        }
        let t = s.dramTier
        if t.enabled {
            print("dram tier   \(t.residentBlocks) blocks, \(bytes(UInt64(t.residentBytes))) of \(bytes(UInt64(t.capacityBytes))) in \(t.domains) domain files; "
                  + "\(t.mountHits) mount hits, \(t.mountMisses) misses, \(t.mapHits) map hits, \(t.evictions) evictions (\(t.policy))")
            if let memory = t.memory { print("            memory: \(memory)") }
        } else {
            print("dram tier   off")
        }
        print("hit ratios  \(String(format: "%.3f", s.hitRatios.dram)) DRAM, \(String(format: "%.3f", s.hitRatios.nvme)) NVMe (of block reads that found their block)")
        let p = s.prefetch
        if p.enabled {
            print("prefetch    \(p.hinted) hinted, \(p.loaded) loaded (\(p.loadedHinted) hinted, \(p.loadedChain) chain, \(p.loadedLearned) learned, \(p.loadedLogOrder) log order), "
                  + "\(p.used) used, \(p.wasted) wasted; \(p.alreadyResident) already resident, \(p.missing) missing, \(p.late) late, \(p.dropped) dropped")
        }
        if s.remote.enabled { print(remoteStatusLine(s.remote)) }
        if s.compaction.runs > 0 {
            print("compaction  \(s.compaction.running ? "running" : "last run"): \(s.compaction.segmentsCompacted) segments, \(bytes(s.compaction.bytesReclaimed)) reclaimed")
        }
        for (engine, counters) in s.engines.sorted(by: { $0.key < $1.key }) {
            print("engine      \(engine): " + counters.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        let l = s.limits
        print("writing     \(l.pendingBlocks) blocks, \(bytes(l.stagedBytes)) staged of \(bytes(l.stagedBytesLimit)) (\(bytes(l.stagedBytesPerUserLimit)) per user); \(l.refusedForLimits) refused for limits")
        let r = s.recovery
        print("recovery    " + (r.indexSnapshot == "loaded" ? "index snapshot of the last clean stop, " : "")
              + "\(r.segmentsFromSummary) segments from summaries, \(r.segmentsScanned) scanned, \(r.corruptRecords) corrupt records, "
              + "\(r.tornTailBytes) torn-tail bytes, \(r.directories) directories (\(r.directoriesRestored) restored), \(r.seconds) s"
              + (r.indexSnapshot.hasPrefix("ignored") ? " (index snapshot \(r.indexSnapshot))" : ""))
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
        // Verify only reads: a store of another user (mode 0700, read as root) is checked as it is.
        let device = try DirectoryStorageDevice(directory: store, requirePrivate: false)
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
    @Option(help: "Stop after moving this many bytes (e.g. 10G).") var maxBytes: ByteCount?
    @Option(help: "Online: bytes per second compaction may read and write, so reads keep their latency (0: no limit).")
    var rate = ByteCount(bytes: 64 << 20)
    @Flag(help: "Only list what would be compacted.") var dryRun = false
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        if (mount == nil) == (store == nil) { throw ValidationError("give a mount point (online) or --store DIR (offline), not both") }
        if !(0...1).contains(threshold) { throw ValidationError("--threshold \(threshold) is not between 0 and 1") }
    }

    func run() throws {
        if let mount {
            try compactOnline(mount: mount, threshold: threshold, maxBytes: maxBytes?.bytes, rate: rate.bytes, dryRun: dryRun, json: json)
            return
        }
        guard let store else { return }
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
                for c in candidates { print("segment \(c.id): \(bytes(c.bytes)), \(Int(c.deadShare * 100))% dead") }
                print("\(candidates.count) segments would be compacted")
            }
            return
        }
        let tty = isatty(1) != 0 && !json
        let total = max(1, candidates.count)
        let report = try opened.compact(threshold: threshold, maxBytes: maxBytes?.bytes ?? .max, progress: { r in
            if tty {
                FileHandle.standardOutput.write(Data("\r\(progressBar(r.segmentsCompacted, total)) \(r.segmentsCompacted)/\(total) segments, \(bytes(r.bytesReclaimed)) reclaimed".utf8))
            } else if !json {
                print("compacted \(r.segmentsCompacted)/\(total) segments, \(bytes(r.bytesReclaimed)) reclaimed")
            }
        })
        if tty { print("") }
        if json {
            printJSON(["segments_compacted": report.segmentsCompacted, "blocks_moved": report.blocksMoved,
                       "bytes_moved": report.bytesMoved, "bytes_reclaimed": report.bytesReclaimed])
        } else {
            print("done: \(report.segmentsCompacted) segments compacted, \(report.blocksMoved) blocks moved, \(bytes(report.bytesReclaimed)) reclaimed")
        }
    }
}

func progressBar(_ done: Int, _ total: Int) -> String {
    let width = 30, filled = width * min(done, total) / max(total, 1)
    return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "]"
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Benchmarks that print ratios against baselines measured in the same run.",
                                                    subcommands: [StoreBench.self, PolicyBench.self])
}
