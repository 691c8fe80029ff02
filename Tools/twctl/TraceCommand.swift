import ArgumentParser
import Foundation
import Traces

/// `twctl trace generate|stats`: synthetic traces in the Mooncake format, and a trace's figures.
struct TraceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "trace", abstract: "Generate synthetic traces and describe traces.",
                                                    subcommands: [Generate.self, Stats.self])

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a synthetic trace (JSON lines in the Mooncake format).")
        @Argument(help: "agentic, chat or rag.") var workload: SyntheticWorkload
        @Option(help: "Requests.") var requests = 2000
        @Option(help: "Seed.") var seed: UInt64 = 1
        @Option(help: "Mean arrivals per second.") var rate = 4.0

        func run() throws {
            let trace = SyntheticTraceGenerator(workload: workload, requests: requests, seed: seed, requestsPerSecond: rate).generate()
            FileHandle.standardOutput.write(Data(trace.jsonLines().utf8))
        }
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Requests, block references, unique blocks, ideal and Belady hit ratios.")
        @Argument(help: "A trace file.") var trace: String
        @Option(help: "Capacities for Belady's ratio, as percentages of the unique blocks.") var capacities = "5,10,25,50"
        @Flag(help: "Print one JSON object.") var json = false

        func run() throws {
            let t: Trace
            do { t = try Trace.load(path: trace) } catch { throw failure("\(error)") }
            let refs = t.references
            let unique = t.uniqueBlocks
            var belady: [String: Double] = [:]
            for p in capacities.split(separator: ",").compactMap({ Double($0) }) {
                belady[String(format: "%g", p)] = OfflineBounds.beladyHitRatio(refs, capacity: max(1, Int(Double(unique) * p / 100)))
            }
            let seconds = ((t.requests.last?.timestampMilliseconds ?? 0) - (t.requests.first?.timestampMilliseconds ?? 0)) / 1000
            if json {
                printJSON(["requests": t.requests.count, "blocks_referenced": refs.count, "unique_blocks": unique,
                           "ideal_hit_ratio": t.idealHitRatio, "seconds": seconds, "belady_hit_ratio_by_capacity_percent": belady])
            } else {
                print("\(t.requests.count) requests over \(String(format: "%.0f", seconds)) s, \(refs.count) block references, \(unique) unique blocks")
                print("ideal (infinite cache) hit ratio \(String(format: "%.3f", t.idealHitRatio))")
                for (k, v) in belady.sorted(by: { Double($0.key)! < Double($1.key)! }) {
                    print("Belady at \(k)% of unique blocks: \(String(format: "%.3f", v))")
                }
            }
        }
    }
}
