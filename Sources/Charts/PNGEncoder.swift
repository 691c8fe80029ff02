/// The PNG subset this module writes: 8-bit truecolour (RGB), no interlace, filter type 0 on every
/// scanline, one IDAT chunk holding a zlib stream of deflate stored (uncompressed) blocks.
///
/// Specs: PNG, W3C Recommendation, https://www.w3.org/TR/png-3/ (chunk layout §5.3, IHDR §11.2.1,
/// CRC Annex D); zlib, RFC 1950 (header and Adler-32); deflate, RFC 1951 §3.2.4 (stored blocks).
/// All multi-byte integers in PNG and zlib are big-endian; LEN and NLEN of a stored block are
/// little-endian.
public enum PNGFormat {
    /// The eight bytes every PNG file starts with.
    public static let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
    /// Length of the IHDR payload: width, height (4 bytes each), bit depth, colour type,
    /// compression, filter and interlace method (1 byte each).
    public static let headerLength = 13
    /// Bytes of one chunk beyond its payload: length, type and CRC (4 bytes each).
    public static let chunkOverhead = 12
    public static let bitDepth: UInt8 = 8
    /// Colour type 2: each pixel is an R, G, B triple.
    public static let colourTypeRGB: UInt8 = 2
    public static let bytesPerPixel = 3
    /// Filter type 0 (None), written in front of every scanline.
    public static let filterNone: UInt8 = 0
    /// zlib CMF and FLG: deflate with a 32 KiB window, no preset dictionary, and FCHECK making
    /// CMF·256 + FLG a multiple of 31.
    public static let zlibHeader: [UInt8] = [0x78, 0x01]
    /// The most bytes one stored deflate block holds (LEN is 16 bits).
    public static let maxStoredBlockLength = 65_535
    /// Bytes in front of each stored block's data: BFINAL/BTYPE, LEN, NLEN.
    public static let storedBlockHeaderLength = 5
}

/// Encodes an RGB image as PNG bytes (see `PNGFormat`). Stateless; safe from any thread.
public enum PNGEncoder {
    /// Encodes 8-bit RGB pixels as a PNG file.
    /// - Parameters:
    ///   - rgb: `width * height * 3` bytes, rows top first, each pixel red, green, blue.
    ///   - width: Pixels a row; at least 1.
    ///   - height: Rows; at least 1.
    /// - Returns: The complete file: signature, IHDR, IDAT, IEND.
    public static func encode(rgb: [UInt8], width: Int, height: Int) -> [UInt8] {
        precondition(width >= 1 && height >= 1 && width <= Int(Int32.max) && height <= Int(Int32.max),
                     "PNG dimensions \(width)x\(height) out of range")
        let rowLength = width * PNGFormat.bytesPerPixel
        precondition(rgb.count == rowLength * height, "expected \(rowLength * height) RGB bytes, got \(rgb.count)")

        var scanlines = [UInt8]()
        scanlines.reserveCapacity((rowLength + 1) * height)
        for row in 0..<height {
            scanlines.append(PNGFormat.filterNone)
            scanlines.append(contentsOf: rgb[(row * rowLength)..<((row + 1) * rowLength)])
        }

        var header = [UInt8]()
        appendBigEndian(UInt32(width), to: &header)
        appendBigEndian(UInt32(height), to: &header)
        header += [PNGFormat.bitDepth, PNGFormat.colourTypeRGB, 0, 0, 0]

        var file = PNGFormat.signature
        appendChunk("IHDR", header, to: &file)
        appendChunk("IDAT", zlibStored(scanlines), to: &file)
        appendChunk("IEND", [], to: &file)
        return file
    }

    /// Wraps `data` in a zlib stream of stored deflate blocks: header, blocks, Adler-32 of `data`.
    static func zlibStored(_ data: [UInt8]) -> [UInt8] {
        let blocks = max(1, (data.count + PNGFormat.maxStoredBlockLength - 1) / PNGFormat.maxStoredBlockLength)
        var out = PNGFormat.zlibHeader
        out.reserveCapacity(2 + data.count + blocks * PNGFormat.storedBlockHeaderLength + 4)
        var start = 0
        repeat {
            let length = min(PNGFormat.maxStoredBlockLength, data.count - start)
            let isFinal = start + length == data.count
            // BFINAL is bit 0, BTYPE (00 = stored) bits 1-2; the rest of the byte pads to a boundary.
            out.append(isFinal ? 1 : 0)
            out.append(UInt8(truncatingIfNeeded: length))
            out.append(UInt8(truncatingIfNeeded: length >> 8))
            out.append(UInt8(truncatingIfNeeded: ~length))
            out.append(UInt8(truncatingIfNeeded: ~length >> 8))
            out.append(contentsOf: data[start..<(start + length)])
            start += length
        } while start < data.count
        appendBigEndian(adler32(data), to: &out)
        return out
    }

    /// Adler-32 (RFC 1950 §8.2).
    static func adler32(_ data: [UInt8]) -> UInt32 {
        let modulus: UInt32 = 65_521
        // 5552 bytes is the longest run whose sums cannot overflow 32 bits before reduction.
        let run = 5_552
        var a: UInt32 = 1, b: UInt32 = 0
        var index = 0
        while index < data.count {
            let end = min(index + run, data.count)
            while index < end {
                a &+= UInt32(data[index])
                b &+= a
                index += 1
            }
            a %= modulus
            b %= modulus
        }
        return b << 16 | a
    }

    /// CRC-32 as PNG uses it (ISO 3309 polynomial, reflected, PNG Annex D) over `bytes`.
    static func crc32<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        let table = crcTable
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
        }
        return crc ^ 0xFFFF_FFFF
    }

    private static let crcTable: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// Appends length, type, payload and the CRC of type and payload.
    private static func appendChunk(_ type: String, _ payload: [UInt8], to file: inout [UInt8]) {
        precondition(type.utf8.count == 4)
        appendBigEndian(UInt32(payload.count), to: &file)
        let typeStart = file.count
        file.append(contentsOf: type.utf8)
        file.append(contentsOf: payload)
        appendBigEndian(crc32(file[typeStart...]), to: &file)
    }

    private static func appendBigEndian(_ value: UInt32, to bytes: inout [UInt8]) {
        bytes += [UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16),
                  UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)]
    }
}
