/// libFuzzer target for the codec of docs/format.md: record headers, the segment header, segment
/// summaries, and the segment scanner (through `StoreVerifier` on an in-memory device).
///
/// The first input byte picks what the rest is fed to (`mode % 5`):
/// 0 record header as is; 1 record header "sealed" (its header checksum is written first, so the
/// fuzzer reaches the code behind it); 2 segment header (sealed when bit 3 is set); 3 summary file
/// (sealed when bit 3 is set); 4 a script that builds a segment from records, holes and damage,
/// then verifies it (grammar at `SegmentScript`).
///
/// Built with `-sanitize=fuzzer,address -D FUZZING` (Tools/fuzz/run.sh) it is a libFuzzer binary.
/// Built plainly it replays: `FuzzRecordDecoder FILE|DIR...` runs each file once;
/// `FuzzRecordDecoder --write-seeds DIR` writes the generated seed corpus.
import BlockStore
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let mode = data[0]
    let rest = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch mode % 5 {
    case 0: withExactCopy(rest) { checkRecordHeader($0) }
    case 1: withExactCopy(sealedRecordHeader(rest)) { checkRecordHeader($0) }
    case 2: withExactCopy(mode & 8 != 0 ? sealedSegmentHeader(rest) : rest) { checkSegmentHeader($0) }
    case 3: checkSummary(mode & 8 != 0 ? sealedSummary(rest) : rest)
    default:
        var script = SegmentScript(rest)
        script.check()
    }
    return 0
}

/// An invariant of the format code failed: abort, so libFuzzer records the input.
func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String, line: UInt = #line) {
    if !condition() { fatalError("invariant failed: \(message())", line: line) }
}

/// Runs `body` on a heap copy of exactly `bytes.count` bytes, so AddressSanitizer reports any read
/// past its end (an Array's storage may have spare capacity that would hide one).
func withExactCopy<R>(_ bytes: some Collection<UInt8>, _ body: (UnsafeRawBufferPointer) -> R) -> R {
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
    defer { copy.deallocate() }
    _ = copy.initializeMemory(as: UInt8.self, from: bytes)
    return body(UnsafeRawBufferPointer(copy))
}

func load16(_ b: [UInt8], _ at: Int) -> Int { Int(b[at]) | Int(b[at + 1]) << 8 }
func load32(_ b: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[at + $1]) << (8 * $1) } }
func load64(_ b: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[at + $1]) << (8 * $1) } }
func store64(_ v: UInt64, _ b: inout [UInt8], _ at: Int) { for i in 0..<8 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }

// MARK: record headers

/// End of the names and metadata the fixed header at the start of `b` announces.
func announcedEnd(_ b: [UInt8]) -> Int {
    RecordFormat.fixedHeaderSize + Int(b[6]) + load16(b, 8) + load16(b, 10)
}

/// `bytes` with the header checksum the fixed header calls for, where the bytes reach that far.
func sealedRecordHeader(_ bytes: [UInt8]) -> [UInt8] {
    guard bytes.count >= RecordFormat.fixedHeaderSize else { return bytes }
    let end = announcedEnd(bytes)
    guard end <= bytes.count else { return bytes }
    var b = bytes
    let zeros = [UInt8](repeating: 0, count: 8)
    let sum = b.withUnsafeBytes { raw in
        zeros.withUnsafeBytes { z in
            Checksum.xxh3(parts: [UnsafeRawBufferPointer(rebasing: raw[0..<56]), z, UnsafeRawBufferPointer(rebasing: raw[64..<end])])
        }
    }
    store64(sum, &b, 56)
    return b
}

func checkRecordHeader(_ raw: UnsafeRawBufferPointer) {
    let bytes = Array(raw)
    let result = RecordHeader.decode(raw)
    if bytes.count < RecordFormat.fixedHeaderSize {
        require(result == .failure(.truncated), "short input not reported truncated: \(result)")
        return
    }
    if load32(bytes, 0) != RecordFormat.magic {
        require(result == .failure(.badMagic), "wrong magic not reported: \(result)")
        return
    }
    guard case .success(let h) = result else { return }

    let nsLength = Int(bytes[6]), keyLength = load16(bytes, 8), metaLength = load16(bytes, 10)
    let end = announcedEnd(bytes)
    require(nsLength <= BlockName.maxNamespaceLength && keyLength <= RecordFormat.maxKeyLength
            && metaLength <= RecordFormat.maxMetadataLength, "accepted lengths \(nsLength)/\(keyLength)/\(metaLength)")
    require(end <= bytes.count, "accepted a header area of \(end) bytes from \(bytes.count)")
    require((RecordFormat.oldestReadableVersion...RecordFormat.version).contains(bytes[7]), "accepted version \(bytes[7])")
    require(h.type.rawValue == bytes[4] && h.flags == bytes[5], "type or flags differ from the bytes")
    require(h.storedLength == Int(load32(bytes, 12)) && h.logicalLength == Int(load32(bytes, 16)), "lengths differ from the bytes")
    require(h.sequence == load64(bytes, 24) && h.commitTimeNanoseconds == load64(bytes, 32)
            && h.payloadChecksum == load64(bytes, 40), "sequence, time or payload checksum differ from the bytes")
    require(h.type == .block || h.storedLength == 0, "\(h.type) record with a payload")
    let nsBytes = bytes[64..<(64 + nsLength)], keyBytes = bytes[(64 + nsLength)..<(64 + nsLength + keyLength)]
    if String(validating: nsBytes, as: UTF8.self) != nil {
        require(h.namespace.utf8.elementsEqual(nsBytes), "namespace differs from its bytes")
    }
    if String(validating: keyBytes, as: UTF8.self) != nil {
        require(h.key.utf8.elementsEqual(keyBytes), "key differs from its bytes")
    }

    // Cut one byte short, the same header is truncated, never decoded from bytes it does not have.
    let short = withExactCopy(bytes[0..<(end - 1)]) { RecordHeader.decode($0) }
    require(short == .failure(.truncated), "header cut to \(end - 1) bytes decodes as \(short)")

    // encode(decode(x)) decodes to the same header, whenever the decoded names fit the format (a name
    // that was not UTF-8 comes back repaired, and may then be longer than the format allows).
    if h.namespace.utf8.count <= BlockName.maxNamespaceLength, h.key.utf8.count <= RecordFormat.maxKeyLength,
       h.metadata.encodedLength <= RecordFormat.maxMetadataLength {
        let area = UnsafeMutableRawBufferPointer.allocate(byteCount: h.headerAreaSize, alignment: RecordFormat.alignment)
        defer { area.deallocate() }
        h.encode(into: area)
        let again = RecordHeader.decode(UnsafeRawBufferPointer(area))
        require(again == .success(h), "re-encoded header decodes as \(again), not \(h)")
        require(h.headerAreaSize % RecordFormat.alignment == 0 && h.headerAreaSize <= 6 * RecordFormat.alignment,
                "header area of \(h.headerAreaSize) bytes")
    }
}

// MARK: segment header

func sealedSegmentHeader(_ bytes: [UInt8]) -> [UInt8] {
    guard bytes.count >= SegmentFormat.usedHeaderBytes else { return bytes }
    var b = bytes
    store64(b.withUnsafeBytes { Checksum.xxh3(UnsafeRawBufferPointer(rebasing: $0[0..<32])) }, &b, 32)
    return b
}

func checkSegmentHeader(_ raw: UnsafeRawBufferPointer) {
    guard let id = SegmentFormat.decodeHeader(raw) else { return }
    let bytes = Array(raw)
    require(bytes.count >= SegmentFormat.usedHeaderBytes && Array(bytes[0..<8]) == SegmentFormat.magic,
            "accepted a header without its magic")
    require(UInt64(id) == load64(bytes, 16) & 0xFFFF_FFFF, "id \(id) differs from the bytes")
    let page = UnsafeMutableRawBufferPointer.allocate(byteCount: SegmentFormat.headerSize, alignment: SegmentFormat.headerSize)
    defer { page.deallocate() }
    SegmentFormat.encodeHeader(id: id, createdNanoseconds: load64(bytes, 24), into: page)
    require(SegmentFormat.decodeHeader(UnsafeRawBufferPointer(page)) == id, "re-encoded header of segment \(id) does not decode")
}

// MARK: summaries

/// `bytes` with a valid trailer checksum (over everything before its last 8 bytes).
func sealedSummary(_ bytes: [UInt8]) -> [UInt8] {
    guard bytes.count >= SummaryFormat.headerSize + SummaryFormat.trailerSize else { return bytes }
    var b = bytes
    let body = b.count - SummaryFormat.trailerSize
    store64(b.withUnsafeBytes { Checksum.xxh3(UnsafeRawBufferPointer(rebasing: $0[0..<body])) }, &b, body)
    return b
}

func checkSummary(_ bytes: [UInt8]) {
    let segmentID = bytes.count >= 24 ? UInt32(truncatingIfNeeded: load64(bytes, 16)) : 0
    guard let entries = SummaryEntry.decodeFile(bytes, segmentID: segmentID) else { return }
    require(bytes.count == SummaryFormat.headerSize + entries.count * SummaryFormat.entrySize + SummaryFormat.trailerSize,
            "\(entries.count) entries from \(bytes.count) bytes")
    require(load64(bytes, 24) == UInt64(entries.count), "entry count differs from the header")
    let again = SummaryEntry.encodeFile(segmentID: segmentID, entries: entries)
    require(again.count == bytes.count, "re-encoded summary has another size")
    require(SummaryEntry.decodeFile(again, segmentID: segmentID) == entries, "re-encoded summary decodes differently")
    if segmentID != UInt32.max {
        require(SummaryEntry.decodeFile(again, segmentID: segmentID + 1) == nil, "summary accepted for another segment")
    }
}

// MARK: segment scripts

/// Builds a segment file from a script and checks what `StoreVerifier` reports on it.
///
/// Grammar, one op after another until the input runs out (a cut-off op is dropped):
/// - `op % 4 == 0 or 1`: a record. Bit 4: tombstone; bit 5: wrong payload checksum; bit 6: LZ4 flag.
///   Then: namespace length byte n (1 + n % 128), n bytes; key length byte k (1 + k), k bytes;
///   metadata byte m (a tokens value of m bytes when m is odd, none otherwise); stored length u16
///   (% 40,000; 0 for a tombstone); a fill byte for the payload; a sequence byte.
/// - `op % 4 == 2`: a hole (a zero page).
/// - `op % 4 == 3`: damage, then a kind byte and a u16 v. Kind % 3: 0 flip a byte at v/65536 of the
///   file; 1 cut the last 1 + v % 8192 bytes; 2 append 1 + v % 512 bytes from the input (misaligning
///   what follows).
///
/// Every record written before the first damaged byte must be found, and with no damage at all the
/// segment must verify clean.
struct SegmentScript {
    static let segmentID: UInt32 = 1
    static let maxSegmentBytes = 4 << 20

    var input: [UInt8]
    var at = 0
    init(_ input: [UInt8]) { self.input = input }

    mutating func byte() -> UInt8? {
        guard at < input.count else { return nil }
        defer { at += 1 }
        return input[at]
    }
    mutating func u16() -> Int? {
        guard let a = byte(), let b = byte() else { return nil }
        return Int(a) | Int(b) << 8
    }
    mutating func bytes(_ n: Int) -> [UInt8]? {
        guard at + n <= input.count else { return nil }
        defer { at += n }
        return Array(input[at..<(at + n)])
    }

    /// Reads one record op's operands; nil when the input ends inside it.
    mutating func record(op: UInt8) -> (RecordHeader, payload: [UInt8])? {
        guard let n = byte(), let ns = bytes(1 + Int(n) % BlockName.maxNamespaceLength),
              let k = byte(), let key = bytes(1 + Int(k)), let m = byte(), let stored = u16(),
              let fill = byte(), let sequence = byte() else { return nil }
        let tombstone = op & 0x10 != 0
        let payload: [UInt8] = tombstone ? [] : (0..<(stored % 40_000)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(fill)) }
        let checksum = payload.withUnsafeBytes { Checksum.xxh3($0) } ^ (op & 0x20 != 0 ? 1 : 0)
        let header = RecordHeader(
            type: tombstone ? .tombstone : .block, flags: op & 0x40 != 0 ? RecordFormat.flagCompressedLZ4 : 0,
            namespace: String(decoding: ns, as: UTF8.self), key: String(decoding: key, as: UTF8.self),
            metadata: BlockMetadata(tokens: m & 1 != 0 ? String(repeating: "7", count: Int(m)) : nil),
            storedLength: payload.count, logicalLength: payload.count, sequence: UInt64(sequence),
            commitTimeNanoseconds: 1, payloadChecksum: checksum)
        // A name that was not UTF-8 comes back longer; the writer never makes such a record.
        guard header.namespace.utf8.count <= BlockName.maxNamespaceLength, header.key.utf8.count <= RecordFormat.maxKeyLength
        else { return nil }
        return (header, payload)
    }

    mutating func check() {
        var segment = [UInt8](repeating: 0, count: SegmentFormat.headerSize)
        segment.withUnsafeMutableBytes { SegmentFormat.encodeHeader(id: Self.segmentID, createdNanoseconds: 1, into: $0) }
        // Ends of the records written intact, and the first byte any damage touched.
        var recordEnds: [Int] = []
        var firstDamage = Int.max
        build: while segment.count < Self.maxSegmentBytes, let op = byte() {
            switch op % 4 {
            case 0, 1:
                guard let (header, payload) = record(op: op) else { break build }
                let start = segment.count
                var area = [UInt8](repeating: 0, count: header.headerAreaSize)
                area.withUnsafeMutableBytes { header.encode(into: $0) }
                segment += area
                segment += payload
                segment += [UInt8](repeating: 0, count: RecordFormat.align(payload.count) - payload.count)
                if op & 0x20 != 0 && !payload.isEmpty { firstDamage = min(firstDamage, start) } else { recordEnds.append(segment.count) }
            case 2:
                segment += [UInt8](repeating: 0, count: RecordFormat.alignment)
            default:
                guard let kind = byte(), let v = u16() else { break build }
                switch kind % 3 {
                case 0:
                    guard !segment.isEmpty else { continue build }
                    let position = v * segment.count / 65536
                    segment[position] ^= 0xFF
                    firstDamage = min(firstDamage, position)
                case 1:
                    let cut = min(segment.count, 1 + v % 8192)
                    segment.removeLast(cut)
                    firstDamage = min(firstDamage, segment.count)
                default:
                    guard let raw = bytes(1 + v % 512) else { break build }
                    firstDamage = min(firstDamage, segment.count)
                    segment += raw
                }
            }
        }

        let device = MemoryStorageDevice()
        let name = SegmentFormat.dataFileName(Self.segmentID)
        let report: StoreVerifier.Report
        do {
            try device.replaceAtomically(name, bytes: segment)
            report = try StoreVerifier.verify(device: device)
        } catch {
            require(false, "verify threw \(error)")
            return
        }
        let length = UInt64(segment.count)
        require(report.segments == 1, "\(report.segments) segments")
        let intact = recordEnds.filter { $0 <= firstDamage }.count
        require(report.records >= intact, "\(report.records) records found, \(intact) written before the first damage at \(firstDamage)")
        require(report.records <= max(0, segment.count - SegmentFormat.headerSize) / RecordFormat.alignment,
                "\(report.records) records in \(segment.count) bytes")
        if firstDamage == Int.max {
            // Zero pages after the last record are reported as a tail (recovery truncates them).
            let lastEnd = UInt64(recordEnds.last ?? SegmentFormat.headerSize)
            require(report.findings.allSatisfy { $0.offset == lastEnd && $0.offset + $0.length == length },
                    "undamaged segment has findings: \(report.findings)")
            require(report.records == recordEnds.count, "\(report.records) of \(recordEnds.count) records found")
        }
        if firstDamage >= SegmentFormat.headerSize {
            require(!report.findings.contains { $0.reason == "bad segment header" }, "intact segment header reported bad")
        }
        for f in report.findings {
            require(f.offset % UInt64(RecordFormat.alignment) == 0, "finding at unaligned offset: \(f)")
            if f.reason == "bad segment header" || firstDamage == Int.max { continue }
            require(f.offset >= UInt64(SegmentFormat.headerSize) && f.offset + f.length <= length,
                    "finding outside the records of \(length) bytes: \(f)")
            // Damage is reported where it is: nothing wholly before the first damaged byte.
            require(f.offset + f.length >= UInt64(firstDamage), "finding before the first damage at \(firstDamage): \(f)")
        }
    }
}

// MARK: seeds

/// A few valid inputs of every mode, for the corpus.
func seeds() -> [(name: String, bytes: [UInt8])] {
    var out: [(String, [UInt8])] = []
    let headers = [
        RecordHeader(type: .block, flags: 0, namespace: "llama", key: "0a1b2c3d4e5f6071", metadata: BlockMetadata(),
                     storedLength: 10_000, logicalLength: 10_000, sequence: 7, commitTimeNanoseconds: 1_700_000_000_000_000_000, payloadChecksum: 0x1234),
        RecordHeader(type: .block, flags: RecordFormat.flagCompressedLZ4, namespace: "llama-8b@tp0", key: "00ff00ff00ff00ff",
                     metadata: BlockMetadata(parent: "aa11bb22cc33dd44", tokens: "1,2,3"), storedLength: 1234, logicalLength: 5678,
                     sequence: 42, commitTimeNanoseconds: 1, payloadChecksum: 0xDEAD_BEEF),
        RecordHeader(type: .tombstone, flags: 0, namespace: "m", key: "weights.bin", metadata: BlockMetadata(),
                     storedLength: 0, logicalLength: 0, sequence: 9, commitTimeNanoseconds: 2, payloadChecksum: 0),
        RecordHeader(type: .block, flags: 0, namespace: String(repeating: "n", count: 128), key: String(repeating: "f", count: 255),
                     metadata: BlockMetadata(parent: String(repeating: "e", count: 128)), storedLength: 1, logicalLength: 1,
                     sequence: .max, commitTimeNanoseconds: .max, payloadChecksum: .max),
    ]
    for (i, h) in headers.enumerated() {
        var area = [UInt8](repeating: 0, count: h.headerAreaSize)
        area.withUnsafeMutableBytes { h.encode(into: $0) }
        let used = Array(area[0..<announcedEnd(area)])
        out.append(("record-\(i)", [0] + used))
        out.append(("record-sealed-\(i)", [1] + used))
    }
    var page = [UInt8](repeating: 0, count: SegmentFormat.headerSize)
    page.withUnsafeMutableBytes { SegmentFormat.encodeHeader(id: 12, createdNanoseconds: 99, into: $0) }
    out.append(("segment-header", [2] + page[0..<SegmentFormat.usedHeaderBytes]))
    let empty = SummaryEntry.encodeFile(segmentID: 3, entries: [])
    out.append(("summary-empty", [3] + empty))
    // Two entries (the initializer is internal to BlockStore, so they are written as bytes).
    var two = Array(empty[0..<SummaryFormat.headerSize]) + (0..<(2 * SummaryFormat.entrySize)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        + [UInt8](repeating: 0, count: SummaryFormat.trailerSize)
    store64(2, &two, 24)
    out.append(("summary-two", [3 | 8] + sealedSummary(two)))
    // Regression: a count that overflowed `count * entrySize` and trapped.
    var huge = empty
    store64(.max, &huge, 24)
    out.append(("summary-huge-count", [3 | 8] + sealedSummary(huge)))
    let record: [UInt8] = [0x00, 4] + Array("llama".utf8) + [15] + Array("0a1b2c3d4e5f6071".utf8) + [0, 0x10, 0x27, 0x5A, 7]
    let tombstone: [UInt8] = [0x10, 0] + Array("m".utf8) + [0] + Array("k".utf8) + [3, 0, 0, 0, 8]
    let withTokens: [UInt8] = [0x40, 1] + Array("ns".utf8) + [1] + Array("ab".utf8) + [5, 0x00, 0x01, 1, 9]
    out.append(("script-records", [4] + record + tombstone + [2] + withTokens))
    out.append(("script-flip", [4] + record + [3, 0, 0x00, 0xC0] + withTokens))
    out.append(("script-cut", [4] + record + withTokens + [3, 1, 0x10, 0x00]))
    out.append(("script-garbage", [4] + record + [3, 2, 0x40, 0x00] + Array(repeating: 0x54, count: 65) + withTokens))
    return out
}

// MARK: entry

runFuzzTarget(seeds: seeds) { fuzz($0!, $1) }
