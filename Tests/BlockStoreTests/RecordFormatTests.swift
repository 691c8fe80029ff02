import Testing
import WarehouseCore
@testable import BlockStore

@Suite struct RecordFormatTests {
    @Test func sizesAndVersionsArePinned() {
        #expect(RecordFormat.fixedHeaderSize == 64)
        #expect(RecordFormat.alignment == 4096)
        #expect(RecordFormat.version == 2)
        #expect(RecordFormat.magic == 0x3152_5754)
        #expect(SegmentFormat.headerSize == 4096)
        #expect(SegmentFormat.version == 1)
        #expect(SegmentFormat.magic == Array("TWSEGMT1".utf8))
        #expect(SummaryFormat.headerSize == 32)
        #expect(SummaryFormat.entrySize == 64)
        #expect(SummaryFormat.version == 2)
        // The index entry is the resident cost of a block (docs/benchmarks.md): keep it at 40 bytes.
        #expect(MemoryLayout<IndexEntry>.stride == 40)
        #expect(MemoryLayout<BlockKey>.size == 16)
        #expect(RecordFormat.headerAreaSize(namespaceLength: 1, keyLength: 16, metadataLength: 0) == 4096)
        #expect(RecordFormat.recordSize(headerAreaSize: 4096, storedLength: 4097) == 4096 + 8192)
    }

    @Test func headerRoundTripsThroughEncodeAndDecode() throws {
        let h = RecordHeader(type: .block, flags: RecordFormat.flagCompressedLZ4, namespace: "llama-8b@tp0", key: "00ff00ff00ff00ff",
                             metadata: BlockMetadata(parent: "aa11bb22cc33dd44", tokens: "1,2,3"), storedLength: 1234,
                             logicalLength: 5678, sequence: 42, commitTimeNanoseconds: 1_700_000_000_000_000_000, payloadChecksum: 0xDEAD_BEEF)
        var area = [UInt8](repeating: 0xAA, count: h.headerAreaSize)
        area.withUnsafeMutableBytes { h.encode(into: $0) }
        let decoded = area.withUnsafeBytes { RecordHeader.decode($0) }
        #expect(try decoded.get() == h)
    }

    @Test func flippedHeaderByteFailsTheHeaderChecksum() {
        let h = RecordHeader(type: .block, flags: 0, namespace: "m", key: "k", metadata: BlockMetadata(), storedLength: 1,
                             logicalLength: 1, sequence: 1, commitTimeNanoseconds: 1, payloadChecksum: 1)
        var area = [UInt8](repeating: 0, count: h.headerAreaSize)
        area.withUnsafeMutableBytes { h.encode(into: $0) }
        for i in [4, 12, 24, 40, 56, 64, 65] {
            var damaged = area
            damaged[i] ^= 0x01
            let result = damaged.withUnsafeBytes { RecordHeader.decode($0) }
            #expect(throws: RecordHeader.DecodeFailure.self) { try result.get() }
        }
    }

    @Test func summaryFileRoundTripsAndRejectsDamage() {
        let entries = (0..<5).map { i in
            SummaryEntry(key: BlockKey(namespace: "m", key: "k\(i)"), sequence: UInt64(i), page: UInt32(i + 1), type: .block,
                         storedLength: 10, logicalLength: 10, commitSeconds: 7, namespaceID: 1, fanout: 0, flags: 0,
                         headerPages: 1, directory: UInt32(i), ownership: BlockOwnership(uid: 1000 + UInt32(i), gid: 100, mode: 0o640))
        }
        var bytes = SummaryEntry.encodeFile(segmentID: 9, entries: entries)
        #expect(bytes.count == SummaryFormat.headerSize + 5 * SummaryFormat.entrySize + SummaryFormat.trailerSize)
        #expect(SummaryEntry.decodeFile(bytes, segmentID: 9) == entries)
        #expect(SummaryEntry.decodeFile(bytes, segmentID: 8) == nil)
        bytes[40] ^= 1
        #expect(SummaryEntry.decodeFile(bytes, segmentID: 9) == nil)
    }

    @Test func summaryWithADamagedEntryCountIsRejectedNotTrapped() {
        let good = SummaryEntry.encodeFile(segmentID: 3, entries: [])
        #expect(SummaryEntry.decodeFile(good, segmentID: 3) == [])
        // Counts whose conversion to Int or product with the entry size would overflow (found by FuzzRecordDecoder).
        for count: UInt64 in [.max, 1 << 63, 1 << 60, (1 << 58) + 1, 1] {
            var damaged = good
            damaged.withUnsafeMutableBytes { LittleEndian.store(count, at: SummaryFormat.countOffset, in: $0) }
            #expect(SummaryEntry.decodeFile(damaged, segmentID: 3) == nil)
        }
    }

    @Test func segmentFileNamesParseOnlyTheDigitsTheStoreWrites() {
        let data = SegmentFormat.parseFileName("segment-0000000012.twlog")
        #expect(data?.id == 12 && data?.isSummary == false)
        let summary = SegmentFormat.parseFileName("segment-4294967295.twsum")
        #expect(summary?.id == 4_294_967_295 && summary?.isSummary == true)
        // UInt32("+000000012") is 12; such a file is not segment 12's (found by FuzzBlockNames).
        #expect(SegmentFormat.parseFileName("segment-+000000012.twlog") == nil)
        #expect(SegmentFormat.parseFileName("segment-000000001\u{0662}.twlog") == nil)
        #expect(SegmentFormat.parseFileName("segment-4294967296.twlog") == nil)
    }

    @Test func everyDirectoryChangeRoundTripsThroughTheJournalCodec() {
        let o = BlockOwnership(uid: 1000, gid: 100, mode: 0o1777)
        let changes: [DirectoryChange] = [
            .create(ns: 3, id: 7, parent: 0, name: "layer_0", ownership: o, modifiedNanoseconds: 123),
            .create(ns: 3, id: 0xFFFF_FF3F, parent: 0, name: "3f", ownership: o, modifiedNanoseconds: 1),
            .remove(ns: 3, id: 7),
            .attributes(ns: 3, id: 7, ownership: o, modifiedNanoseconds: 5),
            .attributes(ns: 3, id: 7, ownership: o, modifiedNanoseconds: 5, accessedNanoseconds: 9),
            .move(ns: 3, id: 7, parent: 8, name: "ünï"),
        ]
        for change in changes {
            let record = change.encoded()
            let body = Array(record[DirectoryJournalFormat.recordHeaderSize...])
            #expect(body.withUnsafeBytes { DirectoryChange.decode($0) } == change, "\(change)")
            // A byte less is malformed, never another change.
            #expect(body.dropLast().withUnsafeBytes { DirectoryChange.decode($0) } != change)
        }
    }
}
