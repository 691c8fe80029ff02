import Testing
import BlockStore
import Platform
@testable import DRAMTier
#if canImport(Glibc)
import Glibc
#endif

@Suite struct DRAMTierTests {
    /// A tier in /dev/shm and a fake mount whose .tw/dram names it, for a `TierReader`.
    func makeTier(size: Int = 16 << 20) throws -> (DRAMTier, String) {
        let name = "tw-unit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let tier = try DRAMTier(path: "/dev/shm/" + name, size: size, group: nil)
        let mount = "/tmp/" + name
        try FileSystem.makeDirectories(mount + "/.tw")
        try FileSystem.writeFileAtomically(mount + "/.tw/dram", bytes: Array((tier.path + "\n").utf8), directory: mount + "/.tw")
        return (tier, mount)
    }

    func bytes(_ seed: Int, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed &* 7) } }

    @Test func insertedBlockIsReadByAMappedReaderAndPinnedByTheDaemon() throws {
        let (tier, mount) = try makeTier()
        defer { tier.close() }
        let data = bytes(1, 300_000)
        let key = BlockKey(namespace: "ns", key: "0123456789abcdef")
        #expect(data.withUnsafeBytes { tier.insert(key, bytes: $0, checksum: Checksum.xxh3($0)) })
        let pinned = try #require(tier.pin(key))
        #expect(Array(pinned.bytes) == data)
        let reader = TierReader(mount: mount)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        let n = buffer.withUnsafeMutableBytes { reader.copy(namespace: "ns", name: "0123456789abcdef", into: $0) }
        #expect(n == data.count)
        #expect(Array(buffer.prefix(data.count)) == data)
        #expect(buffer.withUnsafeMutableBytes { reader.copy(namespace: "ns", name: "absent", into: $0) } == nil)
        #expect(buffer.withUnsafeMutableBytes { reader.copy(namespace: "other", name: "0123456789abcdef", into: $0) } == nil)
        #expect(tier.statistics().mapHits == 1)
    }

    @Test func evictionUnpublishesAndReadersNeverSeeOtherBytes() throws {
        let (tier, mount) = try makeTier(size: 8 << 20)
        defer { tier.close() }
        let reader = TierReader(mount: mount)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        // Compare checksums (the C XXH3): byte-by-byte comparison of megabytes is slow in debug builds.
        var sums: [UInt64] = []
        for i in 0..<200 {
            let data = bytes(i, 200_000 + i)
            let sum = data.withUnsafeBytes { Checksum.xxh3($0) }
            sums.append(sum)
            _ = data.withUnsafeBytes { tier.insert(BlockKey(namespace: "ns", key: "b\(i)"), bytes: $0, checksum: sum) }
            for j in Swift.max(0, i - 40)...i {
                let got = buffer.withUnsafeMutableBytes { raw -> UInt64? in
                    reader.copy(namespace: "ns", name: "b\(j)", into: raw).map { Checksum.xxh3(UnsafeRawBufferPointer(rebasing: raw[0..<$0])) }
                }
                if let got { #expect(got == sums[j], "block \(j) read with other bytes") }
            }
        }
        let s = tier.statistics()
        #expect(s.evictions > 0)
        #expect(s.residentBytes <= s.capacityBytes)
    }

    @Test func closingTheTierTellsReadersToRemap() throws {
        let (tier, mount) = try makeTier()
        let reader = TierReader(mount: mount)
        #expect(reader.isMapped)
        tier.close()
        #expect(!reader.isMapped)
        #expect(!FileSystem.exists(tier.path))
    }
}
