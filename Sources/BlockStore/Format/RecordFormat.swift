// The record of docs/format.md ("Records"): a fixed header, the names and metadata, padding to a page,
// the payload padded to a page.
import WarehouseCore

/// The kind of a record.
public enum RecordType: UInt8, Sendable {
    /// A block: its name, metadata and payload.
    case block = 1
    /// A deletion of a name.
    case tombstone = 2
    /// A new binding of a name to an existing block record, with its attributes (rename, chmod, chown,
    /// utimes of a committed block): header only, the payload stays where it is (docs/format.md "Updates").
    case update = 3
}

/// Layout of one record: a 64-byte fixed header, namespace, key and metadata bytes, zero padding to
/// a page, then the stored payload padded to a page. Offsets below are within the fixed header.
public enum RecordFormat {
    public static let magic: UInt32 = 0x3152_5754 // bytes "TWR1"
    /// Version 2 allows keys of whole paths (up to `maxKeyLength`) and update records; version 1
    /// records (keys of up to 255 bytes) are read as they are.
    public static let version: UInt8 = 2
    public static let oldestReadableVersion: UInt8 = 1
    /// A path of `BlockName.maxPathLength` bytes, or a canonical hash with its `/` prefix.
    public static let maxKeyLength = BlockName.maxPathLength + 1
    public static let fixedHeaderSize = 64
    /// Records and payloads start on page boundaries so payloads can be read with O_DIRECT.
    public static let alignment = 4096
    /// Metadata (xattrs, owner, times) is at most this many bytes, so a header area is at most 6 pages.
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
        precondition(area.count == headerAreaSize && ns.count <= 255 && k.count <= RecordFormat.maxKeyLength)
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
        let version = bytes[RecordFormat.versionOffset]
        guard version >= RecordFormat.oldestReadableVersion && version <= RecordFormat.version else { return .failure(.badVersion) }
        let nsLength = Int(bytes[RecordFormat.namespaceLengthOffset])
        let keyLength = Int(LittleEndian.load(UInt16.self, at: RecordFormat.keyLengthOffset, in: bytes))
        let metaLength = Int(LittleEndian.load(UInt16.self, at: RecordFormat.metadataLengthOffset, in: bytes))
        guard nsLength <= BlockName.maxNamespaceLength, keyLength <= RecordFormat.maxKeyLength,
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
        if type != .block && storedLength != 0 { return .failure(.badLength) }
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
