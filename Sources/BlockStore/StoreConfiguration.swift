import WarehouseCore
/// When `put` and `remove` return relative to durability.
public enum SyncPolicy: String, Sendable, CaseIterable {
    /// Returns after the record is on stable storage (`fdatasync`, shared by concurrent writers).
    case always
    /// Returns once the record is in the kernel; a background flusher syncs every `batchInterval`.
    case batch
    /// Returns once the record is in the kernel; syncs only at segment seal and shutdown.
    case none
}

/// Per-namespace payload compression.
public enum CompressionPolicy: String, Sendable, CaseIterable {
    case off, lz4
    /// LZ4, kept only when it saves at least 1/8 of the bytes.
    case auto
}

/// Which sealed segment to evict first.
public enum EvictionOrder: String, Sendable, CaseIterable {
    /// The segment written longest ago (FIFO).
    case oldest
    /// The segment whose blocks were read least recently.
    case coldest
}

/// Settings of a store.
public struct StoreConfiguration: Sendable {
    /// Bytes of segment files the store may use.
    public var capacity: UInt64
    /// A segment is sealed when the next record would take it past this size.
    public var segmentSize: UInt64
    public var maxBlockSize: Int
    public var sync: SyncPolicy
    public var batchIntervalNanoseconds: UInt64
    public var eviction: EvictionOrder
    /// Blocks read since they were written are copied forward instead of evicted, up to this share of a segment.
    public var reinsertionShare: Double
    /// Background eviction starts above this share of the capacity and stops below `lowWatermark`.
    public var highWatermark: Double
    public var lowWatermark: Double
    /// Background compaction rewrites a sealed segment whose dead share reaches this.
    public var compactionThreshold: Double
    public var backgroundCompaction: Bool

    public static let defaultMaxBlockSize = 256 << 20
    /// Under `--sync batch`, the most bytes of a segment written through the page cache and not yet
    /// synced before a commit waits for the sync (`BlockStore.settle`): what a power cut can lose when
    /// writers outpace the disk. 32 MiB is 10-30 ms of writing at 1-3 GB/s.
    public static let batchBacklogBytes: UInt64 = 32 << 20

    public init(capacity: UInt64, segmentSize: UInt64? = nil, maxBlockSize: Int = StoreConfiguration.defaultMaxBlockSize,
                sync: SyncPolicy = .batch, batchIntervalNanoseconds: UInt64 = 5_000_000, eviction: EvictionOrder = .coldest,
                reinsertionShare: Double = 0.2, highWatermark: Double = 0.95, lowWatermark: Double = 0.90,
                compactionThreshold: Double = 0.5, backgroundCompaction: Bool = true) {
        self.capacity = capacity
        let derived = min(UInt64(256 << 20), max(UInt64(16 << 20), capacity / 16))
        self.segmentSize = UInt64(RecordFormat.align(Int(segmentSize ?? derived)))
        self.maxBlockSize = maxBlockSize
        self.sync = sync
        self.batchIntervalNanoseconds = batchIntervalNanoseconds
        self.eviction = eviction
        self.reinsertionShare = reinsertionShare
        self.highWatermark = highWatermark
        self.lowWatermark = lowWatermark
        self.compactionThreshold = compactionThreshold
        self.backgroundCompaction = backgroundCompaction
    }
}
