// WarehouseCore: what every part of the warehouse shares and nothing more. The identity of a block
// (`BlockKey`), the naming rules of namespaces, paths and keys (`BlockName`, `BlockPath`; docs/format.md
// "Keys"), XXH3 checksums and little-endian codecs. It depends only on libxxhash, so a client of the
// DRAM tier links it without the log store or liblz4. Everything here is a value type or a pure
// function: safe from any thread.

/// The in-memory identity of a block: a 128-bit XXH3 of "namespace/key".
///
/// The index stores this instead of the name (names live in the record headers on disk). Every read
/// checks the record it finds against what the index expects, so a hash collision can make a block
/// look absent, never return another block's bytes.
public struct BlockKey: Hashable, Sendable, BitwiseCopyable {
    public let low: UInt64
    public let high: UInt64

    @inlinable
    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// The key of `key` in namespace `namespace`. Namespaces cannot hold `/`, so the join is unambiguous.
    public init(namespace: String, key: String) {
        var joined = namespace
        joined.append("/")
        joined.append(key)
        let h = joined.utf8.withContiguousStorageIfAvailable { Checksum.xxh3_128(UnsafeRawBufferPointer($0)) }
            ?? Array(joined.utf8).withUnsafeBytes { Checksum.xxh3_128($0) }
        low = h.0
        high = h.1
    }

    @inlinable
    public static func == (a: BlockKey, b: BlockKey) -> Bool { a.low == b.low && a.high == b.high }
    @inlinable
    public func hash(into hasher: inout Hasher) { hasher.combine(low) }
}
