import ArgumentParser
import BlockStore
import CommandLineTypes
import ControlPlane
import DRAMTier
import Foundation
import Platform
import Synchronization
import Traces
import WarehouseCore

/// `twctl replay MOUNT TRACE`: plays a Mooncake-format trace against a live mount as an engine would
/// (docs/design.md "twctl"): hints at arrival, a scheduling lead, prefix reads (the map first, then the block
/// file), writes of the missing blocks with `user.tw.parent`. Every block read is checked byte for byte.
struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay a trace against a mounted warehouse and report hit ratios by tier beside the ideal and Belady's.")

    @Argument(help: "The mount point.") var mount: String
    @Option(help: "Another node's mount point (repeatable): requests alternate between the mounts, as a fleet's router spreads them; blocks written on one node are found on another through the cluster tier.")
    var peer: [String] = []
    @Argument(help: "A trace in the Mooncake format (JSON lines with hash_ids); omit with --synthetic.") var trace: String?
    @Option(help: "Generate a trace instead: agentic, chat or rag.") var synthetic: SyntheticWorkload?
    @Option(help: "Requests of a synthetic trace, or the first N of a file (0: all).") var requests = 0
    @Option(help: "Seed of a synthetic trace.") var seed: UInt64 = 1
    @Option(help: "Bytes of each block written (e.g. 64K, 2M; at most 256M).") var blockBytes = ByteCount(bytes: 64 << 10)
    @Option(help: "Replay speed: 1 follows the trace's timestamps, 10 is ten times faster, 0 as fast as possible.") var speed = 0.0
    @Option(help: "Send each request's blocks as prefetch hints on arrival: on or off.") var hints = "on"
    @Option(help: "Milliseconds between a request's arrival and its first read (the engine's queueing).") var leadMs = 50.0
    @Option(help: "Requests in flight at once.") var concurrency = 1
    @Option(help: "Namespace to replay into (default: a new replay-PID one, removed afterwards).") var namespace: String?
    @Flag(help: "Keep the replayed blocks.") var keep = false
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let bytes = blockBytes.bytes
        guard bytes > 0, bytes <= 256 << 20 else { throw failure("--block-bytes: \(blockBytes) is not a size from 1 byte to 256M") }
        guard hints == "on" || hints == "off" else { throw failure("--hints must be on or off") }
        guard concurrency >= 1, concurrency <= 256 else { throw failure("--concurrency must be 1 to 256") }
        guard speed >= 0 else { throw failure("--speed must be 0 or more") }
        var loaded: Trace
        let source: String
        if let synthetic {
            loaded = SyntheticTraceGenerator(workload: synthetic, requests: requests > 0 ? requests : 2000, seed: seed).generate()
            source = "synthetic \(synthetic.rawValue) (seed \(seed))"
        } else if let trace {
            do { loaded = try Trace.load(path: trace) } catch { throw failure("\(error)") }
            if requests > 0 { loaded.requests = Array(loaded.requests.prefix(requests)) }
            source = trace
        } else {
            throw failure("give a trace file or --synthetic agentic|chat|rag")
        }
        guard let before = readStatus(mount) else { throw failure("\(mount) is not a mounted warehouse (cannot read \(mount)/.tw/status)") }
        let ns = namespace ?? "replay-\(getpid())-\(Int(Date().timeIntervalSince1970))"
        let mounts = [mount] + peer
        var peerBefore: [StatusReport] = []
        for m in peer {
            guard let s = readStatus(m) else { throw failure("\(m) is not a mounted warehouse (cannot read \(m)/.tw/status)") }
            peerBefore.append(s)
        }
        for m in mounts {
            let nsPath = m + "/" + ns
            if mkdir(nsPath, 0o755) != 0 && errno != EEXIST { throw failure("cannot create namespace \(nsPath): \(String(cString: strerror(errno)))") }
        }

        let player = Player(mounts: mounts, namespace: ns, blockBytes: Int(bytes), hints: hints == "on", leadMilliseconds: leadMs)
        let started = monotonicNanoseconds()
        player.play(loaded, speed: speed, concurrency: concurrency)
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        let after = readStatus(mount) ?? before
        let peerAfter = peer.enumerated().map { readStatus($0.element) ?? peerBefore[$0.offset] }
        if !keep {
            player.removeWritten()
            for m in mounts { _ = rmdir(m + "/" + ns) }
        }

        // Bounds from the same trace at the mount's capacities.
        let references = loaded.references
        let blocksReferenced = references.count
        let dramCapacity = before.dramTier.capacityBytes
        let nvmeCapacity = Int(before.capacityBytes)
        let slot = RecordFormat.align(Int(bytes))
        let dramBlocks = dramCapacity / slot
        let nvmeBlocks = nvmeCapacity / (slot + 4096)
        let ideal = loaded.idealHitRatio
        let beladyDRAM = OfflineBounds.beladyHitRatio(references, capacity: dramBlocks)
        let beladyNVMe = OfflineBounds.beladyHitRatio(references, capacity: nvmeBlocks)
        let r = player.results()
        var used = after.prefetch.used - before.prefetch.used
        var wasted = after.prefetch.wasted - before.prefetch.wasted
        for (b, a) in zip(peerBefore, peerAfter) {
            used += a.prefetch.used - b.prefetch.used
            wasted += a.prefetch.wasted - b.prefetch.wasted
        }
        let hits = r.dram.count + r.nvme.count
        let ratio = { (a: Int, b: Int) in b == 0 ? 0 : Double(a) / Double(b) }
        let all = r.dram + r.nvme
        let out: [String: Any] = [
            "trace": source, "requests": loaded.requests.count, "blocks_referenced": blocksReferenced,
            "unique_blocks": loaded.uniqueBlocks, "block_bytes": Int(bytes), "hints": hints == "on", "lead_ms": leadMs,
            "speed": speed, "concurrency": concurrency, "seconds": seconds, "nodes": mounts.count,
            "prefix_hit_ratio": ratio(hits, blocksReferenced), "ideal_hit_ratio": ideal,
            "hit_ratio_of_ideal": ideal > 0 ? ratio(hits, blocksReferenced) / ideal : 0,
            "dram_hit_ratio": ratio(r.dram.count, blocksReferenced), "nvme_hit_ratio": ratio(r.nvme.count, blocksReferenced),
            "belady_hit_ratio_dram": beladyDRAM, "belady_hit_ratio_nvme": beladyNVMe,
            "dram_of_belady": beladyDRAM > 0 ? ratio(r.dram.count, blocksReferenced) / beladyDRAM : 0,
            "dram_capacity_blocks": dramBlocks, "nvme_capacity_blocks": nvmeBlocks,
            "dram_hits": r.dram.count, "nvme_hits": r.nvme.count, "dram_hit_share": ratio(r.dram.count, hits),
            "read_p50_us": percentile(all, 0.5), "read_p99_us": percentile(all, 0.99),
            "dram_read_p50_us": percentile(r.dram, 0.5), "dram_read_p99_us": percentile(r.dram, 0.99),
            "nvme_read_p50_us": percentile(r.nvme, 0.5), "nvme_read_p99_us": percentile(r.nvme, 0.99),
            "blocks_written": r.written, "write_conflicts": r.conflicts,
            "prefetch_used": used, "prefetch_wasted": wasted, "errors": r.errors,
        ]
        if json {
            printJSON(out)
        } else {
            let f = { (v: Any?) in String(format: "%.3f", (v as? Double) ?? 0) }
            print("replayed \(loaded.requests.count) requests (\(blocksReferenced) block references, \(loaded.uniqueBlocks) unique) of \(source)")
            print("  in \(String(format: "%.1f", seconds)) s, blocks of \(ByteCount.approximate(bytes)), hints \(hints), lead \(leadMs) ms, concurrency \(concurrency)"
                  + (mounts.count > 1 ? ", \(mounts.count) nodes (requests alternate)" : ""))
            print("prefix hit ratio   \(f(out["prefix_hit_ratio"]))   (ideal \(f(ideal)), \(f(out["hit_ratio_of_ideal"])) of it)")
            print("from DRAM          \(f(out["dram_hit_ratio"]))   (Belady at \(dramBlocks) blocks: \(f(beladyDRAM)); share of hits \(f(out["dram_hit_share"])))")
            print("from NVMe          \(f(out["nvme_hit_ratio"]))   (Belady at \(nvmeBlocks) blocks: \(f(beladyNVMe)))")
            print("read latency       DRAM p50 \(f(out["dram_read_p50_us"])) us p99 \(f(out["dram_read_p99_us"])) us; NVMe p50 \(f(out["nvme_read_p50_us"])) us p99 \(f(out["nvme_read_p99_us"])) us")
            print("prefetch           \(used) used, \(wasted) wasted; \(r.written) blocks written, \(r.conflicts) written by another request first")
            print("errors             \(r.errors)")
        }
        if r.errors > 0 { throw ExitCode(1) }
    }
}

extension SyntheticWorkload: ExpressibleByArgument {}

/// Latencies are kept in nanoseconds; reported in microseconds. Nearest-rank percentiles (the same
/// definition as the Python harness and the cluster tier's windows).
func percentile(_ values: [UInt64], _ p: Double) -> Double {
    guard !values.isEmpty else { return 0 }
    let sorted = values.sorted()
    let rank = max(0, Int((p * Double(sorted.count)).rounded(.up)) - 1)
    return Double(sorted[min(sorted.count - 1, rank)]) / 1000
}

/// The engine side of a replay: one instance, driven by `concurrency` threads.
///
/// Thread-safety: the results and the set of blocks being written are behind mutexes; `TierReader`
/// lookups and refreshes may run concurrently (its contract).
final class Player: Sendable {
    let mounts: [String]
    let namespace: String
    let blockBytes: Int
    let hints: Bool
    let leadNanoseconds: UInt64
    let readers: [TierReader]

    struct Results: Sendable {
        var dram: [UInt64] = []
        var nvme: [UInt64] = []
        var written = 0
        var conflicts = 0
        var errors = 0
        var writtenIDs: [Int] = []
    }
    private let shared = Mutex(Results())
    /// Blocks some request is writing now: other requests treat them as missing, as engines in other
    /// processes would (the writer's own process could open them before they commit).
    private let writing = Mutex<Set<Int>>([])
    private let reportedErrors = Mutex(0)

    /// Counts an error and says what it was (the first few), so a failed replay can be looked into.
    func fail(_ what: String, _ r: inout Results) {
        r.errors += 1
        let n = reportedErrors.withLock { n -> Int in
            n += 1
            return n
        }
        if n <= 5 { FileHandle.standardError.write(Data("twctl replay: \(what)\n".utf8)) }
    }

    init(mounts: [String], namespace: String, blockBytes: Int, hints: Bool, leadMilliseconds: Double) {
        self.mounts = mounts
        self.namespace = namespace
        self.blockBytes = blockBytes
        self.hints = hints
        leadNanoseconds = UInt64(max(0, leadMilliseconds) * 1e6)
        readers = mounts.map { TierReader(mount: $0) }
    }

    func results() -> Results { shared.withLock { $0 } }

    /// A block's name: a 32-hex-digit hash of the trace id, so names spread over the fan-out directories.
    func name(_ id: Int) -> String {
        let key = BlockKey(namespace: "tw-replay", key: String(id))
        return hex16(key.high) + hex16(key.low)
    }

    func path(_ name: String, node: Int) -> String { mounts[node] + "/" + namespace + "/" + name.prefix(2) + "/" + name }

    /// The bytes of block `id`: a pattern only that id produces, so a reader can check every byte.
    func fill(_ buffer: UnsafeMutableRawBufferPointer, id: Int) {
        var g = SeededGenerator(seed: UInt64(bitPattern: Int64(id)))
        let words = buffer.count / 8
        let p = buffer.baseAddress!
        for i in 0..<words { (p + i * 8).storeBytes(of: g.next(), as: UInt64.self) }
        let tail = g.next()
        for i in (words * 8)..<buffer.count { buffer[i] = UInt8(truncatingIfNeeded: tail >> (8 * UInt64(i % 8))) }
    }

    func play(_ trace: Trace, speed: Double, concurrency: Int) {
        let next = Atomic<Int>(0)
        let start = monotonicNanoseconds()
        let t0 = trace.requests.first?.timestampMilliseconds ?? 0
        let threads = (0..<concurrency).map { i in
            BackgroundThread(name: "replay\(i)") { [self] in
                let expected = AlignedBuffer(capacity: blockBytes)
                let got = AlignedBuffer(capacity: blockBytes)
                var local = Results()
                while true {
                    let n = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    guard n < trace.requests.count else { break }
                    let request = trace.requests[n]
                    if speed > 0 {
                        let due = start + UInt64(max(0, request.timestampMilliseconds - t0) / speed * 1e6)
                        let now = monotonicNanoseconds()
                        if due > now { sleepNanoseconds(due - now) }
                    }
                    serve(request, node: n % mounts.count, expected: expected, got: got, into: &local)
                }
                shared.withLock { s in
                    s.dram += local.dram
                    s.nvme += local.nvme
                    s.written += local.written
                    s.conflicts += local.conflicts
                    s.errors += local.errors
                    s.writtenIDs += local.writtenIDs
                }
            }
        }
        for t in threads { t.join() }
    }

    func serve(_ request: TraceRequest, node: Int, expected: AlignedBuffer, got: AlignedBuffer, into r: inout Results) {
        let ids = request.hashIDs
        let mount = mounts[node], reader = readers[node]
        if hints && !ids.isEmpty {
            let lines = ids.map { "\(namespace) \(name($0))\n" }.joined()
            if !writeFile(mount + "/.tw/prefetch", Array(lines.utf8)) { fail("sending hints: \(String(cString: strerror(errno)))", &r) }
        }
        if leadNanoseconds > 0 { sleepNanoseconds(leadNanoseconds) }
        if !reader.isMapped { reader.refresh() }
        let expectedBytes = UnsafeMutableRawBufferPointer(start: expected.pointer, count: blockBytes)
        let gotBytes = UnsafeMutableRawBufferPointer(start: got.pointer, count: blockBytes)
        var missing = ids.count
        for (i, id) in ids.enumerated() {
            let blockName = name(id)
            if writing.withLock({ $0.contains(id) }) {
                missing = i
                break
            }
            let t = monotonicNanoseconds()
            if let n = reader.copy(namespace: namespace, name: blockName, into: gotBytes) {
                let elapsed = monotonicNanoseconds() - t
                fill(expectedBytes, id: id)
                if n != blockBytes || memcmp(expected.pointer, got.pointer, blockBytes) != 0 {
                    fail("block \(id) (\(blockName)) from the DRAM map: \(n) bytes, not the bytes written", &r)
                }
                r.dram.append(elapsed)
                continue
            }
            let fd = open(path(blockName, node: node), O_RDONLY | O_CLOEXEC)
            if fd < 0 {
                if errno != ENOENT { fail("opening block \(id) (\(blockName)): \(String(cString: strerror(errno)))", &r) }
                missing = i
                break
            }
            var total = 0
            while total < blockBytes {
                let n = read(fd, got.pointer + total, blockBytes - total)
                if n <= 0 { break }
                total += n
            }
            var extra: UInt8 = 0
            let more = read(fd, &extra, 1)
            close(fd)
            let elapsed = monotonicNanoseconds() - t
            fill(expectedBytes, id: id)
            if total != blockBytes || more != 0 || memcmp(expected.pointer, got.pointer, blockBytes) != 0 {
                fail("block \(id) (\(blockName)) through the mount: \(total) bytes, not the bytes written", &r)
            }
            r.nvme.append(elapsed)
        }
        // Prefix semantics: everything from the first missing block on is computed and stored.
        for i in missing..<ids.count {
            let id = ids[i]
            guard writing.withLock({ $0.insert(id).inserted }) else {
                r.conflicts += 1
                continue
            }
            defer { writing.withLock { _ = $0.remove(id) } }
            let fd = open(path(name(id), node: node), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            if fd < 0 {
                if errno == EEXIST { r.conflicts += 1 } else { fail("creating block \(id): \(String(cString: strerror(errno)))", &r) }
                continue
            }
            fill(expectedBytes, id: id)
            var ok = write(fd, expected.pointer, blockBytes) == blockBytes
            if i > 0 {
                let parent = Array(name(ids[i - 1]).utf8)
                ok = ok && FileSystem.setExtendedAttribute(descriptor: fd, name: "user.tw.parent", value: parent) == 0
            }
            if close(fd) != 0 { ok = false }
            if ok {
                r.written += 1
                r.writtenIDs.append(id)
            } else {
                fail("writing block \(id): \(String(cString: strerror(errno)))", &r)
            }
        }
    }

    func removeWritten() {
        // Every node may hold a copy (fetched from the cluster tier).
        for id in shared.withLock({ $0.writtenIDs }) {
            for node in mounts.indices { _ = unlink(path(name(id), node: node)) }
        }
    }
}

func hex16(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
}

func sleepNanoseconds(_ ns: UInt64) {
    var ts = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    var left = timespec()
    while nanosleep(&ts, &left) != 0 && errno == EINTR { ts = left }
}

/// Writes a whole small file (a control file) and closes it; false on any error.
func writeFile(_ path: String, _ bytes: [UInt8]) -> Bool {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    return close(fd) == 0 && n == bytes.count
}
