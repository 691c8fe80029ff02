import Platform
import Synchronization
import Testing
import WarehouseCore
@testable import DRAMTier
#if canImport(Glibc)
import Glibc
#endif

/// The DRAM tier as clients see it: a tier set, its broker on a socket, and a fake mount whose
/// `.tw/dram` names the socket, for a `TierReader`.
final class TierFixture {
    let scratch: String
    let tiers: DRAMTiers
    let broker: TierBroker
    let liveness: SharedMemoryMapping
    let mount: String

    init(size: Int = 16 << 20) throws {
        scratch = "/tmp/tw-unit-\(getpid())-tier-\(UInt32.random(in: 0...UInt32.max))"
        try FileSystem.makeDirectories(scratch + "/mnt/.tw", mode: 0o700)
        mount = scratch + "/mnt"
        tiers = DRAMTiers(budget: size, storage: TierStorage.prepare(directory: "/dev/shm", privateDirectory: scratch, size: size),
                          namePrefix: "tw-unit-\(getpid())")
        liveness = try SharedMemoryMapping(namedFileIn: scratch, name: "alive", size: 4096)
        SharedAtomics.storeRelease(liveness.word(at: 0), 0x5eed)
        broker = try TierBroker(socketPath: scratch + "/tier.sock", tiers: tiers, liveness: liveness)
        try FileSystem.writeFileAtomically(mount + "/.tw/dram", bytes: Array("socket \(scratch)/tier.sock\n".utf8), directory: mount + "/.tw")
        broker.start()
    }

    func close() {
        broker.stop()
        tiers.close()
        for name in ["mnt/.tw/dram", "tier.sock", "alive"] { _ = unlink(scratch + "/" + name) }
        for dir in ["mnt/.tw", "mnt", ""] { _ = rmdir(scratch + "/" + dir) }
    }
}

func bytes(_ seed: Int, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed &* 7) } }

@Suite struct DRAMTierTests {
    @Test func insertedBlockIsReadByAMappedReaderAndPinnedByTheDaemon() throws {
        let f = try TierFixture()
        defer { f.close() }
        try f.tiers.namespaceChanged(id: 1, name: "ns", owner: 0, group: 0, mode: 0o755)
        let data = bytes(1, 300_000)
        let key = BlockKey(namespace: "ns", key: "0123456789abcdef")
        #expect(data.withUnsafeBytes { f.tiers.insert(key, namespaceID: 1, bytes: $0, checksum: Checksum.xxh3($0)) })
        let pinned = try #require(f.tiers.pin(key, namespaceID: 1))
        #expect(pinned.withBytes { Array($0) } == data)
        let reader = TierReader(mount: f.mount)
        #expect(reader.isMapped)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        let n = buffer.withUnsafeMutableBytes { reader.copy(namespace: "ns", name: "0123456789abcdef", into: $0) }
        #expect(n == data.count)
        #expect(Array(buffer.prefix(data.count)) == data)
        #expect(buffer.withUnsafeMutableBytes { reader.copy(namespace: "ns", name: "aaaaaaaaaaaaaaaa", into: $0) } == nil)
        #expect(buffer.withUnsafeMutableBytes { reader.copy(namespace: "other", name: "0123456789abcdef", into: $0) } == nil)
        #expect(f.tiers.statistics().mapHits == 1)
    }

    @Test func evictionUnpublishesAndReadersNeverSeeOtherBytes() throws {
        let f = try TierFixture(size: 8 << 20)
        defer { f.close() }
        try f.tiers.namespaceChanged(id: 1, name: "ns", owner: 0, group: 0, mode: 0o755)
        let reader = TierReader(mount: f.mount)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        // Compare checksums (the C XXH3): byte-by-byte comparison of megabytes is slow in debug builds.
        var sums: [UInt64] = []
        var found = 0
        for i in 0..<200 {
            let data = bytes(i, 200_000 + i)
            let sum = data.withUnsafeBytes { Checksum.xxh3($0) }
            sums.append(sum)
            _ = data.withUnsafeBytes { f.tiers.insert(BlockKey(namespace: "ns", key: "b\(i)"), namespaceID: 1, bytes: $0, checksum: sum) }
            for j in Swift.max(0, i - 40)...i {
                let got = buffer.withUnsafeMutableBytes { raw -> UInt64? in
                    reader.copy(namespace: "ns", name: "b\(j)", into: raw).map { Checksum.xxh3(UnsafeRawBufferPointer(rebasing: raw[0..<$0])) }
                }
                if let got {
                    found += 1
                    #expect(got == sums[j], "block \(j) read with other bytes")
                }
            }
        }
        let s = f.tiers.statistics()
        #expect(s.evictions > 0)
        #expect(s.residentBytes <= s.capacityBytes)
        // The newest blocks are always resident right after their insertion: the reads above happened.
        #expect(found >= 200)
    }

    @Test func aReaderRacingTheWriterNeverSeesTornOrRecycledBytes() throws {
        let f = try TierFixture(size: 8 << 20)
        defer { f.close() }
        try f.tiers.namespaceChanged(id: 1, name: "ns", owner: 0, group: 0, mode: 0o755)
        let reader = TierReader(mount: f.mount)
        let payloads = (0..<64).map { bytes($0, 300_000) }
        let sums = payloads.map { p in p.withUnsafeBytes { Checksum.xxh3($0) } }
        let stop = Atomic<Bool>(false)
        let reads = Atomic<Int>(0), wrong = Atomic<Int>(0)
        let readers = (0..<2).map { t in
            BackgroundThread(name: "reader\(t)") {
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                while !stop.load(ordering: .relaxed) {
                    for j in 0..<64 {
                        let got = buffer.withUnsafeMutableBytes { raw -> UInt64? in
                            reader.copy(namespace: "ns", name: "r\(j)", into: raw).map { Checksum.xxh3(UnsafeRawBufferPointer(rebasing: raw[0..<$0])) }
                        }
                        if let got {
                            reads.add(1, ordering: .relaxed)
                            if got != sums[j] { wrong.add(1, ordering: .relaxed) }
                        }
                    }
                }
            }
        }
        // 64 blocks of 300 KB in an 8 MiB tier: constant eviction, moves and reuse of space.
        for round in 0..<20 {
            for j in 0..<64 {
                let key = BlockKey(namespace: "ns", key: "r\(j)")
                if round % 3 == 2 { f.tiers.remove(key, namespaceID: 1) }
                _ = payloads[j].withUnsafeBytes { f.tiers.insert(key, namespaceID: 1, bytes: $0, checksum: sums[j]) }
            }
        }
        stop.store(true, ordering: .relaxed)
        readers.forEach { $0.join() }
        #expect(wrong.load(ordering: .relaxed) == 0)
        #expect(reads.load(ordering: .relaxed) > 0)
    }

    @Test func removedBlocksBytesAreClearedBeforeTheirSpaceIsReused() throws {
        let f = try TierFixture()
        defer { f.close() }
        try f.tiers.namespaceChanged(id: 1, name: "ns", owner: 0, group: 0, mode: 0o755)
        let key = BlockKey(namespace: "ns", key: "secret")
        let data = [UInt8](repeating: 0xA5, count: 64 << 10)
        _ = data.withUnsafeBytes { f.tiers.insert(key, namespaceID: 1, bytes: $0, checksum: Checksum.xxh3($0)) }
        let pinned = try #require(f.tiers.pin(key, namespaceID: 1))
        let address = pinned.withBytes { UInt(bitPattern: $0.baseAddress!) }
        f.tiers.remove(key, namespaceID: 1)
        // Still pinned by a reply: the bytes stay until it is done, then they are cleared.
        #expect(pinned.withBytes { $0.allSatisfy { $0 == 0xA5 } })
        _ = consume pinned
        let after = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: data.count)
        #expect(after.allSatisfy { $0 == 0 })
    }

    @Test func aDamagedResidentBlockIsDroppedNotServed() throws {
        let f = try TierFixture()
        defer { f.close() }
        try f.tiers.namespaceChanged(id: 1, name: "ns", owner: 0, group: 0, mode: 0o755)
        let key = BlockKey(namespace: "ns", key: "k")
        let data = bytes(3, 10_000)
        // A checksum that does not match the bytes stands for memory changed after insertion.
        _ = data.withUnsafeBytes { f.tiers.insert(key, namespaceID: 1, bytes: $0, checksum: Checksum.xxh3($0) ^ 1) }
        // The pin itself costs no pass over the block; the check comes before anything is served.
        let pinned = try #require(f.tiers.pin(key, namespaceID: 1))
        #expect(!pinned.isIntact())
        #expect(!f.tiers.contains(key, namespaceID: 1))
        #expect(f.tiers.statistics().damaged == 1)
    }

    @Test func aNamespaceThatChangesDomainLeavesItsOldTier() throws {
        let f = try TierFixture()
        defer { f.close() }
        try f.tiers.namespaceChanged(id: 1, name: "ns", owner: 1000, group: 1000, mode: 0o755)
        let key = BlockKey(namespace: "ns", key: "k")
        _ = bytes(4, 5000).withUnsafeBytes { f.tiers.insert(key, namespaceID: 1, bytes: $0, checksum: Checksum.xxh3($0)) }
        #expect(f.tiers.contains(key, namespaceID: 1))
        try f.tiers.namespaceChanged(id: 1, name: "ns", owner: 1000, group: 1000, mode: 0o700)
        #expect(!f.tiers.contains(key, namespaceID: 1))
        #expect(f.tiers.domainCount == 2)
        // Only the owner (and root) may read the new domain.
        let private700 = SecurityDomain(owner: 1000, group: 1000, mode: 0o700)
        #expect(private700.admits(uid: 1000, gid: 1000, groups: []))
        #expect(!private700.admits(uid: 1001, gid: 1000, groups: []))
        #expect(private700.admits(uid: 0, gid: 0, groups: []))
        let group750 = SecurityDomain(owner: 1000, group: 2000, mode: 0o750)
        #expect(group750.admits(uid: 1001, gid: 100, groups: [2000]))
        #expect(!group750.admits(uid: 1001, gid: 100, groups: [3000]))
        #expect(f.tiers.readable(uid: 1001, gid: 100, groups: []).flatMap(\.namespaces).isEmpty)
        #expect(f.tiers.readable(uid: 1000, gid: 1000, groups: []).flatMap(\.namespaces) == ["ns"])
    }

    /// Open descriptors of this process.
    static func openDescriptors() -> Int { ((try? FileSystem.listDirectory("/proc/self/fd")) ?? []).count }

    @Test func aTierGivesBackItsDescriptorsAndMemoryWhenDropped() throws {
        let storage = TierStorage.prepare(directory: "/dev/shm", privateDirectory: "/tmp", size: 8 << 20)
        let before = Self.openDescriptors()
        for i in 0..<20 {
            let tier = try DRAMTier(name: "unit-\(getpid())-fd-\(i)", size: 8 << 20, storage: storage)
            tier.close()
        }
        #expect(Self.openDescriptors() <= before + 1)
    }

    @Test func refreshWhileOtherThreadsCopyNeverUnmapsUnderThem() throws {
        let f = try TierFixture()
        defer { f.close() }
        try f.tiers.namespaceChanged(id: 1, name: "ns", owner: 0, group: 0, mode: 0o755)
        let key = BlockKey(namespace: "ns", key: "0123456789abcdef")
        let data = bytes(9, 1 << 20)
        #expect(data.withUnsafeBytes { f.tiers.insert(key, namespaceID: 1, bytes: $0, checksum: Checksum.xxh3($0)) })
        let reader = TierReader(mount: f.mount)
        let stop = Atomic<Bool>(false)
        let hits = Atomic<Int>(0), wrong = Atomic<Int>(0)
        let copiers = (0..<2).map { t in
            BackgroundThread(name: "copier\(t)") {
                var buffer = [UInt8](repeating: 0, count: 2 << 20)
                while !stop.load(ordering: .relaxed) {
                    if let n = buffer.withUnsafeMutableBytes({ reader.copy(namespace: "ns", name: "0123456789abcdef", into: $0) }) {
                        hits.add(1, ordering: .relaxed)
                        if n != data.count || !buffer.prefix(n).elementsEqual(data) { wrong.add(1, ordering: .relaxed) }
                    }
                }
            }
        }
        // Each refresh maps the tiers anew and drops the old mappings: a copy in flight keeps its own.
        for _ in 0..<200 { reader.refresh() }
        stop.store(true, ordering: .relaxed)
        copiers.forEach { $0.join() }
        #expect(wrong.load(ordering: .relaxed) == 0)
        #expect(hits.load(ordering: .relaxed) > 0)
        #expect(reader.remaps >= 200)
    }

    @Test func closingTheTierTellsReadersToRemap() throws {
        let f = try TierFixture()
        try f.tiers.namespaceChanged(id: 1, name: "ns", owner: 0, group: 0, mode: 0o755)
        let reader = TierReader(mount: f.mount)
        #expect(reader.isMapped)
        f.close()
        #expect(!reader.isMapped)
    }

    @Test func aDeadDaemonsTiersAreLetGoOnceTheNextDaemonMarksThem() throws {
        let f = try TierFixture()
        defer { f.close() }
        try f.tiers.namespaceChanged(id: 1, name: "ns", owner: 0, group: 0, mode: 0o755)
        let key = BlockKey(namespace: "ns", key: "0123456789abcdef")
        let data = bytes(3, 5000)
        #expect(data.withUnsafeBytes { f.tiers.insert(key, namespaceID: 1, bytes: $0, checksum: Checksum.xxh3($0)) })
        let reader = TierReader(mount: f.mount)
        var buffer = [UInt8](repeating: 0, count: 8192)
        #expect(buffer.withUnsafeMutableBytes { reader.copy(namespace: "ns", name: "0123456789abcdef", into: $0) } == 5000)
        // The daemon died without zeroing its tiers' generations (kill -9); the next one marks its page.
        SharedAtomics.storeRelease(f.liveness.word(at: 0), 0)
        #expect(!reader.isMapped)
        #expect(buffer.withUnsafeMutableBytes { reader.copy(namespace: "ns", name: "0123456789abcdef", into: $0) } == nil)
    }

    @Test func aNewRuntimeDirectoryMarksTheDeadDaemonsOnes() throws {
        let dead = try RuntimeDirectory(label: "unit-dead-\(getpid())")
        let fd = try dead.liveness.readOnlyDescriptor()
        defer { close(fd) }
        let page = try ReadOnlyMapping(descriptor: fd, what: "alive")
        let word = page.pointer.assumingMemoryBound(to: UInt64.self)
        #expect(SharedAtomics.loadAcquire(word) != 0)
        // Its daemon is gone: a pid that names no process.
        var pid: Int32 = 4_000_000
        while kill(pid, 0) == 0 || errno != ESRCH { pid -= 1 }
        try FileSystem.writeFileAtomically(dead.path + "/pid", bytes: Array("\(pid)\n".utf8), directory: dead.path)
        let next = try RuntimeDirectory(label: "unit-next-\(getpid())")
        defer { next.remove() }
        #expect(SharedAtomics.loadAcquire(word) == 0)
        #expect(access(dead.path, F_OK) != 0)
    }

    @Test func aCraftedSuperblockIsRefusedNotTrusted() throws {
        let path = "/tmp/tw-unit-\(getpid())-crafted"
        defer { _ = unlink(path) }
        var file = [UInt8](repeating: 0, count: 8192)
        for (i, b) in TierFormat.magic.enumerated() { file[i] = b }
        file.withUnsafeMutableBytes { raw in
            LittleEndian.store(TierFormat.version, at: TierFormat.versionOffset, in: raw)
            LittleEndian.store(UInt32(TierFormat.entrySize), at: TierFormat.entrySizeOffset, in: raw)
            LittleEndian.store(UInt64(TierFormat.superblockSize), at: TierFormat.tableOffsetOffset, in: raw)
            LittleEndian.store(UInt64.max, at: TierFormat.tableCapacityOffset, in: raw)        // wraps any product
            LittleEndian.store(UInt64.max - 10, at: TierFormat.dataOffsetOffset, in: raw)
            LittleEndian.store(UInt64(100), at: TierFormat.dataSizeOffset, in: raw)
        }
        try FileSystem.writeFileAtomically(path, bytes: file, directory: "/tmp")
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        let mapping = try ReadOnlyMapping(descriptor: fd, what: path)
        #expect(TierReader.Mapped(name: "crafted", data: mapping, hits: nil) == nil)
    }
}
