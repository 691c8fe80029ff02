import WarehouseCore
import Platform

/// Reads a segment file record by record, verifying header and payload checksums, as recovery and
/// `twctl verify` need. The rules a reader follows on damage are those of docs/format.md:
/// - a record whose header or payload fails its checksum is skipped and reported;
/// - after a bad header the scanner resynchronises at the next page that holds a valid header;
/// - all-zero pages are holes (a write that failed, e.g. for lack of space), skipped silently;
/// - whatever follows the last valid record is a torn tail, which recovery truncates.
struct SegmentScanner {
    /// A record that passed both checksums.
    struct Record {
        var offset: UInt64
        var header: RecordHeader
        var headerAreaSize: Int
    }

    /// A damaged region.
    struct Damage: CustomStringConvertible {
        var offset: UInt64
        var length: UInt64
        var reason: String
        var description: String { "offset \(offset) (\(length) bytes): \(reason)" }
    }

    struct Result {
        var headerValid: Bool
        var records: [Record] = []
        /// Damaged regions followed by at least one valid record; contiguous damage counts once.
        var damage: [Damage] = []
        /// End of the last valid record (or of the segment header when none).
        var validEnd: UInt64
        /// Bytes after `validEnd` (a torn tail when non-zero).
        var tailBytes: UInt64
        /// The tail holds only whole zero pages: a hole left by a failed write, not damage.
        var tailIsZeros = false
        var bytesRead: UInt64 = 0
    }

    let file: any DeviceFile
    let segmentID: UInt32

    /// Serves reads of a segment from a large aligned window, so a scan costs a few big sequential
    /// (O_DIRECT) reads instead of one small read per page.
    final class WindowReader {
        let file: any DeviceFile
        let length: UInt64
        let window = AlignedBuffer(capacity: 8 << 20)
        var windowStart: UInt64 = 0
        var windowCount = 0
        var bytesRead: UInt64 = 0

        init(file: any DeviceFile, length: UInt64) {
            self.file = file
            self.length = length
        }

        /// The bytes [offset, offset + count) clipped to the file, valid until the next call.
        func bytes(at offset: UInt64, count: Int) throws -> UnsafeRawBufferPointer {
            let wanted = Int(min(UInt64(count), length > offset ? length - offset : 0))
            if offset >= windowStart && offset + UInt64(wanted) <= windowStart + UInt64(windowCount) {
                return window.bytes(Int(offset - windowStart), count: wanted)
            }
            if wanted > window.capacity {
                let big = AlignedBuffer(capacity: wanted)
                let n = try file.read(into: big.mutableBytes(count: RecordFormat.align(wanted)), at: offset)
                bytesRead += UInt64(n)
                oversized = big
                return big.bytes(count: min(n, wanted))
            }
            windowStart = offset & ~UInt64(RecordFormat.alignment - 1)
            let span = Int(min(UInt64(window.capacity), length - windowStart))
            windowCount = try file.read(into: window.mutableBytes(count: RecordFormat.align(span)), at: windowStart)
            windowCount = min(windowCount, span)
            bytesRead += UInt64(windowCount)
            let start = Int(offset - windowStart)
            return window.bytes(start, count: max(0, min(wanted, windowCount - start)))
        }

        private var oversized: AlignedBuffer?
    }

    func scan() throws -> Result {
        let length = try file.length()
        let reader = WindowReader(file: file, length: length)
        var result = Result(headerValid: false, validEnd: UInt64(SegmentFormat.headerSize), tailBytes: 0)
        let head = try reader.bytes(at: 0, count: SegmentFormat.headerSize)
        result.headerValid = head.count == SegmentFormat.headerSize && SegmentFormat.decodeHeader(head) == segmentID

        var offset = UInt64(SegmentFormat.headerSize)
        var pendingDamage: [Damage] = []
        func damaged(_ at: UInt64, _ len: UInt64, _ why: String) {
            if let last = pendingDamage.last, last.offset + last.length == at {
                pendingDamage[pendingDamage.count - 1].length += len
            } else {
                pendingDamage.append(Damage(offset: at, length: len, reason: why))
            }
        }
        while offset < length {
            let first = try reader.bytes(at: offset, count: RecordFormat.alignment)
            if first.count == RecordFormat.alignment && first.allSatisfy({ $0 == 0 }) {
                offset += UInt64(RecordFormat.alignment)
                continue
            }
            // Decode the fixed header to learn the header area size, then the whole area.
            var decoded = RecordHeader.decode(first)
            if case .failure(.truncated) = decoded, first.count >= RecordFormat.fixedHeaderSize {
                let ns = Int(first[RecordFormat.namespaceLengthOffset]), key = Int(LittleEndian.load(UInt16.self, at: RecordFormat.keyLengthOffset, in: first))
                let meta = Int(LittleEndian.load(UInt16.self, at: RecordFormat.metadataLengthOffset, in: first))
                let areaSize = RecordFormat.headerAreaSize(namespaceLength: ns, keyLength: key, metadataLength: min(meta, RecordFormat.maxMetadataLength))
                if offset + UInt64(areaSize) <= length {
                    decoded = RecordHeader.decode(try reader.bytes(at: offset, count: areaSize))
                }
            }
            guard case .success(let header) = decoded else {
                if case .failure(let why) = decoded { damaged(offset, UInt64(RecordFormat.alignment), "bad header (\(why))") }
                offset += UInt64(RecordFormat.alignment)
                continue
            }
            let areaSize = header.headerAreaSize
            let size = UInt64(header.recordSize)
            if offset + size > length {
                damaged(offset, length - offset, "record extends past the end of the segment")
                break
            }
            if header.storedLength > 0 {
                let payload = try reader.bytes(at: offset + UInt64(areaSize), count: header.storedLength)
                if payload.count != header.storedLength || Checksum.xxh3(payload) != header.payloadChecksum {
                    damaged(offset, size, "payload checksum mismatch (\(header.namespace)/\(header.key))")
                    offset += size
                    continue
                }
            }
            result.damage += pendingDamage
            pendingDamage = []
            result.records.append(Record(offset: offset, header: header, headerAreaSize: areaSize))
            offset += size
            result.validEnd = offset
        }
        result.tailBytes = length > result.validEnd ? length - result.validEnd : 0
        result.tailIsZeros = pendingDamage.isEmpty
        result.bytesRead = reader.bytesRead
        return result
    }
}

/// Offline check of every record of a store, for `twctl verify`.
public struct StoreVerifier {
    public struct Finding: Sendable, CustomStringConvertible {
        public var segment: String
        public var offset: UInt64
        public var length: UInt64
        public var reason: String
        public var description: String { "\(segment) offset \(offset) length \(length): \(reason)" }
    }

    public struct Report: Sendable {
        public var segments = 0
        public var records = 0
        public var bytes: UInt64 = 0
        public var findings: [Finding] = []
    }

    /// Reads every segment of `device` (without taking the store's lock: it only reads) and lists damage,
    /// including a torn tail.
    public static func verify(device: any StorageDevice, progress: (Int, Int) -> Void = { _, _ in }) throws -> Report {
        var report = Report()
        let ids = try device.fileNames().compactMap(SegmentFormat.parseFileName).filter { !$0.isSummary }.map(\.id).sorted()
        for (i, id) in ids.enumerated() {
            let name = SegmentFormat.dataFileName(id)
            let file = try device.open(name, create: false)
            let result = try SegmentScanner(file: file, segmentID: id).scan()
            report.segments += 1
            report.records += result.records.count
            report.bytes += result.bytesRead
            if !result.headerValid { report.findings.append(Finding(segment: name, offset: 0, length: UInt64(SegmentFormat.headerSize), reason: "bad segment header")) }
            for d in result.damage { report.findings.append(Finding(segment: name, offset: d.offset, length: d.length, reason: d.reason)) }
            if result.tailBytes > 0 && !result.tailIsZeros {
                report.findings.append(Finding(segment: name, offset: result.validEnd, length: result.tailBytes, reason: "torn or damaged tail"))
            }
            progress(i + 1, ids.count)
        }
        return report
    }
}
