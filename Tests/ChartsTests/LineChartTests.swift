import Testing
@testable import Charts

/// A PNG read back independently of `PNGEncoder`: chunks with their CRCs checked bit by bit, and
/// the zlib stream inflated, which works only for stored deflate blocks (all `PNGEncoder` writes).
struct DecodedPNG {
    struct Chunk {
        var type: String
        var payload: [UInt8]
        var storedCRC: UInt32
        var computedCRC: UInt32
    }

    var chunks: [Chunk] = []
    var width = 0
    var height = 0
    var bitDepth: UInt8 = 0
    var colourType: UInt8 = 0
    /// Filter byte and RGB bytes of every scanline, as inflated from IDAT.
    var scanlines: [UInt8] = []

    enum Failure: Error { case badSignature, truncated, badZlib(String) }

    init(_ file: [UInt8]) throws {
        guard file.count >= 8, Array(file[0..<8]) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] else {
            throw Failure.badSignature
        }
        var offset = 8
        var idat = [UInt8]()
        while offset < file.count {
            guard offset + 12 <= file.count else { throw Failure.truncated }
            let length = Int(Self.bigEndian(file, offset))
            guard offset + 12 + length <= file.count else { throw Failure.truncated }
            let typeAndPayload = Array(file[(offset + 4)..<(offset + 8 + length)])
            let chunk = Chunk(type: String(decoding: typeAndPayload.prefix(4), as: UTF8.self),
                              payload: Array(typeAndPayload.dropFirst(4)),
                              storedCRC: Self.bigEndian(file, offset + 8 + length),
                              computedCRC: Self.bitwiseCRC32(typeAndPayload))
            chunks.append(chunk)
            if chunk.type == "IHDR" {
                width = Int(Self.bigEndian(chunk.payload, 0))
                height = Int(Self.bigEndian(chunk.payload, 4))
                bitDepth = chunk.payload[8]
                colourType = chunk.payload[9]
            }
            if chunk.type == "IDAT" { idat += chunk.payload }
            offset += 12 + length
        }
        scanlines = try Self.inflateStored(idat)
    }

    /// The colour of pixel (x, y), skipping each scanline's filter byte.
    func pixel(_ x: Int, _ y: Int) -> ChartColour {
        let i = y * (1 + 3 * width) + 1 + 3 * x
        return ChartColour(red: scanlines[i], green: scanlines[i + 1], blue: scanlines[i + 2])
    }

    static func bigEndian(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8 | UInt32(bytes[at + 3])
    }

    /// CRC-32 one bit at a time, so that it shares nothing with the encoder's table.
    static func bitwiseCRC32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = (crc >> 1) ^ (crc & 1 == 0 ? 0 : 0xEDB8_8320) }
        }
        return ~crc
    }

    static func inflateStored(_ stream: [UInt8]) throws -> [UInt8] {
        guard stream.count >= 6, stream[0] & 0x0F == 8, (UInt32(stream[0]) << 8 | UInt32(stream[1])) % 31 == 0 else {
            throw Failure.badZlib("header")
        }
        var out = [UInt8](), offset = 2, isFinal = false
        while !isFinal {
            guard offset + 5 <= stream.count else { throw Failure.badZlib("block header past end") }
            guard stream[offset] >> 1 & 3 == 0 else { throw Failure.badZlib("block type \(stream[offset] >> 1 & 3)") }
            isFinal = stream[offset] & 1 == 1
            let length = Int(stream[offset + 1]) | Int(stream[offset + 2]) << 8
            let complement = Int(stream[offset + 3]) | Int(stream[offset + 4]) << 8
            guard length ^ complement == 0xFFFF else { throw Failure.badZlib("NLEN") }
            guard offset + 5 + length <= stream.count else { throw Failure.badZlib("block past end") }
            out += stream[(offset + 5)..<(offset + 5 + length)]
            offset += 5 + length
        }
        guard offset + 4 == stream.count else { throw Failure.badZlib("trailer") }
        var a: UInt32 = 1, b: UInt32 = 0
        for byte in out { a = (a + UInt32(byte)) % 65_521; b = (b + a) % 65_521 }
        guard bigEndian(stream, offset) == b << 16 | a else { throw Failure.badZlib("Adler-32") }
        return out
    }
}

@Suite struct PNGEncoderTests {
    @Test func formatConstantsArePinned() {
        #expect(PNGFormat.signature == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        #expect(PNGFormat.headerLength == 13)
        #expect(PNGFormat.chunkOverhead == 12)
        #expect(PNGFormat.maxStoredBlockLength == 65_535)
        #expect(PNGFormat.storedBlockHeaderLength == 5)
        #expect((Int(PNGFormat.zlibHeader[0]) << 8 | Int(PNGFormat.zlibHeader[1])) % 31 == 0)
    }

    @Test func checksumsMatchPublishedValues() {
        #expect(PNGEncoder.crc32(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(PNGEncoder.crc32(Array("IEND".utf8)) == 0xAE42_6082)
        #expect(PNGEncoder.adler32(Array("Wikipedia".utf8)) == 0x11E6_0398)
        #expect(PNGEncoder.adler32([]) == 1)
    }

    @Test func adlerSumsStayExactPastTheReductionRun() {
        let data = [UInt8](repeating: 0xFF, count: 100_000)
        var a: UInt64 = 1, b: UInt64 = 0
        for byte in data { a = (a + UInt64(byte)) % 65_521; b = (b + a) % 65_521 }
        #expect(PNGEncoder.adler32(data) == UInt32(b << 16 | a))
    }

    @Test func longDataSplitsIntoFullStoredBlocks() throws {
        let data = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let stream = PNGEncoder.zlibStored(data)
        #expect(stream.count == 2 + data.count + 4 * PNGFormat.storedBlockHeaderLength + 4)
        #expect(try DecodedPNG.inflateStored(stream) == data)
    }

    @Test func emptyDataIsOneFinalEmptyBlock() throws {
        let stream = PNGEncoder.zlibStored([])
        #expect(stream == PNGFormat.zlibHeader + [1, 0, 0, 0xFF, 0xFF, 0, 0, 0, 1])
        #expect(try DecodedPNG.inflateStored(stream) == [])
    }

    @Test func encodedPixelsComeBackUnchanged() throws {
        let (width, height) = (3, 2)
        let rgb: [UInt8] = (0..<(width * height * 3)).map { UInt8($0 * 10) }
        let png = try DecodedPNG(PNGEncoder.encode(rgb: rgb, width: width, height: height))
        #expect(png.chunks.map(\.type) == ["IHDR", "IDAT", "IEND"])
        let expected: [UInt8] = [0] + Array(rgb[0..<9]) + [0] + Array(rgb[9..<18])
        #expect(png.scanlines == expected)
    }
}

@Suite struct LineChartTests {
    static let hitRatios = LineChart(
        title: "Hit ratio against NVMe capacity", xLabel: "NVMe capacity (GiB)", yLabel: "hit ratio",
        series: [
            ChartSeries(name: "DRAM 1 GiB", points: [(16, 0.25), (64, 0.55), (256, 0.8), (1024, 0.93)]),
            ChartSeries(name: "DRAM 4 GiB", points: [(16, 0.35), (64, 0.6), (256, 0.82), (1024, 0.94)]),
        ],
        logScaleX: true, yRange: 0...1)

    @Test func pngStartsWithTheSignatureAndHasHeaderDataEnd() throws {
        let file = Self.hitRatios.renderPNG()
        #expect(Array(file.prefix(8)) == PNGFormat.signature)
        let png = try DecodedPNG(file)
        #expect(png.chunks.map(\.type) == ["IHDR", "IDAT", "IEND"])
        #expect(png.chunks.last?.payload.isEmpty == true)
    }

    @Test func everyChunkCRCMatches() throws {
        let png = try DecodedPNG(Self.hitRatios.renderPNG(width: 640, height: 400))
        for chunk in png.chunks {
            #expect(chunk.storedCRC == chunk.computedCRC, "chunk \(chunk.type)")
        }
    }

    @Test func headerCarriesTheRequestedSizeAs8BitRGB() throws {
        let png = try DecodedPNG(Self.hitRatios.renderPNG(width: 777, height: 333))
        #expect(png.chunks.first?.payload.count == PNGFormat.headerLength)
        #expect(png.width == 777)
        #expect(png.height == 333)
        #expect(png.bitDepth == 8)
        #expect(png.colourType == 2)
        #expect(Array(png.chunks[0].payload[10...12]) == [0, 0, 0])
    }

    @Test func inflatedDataIsOneFilterByteAndAnRGBRowPerScanline() throws {
        let (width, height) = (900, 560)
        let png = try DecodedPNG(Self.hitRatios.renderPNG(width: width, height: height))
        #expect(png.scanlines.count == height * (1 + 3 * width))
        #expect((0..<height).allSatisfy { png.scanlines[$0 * (1 + 3 * width)] == PNGFormat.filterNone })
        let (raster, _) = Self.hitRatios.render(width: width, height: height)
        let rows = (0..<height).map { Array(png.scanlines[($0 * (1 + 3 * width) + 1)..<(($0 + 1) * (1 + 3 * width))]) }
        #expect(Array(rows.joined()) == raster.bytes)
    }

    @Test func eachSeriesIsDrawnInItsColourAtItsPoints() throws {
        let (width, height) = (900, 560)
        let png = try DecodedPNG(Self.hitRatios.renderPNG(width: width, height: height))
        let (_, layout) = Self.hitRatios.render(width: width, height: height)
        for (index, series) in Self.hitRatios.series.enumerated() {
            let colour = LineChart.colour(forSeriesAt: index)
            for point in series.points {
                let at = try #require(layout.position(x: point.x, y: point.y))
                #expect(layout.plot.contains(x: at.x, y: at.y))
                #expect(png.pixel(Int(at.x), Int(at.y)) == colour, "series \(index) at \(point)")
            }
            // Halfway along the first segment, on the line itself.
            let a = try #require(layout.position(x: series.points[0].x, y: series.points[0].y))
            let b = try #require(layout.position(x: series.points[1].x, y: series.points[1].y))
            #expect(png.pixel(Int((a.x + b.x) / 2), Int((a.y + b.y) / 2)) == colour)
        }
        #expect(LineChart.colour(forSeriesAt: 0) != LineChart.colour(forSeriesAt: 1))
    }

    @Test func paletteHasEightDistinctColoursNoneWhite() {
        #expect(Set(LineChart.palette).count == 8)
        #expect(!LineChart.palette.contains(.white))
        #expect(LineChart.colour(forSeriesAt: 8) == LineChart.palette[0])
    }

    @Test func hitRatioAxisTicksAtRoundValuesAndLogAxisAtPowersOfTwo() {
        let (_, layout) = Self.hitRatios.render(width: 900, height: 560)
        #expect(layout.y.lower == 0 && layout.y.upper == 1)
        #expect(layout.y.labels == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"])
        #expect(layout.x.logarithmic)
        #expect(layout.x.labels == ["16", "32", "64", "128", "256", "512", "1024"])
    }

    @Test func chartWithoutSeriesRendersAxesOnly() throws {
        let chart = LineChart(title: "nothing yet")
        let png = try DecodedPNG(chart.renderPNG(width: 400, height: 300))
        #expect(png.scanlines.count == 300 * (1 + 3 * 400))
        let (_, layout) = chart.render(width: 400, height: 300)
        #expect(layout.legend == nil)
        #expect(!layout.y.ticks.isEmpty && !layout.x.ticks.isEmpty)
    }

    @Test func seriesWithoutPointsStillGetsALegendEntry() throws {
        let chart = LineChart(series: [ChartSeries(name: "empty", points: [])], logScaleX: true)
        let png = try DecodedPNG(chart.renderPNG())
        #expect(png.width == 900)
        #expect(chart.render(width: 900, height: 560).1.legend != nil)
    }

    @Test func singlePointIsDrawnAsAMarker() throws {
        let chart = LineChart(series: [ChartSeries(name: "one", points: [(3, 7)])])
        let png = try DecodedPNG(chart.renderPNG())
        let (_, layout) = chart.render(width: 900, height: 560)
        let at = try #require(layout.position(x: 3, y: 7))
        #expect(layout.plot.contains(x: at.x, y: at.y))
        #expect(png.pixel(Int(at.x), Int(at.y)) == LineChart.colour(forSeriesAt: 0))
    }

    @Test func pointsThatCannotBeDrawnBreakTheLineWithoutCrashing() throws {
        let chart = LineChart(
            series: [
                ChartSeries(name: "gaps", points: [(1, 0.1), (2, .nan), (4, 0.3), (.infinity, 0.4), (8, 0.5), (0, 0.6), (-2, 0.7), (16, 0.8)]),
                ChartSeries(name: "all NaN", points: [(.nan, .nan), (1, .nan)]),
            ],
            logScaleX: true)
        let png = try DecodedPNG(chart.renderPNG())
        #expect(png.scanlines.count == 560 * (1 + 3 * 900))
        let (_, layout) = chart.render(width: 900, height: 560)
        #expect(layout.runs[0].map(\.count) == [1, 1, 1, 1])
        #expect(layout.runs[1].isEmpty)
        #expect(layout.x.lower <= 1 && layout.x.upper >= 16)
        #expect(layout.y.lower <= 0.1 && layout.y.upper >= 0.8)
    }

    @Test func valuesOutsideAFixedRangeAreClippedNotFatal() throws {
        let chart = LineChart(series: [ChartSeries(name: "wild", points: [(0, -1e300), (1, 0.5), (2, 1e300), (3, 2)])],
                              yRange: 0...1)
        let png = try DecodedPNG(chart.renderPNG(width: 500, height: 320))
        #expect(png.height == 320)
        let layout = chart.render(width: 500, height: 320).1
        #expect(layout.y.lower == 0 && layout.y.upper == 1)
    }

    @Test func valuesNearTheLimitsOfDoubleDoNotOverflowTheAxes() throws {
        let extremes: [(x: Double, y: Double)] = [(.leastNonzeroMagnitude, 1e308), (1, -1e308), (1e308, .greatestFiniteMagnitude), (2, 5e307)]
        for logScaleX in [false, true] {
            let chart = LineChart(series: [ChartSeries(name: "extremes", points: extremes)], logScaleX: logScaleX)
            let png = try DecodedPNG(chart.renderPNG(width: 400, height: 300))
            #expect(png.scanlines.count == 300 * (1 + 3 * 400))
        }
    }

    @Test func equalValuesGetASpanAroundThem() {
        let chart = LineChart(series: [ChartSeries(name: "flat", points: [(5, 0.5), (5, 0.5)])])
        let layout = chart.render(width: 600, height: 400).1
        #expect(layout.x.lower < 5 && layout.x.upper > 5)
        #expect(layout.y.lower < 0.5 && layout.y.upper > 0.5)
    }

    @Test func tinyImagesRenderWithoutCrashing() throws {
        for (width, height) in [(1, 1), (20, 10), (120, 80)] {
            let png = try DecodedPNG(Self.hitRatios.renderPNG(width: width, height: height))
            #expect(png.scanlines.count == height * (1 + 3 * width))
        }
    }
}

@Suite struct AxisScaleTests {
    @Test func linearStepsAreOneTwoOrFiveTimesAPowerOfTen() {
        #expect(AxisScale.niceStep(span: 1, maxTicks: 8).value == 0.2)
        #expect(AxisScale.niceStep(span: 1, maxTicks: 10).value == 0.1)
        #expect(AxisScale.niceStep(span: 82.5, maxTicks: 9).value == 10)
        #expect(AxisScale.niceStep(span: 3e6, maxTicks: 6).value == 5e5)
    }

    @Test func linearAxisRoundsOutToWholeTicks() {
        let axis = AxisScale.linear(values: [3, 47], fixed: nil, maxTicks: 6)
        #expect(axis.lower == 0 && axis.upper == 50)
        #expect(axis.labels == ["0", "10", "20", "30", "40", "50"])
    }

    @Test func logAxisOfDecimalValuesTicksAtOneTwoFive() {
        let axis = AxisScale.logarithmic(values: [0.3, 3, 40], maxTicks: 12)
        #expect(axis.labels == ["0.2", "0.5", "1", "2", "5", "10", "20", "50"])
    }

    @Test func wideLogAxisTicksAtDecades() {
        let axis = AxisScale.logarithmic(values: [1, 1e6], maxTicks: 8)
        #expect(axis.labels == ["1", "10", "100", "1000", "10000", "100000", "1000000"])
    }

    @Test func numbersFormatWithoutFoundation() {
        #expect(ChartMath.format(0.25, decimals: 2) == "0.25")
        #expect(ChartMath.format(-0.5, decimals: 1) == "-0.5")
        #expect(ChartMath.format(-0.0001, decimals: 1) == "0.0")
        #expect(ChartMath.format(0.05, decimals: 2) == "0.05")
        #expect(ChartMath.format(2e9, decimals: 0) == "2e9")
        #expect(ChartMath.format(.nan, decimals: 1) == "nan")
        #expect(ChartMath.formatPowerOfTwo(-2) == "0.25")
        #expect(ChartMath.formatPowerOfTwo(10) == "1024")
        #expect(ChartMath.formatPowerOfTwo(30) == "2^30")
    }

    @Test func logarithmsAndDecadesAreExactEnoughForPixels() {
        #expect(abs(ChartMath.log2(1024) - 10) < 1e-12)
        #expect(abs(ChartMath.log2(3) - 1.584_962_500_721_156) < 1e-12)
        #expect(ChartMath.decade(of: 1000) == 3)
        #expect(ChartMath.decade(of: 999.9) == 2)
        #expect(ChartMath.decade(of: 0.001) == -3)
    }
}

@Suite struct BitmapFontTests {
    @Test func everyPrintableCharacterHasAGlyphOfNineRowsFiveColumnsWide() {
        #expect(BitmapFont.glyphs.count == 95)
        for glyph in BitmapFont.glyphs {
            #expect(glyph.count == BitmapFont.glyphHeight)
            #expect(glyph.allSatisfy { $0 < 1 << BitmapFont.glyphWidth })
        }
        #expect(BitmapFont.rows(for: " ").allSatisfy { $0 == 0 })
        let printable = (33...126).map { BitmapFont.rows(for: Unicode.Scalar(UInt8($0))) }
        #expect(printable.allSatisfy { $0.contains { $0 != 0 } })
        #expect(Set(printable).count == printable.count, "two characters share a glyph")
    }

    @Test func charactersOutsideASCIIDrawAsQuestionMarks() {
        #expect(BitmapFont.rows(for: "µ") == BitmapFont.rows(for: "?"))
        #expect(BitmapFont.rows(for: "\n") == BitmapFont.rows(for: "?"))
        #expect(BitmapFont.width(of: "µs", scale: 2) == BitmapFont.width(of: "?s", scale: 2))
    }

    @Test func textWidthLeavesNoTrailingSpace() {
        #expect(BitmapFont.width(of: "", scale: 2) == 0)
        #expect(BitmapFont.width(of: "A", scale: 1) == 5)
        #expect(BitmapFont.width(of: "AB", scale: 2) == 22)
    }
}
