import Synchronization
import Testing
import WarehouseCore
import Platform
#if canImport(Glibc)
import Glibc
#endif
@testable import BlockStore

/// Namespace policies (docs/operations.md): quota, time to live, pinning; and removal by age.
@Suite struct NamespacePolicyTests {
    @Test func aWritePastTheQuotaFailsAndOtherNamespacesStillWrite() throws {
        let store = try makeStore(MemoryStorageDevice(), sync: .none)
        try ensureNamespace(store, "q")
        try ensureNamespace(store, "free")
        // The quota counts stored bytes: each record is its header page plus its payload in pages.
        func stored(_ payload: Int) -> UInt64 { UInt64(RecordFormat.recordSize(headerAreaSize: 4096, storedLength: payload)) }
        _ = try store.updateNamespace("q") { $0.quotaBytes = stored(60_000) + stored(40_000) }
        _ = try store.put("q", "a", pattern(1, count: 60_000))
        _ = try store.put("q", "b", pattern(2, count: 40_000))               // exactly at the quota
        do {
            _ = try store.put("q", "c", pattern(3, count: 1))
            Issue.record("a write past the quota was stored")
        } catch let e as StoreError {
            #expect(e.errnoCode == EDQUOT)
        }
        #expect(try store.put("q", "a", pattern(1, count: 60_000)) == .alreadyPresent)   // not counted twice
        _ = try store.put("free", "c", pattern(3, count: 200_000))
        try store.remove(namespace: "q", key: "a")
        _ = try store.put("q", "c", pattern(3, count: 60_000))                // room again after an unlink
        try store.close()
    }

    @Test func policiesSurviveARestart() throws {
        let device = MemoryStorageDevice()
        var store = try makeStore(device, sync: .always)
        try ensureNamespace(store, "p")
        try ensureNamespace(store, "plain")
        _ = try store.updateNamespace("p") {
            $0.quotaBytes = 5 << 30
            $0.ttlSeconds = 3600
            $0.pinned = true
        }
        try store.close()
        store = try makeStore(device, sync: .always)
        let p = try #require(store.namespace(named: "p"))
        #expect(p.quotaBytes == 5 << 30 && p.ttlSeconds == 3600 && p.pinned)
        let plain = try #require(store.namespace(named: "plain"))
        #expect(plain.quotaBytes == 0 && plain.ttlSeconds == 0 && !plain.pinned)
        try store.close()
    }

    @Test func sharePolicySurvivesARestartAndOlderLinesStayReadable() throws {
        let device = MemoryStorageDevice()
        var store = try makeStore(device, sync: .always)
        try ensureNamespace(store, "shared")
        try ensureNamespace(store, "private")
        try ensureNamespace(store, "plain")
        _ = try store.updateNamespace("shared") { $0.share = .sync; $0.quotaBytes = 1 << 20 }
        _ = try store.updateNamespace("private") { $0.share = .off }
        try store.close()
        let table = String(decoding: try #require(try device.readWhole(NamespaceTable.fileName)), as: UTF8.self)
        // Only namespaces that set a policy use the newer line; the others stay readable by older daemons.
        #expect(table.split(separator: "\n").filter { $0.hasPrefix("v3 ") }.count == 2)
        #expect(table.split(separator: "\n").contains { $0.hasPrefix("v1 ") && $0.contains(" plain ") })
        store = try makeStore(device, sync: .always)
        #expect(store.namespace(named: "shared")?.share == .sync)
        #expect(store.namespace(named: "shared")?.quotaBytes == 1 << 20)
        #expect(store.namespace(named: "private")?.share == .off)
        #expect(store.namespace(named: "plain")?.share == nil)
        _ = try store.updateNamespace("shared") { $0.share = nil }
        try store.close()
        store = try makeStore(device, sync: .always)
        #expect(store.namespace(named: "shared")?.share == nil)
        try store.close()
    }

    @Test func aMalformedShareFieldIsReportedNotGuessed() throws {
        do {
            _ = try NamespaceTable(decoding: Array("v3 1 kv 0 0 755 off 1 0 0 0 sometimes\n".utf8))
            Issue.record("a share policy 'sometimes' was accepted")
        } catch let e as StoreError {
            #expect("\(e)".contains("namespaces"))
        }
    }

    @Test func blocksPastTheirTimeToLiveReadAsMissingAndAreRemoved() throws {
        let store = try makeStore(MemoryStorageDevice(), sync: .none)
        try ensureNamespace(store, "t")
        try ensureNamespace(store, "keep")
        let now = wallClockNanoseconds()
        // Committed two hours ago, and just now; the TTL is one hour.
        _ = try pattern(1, count: 1000).withUnsafeBytes { try store.put(namespace: "t", key: "old", payload: $0, commitNanoseconds: now - 7_200_000_000_000) }
        _ = try store.put("t", "new", pattern(2, count: 1000))
        _ = try pattern(3, count: 1000).withUnsafeBytes { try store.put(namespace: "keep", key: "old", payload: $0, commitNanoseconds: now - 7_200_000_000_000) }
        #expect(store.contains(namespace: "t", key: "old"))
        _ = try store.updateNamespace("t") { $0.ttlSeconds = 3600 }
        #expect(!store.contains(namespace: "t", key: "old"))
        #expect(store.locate(namespace: "t", key: "old") == nil)
        #expect(store.attributes(namespace: "t", key: "old") == nil)
        #expect(store.contains(namespace: "t", key: "new"))
        #expect(store.expireBlocks() == 1)
        #expect(store.statistics().expiredBlocks == 1)
        #expect(store.usage(of: store.namespace(named: "t")!.id).blocks == 1)
        #expect(try store.get("keep", "old") == pattern(3, count: 1000))
        // The name is free again.
        _ = try store.put("t", "old", pattern(4, count: 1000))
        #expect(try store.get("t", "old") == pattern(4, count: 1000))
        try store.close()
    }

    @Test func removeBlocksByAgeTellsTheObserver() throws {
        let store = try makeStore(MemoryStorageDevice(), sync: .none)
        try ensureNamespace(store, "e")
        let now = wallClockNanoseconds()
        for i in 0..<5 {
            _ = try pattern(i, count: 500).withUnsafeBytes {
                try store.put(namespace: "e", key: "old\(i)", payload: $0, commitNanoseconds: now - 100_000_000_000)
            }
            _ = try store.put("e", "new\(i)", pattern(i + 10, count: 500))
        }
        let seen = Mutex<[String]>([])
        store.observeRemovals { ns, name in seen.withLock { $0.append(ns + "/" + name) } }
        let removed = try store.removeBlocks(namespace: "e", committedBefore: now / 1_000_000_000 - 50)
        #expect(removed.blocks == 5 && removed.bytes == 2500)
        #expect(seen.withLock { $0.sorted() } == (0..<5).map { "e/old\($0)" })
        #expect((0..<5).allSatisfy { store.contains(namespace: "e", key: "new\($0)") && !store.contains(namespace: "e", key: "old\($0)") })
        #expect(try store.removeBlocks(namespace: "e").blocks == 5)
        #expect(throws: StoreError.notFound) { try store.removeBlocks(namespace: "nope") }
        try store.close()
    }

    @Test func pinnedBlocksSurviveEvictionAndAFullyPinnedStoreSaysNoSpace() throws {
        let store = try BlockStore(device: MemoryStorageDevice(), configuration: StoreConfiguration(
            capacity: 4 << 20, segmentSize: 256 << 10, sync: .none, eviction: .oldest, backgroundCompaction: false))
        try ensureNamespace(store, "gold")
        try ensureNamespace(store, "bulk")
        _ = try store.updateNamespace("gold") { $0.pinned = true }
        for i in 0..<20 { _ = try store.put("gold", "g\(i)", pattern(i, count: 50_000)) }
        // Ten times the capacity through the other namespace: it evicts only its own blocks.
        for i in 0..<800 { _ = try store.put("bulk", "b\(i)", pattern(1000 + i, count: 50_000)) }
        store.evict(downTo: store.statistics().usedBytes / 2, reinsert: true)
        for i in 0..<20 { #expect(try store.get("gold", "g\(i)") == pattern(i, count: 50_000)) }
        #expect(!store.contains(namespace: "bulk", key: "b0"))
        // When pinned blocks fill the store, eviction ends (no loop) and a new block gets no space.
        var failed = false
        for i in 0..<200 {
            do { _ = try store.put("gold", "more\(i)", pattern(5000 + i, count: 50_000)) } catch let e as StoreError {
                #expect(e.errnoCode == ENOSPC)
                failed = true
                break
            }
        }
        #expect(failed)
        for i in 0..<20 { #expect(try store.get("gold", "g\(i)") == pattern(i, count: 50_000)) }
        try store.close()
    }

    @Test func aRecordLargerThanTheCapacityFailsWithoutEvictingAnything() throws {
        let store = try BlockStore(device: MemoryStorageDevice(), configuration: StoreConfiguration(
            capacity: 2 << 20, segmentSize: 256 << 10, maxBlockSize: 8 << 20, sync: .none, backgroundCompaction: false))
        try ensureNamespace(store)
        for i in 0..<10 { _ = try store.put("m", "b\(i)", pattern(i, count: 50_000)) }
        #expect(storeErrno { _ = try store.put("m", "big", pattern(99, count: 3 << 20)) } == ENOSPC)
        #expect(store.statistics().evictedSegments == 0)
        for i in 0..<10 { #expect(try store.get("m", "b\(i)") == pattern(i, count: 50_000)) }
        try store.close()
    }
}
