import CXXHash

/// Checksums and key hashes, all XXH3 from libxxhash.
public enum Checksum {
    /// XXH3-64 of `bytes`.
    @inline(__always)
    public static func xxh3(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        XXH3_64bits(bytes.baseAddress, bytes.count)
    }

    /// XXH3-64 of several byte ranges as if they were one (streaming, no copy).
    public static func xxh3(parts: [UnsafeRawBufferPointer]) -> UInt64 {
        guard let state = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        defer { XXH3_freeState(state) }
        XXH3_64bits_reset(state)
        for part in parts where part.count > 0 { XXH3_64bits_update(state, part.baseAddress, part.count) }
        return XXH3_64bits_digest(state)
    }

    /// XXH3-128 of `bytes`, as (low, high).
    public static func xxh3_128(_ bytes: UnsafeRawBufferPointer) -> (UInt64, UInt64) {
        let h = XXH3_128bits(bytes.baseAddress, bytes.count)
        return (h.low64, h.high64)
    }
}
