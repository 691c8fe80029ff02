import Testing
import WarehouseCore
@testable import BlockStore

@Suite struct BlockIndexTests {
    static func entry(_ i: Int) -> IndexEntry {
        IndexEntry(segment: UInt32(i % 1000), summary: SummaryEntry(key: BlockKey(low: 0, high: 0), sequence: UInt64(i), page: UInt32(i),
                                                                    type: .block, namespaceID: 1, headerPages: 1), attributes: 0)
    }

    @Test func agreesWithADictionaryThroughInsertsRemovalsAndGrowth() {
        var index = BlockIndex()
        var reference: [BlockKey: IndexEntry] = [:]
        var slots: [BlockKey: UInt32] = [:]
        var rng = SeededGenerator(seed: 11)
        for step in 0..<60_000 {
            let key = BlockKey(low: rng.next() % 20_000, high: 7)
            if reference[key] == nil {
                let e = Self.entry(step)
                slots[key] = index.insert(key, e)
                reference[key] = e
            } else if rng.next() % 3 == 0 {
                var e = reference[key]!
                e.page += 1
                index[key] = e                 // an update keeps the slot
                reference[key] = e
                #expect(index.slot(of: key) == slots[key])
            } else {
                let removed = index.remove(key)
                #expect(removed?.slot == slots[key] && removed?.entry == reference[key])
                reference[key] = nil
                slots[key] = nil
            }
        }
        #expect(index.count == reference.count)
        var seen = 0
        for (k, e) in index {
            #expect(reference[k] == e)
            #expect(index.entry(atSlot: index.slot(of: k)!)?.entry == e)
            seen += 1
        }
        #expect(seen == reference.count)
        #expect(index[BlockKey(low: 1 << 40, high: 7)] == nil)
    }

    @Test func keysThatShareTheirLowBitsAreToldApart() {
        var index = BlockIndex()
        for h in 0..<100 { index.insert(BlockKey(low: 42, high: UInt64(h)), Self.entry(h)) }
        for h in 0..<100 { #expect(index[BlockKey(low: 42, high: UInt64(h))]?.sequence == UInt64(h)) }
        index.remove(BlockKey(low: 42, high: 50))
        #expect(index[BlockKey(low: 42, high: 50)] == nil && index[BlockKey(low: 42, high: 51)] != nil && index.count == 99)
    }

    /// Linear hashing: one bucket per block past the first 1024, split one at a time, and a bulk
    /// reserve to a count that is no power of two; every key stays findable through all of it.
    @Test func bucketsGrowOneAtATimeAndEveryKeyStaysFindable() {
        var index = BlockIndex()
        var rng = SeededGenerator(seed: 5)
        var keys: [BlockKey] = []
        for i in 0..<5_000 {
            let key = BlockKey(low: rng.next(), high: rng.next())
            index.insert(key, Self.entry(i))
            keys.append(key)
            #expect(index.shape.buckets == max(BlockIndex.minimumBuckets, index.count))
        }
        for (i, key) in keys.enumerated() { #expect(index[key]?.sequence == UInt64(i)) }
        index.reserveCapacity(12_345)
        #expect(index.shape.buckets == 12_345)
        for (i, key) in keys.enumerated() { #expect(index[key]?.sequence == UInt64(i)) }
        for i in 5_000..<20_000 {
            let key = BlockKey(low: rng.next(), high: rng.next())
            index.insert(key, Self.entry(i))
            keys.append(key)
        }
        #expect(index.shape.buckets == 20_000)
        for (i, key) in keys.enumerated() where i % 2 == 0 { index.remove(key) }
        for (i, key) in keys.enumerated() { #expect((index[key]?.sequence == UInt64(i)) == (i % 2 == 1)) }
        #expect(index[BlockKey(low: rng.next(), high: rng.next())] == nil)
        #expect(index.count == 10_000 && index.linksStayInside())
    }
}
