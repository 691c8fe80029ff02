// ControlPlane: the typed schema of what the daemon tells and is told through its control area
// (docs/operations.md): the status (`.tw/status`, `twctl status`, the Prometheus metrics), the requests
// and answers of `.tw/ctl`, and the counters engines report through `.tw/engine`. twfs encodes these
// values and twctl decodes the same types, so a key cannot silently change on one side. Plain values:
// safe from any thread.
import Foundation

/// Everything `.tw/status` shows, one JSON object. Keys are snake_case and stable (tests and tools
/// read them); namespace-specific parts hold only the namespaces the reader may read.
public struct StatusReport: Codable, Sendable, Equatable {
    public var store = ""
    public var sync = ""
    public var blocks = 0
    public var directories = 0
    public var capacityBytes: UInt64 = 0
    public var usedBytes: UInt64 = 0
    public var liveBytes: UInt64 = 0
    public var deadBytes: UInt64 = 0
    public var deadRatio = 0.0
    public var segments = 0
    public var segmentBytes: UInt64 = 0
    public var maxBlockBytes = 0
    public var namespaces: [String] = []
    public var namespaceUsage: [String: NamespaceReport] = [:]
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
    public var expiredBlocks = 0
    public var hitRatios = HitRatios()
    public var compaction = CompactionStatus()
    public var dramTier = DRAMStatus()
    public var prefetch = PrefetchStatus()
    public var remote = RemoteStatus()
    public var recovery = RecoveryStatus()
    public var operations = OperationStatus()
    public var limits = LimitStatus()
    public var engines: [String: [String: Int64]] = [:]

    public init() {}

    enum CodingKeys: String, CodingKey {
        case store, sync, blocks, directories
        case capacityBytes = "capacity_bytes", usedBytes = "used_bytes", liveBytes = "live_bytes", deadBytes = "dead_bytes"
        case deadRatio = "dead_ratio", segments, segmentBytes = "segment_bytes", maxBlockBytes = "max_block_bytes"
        case namespaces, namespaceUsage = "namespace_usage", puts, duplicatePuts = "duplicate_puts"
        case bytesWritten = "bytes_written", gets, bytesRead = "bytes_read", corruptReads = "corrupt_reads", removes, renames, updates
        case evictedSegments = "evicted_segments", evictedBlocks = "evicted_blocks", reinsertedBlocks = "reinserted_blocks"
        case compactedSegments = "compacted_segments", reclaimedBytes = "reclaimed_bytes", expiredBlocks = "expired_blocks"
        case hitRatios = "hit_ratios", compaction, dramTier = "dram_tier", prefetch, remote, recovery, operations, limits, engines
    }
}

/// A namespace: its policy and use.
public struct NamespaceReport: Codable, Sendable, Equatable {
    public var name = ""
    public var owner: UInt32 = 0
    public var group: UInt32 = 0
    public var mode = "755"
    public var blocks = 0
    public var logicalBytes: UInt64 = 0
    public var storedBytes: UInt64 = 0
    public var reservedBytes: UInt64 = 0
    public var compression = "off"
    public var quotaBytes: UInt64 = 0
    public var ttlSeconds: UInt64 = 0
    public var pinned = false
    /// The effective share policy (`off` without a cluster) and the one set on the namespace (nil: default).
    public var share = "off"
    public var shareSet: String?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case name, owner, group, mode, blocks, logicalBytes = "logical_bytes", storedBytes = "stored_bytes"
        case reservedBytes = "reserved_bytes", compression, quotaBytes = "quota_bytes", ttlSeconds = "ttl_seconds", pinned
        case share, shareSet = "share_set"
    }

    /// Always written, also when nil (twctl shows "(default)").
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name); try c.encode(owner, forKey: .owner); try c.encode(group, forKey: .group)
        try c.encode(mode, forKey: .mode); try c.encode(blocks, forKey: .blocks); try c.encode(logicalBytes, forKey: .logicalBytes)
        try c.encode(storedBytes, forKey: .storedBytes); try c.encode(reservedBytes, forKey: .reservedBytes)
        try c.encode(compression, forKey: .compression); try c.encode(quotaBytes, forKey: .quotaBytes)
        try c.encode(ttlSeconds, forKey: .ttlSeconds); try c.encode(pinned, forKey: .pinned); try c.encode(share, forKey: .share)
        try c.encode(shareSet, forKey: .shareSet)
    }
}

public struct HitRatios: Codable, Sendable, Equatable {
    public var dram = 0.0
    public var nvme = 0.0
    public init() {}
}

public struct CompactionStatus: Codable, Sendable, Equatable {
    public var running = false
    public var runs = 0
    public var threshold = 0.0
    public var candidates = 0
    public var segmentsCompacted = 0
    public var blocksMoved = 0
    public var bytesMoved: UInt64 = 0
    public var bytesReclaimed: UInt64 = 0
    public var seconds = 0.0
    public var error: String?
    public init() {}

    enum CodingKeys: String, CodingKey {
        case running, runs, threshold, candidates, segmentsCompacted = "segments_compacted", blocksMoved = "blocks_moved"
        case bytesMoved = "bytes_moved", bytesReclaimed = "bytes_reclaimed", seconds, error
    }
}

public struct DRAMStatus: Codable, Sendable, Equatable {
    public var enabled = false
    /// The tier broker's socket (what `.tw/dram` names).
    public var socket: String?
    /// Where the tier's memory comes from, and why.
    public var memory: String?
    public var domains = 0
    public var capacityBytes = 0
    public var residentBlocks = 0
    public var residentBytes = 0
    public var mountHits = 0
    public var mountMisses = 0
    public var mountHitRatio = 0.0
    public var mapHits = 0
    public var insertions = 0
    public var failedInsertions = 0
    public var evictions = 0
    public var promotions = 0
    public var reinsertions = 0
    public var policy = "S3-FIFO"
    public init() {}

    enum CodingKeys: String, CodingKey {
        case enabled, socket, memory, domains, capacityBytes = "capacity_bytes", residentBlocks = "resident_blocks"
        case residentBytes = "resident_bytes", mountHits = "mount_hits", mountMisses = "mount_misses"
        case mountHitRatio = "mount_hit_ratio", mapHits = "map_hits", insertions, failedInsertions = "failed_insertions"
        case evictions, promotions, reinsertions, policy
    }
}

public struct PrefetchStatus: Codable, Sendable, Equatable {
    public var enabled = false
    public var hinted = 0
    public var loaded = 0
    public var loadedHinted = 0
    public var loadedChain = 0
    public var loadedLearned = 0
    public var loadedFromCluster = 0
    public var alreadyResident = 0
    public var missing = 0
    public var dropped = 0
    public var late = 0
    public var expired = 0
    public var failed = 0
    public var used = 0
    public var wasted = 0
    public var pending = 0
    public var successorLinks = 0
    public var workers = 0
    public var bandwidthBytesPerSecond: UInt64 = 0
    public var depth = 0
    public init() {}

    enum CodingKeys: String, CodingKey {
        case enabled, hinted, loaded, loadedHinted = "loaded_hinted", loadedChain = "loaded_chain", loadedLearned = "loaded_learned"
        case loadedFromCluster = "loaded_from_cluster", alreadyResident = "already_resident", missing, dropped, late, expired
        case failed, used, wasted, pending, successorLinks = "successor_links", workers
        case bandwidthBytesPerSecond = "bandwidth_bytes_per_second", depth
    }
}

public struct Milliseconds: Codable, Sendable, Equatable {
    public var p50 = 0.0
    public var p99 = 0.0
    public var max = 0.0
    public init(p50: Double = 0, p99: Double = 0, max: Double = 0) {
        self.p50 = p50
        self.p99 = p99
        self.max = max
    }
}

public struct RemoteStatus: Codable, Sendable, Equatable {
    public var enabled = false
    public var location: String?
    public var connected = false
    public var queueDepth = 0
    public var queueCapacity = 0
    public var queued = 0
    public var published = 0
    public var publishedBytes: UInt64 = 0
    public var syncPublished = 0
    public var publishFailures = 0
    public var dropped = 0
    public var backpressureWaits = 0
    public var publishLagMs = Milliseconds()
    public var fetchMs = Milliseconds()
    public var clusterReadMs = Milliseconds()
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
    public var failed = 0
    public var connects = 0
    public var connectFailures = 0
    public var defaultShare: String?
    public var share: [String: String] = [:]
    public var lastError: String?
    public init() {}

    enum CodingKeys: String, CodingKey {
        case enabled, location, connected, queueDepth = "queue_depth", queueCapacity = "queue_capacity", queued, published
        case publishedBytes = "published_bytes", syncPublished = "sync_published", publishFailures = "publish_failures", dropped
        case backpressureWaits = "backpressure_waits", publishLagMs = "publish_lag_ms", fetchMs = "fetch_ms"
        case clusterReadMs = "cluster_read_ms", namespacesPublished = "namespaces_published", namespacesImported = "namespaces_imported"
        case fetched, fetchedBytes = "fetched_bytes", misses, negativeHits = "negative_hits", joinedFetches = "joined_fetches"
        case fetchFailures = "fetch_failures", skippedUnavailable = "skipped_unavailable", corrupt, touches, failed, connects
        case connectFailures = "connect_failures", defaultShare = "default_share", share, lastError = "last_error"
    }
}

public struct RecoveryStatus: Codable, Sendable, Equatable {
    public var segmentsFromSummary = 0
    public var segmentsScanned = 0
    public var blocks = 0
    public var directories = 0
    public var directoriesRestored = 0
    public var corruptRecords = 0
    public var tornTailBytes: UInt64 = 0
    public var bytesScanned: UInt64 = 0
    public var seconds = 0.0
    public init() {}

    enum CodingKeys: String, CodingKey {
        case segmentsFromSummary = "segments_from_summary", segmentsScanned = "segments_scanned", blocks, directories
        case directoriesRestored = "directories_restored", corruptRecords = "corrupt_records", tornTailBytes = "torn_tail_bytes"
        case bytesScanned = "bytes_scanned", seconds
    }
}

/// Requests served through the mount, bytes by tier, and read latency (the hot path's counters).
public struct OperationStatus: Codable, Sendable, Equatable {
    /// Requests by operation: lookup, read, write, commit, unlink.
    public var counts: [String: UInt64] = [:]
    /// Block bytes read through the mount by the tier that served them (dram, nvme), and written.
    public var readBytes: [String: UInt64] = [:]
    public var writtenBytes: UInt64 = 0
    /// Read request latency by tier: cumulative counts per upper bound in seconds (Prometheus buckets).
    public var readLatency: [String: LatencyHistogram] = [:]
    public init() {}

    enum CodingKeys: String, CodingKey {
        case counts, readBytes = "read_bytes", writtenBytes = "written_bytes", readLatency = "read_latency"
    }
}

public struct LatencyHistogram: Codable, Sendable, Equatable {
    /// Upper bounds in seconds, ascending; the last bucket (+Inf) is `count`.
    public var bounds: [Double] = []
    /// Cumulative counts: observations at most `bounds[i]`.
    public var cumulative: [UInt64] = []
    public var count: UInt64 = 0
    public var sumSeconds = 0.0
    public init() {}

    enum CodingKeys: String, CodingKey {
        case bounds, cumulative, count, sumSeconds = "sum_seconds"
    }
}

/// What writes in progress and open handles hold, against the per-user and total bounds.
public struct LimitStatus: Codable, Sendable, Equatable {
    public var pendingBlocks = 0
    public var stagedBytes: UInt64 = 0
    public var stagedBytesLimit: UInt64 = 0
    public var stagedBytesPerUserLimit: UInt64 = 0
    public var pendingBlocksPerUserLimit = 0
    public var hintBytesPerHandleLimit = 0
    public var refusedForLimits = 0
    public init() {}

    enum CodingKeys: String, CodingKey {
        case pendingBlocks = "pending_blocks", stagedBytes = "staged_bytes", stagedBytesLimit = "staged_bytes_limit"
        case stagedBytesPerUserLimit = "staged_bytes_per_user_limit", pendingBlocksPerUserLimit = "pending_blocks_per_user_limit"
        case hintBytesPerHandleLimit = "hint_bytes_per_handle_limit", refusedForLimits = "refused_for_limits"
    }
}

/// The JSON codecs the daemon and twctl use for these types.
public enum ControlJSON {
    public static func encode<T: Encodable>(_ value: T, pretty: Bool = false) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted] : [.sortedKeys]
        // The types hold only numbers, strings, arrays and maps: encoding cannot fail.
        guard var data = try? encoder.encode(value) else { return Array("{}".utf8) }
        data.append(UInt8(ascii: "\n"))
        return Array(data)
    }

    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try JSONDecoder().decode(type, from: Data(bytes))
    }
}
