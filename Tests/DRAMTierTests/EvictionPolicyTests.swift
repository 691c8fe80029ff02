import Testing
import WarehouseCore
@testable import DRAMTier

@Suite struct EvictionPolicyTests {
    @Test func blocksReadOnceLeaveWithoutPushingOutHotOnes() {
        var p = S3FIFOPlacement<Int>(capacity: 100, smallShare: 0.1)
        // A hot working set of 50 units, read again and again, then a scan of 500 one-time blocks.
        for round in 0..<3 { for k in 0..<50 { _ = p.access(k, size: 1); if round > 0 { p.recordHit(k) } } }
        for k in 1000..<1500 { _ = p.access(k, size: 1) }
        let hot = (0..<50).filter { p.item($0) != nil }.count
        #expect(hot == 50, "a scan of blocks read once evicted \(50 - hot) hot blocks")
    }

    @Test func lruLosesTheHotSetToAScan() {
        var lru = LRUResidency<Int>(capacity: 100)
        for _ in 0..<3 { for k in 0..<50 { _ = lru.access(k, size: 1) } }
        for k in 1000..<1500 { _ = lru.access(k, size: 1) }
        let hits = (0..<50).filter { lru.access($0, size: 1) }.count
        #expect(hits == 0)
    }

    @Test func placementsNeverOverlapAndStayInBounds() {
        var p = S3FIFOPlacement<Int>(capacity: 1 << 20, alignment: 4096)
        var rng = SeededGenerator(seed: 42)
        for k in 0..<5000 {
            let length = Int.random(in: 1...(96 << 10), using: &rng)
            _ = p.insert(k, length: length)
            if Bool.random(using: &rng), let victim = (0..<k).randomElement(using: &rng) { p.recordHit(victim) }
            let spans = p.items.values.map { ($0.offset, $0.offset + $0.size) }.sorted { $0.0 < $1.0 }
            for s in spans { #expect(s.0 >= 0 && s.1 <= 1 << 20) }
            for (a, b) in zip(spans, spans.dropFirst()) { #expect(a.1 <= b.0, "overlap at block \(k)") }
        }
    }

    @Test func everyEvictionAndMoveIsReportedBeforeTheSpaceIsReused() {
        var p = S3FIFOPlacement<Int>(capacity: 64, smallShare: 0.25)
        var live: [Int: (Int, Int)] = [:]  // key -> (offset, size) as the handler saw them
        var rng = SeededGenerator(seed: 7)
        for k in 0..<400 {
            if k % 3 == 0, let hot = live.keys.sorted().randomElement(using: &rng) { p.recordHit(hot) }
            let item = p.insert(k, length: 1 + k % 5, handle: { event in
                switch event {
                case .evicted(let key, _): live[key] = nil
                case .moved(let key, _, let to): live[key] = (to.offset, to.size)
                }
            })
            if let item {
                for (other, span) in live {
                    #expect(span.0 + span.1 <= item.offset || item.offset + item.size <= span.0, "\(k) overlaps live \(other)")
                }
                live[k] = (item.offset, item.size)
            }
            #expect(Set(live.keys) == Set(p.items.keys))
        }
    }

    @Test func pinnedBlocksAreNeitherEvictedNorMoved() {
        var p = S3FIFOPlacement<Int>(capacity: 10, smallShare: 0.5)
        for k in 0..<5 { _ = p.insert(k, length: 1) }
        let before = p.item(0)!
        #expect(p.insert(99, length: 1, isPinned: { $0 == 0 }) == nil)
        #expect(p.item(0)?.offset == before.offset)
    }
}
