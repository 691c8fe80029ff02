// MetricsExporter: the daemon's Prometheus metrics (docs/operations.md "Metrics"). The exposition text
// is rendered from the same `StatusReport` values `.tw/status` shows (one walk over the figures, two
// renderings), and served by a small HTTP server on loopback unless told otherwise.
import ControlPlane

/// Renders the Prometheus text exposition format (version 0.0.4) of a status report.
public enum PrometheusText {
    public static func render(_ s: StatusReport) -> String {
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: Double)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for sample in samples { out += "\(name)\(sample.labels) \(format(sample.value))\n" }
        }
        func one(_ name: String, _ type: String, _ help: String, _ value: Double) { metric(name, type, help, [("", value)]) }

        let ops = s.operations
        metric("tw_operations_total", "counter", "Filesystem requests served, by operation (page_cache_push: re-read blocks the daemon put into the page cache)",
               ops.counts.sorted { $0.key < $1.key }.map { ("{op=\"\($0.key)\"}", Double($0.value)) })
        metric("tw_read_bytes_total", "counter", "Block bytes read through the mount, by the tier that served them",
               ops.readBytes.sorted { $0.key < $1.key }.map { ("{tier=\"\($0.key)\"}", Double($0.value)) })
        one("tw_written_bytes_total", "counter", "Block bytes written through the mount", Double(ops.writtenBytes))
        out += "# HELP tw_read_latency_seconds Latency of read requests through the mount, by tier\n# TYPE tw_read_latency_seconds histogram\n"
        for (tier, h) in ops.readLatency.sorted(by: { $0.key < $1.key }) {
            for (bound, count) in zip(h.bounds, h.cumulative) {
                out += "tw_read_latency_seconds_bucket{tier=\"\(tier)\",le=\"\(format(bound))\"} \(count)\n"
            }
            out += "tw_read_latency_seconds_bucket{tier=\"\(tier)\",le=\"+Inf\"} \(h.count)\n"
            out += "tw_read_latency_seconds_sum{tier=\"\(tier)\"} \(format(h.sumSeconds))\n"
            out += "tw_read_latency_seconds_count{tier=\"\(tier)\"} \(h.count)\n"
        }

        one("tw_store_capacity_bytes", "gauge", "Bytes of segments the store may use", Double(s.capacityBytes))
        one("tw_store_used_bytes", "gauge", "Bytes of segments in use", Double(s.usedBytes))
        one("tw_store_dead_bytes", "gauge", "Bytes of deleted or superseded records not yet compacted", Double(s.deadBytes))
        one("tw_store_blocks", "gauge", "Blocks stored", Double(s.blocks))
        one("tw_store_directories", "gauge", "Directories inside namespaces", Double(s.directories))
        one("tw_store_segments", "gauge", "Segment files", Double(s.segments))
        one("tw_store_puts_total", "counter", "Blocks committed", Double(s.puts))
        one("tw_store_gets_total", "counter", "Blocks read from NVMe", Double(s.gets))
        one("tw_store_corrupt_reads_total", "counter", "Reads refused because a checksum did not match", Double(s.corruptReads))
        one("tw_store_sync_failures_total", "counter", "fdatasync calls of the store that failed (a disk write error)", Double(s.syncFailures))
        one("tw_evicted_segments_total", "counter", "Segments evicted for capacity", Double(s.evictedSegments))
        one("tw_evicted_blocks_total", "counter", "Blocks evicted for capacity", Double(s.evictedBlocks))
        one("tw_reinserted_blocks_total", "counter", "Read blocks copied forward instead of evicted", Double(s.reinsertedBlocks))
        one("tw_expired_blocks_total", "counter", "Blocks removed by a namespace's time to live", Double(s.expiredBlocks))
        one("tw_compacted_segments_total", "counter", "Segments rewritten by compaction", Double(s.compactedSegments))
        one("tw_reclaimed_bytes_total", "counter", "Bytes reclaimed by compaction", Double(s.reclaimedBytes))
        one("tw_recovery_blocks", "gauge", "Blocks found by recovery at start", Double(s.recovery.blocks))
        one("tw_recovery_corrupt_records", "gauge", "Corrupt records skipped by recovery at start", Double(s.recovery.corruptRecords))
        one("tw_recovery_seconds", "gauge", "Seconds recovery took at start", s.recovery.seconds)
        one("tw_staged_bytes", "gauge", "Bytes of blocks being written (staged, not committed)", Double(s.limits.stagedBytes))
        one("tw_pending_blocks", "gauge", "Blocks being written", Double(s.limits.pendingBlocks))
        one("tw_refused_for_limits_total", "counter", "Writes, hints or handles refused because a per-user or total bound was reached",
            Double(s.limits.refusedForLimits))
        if s.dramTier.enabled {
            let t = s.dramTier
            one("tw_dram_capacity_bytes", "gauge", "Bytes the DRAM tiers may hold together", Double(t.capacityBytes))
            one("tw_dram_resident_bytes", "gauge", "Bytes of blocks resident in the DRAM tier", Double(t.residentBytes))
            one("tw_dram_resident_blocks", "gauge", "Blocks resident in the DRAM tier", Double(t.residentBlocks))
            one("tw_dram_domains", "gauge", "DRAM tier files (security domains of namespaces)", Double(t.domains))
            one("tw_dram_map_hits_total", "counter", "Hits clients counted through the map", Double(t.mapHits))
            one("tw_dram_evictions_total", "counter", "Blocks evicted from the DRAM tier", Double(t.evictions))
        }
        if s.prefetch.enabled {
            let p = s.prefetch
            one("tw_prefetch_hinted_total", "counter", "Prefetch hints received", Double(p.hinted))
            one("tw_prefetch_loaded_total", "counter", "Blocks the prefetcher loaded into the tier", Double(p.loaded))
            one("tw_prefetch_used_total", "counter", "Prefetched blocks read before they left the tier", Double(p.used))
            one("tw_prefetch_wasted_total", "counter", "Prefetched blocks that left the tier unread", Double(p.wasted))
        }
        metric("tw_hit_ratio", "gauge", "Share of block reads served by each tier",
               [("{tier=\"dram\"}", s.hitRatios.dram), ("{tier=\"nvme\"}", s.hitRatios.nvme)])
        if s.remote.enabled {
            let r = s.remote
            one("tw_remote_connected", "gauge", "1 while connected to the shared tier's cluster", r.connected ? 1 : 0)
            one("tw_remote_queue_depth", "gauge", "Blocks waiting to be published to the shared tier", Double(r.queueDepth))
            one("tw_remote_published_total", "counter", "Blocks published to the shared tier", Double(r.published))
            one("tw_remote_published_bytes_total", "counter", "Bytes of objects published to the shared tier", Double(r.publishedBytes))
            one("tw_remote_publish_lag_p99_seconds", "gauge", "99th percentile of commit-to-published time over the last 4096 blocks",
                r.publishLagMs.p99 / 1e3)
            one("tw_remote_fetch_p99_seconds", "gauge", "99th percentile of a fetch from the shared tier (read, verify, store) over the last 4096",
                r.fetchMs.p99 / 1e3)
            one("tw_remote_dropped_total", "counter", "Commits not shared because the publish queue was full", Double(r.dropped))
            one("tw_remote_fetched_total", "counter", "Local misses served from the shared tier", Double(r.fetched))
            one("tw_remote_fetched_bytes_total", "counter", "Bytes of objects fetched from the shared tier", Double(r.fetchedBytes))
            one("tw_remote_misses_total", "counter", "Local misses the shared tier did not have", Double(r.misses))
            one("tw_remote_failed_total", "counter", "Shared-tier calls that failed or timed out, and objects refused as corrupt",
                Double(r.failed))
            one("tw_remote_corrupt_total", "counter", "Objects from the shared tier refused by their checksums", Double(r.corrupt))
        }
        return out
    }

    /// Numbers as Prometheus reads them: integers without a fraction, others in full precision.
    static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded() && abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }
}
