import BlockStore
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// Figures of the DRAM tier.
public struct TierStatistics: Sendable {
    public var capacityBytes = 0
    public var residentBlocks = 0
    public var residentBytes = 0
    /// Reads through the mount served from the tier.
    public var mountHits = 0
    /// Reads through the mount that missed the tier.
    public var misses = 0
    /// Hits that clients counted through the map (PATH.hits).
    public var mapHits = 0
    public var insertions = 0
    public var failedInsertions = 0
    public var evictions = 0
    public var promotions = 0
    public var reinsertions = 0
    /// Blocks the prefetcher loaded that were read (through the mount or the map) before they left.
    public var prefetchUsed = 0
    /// Blocks the prefetcher loaded that left (evicted or unlinked) without being read.
    public var prefetchWasted = 0
    /// Prefetched blocks still resident and not read yet.
    public var prefetchPending = 0
}

/// A resident block held still for a reply: its bytes are not moved or reused until `release`.
public final class PinnedBlock: Sendable {
    let tier: DRAMTier
    let key: BlockKey
    nonisolated(unsafe) public let bytes: UnsafeRawBufferPointer

    init(tier: DRAMTier, key: BlockKey, bytes: UnsafeRawBufferPointer) {
        self.tier = tier
        self.key = key
        self.bytes = bytes
    }

    deinit { tier.unpin(key) }
}

/// The shared-memory DRAM tier (docs/dram-tier.md): one file in /dev/shm that only this daemon writes and
/// that clients map read-only. Blocks are placed by `S3FIFOPlacement` and published in an open-addressing
/// table under per-entry sequence locks.
///
/// Thread-safety: one mutex (`state`) guards placement, the table and pins; bytes are copied into the
/// tier outside it, into space that is reserved and pinned first.
public final class DRAMTier: Sendable {
    public let path: String
    let memory: SharedMemoryMapping
    /// The clients' hit counters (PATH.hits), read and reset with pread/pwrite: a client may truncate
    /// the file, and a mapping of it would then fault (SIGBUS) in the daemon; a short read is zero hits.
    let hitCounters: SharedMemoryMapping
    let hitsDescriptor: Int32
    let tableCapacity: Int
    let dataOffset: Int
    let dataSize: Int
    let state: Locked<State>

    struct State {
        var placement: S3FIFOPlacement<BlockKey>
        var slots: [BlockKey: Int] = [:]
        var pins: [BlockKey: Int] = [:]
        /// Removed while pinned (a reply or an insert copy is using its bytes): freed at the last unpin.
        var doomed: Set<BlockKey> = []
        /// Prefetched blocks not read yet: a read makes them `prefetchUsed`, leaving `prefetchWasted`.
        var prefetched: Set<BlockKey> = []
        var stats = TierStatistics()
    }

    /// Map hits read (and reset) from the counters so far.
    private let mapHitsTaken = Locked(0)

    /// Creates the tier file `path` of `size` bytes, readable by `group` (mode 0640) and its hit counters
    /// (mode 0660).
    public init(path: String, size: Int, group: gid_t?) throws {
        let tableCapacity = TierFormat.tableCapacity(dataSize: size)
        let tableBytes = tableCapacity * TierFormat.entrySize
        let dataOffset = (TierFormat.superblockSize + tableBytes + TierFormat.alignment - 1) / TierFormat.alignment * TierFormat.alignment
        guard size > dataOffset + (4 << 20) else {
            throw SystemError(EINVAL, "--dram \(size) bytes is too small (at least \(dataOffset + (4 << 20)) bytes)")
        }
        Self.retireStaleTier(at: path)
        self.path = path
        self.tableCapacity = tableCapacity
        self.dataOffset = dataOffset
        dataSize = (size - dataOffset) / TierFormat.alignment * TierFormat.alignment
        memory = try SharedMemoryMapping(creating: path, size: size, mode: 0o640, group: group)
        hitCounters = try SharedMemoryMapping(creating: path + ".hits", size: max(4096, tableCapacity * 4), mode: 0o660, group: group)
        hitsDescriptor = open(path + ".hits", O_RDWR | O_CLOEXEC)
        var st = State(placement: S3FIFOPlacement(capacity: dataSize, alignment: TierFormat.alignment))
        st.stats.capacityBytes = dataSize
        state = Locked(st)
        writeSuperblock(size: size)
    }

    /// A tier file left by a daemon that died still has a non-zero generation, and clients that map it
    /// would keep reading it: set its generation to 0 (they remap) before it is replaced.
    static func retireStaleTier(at path: String) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { _ = Glibc.close(fd) }
        var magic = [UInt8](repeating: 0, count: 8)
        guard pread(fd, &magic, 8, 0) == 8, magic == TierFormat.magic else { return }
        var zero: UInt64 = 0
        _ = pwrite(fd, &zero, 8, off_t(TierFormat.generationOffset))
    }

    private func writeSuperblock(size: Int) {
        let sb = UnsafeMutableRawBufferPointer(start: memory.pointer, count: TierFormat.superblockSize)
        for (i, b) in TierFormat.magic.enumerated() { sb[i] = b }
        LittleEndian.store(TierFormat.version, at: 8, in: sb)
        LittleEndian.store(UInt32(TierFormat.superblockSize), at: 12, in: sb)
        LittleEndian.store(UInt64(size), at: TierFormat.fileSizeOffset, in: sb)
        LittleEndian.store(UInt64(TierFormat.superblockSize), at: TierFormat.tableOffsetOffset, in: sb)
        LittleEndian.store(UInt64(tableCapacity), at: TierFormat.tableCapacityOffset, in: sb)
        LittleEndian.store(UInt32(TierFormat.entrySize), at: TierFormat.entrySizeOffset, in: sb)
        LittleEndian.store(TierFormat.maxProbe, at: TierFormat.maxProbeOffset, in: sb)
        LittleEndian.store(UInt64(dataOffset), at: TierFormat.dataOffsetOffset, in: sb)
        LittleEndian.store(UInt64(dataSize), at: TierFormat.dataSizeOffset, in: sb)
        var generation: UInt64 = 0
        while generation == 0 { generation = UInt64.random(in: 1...UInt64.max) }
        SharedAtomics.storeRelease(memory.word(at: TierFormat.generationOffset), generation)
    }

    /// Marks the tier stopped (generation 0, so clients remap) and removes its files.
    public func close() {
        if hitsDescriptor >= 0 { _ = Glibc.close(hitsDescriptor) }
        SharedAtomics.storeRelease(memory.word(at: TierFormat.generationOffset), 0)
        memory.unlinkFile()
        hitCounters.unlinkFile()
    }

    // MARK: Table entries (the only code that writes them)

    private func entry(_ index: Int) -> Int { TierFormat.superblockSize + index * TierFormat.entrySize }

    private func entryState(_ index: Int) -> UInt32 {
        (memory.pointer + entry(index) + TierFormat.stateOffset).load(as: UInt32.self)
    }

    /// Runs `change` with the entry's sequence lock odd, so readers that overlap it retry.
    private func withEntryLocked(_ index: Int, _ change: (UnsafeMutableRawPointer) -> Void) {
        let seq = memory.word(at: entry(index) + TierFormat.seqOffset)
        let s = SharedAtomics.loadAcquire(seq)
        SharedAtomics.storeRelaxed(seq, s + 1)
        SharedAtomics.releaseFence()
        change(memory.pointer + entry(index))
        SharedAtomics.storeRelease(seq, s + 2)
    }

    private func publish(_ index: Int, key: BlockKey, item: S3FIFOPlacement<BlockKey>.Item, checksum: UInt64) {
        withEntryLocked(index) { e in
            e.storeBytes(of: key.low.littleEndian, toByteOffset: TierFormat.keyLowOffset, as: UInt64.self)
            e.storeBytes(of: key.high.littleEndian, toByteOffset: TierFormat.keyHighOffset, as: UInt64.self)
            e.storeBytes(of: UInt64(dataOffset + item.offset).littleEndian, toByteOffset: TierFormat.dataOffsetField, as: UInt64.self)
            e.storeBytes(of: UInt64(item.length).littleEndian, toByteOffset: TierFormat.lengthOffset, as: UInt64.self)
            e.storeBytes(of: checksum.littleEndian, toByteOffset: TierFormat.checksumOffset, as: UInt64.self)
            e.storeBytes(of: TierFormat.stateValid.littleEndian, toByteOffset: TierFormat.stateOffset, as: UInt32.self)
        }
    }

    private func unpublish(_ index: Int) {
        withEntryLocked(index) { e in
            e.storeBytes(of: TierFormat.stateDeleted.littleEndian, toByteOffset: TierFormat.stateOffset, as: UInt32.self)
        }
        writeHits(index, 0)
    }

    private func readHits(_ index: Int) -> Int {
        var value: UInt32 = 0
        guard hitsDescriptor >= 0, pread(hitsDescriptor, &value, 4, off_t(index * 4)) == 4 else { return 0 }
        return Int(UInt32(littleEndian: value))
    }

    private func writeHits(_ index: Int, _ n: UInt32) {
        var value = n.littleEndian
        if hitsDescriptor >= 0 { _ = pwrite(hitsDescriptor, &value, 4, off_t(index * 4)) }
    }

    /// A free table slot in the key's probe window (empty or deleted), if any.
    private func freeSlot(for key: BlockKey) -> Int? {
        let mask = tableCapacity - 1
        for i in 0..<Int(TierFormat.maxProbe) {
            let index = (Int(truncatingIfNeeded: key.low) &+ i) & mask
            if entryState(index) != TierFormat.stateValid { return index }
        }
        return nil
    }

    /// Hits clients counted on entry `index` since last read; resets them.
    private func takeMapHits(_ index: Int) -> Int {
        let n = readHits(index)
        if n > 0 {
            writeHits(index, 0)
            mapHitsTaken.withLock { $0 += n }
        }
        // One hit is all the policy needs; a client cannot buy a block more laps by writing large counts.
        return min(n, 1)
    }

    /// Applies a placement event: unpublish an evicted block; move a block's bytes and republish.
    private func apply(_ event: S3FIFOPlacement<BlockKey>.Event, _ st: inout State) {
        switch event {
        case .evicted(let key, _):
            if let index = st.slots.removeValue(forKey: key) { unpublish(index) }
            st.stats.evictions += 1
            if st.prefetched.remove(key) != nil { st.stats.prefetchWasted += 1 }
        case .moved(let key, let from, let to):
            // The policy moves a block only when it was read since it was placed.
            if st.prefetched.remove(key) != nil { st.stats.prefetchUsed += 1 }
            guard let index = st.slots[key] else { return }
            withEntryLocked(index) { e in
                memmove(memory.pointer + dataOffset + to.offset, memory.pointer + dataOffset + from.offset, from.length)
                e.storeBytes(of: UInt64(dataOffset + to.offset).littleEndian, toByteOffset: TierFormat.dataOffsetField, as: UInt64.self)
            }
        }
    }

    // MARK: Use

    /// Whether the block is resident.
    public func contains(_ key: BlockKey) -> Bool { state.withLock { $0.slots[key] != nil } }

    /// The resident block, pinned until the returned object goes away; counts a hit. Nil on a miss.
    public func pin(_ key: BlockKey) -> PinnedBlock? {
        let found = state.withLock { st -> UnsafeRawBufferPointer? in
            guard st.slots[key] != nil, let item = st.placement.item(key) else {
                st.stats.misses += 1
                return nil
            }
            st.pins[key, default: 0] += 1
            st.placement.recordHit(key)
            st.stats.mountHits += 1
            if st.prefetched.remove(key) != nil { st.stats.prefetchUsed += 1 }
            return UnsafeRawBufferPointer(start: memory.pointer + dataOffset + item.offset, count: item.length)
        }
        return found.map { PinnedBlock(tier: self, key: key, bytes: $0) }
    }

    func unpin(_ key: BlockKey) {
        state.withLock { st in Self.release(key, &st) }
    }

    private static func release(_ key: BlockKey, _ st: inout State) {
        guard let n = st.pins[key] else { return }
        if n > 1 {
            st.pins[key] = n - 1
            return
        }
        st.pins[key] = nil
        if st.doomed.remove(key) != nil { st.placement.remove(key) }
    }

    /// Copies a verified block into the tier (S3-FIFO admission; a `hinted` block is expected to be read
    /// soon and goes to the main ring). Returns false when it cannot be placed
    /// now (no free table slot in its probe window, or room only behind a pinned block).
    /// `prefetched` blocks are counted as used or wasted when they are read or leave.
    @discardableResult
    public func insert(_ key: BlockKey, bytes: UnsafeRawBufferPointer, checksum: UInt64, hinted: Bool = false,
                       prefetched: Bool = false) -> Bool {
        // Reserve the space and pin it, copy outside the lock, then publish.
        let reserved = state.withLock { st -> (Int, S3FIFOPlacement<BlockKey>.Item)? in
            // Resident, or being copied in by another thread right now: one copy, one table entry.
            if st.slots[key] != nil || st.placement.item(key) != nil { return nil }
            guard let slot = freeSlot(for: key) else {
                st.stats.failedInsertions += 1
                return nil
            }
            let pins = st.pins
            let slots = st.slots
            // Events are applied as they happen: the space of an evicted block is reused only after
            // its entry was unpublished.
            var placement = st.placement
            st.placement = S3FIFOPlacement(capacity: 0)
            let item = placement.insert(key, length: bytes.count, expected: hinted, isPinned: { pins[$0] != nil },
                                        extraHits: { k in slots[k].map { self.takeMapHits($0) } ?? 0 },
                                        handle: { self.apply($0, &st) })
            st.placement = placement
            guard let item else {
                st.stats.failedInsertions += 1
                return nil
            }
            st.pins[key, default: 0] += 1
            return (slot, item)
        }
        guard let (slot, item) = reserved else { return false }
        memcpy(memory.pointer + dataOffset + item.offset, bytes.baseAddress!, bytes.count)
        state.withLock { st in
            // Publish only if the space is still this reservation's: the key may have been removed (and
            // even reserved again by another insert) while the bytes were copied.
            let current = !st.doomed.contains(key) && st.placement.item(key)?.offset == item.offset && st.slots[key] == nil
            Self.release(key, &st)
            // Another key may have published into the reserved slot meanwhile.
            let index = entryState(slot) == TierFormat.stateValid ? freeSlot(for: key) : slot
            guard current, let index else { return }
            publish(index, key: key, item: item, checksum: checksum)
            st.slots[key] = index
            st.stats.insertions += 1
            if prefetched { st.prefetched.insert(key) }
        }
        return true
    }

    /// Drops a block (unlinked).
    public func remove(_ key: BlockKey) {
        state.withLock { st in
            if let index = st.slots.removeValue(forKey: key) { unpublish(index) }
            if st.prefetched.remove(key) != nil { st.stats.prefetchWasted += 1 }
            // Bytes still in use by a pinned reply or an insert's copy are freed at the last unpin.
            if st.pins[key] != nil { st.doomed.insert(key) } else { st.placement.remove(key) }
        }
    }

    /// Figures of the tier. The clients' hit counters are read with one `pread` of the whole array,
    /// before the lock is taken (a snapshot: clients keep counting), not one call per resident block.
    public func statistics() -> TierStatistics {
        var counters = [UInt32](repeating: 0, count: tableCapacity)
        if hitsDescriptor >= 0 {
            _ = counters.withUnsafeMutableBytes { pread(hitsDescriptor, $0.baseAddress, $0.count, 0) }
        }
        func hits(_ index: Int) -> Int { Int(UInt32(littleEndian: counters[index])) }
        return state.withLock { st in
            var s = st.stats
            s.residentBlocks = st.slots.count
            s.residentBytes = st.placement.items.values.reduce(0) { $0 + $1.length }
            s.promotions = st.placement.promotions
            s.reinsertions = st.placement.reinsertions
            var pending = 0
            for index in st.slots.values { pending += hits(index) }
            s.mapHits = mapHitsTaken.withLock { $0 } + pending
            // Prefetched blocks that clients have read through the map (counters not yet taken).
            for key in st.prefetched {
                if let index = st.slots[key], hits(index) > 0 { s.prefetchUsed += 1 } else { s.prefetchPending += 1 }
            }
            return s
        }
    }
}
