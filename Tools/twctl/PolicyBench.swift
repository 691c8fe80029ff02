import ArgumentParser
import DRAMTier
import Foundation

/// `twctl bench dram-policy TRACE`: hit ratios of the DRAM tier's S3-FIFO placement (the code the daemon
/// runs) against LRU and Belady's optimum on a trace in the Mooncake format, at several capacities.
struct PolicyBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "dram-policy",
                                                    abstract: "Compare the DRAM tier's S3-FIFO with LRU and Belady on a trace.")

    @Argument(help: "A trace in the Mooncake format (JSON lines with hash_ids).") var trace: String
    @Option(help: "Capacities as percentages of the trace's unique blocks.") var capacities = "5,10,25,50"
    @Flag(help: "Print one JSON object.") var json = false
    @Option(help: "S3-FIFO's small-queue share (default: the daemon's).") var smallShare = S3FIFOPlacement<Int>.defaultSmallShare
    @Option(help: "S3-FIFO's ghost entries per resident block (default: the daemon's).") var ghostFactor = S3FIFOPlacement<Int>.defaultGhostFactor

    func run() throws {
        let references = try Self.loadReferences(trace)
        let unique = Set(references).count
        let ideal = references.isEmpty ? 0 : 1 - Double(unique) / Double(references.count)
        var rows: [[String: Any]] = []
        if !json {
            print("$ \(CommandLine.arguments.joined(separator: " "))")
            print("\(references.count) block references, \(unique) unique blocks, ideal (infinite cache) hit ratio \(String(format: "%.3f", ideal))\n")
            print("capacity      blocks    LRU     S3-FIFO  Belady   S3-FIFO/Belady")
        }
        for percent in capacities.split(separator: ",").compactMap({ Double($0) }) {
            let blocks = max(1, Int(Double(unique) * percent / 100))
            var lru = LRUResidency<Int>(capacity: blocks)
            var s3 = S3FIFOPlacement<Int>(capacity: blocks, smallShare: smallShare, ghostFactor: ghostFactor)
            let lruRatio = Self.hitRatio(&lru, references)
            let s3Ratio = Self.hitRatio(&s3, references)
            let belady = Self.beladyHitRatio(references, capacity: blocks)
            rows.append(["capacity_percent": percent, "capacity_blocks": blocks, "lru": lruRatio, "s3fifo": s3Ratio, "belady": belady])
            if !json {
                let f = { (v: Double) in String(format: "%.3f", v) }
                print("\(String(format: "%5.1f%%", percent))   \(String(format: "%9d", blocks))    \(f(lruRatio))   \(f(s3Ratio))    \(f(belady))    \(f(belady > 0 ? s3Ratio / belady : 0))")
            }
        }
        if json {
            printJSON(["trace": trace, "references": references.count, "unique_blocks": unique, "ideal_hit_ratio": ideal, "rows": rows])
        }
    }

    /// Every block id of every request, in arrival order.
    static func loadReferences(_ path: String) throws -> [Int] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw failure("cannot read trace \(path)") }
        var out: [Int] = []
        for (n, line) in text.split(separator: "\n").enumerated() where !line.isEmpty {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let ids = object["hash_ids"] as? [Any] else {
                throw failure("\(path) line \(n + 1): not a Mooncake trace record (needs hash_ids)")
            }
            out.append(contentsOf: ids.compactMap { ($0 as? NSNumber)?.intValue })
        }
        return out
    }

    static func hitRatio<P: ResidencyPolicy>(_ policy: inout P, _ references: [Int]) -> Double where P.Key == Int {
        var hits = 0
        for r in references where policy.access(r, size: 1) { hits += 1 }
        return references.isEmpty ? 0 : Double(hits) / Double(references.count)
    }

    /// Belady's MIN with bypass: evict (or do not admit) the block whose next use is farthest away.
    static func beladyHitRatio(_ references: [Int], capacity: Int) -> Double {
        var next = [Int](repeating: Int.max, count: references.count)
        var seen: [Int: Int] = [:]
        for i in stride(from: references.count - 1, through: 0, by: -1) {
            next[i] = seen[references[i]] ?? Int.max
            seen[references[i]] = i
        }
        var resident: [Int: Int] = [:]  // block -> its next use
        var heap = MaxHeap()
        var hits = 0
        for (i, r) in references.enumerated() {
            if resident[r] != nil {
                hits += 1
                resident[r] = next[i]
                heap.push((next[i], r))
                continue
            }
            if resident.count >= capacity {
                // Farthest next use among residents (skipping stale heap entries).
                while let top = heap.peek(), resident[top.1] != top.0 { _ = heap.pop() }
                guard let top = heap.peek() else { continue }
                if top.0 <= next[i] { continue }  // the new block is needed later than all: bypass
                _ = heap.pop()
                resident[top.1] = nil
            }
            resident[r] = next[i]
            heap.push((next[i], r))
        }
        return references.isEmpty ? 0 : Double(hits) / Double(references.count)
    }

    struct MaxHeap {
        var items: [(Int, Int)] = []
        func peek() -> (Int, Int)? { items.first }
        mutating func push(_ x: (Int, Int)) {
            items.append(x)
            var i = items.count - 1
            while i > 0, items[(i - 1) / 2].0 < items[i].0 { items.swapAt(i, (i - 1) / 2); i = (i - 1) / 2 }
        }
        mutating func pop() -> (Int, Int)? {
            guard !items.isEmpty else { return nil }
            items.swapAt(0, items.count - 1)
            let top = items.removeLast()
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count, items[l].0 > items[m].0 { m = l }
                if r < items.count, items[r].0 > items[m].0 { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
            return top
        }
    }
}
