import WarehouseCore
import CLZ4
import Platform

/// LZ4 block compression of payloads (liblz4).
public enum LZ4Codec {
    /// Compresses `input`; returns the buffer and compressed length, or nil when it would not fit
    /// `limit` bytes (the caller then stores the payload uncompressed).
    public static func compress(_ input: UnsafeRawBufferPointer, limit: Int) -> (AlignedBuffer, Int)? {
        guard input.count > 0, input.count < Int(LZ4_MAX_INPUT_SIZE) else { return nil }
        let bound = Int(LZ4_compressBound(Int32(input.count)))
        let out = AlignedBuffer(capacity: bound)
        let n = LZ4_compress_default(input.baseAddress!.assumingMemoryBound(to: CChar.self),
                                     out.pointer.assumingMemoryBound(to: CChar.self), Int32(input.count), Int32(bound))
        guard n > 0, Int(n) <= limit else { return nil }
        return (out, Int(n))
    }

    /// Decompresses into `output`, which must be exactly the logical length; false when the data is damaged.
    public static func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
        let n = LZ4_decompress_safe(input.baseAddress!.assumingMemoryBound(to: CChar.self),
                                    output.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(input.count), Int32(output.count))
        return Int(n) == output.count
    }
}
