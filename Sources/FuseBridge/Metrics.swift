import BlockStore
import DRAMTier
import Prometheus

/// The daemon's Prometheus metrics (`twfs --metrics ADDR`, docs/operations.md). Hot-path figures
/// (operations, bytes and latency of reads by tier) are swift-prometheus collectors updated as
/// requests run; store, tier and prefetch figures are read from their statistics at scrape time.
///
/// Thread-safety: collectors are thread-safe; `render` may run concurrently with updates.
public final class WarehouseMetrics: Sendable {
    public enum Operation: String, CaseIterable, Sendable { case lookup, read, write, commit, unlink }
    public enum Tier: String, CaseIterable, Sendable { case dram, nvme }

    let registry = PrometheusCollectorRegistry()
    private let operations: [Operation: Counter]
    private let readBytes: [Tier: Counter]
    private let readLatency: [Tier: DurationHistogram]
    private let writtenBytes: Counter

    public init() {
        let r = registry
        operations = Dictionary(uniqueKeysWithValues: Operation.allCases.map { op in
            (op, r.makeCounter(descriptor: MetricNameDescriptor(metricName: "tw_operations", unitName: "total",
                                                                helpText: "Filesystem requests served, by operation"),
                               labels: [("op", op.rawValue)]))
        })
        readBytes = Dictionary(uniqueKeysWithValues: Tier.allCases.map { t in
            (t, r.makeCounter(descriptor: MetricNameDescriptor(metricName: "tw_read_bytes", unitName: "total",
                                                               helpText: "Block bytes read through the mount, by the tier that served them"),
                              labels: [("tier", t.rawValue)]))
        })
        // 10 us to 1 s: a DRAM-tier reply takes microseconds, an NVMe read of a large block milliseconds.
        let buckets: [Duration] = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 1_000_000].map { .microseconds($0) }
        readLatency = Dictionary(uniqueKeysWithValues: Tier.allCases.map { t in
            (t, r.makeDurationHistogram(descriptor: MetricNameDescriptor(metricName: "tw_read_latency", unitName: "seconds",
                                                                         helpText: "Latency of read requests through the mount, by tier"),
                                        labels: [("tier", t.rawValue)], buckets: buckets))
        })
        writtenBytes = r.makeCounter(descriptor: MetricNameDescriptor(metricName: "tw_written_bytes", unitName: "total",
                                                                     helpText: "Block bytes written through the mount"))
    }

    func count(_ op: Operation) { operations[op]!.increment() }

    func read(tier: Tier, bytes: Int, nanoseconds: UInt64) {
        operations[.read]!.increment()
        readBytes[tier]!.increment(by: Int64(bytes))
        readLatency[tier]!.record(.nanoseconds(Int64(nanoseconds)))
    }

    func wrote(bytes: Int) {
        operations[.write]!.increment()
        writtenBytes.increment(by: Int64(bytes))
    }

    /// The exposition text: the collectors, then the figures of the store, tier and prefetcher.
    public func render(store: BlockStore, tier: DRAMTier?, prefetcher: Prefetcher?) -> [UInt8] {
        var out = registry.emitToBuffer()
        var text = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: Double, labels: String = "") {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name)\(labels) \(value)\n"
        }
        let s = store.statistics()
        let r = store.recovery
        metric("tw_store_capacity_bytes", "gauge", "Bytes of segments the store may use", Double(s.capacityBytes))
        metric("tw_store_used_bytes", "gauge", "Bytes of segments in use", Double(s.usedBytes))
        metric("tw_store_dead_bytes", "gauge", "Bytes of deleted or superseded records not yet compacted", Double(s.deadBytes))
        metric("tw_store_blocks", "gauge", "Blocks stored", Double(s.blocks))
        metric("tw_store_segments", "gauge", "Segment files", Double(s.segments))
        metric("tw_store_puts_total", "counter", "Blocks committed", Double(s.puts))
        metric("tw_store_gets_total", "counter", "Blocks read from NVMe", Double(s.gets))
        metric("tw_store_corrupt_reads_total", "counter", "Reads refused because a checksum did not match", Double(s.corruptReads))
        metric("tw_evicted_segments_total", "counter", "Segments evicted for capacity", Double(s.evictedSegments))
        metric("tw_evicted_blocks_total", "counter", "Blocks evicted for capacity", Double(s.evictedBlocks))
        metric("tw_reinserted_blocks_total", "counter", "Read blocks copied forward instead of evicted", Double(s.reinsertedBlocks))
        metric("tw_expired_blocks_total", "counter", "Blocks removed by a namespace's time to live", Double(s.expiredBlocks))
        metric("tw_compacted_segments_total", "counter", "Segments rewritten by compaction", Double(s.compactedSegments))
        metric("tw_reclaimed_bytes_total", "counter", "Bytes reclaimed by compaction", Double(s.reclaimedBytes))
        metric("tw_recovery_blocks", "gauge", "Blocks found by recovery at start", Double(r.blocks))
        metric("tw_recovery_corrupt_records", "gauge", "Corrupt records skipped by recovery at start", Double(r.corruptRecords))
        metric("tw_recovery_seconds", "gauge", "Seconds recovery took at start", Double(r.nanoseconds) / 1e9)
        var dramHits = 0
        if let tier {
            let t = tier.statistics()
            dramHits = t.mountHits + t.mapHits
            metric("tw_dram_capacity_bytes", "gauge", "Bytes of the DRAM tier's data area", Double(t.capacityBytes))
            metric("tw_dram_resident_bytes", "gauge", "Bytes of blocks resident in the DRAM tier", Double(t.residentBytes))
            metric("tw_dram_resident_blocks", "gauge", "Blocks resident in the DRAM tier", Double(t.residentBlocks))
            metric("tw_dram_map_hits_total", "counter", "Hits clients counted through the map", Double(t.mapHits))
            metric("tw_dram_evictions_total", "counter", "Blocks evicted from the DRAM tier", Double(t.evictions))
            metric("tw_prefetch_used_total", "counter", "Prefetched blocks read before they left the tier", Double(t.prefetchUsed))
            metric("tw_prefetch_wasted_total", "counter", "Prefetched blocks that left the tier unread", Double(t.prefetchWasted))
        }
        if let p = prefetcher?.statistics() {
            metric("tw_prefetch_hinted_total", "counter", "Prefetch hints received", Double(p.hinted))
            metric("tw_prefetch_loaded_total", "counter", "Blocks the prefetcher loaded into the tier", Double(p.loaded))
        }
        // Hit ratios by tier: of the block reads that found their block, the share each tier served.
        let hits = Double(dramHits + s.gets)
        text += "# HELP tw_hit_ratio Share of block reads served by each tier\n# TYPE tw_hit_ratio gauge\n"
        text += "tw_hit_ratio{tier=\"dram\"} \(hits > 0 ? Double(dramHits) / hits : 0)\n"
        text += "tw_hit_ratio{tier=\"nvme\"} \(hits > 0 ? Double(s.gets) / hits : 0)\n"
        out.append(contentsOf: Array(text.utf8))
        return out
    }
}
