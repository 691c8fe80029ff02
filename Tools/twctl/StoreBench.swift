import ArgumentParser
import BlockStore
import CommandLineTypes
import Foundation
import Platform
import Synchronization
import WarehouseCore

/// `twctl bench store`: BlockStore put/get throughput beside fio's direct sequential write/read on the
/// same disk, index memory per block, and restart time with and without the segment summaries.
struct StoreBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "store", abstract: "Benchmark the BlockStore against fio on the same disk.")

    @Option(help: "Scratch directory on the disk under test (emptied first).") var dir = "/var/tmp/tw-store-bench"
    @Option(help: "Block sizes, comma-separated.") var sizes = "256K,2M,16M"
    @Option(help: "Bytes written per size (and per fio run).") var bytes = ByteCount(bytes: 2 << 30)
    @Option(help: "Writer and reader threads (fio jobs).") var threads = 4
    @Option(help: "Blocks for the index-memory and restart measurement (0 to skip).") var indexBlocks = 1_000_000
    @Option(help: "Path depth of the index measurement's blocks: 1 (a name in the namespace) to 16 (directories below it).")
    var indexDepth = 1
    @Option(help: "Clean stops and restarts, and as many restarts after a simulated crash, timed at the index measurement (each one a sample).") var indexRestarts = 1
    @Option(help: "Also time a restart without summaries (a full scan of every segment): true or false.") var indexFullScan = true
    @Option(help: "Sync policy of the puts: always, batch or none.") var sync = "batch"
    @Option(help: "Rounds per size (fio and store alternate; medians are reported).") var rounds = 3
    @Option(help: "Milliseconds between the flusher's syncs under batch.") var syncInterval = 5.0
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let total = bytes.bytes
        guard (1...BlockName.maxDepth).contains(indexDepth) else { throw failure("--index-depth must be 1 to \(BlockName.maxDepth)") }
        let blockSizes = try sizes.split(separator: ",").map { s -> Int in
            guard let v = ByteCount(parsing: String(s)), v.bytes > 0, v.bytes <= 1 << 30 else { throw failure("--sizes: '\(s)' is not a size up to 1G") }
            return Int(v.bytes)
        }
        try? FileManager.default.removeItem(atPath: dir)
        try FileSystem.makeDirectories(dir)
        let command = CommandLine.arguments.joined(separator: " ")
        if !json { print("$ \(command)\nscratch \(dir), \(threads) threads, \(rounds) rounds (medians; put/fio and get/fio are medians of per-round ratios), \(ByteCount.approximate(total)) per size, sync=\(sync)\(sync == "batch" ? " every \(syncInterval) ms" : "")\n") }
        var rows: [[String: Any]] = []
        if !json { print(pad("block", 9) + pad("fio write", 11) + pad("put", 10) + pad("put/fio", 9) + pad("fio read", 10) + pad("get", 10) + pad("get/fio", 8)) }
        keepLargeAllocationsInHeap()
        for size in blockSizes {
            // The disk is shared and noisy: alternate baseline and store runs and keep the medians.
            var fw: [Double] = [], fr: [Double] = [], pw: [Double] = [], gr: [Double] = [], wr: [Double] = [], rr: [Double] = []
            for _ in 0..<max(1, rounds) {
                let fioWrite = try fio(rw: "write", blockSize: size, total: total)
                let (put, get) = try storeRun(blockSize: size, total: total)
                let fioRead = try fio(rw: "read", blockSize: size, total: total)
                try? FileManager.default.removeItem(atPath: dir + "/fio")
                fw.append(fioWrite); pw.append(put); fr.append(fioRead); gr.append(get)
                wr.append(put / fioWrite); rr.append(get / fioRead)
            }
            let (fioWrite, put, fioRead, get) = (median(fw), median(pw), median(fr), median(gr))
            rows.append(["block_bytes": size, "fio_write_mib_s": fioWrite, "put_mib_s": put, "put_ratio": median(wr),
                         "fio_read_mib_s": fioRead, "get_mib_s": get, "get_ratio": median(rr), "rounds": rounds,
                         "put_ratios": wr, "get_ratios": rr])
            if !json {
                print(pad(ByteCount(bytes: UInt64(size)).description, 9) + pad(f(fioWrite), 11) + pad(f(put), 10) + pad(f2(median(wr)), 9)
                      + pad(f(fioRead), 10) + pad(f(get), 10) + pad(f2(median(rr)), 8))
            }
        }
        var result: [String: Any] = ["command": command, "threads": threads, "bytes_per_size": total, "throughput": rows]
        if indexBlocks > 0 {
            let index = try indexRun(count: indexBlocks)
            result["index"] = index
            if !json {
                print("\nindex: \(indexBlocks) blocks at path depth \(indexDepth) (\(index["directories"]!) directories), \(f(index["bytes_per_block"] as! Double)) bytes of heap per block (index, directory tree, tables, active segment's entry list)")
                print("slowest put while filling the index: \(f2(index["slowest_put_ms"] as! Double)) ms")
                print("slowest lookup while filling the index: \(f2(index["slowest_lookup_ms"] as! Double)) ms (\(index["lookups_over_10ms"]!) of \(index["lookups_while_filling"]!) lookups over 10 ms)")
                print("close (seal, summaries, index snapshot): \(f2(index["close_s"] as! Double)) s")
                print("restart after a clean stop: \((index["restarts_from_snapshot_s"] as! [Double]).map(f2).joined(separator: ", ")) s (the index snapshot)")
                print("restart with summaries:    \((index["restarts_with_checkpoint_s"] as! [Double]).map(f2).joined(separator: ", ")) s (\(index["segments_from_summary"]!) segments from summaries, \(index["segments_scanned_with_checkpoint"]!) scanned)")
                print("listing the whole namespace (page cache dropped): \(index["listing_names"]!) names in \(f2(index["listing_s"] as! Double)) s, \(f(index["listing_names_per_s"] as! Double)) names/s; slowest page under the lock \(f2(index["listing_slowest_page_lock_ms"] as! Double)) ms; slowest of \(index["lookups_while_listing"]!) lookups meanwhile \(f2(index["slowest_lookup_while_listing_ms"] as! Double)) ms")
                if indexFullScan {
                    print("restart without summaries: \(f2(index["restart_without_checkpoint_s"] as! Double)) s (full scan of \(index["segments_scanned_without_checkpoint"]!) segments, \(ByteCount.approximate(index["bytes_scanned_without_checkpoint"] as! UInt64)))")
                }
            }
        }
        try? FileManager.default.removeItem(atPath: dir)
        if json { printJSON(result) }
    }

    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
    func f(_ v: Double) -> String { String(format: "%.0f", v) }
    func f2(_ v: Double) -> String { String(format: "%.2f", v) }
    func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        return s.isEmpty ? 0 : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// fio direct sequential I/O with `threads` jobs, one file each; returns MiB/s.
    func fio(rw: String, blockSize: Int, total: UInt64) throws -> Double {
        try FileSystem.makeDirectories(dir + "/fio")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/fio")
        p.arguments = ["--name=tw", "--directory=\(dir)/fio", "--direct=1", "--rw=\(rw)", "--bs=\(blockSize)",
                       "--size=\(total / UInt64(threads))", "--numjobs=\(threads)", "--ioengine=psync", "--group_reporting",
                       "--output-format=json"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let start = data.firstIndex(of: UInt8(ascii: "{")),
              let object = try JSONSerialization.jsonObject(with: data[start...]) as? [String: Any],
              let job = (object["jobs"] as? [[String: Any]])?.first, let side = job[rw] as? [String: Any],
              let bw = (side["bw_bytes"] as? NSNumber)?.doubleValue else {
            throw failure("fio failed (is fio installed? apt-get install fio)")
        }
        return bw / 1_048_576
    }

    /// Puts `total` bytes of `blockSize` blocks with `threads` writers, then reads them all back.
    func storeRun(blockSize: Int, total: UInt64) throws -> (put: Double, get: Double) {
        let path = dir + "/store-\(blockSize)"
        guard let policy = SyncPolicy(rawValue: sync) else { throw failure("--sync must be always, batch or none") }
        let store = try BlockStore(directory: path, configuration: StoreConfiguration(
            capacity: total * 3, sync: policy, batchIntervalNanoseconds: UInt64(syncInterval * 1e6), backgroundCompaction: false))
        _ = try store.createNamespace("bench", owner: 0, group: 0, mode: 0o755)
        store.startBackgroundWork()
        let count = max(threads, Int(total / UInt64(blockSize)))
        let perThread = count / threads
        let errors = Atomic<Int>(0)
        let started = monotonicNanoseconds()
        let writers = (0..<threads).map { t in
            BackgroundThread(name: "put\(t)") {
                // One staged, page-aligned buffer per writer, as twfs stages a block being written.
                let staging = AlignedBuffer(capacity: blockSize + 4096)
                let bytes = staging.mutableBytes(count: blockSize)
                for i in 0..<blockSize { bytes[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 13) }
                for i in 0..<perThread {
                    let id = t * perThread + i
                    bytes.storeBytes(of: UInt64(id), toByteOffset: 0, as: UInt64.self)
                    do {
                        _ = try store.put(namespace: "bench", key: key(id), payload: UnsafeRawBufferPointer(bytes), stagedInPlace: true)
                    } catch { errors.add(1, ordering: .relaxed) }
                }
            }
        }
        writers.forEach { $0.join() }
        let putSeconds = Double(monotonicNanoseconds() - started) / 1e9
        let written = Double(perThread * threads * blockSize) / 1_048_576
        let readStart = monotonicNanoseconds()
        let readers = (0..<threads).map { t in
            BackgroundThread(name: "get\(t)") {
                for i in 0..<perThread {
                    do { _ = try store.read(namespace: "bench", key: key(t * perThread + i)) } catch { errors.add(1, ordering: .relaxed) }
                }
            }
        }
        readers.forEach { $0.join() }
        let getSeconds = Double(monotonicNanoseconds() - readStart) / 1e9
        try store.close()
        try? FileManager.default.removeItem(atPath: path)
        if errors.load(ordering: .relaxed) > 0 { throw failure("\(errors.load(ordering: .relaxed)) store operations failed") }
        return (written / putSeconds, written / getSeconds)
    }

    func key(_ id: Int) -> String {
        let hex = String(UInt64(id) &* 0x9E37_79B9_7F4A_7C15, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex + "00000000"
    }

    /// A path of `depth` components for block `id`, laid out as engines' file tiers shard theirs:
    /// `r0/ab/cd/HASH.kv` at depth 4 (two hex digits per level below a fixed first directory).
    func pathKey(_ id: Int, depth: Int) -> String {
        let hash = key(id)
        var parts = ["r0"]
        var at = hash.startIndex
        for _ in 0..<(depth - 2) {
            let end = hash.index(at, offsetBy: 2)
            parts.append(String(hash[at..<end]))
            at = end
        }
        return (parts + [hash + ".kv"]).joined(separator: "/")
    }

    /// Bytes of heap in use (malloc's own count: what the index and its tables hold, without the
    /// free pages the allocator keeps).
    func residentBytes() -> UInt64 {
        heapBytesInUse() + UInt64(MappedArrayStatistics.mappedBytes)
    }

    /// Memory per block of the index, and restart times with and without the segment summaries.
    func indexRun(count: Int) throws -> [String: Any] {
        let path = dir + "/store-index"
        let configuration = StoreConfiguration(capacity: UInt64(count) * 8192 * 2, segmentSize: 256 << 20, sync: .none, backgroundCompaction: false)
        let before = residentBytes()
        var store: BlockStore? = try BlockStore(directory: path, configuration: configuration)
        let ns = try store!.createNamespace("bench", owner: 0, group: 0, mode: 0o755)
        let s = store!
        let depth = indexDepth
        // The slowest put: segment rolls, the index's growth under the store's lock and the kernel's
        // dirty-page throttling. With more writers than CPUs it also holds the scheduler's delays.
        let slowestPut = Mutex<UInt64>(0)
        // The slowest lookup, from a thread that asks for blocks already put while the writers fill the
        // index: what an engine's `exists` waits when the index stops to grow. With more writers than
        // CPUs it also holds the scheduler's delays (`--threads 1` isolates the index).
        let filled = Atomic<Int>(0)
        let filling = Atomic<Bool>(true)
        let lookups = Mutex<(slowest: UInt64, count: Int, over10ms: Int)>((0, 0, 0))
        let prober = BackgroundThread(name: "idx-lookup") {
            var rng = SeededGenerator(seed: 3)
            var slowest: UInt64 = 0
            var count = 0
            var over10ms = 0
            defer { lookups.withLock { $0 = (slowest, count, over10ms) } }
            while filling.load(ordering: .relaxed) {
                let done = filled.load(ordering: .relaxed)
                guard done > 0 else { continue }
                let i = Int(rng.next() % UInt64(done))
                let k = depth == 1 ? key(i) : pathKey(i, depth: depth)
                let began = monotonicNanoseconds()
                _ = s.contains(namespace: "bench", key: k)
                let took = monotonicNanoseconds() - began
                slowest = max(slowest, took)
                count += 1
                if took > 10_000_000 { over10ms += 1 }
            }
        }
        let writers = (0..<threads).map { t in
            BackgroundThread(name: "idx\(t)") {
                var slowest: UInt64 = 0
                defer { slowestPut.withLock { $0 = max($0, slowest) } }
                for i in stride(from: t, to: count, by: threads) {
                    let k = depth == 1 ? key(i) : pathKey(i, depth: depth)
                    let began = monotonicNanoseconds()
                    defer { slowest = max(slowest, monotonicNanoseconds() - began) }
                    // Directories are made as a writer meets them (mkdir -p), as an engine's file tier does.
                    if (try? s.put(namespace: "bench", key: k, payload: UnsafeRawBufferPointer(start: nil, count: 0))) == nil {
                        var parent = DirectoryID.namespaceRoot
                        for component in BlockPath.components(of: BlockPath.split(key: k).directory) {
                            if let id = s.lookupDirectory(namespaceID: ns.id, parent: parent, name: component) { parent = id; continue }
                            parent = (try? s.makeDirectory(namespaceID: ns.id, parent: parent, name: component,
                                                           ownership: BlockOwnership(uid: 0, gid: 0, mode: 0o755)).id)
                                ?? s.lookupDirectory(namespaceID: ns.id, parent: parent, name: component) ?? parent
                        }
                        _ = try? s.put(namespace: "bench", key: k, payload: UnsafeRawBufferPointer(start: nil, count: 0))
                    }
                    filled.add(1, ordering: .relaxed)
                }
            }
        }
        writers.forEach { $0.join() }
        filling.store(false, ordering: .relaxed)
        prober.join()
        let probe = lookups.withLock { $0 }
        let directories = s.statistics().directories
        // What the daemon's flusher does within milliseconds: sealed segments' summaries go to disk and
        // leave memory. Without it the figure would count them, which a running daemon does not hold.
        s.flushOnce()
        let after = residentBytes()
        let blocks = s.statistics().blocks
        var started = monotonicNanoseconds()
        try s.close()
        let closing = Double(monotonicNanoseconds() - started) / 1e9
        store = nil
        // After a clean stop: the index snapshot, read from the disk as after a reboot (its pages were
        // just written, so they are dropped from the page cache first).
        var reopened: BlockStore! = nil
        var fromSnapshot: [Double] = []
        for round in 0..<max(1, indexRestarts) {
            if round > 0 { try reopened.close() }
            reopened = nil
            if let snapshot = try? FileDescriptor(open: path + "/index.snapshot", flags: O_RDONLY) { snapshot.advise(POSIX_FADV_DONTNEED) }
            started = monotonicNanoseconds()
            reopened = try BlockStore(directory: path, configuration: configuration)
            fromSnapshot.append(Double(monotonicNanoseconds() - started) / 1e9)
            let r0 = reopened.recovery
            guard r0.blocks == blocks else { throw failure("restart found \(r0.blocks) of \(blocks) blocks") }
            guard r0.indexSnapshot == "loaded" else { throw failure("the restart after a clean stop did not load the index snapshot (\(r0.indexSnapshot))") }
        }
        // After a crash (no snapshot): the summaries. As many samples as clean restarts.
        var withSummaries: [Double] = []
        var r1 = RecoveryReport()
        for _ in 0..<max(1, indexRestarts) {
            reopened.abandonAsIfCrashed()
            started = monotonicNanoseconds()
            reopened = try BlockStore(directory: path, configuration: configuration)
            withSummaries.append(Double(monotonicNanoseconds() - started) / 1e9)
            r1 = reopened.recovery
            guard r1.blocks == blocks else { throw failure("restart found \(r1.blocks) of \(blocks) blocks") }
        }
        let withCheckpoint = withSummaries.min() ?? 0
        let listing = try listingRun(reopened, path: path, namespaceID: ns.id, blocks: blocks, depth: depth)
        try reopened.close()
        var withoutCheckpoint = 0.0
        var r2 = RecoveryReport()
        if indexFullScan {
            for name in try FileSystem.listDirectory(path) where name.hasSuffix(SegmentFormat.summarySuffix) || name.hasPrefix("index.snapshot") {
                try FileSystem.remove(path + "/" + name)
            }
            started = monotonicNanoseconds()
            reopened = try BlockStore(directory: path, configuration: configuration)
            withoutCheckpoint = Double(monotonicNanoseconds() - started) / 1e9
            r2 = reopened.recovery
            try reopened.close()
        }
        try? FileManager.default.removeItem(atPath: path)
        return ["blocks": blocks, "depth": indexDepth, "directories": directories, "bytes_per_block": Double(after > before ? after - before : 0) / Double(max(1, blocks)),
                "close_s": closing, "restart_from_snapshot_s": fromSnapshot.min() ?? 0, "restarts_from_snapshot_s": fromSnapshot,
                "slowest_put_ms": Double(slowestPut.withLock { $0 }) / 1e6,
                "slowest_lookup_ms": Double(probe.slowest) / 1e6, "lookups_while_filling": probe.count, "lookups_over_10ms": probe.over10ms,
                "restart_with_checkpoint_s": withCheckpoint, "restarts_with_checkpoint_s": withSummaries, "segments_from_summary": r1.segmentsFromSummary,
                "segments_scanned_with_checkpoint": r1.segmentsScanned,
                "restart_without_checkpoint_s": withoutCheckpoint, "segments_scanned_without_checkpoint": r2.segmentsScanned,
                "bytes_scanned_without_checkpoint": r2.bytesScanned].merging(listing) { a, _ in a }
    }

    /// Lists the namespace whole, every directory in it, as `find` or `ls -R` through the mount makes the daemon do it: pages of
    /// `listingPage` names (what fits one `READDIR` reply of 4 KiB with 64-character names), each a
    /// `listDirectory` under the store's lock and then the names from the records' headers (their reads started together, as the daemon's `READDIR` does). The segments'
    /// pages are dropped from the page cache first, as after a reboot. A second thread asks `contains` for
    /// random names meanwhile: the slowest answer is what an engine's `exists` waits while someone lists.
    func listingRun(_ store: BlockStore, path: String, namespaceID: UInt16, blocks: Int, depth: Int) throws -> [String: Any] {
        for name in try FileSystem.listDirectory(path) where name.hasPrefix("seg") {
            if let f = try? FileDescriptor(open: path + "/" + name, flags: O_RDONLY) { f.advise(POSIX_FADV_DONTNEED) }
        }
        let listing = Atomic<Bool>(true)
        let lookups = Mutex<(slowest: UInt64, count: Int)>((0, 0))
        let prober = BackgroundThread(name: "ls-lookup") {
            var rng = SeededGenerator(seed: 5)
            var slowest: UInt64 = 0, count = 0
            defer { lookups.withLock { $0 = (slowest, count) } }
            while listing.load(ordering: .relaxed) {
                let i = Int(rng.next() % UInt64(max(1, blocks)))
                let began = monotonicNanoseconds()
                _ = store.contains(namespace: "bench", key: depth == 1 ? key(i) : pathKey(i, depth: depth))
                slowest = max(slowest, monotonicNanoseconds() - began)
                count += 1
                usleep(100)  // an engine's pace, not a CPU of the two spinning
            }
        }
        let listingPage = 46
        var names = 0, blocksNamed = 0, slowestPage: UInt64 = 0
        var pending: [UInt32] = [DirectoryID.namespaceRoot]  // directories left to list, as `find` walks them
        let started = monotonicNanoseconds()
        while let directory = pending.popLast() {
            store.beginListing(namespaceID: namespaceID, id: directory)
            defer { store.endListing(namespaceID: namespaceID, id: directory) }
            var cursor: UInt64 = 0
            while cursor != BlockStore.DirectoryPage.end {
                let pageStarted = monotonicNanoseconds()
                let page = store.listDirectory(namespaceID: namespaceID, id: directory, from: cursor, limit: listingPage)
                slowestPage = max(slowestPage, monotonicNanoseconds() - pageStarted)
                store.startReadingKeys(of: page.items.lazy.compactMap { if case .block(let l) = $0.item { l } else { nil } })
                for (item, _) in page.items {
                    switch item {
                    case .directory(_, let child):
                        names += 1
                        pending.append(child)
                    case .block(let locator):
                        if store.key(of: locator) != nil {
                            names += 1
                            blocksNamed += 1
                        }
                    }
                }
                cursor = page.next
                // The daemon's READDIR also starts reading the next page's names before it replies.
                if cursor != BlockStore.DirectoryPage.end {
                    let ahead = store.listDirectory(namespaceID: namespaceID, id: directory, from: cursor, limit: listingPage)
                    store.startReadingKeys(of: ahead.items.lazy.compactMap { if case .block(let l) = $0.item { l } else { nil } })
                }
            }
        }
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        listing.store(false, ordering: .relaxed)
        prober.join()
        let probe = lookups.withLock { $0 }
        if blocksNamed != blocks { throw failure("the listing named \(blocksNamed) of \(blocks) blocks") }
        return ["listing_names": names, "listing_s": seconds, "listing_names_per_s": Double(names) / max(seconds, 1e-9),
                "listing_slowest_page_lock_ms": Double(slowestPage) / 1e6,
                "slowest_lookup_while_listing_ms": Double(probe.slowest) / 1e6, "lookups_while_listing": probe.count]
    }
}
