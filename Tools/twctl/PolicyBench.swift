import ArgumentParser
import DRAMTier
import Foundation
import Traces

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

    static func loadReferences(_ path: String) throws -> [Int] {
        do { return try Trace.load(path: path).references } catch { throw failure("\(error)") }
    }

    static func hitRatio<P: ResidencyPolicy>(_ policy: inout P, _ references: [Int]) -> Double where P.Key == Int {
        var hits = 0
        for r in references where policy.access(r, size: 1) { hits += 1 }
        return references.isEmpty ? 0 : Double(hits) / Double(references.count)
    }

    static func beladyHitRatio(_ references: [Int], capacity: Int) -> Double {
        OfflineBounds.beladyHitRatio(references, capacity: capacity)
    }
}
