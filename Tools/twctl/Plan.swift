import ArgumentParser
import BlockStore
import CommandLineTypes
import Foundation
import Traces

/// `twctl plan TRACE --kv-bytes-per-token N --prefill-tokens-per-second R`: sizes a node. Simulates the
/// trace over a grid of DRAM and NVMe capacities with the daemon's own policy code
/// (`WarehouseSimulation`: the tier's S3-FIFO placement and a real `BlockStore` on an in-memory device)
/// and prints hit ratios and the prefill GPU-seconds the hits save per hour of traffic; writes an SVG plot.
struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Size a node: hit ratio and prefill GPU-seconds saved per hour over DRAM and NVMe capacities.")

    @Argument(help: "A trace in the Mooncake format; omit with --synthetic.") var trace: String?
    @Option(help: "Generate a trace instead: agentic, chat or rag.") var synthetic: SyntheticWorkload?
    @Option(help: "Requests of a synthetic trace.") var requests = 4000
    @Option(help: "Seed of a synthetic trace.") var seed: UInt64 = 1
    @Option(help: "KV-cache bytes per token of the model (all layers; e.g. 131072 for an 8B model in fp16).") var kvBytesPerToken: Int
    @Option(help: "Prefill throughput of one GPU in tokens per second.") var prefillTokensPerSecond: Double
    @Option(help: "DRAM capacities, sizes or percentages of the trace's footprint (e.g. 1%,5%,10%,25% or 8G,32G).")
    var dram = "1%,2.5%,5%,10%,25%"
    @Option(help: "NVMe capacities, sizes or percentages of the footprint.") var nvme = "10%,25%,50%,75%,100%,150%"
    @Option(help: "Engine sends prefetch hints: on or off.") var hints = "on"
    @Option(help: "Where to write the plot (SVG: open it in a browser).") var svg = "plan.svg"
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        guard kvBytesPerToken > 0, prefillTokensPerSecond > 0 else { throw failure("--kv-bytes-per-token and --prefill-tokens-per-second must be positive") }
        guard hints == "on" || hints == "off" else { throw failure("--hints must be on or off") }
        let loaded: Trace
        if let synthetic {
            loaded = SyntheticTraceGenerator(workload: synthetic, requests: requests, seed: seed).generate()
        } else if let trace {
            do { loaded = try Trace.load(path: trace) } catch { throw failure("\(error)") }
        } else {
            throw failure("give a trace file or --synthetic agentic|chat|rag")
        }
        guard !loaded.requests.isEmpty else { throw failure("the trace has no requests") }
        let blockBytes = UInt64(kvBytesPerToken) * UInt64(Trace.tokensPerBlock)
        let unique = loaded.uniqueBlocks
        let footprint = UInt64(unique) * blockBytes
        let dramSizes = try capacities(dram, footprint: footprint, flag: "--dram")
        let nvmeSizes = try capacities(nvme, footprint: footprint, flag: "--nvme")
        let first = loaded.requests.first!.timestampMilliseconds, last = loaded.requests.last!.timestampMilliseconds
        let hours = max(1.0, last - first) / 3_600_000
        // The daemon's default segment size for a store of the largest NVMe capacity.
        let segmentBytes = StoreConfiguration(capacity: nvmeSizes.max() ?? footprint).segmentSize
        let blocksPerSegment = max(4, Int(segmentBytes / blockBytes))

        var rows: [[String: Any]] = []
        var series: [SVGLineChart.Series] = []
        if !json {
            print("trace: \(loaded.requests.count) requests, \(loaded.references.count) block references, \(unique) unique blocks of \(bytes(blockBytes))")
            print("footprint \(bytes(footprint)); ideal hit ratio \(String(format: "%.3f", loaded.idealHitRatio)); \(String(format: "%.2f", hours * 60)) minutes of traffic; hints \(hints)\n")
            print("    DRAM        NVMe   hit ratio  from DRAM  GPU-s saved/hour")
        }
        for d in dramSizes {
            var points: [(x: Double, y: Double)] = []
            for n in nvmeSizes {
                let sim = WarehouseSimulation(dramBlocks: Int(d / blockBytes), nvmeBlocks: Int(n / blockBytes),
                                              blocksPerSegment: blocksPerSegment, hints: hints == "on")
                let r = try sim.run(loaded)
                let saved = Double(r.savedTokens) / prefillTokensPerSecond / hours
                rows.append(["dram_bytes": d, "nvme_bytes": n, "hit_ratio": r.prefixHitRatio, "dram_hit_ratio": r.dramHitRatio,
                             "dram_hit_share": r.dramHitShare, "gpu_seconds_saved_per_hour": saved])
                points.append((x: Double(n) / Double(1 << 30), y: r.prefixHitRatio))
                if !json {
                    print(String(format: "%8@ %11@   %9.3f  %9.3f  %16.1f", bytes(d) as NSString, bytes(n) as NSString,
                                 r.prefixHitRatio, r.dramHitRatio, saved))
                }
            }
            series.append(SVGLineChart.Series(name: "DRAM \(bytes(d))", points: points))
        }
        let idealPoints = nvmeSizes.map { (x: Double($0) / Double(1 << 30), y: loaded.idealHitRatio) }
        series.append(SVGLineChart.Series(name: "ideal (infinite)", points: idealPoints, dashed: true))
        let chart = SVGLineChart(title: "Prefix hit ratio by NVMe capacity (\(loaded.requests.count) requests, blocks of \(bytes(blockBytes)))",
                                 xLabel: "NVMe capacity (GiB, log scale)", yLabel: "hit ratio", series: series, logScaleX: true, yRange: 0...1)
        guard FileManager.default.createFile(atPath: svg, contents: Data(chart.render().utf8)) else { throw failure("cannot write \(svg)") }
        if json {
            printJSON(["requests": loaded.requests.count, "unique_blocks": unique, "block_bytes": blockBytes, "footprint_bytes": footprint,
                       "ideal_hit_ratio": loaded.idealHitRatio, "hours": hours, "hints": hints == "on", "svg": svg, "rows": rows])
        } else {
            print("\nplot written to \(svg)")
        }
    }

    /// "1%,10%,8G" -> bytes; percentages are of the footprint.
    func capacities(_ text: String, footprint: UInt64, flag: String) throws -> [UInt64] {
        try text.split(separator: ",").map { item in
            let s = item.trimmingCharacters(in: .whitespaces)
            if s.hasSuffix("%"), let p = Double(s.dropLast()), p > 0 { return max(1, UInt64(Double(footprint) * p / 100)) }
            guard let v = ByteCount(parsing: s), v.bytes > 0 else { throw failure("\(flag): '\(s)' is neither a size nor a percentage") }
            return v.bytes
        }
    }
}
