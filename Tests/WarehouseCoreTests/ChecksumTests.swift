import CXXHash
import Testing
import WarehouseCore

/// Records on disk carry XXH3 values: whichever entry point of libxxhash the daemon calls (on x86-64 the
/// dispatching one, which picks the vector unit at run time), the values must be the library's plain
/// ones, for every input length class XXH3 treats differently, whole and streamed in pieces.
@Suite struct ChecksumTests {
    @Test func valuesAreThePlainLibrarysForEveryLengthClass() {
        // The published XXH3-64 of no bytes (seed 0).
        #expect(Checksum.xxh3(UnsafeRawBufferPointer(start: nil, count: 0)) == 0x2D06_8005_38D3_94C2)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let bytes = (0..<(2 << 20) + 77).map { _ -> UInt8 in
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return UInt8(truncatingIfNeeded: state)
        }
        bytes.withUnsafeBytes { all in
            for length in [1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1024, 1025, 4096, 65_537, 1 << 20, all.count] {
                let part = UnsafeRawBufferPointer(rebasing: all[0..<length])
                let plain = XXH3_64bits(part.baseAddress, length)
                #expect(Checksum.xxh3(part) == plain, "length \(length)")
                let cut = length / 3
                #expect(Checksum.xxh3(parts: [UnsafeRawBufferPointer(rebasing: part[0..<cut]),
                                              UnsafeRawBufferPointer(rebasing: part[cut...])]) == plain, "length \(length), streamed")
                let streaming = StreamingChecksum()
                streaming.update(UnsafeRawBufferPointer(rebasing: part[0..<cut]))
                streaming.update(UnsafeRawBufferPointer(rebasing: part[cut...]))
                #expect(streaming.digest == plain, "length \(length), streamed")
                let wide = XXH3_128bits(part.baseAddress, length)
                let (low, high) = Checksum.xxh3_128(part)
                #expect(low == wide.low64 && high == wide.high64, "length \(length), 128 bits")
            }
        }
    }
}
