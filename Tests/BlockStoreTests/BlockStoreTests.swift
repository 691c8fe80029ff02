import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif
import WarehouseCore
import Platform
@testable import BlockStore

@Suite struct BlockStoreTests {
    @Test func putThenReadReturnsTheSameBytes() throws {
        let store = try makeStore(MemoryStorageDevice())
        try ensureNamespace(store)
        for (i, size) in [0, 1, 4095, 4096, 4097, 100_000, 1 << 20].enumerated() {
            let bytes = pattern(i, count: size)
            #expect(try store.put("m", "block-\(i)", bytes).isStored)
            #expect(try store.get("m", "block-\(i)") == bytes)
            #expect(store.attributes(namespace: "m", key: "block-\(i)")?.logicalLength == size)
        }
        try store.close()
    }

    @Test func firstWriteWins() throws {
        let store = try makeStore(MemoryStorageDevice())
        try ensureNamespace(store)
        #expect(try store.put("m", "k", pattern(1, count: 5000)).isStored)
        #expect(try store.put("m", "k", pattern(2, count: 7000)) == .alreadyPresent)
        #expect(try store.get("m", "k") == pattern(1, count: 5000))
        try store.close()
    }

    @Test func missingNamespaceAndBadNamesAreRejected() throws {
        let store = try makeStore(MemoryStorageDevice())
        #expect(throws: StoreError.notFound) { try store.put("nope", "k", [1]) }
        try ensureNamespace(store)
        // A path whose directory does not exist, an empty key, a key with an empty component, a bad namespace.
        #expect(storeErrno { try store.put("m", "a/b", [1]) } == ENOENT)
        #expect(storeErrno { try store.put("m", "", [1]) } == EINVAL)
        #expect(storeErrno { try store.put("m", "a//b", [1]) } == EINVAL)
        #expect(storeErrno { _ = try store.createNamespace(".x", owner: 0, group: 0, mode: 0o755) } == EINVAL)
        #expect(throws: StoreError.alreadyExists) { _ = try store.createNamespace("m", owner: 0, group: 0, mode: 0o755) }
        try store.close()
    }

    @Test func blockOverTheMaximumIsTooLarge() throws {
        let store = try BlockStore(device: MemoryStorageDevice(), configuration: StoreConfiguration(capacity: 1 << 30, maxBlockSize: 1000))
        try ensureNamespace(store)
        #expect(throws: StoreError.tooLarge(size: 1001, limit: 1000)) { try store.put("m", "k", pattern(0, count: 1001)) }
        try store.close()
    }

    @Test func metadataIsStoredWithTheBlock() throws {
        let store = try makeStore(MemoryStorageDevice())
        try ensureNamespace(store)
        let meta = BlockMetadata(parent: "00112233445566778899aabbccddeeff", tokens: "[1, 2, 3]")
        _ = try store.put("m", "k", pattern(0, count: 10), metadata: meta)
        #expect(try store.metadata(namespace: "m", key: "k") == meta)
        try store.close()
    }

    @Test func unlinkedBlockStaysDeletedAfterRestart() throws {
        let device = MemoryStorageDevice()
        var store = try makeStore(device)
        try ensureNamespace(store)
        _ = try store.put("m", "gone", pattern(1, count: 100))
        _ = try store.put("m", "kept", pattern(2, count: 100))
        try store.remove(namespace: "m", key: "gone")
        #expect(throws: StoreError.notFound) { try store.get("m", "gone") }
        try store.close()
        store = try makeStore(device)
        #expect(throws: StoreError.notFound) { try store.get("m", "gone") }
        #expect(try store.get("m", "kept") == pattern(2, count: 100))
        // A name can be written again after unlink, with new bytes.
        #expect(try store.put("m", "gone", pattern(3, count: 50)).isStored)
        try store.close()
        store = try makeStore(device)
        #expect(try store.get("m", "gone") == pattern(3, count: 50))
        try store.close()
    }

    @Test func renameMovesTheBlockAndFirstWriteWinsOnTheTarget() throws {
        let store = try makeStore(MemoryStorageDevice())
        try ensureNamespace(store)
        _ = try store.put("m", "tmp1", pattern(1, count: 9000))
        try store.rename(namespace: "m", from: "tmp1", to: "final")
        #expect(try store.get("m", "final") == pattern(1, count: 9000))
        #expect(!store.contains(namespace: "m", key: "tmp1"))
        _ = try store.put("m", "tmp2", pattern(2, count: 10))
        try store.rename(namespace: "m", from: "tmp2", to: "final")
        #expect(try store.get("m", "final") == pattern(1, count: 9000))
        try store.close()
    }

    @Test(arguments: [CompressionPolicy.lz4, .auto])
    func compressedNamespacesRoundTrip(policy: CompressionPolicy) throws {
        let device = MemoryStorageDevice()
        var store = try makeStore(device)
        try ensureNamespace(store, "z", compression: policy)
        let compressible = [UInt8](repeating: 7, count: 200_000)
        let random = pattern(5, count: 200_000)
        _ = try store.put("z", "c", compressible)
        _ = try store.put("z", "r", random)
        #expect(store.attributes(namespace: "z", key: "c")!.compressed)
        #expect(store.attributes(namespace: "z", key: "c")!.storedLength < 10_000)
        // `auto` keeps random bytes uncompressed; `lz4` may keep them compressed only if smaller.
        if policy == .auto { #expect(!store.attributes(namespace: "z", key: "r")!.compressed) }
        try store.close()
        store = try makeStore(device)
        #expect(try store.get("z", "c") == compressible)
        #expect(try store.get("z", "r") == random)
        try store.close()
    }

    @Test func secondOpenOfALockedStoreIsRefused() throws {
        let device = MemoryStorageDevice()
        let store = try makeStore(device)
        #expect(storeErrno { _ = try makeStore(device) } == EBUSY)
        try store.close()
    }

    @Test func directoryStoreIsLockedAgainstASecondOpen() throws {
        let dir = scratchDirectory("lock")
        defer { removeScratch(dir) }
        let store = try BlockStore(directory: dir, configuration: StoreConfiguration(capacity: 1 << 30))
        #expect(storeErrno { _ = try BlockStore(directory: dir, configuration: StoreConfiguration(capacity: 1 << 30)) } == EBUSY)
        try store.close()
    }

    /// A listing's names come from the records' headers on disk, their reads started together
    /// (`startReadingKeys`, then `key(of:)` for each): on a real
    /// directory store, every name of blocks of mixed sizes, renamed ones included, in listing order;
    /// adjacent headers (empty blocks written one after another) are joined into one read.
    @Test func aListingReadsItsBlocksNamesTogetherFromDisk() throws {
        let dir = scratchDirectory("keys")
        defer { removeScratch(dir) }
        let store = try BlockStore(directory: dir, configuration: StoreConfiguration(capacity: 1 << 30, segmentSize: 1 << 20, sync: .none))
        defer { try? store.close() }
        try ensureNamespace(store)
        var expected: Set<String> = []
        for i in 0..<300 {
            let name = String(repeating: "n", count: 1 + i % 90) + "\(i)"
            _ = try store.put("m", name, pattern(i, count: [0, 0, 5000, 70000][i % 4]))
            expected.insert(name)
        }
        for i in stride(from: 0, to: 300, by: 37) {
            let old = String(repeating: "n", count: 1 + i % 90) + "\(i)"
            _ = try store.rename(namespace: "m", from: old, to: "renamed\(i)")
            expected.remove(old)
            expected.insert("renamed\(i)")
        }
        let ns = try #require(store.namespace(named: "m")).id
        var cursor: UInt64 = 0
        var names: [String] = []
        var locatorCount = 0, runCount = 0
        while cursor != BlockStore.DirectoryPage.end {
            let page = store.listDirectory(namespaceID: ns, id: DirectoryID.namespaceRoot, from: cursor, limit: 64)
            let locators = page.items.compactMap { if case .block(let l) = $0.item { l } else { nil } }
            store.startReadingKeys(of: locators)
            let keys = locators.map { store.key(of: $0) }
            // The same names without the batch's start (each read on its own).
            #expect(keys == locators.map { store.key(of: $0) })
            names += keys.compactMap { $0 }
            locatorCount += locators.filter { $0.knownKey == nil }.count
            runCount += BlockStore.headerRuns(locators).count
            cursor = page.next
        }
        #expect(names.count == expected.count)
        #expect(Set(names) == expected)
        #expect(runCount < locatorCount, "adjacent headers were not joined: \(runCount) reads for \(locatorCount) headers")
    }

    @Test func manyThreadsPutAndReadAtOnce() throws {
        let store = try makeStore(MemoryStorageDevice(), segmentSize: 256 << 10, sync: .batch)
        try ensureNamespace(store)
        store.startBackgroundWork()
        let failures = Atomic<Int>(0)
        let threads = (0..<8).map { t in
            BackgroundThread(name: "t\(t)") {
                for i in 0..<60 {
                    let id = t * 1000 + i
                    let bytes = pattern(id, count: 1000 + (id % 7) * 3000)
                    do {
                        _ = try store.put("m", "b\(id)", bytes)
                        if try store.get("m", "b\(id)") != bytes { failures.add(1, ordering: .relaxed) }
                        if i > 0, try store.get("m", "b\(id - 1)") != pattern(id - 1, count: 1000 + ((id - 1) % 7) * 3000) {
                            failures.add(1, ordering: .relaxed)
                        }
                    } catch {
                        failures.add(1, ordering: .relaxed)
                    }
                }
            }
        }
        threads.forEach { $0.join() }
        #expect(failures.load(ordering: .relaxed) == 0)
        #expect(store.statistics().blocks == 480)
        try store.close()
    }
}

/// A device that counts directory syncs made while the calling thread holds the store's lock.
final class LockWatchingDevice: StorageDevice, @unchecked Sendable {
    let inner = MemoryStorageDevice()
    private let counts = Mutex<(underLock: Int, total: Int)>((0, 0))
    var syncsUnderLock: Int { counts.withLock { $0.underLock } }
    var syncs: Int { counts.withLock { $0.total } }

    var location: String { inner.location }
    func fileNames() throws -> [String] { try inner.fileNames() }
    func open(_ name: String, create: Bool) throws -> any DeviceFile { try inner.open(name, create: create) }
    func remove(_ name: String) throws { try inner.remove(name) }
    func rename(_ name: String, to newName: String) throws { try inner.rename(name, to: newName) }
    func replaceAtomically(_ name: String, bytes: [UInt8]) throws { try inner.replaceAtomically(name, bytes: bytes) }
    func readWhole(_ name: String, limit: Int) throws -> [UInt8]? { try inner.readWhole(name, limit: limit) }
    func synchronizeDirectory() throws {
        let held = LockLevel.storeState.isHeldByCurrentThread
        counts.withLock { $0.total += 1; if held { $0.underLock += 1 } }
        try inner.synchronizeDirectory()
    }
    func lockExclusively() throws -> AnyObject { try inner.lockExclusively() }
    func space() -> (total: UInt64, available: UInt64) { inner.space() }
}

@Suite struct SegmentRollTests {
    /// A roll switches to the segment file the previous roll's writer made outside the lock: no
    /// directory sync under the store's lock after the first roll, and a closed store leaves no spare.
    @Test func rollsUseASpareSegmentMadeOutsideTheLock() throws {
        let device = LockWatchingDevice()
        var store = try makeStore(device, segmentSize: 256 << 10, sync: .batch)
        try ensureNamespace(store)
        let baseline = device.syncsUnderLock  // the start's own (no writer yet)
        for i in 0..<200 { _ = try store.put("m", "k\(i)", pattern(i, count: 8192)) }
        let segments = segmentNames(device.inner).count
        #expect(segments >= 6)
        #expect(device.syncsUnderLock == baseline, "directory syncs under the store's lock: \(device.syncsUnderLock - baseline)")
        try store.close()
        // The spare was removed: every data segment has its summary, so the next start loads the snapshot.
        let names = Set(try device.fileNames())
        for name in names where name.hasSuffix(SegmentFormat.dataSuffix) {
            #expect(names.contains(String(name.dropLast(SegmentFormat.dataSuffix.count)) + SegmentFormat.summarySuffix), "\(name) has no summary")
        }
        store = try makeStore(device.inner, segmentSize: 256 << 10, sync: .batch)
        #expect(store.recovery.indexSnapshot == "loaded")
        for i in 0..<200 { #expect(try store.get("m", "k\(i)") == pattern(i, count: 8192)) }
        // A crash with a spare made: the next start removes the empty segment and every block reads back.
        for i in 200..<300 { _ = try store.put("m", "k\(i)", pattern(i, count: 8192)) }
        #expect(store.statistics().blocks == 300)
        store.abandonAsIfCrashed()
        store = try makeStore(device.inner, segmentSize: 256 << 10, sync: .batch)
        for i in 0..<300 { #expect(try store.get("m", "k\(i)") == pattern(i, count: 8192)) }
        _ = try store.put("m", "after", pattern(1, count: 8192))
        #expect(try store.get("m", "after") == pattern(1, count: 8192))
        try store.close()
    }
}
