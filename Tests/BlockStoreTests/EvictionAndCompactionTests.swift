import Testing
#if canImport(Glibc)
import Glibc
#endif
import WarehouseCore
import Platform
@testable import BlockStore

@Suite struct EvictionAndCompactionTests {
    @Test(arguments: [EvictionOrder.oldest, .coldest])
    func evictionKeepsUsedBytesUnderTheCapacity(order: EvictionOrder) throws {
        let capacity: UInt64 = 2 << 20
        let store = try BlockStore(device: MemoryStorageDevice(), configuration: StoreConfiguration(
            capacity: capacity, segmentSize: 256 << 10, sync: .none, eviction: order, backgroundCompaction: false))
        try ensureNamespace(store)
        for i in 0..<300 {
            _ = try store.put("m", "b\(i)", pattern(i, count: 20_000))
            #expect(store.statistics().usedBytes <= capacity)
            if i % 3 == 0 { _ = try? store.get("m", "b\(i)") }
        }
        store.maintainOnce()
        let stats = store.statistics()
        #expect(stats.usedBytes <= capacity)
        #expect(stats.evictedSegments > 0)
        // Whatever is still indexed reads back exactly; the newest block is always there.
        var present = 0
        for i in 0..<300 {
            if let got = try? store.get("m", "b\(i)") {
                #expect(got == pattern(i, count: 20_000))
                present += 1
            }
        }
        #expect(present == stats.blocks)
        #expect(try store.get("m", "b299") == pattern(299, count: 20_000))
        try store.close()
    }

    @Test func evictionReinsertsBlocksThatWereRead() throws {
        let store = try BlockStore(device: MemoryStorageDevice(), configuration: StoreConfiguration(
            capacity: 64 << 20, segmentSize: 256 << 10, sync: .none, eviction: .oldest, reinsertionShare: 0.5, backgroundCompaction: false))
        try ensureNamespace(store)
        for i in 0..<40 { _ = try store.put("m", "b\(i)", pattern(i, count: 20_000)) }
        _ = try store.get("m", "b0")
        store.evict(downTo: store.statistics().usedBytes - 1, reinsert: true)
        #expect(try store.get("m", "b0") == pattern(0, count: 20_000))
        #expect(!store.contains(namespace: "m", key: "b1"))
        #expect(store.statistics().reinsertedBlocks == 1)
        try store.close()
    }

    @Test func storeThatCannotEvictAnythingReportsNoSpace() throws {
        let store = try BlockStore(device: MemoryStorageDevice(), configuration: StoreConfiguration(
            capacity: 1 << 20, segmentSize: 16 << 20, sync: .none, backgroundCompaction: false))
        try ensureNamespace(store)
        #expect(storeErrno { for i in 0..<100 { _ = try store.put("m", "b\(i)", pattern(i, count: 100_000)) } } == ENOSPC)
        // Reads keep working.
        #expect(try store.get("m", "b0") == pattern(0, count: 100_000))
        try store.close()
    }

    @Test func compactionKeepsEveryLiveBlockAndGivesBackDeadBytes() throws {
        let device = MemoryStorageDevice()
        var store = try makeStore(device, segmentSize: 256 << 10, sync: .none)
        try ensureNamespace(store)
        for i in 0..<100 { _ = try store.put("m", "b\(i)", pattern(i, count: 30_000)) }
        for i in 0..<100 where i % 4 != 0 { try store.remove(namespace: "m", key: "b\(i)") }
        store.flushOnce()
        let before = store.statistics()
        let report = try store.compact(threshold: 0.3)
        let after = store.statistics()
        #expect(report.segmentsCompacted > 0)
        #expect(report.bytesReclaimed > 0)
        #expect(after.usedBytes < before.usedBytes)
        #expect(after.deadBytes < before.deadBytes)
        for i in 0..<100 {
            if i % 4 == 0 { #expect(try store.get("m", "b\(i)") == pattern(i, count: 30_000)) } else { #expect(!store.contains(namespace: "m", key: "b\(i)")) }
        }
        // After a restart, deleted blocks stay deleted and live ones are intact.
        try store.close()
        store = try makeStore(device, segmentSize: 256 << 10)
        for i in 0..<100 {
            if i % 4 == 0 { #expect(try store.get("m", "b\(i)") == pattern(i, count: 30_000)) } else { #expect(!store.contains(namespace: "m", key: "b\(i)")) }
        }
        try store.close()
    }
}
