/// Byte layout of segment files, records and segment summaries. The specification is
/// `docs/format.md`; this file owns the constants and is the only code that encodes or decodes them.
/// All integers are little-endian. Bump `version` whenever a layout changes.

/// The header at the start of every segment file.
public enum SegmentFormat {
    public static let magic: [UInt8] = Array("TWSEGMT1".utf8)
    public static let version: UInt32 = 1
    /// The segment header occupies one page; the first record starts right after it.
    public static let headerSize = 4096
    /// Bytes of the header that carry data (the rest of the page is zero).
    public static let usedHeaderBytes = 40
    public static let filePrefix = "segment-"
    public static let dataSuffix = ".twlog"
    public static let summarySuffix = ".twsum"

    public static func dataFileName(_ id: UInt32) -> String { filePrefix + paddedID(id) + dataSuffix }
    public static func summaryFileName(_ id: UInt32) -> String { filePrefix + paddedID(id) + summarySuffix }

    static func paddedID(_ id: UInt32) -> String {
        let digits = String(id)
        return String(repeating: "0", count: max(0, 10 - digits.count)) + digits
    }

    /// Parses `segment-0000000012.twlog` / `.twsum` into (12, isSummary).
    public static func parseFileName(_ name: String) -> (id: UInt32, isSummary: Bool)? {
        guard name.hasPrefix(filePrefix) else { return nil }
        let isSummary: Bool
        if name.hasSuffix(dataSuffix) { isSummary = false } else if name.hasSuffix(summarySuffix) { isSummary = true } else { return nil }
        let digits = name.utf8.dropFirst(filePrefix.utf8.count).dropLast(dataSuffix.utf8.count)
        // Only the ten ASCII digits `dataFileName` writes: `UInt32("+000000012")` is 12 too, and a
        // stray file so named would stand for segment 12 without being its file.
        guard digits.count == 10, digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let id = UInt32(String(decoding: digits, as: UTF8.self)) else { return nil }
        return (id, isSummary)
    }

    /// Encodes the header page of segment `id`.
    public static func encodeHeader(id: UInt32, createdNanoseconds: UInt64, into page: UnsafeMutableRawBufferPointer) {
        precondition(page.count >= headerSize)
        page.initializeMemory(as: UInt8.self, repeating: 0)
        for (i, b) in magic.enumerated() { page[i] = b }
        LittleEndian.store(version, at: 8, in: page)
        LittleEndian.store(UInt32(headerSize), at: 12, in: page)
        LittleEndian.store(UInt64(id), at: 16, in: page)
        LittleEndian.store(createdNanoseconds, at: 24, in: page)
        LittleEndian.store(Checksum.xxh3(UnsafeRawBufferPointer(rebasing: page[0..<32])), at: 32, in: page)
    }

    /// Returns the segment id if `page` is a valid header, nil otherwise.
    public static func decodeHeader(_ page: UnsafeRawBufferPointer) -> UInt32? {
        guard page.count >= usedHeaderBytes, Array(page[0..<8]) == magic,
              LittleEndian.load(UInt32.self, at: 8, in: page) == version,
              LittleEndian.load(UInt64.self, at: 32, in: page) == Checksum.xxh3(UnsafeRawBufferPointer(rebasing: page[0..<32]))
        else { return nil }
        return UInt32(truncatingIfNeeded: LittleEndian.load(UInt64.self, at: 16, in: page))
    }
}

/// The kind of a record.
public enum RecordType: UInt8, Sendable {
    case block = 1
    case tombstone = 2
}

/// Layout of one record: a 64-byte fixed header, namespace, key and metadata bytes, zero padding to
/// a page, then the stored payload padded to a page. Offsets below are within the fixed header.
public enum RecordFormat {
    public static let magic: UInt32 = 0x3152_5754 // bytes "TWR1"
    public static let version: UInt8 = 1
    public static let fixedHeaderSize = 64
    /// Records and payloads start on page boundaries so payloads can be read with O_DIRECT.
    public static let alignment = 4096
    /// Metadata (the xattrs of DESIGN.md) is at most this many bytes, so a header area is at most 5 pages.
    public static let maxMetadataLength = 16 * 1024

    public static let flagCompressedLZ4: UInt8 = 1 << 0
    /// Zeros for padding writes; the header checksum reads its own field as these.
    static let zeroPage = AlignedZeroPage()

    // Field offsets in the fixed header.
    static let magicOffset = 0
    static let typeOffset = 4
    static let flagsOffset = 5
    static let namespaceLengthOffset = 6
    static let versionOffset = 7
    static let keyLengthOffset = 8
    static let metadataLengthOffset = 10
    static let storedLengthOffset = 12
    static let logicalLengthOffset = 16
    static let reservedOffset = 20
    static let sequenceOffset = 24
    static let commitTimeOffset = 32
    static let payloadChecksumOffset = 40
    static let reserved2Offset = 48
    static let headerChecksumOffset = 56

    @inline(__always)
    public static func align(_ n: Int) -> Int { (n + alignment - 1) & ~(alignment - 1) }

    /// Bytes from the record start to its payload.
    public static func headerAreaSize(namespaceLength: Int, keyLength: Int, metadataLength: Int) -> Int {
        align(fixedHeaderSize + namespaceLength + keyLength + metadataLength)
    }

    /// Bytes the whole record occupies in the segment.
    public static func recordSize(headerAreaSize: Int, storedLength: Int) -> Int {
        headerAreaSize + align(storedLength)
    }
}

/// A decoded record header.
public struct RecordHeader: Sendable, Equatable {
    public var type: RecordType
    public var flags: UInt8
    public var namespace: String
    public var key: String
    public var metadata: BlockMetadata
    public var storedLength: Int
    public var logicalLength: Int
    public var sequence: UInt64
    public var commitTimeNanoseconds: UInt64
    public var payloadChecksum: UInt64

    public init(type: RecordType, flags: UInt8, namespace: String, key: String, metadata: BlockMetadata,
                storedLength: Int, logicalLength: Int, sequence: UInt64, commitTimeNanoseconds: UInt64, payloadChecksum: UInt64) {
        self.type = type
        self.flags = flags
        self.namespace = namespace
        self.key = key
        self.metadata = metadata
        self.storedLength = storedLength
        self.logicalLength = logicalLength
        self.sequence = sequence
        self.commitTimeNanoseconds = commitTimeNanoseconds
        self.payloadChecksum = payloadChecksum
    }

    public var headerAreaSize: Int {
        RecordFormat.headerAreaSize(namespaceLength: namespace.utf8.count, keyLength: key.utf8.count,
                                    metadataLength: metadata.encodedLength)
    }

    public var recordSize: Int { RecordFormat.recordSize(headerAreaSize: headerAreaSize, storedLength: storedLength) }

    /// Writes the header area (fixed header, names, metadata, zero padding) into `area`, which must be
    /// `headerAreaSize` bytes.
    public func encode(into area: UnsafeMutableRawBufferPointer) {
        let ns = Array(namespace.utf8), k = Array(key.utf8), meta = metadata.encoded()
        precondition(area.count == headerAreaSize && ns.count <= 255 && k.count <= 0xFFFF)
        area.initializeMemory(as: UInt8.self, repeating: 0)
        LittleEndian.store(RecordFormat.magic, at: RecordFormat.magicOffset, in: area)
        area[RecordFormat.typeOffset] = type.rawValue
        area[RecordFormat.flagsOffset] = flags
        area[RecordFormat.namespaceLengthOffset] = UInt8(ns.count)
        area[RecordFormat.versionOffset] = RecordFormat.version
        LittleEndian.store(UInt16(k.count), at: RecordFormat.keyLengthOffset, in: area)
        LittleEndian.store(UInt16(meta.count), at: RecordFormat.metadataLengthOffset, in: area)
        LittleEndian.store(UInt32(storedLength), at: RecordFormat.storedLengthOffset, in: area)
        LittleEndian.store(UInt32(logicalLength), at: RecordFormat.logicalLengthOffset, in: area)
        LittleEndian.store(sequence, at: RecordFormat.sequenceOffset, in: area)
        LittleEndian.store(commitTimeNanoseconds, at: RecordFormat.commitTimeOffset, in: area)
        LittleEndian.store(payloadChecksum, at: RecordFormat.payloadChecksumOffset, in: area)
        var at = RecordFormat.fixedHeaderSize
        for b in ns { area[at] = b; at += 1 }
        for b in k { area[at] = b; at += 1 }
        for b in meta { area[at] = b; at += 1 }
        let checksum = Checksum.xxh3(UnsafeRawBufferPointer(rebasing: area[0..<at]))
        LittleEndian.store(checksum, at: RecordFormat.headerChecksumOffset, in: area)
    }

    /// Why a header failed to decode.
    public enum DecodeFailure: Error, Equatable {
        /// Fewer bytes than the header claims.
        case truncated
        /// Not a record (wrong magic): a torn tail, padding or garbage.
        case badMagic
        case badVersion
        case badChecksum
        case unknownType(UInt8)
        case badLength
    }

    /// Decodes the header at the start of `bytes` (at least the fixed header; the whole header area
    /// to decode names and metadata). Verifies the header checksum; does not look at the payload.
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> Result<RecordHeader, DecodeFailure> {
        guard bytes.count >= RecordFormat.fixedHeaderSize else { return .failure(.truncated) }
        guard LittleEndian.load(UInt32.self, at: RecordFormat.magicOffset, in: bytes) == RecordFormat.magic else { return .failure(.badMagic) }
        guard bytes[RecordFormat.versionOffset] == RecordFormat.version else { return .failure(.badVersion) }
        let nsLength = Int(bytes[RecordFormat.namespaceLengthOffset])
        let keyLength = Int(LittleEndian.load(UInt16.self, at: RecordFormat.keyLengthOffset, in: bytes))
        let metaLength = Int(LittleEndian.load(UInt16.self, at: RecordFormat.metadataLengthOffset, in: bytes))
        guard nsLength <= BlockName.maxNamespaceLength, keyLength <= BlockName.maxKeyLength,
              metaLength <= RecordFormat.maxMetadataLength else { return .failure(.badLength) }
        let end = RecordFormat.fixedHeaderSize + nsLength + keyLength + metaLength
        guard bytes.count >= end else { return .failure(.truncated) }
        let stored = LittleEndian.load(UInt64.self, at: RecordFormat.headerChecksumOffset, in: bytes)
        let computed = Checksum.xxh3(parts: [
            UnsafeRawBufferPointer(rebasing: bytes[0..<RecordFormat.headerChecksumOffset]),
            UnsafeRawBufferPointer(rebasing: RecordFormat.zeroPage.page[0..<8]),
            UnsafeRawBufferPointer(rebasing: bytes[RecordFormat.fixedHeaderSize..<end]),
        ])
        guard stored == computed else { return .failure(.badChecksum) }
        guard let type = RecordType(rawValue: bytes[RecordFormat.typeOffset]) else {
            return .failure(.unknownType(bytes[RecordFormat.typeOffset]))
        }
        var at = RecordFormat.fixedHeaderSize
        let ns = String(decoding: bytes[at..<(at + nsLength)], as: UTF8.self); at += nsLength
        let key = String(decoding: bytes[at..<(at + keyLength)], as: UTF8.self); at += keyLength
        guard let metadata = BlockMetadata(decoding: UnsafeRawBufferPointer(rebasing: bytes[at..<(at + metaLength)])) else {
            return .failure(.badLength)
        }
        let storedLength = Int(LittleEndian.load(UInt32.self, at: RecordFormat.storedLengthOffset, in: bytes))
        let logicalLength = Int(LittleEndian.load(UInt32.self, at: RecordFormat.logicalLengthOffset, in: bytes))
        if type == .tombstone && storedLength != 0 { return .failure(.badLength) }
        return .success(RecordHeader(
            type: type, flags: bytes[RecordFormat.flagsOffset], namespace: ns, key: key, metadata: metadata,
            storedLength: storedLength, logicalLength: logicalLength,
            sequence: LittleEndian.load(UInt64.self, at: RecordFormat.sequenceOffset, in: bytes),
            commitTimeNanoseconds: LittleEndian.load(UInt64.self, at: RecordFormat.commitTimeOffset, in: bytes),
            payloadChecksum: LittleEndian.load(UInt64.self, at: RecordFormat.payloadChecksumOffset, in: bytes)))
    }

}

/// One page of zeros, for padding writes and checksum fields.
final class AlignedZeroPage: Sendable {
    nonisolated(unsafe) let pointer: UnsafeMutableRawPointer
    init() {
        pointer = UnsafeMutableRawPointer.allocate(byteCount: RecordFormat.alignment, alignment: RecordFormat.alignment)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: RecordFormat.alignment)
    }
    var page: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: pointer, count: RecordFormat.alignment) }
}

/// The extended attributes a writer may attach to a block (DESIGN.md: `user.tw.parent`, `user.tw.tokens`),
/// stored in the record header as tag (u8), length (u16), bytes. Unknown tags are skipped on decode.
public struct BlockMetadata: Sendable, Equatable {
    public var parent: String?
    public var tokens: String?

    public init(parent: String? = nil, tokens: String? = nil) {
        self.parent = parent
        self.tokens = tokens
    }

    static let parentTag: UInt8 = 1
    static let tokensTag: UInt8 = 2

    public var encodedLength: Int {
        (parent.map { 3 + $0.utf8.count } ?? 0) + (tokens.map { 3 + $0.utf8.count } ?? 0)
    }

    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        func put(_ tag: UInt8, _ value: String) {
            let v = Array(value.utf8)
            out.append(tag)
            out.append(UInt8(v.count & 0xFF))
            out.append(UInt8(v.count >> 8))
            out.append(contentsOf: v)
        }
        if let parent { put(Self.parentTag, parent) }
        if let tokens { put(Self.tokensTag, tokens) }
        return out
    }

    init?(decoding bytes: UnsafeRawBufferPointer) {
        var at = 0
        while at < bytes.count {
            guard at + 3 <= bytes.count else { return nil }
            let tag = bytes[at]
            let length = Int(bytes[at + 1]) | Int(bytes[at + 2]) << 8
            guard at + 3 + length <= bytes.count else { return nil }
            let value = String(decoding: bytes[(at + 3)..<(at + 3 + length)], as: UTF8.self)
            if tag == Self.parentTag { parent = value } else if tag == Self.tokensTag { tokens = value }
            at += 3 + length
        }
    }
}

/// Layout of a segment summary (`segment-N.twsum`): the index checkpoint written when segment N is
/// sealed, so recovery loads it instead of scanning the segment. A 32-byte header, fixed-size entries
/// in log order, and an XXH3-64 of everything before it.
public enum SummaryFormat {
    public static let magic: [UInt8] = Array("TWSUMRY1".utf8)
    public static let version: UInt32 = 1
    public static let headerSize = 32
    public static let entrySize = 48
    public static let trailerSize = 8
}

/// One entry of a summary: where a record of the segment lies and what the index needs of it.
public struct SummaryEntry: Sendable, Equatable {
    public var key: BlockKey
    public var sequence: UInt64
    /// Offset of the record in the segment, in pages.
    public var page: UInt32
    public var storedLength: UInt32
    public var logicalLength: UInt32
    public var commitSeconds: UInt32
    public var namespaceID: UInt16
    public var fanout: UInt8
    /// `IndexEntry` flags (tombstone, canonical, compressed) and header pages.
    public var flags: UInt8
    public var headerPages: UInt8

    func encode(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        LittleEndian.store(key.low, at: offset, in: buffer)
        LittleEndian.store(key.high, at: offset + 8, in: buffer)
        LittleEndian.store(sequence, at: offset + 16, in: buffer)
        LittleEndian.store(page, at: offset + 24, in: buffer)
        LittleEndian.store(storedLength, at: offset + 28, in: buffer)
        LittleEndian.store(logicalLength, at: offset + 32, in: buffer)
        LittleEndian.store(commitSeconds, at: offset + 36, in: buffer)
        LittleEndian.store(namespaceID, at: offset + 40, in: buffer)
        buffer[offset + 42] = fanout
        buffer[offset + 43] = flags
        buffer[offset + 44] = headerPages
        buffer[offset + 45] = 0
        buffer[offset + 46] = 0
        buffer[offset + 47] = 0
    }

    static func decode(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> SummaryEntry {
        SummaryEntry(
            key: BlockKey(low: LittleEndian.load(UInt64.self, at: offset, in: buffer),
                          high: LittleEndian.load(UInt64.self, at: offset + 8, in: buffer)),
            sequence: LittleEndian.load(UInt64.self, at: offset + 16, in: buffer),
            page: LittleEndian.load(UInt32.self, at: offset + 24, in: buffer),
            storedLength: LittleEndian.load(UInt32.self, at: offset + 28, in: buffer),
            logicalLength: LittleEndian.load(UInt32.self, at: offset + 32, in: buffer),
            commitSeconds: LittleEndian.load(UInt32.self, at: offset + 36, in: buffer),
            namespaceID: LittleEndian.load(UInt16.self, at: offset + 40, in: buffer),
            fanout: buffer[offset + 42], flags: buffer[offset + 43], headerPages: buffer[offset + 44])
    }

    /// Encodes a whole summary file for segment `segmentID`.
    public static func encodeFile(segmentID: UInt32, entries: [SummaryEntry]) -> [UInt8] {
        let size = SummaryFormat.headerSize + entries.count * SummaryFormat.entrySize + SummaryFormat.trailerSize
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { raw in
            for (i, b) in SummaryFormat.magic.enumerated() { raw[i] = b }
            LittleEndian.store(SummaryFormat.version, at: 8, in: raw)
            LittleEndian.store(UInt32(SummaryFormat.entrySize), at: 12, in: raw)
            LittleEndian.store(UInt64(segmentID), at: 16, in: raw)
            LittleEndian.store(UInt64(entries.count), at: 24, in: raw)
            for (i, e) in entries.enumerated() { e.encode(into: raw, at: SummaryFormat.headerSize + i * SummaryFormat.entrySize) }
            let body = size - SummaryFormat.trailerSize
            LittleEndian.store(Checksum.xxh3(UnsafeRawBufferPointer(rebasing: raw[0..<body])), at: body, in: raw)
        }
        return bytes
    }

    /// Decodes a summary file; nil when it is damaged or belongs to another segment (then recovery scans).
    public static func decodeFile(_ bytes: [UInt8], segmentID: UInt32) -> [SummaryEntry]? {
        bytes.withUnsafeBytes { raw -> [SummaryEntry]? in
            guard raw.count >= SummaryFormat.headerSize + SummaryFormat.trailerSize,
                  Array(raw[0..<8]) == SummaryFormat.magic,
                  LittleEndian.load(UInt32.self, at: 8, in: raw) == SummaryFormat.version,
                  LittleEndian.load(UInt32.self, at: 12, in: raw) == UInt32(SummaryFormat.entrySize),
                  LittleEndian.load(UInt64.self, at: 16, in: raw) == UInt64(segmentID) else { return nil }
            // The count is checked against the file size before any arithmetic on it: a damaged count
            // must make the summary invalid (recovery then scans), never trap on overflow.
            let storedCount = LittleEndian.load(UInt64.self, at: 24, in: raw)
            let entryBytes = raw.count - SummaryFormat.headerSize - SummaryFormat.trailerSize
            guard entryBytes % SummaryFormat.entrySize == 0,
                  storedCount == UInt64(entryBytes / SummaryFormat.entrySize) else { return nil }
            let count = Int(storedCount)
            let body = SummaryFormat.headerSize + count * SummaryFormat.entrySize
            guard LittleEndian.load(UInt64.self, at: body, in: raw) == Checksum.xxh3(UnsafeRawBufferPointer(rebasing: raw[0..<body]))
            else { return nil }
            return (0..<count).map { decode(raw, at: SummaryFormat.headerSize + $0 * SummaryFormat.entrySize) }
        }
    }
}

/// Explicit little-endian loads and stores; on-disk bytes are never cast to structs.
public enum LittleEndian {
    @inline(__always)
    public static func load<T: FixedWidthInteger>(_: T.Type, at offset: Int, in bytes: UnsafeRawBufferPointer) -> T {
        T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
    @inline(__always)
    public static func load<T: FixedWidthInteger>(_: T.Type, at offset: Int, in bytes: UnsafeMutableRawBufferPointer) -> T {
        T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
    @inline(__always)
    public static func store<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: UnsafeMutableRawBufferPointer) {
        bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}
