/// Explicit little-endian loads and stores: on-disk and shared-memory bytes are never cast to structs.
public enum LittleEndian {
    @inline(__always)
    public static func load<T: FixedWidthInteger>(_: T.Type, at offset: Int, in bytes: UnsafeRawBufferPointer) -> T {
        T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
    @inline(__always)
    public static func load<T: FixedWidthInteger>(_: T.Type, at offset: Int, in bytes: UnsafeMutableRawBufferPointer) -> T {
        T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
    @inline(__always)
    public static func store<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: UnsafeMutableRawBufferPointer) {
        bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}
