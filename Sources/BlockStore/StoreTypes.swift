import Platform
import WarehouseCore

/// The verified bytes of one block, in a buffer the caller may keep.
public struct BlockData: Sendable {
    public let buffer: AlignedBuffer
    public let offset: Int
    public let count: Int
    public let commitSeconds: UInt32
    /// XXH3-64 of the bytes, when known without another pass (uncompressed records).
    public var checksum: UInt64? = nil

    /// Calls `body` with the block's bytes; the pointer is valid only inside it.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(buffer) { try body(buffer.bytes(offset, count: count)) }
    }

    /// A copy of the block's bytes.
    public var array: [UInt8] { withBytes { Array($0) } }
}

/// What `attributes` reports of a block: all from memory, no I/O.
public struct BlockAttributes: Sendable, Equatable {
    public var logicalLength: Int
    public var storedLength: Int
    public var commitSeconds: UInt32
    /// `utimes`' modification time (nanoseconds since the epoch), nil: the commit time.
    public var modifiedNanoseconds: UInt64?
    /// `utimes`' access time, nil: the modification time.
    public var accessedNanoseconds: UInt64? = nil
    /// The time of the latest chmod, chown, utimes or rename; nil: the commit time.
    public var changedNanoseconds: UInt64? = nil
    public var namespaceID: UInt16
    public var directory: UInt32
    public var ownership: BlockOwnership
    public var compressed: Bool
    /// Sequence of the block record: changes when a name is deleted and written again.
    public var sequence: UInt64
}

/// Whether a put stored a new block or found one already there (first write wins).
public enum PutOutcome: Sendable, Equatable {
    /// Stored as a new record; a name written again later gets a higher sequence.
    case stored(sequence: UInt64)
    case alreadyPresent

    public var isStored: Bool {
        if case .stored = self { return true }
        return false
    }
}

/// A block found by a directory listing, to turn into a name with `name(of:)`.
public struct BlockLocator: Sendable {
    let segment: Segment
    let page: UInt32
    let headerPages: Int
    public let key: BlockKey
    /// The block record's sequence (a name written again gets a higher one).
    public let sequence: UInt64
    /// The key when memory has it (a renamed block, whose record still holds its old name).
    public let knownKey: String?
}

/// The store's figures of the moment, and its counters since it opened (read as `statistics.puts`).
@dynamicMemberLookup
public struct StoreStatistics: Sendable {
    public var counters: StoreCounters
    public var blocks = 0
    public var capacityBytes: UInt64 = 0
    public var usedBytes: UInt64 = 0
    public var liveBytes: UInt64 = 0
    public var deadBytes: UInt64 = 0
    public var segments = 0
    public var directories = 0
    public var namespaces: [(NamespaceInfo, NamespaceUsage)] = []

    public subscript<Value>(dynamicMember path: KeyPath<StoreCounters, Value>) -> Value { counters[keyPath: path] }
}

/// What a compaction did.
public struct CompactionReport: Sendable {
    public init() {}
    public var segmentsCompacted = 0
    public var blocksMoved = 0
    public var bytesMoved: UInt64 = 0
    public var bytesReclaimed: UInt64 = 0
}

/// Where a block's record is now. Reading through it works even after the block is unlinked, evicted
/// or moved (the segment file stays open while referenced), as an open file outlives its name.
public struct LocatedBlock: Sendable {
    let entry: IndexEntry
    let segment: Segment
    public let namespace: String
    public let key: String
    public var logicalLength: Int { Int(entry.logicalLength) }
    public var commitSeconds: UInt32 { entry.commitSeconds }
    public var storedLength: Int { Int(entry.storedLength) }
    /// The record's sequence: a name deleted and written again gets a higher one.
    public var sequence: UInt64 { entry.sequence }
    public var blockKey: BlockKey
}
