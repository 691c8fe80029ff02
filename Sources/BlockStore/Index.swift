import Platform

/// Where one block lies: what the in-memory index keeps per block (32 bytes, plus the 16-byte key).
///
/// 10 million blocks fit in under 1 GiB of index: a `Dictionary` of 48-byte slots at a load factor
/// between 0.375 and 0.75 costs 64 to 128 bytes a block (measured by `twctl bench store`).
public struct IndexEntry: Sendable, Equatable {
    public var segment: UInt32
    /// Offset of the record in the segment, in pages.
    public var page: UInt32
    public var storedLength: UInt32
    public var logicalLength: UInt32
    public var commitSeconds: UInt32
    public var namespaceID: UInt16
    /// First byte of a canonical hash (its fan-out directory); 0 for other names.
    public var fanout: UInt8
    /// Low four bits: `EntryFlags`; high four bits: pages of the record's header area.
    var packed: UInt8
    public var sequence: UInt64

    init(segment: UInt32, summary e: SummaryEntry) {
        self.segment = segment
        page = e.page
        storedLength = e.storedLength
        logicalLength = e.logicalLength
        commitSeconds = e.commitSeconds
        namespaceID = e.namespaceID
        fanout = e.fanout
        packed = (e.flags & 0x0F) | (e.headerPages << 4)
        sequence = e.sequence
    }

    public var flags: UInt8 { packed & 0x0F }
    public var headerPages: Int { Int(packed >> 4) }
    public var isTombstone: Bool { flags & EntryFlags.tombstone != 0 }
    public var isCanonical: Bool { flags & EntryFlags.canonical != 0 }
    public var isCompressed: Bool { flags & EntryFlags.compressed != 0 }
    public var wasAccessed: Bool { flags & EntryFlags.accessed != 0 }
    mutating func setAccessed(_ on: Bool) { packed = on ? packed | EntryFlags.accessed : packed & ~EntryFlags.accessed }

    /// Bytes of the record in its segment.
    public var recordSize: Int { headerPages * RecordFormat.alignment + RecordFormat.align(Int(storedLength)) }
    public var offset: UInt64 { UInt64(page) * UInt64(RecordFormat.alignment) }

    func summary(key: BlockKey) -> SummaryEntry {
        SummaryEntry(key: key, sequence: sequence, page: page, storedLength: storedLength, logicalLength: logicalLength,
                     commitSeconds: commitSeconds, namespaceID: namespaceID, fanout: fanout,
                     flags: flags & ~EntryFlags.accessed, headerPages: UInt8(headerPages))
    }
}

/// Flags of an index or summary entry.
public enum EntryFlags {
    public static let tombstone: UInt8 = 1 << 0
    public static let canonical: UInt8 = 1 << 1
    public static let compressed: UInt8 = 1 << 2
    /// Read since written or last copied forward: a candidate for reinsertion at eviction.
    public static let accessed: UInt8 = 1 << 3
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
    /// Every record of the segment in log order, blocks and tombstones: the summary to be written at seal.
    var summary: [SummaryEntry] = []
    /// When a block of the segment was last read (monotonic ns); starts at the segment's creation or
    /// load, so a fresh segment is not taken for the coldest.
    var lastAccess: UInt64 = monotonicNanoseconds()
    /// Tombstones the segment holds: dropping it unseen could bring deleted blocks back.
    var tombstones = 0
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

/// Group commit: writers that need durability share `fdatasync` calls. A writer takes a ticket after
/// its write completed; a sync started after ticket T was handed out covers every write up to T.
final class GroupCommit: @unchecked Sendable {
    // Safe: every field is read and written only with `lock` held.
    private let lock = ConditionLock()
    private var completed: UInt64 = 0
    private var synced: UInt64 = 0
    private var syncing = false

    /// Records that a write finished; returns its ticket.
    func writeCompleted() -> UInt64 {
        lock.withLock {
            completed += 1
            return completed
        }
    }

    var hasUnsyncedWrites: Bool { lock.withLock { completed > synced } }

    /// Returns once every write up to `ticket` is durable, syncing `file` itself or waiting for a sync in flight.
    func waitDurable(ticket: UInt64, file: any DeviceFile) throws {
        lock.lock()
        defer { lock.unlock() }
        while synced < ticket {
            if syncing {
                lock.wait()
                continue
            }
            syncing = true
            let target = completed
            lock.unlock()
            var failure: (any Error)?
            do { try file.synchronize() } catch { failure = error }
            lock.lock()
            syncing = false
            if failure == nil { synced = max(synced, target) }
            lock.broadcast()
            if let failure { throw failure }
        }
    }

    /// Syncs every write completed so far.
    func synchronizeAll(file: any DeviceFile) throws {
        let ticket = lock.withLock { completed }
        try waitDurable(ticket: ticket, file: file)
    }
}
