import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif
import WarehouseCore
import Platform
@testable import BlockStore

/// One test per failure mode of a segment, in the manner of leveldb's log tests.
@Suite struct RecoveryTests {
    /// A device whose only segment holds `count` blocks of 100 bytes ("b0", "b1", ...), never sealed
    /// (as after a crash), so recovery must scan it. Returns the device and each record's offset.
    func crashedStore(count: Int) throws -> (MemoryStorageDevice, [UInt64]) {
        let device = MemoryStorageDevice()
        let store = try makeStore(device)
        try ensureNamespace(store)
        for i in 0..<count { _ = try store.put("m", "b\(i)", pattern(i, count: 100)) }
        let offsets = store.state.withLock { st in st.segments[st.activeID]!.summary.map { UInt64($0.page) * 4096 } }
        // Simulate the crash: no close (no summary), keep what was synced.
        store.abandonAsIfCrashed()
        device.losePower()
        return (device, offsets)
    }

    func recordCount(_ store: BlockStore) -> Int { store.statistics().blocks }

    /// What compaction and eviction choose by: each segment's live bytes and live blocks per namespace,
    /// and each namespace's usage. Recovery sums them from the index.
    struct Tallies: Equatable {
        var liveBytes: [UInt32: UInt64]
        var liveBlocks: [UInt32: [UInt16: Int]]
        var usage: [UInt16: NamespaceUsage]
    }

    func tallies(_ store: BlockStore) -> Tallies {
        store.state.withLock { st in
            // Segments holding nothing live left out: a restart starts a fresh, empty active segment.
            let holding = st.segments.filter { $0.value.liveBytes != 0 }
            return Tallies(liveBytes: holding.mapValues { $0.liveBytes },
                           liveBlocks: holding.mapValues { $0.liveBlocksByNamespace.filter { $0.value != 0 } }, usage: st.usage)
        }
    }

    /// Two namespaces' blocks over several segments, some removed, some written again: after a restart
    /// from the index snapshot, one from the summaries (after a crash) and one that scans every segment,
    /// the tallies are what they were.
    @Test func liveTalliesAreRebuiltExactlyFromTheSnapshotTheSummariesAndAScan() throws {
        let device = MemoryStorageDevice()
        var store = try makeStore(device)
        try ensureNamespace(store, "a")
        try ensureNamespace(store, "b")
        for i in 0..<60 {
            _ = try store.put(i % 3 == 0 ? "b" : "a", "k\(i)", pattern(i, count: 30_000 + i * 700))
        }
        for i in stride(from: 0, to: 60, by: 7) { try store.remove(namespace: i % 3 == 0 ? "b" : "a", key: "k\(i)") }
        for i in stride(from: 0, to: 60, by: 14) { _ = try store.put(i % 3 == 0 ? "b" : "a", "k\(i)", pattern(i + 100, count: 5_000)) }
        let before = tallies(store)
        #expect(before.liveBytes.count > 3)
        try store.close()
        store = try makeStore(device)
        #expect(store.recovery.indexSnapshot == "loaded")
        #expect(tallies(store) == before)
        store.abandonAsIfCrashed()
        store = try makeStore(device)
        #expect(store.recovery.indexSnapshot == "")
        #expect(store.recovery.segmentsFromSummary > 0)
        #expect(tallies(store) == before)
        try store.close()
        for name in try device.fileNames() where name.hasSuffix(SegmentFormat.summarySuffix) || name == IndexSnapshot.fileName {
            try device.remove(name)
        }
        store = try makeStore(device)
        #expect(store.recovery.segmentsScanned > 0)
        #expect(tallies(store) == before)
        #expect(try store.get("a", "k14") == pattern(114, count: 5_000))
        try store.close()
    }

    /// Everything a restart restores, as one value: every index entry with its extras, the attribute
    /// classes, each directory's blocks, the next sequence and the tallies.
    struct WholeState: Equatable {
        var entries: [String]
        var attributeClasses: [BlockOwnership]
        var directories: [String]
        var nextSequence: UInt64
    }

    func wholeState(_ store: BlockStore) -> WholeState {
        store.state.withLock { st in
            var entries: [String] = []
            for (k, e) in st.index { entries.append("\(k.low):\(k.high) \(e) \(st.extras[k].map { "\($0)" } ?? "-")") }
            var directories: [String] = []
            for (ns, tree) in st.directories.namespaces {
                for (id, node) in tree.nodes where !node.blocks.isEmpty {
                    directories.append("\(ns)/\(id): \(node.blocks.all.sorted())")
                }
            }
            return WholeState(entries: entries.sorted(), attributeClasses: st.attributes.classes, directories: directories.sorted(),
                              nextSequence: st.nextSequence)
        }
    }

    /// A store with blocks in fan-out and made directories, a rename, an owner change and an explicit
    /// time, over several segments: closed, it restarts from its index snapshot into exactly the state
    /// it had, reads every block, and the snapshot is gone (a second start reads the summaries).
    @Test func aCleanStopRestartsFromTheIndexSnapshotIntoTheSameState() throws {
        let device = MemoryStorageDevice()
        var store = try makeStore(device, segmentSize: 64 << 10)
        try ensureNamespace(store, "a")
        let ns = store.namespace(named: "a")!.id
        let dir = try store.makeDirectory(namespaceID: ns, parent: DirectoryID.namespaceRoot, name: "conv",
                                          ownership: BlockOwnership(uid: 7, gid: 7, mode: 0o750))
        for i in 0..<40 { _ = try store.put("a", i % 4 == 0 ? "conv/k\(i)" : "k\(i)", pattern(i, count: 3_000 + i * 500)) }
        try store.remove(namespace: "a", key: "k5")
        _ = try store.rename(namespace: "a", from: "k6", to: "conv/moved")
        try store.setAttributes(namespace: "a", key: "k7", ownership: BlockOwnership(uid: 1000, gid: 1000, mode: 0o440),
                                modifiedNanoseconds: 1_700_000_000_000_000_000)
        let before = wholeState(store)
        let beforeTallies = tallies(store)
        #expect(before.directories.contains { $0.hasPrefix("\(ns)/\(dir.id):") })
        try store.close()
        #expect(device.contents(IndexSnapshot.fileName) != nil)

        store = try makeStore(device, segmentSize: 64 << 10)
        #expect(store.recovery.indexSnapshot == "loaded")
        #expect(store.recovery.segmentsFromSummary == 0 && store.recovery.segmentsScanned == 0)
        #expect(device.contents(IndexSnapshot.fileName) == nil)
        #expect(device.contents(IndexSnapshot.retiredName) != nil)  // renamed at start, removed in the background
        #expect(wholeState(store) == before)
        #expect(tallies(store) == beforeTallies)
        #expect(try store.get("a", "conv/moved") == pattern(6, count: 6_000))
        #expect(store.locate(namespace: "a", key: "k5") == nil)
        for i in 0..<40 where i != 5 && i != 6 {
            #expect(try store.get("a", i % 4 == 0 ? "conv/k\(i)" : "k\(i)") == pattern(i, count: 3_000 + i * 500))
        }
        let page = store.listDirectory(namespaceID: ns, id: dir.id, from: 0, limit: 100)
        #expect(page.items.count == 11)  // conv/k0 ... conv/k36 and conv/moved
        store.abandonAsIfCrashed()
        store = try makeStore(device, segmentSize: 64 << 10)
        #expect(store.recovery.indexSnapshot == "")
        #expect(store.recovery.segmentsFromSummary > 0)
        #expect(device.contents(IndexSnapshot.retiredName) == nil)
        #expect(tallies(store) == beforeTallies)
        try store.close()
    }

    /// A snapshot that no longer describes the store (put back after the store changed) or that was
    /// damaged is not used: the start reads the log, finds every change, and removes the snapshot.
    @Test func aStaleOrDamagedSnapshotIsIgnored() throws {
        let device = MemoryStorageDevice()
        var store = try makeStore(device)
        try ensureNamespace(store)
        for i in 0..<20 { _ = try store.put("m", "b\(i)", pattern(i, count: 20_000)) }
        try store.close()
        let stale = try #require(device.contents(IndexSnapshot.fileName))
        store = try makeStore(device)
        #expect(store.recovery.indexSnapshot == "loaded")
        try store.remove(namespace: "m", key: "b3")
        _ = try store.put("m", "late", pattern(99, count: 1_000))
        store.abandonAsIfCrashed()
        try device.replaceAtomically(IndexSnapshot.fileName, bytes: stale)

        store = try makeStore(device)
        #expect(store.recovery.indexSnapshot.hasPrefix("ignored"))
        #expect(device.contents(IndexSnapshot.fileName) == nil)
        #expect(store.locate(namespace: "m", key: "b3") == nil)
        #expect(try store.get("m", "late") == pattern(99, count: 1_000))
        try store.close()

        // Damaged: one byte of the index flipped (the checksum catches it).
        device.modify(IndexSnapshot.fileName) { $0[IndexSnapshot.headerSize + 100] ^= 0x10 }
        store = try makeStore(device)
        #expect(store.recovery.indexSnapshot == "ignored: checksum mismatch")
        #expect(device.contents(IndexSnapshot.fileName) == nil)
        for i in 0..<20 where i != 3 { #expect(try store.get("m", "b\(i)") == pattern(i, count: 20_000)) }
        #expect(try store.get("m", "late") == pattern(99, count: 1_000))
        try store.close()

        // Cut short: ignored too.
        device.modify(IndexSnapshot.fileName) { $0.removeLast(9) }
        store = try makeStore(device)
        #expect(store.recovery.indexSnapshot.hasPrefix("ignored"))
        #expect(store.statistics().blocks == 20)
        try store.close()

        // Its checksum made to hold, but a directory list names one slot twice (and so misses one): ignored.
        device.modify(IndexSnapshot.fileName) { b in
            func integer(_ at: Int, _ width: Int) -> Int { (0..<width).reduce(0) { $0 | Int(b[at + $1]) << (8 * $1) } }
            let slots = integer(40, 8), buckets = integer(48, 8), listsLength = integer(80, 8)
            let lists = IndexSnapshot.headerSize + slots * MemoryLayout<BlockIndex.Slot>.stride + slots * 4 + buckets * 4
            let first = lists + 4 + integer(lists, 4) * 10
            let last = lists + listsLength - 4
            #expect(last > first)
            for i in 0..<4 { b[last + i] = b[first + i] }
            let digest = b.withUnsafeBytes { Checksum.xxh3(UnsafeRawBufferPointer(rebasing: $0[0..<(b.count - 8)])) }
            for i in 0..<8 { b[b.count - 8 + i] = UInt8(truncatingIfNeeded: digest >> (8 * UInt64(i))) }
        }
        store = try makeStore(device)
        #expect(store.recovery.indexSnapshot == "ignored: its directory lists do not hold together")
        for i in 0..<20 where i != 3 { #expect(try store.get("m", "b\(i)") == pattern(i, count: 20_000)) }
        #expect(store.statistics().blocks == 20)
        try store.close()
    }

    @Test func flippedPayloadByteIsSkippedAndCounted() throws {
        let (device, offsets) = try crashedStore(count: 3)
        let name = segmentNames(device)[0]
        device.modify(name) { $0[Int(offsets[1]) + 4096 + 10] ^= 0x40 }
        let store = try makeStore(device)
        #expect(store.recovery.corruptRecords == 1)
        #expect(throws: StoreError.notFound) { try store.get("m", "b1") }
        #expect(try store.get("m", "b0") == pattern(0, count: 100))
        #expect(try store.get("m", "b2") == pattern(2, count: 100))
        try store.close()
    }

    @Test func flippedPayloadByteAfterCheckpointIsNeverServed() throws {
        let device = MemoryStorageDevice()
        var store = try makeStore(device)
        try ensureNamespace(store)
        _ = try store.put("m", "k", pattern(9, count: 10_000))
        try store.close()
        let offset = 4096 + 4096 + 5000
        device.modify(segmentNames(device)[0]) { $0[offset] ^= 0x01 }
        store = try makeStore(device)
        #expect(store.recovery.indexSnapshot == "loaded")
        #expect(storeErrno { _ = try store.get("m", "k") } == EIO)
        #expect(store.statistics().corruptReads == 1)
        try store.close()
    }

    @Test func flippedHeaderByteIsSkippedAndCounted() throws {
        let (device, offsets) = try crashedStore(count: 3)
        device.modify(segmentNames(device)[0]) { $0[Int(offsets[1]) + 20] ^= 0x01 }
        let store = try makeStore(device)
        #expect(store.recovery.corruptRecords == 1)
        #expect(recordCount(store) == 2)
        try store.close()
    }

    @Test func lastRecordTruncatedAtEveryOffsetLeavesTheEarlierOnes() throws {
        let (device, offsets) = try crashedStore(count: 3)
        let name = segmentNames(device)[0]
        let full = device.contents(name)!
        let last = Int(offsets[2])
        for cut in last..<full.count {
            let copy = MemoryStorageDevice()
            copy.modify(name) { _ in }
            _ = try copy.open(name, create: true)
            copy.modify(name) { $0 = Array(full[0..<cut]) }
            try copy.replaceAtomically(NamespaceTable.fileName, bytes: device.contents(NamespaceTable.fileName)!)
            let store = try makeStore(copy)
            #expect(recordCount(store) == 2, "cut at \(cut)")
            #expect(try store.get("m", "b1") == pattern(1, count: 100))
            #expect(store.recovery.corruptRecords == 0)
            #expect(store.recovery.tornTailBytes == UInt64(cut - last), "cut at \(cut)")
            try store.close()
        }
    }

    @Test func badLengthEndsTheValidLogAsATornTailNotTrusted() throws {
        let (device, offsets) = try crashedStore(count: 2)
        device.modify(segmentNames(device)[0]) { bytes in
            let at = Int(offsets[1])
            // A stored length far past the file, with a header checksum that matches it.
            bytes.withUnsafeMutableBytes { raw in
                let area = UnsafeMutableRawBufferPointer(rebasing: raw[at..<(at + 4096)])
                LittleEndian.store(UInt32(1 << 30), at: RecordFormat.storedLengthOffset, in: area)
                resealHeader(area)
            }
        }
        let store = try makeStore(device)
        #expect(recordCount(store) == 1)
        #expect(store.recovery.tornTailBytes > 0)
        try store.close()
    }

    @Test func unknownRecordTypeIsSkippedAndLaterRecordsRecovered() throws {
        let (device, offsets) = try crashedStore(count: 3)
        device.modify(segmentNames(device)[0]) { bytes in
            let at = Int(offsets[1])
            bytes.withUnsafeMutableBytes { raw in
                let area = UnsafeMutableRawBufferPointer(rebasing: raw[at..<(at + 4096)])
                area[4] = 77
                resealHeader(area)
            }
        }
        let store = try makeStore(device)
        #expect(store.recovery.corruptRecords == 1)
        #expect(recordCount(store) == 2)
        #expect(try store.get("m", "b2") == pattern(2, count: 100))
        try store.close()
    }

    @Test func badRecordInTheMiddleIsFollowedByGoodOnes() throws {
        let (device, offsets) = try crashedStore(count: 6)
        device.modify(segmentNames(device)[0]) { bytes in
            for i in Int(offsets[2])..<Int(offsets[2]) + 64 { bytes[i] = 0x5A }
        }
        let store = try makeStore(device)
        #expect(store.recovery.corruptRecords == 1)
        #expect(recordCount(store) == 5)
        for i in [0, 1, 3, 4, 5] { #expect(try store.get("m", "b\(i)") == pattern(i, count: 100)) }
        try store.close()
    }

    @Test(arguments: [1, 2, 3, 4, 5])
    func powerLossKeepsEveryBlockWhosePutReturnedUnderSyncAlways(seed: Int) throws {
        let device = MemoryStorageDevice()
        let first = try makeStore(device, segmentSize: 128 << 10, sync: .always)
        try ensureNamespace(first)
        first.startBackgroundWork()
        let returned = Mutex<[Int]>([])
        let threads = (0..<4).map { t in
            BackgroundThread(name: "w\(t)") {
                for i in 0..<40 {
                    let id = t * 100 + i
                    if (try? first.put("m", "b\(id)", pattern(id + seed * 10_000, count: 500 + id * 37 % 20_000))) != nil {
                        returned.withLock { $0.append(id) }
                    }
                }
            }
        }
        // Cut the power while writers run, then wait for them to notice nothing.
        var generator = SeededGenerator(seed: UInt64(seed))
        threads[0].join()
        device.losePower(keepingRandomPrefixWith: &generator)
        threads.dropFirst().forEach { $0.join() }
        let acknowledged = Set(returned.withLock { $0 })
        first.abandonAsIfCrashed()
        device.losePower(keepingRandomPrefixWith: &generator)
        let store = try makeStore(device, segmentSize: 128 << 10)
        for id in 0..<400 where id % 100 < 40 {
            let expected = pattern(id + seed * 10_000, count: 500 + id * 37 % 20_000)
            if let got = try? store.get("m", "b\(id)") {
                #expect(got == expected, "block \(id) is visible with other bytes")
            } else if id < 40 {
                // Thread 0 finished before the cut: every one of its puts returned and must survive.
                #expect(!acknowledged.contains(id), "block \(id) was acknowledged and lost")
            }
        }
        try store.close()
    }

    @Test func recoveryAfterACheckpointReadsOnlyTheSegmentsAfterIt() throws {
        let device = MemoryStorageDevice()
        var store = try makeStore(device, segmentSize: 64 << 10, sync: .always)
        try ensureNamespace(store)
        for i in 0..<40 { _ = try store.put("m", "b\(i)", pattern(i, count: 10_000)) }
        store.flushOnce()  // writes the summaries of the sealed segments
        // The active segment, and the spare the last roll's writer made for the next roll (header only).
        let (activeID, spareID) = store.state.withLock { ($0.activeID, $0.spareSegment?.id) }
        let active = SegmentFormat.dataFileName(activeID)
        let spare = spareID.map(SegmentFormat.dataFileName)
        #expect(spare != nil)
        let segments = segmentNames(device).filter { $0 != spare }
        #expect(segments.count > 5 && segments.last == active)
        store.abandonAsIfCrashed()
        device.losePower()
        device.resetReadCounters()
        store = try makeStore(device, segmentSize: 64 << 10)
        let reads = device.bytesRead()
        for name in segments.dropLast() { #expect((reads[name] ?? 0) == 0, "\(name) was read") }
        #expect((reads[active] ?? 0) > 0)
        // The spare is read too (one empty page) and removed.
        #expect(store.recovery.segmentsScanned == 2)
        #expect(!segmentNames(device).contains(spare ?? ""))
        #expect(store.recovery.segmentsFromSummary == segments.count - 1)
        for i in 0..<40 { #expect(try store.get("m", "b\(i)") == pattern(i, count: 10_000)) }
        try store.close()
    }

    /// A disk that reports write errors: an `always` commit fails with EIO and is not published, the
    /// flusher's failed syncs are counted, and the store works again once the disk does.
    @Test func failedSyncsFailAlwaysCommitsAndAreCounted() throws {
        let device = MemoryStorageDevice()
        let store = try makeStore(device, sync: .always)
        try ensureNamespace(store)
        device.failSyncs(with: EIO)
        #expect(storeErrno { _ = try store.put("m", "lost", pattern(1, count: 5000)) } == EIO)
        #expect(throws: StoreError.notFound) { try store.get("m", "lost") }
        #expect(store.statistics().syncFailures == 1)
        device.failSyncs(with: nil)
        _ = try store.put("m", "kept", pattern(2, count: 5000))
        #expect(try store.get("m", "kept") == pattern(2, count: 5000))
        try store.close()

        let batchDevice = MemoryStorageDevice()
        let batch = try makeStore(batchDevice, sync: .batch)
        try ensureNamespace(batch)
        _ = try batch.put("m", "b", pattern(3, count: 5000))
        batchDevice.failSyncs(with: EIO)
        batch.flushOnce()
        #expect(batch.statistics().syncFailures >= 1)
        batchDevice.failSyncs(with: nil)
        try batch.close()
    }

    /// `--sync batch`: a commit is a write into memory, synced later by the flusher, unless the segment
    /// already holds `batchBacklogBytes` unsynced: then the commit waits for a sync. A power cut with no
    /// flusher running loses the commits since the last such sync, never more than the bound.
    @Test func batchCommitsAreNotSyncedUntilTheBacklogPassesItsBound() throws {
        let device = MemoryStorageDevice()
        let store = try makeStore(device, segmentSize: 256 << 20, sync: .batch)
        try ensureNamespace(store)
        let block = pattern(3, count: 2 << 20)
        let count = 40
        for i in 0..<count { _ = try store.put("m", "b\(i)", block) }
        store.abandonAsIfCrashed()
        device.losePower()
        let reopened = try makeStore(device, segmentSize: 256 << 20, sync: .batch)
        let kept = (0..<count).filter { (try? reopened.get("m", "b\($0)")) == block }
        // Each record is 2 MiB and a header page: the 16th since a sync passes 32 MiB and waits for one.
        let perRecord = (2 << 20) + 4096
        let boundInRecords = Int(StoreConfiguration.batchBacklogBytes) / perRecord + 1
        #expect(kept == Array(0..<kept.count), "what survives is a prefix of the commits")
        #expect(kept.count < count, "the last commits were never synced: a batch commit does not wait for the disk")
        #expect(count - kept.count <= boundInRecords, "lost \(count - kept.count) commits, more than the backlog bound")
        try reopened.close()
    }

}

/// Recomputes a record's header checksum after a test changed a field on purpose.
func resealHeader(_ area: UnsafeMutableRawBufferPointer) {
    typealias F = RecordFormat
    let ns = Int(area[F.namespaceLengthOffset])
    let key = Int(LittleEndian.load(UInt16.self, at: F.keyLengthOffset, in: area))
    let meta = Int(LittleEndian.load(UInt16.self, at: F.metadataLengthOffset, in: area))
    LittleEndian.store(UInt64(0), at: F.headerChecksumOffset, in: area)
    let sum = Checksum.xxh3(UnsafeRawBufferPointer(rebasing: area[0..<(F.fixedHeaderSize + ns + key + meta)]))
    LittleEndian.store(sum, at: F.headerChecksumOffset, in: area)
}
