import BlockStore
import ClusterTier
import ControlPlane
import DRAMTier
import Platform
import Prefetcher
import WarehouseCore

/// The status (`.tw/status`, `twctl status`, the metrics): one walk over the figures of the store, the
/// tiers, the prefetcher, the cluster and the hot path's counters. What concerns a namespace is shown
/// only to callers who may see the namespace.
extension WarehouseFileSystem {
    /// The status as `caller` may see it; nil caller: everything (the metrics endpoint, which shows no
    /// per-namespace figures).
    public func status(for caller: Caller?) -> StatusReport {
        let s = store.statistics()
        let t = tiers?.statistics()
        let c = store.configuration
        var r = StatusReport()
        r.store = settings.storeDirectory
        r.sync = c.sync.rawValue
        r.blocks = s.blocks
        r.directories = s.directories
        r.capacityBytes = c.capacity
        r.usedBytes = s.usedBytes
        r.liveBytes = s.liveBytes
        r.deadBytes = s.deadBytes
        r.deadRatio = s.usedBytes > 0 ? Double(s.deadBytes) / Double(s.usedBytes) : 0
        r.segments = s.segments
        r.segmentBytes = c.segmentSize
        r.maxBlockBytes = c.maxBlockSize
        for (info, _) in s.namespaces where caller.map({ maySee($0, namespace: info) }) ?? true {
            r.namespaces.append(info.name)
            r.namespaceUsage[info.name] = namespaceReport(info)
        }
        r.extra = s.counters
        // Where readers' blocks came from: the tier (mount and map), or a load from NVMe for a reader. Not
        // the store's `gets`: those also count what the prefetcher and the cluster publisher read.
        let dramHits = (t?.mountHits ?? 0) + (t?.mapHits ?? 0)
        let nvmeLoads = Int(counters.blocksLoadedForReaders)
        let total = Double(dramHits + nvmeLoads)
        r.hitRatios.dram = total > 0 ? Double(dramHits) / total : 0
        r.hitRatios.nvme = total > 0 ? Double(nvmeLoads) / total : 0
        r.compaction = compactionStatus()
        if let tiers, let t {
            var d = DRAMStatus()
            d.enabled = true
            d.socket = tierSocket
            d.memory = tierMemory
            d.domains = tiers.domainCount
            d.extra = t
            let lookups = t.mountHits + t.mountMisses
            d.mountHitRatio = lookups > 0 ? Double(t.mountHits) / Double(lookups) : 0
            r.dramTier = d
            if let prefetcher {
                var p = prefetcher.statistics()
                p.used = t.prefetchUsed
                p.wasted = t.prefetchWasted
                p.pending = t.prefetchPending
                r.prefetch = p
            }
        }
        if let cluster {
            r.remote = cluster.report()
            r.remote.share = r.remote.share.filter { name in r.namespaces.contains(name.key) || caller == nil }
        }
        r.recovery = store.recovery
        r.operations = counters.report()
        let (usage, refused) = limits.snapshot
        r.limits.pendingBlocks = usage.pendingBlocks
        r.limits.stagedBytes = usage.stagedBytes
        r.limits.stagedBytesLimit = limits.limits.stagedBytesTotal
        r.limits.stagedBytesPerUserLimit = limits.limits.stagedBytesPerUser
        r.limits.pendingBlocksPerUserLimit = limits.limits.pendingBlocksPerUser
        r.limits.hintBytesPerHandleLimit = LineInput.maxLine
        r.limits.refusedForLimits = refused
        r.engines = caller.map { engines.totals(for: $0) } ?? engines.totals(for: Caller(uid: 0, gid: 0, pid: 0))
        return r
    }

    func compactionStatus() -> CompactionStatus {
        let p = compaction.progress
        var c = CompactionStatus()
        c.running = p.running
        c.runs = p.runs
        c.threshold = p.threshold
        c.candidates = p.candidates
        c.segmentsCompacted = p.report.segmentsCompacted
        c.blocksMoved = p.report.blocksMoved
        c.bytesMoved = p.report.bytesMoved
        c.bytesReclaimed = p.report.bytesReclaimed
        c.seconds = p.seconds
        c.error = p.error
        return c
    }

    func namespaceReport(_ ns: NamespaceInfo) -> NamespaceReport {
        let u = store.usage(of: ns.id)
        var r = NamespaceReport()
        r.name = ns.name
        r.owner = ns.owner
        r.group = ns.group
        r.mode = String(ns.mode, radix: 8)
        r.blocks = u.blocks
        r.logicalBytes = u.logicalBytes
        r.storedBytes = u.storedBytes
        r.reservedBytes = u.reservedBytes
        r.compression = ns.compression.rawValue
        r.quotaBytes = ns.quotaBytes
        r.ttlSeconds = ns.ttlSeconds
        r.pinned = ns.pinned
        r.share = cluster.map { $0.policy(of: ns).rawValue } ?? "off"
        r.shareSet = ns.share?.rawValue
        return r
    }
}
