@testable import BlockStore
import Testing
import WarehouseCore

/// `blocksFollowing`: the blocks recorded after a block, as the prefetcher reads ahead along the log.
@Suite struct LogOrderTests {
    /// 40 blocks of 100 KiB in 1 MiB segments (about ten a segment), written in order.
    func writeRun(_ store: BlockStore) throws {
        try ensureNamespace(store)
        try ensureNamespace(store, "other")
        for i in 0..<40 {
            #expect(try store.put("m", "run-\(i)", pattern(i, count: 100_000)).isStored)
            if i % 7 == 3 { _ = try store.put("other", "x-\(i)", pattern(1000 + i, count: 5000)) }
        }
    }

    func keys(_ blocks: [LocatedBlock]) -> [BlockKey] { blocks.map(\.blockKey) }
    func runKeys(_ range: Range<Int>) -> [BlockKey] { range.map { BlockKey(namespace: "m", key: "run-\($0)") } }

    @Test func followsTheWriteOrderAcrossSegmentsBeforeAndAfterARestart() throws {
        let device = MemoryStorageDevice()
        var store = try makeStore(device)
        try writeRun(store)
        let first = try #require(store.locate(namespace: "m", key: "run-0"))
        let namespaceID = try #require(store.namespace(named: "m")?.id)
        // Open segment and sealed ones (their summaries are still in memory or already written).
        #expect(keys(store.blocksFollowing(first.logPosition, namespaceID: namespaceID, count: 25)) == runKeys(1..<26))
        try store.close()

        store = try makeStore(device)
        let again = try #require(store.locate(namespace: "m", key: "run-0"))
        // After a restart the sealed segments' records come from their summary files.
        let found = store.blocksFollowing(again.logPosition, namespaceID: namespaceID, count: 39)
        #expect(keys(found) == runKeys(1..<40))
        // Found without a name, the blocks read back verified against their key.
        for (i, block) in found.enumerated() where i % 9 == 0 {
            #expect(block.key.isEmpty)
            #expect(try store.read(block).array == pattern(i + 1, count: 100_000))
        }
        let last = try #require(store.locate(namespace: "m", key: "run-39"))
        #expect(store.blocksFollowing(last.logPosition, namespaceID: namespaceID, count: 8).isEmpty)
        try store.close()
    }

    @Test func skipsDeletedAndReplacedBlocksAndOtherNamespaces() throws {
        let store = try makeStore(MemoryStorageDevice())
        try writeRun(store)
        try store.remove(namespace: "m", key: "run-2")
        try store.remove(namespace: "m", key: "run-3")
        #expect(try store.put("m", "run-3", pattern(77, count: 4096)).isStored)  // now at the log's end
        let first = try #require(store.locate(namespace: "m", key: "run-0"))
        let namespaceID = try #require(store.namespace(named: "m")?.id)
        let found = keys(store.blocksFollowing(first.logPosition, namespaceID: namespaceID, count: 5))
        #expect(found == runKeys(1..<2) + runKeys(4..<8))
        // The whole rest of the log: run-3's new record comes last.
        #expect(keys(store.blocksFollowing(first.logPosition, namespaceID: namespaceID, count: 100)).last
                == BlockKey(namespace: "m", key: "run-3"))
        try store.close()
    }

    @Test func aRecordThatDoesNotHashToTheKeyIsRefused() throws {
        let store = try makeStore(MemoryStorageDevice())
        try writeRun(store)
        let located = try #require(store.locate(namespace: "m", key: "run-5"))
        let nameless = LocatedBlock(entry: located.entry, segment: located.segment, namespace: "m", key: "",
                                    blockKey: BlockKey(namespace: "m", key: "run-6"))
        #expect(storeErrno { _ = try store.read(nameless) } == StoreError.corruption("").errnoCode)
        let right = LocatedBlock(entry: located.entry, segment: located.segment, namespace: "m", key: "", blockKey: located.blockKey)
        #expect(try store.read(right).array == pattern(5, count: 100_000))
        try store.close()
    }
}
