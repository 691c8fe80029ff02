import CXXHash

// On x86-64, libxxhash's dispatching entry points (the vector unit chosen at run time: 3x the speed of
// its baseline build on AVX2/AVX-512 machines, the same values). Every record is checksummed when
// written, and every read from NVMe and every pin of a DRAM-tier copy is verified, so this pass is on
// the read path of every block.
#if arch(x86_64)
@inline(__always) private func xxh3_64(_ p: UnsafeRawPointer?, _ n: Int) -> UInt64 { XXH3_64bits_dispatch(p, n) }
@inline(__always) private func xxh3Hash128(_ p: UnsafeRawPointer?, _ n: Int) -> XXH128_hash_t { XXH3_128bits_dispatch(p, n) }
@inline(__always) private func xxh3_64_update(_ s: OpaquePointer, _ p: UnsafeRawPointer?, _ n: Int) {
    _ = XXH3_64bits_update_dispatch(s, p, n)
}
#else
@inline(__always) private func xxh3_64(_ p: UnsafeRawPointer?, _ n: Int) -> UInt64 { XXH3_64bits(p, n) }
@inline(__always) private func xxh3Hash128(_ p: UnsafeRawPointer?, _ n: Int) -> XXH128_hash_t { XXH3_128bits(p, n) }
@inline(__always) private func xxh3_64_update(_ s: OpaquePointer, _ p: UnsafeRawPointer?, _ n: Int) {
    _ = XXH3_64bits_update(s, p, n)
}
#endif

/// Checksums and key hashes, all XXH3 from libxxhash.
public enum Checksum {
    /// XXH3-64 of `bytes`.
    @inline(__always)
    public static func xxh3(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        xxh3_64(bytes.baseAddress, bytes.count)
    }

    /// XXH3-64 of several byte ranges as if they were one (streaming, no copy).
    public static func xxh3(parts: [UnsafeRawBufferPointer]) -> UInt64 {
        guard let state = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        defer { XXH3_freeState(state) }
        XXH3_64bits_reset(state)
        for part in parts where part.count > 0 { xxh3_64_update(state, part.baseAddress, part.count) }
        return XXH3_64bits_digest(state)
    }

    /// XXH3-128 of `bytes`, as (low, high).
    public static func xxh3_128(_ bytes: UnsafeRawBufferPointer) -> (UInt64, UInt64) {
        let h = xxh3Hash128(bytes.baseAddress, bytes.count)
        return (h.low64, h.high64)
    }
}

/// An XXH3-64 computed piece by piece, for payloads that arrive in order (a block written through the
/// mount): the checksum is ready when the last piece arrives instead of costing a pass at commit.
///
/// Thread-safety: none; the owner serialises `update` calls.
public final class StreamingChecksum: @unchecked Sendable {
    // Safe: the state is only touched by the owner under its own lock.
    private let state: OpaquePointer

    public init() {
        guard let s = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        state = s
        XXH3_64bits_reset(state)
    }

    deinit { XXH3_freeState(state) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        if bytes.count > 0 { xxh3_64_update(state, bytes.baseAddress, bytes.count) }
    }

    public var digest: UInt64 { XXH3_64bits_digest(state) }
}
