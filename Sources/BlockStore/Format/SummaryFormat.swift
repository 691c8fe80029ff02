// The segment summary of docs/format.md ("Summaries"): the index checkpoint of one sealed segment.
import WarehouseCore

/// Layout of a segment summary (`segment-N.twsum`): the index checkpoint written when segment N is
/// sealed, so recovery loads it instead of scanning the segment. A 32-byte header, fixed-size entries
/// in log order, and an XXH3-64 of everything before it. Version 2 entries (64 bytes) add the record
/// type, owner, mode and directory of each record; version 1 summaries (48-byte entries) are still read.
public enum SummaryFormat {
    public static let magic: [UInt8] = Array("TWSUMRY1".utf8)
    public static let version: UInt32 = 2
    public static let headerSize = 32
    public static let entrySize = 64
    public static let version1EntrySize = 48
    public static let trailerSize = 8

    // Header field offsets.
    static let versionOffset = 8
    static let entrySizeOffset = 12
    static let segmentOffset = 16
    static let countOffset = 24

    // Entry field offsets (version 2).
    static let keyLowOffset = 0
    static let keyHighOffset = 8
    static let sequenceOffset = 16
    static let pageOffset = 24
    static let namespaceOffset = 28
    static let typeOffset = 30
    static let flagsOffset = 31
    static let headerPagesOffset = 32
    static let fanoutOffset = 33
    static let modeOffset = 34
    static let uidOffset = 36
    static let gidOffset = 40
    static let directoryOffset = 44
    /// Block records: stored and logical length, commit seconds. Update records: the data sequence and
    /// the modification time in the same 16 bytes.
    static let storedLengthOffset = 48
    static let logicalLengthOffset = 52
    static let commitSecondsOffset = 56
    static let dataSequenceOffset = 48
    static let modifiedOffset = 56
}

/// Flags of an index or summary entry.
public enum EntryFlags {
    public static let tombstone: UInt8 = 1 << 0
    public static let canonical: UInt8 = 1 << 1
    public static let compressed: UInt8 = 1 << 2
    /// Read since written or last copied forward: a candidate for reinsertion at eviction.
    public static let accessed: UInt8 = 1 << 3
    /// The name's binding or attributes come from an update record, not from the block record's own
    /// header (renamed, chmod, chown, utimes): a copy of the block must carry them (see `Evictor`).
    public static let updated: UInt8 = 1 << 4
}

/// One entry of a summary: where a record of the segment lies and what the index needs of it.
public struct SummaryEntry: Sendable, Equatable {
    public var key: BlockKey
    public var sequence: UInt64
    /// Offset of the record in the segment, in pages.
    public var page: UInt32
    public var type: RecordType
    public var storedLength: UInt32 = 0
    public var logicalLength: UInt32 = 0
    public var commitSeconds: UInt32 = 0
    public var namespaceID: UInt16
    public var fanout: UInt8 = 0
    /// `EntryFlags` (tombstone, canonical, compressed).
    public var flags: UInt8 = 0
    public var headerPages: UInt8
    /// The directory of the block (`DirectoryTree`); 0 is the namespace itself.
    public var directory: UInt32 = 0
    /// Owner and mode; nil for entries of version 1 summaries.
    public var ownership: BlockOwnership?
    /// Update records: the block record the name now stands for, and an explicit modification time (0: none).
    public var dataSequence: UInt64 = 0
    public var modifiedNanoseconds: UInt64 = 0
    /// In memory only (not in the file): a timed block's access time, for `finish`.
    public var accessedNanoseconds: UInt64 = 0

    public var isTombstone: Bool { type == .tombstone }

    func encode(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        typealias F = SummaryFormat
        buffer.baseAddress!.advanced(by: offset).initializeMemory(as: UInt8.self, repeating: 0, count: F.entrySize)
        LittleEndian.store(key.low, at: offset + F.keyLowOffset, in: buffer)
        LittleEndian.store(key.high, at: offset + F.keyHighOffset, in: buffer)
        LittleEndian.store(sequence, at: offset + F.sequenceOffset, in: buffer)
        LittleEndian.store(page, at: offset + F.pageOffset, in: buffer)
        LittleEndian.store(namespaceID, at: offset + F.namespaceOffset, in: buffer)
        buffer[offset + F.typeOffset] = type.rawValue
        buffer[offset + F.flagsOffset] = flags
        buffer[offset + F.headerPagesOffset] = headerPages
        buffer[offset + F.fanoutOffset] = fanout
        let o = ownership ?? BlockOwnership(uid: 0, gid: 0, mode: 0)
        // Mode 0xFFFF marks "no owner recorded" (a legacy record); real modes fit in 12 bits.
        LittleEndian.store(ownership == nil ? UInt16.max : UInt16(o.mode), at: offset + F.modeOffset, in: buffer)
        LittleEndian.store(o.uid, at: offset + F.uidOffset, in: buffer)
        LittleEndian.store(o.gid, at: offset + F.gidOffset, in: buffer)
        LittleEndian.store(directory, at: offset + F.directoryOffset, in: buffer)
        if type == .update {
            LittleEndian.store(dataSequence, at: offset + F.dataSequenceOffset, in: buffer)
            LittleEndian.store(modifiedNanoseconds, at: offset + F.modifiedOffset, in: buffer)
        } else {
            LittleEndian.store(storedLength, at: offset + F.storedLengthOffset, in: buffer)
            LittleEndian.store(logicalLength, at: offset + F.logicalLengthOffset, in: buffer)
            LittleEndian.store(commitSeconds, at: offset + F.commitSecondsOffset, in: buffer)
        }
    }

    /// Decodes a version 2 entry; nil when its type is unknown (the summary is then not trusted).
    static func decode(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> SummaryEntry? {
        typealias F = SummaryFormat
        guard let type = RecordType(rawValue: buffer[offset + F.typeOffset]) else { return nil }
        let mode = LittleEndian.load(UInt16.self, at: offset + F.modeOffset, in: buffer)
        var e = SummaryEntry(
            key: BlockKey(low: LittleEndian.load(UInt64.self, at: offset + F.keyLowOffset, in: buffer),
                          high: LittleEndian.load(UInt64.self, at: offset + F.keyHighOffset, in: buffer)),
            sequence: LittleEndian.load(UInt64.self, at: offset + F.sequenceOffset, in: buffer),
            page: LittleEndian.load(UInt32.self, at: offset + F.pageOffset, in: buffer),
            type: type,
            namespaceID: LittleEndian.load(UInt16.self, at: offset + F.namespaceOffset, in: buffer),
            fanout: buffer[offset + F.fanoutOffset], flags: buffer[offset + F.flagsOffset],
            headerPages: buffer[offset + F.headerPagesOffset],
            directory: LittleEndian.load(UInt32.self, at: offset + F.directoryOffset, in: buffer))
        if mode != UInt16.max {
            e.ownership = BlockOwnership(uid: LittleEndian.load(UInt32.self, at: offset + F.uidOffset, in: buffer),
                                         gid: LittleEndian.load(UInt32.self, at: offset + F.gidOffset, in: buffer),
                                         mode: UInt32(mode))
        }
        if type == .update {
            e.dataSequence = LittleEndian.load(UInt64.self, at: offset + F.dataSequenceOffset, in: buffer)
            e.modifiedNanoseconds = LittleEndian.load(UInt64.self, at: offset + F.modifiedOffset, in: buffer)
        } else {
            e.storedLength = LittleEndian.load(UInt32.self, at: offset + F.storedLengthOffset, in: buffer)
            e.logicalLength = LittleEndian.load(UInt32.self, at: offset + F.logicalLengthOffset, in: buffer)
            e.commitSeconds = LittleEndian.load(UInt32.self, at: offset + F.commitSecondsOffset, in: buffer)
        }
        return e
    }

    /// Decodes a version 1 entry (48 bytes: no type, owner or directory). Canonical blocks lie in their
    /// fan-out directory, every other name in the namespace itself.
    static func decodeVersion1(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> SummaryEntry {
        let flags = buffer[offset + 43]
        let fanout = buffer[offset + 42]
        return SummaryEntry(
            key: BlockKey(low: LittleEndian.load(UInt64.self, at: offset, in: buffer),
                          high: LittleEndian.load(UInt64.self, at: offset + 8, in: buffer)),
            sequence: LittleEndian.load(UInt64.self, at: offset + 16, in: buffer),
            page: LittleEndian.load(UInt32.self, at: offset + 24, in: buffer),
            type: flags & EntryFlags.tombstone != 0 ? .tombstone : .block,
            storedLength: LittleEndian.load(UInt32.self, at: offset + 28, in: buffer),
            logicalLength: LittleEndian.load(UInt32.self, at: offset + 32, in: buffer),
            commitSeconds: LittleEndian.load(UInt32.self, at: offset + 36, in: buffer),
            namespaceID: LittleEndian.load(UInt16.self, at: offset + 40, in: buffer),
            fanout: fanout, flags: flags, headerPages: buffer[offset + 44],
            directory: flags & EntryFlags.canonical != 0 ? DirectoryID.fanout(fanout) : DirectoryID.namespaceRoot)
    }

    /// Encodes a whole summary file for segment `segmentID`.
    public static func encodeFile(segmentID: UInt32, entries: [SummaryEntry]) -> [UInt8] {
        typealias F = SummaryFormat
        let size = F.headerSize + entries.count * F.entrySize + F.trailerSize
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { raw in
            for (i, b) in F.magic.enumerated() { raw[i] = b }
            LittleEndian.store(F.version, at: F.versionOffset, in: raw)
            LittleEndian.store(UInt32(F.entrySize), at: F.entrySizeOffset, in: raw)
            LittleEndian.store(UInt64(segmentID), at: F.segmentOffset, in: raw)
            LittleEndian.store(UInt64(entries.count), at: F.countOffset, in: raw)
            for (i, e) in entries.enumerated() { e.encode(into: raw, at: F.headerSize + i * F.entrySize) }
            let body = size - F.trailerSize
            LittleEndian.store(Checksum.xxh3(UnsafeRawBufferPointer(rebasing: raw[0..<body])), at: body, in: raw)
        }
        return bytes
    }

    /// Decodes a summary file; nil when it is damaged or belongs to another segment (then recovery scans).
    public static func decodeFile(_ bytes: [UInt8], segmentID: UInt32) -> [SummaryEntry]? {
        typealias F = SummaryFormat
        return bytes.withUnsafeBytes { raw -> [SummaryEntry]? in
            guard raw.count >= F.headerSize + F.trailerSize, Array(raw[0..<8]) == F.magic else { return nil }
            let version = LittleEndian.load(UInt32.self, at: F.versionOffset, in: raw)
            let entrySize = version == 1 ? F.version1EntrySize : F.entrySize
            guard version == 1 || version == F.version,
                  LittleEndian.load(UInt32.self, at: F.entrySizeOffset, in: raw) == UInt32(entrySize),
                  LittleEndian.load(UInt64.self, at: F.segmentOffset, in: raw) == UInt64(segmentID) else { return nil }
            // The count is checked against the file size before any arithmetic on it: a damaged count
            // must make the summary invalid (recovery then scans), never trap on overflow.
            let storedCount = LittleEndian.load(UInt64.self, at: F.countOffset, in: raw)
            let entryBytes = raw.count - F.headerSize - F.trailerSize
            guard entryBytes % entrySize == 0, storedCount == UInt64(entryBytes / entrySize) else { return nil }
            let count = Int(storedCount)
            let body = F.headerSize + count * entrySize
            guard LittleEndian.load(UInt64.self, at: body, in: raw) == Checksum.xxh3(UnsafeRawBufferPointer(rebasing: raw[0..<body]))
            else { return nil }
            var entries: [SummaryEntry] = []
            entries.reserveCapacity(count)
            for i in 0..<count {
                let at = F.headerSize + i * entrySize
                if version == 1 {
                    entries.append(decodeVersion1(raw, at: at))
                } else {
                    guard let e = decode(raw, at: at) else { return nil }
                    entries.append(e)
                }
            }
            return entries
        }
    }
}
