import BlockStore
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// `MOUNT/.tw/ctl` (root only, mode 0600): `twctl`'s requests to the daemon. A client opens it for
/// reading and writing, writes one command line, then reads the JSON answer from the same descriptor;
/// each open is its own conversation. Commands (docs/operations.md):
///
///     compact [threshold=0.3] [max_bytes=N] [rate=BYTES_PER_SECOND]   start online compaction
///     compact-status                                                   its progress
///     compact-candidates [threshold=0.3]                               what it would rewrite
///     evict ns=NS [older_than=SECONDS]                                 remove a namespace's blocks
///     ns-set ns=NS [quota=BYTES] [ttl=SECONDS] [pinned=0|1] [compression=off|lz4|auto] [share=off|async|sync|default]
///     ns-list
///     cluster-gc target=BYTES                                          shrink the shared pool (LRU)
final class CommandHandle: Handle, @unchecked Sendable {
    let state = Locked<(command: [UInt8], answer: [UInt8]?)>(([], nil))
}

/// A compaction run through the daemon, one at a time, on its own thread, rate-limited.
final class OnlineCompaction: Sendable {
    struct Progress: Sendable {
        var running = false
        var threshold = 0.0
        var candidates = 0
        var report = CompactionReport()
        var startedNanoseconds: UInt64 = 0
        var seconds = 0.0
        var error: String?
        var runs = 0
    }

    let store: BlockStore
    let progress = Locked(Progress())
    private let worker = Locked<BackgroundThread?>(nil)
    private let stopping = Locked(false)

    init(store: BlockStore) { self.store = store }

    /// Starts a run unless one is going; returns whether it started.
    func start(threshold: Double, maxBytes: UInt64, bytesPerSecond: UInt64) -> Bool {
        let candidates = store.compactionCandidates(threshold: threshold).count
        let started = progress.withLock { p -> Bool in
            if p.running { return false }
            let runs = p.runs + 1
            p = Progress()
            p.running = true
            p.threshold = threshold
            p.candidates = candidates
            p.startedNanoseconds = monotonicNanoseconds()
            p.runs = runs
            return true
        }
        guard started else { return false }
        let throttle = Throttle(bytesPerSecond: bytesPerSecond)
        let previous = worker.withLock { w -> BackgroundThread? in
            defer { w = nil }
            return w
        }
        previous?.join()
        let thread = BackgroundThread(name: "tw-compact") { [self] in
            var failure: String? = nil
            do {
                _ = try store.compact(threshold: threshold, maxBytes: maxBytes, throttle: { throttle.acquire($0) },
                                      shouldStop: { stopping.withLock { $0 } }) { r in
                    progress.withLock {
                        $0.report = r
                        $0.seconds = Double(monotonicNanoseconds() - $0.startedNanoseconds) / 1e9
                    }
                }
            } catch {
                failure = "\(error)"
            }
            progress.withLock {
                $0.running = false
                $0.error = failure
                $0.seconds = Double(monotonicNanoseconds() - $0.startedNanoseconds) / 1e9
            }
        }
        worker.withLock { $0 = thread }
        return true
    }

    func stop() {
        stopping.withLock { $0 = true }
        worker.withLock { $0 }?.join()
    }

    func json() -> String {
        let p = progress.withLock { $0 }
        let r = p.report
        return "{\"running\": \(p.running), \"runs\": \(p.runs), \"threshold\": \(p.threshold), \"candidates\": \(p.candidates), "
            + "\"segments_compacted\": \(r.segmentsCompacted), \"blocks_moved\": \(r.blocksMoved), \"bytes_moved\": \(r.bytesMoved), "
            + "\"bytes_reclaimed\": \(r.bytesReclaimed), \"seconds\": \(p.seconds), \"error\": \(p.error.map(jsonString) ?? "null")}"
    }
}

extension WarehouseFileSystem {
    /// Ends an online compaction run between segments (at unmount).
    public func stopCompaction() { compaction.stop() }

    /// Runs one command line of `.tw/ctl` and returns its JSON answer (an `error` key on failure).
    func execute(command bytes: [UInt8]) -> String {
        let text = String(decoding: bytes, as: UTF8.self)
        var words = text.unicodeScalars.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }).map { String($0) }
        guard !words.isEmpty else { return Self.error("empty command") }
        let verb = words.removeFirst()
        var args: [String: String] = [:]
        for w in words {
            let kv = w.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { return Self.error("argument '\(w)' is not KEY=VALUE") }
            args[kv[0]] = kv[1]
        }
        func number(_ key: String) -> UInt64?? {
            guard let v = args[key] else { return .some(nil) }
            guard let n = UInt64(v) else { return nil }
            return .some(n)
        }
        switch verb {
        case "compact", "compact-candidates":
            let threshold = args["threshold"].flatMap(Double.init) ?? 0.3
            guard threshold >= 0, threshold <= 1 else { return Self.error("threshold must be 0 to 1") }
            if verb == "compact-candidates" {
                let list = store.compactionCandidates(threshold: threshold).map {
                    "{\"segment\": \($0.id), \"bytes\": \($0.bytes), \"dead_ratio\": \($0.deadShare)}"
                }
                return "{\"candidates\": [\(list.joined(separator: ", "))]}"
            }
            guard let maxBytes = number("max_bytes"), let rate = number("rate") else { return Self.error("max_bytes and rate are byte counts") }
            let started = compaction.start(threshold: threshold, maxBytes: maxBytes ?? .max, bytesPerSecond: rate ?? (64 << 20))
            return "{\"started\": \(started), \"status\": \(compaction.json())}"
        case "compact-status":
            return compaction.json()
        case "evict":
            guard let ns = args["ns"] else { return Self.error("evict needs ns=NAMESPACE") }
            guard let olderThan = number("older_than") else { return Self.error("older_than is in seconds") }
            let cutoff = olderThan.map { wallClockNanoseconds() / 1_000_000_000 - $0 }
            do {
                // The tier drops each removed block (the store's removal observer).
                let (blocks, bytes) = try store.removeBlocks(namespace: ns, committedBefore: cutoff)
                return "{\"namespace\": \(jsonString(ns)), \"removed_blocks\": \(blocks), \"removed_bytes\": \(bytes)}"
            } catch StoreError.notFound {
                return Self.error("no namespace \(ns)")
            } catch {
                return Self.error("\(error)")
            }
        case "ns-set":
            guard let ns = args["ns"] else { return Self.error("ns-set needs ns=NAMESPACE") }
            guard let quota = number("quota"), let ttl = number("ttl") else { return Self.error("quota is in bytes and ttl in seconds") }
            var pinned: Bool? = nil
            if let p = args["pinned"] {
                guard p == "0" || p == "1" else { return Self.error("pinned is 0 or 1") }
                pinned = p == "1"
            }
            var compression: CompressionPolicy? = nil
            if let c = args["compression"] {
                guard let policy = CompressionPolicy(rawValue: c) else { return Self.error("compression is off, lz4 or auto") }
                compression = policy
            }
            // share=default: back to the daemon's --share.
            var share: SharePolicy?? = nil
            if let v = args["share"] {
                guard remote != nil else { return Self.error("share needs a mount with --cluster") }
                guard v == "default" || SharePolicy(rawValue: v) != nil else { return Self.error("share is off, async, sync or default") }
                share = .some(SharePolicy(rawValue: v))
            }
            do {
                let info = try store.updateNamespace(ns) { n in
                    if let quota { n.quotaBytes = quota }
                    if let ttl { n.ttlSeconds = ttl }
                    if let pinned { n.pinned = pinned }
                    if let compression { n.compression = compression }
                    if let share { n.share = share }
                }
                remote?.namespaceChanged(info)
                return "{\"namespace\": \(namespaceJSON(info))}"
            } catch StoreError.notFound {
                return Self.error("no namespace \(ns)")
            } catch {
                return Self.error("\(error)")
            }
        case "cluster-gc":
            guard let remote else { return Self.error("this mount has no shared tier (twfs --cluster CONF --pool POOL)") }
            guard let target = number("target"), let target else { return Self.error("cluster-gc needs target=BYTES") }
            return remote.collectGarbage(targetBytes: target)
        case "ns-list":
            return "{\"namespaces\": [\(store.namespaces().map(namespaceJSON).joined(separator: ", "))]}"
        default:
            return Self.error("unknown command '\(verb)'")
        }
    }

    func namespaceJSON(_ ns: NamespaceInfo) -> String {
        let u = store.usage(of: ns.id)
        return "{\"name\": \(jsonString(ns.name)), \"owner\": \(ns.owner), \"group\": \(ns.group), \"mode\": \"\(String(ns.mode, radix: 8))\", "
            + "\"blocks\": \(u.blocks), \"logical_bytes\": \(u.logicalBytes), \"stored_bytes\": \(u.storedBytes), "
            + "\"quota_bytes\": \(ns.quotaBytes), \"ttl_seconds\": \(ns.ttlSeconds), \"pinned\": \(ns.pinned), "
            + "\"compression\": \(jsonString(ns.compression.rawValue)), "
            + "\"share\": \(jsonString(remote.map { $0.policy(of: ns).rawValue } ?? "off")), \"share_set\": \(ns.share.map { jsonString($0.rawValue) } ?? "null")}"
    }

    static func error(_ message: String) -> String { "{\"error\": \(jsonString(message))}" }
}
