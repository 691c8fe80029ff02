import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// Space for records: reservations at the tail of the active segment, segment roll, synchronous
/// eviction when the capacity or the disk is short, and publishing or abandoning what was written.
extension BlockStore {
    /// What a block put asks of `reserve`, checked in the same critical section that places it.
    struct ReservationRequest {
        var recordSize: Int
        var key: BlockKey
        var namespaceID: UInt16
        /// Quota bytes the writer reserved beforehand (released here; the record's size is charged instead).
        var quotaCredit: UInt64
        var blockKeyString: String
        var createDirectories: Bool
        var ownership: BlockOwnership?
    }

    struct Reservation {
        let segment: Segment
        let offset: UInt64
        let sequence: UInt64
        /// The directory the block goes in (block puts only).
        var directory: UInt32 = DirectoryID.namespaceRoot
        /// The owner class of the block (block puts only).
        var attributes: UInt16 = AttributeTable.legacy
        /// The namespace whose quota the record is charged to while in flight (block puts only).
        var chargedNamespace: UInt16? = nil
        var page: UInt32 { UInt32(offset / UInt64(RecordFormat.alignment)) }
    }

    /// Raised under the lock when making room needs pinned blocks copied forward first.
    struct PinnedBlocksInTheWay: Error {}

    /// Reserves room for a block record: checks the name is free, its directory exists, and its
    /// namespace's quota holds it (stored plus in-flight bytes), rolling to a new segment or evicting
    /// as needed. Returns nil when the name exists or is being written.
    ///
    /// When only segments holding pinned blocks could make room, they are evicted with their pinned
    /// blocks copied forward (I/O, outside the lock) and the reservation is tried once more.
    func reserve(_ request: ReservationRequest) throws -> Reservation? {
        var attempt = 0
        var credit = request.quotaCredit
        defer { if credit > 0 { releaseQuota(namespaceID: request.namespaceID, bytes: credit) } }
        while true {
            var doomed: [SegmentState] = []
            var spareWanted = false
            defer {
                deleteEvicted(doomed)
                if spareWanted { prepareSpareSegment() }
            }
            do {
                return try state.withLock { st -> Reservation? in
                    if st.index[request.key] != nil || st.pending.contains(request.key) { return nil }
                    guard let ns = st.namespaces.byID[request.namespaceID] else { throw StoreError.notFound }
                    let directory = try resolveDirectory(&st, key: request.blockKeyString, namespace: ns, create: request.createDirectories)
                    guard let attributes = st.attributes.intern(request.ownership) else {
                        throw StoreError.noSpace("65535 distinct owner, group and mode combinations are in use")
                    }
                    // The writer's reservation is given back and the record's real size charged, in one step.
                    var u = st.usage[ns.id] ?? NamespaceUsage()
                    u.reservedBytes = u.reservedBytes > credit ? u.reservedBytes - credit : 0
                    credit = 0
                    let size = UInt64(request.recordSize)
                    if ns.quotaBytes > 0 && u.storedBytes + u.reservedBytes + size > ns.quotaBytes {
                        st.usage[ns.id] = u
                        throw StoreError.quotaExceeded("namespace \(ns.name) holds \(u.storedBytes) of its \(ns.quotaBytes) bytes (\(u.reservedBytes) more being written); a record of \(size) bytes does not fit")
                    }
                    u.reservedBytes += size
                    st.usage[ns.id] = u
                    do {
                        guard var r = try reserveLocked(&st, recordSize: request.recordSize, key: request.key, force: false, doomed: &doomed) else {
                            st.usage[ns.id]?.reservedBytes -= size
                            return nil
                        }
                        r.directory = directory
                        r.attributes = attributes
                        r.chargedNamespace = ns.id
                        // Made by this writer once the lock is released (its reservation keeps `close` waiting).
                        spareWanted = st.spareWanted != nil
                        return r
                    } catch {
                        st.usage[ns.id]?.reservedBytes -= size
                        throw error
                    }
                }
            } catch is PinnedBlocksInTheWay {
                if attempt > 0 { throw StoreError.noSpace("the store is full of pinned blocks and nothing more can be evicted") }
                attempt += 1
                let target = state.withLock { st -> UInt64 in
                    let limit = min(configuration.capacity, st.spaceLimit)
                    let need = UInt64(request.recordSize) + 2 * UInt64(SegmentFormat.headerSize)
                    return min(UInt64(configuration.lowWatermark * Double(configuration.capacity)), limit > need ? limit - need : 0)
                }
                evict(downTo: target, reinsert: true)
            }
        }
    }

    /// The directory a key goes in; with `create`, its missing directories are made (explicit, with
    /// the namespace's owner and mode) and journaled.
    func resolveDirectory(_ st: inout StoreState, key: String, namespace ns: NamespaceInfo, create: Bool) throws -> UInt32 {
        if let d = st.directories.directory(ofKey: key, namespace: ns.id) { return d }
        guard create else { throw StoreError.notFound }
        return try Self.makeDirectories(of: key, namespace: ns, state: &st, journal: journal).id
    }

    /// Makes the missing directories of a key's path, owned like the namespace, and journals them;
    /// returns the key's directory and how many were made.
    static func makeDirectories(of key: String, namespace ns: NamespaceInfo, state st: inout StoreState,
                                journal: DirectoryJournal) throws -> (id: UInt32, made: Int) {
        let (path, _) = BlockPath.split(key: key)
        var id = DirectoryID.namespaceRoot
        var made = 0
        let now = wallClockNanoseconds()
        for component in BlockPath.components(of: path) {
            if let next = st.directories.child(ns.id, of: id, named: component) {
                id = next
                continue
            }
            guard let newID = st.directories.allocateID() else { throw StoreError.noSpace("no directory ids left") }
            let owner = BlockOwnership(uid: ns.owner, gid: ns.group, mode: ns.mode)
            try journal.append(.create(ns: ns.id, id: newID, parent: id, name: component, ownership: owner, modifiedNanoseconds: now))
            st.directories.add(ns.id, id: newID, parent: id, name: component, ownership: owner, modifiedNanoseconds: now)
            id = newID
            made += 1
        }
        return (id, made)
    }

    /// `reserve` with the lock held; evicted segments go to `doomed` for deletion after unlocking.
    /// `key`: a block being put (nil for tombstones, updates and copies); nil is returned when it exists.
    func reserveLocked(_ st: inout StoreState, recordSize: Int, key: BlockKey?, force: Bool,
                       doomed: inout [SegmentState]) throws -> Reservation? {
        if st.closed { throw StoreError.closed }
        if let key {
            if st.index[key] != nil || st.pending.contains(key) { return nil }
        }
        let size = UInt64(recordSize)
        let header = UInt64(SegmentFormat.headerSize)
        // A record that could never fit must not empty the store on its way to failing.
        if size + 2 * header > configuration.capacity {
            throw StoreError.noSpace("a record of \(size) bytes does not fit the store's capacity of \(configuration.capacity) bytes")
        }
        let rollOver = st.segments[st.activeID].map { $0.length > header && $0.length + size > configuration.segmentSize } ?? true
        if rollOver || st.spaceLimit == .max { refreshSpaceLimit(&st) }
        // Evict synchronously when the record would not fit the capacity (or the disk); the background
        // thread normally keeps usage under the high watermark so this path is rare. It cannot carry
        // tombstones and updates forward (that is I/O), so it prefers segments that hold none.
        var refreshed = rollOver
        let pinned = Self.pinnedNamespaces(st)
        while st.usedBytes + size + header > min(configuration.capacity, st.spaceLimit) {
            guard let victim = chooseVictim(st, avoidingMetadataRecords: true, avoiding: pinned) ?? chooseVictim(st, avoiding: pinned) else {
                // Only segments with pinned blocks are left: they need copying, which is I/O (see `reserve`).
                if !force && !pinned.isEmpty && chooseVictim(st) != nil { throw PinnedBlocksInTheWay() }
                // Space may have come back since the last look (another file on the disk shrank).
                if !refreshed && st.spaceLimit < configuration.capacity {
                    refreshSpaceLimit(&st)
                    refreshed = true
                    continue
                }
                if force { break }
                throw StoreError.noSpace(st.spaceLimit < configuration.capacity
                    ? "the disk under the store is full and nothing more can be evicted"
                    : "the store is full (capacity \(configuration.capacity) bytes) and nothing more can be evicted")
            }
            let evicted = removeSegment(&st, victim)
            // The evicted segment's files are deleted after unlocking; count their space as free now.
            if st.spaceLimit != .max { st.spaceLimit += evicted.length }
            doomed.append(evicted)
        }
        if let active = st.segments[st.activeID], active.length > UInt64(SegmentFormat.headerSize),
           active.length + size > configuration.segmentSize {
            // Seal the old segment only once the new one exists: if creating it fails, appends go on.
            let old = st.activeID
            if let spare = st.spareSegment, spare.id == old + 1 {
                st.spareSegment = nil
                Self.activateSegment(&st, id: spare.id, file: spare.file)
            } else {
                // No spare ready: made here, under the lock. An id whose spare is being made is skipped
                // (that file is removed when it is done).
                try Self.startActiveSegment(&st, id: st.spareBeingMade == old + 1 ? old + 2 : old + 1, device: device)
            }
            st.spareWanted = st.activeID + 1
            st.segments[old]?.sealed = true
            wakeup.withLock { wakeup.broadcast() }
        }
        var active = st.segments[st.activeID]!
        let offset = active.length
        active.length += size
        active.inflight += 1
        st.segments[st.activeID] = active
        st.usedBytes += size
        let sequence = st.takeSequence()
        if let key { st.pending.insert(key) }
        return Reservation(segment: active.segment, offset: offset, sequence: sequence)
    }

    /// The disk's free space as a limit on used bytes, keeping 1 MiB and 1% back for summaries.
    func refreshSpaceLimit(_ st: inout StoreState) {
        let available = device.space().available
        let reserve = UInt64(1 << 20) + st.usedBytes / 100
        st.spaceLimit = st.usedBytes + (available > reserve ? available - reserve : 0)
    }

    /// A write that failed: its bytes become a hole of zeros in the segment (dead bytes; recovery and
    /// `verify` skip zero pages), so a half-written record never looks like a damaged one.
    func abandon(_ r: Reservation, key: BlockKey?, size: Int) {
        try? r.segment.file.zeroRange(at: r.offset, length: UInt64(size))
        state.withLock { st in
            if let key { st.pending.remove(key) }
            if let ns = r.chargedNamespace { st.usage[ns]?.reservedBytes -= UInt64(size) }
            st.segments[r.segment.id]?.inflight -= 1
        }
        idle.withLock { idle.broadcast() }
    }

    /// Publishes written records: the index points at a block, tombstones and updates count as the
    /// segment's metadata records, and the segment's summary lists them all.
    func finish(_ r: Reservation, key: BlockKey?, entries: [SummaryEntry], size: Int) {
        state.withLock { st in
            if let key { st.pending.remove(key) }
            if let ns = r.chargedNamespace { st.usage[ns]?.reservedBytes -= UInt64(size) }
            // In place through the dictionary: a copy of the segment state would make every append copy
            // the whole summary (its array shared with the copy).
            let id = r.segment.id
            guard st.segments[id] != nil else { return }
            st.segments[id]!.inflight -= 1
            let now = wallClockNanoseconds()
            for entry in entries {
                st.segments[id]!.summary.append(entry)
                switch entry.type {
                case .tombstone, .update:
                    st.segments[id]!.metadataRecords += 1
                case .block:
                    guard let key else { continue }
                    var indexEntry = IndexEntry(segment: r.segment.id, summary: entry, attributes: r.attributes)
                    indexEntry.directory = r.directory
                    st.segments[id]!.liveBytes += UInt64(indexEntry.recordSize)
                    st.segments[id]!.countLive(entry.namespaceID, 1)
                    st.link(key, indexEntry, now: now)
                    if entry.modifiedNanoseconds > 0 || entry.accessedNanoseconds > 0 {
                        st.extras[key] = BlockExtras(modifiedNanoseconds: entry.modifiedNanoseconds,
                                                     accessedNanoseconds: entry.accessedNanoseconds)
                    }
                    st.stats.puts += 1
                    st.stats.bytesWritten += UInt64(entry.logicalLength)
                }
            }
        }
        idle.withLock { idle.broadcast() }
    }

    /// Creates segment `id`, writes its header, and makes it the active one.
    static func startActiveSegment(_ st: inout StoreState, id: UInt32, device: any StorageDevice) throws {
        activateSegment(&st, id: id, file: try makeSegmentFile(id: id, device: device))
    }

    /// Segment `id`'s file with its header, its name durable in the directory.
    static func makeSegmentFile(id: UInt32, device: any StorageDevice) throws -> any DeviceFile {
        let file = try device.open(SegmentFormat.dataFileName(id), create: true)
        let page = AlignedBuffer(capacity: SegmentFormat.headerSize)
        SegmentFormat.encodeHeader(id: id, createdNanoseconds: wallClockNanoseconds(), into: page.mutableBytes(count: SegmentFormat.headerSize))
        try file.truncate(to: 0)
        try file.write([page.bytes(count: SegmentFormat.headerSize)], at: 0)
        try device.synchronizeDirectory()
        return file
    }

    static func activateSegment(_ st: inout StoreState, id: UInt32, file: any DeviceFile) {
        st.segments[id] = SegmentState(segment: Segment(id: id, file: file), length: UInt64(SegmentFormat.headerSize))
        st.activeID = id
        st.usedBytes += UInt64(SegmentFormat.headerSize)
    }

    /// Makes the file of the segment the next roll will start, outside the store's lock. Making it at the
    /// roll meant a directory `fsync` under the lock, and with the page cache full of records being
    /// written back that sync waits for the filesystem's journal: every commit and lookup of the store
    /// stopped 200-390 ms (`twctl bench store --threads 1`, "slowest lookup"). A file made here but no
    /// longer wanted (the store closed, or a roll came first) is removed; a crash leaves at most an empty
    /// segment, which the next start removes.
    func prepareSpareSegment() {
        guard let id = state.withLock({ st -> UInt32? in
            guard let id = st.spareWanted, !st.closed, st.spareBeingMade == nil else { return nil }
            st.spareWanted = nil
            st.spareBeingMade = id
            return id
        }) else { return }
        let file = try? Self.makeSegmentFile(id: id, device: device)
        let kept = state.withLock { st -> Bool in
            st.spareBeingMade = nil
            guard let file, !st.closed, st.activeID + 1 == id, st.spareSegment == nil else { return false }
            st.spareSegment = (id, file)
            return true
        }
        if !kept { try? device.remove(SegmentFormat.dataFileName(id)) }
    }

    /// Removes the spare segment's file (a closing store: the next start must find only sealed segments).
    func discardSpareSegment() {
        let spare = state.withLock { st -> UInt32? in
            defer { st.spareSegment = nil }
            return st.spareSegment?.id
        }
        if let spare { try? device.remove(SegmentFormat.dataFileName(spare)) }
    }

    /// Deletes the files of evicted segments (after the lock is released).
    func deleteEvicted(_ segments: [SegmentState]) {
        for s in segments {
            try? device.remove(SegmentFormat.summaryFileName(s.segment.id))
            try? device.remove(SegmentFormat.dataFileName(s.segment.id))
        }
    }

    /// Namespaces whose blocks eviction keeps: pinned and within their quota.
    static func pinnedNamespaces(_ st: StoreState) -> Set<UInt16> {
        Set(st.namespaces.byID.values.filter { ns in
            ns.pinned && (ns.quotaBytes == 0 || (st.usage[ns.id]?.storedBytes ?? 0) <= ns.quotaBytes)
        }.map(\.id))
    }
}
