/// Layout of a DRAM tier's shared-memory file. Specification: docs/dram-tier.md; the same layout for C
/// is include/tokenwarehouse.h. This file owns the constants; bump `version` whenever the layout changes.
public enum TierFormat {
    public static let magic: [UInt8] = Array("TWDRAM01".utf8)
    public static let version: UInt32 = 1
    public static let superblockSize = 4096
    public static let entrySize = 64
    public static let maxProbe: UInt32 = 32
    public static let alignment = 4096

    // Superblock field offsets.
    public static let magicOffset = 0
    public static let versionOffset = 8
    public static let superblockSizeOffset = 12
    public static let generationOffset = 16
    public static let fileSizeOffset = 24
    public static let tableOffsetOffset = 32
    public static let tableCapacityOffset = 40
    public static let entrySizeOffset = 48
    public static let maxProbeOffset = 52
    public static let dataOffsetOffset = 56
    public static let dataSizeOffset = 64

    // Entry field offsets.
    public static let seqOffset = 0
    public static let stateOffset = 8
    public static let keyLowOffset = 16
    public static let keyHighOffset = 24
    public static let dataOffsetField = 32
    public static let lengthOffset = 40
    public static let checksumOffset = 48

    public static let stateEmpty: UInt32 = 0
    public static let stateValid: UInt32 = 1
    public static let stateDeleted: UInt32 = 2

    /// Table capacity for a data area: two entries per 16 KiB of data (engines' blocks are rarely
    /// smaller: 16 tokens of a small model), a power of two, so the table stays at most half full. The
    /// table costs 64 bytes per 8 KiB of data (0.8%).
    public static func tableCapacity(dataSize: Int) -> Int {
        var n = 1024
        while n < 2 * (dataSize / (16 << 10)) { n <<= 1 }
        return n
    }
}
