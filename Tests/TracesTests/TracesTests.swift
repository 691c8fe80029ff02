import Foundation
import Testing
import WarehouseCore
@testable import Traces

@Test func parsesMooncakeLinesAndReportsBadOnes() throws {
    let text = """
    {"timestamp": 0, "input_length": 1024, "output_length": 10, "hash_ids": [1, 2]}

    {"timestamp": 5, "input_length": 1536, "output_length": 3, "hash_ids": [1, 2, 3]}
    """
    let trace = try Trace.parse(Data(text.utf8))
    #expect(trace.requests.count == 2)
    #expect(trace.references == [1, 2, 1, 2, 3])
    #expect(trace.uniqueBlocks == 3)
    #expect(abs(trace.idealHitRatio - 0.4) < 1e-9)
    #expect(throws: TraceError.self) { try Trace.parse(Data("{\"timestamp\": 1}\n".utf8)) }
    #expect(throws: TraceError.self) { try Trace.parse(Data("{\"hash_ids\": [\"x\"]}\n".utf8)) }
    // Written and read back unchanged.
    #expect(try Trace.parse(Data(trace.jsonLines().utf8)).requests == trace.requests)
}

@Test func syntheticTracesAreDeterministicPrefixChains() {
    for workload in SyntheticWorkload.allCases {
        let a = SyntheticTraceGenerator(workload: workload, requests: 300, seed: 7).generate()
        let b = SyntheticTraceGenerator(workload: workload, requests: 300, seed: 7).generate()
        let c = SyntheticTraceGenerator(workload: workload, requests: 300, seed: 8).generate()
        #expect(a.requests == b.requests)
        #expect(a.requests != c.requests)
        #expect(a.requests.count == 300)
        // Prefix hashes: an id always has the same parent (the id before it in any request).
        var parent: [Int: Int] = [:]
        for r in a.requests {
            #expect(!r.hashIDs.isEmpty)
            #expect((r.hashIDs.count - 1) * Trace.tokensPerBlock < r.inputLength && r.inputLength <= r.hashIDs.count * Trace.tokensPerBlock)
            for (i, id) in r.hashIDs.enumerated() {
                let p = i == 0 ? -1 : r.hashIDs[i - 1]
                if let known = parent[id] { #expect(known == p) } else { parent[id] = p }
            }
        }
        // Timestamps arrive in order, and there is reuse to find.
        #expect(zip(a.requests, a.requests.dropFirst()).allSatisfy { $0.timestampMilliseconds <= $1.timestampMilliseconds })
        #expect(a.idealHitRatio > 0.2)
    }
}

@Test func beladyIsAnUpperBoundAndExactOnASmallCase() {
    // Capacity 2 on 1 2 3 1 2 3: MIN keeps 1 and 2 and bypasses 3 (needed last), so 1 and 2 hit once each.
    #expect(abs(OfflineBounds.beladyHitRatio([1, 2, 3, 1, 2, 3], capacity: 2) - 2.0 / 6.0) < 1e-9)
    let trace = SyntheticTraceGenerator(workload: .chat, requests: 400, seed: 3).generate()
    let refs = trace.references
    for capacity in [10, 100, 1000] {
        let belady = OfflineBounds.beladyHitRatio(refs, capacity: capacity)
        let sim = try! WarehouseSimulation(dramBlocks: capacity, nvmeBlocks: 0, hints: false).run(trace)
        // DRAM alone (NVMe evicting everything) can never beat the offline optimum.
        #expect(sim.dramHitRatio <= belady + 1e-9)
        #expect(belady <= trace.idealHitRatio + 1e-9)
    }
}

@Test func simulationWithRoomForEverythingReachesTheIdeal() throws {
    let trace = SyntheticTraceGenerator(workload: .agentic, requests: 300, seed: 5).generate()
    let r = try WarehouseSimulation(dramBlocks: 1_000_000, nvmeBlocks: nil, hints: false).run(trace)
    #expect(r.blocksReferenced == trace.references.count)
    #expect(abs(r.prefixHitRatio - trace.idealHitRatio) < 1e-9)
    #expect(r.dramHitShare > 0.99)
    // A small NVMe loses hits; hints move hits from NVMe to DRAM but do not create any.
    let small = try WarehouseSimulation(dramBlocks: 50, nvmeBlocks: 200, blocksPerSegment: 16, hints: false).run(trace)
    let hinted = try WarehouseSimulation(dramBlocks: 50, nvmeBlocks: 200, blocksPerSegment: 16, hints: true).run(trace)
    #expect(small.prefixHitRatio < r.prefixHitRatio)
    #expect(hinted.dramHitShare >= small.dramHitShare)
}
