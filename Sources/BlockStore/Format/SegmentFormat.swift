// Byte layouts of the store's files. The specification is docs/format.md; the files in this folder own
// the constants and are the only code that encodes or decodes them. All integers are little-endian.
// Bump a format's `version` whenever its layout changes.
import WarehouseCore

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

    // Field offsets in the header page.
    static let magicOffset = 0
    static let versionOffset = 8
    static let headerSizeOffset = 12
    static let idOffset = 16
    static let createdOffset = 24
    static let checksumOffset = 32

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
        for (i, b) in magic.enumerated() { page[magicOffset + i] = b }
        LittleEndian.store(version, at: versionOffset, in: page)
        LittleEndian.store(UInt32(headerSize), at: headerSizeOffset, in: page)
        LittleEndian.store(UInt64(id), at: idOffset, in: page)
        LittleEndian.store(createdNanoseconds, at: createdOffset, in: page)
        LittleEndian.store(Checksum.xxh3(UnsafeRawBufferPointer(rebasing: page[0..<checksumOffset])), at: checksumOffset, in: page)
    }

    /// Returns the segment id if `page` is a valid header, nil otherwise.
    public static func decodeHeader(_ page: UnsafeRawBufferPointer) -> UInt32? {
        guard page.count >= usedHeaderBytes, Array(page[magicOffset..<(magicOffset + 8)]) == magic,
              LittleEndian.load(UInt32.self, at: versionOffset, in: page) == version,
              LittleEndian.load(UInt64.self, at: checksumOffset, in: page) == Checksum.xxh3(UnsafeRawBufferPointer(rebasing: page[0..<checksumOffset]))
        else { return nil }
        let id = LittleEndian.load(UInt64.self, at: idOffset, in: page)
        return id <= UInt64(UInt32.max) ? UInt32(id) : nil
    }
}
