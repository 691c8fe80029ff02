import Platform
import WarehouseCore

/// Where one block lies and what `stat` shows of it: what the in-memory index keeps per block (40
/// bytes with padding, plus the 16-byte key; docs/benchmarks.md measures the whole index per block).
public struct IndexEntry: Sendable, Equatable, BitwiseCopyable {
    public var segment: UInt32
    /// Offset of the record in the segment, in pages.
    public var page: UInt32
    public var storedLength: UInt32
    public var logicalLength: UInt32
    public var commitSeconds: UInt32
    /// The directory the block lies in (`DirectoryID`).
    public var directory: UInt32
    /// Sequence of the block record (its bytes): a name deleted and written again gets a higher one.
    public var sequence: UInt64
    public var namespaceID: UInt16
    /// Owner, group and mode, interned in `AttributeTable` (0: recorded by an older daemon).
    public var attributes: UInt16
    /// `EntryFlags` (never `tombstone`: the index holds only live blocks).
    public private(set) var flags: UInt8
    /// Pages of the record's header area.
    var headerPageCount: UInt8

    init(segment: UInt32, summary e: SummaryEntry, attributes: UInt16) {
        self.segment = segment
        page = e.page
        storedLength = e.storedLength
        logicalLength = e.logicalLength
        commitSeconds = e.commitSeconds
        directory = e.directory
        sequence = e.sequence
        namespaceID = e.namespaceID
        self.attributes = attributes
        flags = e.flags & EntryFlags.indexMask
        headerPageCount = e.headerPages
    }

    public var headerPages: Int { Int(headerPageCount) }
    public var isCanonical: Bool { flags & EntryFlags.canonical != 0 }
    public var isCompressed: Bool { flags & EntryFlags.compressed != 0 }
    public var wasAccessed: Bool { flags & EntryFlags.accessed != 0 }
    public var isUpdated: Bool { flags & EntryFlags.updated != 0 }
    mutating func setFlag(_ flag: UInt8, _ on: Bool) { flags = on ? flags | flag : flags & ~flag }

    /// Bytes of the record in its segment.
    public var recordSize: Int { headerPages * RecordFormat.alignment + RecordFormat.align(Int(storedLength)) }
    public var offset: UInt64 { UInt64(page) * UInt64(RecordFormat.alignment) }
}

extension EntryFlags {
    /// The flags an index entry keeps (a tombstone is never in the index).
    static let indexMask: UInt8 = canonical | compressed | accessed | updated | timed
    /// The block has an explicit modification time in its header (`utimes` while it was written).
    public static let timed: UInt8 = 1 << 5
}

/// What the index keeps of the few blocks that have more than their record's header says: the latest
/// update record (rename, chmod, chown, utimes) and an explicit modification time.
struct BlockExtras: Sendable, Equatable {
    /// Sequence of the latest update record of the name (0: none); eviction carries that one forward.
    var updateSequence: UInt64 = 0
    /// `utimes`' modification time, nanoseconds since the epoch (0: the commit time).
    var modifiedNanoseconds: UInt64 = 0
    /// `utimes`' access time (0: the modification time).
    var accessedNanoseconds: UInt64 = 0
    /// When the latest update record was written (the block's ctime; 0: the commit time).
    var changedNanoseconds: UInt64 = 0
    /// The name's key, when the block record was written under another one (a rename): listings and
    /// copies of the record need it, and the index keeps only hashes.
    var renamedKey: String? = nil
}

/// Owner, group and mode of blocks, interned: a node has few distinct ones, so the index keeps a
/// 16-bit class per block instead of ten bytes.
struct AttributeTable {
    private(set) var classes: [BlockOwnership] = [BlockOwnership(uid: 0, gid: 0, mode: 0o444)]
    private var ids: [BlockOwnership: UInt16] = [:]

    /// Class 0 stands for "recorded by an older daemon": the namespace's owner, mode 0444.
    static let legacy: UInt16 = 0

    init() {}

    /// The classes in their order (an index snapshot's entries refer to them by position).
    init?(classes: [BlockOwnership]) {
        guard !classes.isEmpty, classes.count <= Int(UInt16.max) else { return nil }
        self.classes = classes
        for (i, o) in classes.enumerated().dropFirst() where ids[o] == nil { ids[o] = UInt16(i) }
    }

    /// The class of `o`, or nil when 65535 distinct ones exist already.
    mutating func intern(_ o: BlockOwnership?) -> UInt16? {
        guard let o else { return Self.legacy }
        if let id = ids[o] { return id }
        guard classes.count < Int(UInt16.max) else { return nil }
        let id = UInt16(classes.count)
        classes.append(o)
        ids[o] = id
        return id
    }

    func ownership(_ id: UInt16, namespace: NamespaceInfo?) -> BlockOwnership {
        if id == Self.legacy || Int(id) >= classes.count {
            return BlockOwnership(uid: namespace?.owner ?? 0, gid: namespace?.group ?? 0, mode: 0o444)
        }
        return classes[Int(id)]
    }
}

/// A segment file: its id, its open file, and the group-commit state of its writers.
final class Segment: Sendable {
    let id: UInt32
    let file: any DeviceFile
    let commit = GroupCommit()

    init(id: UInt32, file: any DeviceFile) {
        self.id = id
        self.file = file
    }
}

/// What the store tracks of a segment, under the store's lock.
struct SegmentState {
    let segment: Segment
    /// Bytes reserved so far: the next record goes here.
    var length: UInt64
    var liveBytes: UInt64 = 0
    var sealed = false
    var summaryWritten = false
    /// Writes reserved but not yet finished; the summary waits until this is zero.
    var inflight = 0
    /// Every record of the segment in log order (blocks, tombstones, updates): the summary to be written at seal.
    var summary: [SummaryEntry] = []
    /// When a block of the segment was last read (monotonic ns); starts at the segment's creation or
    /// load, so a fresh segment is not taken for the coldest.
    var lastAccess: UInt64 = monotonicNanoseconds()
    /// Tombstones and update records the segment holds: dropping it unseen could bring deleted blocks
    /// back or lose a rename, so eviction carries them forward.
    var metadataRecords = 0
    /// Being compacted or evicted: not a candidate for either.
    var busy = false
    /// Live blocks per namespace: eviction must copy a pinned namespace's blocks forward.
    var liveBlocksByNamespace: [UInt16: Int] = [:]

    func holdsBlocks(of namespaces: Set<UInt16>) -> Bool {
        !namespaces.isEmpty && liveBlocksByNamespace.contains { namespaces.contains($0.key) && $0.value > 0 }
    }

    mutating func countLive(_ namespaceID: UInt16, _ delta: Int) {
        liveBlocksByNamespace[namespaceID, default: 0] += delta
    }

    var deadBytes: UInt64 {
        let payloadArea = length > UInt64(SegmentFormat.headerSize) ? length - UInt64(SegmentFormat.headerSize) : 0
        return payloadArea > liveBytes ? payloadArea - liveBytes : 0
    }
    var deadShare: Double { length == 0 ? 0 : Double(deadBytes) / Double(length) }
}

/// Everything the store's lock guards.
struct StoreState {
    var index = BlockIndex()
    /// Names with a put in flight (reserved, not yet published): a second writer gets `.alreadyPresent`.
    var pending: Set<BlockKey> = []
    var extras: [BlockKey: BlockExtras] = [:]
    var attributes = AttributeTable()
    var segments: [UInt32: SegmentState] = [:]
    var activeID: UInt32 = 0
    var nextSequence: UInt64 = 1
    var usedBytes: UInt64 = 0
    /// Bytes the store may use given the disk's free space (other files share the disk), refreshed
    /// when a segment is started and after a write failed for lack of space.
    var spaceLimit: UInt64 = .max
    var namespaces = NamespaceTable()
    var usage: [UInt16: NamespaceUsage] = [:]
    var directories = DirectoryTree()
    var stats = StoreCounters()
    var closed = false
    /// The next segment's file, made ready (header written, directory synced) outside the lock after the
    /// last roll, so the next roll only switches to it (`BlockStore.prepareSpareSegment`).
    var spareSegment: (id: UInt32, file: any DeviceFile)?
    /// The id a spare is wanted for (set by a roll), and the id whose file is being made now.
    var spareWanted: UInt32?
    var spareBeingMade: UInt32?

    mutating func takeSequence() -> UInt64 {
        defer { nextSequence += 1 }
        return nextSequence
    }

    /// Adds a block to the index, its directory and its namespace's figures (the caller accounts the segment).
    mutating func link(_ key: BlockKey, _ entry: IndexEntry, now: UInt64, quiet: Bool = false) {
        let slot = index.insert(key, entry)
        usage[entry.namespaceID, default: NamespaceUsage()].add(entry)
        if quiet {
            directories.addBlockQuietly(slot, namespace: entry.namespaceID, directory: entry.directory)
        } else {
            directories.addBlock(slot, namespace: entry.namespaceID, directory: entry.directory, now: now)
        }
    }

    /// Removes a block from the index, its directory, its namespace's figures and its segment's live bytes.
    @discardableResult
    mutating func unlink(_ key: BlockKey, now: UInt64) -> IndexEntry? {
        guard let (slot, e) = index.remove(key) else { return nil }
        extras[key] = nil
        usage[e.namespaceID]?.remove(e)
        segments[e.segment]?.liveBytes -= UInt64(e.recordSize)
        segments[e.segment]?.countLive(e.namespaceID, -1)
        directories.removeBlock(slot, namespace: e.namespaceID, directory: e.directory, now: now)
        return e
    }
}

extension NamespaceUsage {
    mutating func add(_ e: IndexEntry) {
        blocks += 1
        logicalBytes += UInt64(e.logicalLength)
        storedBytes += UInt64(e.recordSize)
    }

    mutating func remove(_ e: IndexEntry) {
        blocks -= 1
        logicalBytes -= UInt64(e.logicalLength)
        storedBytes -= UInt64(e.recordSize)
    }
}
