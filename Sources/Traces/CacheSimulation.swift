import BlockStore
import DRAMTier
import HeapModule

/// Offline figures of a trace: the optimum a cache of a given size could reach.
public enum OfflineBounds {
    /// Belady's MIN with bypass (evict, or do not admit, the block whose next use is farthest away):
    /// the best hit ratio any cache of `capacity` blocks can have on these references.
    public static func beladyHitRatio(_ references: [Int], capacity: Int) -> Double {
        guard !references.isEmpty, capacity > 0 else { return 0 }
        var next = [Int](repeating: Int.max, count: references.count)
        var seen: [Int: Int] = [:]
        for i in stride(from: references.count - 1, through: 0, by: -1) {
            next[i] = seen[references[i]] ?? Int.max
            seen[references[i]] = i
        }
        var resident: [Int: Int] = [:]  // block -> its next use
        var heap = Heap<NextUse>()
        var hits = 0
        for (i, r) in references.enumerated() {
            if resident[r] != nil {
                hits += 1
                resident[r] = next[i]
                heap.insert(NextUse(next: next[i], block: r))
                continue
            }
            if resident.count >= capacity {
                // Farthest next use among residents (skipping stale heap entries).
                while let top = heap.max, resident[top.block] != top.next { _ = heap.popMax() }
                guard let top = heap.max else { continue }
                if top.next <= next[i] { continue }  // the new block is needed later than all: bypass
                _ = heap.popMax()
                resident[top.block] = nil
            }
            resident[r] = next[i]
            heap.insert(NextUse(next: next[i], block: r))
        }
        return Double(hits) / Double(references.count)
    }

    /// A resident block and its next use, ordered by the next use (the heap gives the farthest first).
    struct NextUse: Comparable {
        var next: Int
        var block: Int
        static func < (a: NextUse, b: NextUse) -> Bool { a.next < b.next }
    }
}

/// Hit ratios of one configuration, from `WarehouseSimulation`.
public struct SimulationResult: Sendable {
    public var requests = 0
    public var blocksReferenced = 0
    public var dramHits = 0
    public var nvmeHits = 0
    /// Tokens whose prefill a hit saved.
    public var savedTokens = 0
    public var hits: Int { dramHits + nvmeHits }
    public var prefixHitRatio: Double { blocksReferenced == 0 ? 0 : Double(hits) / Double(blocksReferenced) }
    public var dramHitRatio: Double { blocksReferenced == 0 ? 0 : Double(dramHits) / Double(blocksReferenced) }
    public var dramHitShare: Double { hits == 0 ? 0 : Double(dramHits) / Double(hits) }
}

/// Replays a trace against the daemon's own policy code, without a mount: the DRAM tier's
/// `S3FIFOPlacement` (one unit per block) and a real `BlockStore` on an in-memory device with the
/// NVMe capacity scaled to its small records, so segment eviction and reinsertion are the daemon's.
/// Requests follow prefix semantics as `twctl replay` does: leading blocks that exist are read, the
/// first missing block and all after it are written (and admitted to DRAM, as the daemon does). The
/// prefetcher's chain and learned signals are not simulated: without hints the figures are a floor.
public struct WarehouseSimulation {
    public var dramBlocks: Int
    /// Blocks the NVMe store holds (nil: unbounded).
    public var nvmeBlocks: Int?
    /// Blocks per segment on the real device (the daemon's default segment size over the block size).
    public var blocksPerSegment: Int
    /// Hints on: before reading, every block of the request that exists is loaded into DRAM as the
    /// prefetcher does with an engine's hints (an expected block).
    public var hints: Bool
    /// Written blocks enter DRAM as the daemon's `--dram-admit-writes on` does.
    public var admitWrites: Bool

    public init(dramBlocks: Int, nvmeBlocks: Int?, blocksPerSegment: Int = 64, hints: Bool, admitWrites: Bool = true) {
        self.dramBlocks = dramBlocks
        self.nvmeBlocks = nvmeBlocks
        self.blocksPerSegment = blocksPerSegment
        self.hints = hints
        self.admitWrites = admitWrites
    }

    static let namespace = "sim"
    static func name(_ id: Int) -> String {
        let hex = String(UInt64(bitPattern: Int64(id)), radix: 16)
        return String(repeating: "0", count: max(0, 16 - hex.count)) + hex
    }

    public func run(_ trace: Trace) throws -> SimulationResult {
        var dram = S3FIFOPlacement<Int>(capacity: max(1, dramBlocks))
        // One record per block: a 4 KiB header page and a 4 KiB payload page.
        let payload = [UInt8](repeating: 7, count: 1)
        let recordBytes = UInt64(RecordFormat.recordSize(
            headerAreaSize: RecordFormat.headerAreaSize(namespaceLength: Self.namespace.utf8.count, keyLength: 16, metadataLength: 0),
            storedLength: 1))
        let segmentBytes = recordBytes * UInt64(max(4, blocksPerSegment)) + 4096
        // At least two segments: the active one cannot be evicted.
        let capacity = nvmeBlocks.map { max(UInt64($0) * recordBytes, 2 * segmentBytes) + segmentBytes } ?? (1 << 50)
        let configuration = StoreConfiguration(capacity: capacity, segmentSize: segmentBytes, maxBlockSize: 4096, sync: .none,
                                               backgroundCompaction: false)
        let store = try BlockStore(device: MemoryStorageDevice(), configuration: configuration)
        defer { try? store.close() }
        _ = try store.createNamespace(Self.namespace, owner: 0, group: 0, mode: 0o755)
        var result = SimulationResult()
        let tokensPerBlock = Trace.tokensPerBlock
        for (n, request) in trace.requests.enumerated() {
            result.requests += 1
            result.blocksReferenced += request.hashIDs.count
            if hints {
                for id in request.hashIDs {
                    guard store.contains(namespace: Self.namespace, key: Self.name(id)) else { break }
                    if dram.item(id) == nil { _ = dram.insert(id, length: 1, expected: true) }
                }
            }
            var missing = request.hashIDs.count
            for (i, id) in request.hashIDs.enumerated() {
                if dram.item(id) != nil {
                    dram.recordHit(id)
                    result.dramHits += 1
                } else if let located = store.locate(namespace: Self.namespace, key: Self.name(id)) {
                    _ = try store.read(located)
                    result.nvmeHits += 1
                    _ = dram.insert(id, length: 1)
                } else {
                    missing = i
                    break
                }
                result.savedTokens += min(tokensPerBlock, max(0, request.inputLength - i * tokensPerBlock))
            }
            for id in request.hashIDs[missing...] {
                do {
                    _ = try payload.withUnsafeBytes { try store.put(namespace: Self.namespace, key: Self.name(id), payload: $0) }
                } catch StoreError.noSpace {
                    // As the daemon would answer ENOSPC: the engine keeps its computed block, the warehouse does not.
                    continue
                }
                if admitWrites && dram.item(id) == nil { _ = dram.insert(id, length: 1) }
            }
            // The daemon's maintenance thread evicts between watermarks in the background.
            if n % 16 == 0 { store.maintainOnce() }
        }
        return result
    }
}
