/// Explicit little-endian loads and stores: on-disk and shared-memory bytes are never cast to structs.
/// Inlinable, so other modules get them specialized (a generic call per field cost recovery a third of its time).
public enum LittleEndian {
    @inlinable @inline(__always)
    public static func load<T: FixedWidthInteger>(_: T.Type, at offset: Int, in bytes: UnsafeRawBufferPointer) -> T {
        T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
    @inlinable @inline(__always)
    public static func load<T: FixedWidthInteger>(_: T.Type, at offset: Int, in bytes: UnsafeMutableRawBufferPointer) -> T {
        T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
    @inlinable @inline(__always)
    public static func store<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: UnsafeMutableRawBufferPointer) {
        bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}
