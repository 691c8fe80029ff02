// DRAMTier: the shared-memory tier that inference processes map (docs/dram-tier.md). Blocks of the
// namespaces of one security domain live in one tier file (`DRAMTier`), placed by S3-FIFO and
// published in a sequence-locked table only this daemon writes; `DRAMTiers` holds the files of all
// domains within one memory budget; `TierBroker` hands a process, over a unix socket, descriptors of
// the files it may read; `TierReader` is the Swift client. Thread-safety is stated on each type.
import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// A resident block held still for a reply: its bytes are not moved, reused or cleared until the
/// object goes away. Before its bytes are served they are checked against the entry's XXH3-64, once
/// (`isIntact`): a pin that serves nothing (an open whose reads the page cache answers) costs no pass
/// over the block.
public final class PinnedBlock: Sendable {
    let tier: DRAMTier
    let key: BlockKey
    nonisolated(unsafe) private let bytes: UnsafeRawBufferPointer
    private let checksum: UInt64
    private let intact = Mutex<Bool?>(nil)

    init(tier: DRAMTier, key: BlockKey, bytes: UnsafeRawBufferPointer, checksum: UInt64) {
        self.tier = tier
        self.key = key
        self.bytes = bytes
        self.checksum = checksum
    }

    deinit { tier.unpin(key) }

    public var count: Int { bytes.count }

    /// Whether the resident copy still has the checksum it was inserted with; checked on the first
    /// call. A damaged copy leaves the tier (the caller then reads the block from NVMe).
    public func isIntact() -> Bool {
        if let known = intact.withLock({ $0 }) { return known }
        let ok = Checksum.xxh3(bytes) == checksum
        intact.withLock { $0 = ok }
        if !ok { tier.dropDamaged(key) }
        return ok
    }

    /// Calls `body` with the block's bytes; the pointer is valid only inside it.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(bytes) }
    }
}

/// One DRAM tier file: the blocks of one security domain, in shared memory that clients map read-only
/// (they get its descriptor from `TierBroker`, never a path). Blocks are placed by `S3FIFOPlacement`
/// and published in an open-addressing table under per-entry sequence locks. The clients' hit
/// counters live in a separate size-sealed memory file they may write but never truncate.
///
/// Thread-safety: one mutex (`state`) guards placement, the table and pins; bytes are copied into the
/// tier outside it, into space that is reserved and pinned first.
public final class DRAMTier: Sendable {
    public let name: String
    let memory: SharedMemoryMapping
    /// The clients' hit counters: `tableCapacity` little-endian u32 in a memfd sealed against
    /// shrinking and growing, so a client cannot make another's (or the daemon's) access fault.
    let hitCounters: SharedMemoryMapping
    let tableCapacity: Int
    let dataOffset: Int
    let dataSize: Int
    let state: OrderedMutex<State>
    /// Whether evicted blocks' pages are freed (several tiers share one budget) or kept for reuse.
    let freeEvictedPages: Bool

    struct State {
        var placement: S3FIFOPlacement<BlockKey>
        var slots: [BlockKey: Int] = [:]
        /// The namespace of each resident block (a namespace that changes domain leaves this file).
        var namespaces: [BlockKey: UInt16] = [:]
        var pins: [BlockKey: Int] = [:]
        /// Removed while pinned (a reply or an insert copy is using its bytes): freed at the last unpin.
        var doomed: Set<BlockKey> = []
        /// Removed (unlinked) while pinned: its bytes are cleared at the last unpin.
        var clearWhenFreed: Set<BlockKey> = []
        /// Prefetched blocks not read yet: a read makes them `prefetchUsed`, leaving `prefetchWasted`.
        var prefetched: Set<BlockKey> = []
        var stats = TierStatistics()
        var mapHitsTaken = 0
    }

    /// Creates a tier of `size` bytes whose memory comes from `storage`.
    public init(name: String, size: Int, storage: TierStorage, freeEvictedPages: Bool = false) throws {
        let tableCapacity = TierFormat.tableCapacity(dataSize: size)
        let tableBytes = tableCapacity * TierFormat.entrySize
        let dataOffset = (TierFormat.superblockSize + tableBytes + TierFormat.alignment - 1) / TierFormat.alignment * TierFormat.alignment
        guard size > dataOffset + (4 << 20) else {
            throw TierError.tooSmall("--dram \(size) bytes is too small (give at least \(dataOffset + (4 << 20)) bytes)")
        }
        self.name = name
        self.tableCapacity = tableCapacity
        self.dataOffset = dataOffset
        self.freeEvictedPages = freeEvictedPages
        dataSize = (size - dataOffset) / TierFormat.alignment * TierFormat.alignment
        memory = try storage.makeMapping(name: name, size: size)
        hitCounters = try SharedMemoryMapping(memoryFileNamed: name + ".hits", size: max(4096, tableCapacity * 4), sealed: true)
        var st = State(placement: S3FIFOPlacement(capacity: dataSize, alignment: TierFormat.alignment))
        st.stats.capacityBytes = dataSize
        state = OrderedMutex(.tier, st)
        writeSuperblock(size: size)
        if !freeEvictedPages { populateInBackground() }
    }

    /// Set when the tier closes: the background population stops.
    private final class Closing: Sendable { let flag = Atomic<Bool>(false) }
    private let closing = Closing()

    /// Touches the data area's pages on a low-priority thread. A tier that keeps its pages reaches
    /// that memory anyway once as many bytes went through it; touching it early takes the kernel's
    /// clearing of fresh (huge) pages off the reads, prefetches and commits that fill the tier first.
    /// In a profile of a fresh daemon reading cold blocks it was a fifth of all CPU time.
    private func populateInBackground() {
        let memory = self.memory, range = dataOffset..<(dataOffset + dataSize)
        let thread = BackgroundThread(name: "tw-tier-fill") { [closing] in
            lowerThreadPriority()
            _ = memory.populate(range) { closing.flag.load(ordering: .relaxed) }
        }
        filler.withLock { $0 = thread }
    }
    private let filler = Mutex<BackgroundThread?>(nil)

    private func writeSuperblock(size: Int) {
        let sb = UnsafeMutableRawBufferPointer(start: memory.pointer, count: TierFormat.superblockSize)
        for (i, b) in TierFormat.magic.enumerated() { sb[TierFormat.magicOffset + i] = b }
        LittleEndian.store(TierFormat.version, at: TierFormat.versionOffset, in: sb)
        LittleEndian.store(UInt32(TierFormat.superblockSize), at: TierFormat.superblockSizeOffset, in: sb)
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

    /// Marks the tier stopped (generation 0: clients that still map it stop reading it).
    public func close() {
        SharedAtomics.storeRelease(memory.word(at: TierFormat.generationOffset), 0)
        closing.flag.store(true, ordering: .relaxed)
        filler.withLock { t in defer { t = nil }; return t }?.join()
    }

    /// Descriptors a permitted reader gets: the data (read-only) and the hit counters (read-write,
    /// size-sealed). The caller closes them after sending.
    public func descriptorsForReader() throws -> (data: Int32, hits: Int32) {
        let data = try memory.readOnlyDescriptor()
        let hits = open("/proc/self/fd/\(hitCounters.descriptor)", O_RDWR | O_CLOEXEC)
        if hits < 0 {
            let e = SystemError.last("open", path: hitCounters.name)
            Glibc.close(data)
            throw e
        }
        return (data, hits)
    }

    // MARK: Table entries (the only code that writes them)

    private func entry(_ index: Int) -> Int { TierFormat.superblockSize + index * TierFormat.entrySize }

    private func entryState(_ index: Int) -> UInt32 {
        UInt32(littleEndian: (memory.pointer + entry(index) + TierFormat.stateOffset).load(as: UInt32.self))
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
        _ = takeHits(index)
    }

    private func checksumOfEntry(_ index: Int) -> UInt64 {
        UInt64(littleEndian: (memory.pointer + entry(index) + TierFormat.checksumOffset).load(as: UInt64.self))
    }

    private func hitCounter(_ index: Int) -> UnsafeMutablePointer<UInt32> {
        (hitCounters.pointer + index * 4).assumingMemoryBound(to: UInt32.self)
    }

    /// Hits clients counted on entry `index` since last taken; resets them.
    private func takeHits(_ index: Int) -> Int {
        Int(UInt32(littleEndian: SharedAtomics.exchange32(hitCounter(index), 0)))
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

    /// Clears (and frees) the bytes a block occupied.
    private func clear(_ item: S3FIFOPlacement<BlockKey>.Item) {
        memory.discard(offset: dataOffset + item.offset, length: item.size)
    }

    /// Applies a placement event: unpublish an evicted block; move a block's bytes and republish.
    private func apply(_ event: S3FIFOPlacement<BlockKey>.Event, _ st: inout State) {
        switch event {
        case .evicted(let key, let item):
            if let index = st.slots.removeValue(forKey: key) {
                let n = takeHits(index)
                st.mapHitsTaken += n
                unpublish(index)
            }
            st.namespaces[key] = nil
            st.stats.evictions += 1
            if st.prefetched.remove(key) != nil { st.stats.prefetchWasted += 1 }
            if freeEvictedPages { clear(item) }
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

    /// The resident block, pinned until the returned object goes away; counts a hit. Nil on a miss,
    /// and when its bytes no longer match the checksum they were inserted with (then it is dropped):
    /// bytes served through the mount are verified like bytes read from NVMe.
    public func pin(_ key: BlockKey) -> PinnedBlock? {
        let found = state.withLock { st -> (UnsafeRawBufferPointer, UInt64)? in
            guard let index = st.slots[key], let item = st.placement.item(key) else {
                st.stats.mountMisses += 1
                return nil
            }
            st.pins[key, default: 0] += 1
            st.placement.recordHit(key)
            return (UnsafeRawBufferPointer(start: memory.pointer + dataOffset + item.offset, count: item.length), checksumOfEntry(index))
        }
        guard let (bytes, checksum) = found else { return nil }
        let pinned = PinnedBlock(tier: self, key: key, bytes: bytes, checksum: checksum)
        state.withLock { st in
            st.stats.mountHits += 1
            if st.prefetched.remove(key) != nil { st.stats.prefetchUsed += 1 }
        }
        return pinned
    }

    /// A pinned copy failed its checksum: it leaves the tier (its bytes are cleared once unpinned).
    func dropDamaged(_ key: BlockKey) {
        remove(key)
        state.withLock { $0.stats.damaged += 1 }
    }

    func unpin(_ key: BlockKey) {
        state.withLock { st in Self.release(key, &st, memory: memory, dataOffset: dataOffset) }
    }

    /// Drops one pin; the last pin of a removed block frees (and, if it was unlinked, clears) its bytes.
    private static func release(_ key: BlockKey, _ st: inout State, memory: SharedMemoryMapping, dataOffset: Int) {
        guard let n = st.pins[key] else { return }
        if n > 1 {
            st.pins[key] = n - 1
            return
        }
        st.pins[key] = nil
        if st.doomed.remove(key) != nil {
            if st.clearWhenFreed.remove(key) != nil, let item = st.placement.item(key) {
                memory.discard(offset: dataOffset + item.offset, length: item.size)
            }
            st.placement.remove(key)
        }
    }

    /// Blocks from this size on that nobody reads soon are copied in with streaming stores
    /// (`copyBypassingCache`).
    static let streamingCopyBytes = 256 << 10

    /// Copies a verified block into the tier (S3-FIFO admission; a `hinted` block is expected to be read
    /// soon and goes to the main ring). Returns false when it cannot be placed now (no free table slot
    /// in its probe window, or room only behind a pinned block). `prefetched` blocks are counted as used
    /// or wasted when they are read or leave. `readSoon`: a reader is about to read the block (a
    /// prefetch ahead of it, a fetch or load it is waiting for), so the copy should leave its bytes in the
    /// cache; false for blocks just written, which go in with streaming stores when large.
    @discardableResult
    public func insert(_ key: BlockKey, namespaceID: UInt16, bytes: UnsafeRawBufferPointer, checksum: UInt64,
                       hinted: Bool = false, prefetched: Bool = false, readSoon: Bool = true) -> Bool {
        // Reserve the space and pin it, copy outside the lock, then publish.
        let reserved = state.withLock { st -> (Int, S3FIFOPlacement<BlockKey>.Item)? in
            // Resident, or being copied in by another thread right now: one copy, one table entry.
            if st.slots[key] != nil || st.placement.item(key) != nil { return nil }
            guard let slot = freeSlot(for: key) else {
                st.stats.failedInsertions += 1
                return nil
            }
            let pins = st.pins
            // The policy's events (evictions, moves) are applied in order once it has decided, still under
            // the lock, before the new block's bytes are copied: the space of an evicted block is reused only
            // after its entry was unpublished. Applying them inside the policy's call would modify `slots`
            // while the closures below read it, and cost a copy of the whole table per insert.
            var events: [S3FIFOPlacement<BlockKey>.Event] = []
            var placement = st.placement
            st.placement = S3FIFOPlacement(capacity: 0)
            let item = placement.insert(key, length: bytes.count, expected: hinted, isPinned: { pins[$0] != nil },
                                        extraHits: { k in st.slots[k].map { min(self.takeHitsCounting($0), 1) } ?? 0 },
                                        handle: { events.append($0) })
            st.placement = placement
            for event in events { apply(event, &st) }
            guard let item else {
                st.stats.failedInsertions += 1
                return nil
            }
            st.pins[key, default: 0] += 1
            return (slot, item)
        }
        guard let (slot, item) = reserved else { return false }
        // Large blocks nobody reads soon (just written) with streaming stores: the tier's space is cold
        // (S3-FIFO's rings sweep all of it), so they go at twice memcpy's rate (docs/benchmarks.md "Copies
        // into the DRAM tier"). Blocks a reader is about to read with memcpy, which leaves them in the
        // cache for it; small ones too: their copy is a few microseconds of a create's hundred or so, too
        // little for this machine's benchmarks to tell apart, so they were left as they were.
        let destination = memory.pointer + dataOffset + item.offset
        if !readSoon && bytes.count >= Self.streamingCopyBytes {
            copyBypassingCache(to: destination, from: bytes.baseAddress!, count: bytes.count)
        } else {
            memcpy(destination, bytes.baseAddress!, bytes.count)
        }
        return state.withLock { st -> Bool in
            // Publish only if the space is still this reservation's: the key may have been removed (and
            // even reserved again by another insert) while the bytes were copied.
            let current = !st.doomed.contains(key) && st.placement.item(key)?.offset == item.offset && st.slots[key] == nil
            Self.release(key, &st, memory: memory, dataOffset: dataOffset)
            // Another key may have published into the reserved slot meanwhile.
            let index = entryState(slot) == TierFormat.stateValid ? freeSlot(for: key) : slot
            guard current, let index else { return false }
            publish(index, key: key, item: item, checksum: checksum)
            st.slots[key] = index
            st.namespaces[key] = namespaceID
            st.stats.insertions += 1
            if prefetched { st.prefetched.insert(key) }
            return true
        }
    }

    /// Takes the hits of entry `index`, remembering them for the statistics.
    private func takeHitsCounting(_ index: Int) -> Int {
        let n = takeHits(index)
        // Called with the lock held (from the placement's callback).
        mapHitsPending.withLock { $0 += n }
        return n
    }

    /// Map hits taken by the placement while the lock was held (added to the statistics later).
    private let mapHitsPending = Mutex(0)

    /// Drops a block (unlinked, or its namespace left this tier's domain): it leaves the table at once
    /// and its bytes are cleared before the space is reused.
    public func remove(_ key: BlockKey) {
        state.withLock { st in
            if let index = st.slots.removeValue(forKey: key) { unpublish(index) }
            st.namespaces[key] = nil
            if st.prefetched.remove(key) != nil { st.stats.prefetchWasted += 1 }
            // Bytes still in use by a pinned reply or an insert's copy are freed at the last unpin.
            if st.pins[key] != nil {
                st.doomed.insert(key)
                st.clearWhenFreed.insert(key)
            } else if let item = st.placement.item(key) {
                clear(item)
                st.placement.remove(key)
            }
        }
    }

    /// Drops every block of a namespace (it changed domain or was removed).
    public func removeAll(namespaceID: UInt16) {
        let keys = state.withLock { st in st.namespaces.filter { $0.value == namespaceID }.map(\.key) }
        for k in keys { remove(k) }
    }

    /// Evicts the oldest unpinned block, freeing its pages; false when none can go. `DRAMTiers` calls
    /// it to keep all tiers within one budget.
    func evictOldest() -> Bool {
        state.withLock { st in
            let pins = st.pins
            var placement = st.placement
            st.placement = S3FIFOPlacement(capacity: 0)
            let evicted = placement.evictOldest(isPinned: { pins[$0] != nil }) { event in
                apply(event, &st)
                if case .evicted(_, let item) = event, !freeEvictedPages { clear(item) }
            }
            st.placement = placement
            return evicted
        }
    }

    /// Bytes of resident blocks.
    var residentBytes: Int { state.withLock { $0.placement.residentBytes } }

    /// Figures of the tier. Map hits are the counters taken so far plus those clients counted since.
    public func statistics() -> TierStatistics {
        let pendingHits = mapHitsPending.withLock { $0 }
        return state.withLock { st in
            var s = st.stats
            s.residentBlocks = st.slots.count
            s.residentBytes = st.placement.residentBytes
            s.promotions = st.placement.promotions
            s.reinsertions = st.placement.reinsertions
            var counted = 0
            for index in st.slots.values {
                counted += Int(UInt32(littleEndian: SharedAtomics.loadRelaxed32(hitCounter(index))))
            }
            s.mapHits = st.mapHitsTaken + pendingHits + counted
            // Prefetched blocks that clients have read through the map (counters not yet taken).
            for key in st.prefetched {
                if let index = st.slots[key], SharedAtomics.loadRelaxed32(hitCounter(index)) > 0 { s.prefetchUsed += 1 } else { s.prefetchPending += 1 }
            }
            return s
        }
    }
}

/// Why a DRAM tier could not be made, in words a person can act on.
public enum TierError: Error, CustomStringConvertible {
    case tooSmall(String)
    case unavailable(String)

    public var description: String {
        switch self {
        case .tooSmall(let s), .unavailable(let s): return s
        }
    }
}
