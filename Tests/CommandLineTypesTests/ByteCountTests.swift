import CommandLineTypes
import Testing

@Suite struct ByteCountTests {
    @Test func sizesParseAsOperatorsWriteThem() {
        #expect(ByteCount(parsing: "4096")?.bytes == 4096)
        #expect(ByteCount(parsing: "512K")?.bytes == 512 << 10)
        #expect(ByteCount(parsing: "512M")?.bytes == 512 << 20)
        #expect(ByteCount(parsing: "512MiB")?.bytes == 512 << 20)
        #expect(ByteCount(parsing: "20GB")?.bytes == 20 << 30)
        #expect(ByteCount(parsing: "1.5T")?.bytes == 3 << 39)
        #expect(ByteCount(parsing: " 2g ")?.bytes == 2 << 30)
    }

    @Test func whatDoesNotFitIsRefusedNotTrapped() {
        for text in ["1e30", "20000000P", "16E", "-1", "", "M", "1.2.3G", "nan", "inf", "0x10"] {
            #expect(ByteCount(parsing: text) == nil, "\(text) was accepted")
        }
        #expect(ByteCount(parsing: "15E") != nil)
    }

    @Test func printedSizesReadBack() {
        for bytes: UInt64 in [0, 1, 4095, 4096, 1 << 20, 1536 << 10, 20 << 30, 1 << 40, 3 << 39, UInt64.max] {
            let text = ByteCount(bytes: bytes).description
            #expect(ByteCount(parsing: text)?.bytes == bytes, "\(bytes) printed as \(text)")
        }
    }

    @Test func durationsParseAndPrint() {
        #expect(TimeSpan(parsing: "90")?.seconds == 90)
        #expect(TimeSpan(parsing: "30s")?.seconds == 30)
        #expect(TimeSpan(parsing: "10m")?.seconds == 600)
        #expect(TimeSpan(parsing: "1.5h")?.seconds == 5400)
        #expect(TimeSpan(parsing: "7d")?.seconds == 604_800)
        #expect(TimeSpan(parsing: "60000000000000000000d") == nil)
        #expect(TimeSpan(parsing: "x") == nil)
        #expect(TimeSpan(seconds: 86400).description == "1d")
        #expect(TimeSpan(seconds: 90).description == "90s")
    }
}
