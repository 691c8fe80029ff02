// The figures each part of the warehouse counts, as the status shows them (`.tw/status`, `twctl status`,
// the Prometheus metrics; docs/operations.md). One type per set of figures: the part that counts fills it,
// ControlPlane's `StatusReport` holds it as it is, and twctl decodes the same type, so a figure is named
// once and cannot drift between the counter, the JSON key and the metric. Keys are snake_case and stable
// (tests and tools read them). Plain values: safe from any thread.

/// The store's counters since it opened (top-level keys of the status).
public struct StoreCounters: Codable, Sendable, Equatable {
    public var puts = 0
    public var duplicatePuts = 0
    public var bytesWritten: UInt64 = 0
    public var gets = 0
    public var bytesRead: UInt64 = 0
    public var corruptReads = 0
    public var removes = 0
    public var renames = 0
    public var updates = 0
    public var evictedSegments = 0
    public var evictedBlocks = 0
    public var reinsertedBlocks = 0
    public var compactedSegments = 0
    public var reclaimedBytes: UInt64 = 0
    /// Blocks removed because their namespace's time to live passed.
    public var expiredBlocks = 0
    /// `fdatasync`s of a segment or the directory journal that failed (the disk reported a write error):
    /// blocks committed since the last good sync may not survive a power cut, and reading one whose
    /// write was lost fails its checksum (EIO), never returns wrong bytes.
    public var syncFailures = 0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case puts, duplicatePuts = "duplicate_puts", bytesWritten = "bytes_written", gets, bytesRead = "bytes_read"
        case corruptReads = "corrupt_reads", removes, renames, updates, evictedSegments = "evicted_segments"
        case evictedBlocks = "evicted_blocks", reinsertedBlocks = "reinserted_blocks", compactedSegments = "compacted_segments"
        case reclaimedBytes = "reclaimed_bytes", expiredBlocks = "expired_blocks", syncFailures = "sync_failures"
    }
}

/// What recovery found when the store opened (the status's `recovery`).
public struct RecoveryReport: Codable, Sendable, Equatable {
    public var segmentsFromSummary = 0
    public var segmentsScanned = 0
    public var blocks = 0
    public var directories = 0
    /// Directories that blocks named but the journal lacked (a crash before the journal was synced):
    /// made again from the blocks' paths.
    public var directoriesRestored = 0
    public var corruptRecords = 0
    public var tornTailBytes: UInt64 = 0
    public var bytesScanned: UInt64 = 0
    public var seconds = 0.0
    /// "loaded": the index came from the snapshot of the last clean stop (no summary read, no segment
    /// scanned); "ignored: why" when one was there but could not be used; empty when there was none.
    public var indexSnapshot = ""

    public init() {}

    enum CodingKeys: String, CodingKey {
        case segmentsFromSummary = "segments_from_summary", segmentsScanned = "segments_scanned", blocks, directories
        case directoriesRestored = "directories_restored", corruptRecords = "corrupt_records", tornTailBytes = "torn_tail_bytes"
        case bytesScanned = "bytes_scanned", seconds, indexSnapshot = "index_snapshot"
    }
}

/// Median, 99th percentile and largest of a set of durations, in milliseconds.
public struct Percentiles: Codable, Sendable, Equatable {
    public var p50 = 0.0
    public var p99 = 0.0
    public var max = 0.0

    public init(p50: Double = 0, p99: Double = 0, max: Double = 0) {
        self.p50 = p50
        self.p99 = p99
        self.max = max
    }
}

/// What the prefetcher did (the status's `prefetch`, the `tw_prefetch_*` metrics). The prefetcher fills
/// its own counters and settings; `used`, `wasted` and `pending` are the DRAM tier's view of the blocks
/// it loaded.
public struct PrefetchReport: Codable, Sendable, Equatable {
    public var enabled = false
    /// Hint lines received.
    public var hinted = 0
    /// Blocks loaded into the tier, in all and by signal.
    public var loaded = 0
    public var loadedHinted = 0
    public var loadedChain = 0
    public var loadedLearned = 0
    /// Blocks loaded because they follow, in the log, blocks a process was reading in that order.
    public var loadedLogOrder = 0
    /// Hinted blocks this node lacked, fetched from the cluster tier.
    public var loadedFromCluster = 0
    /// Hints and guesses for blocks already resident (nothing to do).
    public var alreadyResident = 0
    /// Hinted blocks that do not exist.
    public var missing = 0
    /// Hints dropped because the queue was full.
    public var dropped = 0
    /// Hints and speculative loads dropped because the block was opened before they were served (they
    /// came too late: its reader read it itself).
    public var late = 0
    /// Hints dropped because they waited longer than the deadline.
    public var expired = 0
    /// Loads that failed (unreadable record, or no room in the tier).
    public var failed = 0
    /// Blocks kept out of the shared tier: readable by fewer than the namespace lets in.
    public var notAdmitted = 0
    /// Prefetched blocks read before they left the tier, left unread, and still waiting to be read.
    public var used = 0
    public var wasted = 0
    public var pending = 0
    /// Successor links known (chain and learned).
    public var successorLinks = 0
    public var workers = 0
    public var bandwidthBytesPerSecond: UInt64 = 0
    public var depth = 0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case enabled, hinted, loaded, loadedHinted = "loaded_hinted", loadedChain = "loaded_chain", loadedLearned = "loaded_learned"
        case loadedLogOrder = "loaded_log_order"
        case loadedFromCluster = "loaded_from_cluster", alreadyResident = "already_resident", missing, dropped, late, expired
        case failed, notAdmitted = "not_admitted", used, wasted, pending, successorLinks = "successor_links", workers
        case bandwidthBytesPerSecond = "bandwidth_bytes_per_second", depth
    }
}

/// Figures of the DRAM tier: one tier file, or all of them summed (the status's `dram_tier`, beside the
/// daemon's settings in ControlPlane's `DRAMStatus`).
public struct TierStatistics: Codable, Sendable, Equatable {
    public var capacityBytes = 0
    public var residentBlocks = 0
    public var residentBytes = 0
    /// Reads through the mount served from the tier, and those that missed it.
    public var mountHits = 0
    public var mountMisses = 0
    /// Hits that clients counted through the map.
    public var mapHits = 0
    public var insertions = 0
    public var failedInsertions = 0
    /// Resident copies found damaged (checksum mismatch) when a read was to be served from them.
    public var damaged = 0
    public var evictions = 0
    public var promotions = 0
    public var reinsertions = 0
    /// Blocks the prefetcher loaded that were read (through the mount or the map) before they left, that
    /// left (evicted or unlinked) without being read, and that are still resident and not read yet.
    public var prefetchUsed = 0
    public var prefetchWasted = 0
    public var prefetchPending = 0

    public init() {}

    public mutating func add(_ o: TierStatistics) {
        capacityBytes += o.capacityBytes; residentBlocks += o.residentBlocks; residentBytes += o.residentBytes
        mountHits += o.mountHits; mountMisses += o.mountMisses; mapHits += o.mapHits; insertions += o.insertions
        failedInsertions += o.failedInsertions; damaged += o.damaged; evictions += o.evictions; promotions += o.promotions
        reinsertions += o.reinsertions; prefetchUsed += o.prefetchUsed; prefetchWasted += o.prefetchWasted
        prefetchPending += o.prefetchPending
    }

    enum CodingKeys: String, CodingKey {
        case capacityBytes = "capacity_bytes", residentBlocks = "resident_blocks", residentBytes = "resident_bytes"
        case mountHits = "mount_hits", mountMisses = "mount_misses", mapHits = "map_hits", insertions
        case failedInsertions = "failed_insertions", damaged, evictions, promotions, reinsertions
        case prefetchUsed = "prefetch_used", prefetchWasted = "prefetch_wasted", prefetchPending = "prefetch_pending"
    }
}

/// What a garbage collection of the shared pool did (`twctl cluster gc`; ControlPlane's `JobStatus`
/// shows it beside the job's own keys).
public struct GarbageReport: Codable, Sendable, Equatable {
    public var location = ""
    public var objects = 0
    public var bytesBefore: UInt64 = 0
    public var targetBytes: UInt64 = 0
    public var removedObjects = 0
    public var removedBytes: UInt64 = 0
    public var bytesAfter: UInt64 = 0
    /// Why it stopped early; the job reports it as its own `error`, so it is not one of these keys.
    public var error: String?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case location, objects, bytesBefore = "bytes_before", targetBytes = "target_bytes"
        case removedObjects = "removed_objects", removedBytes = "removed_bytes", bytesAfter = "bytes_after"
    }
}

/// What the shared (cluster) tier did (the status's `remote`, the `tw_remote_*` metrics).
public struct ClusterReport: Codable, Sendable, Equatable {
    public var enabled = false
    public var location: String?
    public var connected = false
    public var queueDepth = 0
    public var queueCapacity = 0
    public var queued = 0
    public var published = 0
    public var publishedBytes: UInt64 = 0
    public var syncPublished = 0
    /// `sync` commits queued as `async` at once because publishing was failing (the cluster away).
    public var syncDeferred = 0
    public var publishFailures = 0
    public var dropped = 0
    public var backpressureWaits = 0
    public var publishLagMs = Percentiles()
    public var fetchMs = Percentiles()
    public var clusterReadMs = Percentiles()
    /// The parts of a fetch after the cluster read: verifying the record, the local put, the DRAM copy.
    public var fetchVerifyMs = Percentiles()
    public var fetchStoreMs = Percentiles()
    public var fetchTierMs = Percentiles()
    public var namespacesPublished = 0
    public var namespacesImported = 0
    public var fetched = 0
    public var fetchedBytes: UInt64 = 0
    public var misses = 0
    public var negativeHits = 0
    public var joinedFetches = 0
    public var fetchFailures = 0
    public var skippedUnavailable = 0
    public var corrupt = 0
    public var touches = 0
    /// Calls that failed or timed out, and objects refused as corrupt.
    public var failed = 0
    public var connects = 0
    public var connectFailures = 0
    public var defaultShare: String?
    /// The effective policy of each namespace.
    public var share: [String: String] = [:]
    public var lastError: String?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case enabled, location, connected, queueDepth = "queue_depth", queueCapacity = "queue_capacity", queued, published
        case publishedBytes = "published_bytes", syncPublished = "sync_published", syncDeferred = "sync_deferred", publishFailures = "publish_failures", dropped
        case backpressureWaits = "backpressure_waits", publishLagMs = "publish_lag_ms", fetchMs = "fetch_ms"
        case clusterReadMs = "cluster_read_ms", fetchVerifyMs = "fetch_verify_ms", fetchStoreMs = "fetch_store_ms"
        case fetchTierMs = "fetch_tier_ms", namespacesPublished = "namespaces_published", namespacesImported = "namespaces_imported"
        case fetched, fetchedBytes = "fetched_bytes", misses, negativeHits = "negative_hits", joinedFetches = "joined_fetches"
        case fetchFailures = "fetch_failures", skippedUnavailable = "skipped_unavailable", corrupt, touches, failed, connects
        case connectFailures = "connect_failures", defaultShare = "default_share", share, lastError = "last_error"
    }
}
