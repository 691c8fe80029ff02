import BlockStore
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// A reader of a mount's DRAM tier for Swift clients: maps the tier file read-only and copies resident
/// blocks out with no system call, following the sequence-lock protocol of docs/dram-tier.md.
///
/// Thread-safety: lookups may run concurrently; `refresh` must not run concurrently with them.
public final class TierReader: @unchecked Sendable {
    // Safe: the mapping is replaced only by `refresh`, which callers serialise with lookups.
    public let mount: String
    private var map: UnsafeMutableRawPointer?
    private var mapSize = 0
    private var generation: UInt64 = 0
    private var hits: UnsafeMutableRawPointer?
    private var hitsSize = 0
    public private(set) var remaps = 0

    /// Opens the tier of the warehouse mounted at `mount` (files only when it has none).
    public init(mount: String) {
        self.mount = mount
        refresh()
    }

    deinit { unmap() }

    private func unmap() {
        if let map { munmap(map, mapSize) }
        if let hits { munmap(hits, hitsSize) }
        map = nil
        hits = nil
    }

    /// Maps the tier named in MOUNT/.tw/dram again (after the daemon restarted).
    public func refresh() {
        unmap()
        guard let bytes = try? FileSystem.readFile(mount + "/.tw/dram") else { return }
        let path = String(decoding: bytes, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        guard !path.isEmpty else { return }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= TierFormat.superblockSize,
              let p = mmap(nil, Int(st.st_size), PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else { return }
        let sb = UnsafeRawBufferPointer(start: p, count: TierFormat.superblockSize)
        guard Array(sb[0..<8]) == TierFormat.magic, LittleEndian.load(UInt32.self, at: 8, in: sb) == TierFormat.version else {
            munmap(p, Int(st.st_size))
            return
        }
        map = p
        mapSize = Int(st.st_size)
        generation = SharedAtomics.loadAcquire(p.advanced(by: TierFormat.generationOffset).assumingMemoryBound(to: UInt64.self))
        remaps += 1
        let hfd = open(path + ".hits", O_RDWR | O_CLOEXEC)
        if hfd >= 0 {
            var hst = stat()
            if fstat(hfd, &hst) == 0, let h = mmap(nil, Int(hst.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, hfd, 0), h != MAP_FAILED {
                hits = h
                hitsSize = Int(hst.st_size)
            }
            close(hfd)
        }
    }

    /// Whether a tier is mapped and its daemon still runs.
    public var isMapped: Bool {
        guard let map else { return false }
        let g = SharedAtomics.loadAcquire(map.advanced(by: TierFormat.generationOffset).assumingMemoryBound(to: UInt64.self))
        return g != 0 && g == generation
    }

    /// Copies block `name` of namespace `namespace` into `buffer` if resident: returns its length, or nil
    /// (not resident, changed while copying, or buffer too small) — then read the block file.
    public func copy(namespace: String, name: String, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard let map, isMapped else { return nil }
        let key = BlockKey(namespace: namespace, key: name)
        let sb = UnsafeRawBufferPointer(start: map, count: TierFormat.superblockSize)
        let capacity = Int(LittleEndian.load(UInt64.self, at: TierFormat.tableCapacityOffset, in: sb))
        let probes = Int(LittleEndian.load(UInt32.self, at: TierFormat.maxProbeOffset, in: sb))
        let dataStart = Int(LittleEndian.load(UInt64.self, at: TierFormat.dataOffsetOffset, in: sb))
        let dataEnd = dataStart + Int(LittleEndian.load(UInt64.self, at: TierFormat.dataSizeOffset, in: sb))
        for i in 0..<probes {
            let index = (Int(truncatingIfNeeded: key.low) &+ i) & (capacity - 1)
            let e = map + TierFormat.superblockSize + index * TierFormat.entrySize
            let seq = SharedAtomics.loadAcquire(e.assumingMemoryBound(to: UInt64.self))
            if seq & 1 == 1 { return nil }
            let state = UInt32(littleEndian: (e + TierFormat.stateOffset).load(as: UInt32.self))
            if state == TierFormat.stateEmpty { return nil }
            guard state == TierFormat.stateValid,
                  UInt64(littleEndian: (e + TierFormat.keyLowOffset).load(as: UInt64.self)) == key.low,
                  UInt64(littleEndian: (e + TierFormat.keyHighOffset).load(as: UInt64.self)) == key.high else { continue }
            let offset = Int(UInt64(littleEndian: (e + TierFormat.dataOffsetField).load(as: UInt64.self)))
            let length = Int(UInt64(littleEndian: (e + TierFormat.lengthOffset).load(as: UInt64.self)))
            guard offset >= dataStart, length >= 0, offset + length <= dataEnd, length <= buffer.count else { return nil }
            memcpy(buffer.baseAddress!, map + offset, length)
            SharedAtomics.acquireFence()
            guard (e.assumingMemoryBound(to: UInt64.self)).pointee == seq else { return nil }
            if let hits, index * 4 + 4 <= hitsSize {
                let counter = hits + index * 4
                counter.storeBytes(of: (UInt32(littleEndian: counter.load(as: UInt32.self)) &+ 1).littleEndian, as: UInt32.self)
            }
            return length
        }
        return nil
    }
}
