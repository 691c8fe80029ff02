/// Layout of the DRAM tier's shared-memory file. Specification: docs/dram-tier.md; the same layout for C
/// is include/tokenwarehouse.h. This file owns the constants; bump `version` whenever the layout changes.
public enum TierFormat {
    public static let magic: [UInt8] = Array("TWDRAM01".utf8)
    public static let version: UInt32 = 1
    public static let superblockSize = 4096
    public static let entrySize = 64
    public static let maxProbe: UInt32 = 32
    public static let alignment = 4096

    // Superblock field offsets.
    static let generationOffset = 16
    static let fileSizeOffset = 24
    static let tableOffsetOffset = 32
    static let tableCapacityOffset = 40
    static let entrySizeOffset = 48
    static let maxProbeOffset = 52
    static let dataOffsetOffset = 56
    static let dataSizeOffset = 64

    // Entry field offsets.
    static let seqOffset = 0
    static let stateOffset = 8
    static let keyLowOffset = 16
    static let keyHighOffset = 24
    static let dataOffsetField = 32
    static let lengthOffset = 40
    static let checksumOffset = 48

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
