// ControlPlane: the typed schema of what the daemon tells and is told through its control area
// (docs/operations.md): the status (`.tw/status`, `twctl status`, the Prometheus metrics), the requests
// and answers of `.tw/ctl`, and the counters engines report through `.tw/engine`. twfs encodes these
// values and twctl decodes the same types, so a key cannot silently change on one side. Plain values:
// safe from any thread.
import Foundation
import WarehouseCore

/// Everything `.tw/status` shows, one JSON object: the store's figures and the parts' reports
/// (`StatusFigures`) and the store's counters (`StoreCounters`), both at the top level of the object
/// (the keys were flat before the counters had a type of their own).
public typealias StatusReport = Merged<StatusFigures, StoreCounters>

extension Merged where Base == StatusFigures, Extra == StoreCounters {
    public init() { self.init(StatusFigures(), StoreCounters()) }
}

/// The status's figures of the moment and the parts' reports. Keys are snake_case and stable (tests and
/// tools read them); namespace-specific parts hold only the namespaces the reader may read.
public struct StatusFigures: Codable, Sendable, Equatable {
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
    public var hitRatios = HitRatios()
    public var compaction = CompactionStatus()
    public var dramTier = DRAMStatus()
    public var prefetch = PrefetchReport()
    public var remote = ClusterReport()
    public var recovery = RecoveryReport()
    public var operations = OperationStatus()
    public var limits = LimitStatus()
    public var engines: [String: [String: Int64]] = [:]

    public init() {}

    enum CodingKeys: String, CodingKey {
        case store, sync, blocks, directories
        case capacityBytes = "capacity_bytes", usedBytes = "used_bytes", liveBytes = "live_bytes", deadBytes = "dead_bytes"
        case deadRatio = "dead_ratio", segments, segmentBytes = "segment_bytes", maxBlockBytes = "max_block_bytes"
        case namespaces, namespaceUsage = "namespace_usage"
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
    @WrittenWhenNil public var shareSet: String? = nil

    public init() {}

    enum CodingKeys: String, CodingKey {
        case name, owner, group, mode, blocks, logicalBytes = "logical_bytes", storedBytes = "stored_bytes"
        case reservedBytes = "reserved_bytes", compression, quotaBytes = "quota_bytes", ttlSeconds = "ttl_seconds", pinned
        case share, shareSet = "share_set"
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

/// The status's `dram_tier`: the daemon's settings of the tier (`DRAMSettings`) and the tiers' own
/// figures (`TierStatistics`, as `DRAMTiers` counts them), in one JSON object.
public typealias DRAMStatus = Merged<DRAMSettings, TierStatistics>

extension Merged where Base == DRAMSettings, Extra == TierStatistics {
    public init() { self.init(DRAMSettings(), TierStatistics()) }
}

/// How the daemon runs its DRAM tier (part of the status's `dram_tier`).
public struct DRAMSettings: Codable, Sendable, Equatable {
    public var enabled = false
    /// The tier broker's socket (what `.tw/dram` names).
    public var socket: String?
    /// Where the tier's memory comes from, and why.
    public var memory: String?
    public var domains = 0
    public var mountHitRatio = 0.0
    public var policy = "S3-FIFO"
    public init() {}

    enum CodingKeys: String, CodingKey {
        case enabled, socket, memory, domains, mountHitRatio = "mount_hit_ratio", policy
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
