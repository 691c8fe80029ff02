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
