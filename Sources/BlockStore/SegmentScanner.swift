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
        var bytesRead: UInt64 = 0
    }

    let file: any DeviceFile
    let segmentID: UInt32

    func scan() throws -> Result {
        let length = try file.length()
        let page = AlignedBuffer(capacity: RecordFormat.alignment)
        var result = Result(headerValid: false, validEnd: UInt64(SegmentFormat.headerSize), tailBytes: 0)
        let n = try file.read(into: page.mutableBytes(count: SegmentFormat.headerSize), at: 0)
        result.bytesRead += UInt64(n)
        result.headerValid = n == SegmentFormat.headerSize && SegmentFormat.decodeHeader(page.bytes(count: n)) == segmentID

        var payload = AlignedBuffer(capacity: 1 << 20)
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
            let available = Int(min(UInt64(RecordFormat.alignment), length - offset))
            let got = try file.read(into: page.mutableBytes(count: available), at: offset)
            result.bytesRead += UInt64(got)
            let first = page.bytes(count: got)
            if got == RecordFormat.alignment && first.allSatisfy({ $0 == 0 }) {
                offset += UInt64(RecordFormat.alignment)
                continue
            }
            // Decode the fixed header to learn the header area size, then the whole area.
            var decoded = RecordHeader.decode(first)
            var areaSize = RecordFormat.alignment
            if case .failure(.truncated) = decoded, got >= RecordFormat.fixedHeaderSize {
                let ns = Int(first[6]), key = Int(LittleEndian.load(UInt16.self, at: 8, in: first))
                let meta = Int(LittleEndian.load(UInt16.self, at: 10, in: first))
                areaSize = RecordFormat.headerAreaSize(namespaceLength: ns, keyLength: key, metadataLength: min(meta, RecordFormat.maxMetadataLength))
                if offset + UInt64(areaSize) <= length {
                    let area = AlignedBuffer(capacity: areaSize)
                    let m = try file.read(into: area.mutableBytes(count: areaSize), at: offset)
                    result.bytesRead += UInt64(m)
                    decoded = RecordHeader.decode(area.bytes(count: m))
                }
            }
            guard case .success(let header) = decoded else {
                if case .failure(let why) = decoded { damaged(offset, UInt64(RecordFormat.alignment), "bad header (\(why))") }
                offset += UInt64(RecordFormat.alignment)
                continue
            }
            areaSize = header.headerAreaSize
            let size = UInt64(header.recordSize)
            if offset + size > length {
                damaged(offset, length - offset, "record extends past the end of the segment")
                break
            }
            if header.storedLength > 0 {
                if payload.capacity < header.storedLength { payload = AlignedBuffer(capacity: header.storedLength) }
                let m = try file.read(into: payload.mutableBytes(count: header.storedLength), at: offset + UInt64(areaSize))
                result.bytesRead += UInt64(m)
                if m != header.storedLength || Checksum.xxh3(payload.bytes(count: m)) != header.payloadChecksum {
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
            if result.tailBytes > 0 {
                report.findings.append(Finding(segment: name, offset: result.validEnd, length: result.tailBytes, reason: "torn or damaged tail"))
            }
            progress(i + 1, ids.count)
        }
        return report
    }
}
