import Platform
#if canImport(Glibc)
import Glibc
#endif

/// The verified bytes of one block, in a buffer the caller may keep.
public struct BlockData: Sendable {
    public let buffer: AlignedBuffer
    public let offset: Int
    public let count: Int
    public let commitSeconds: UInt32
    /// XXH3-64 of the bytes, when known without another pass (uncompressed records).
    public var checksum: UInt64? = nil

    /// Calls `body` with the block's bytes; the pointer is valid only inside it.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(buffer) { try body(buffer.bytes(offset, count: count)) }
    }

    /// A copy of the block's bytes.
    public var array: [UInt8] { withBytes { Array($0) } }
}

/// What `attributes` reports of a block: all from the index, no I/O.
public struct BlockAttributes: Sendable, Equatable {
    public var logicalLength: Int
    public var storedLength: Int
    public var commitSeconds: UInt32
    public var namespaceID: UInt16
    public var compressed: Bool
    /// Sequence of the record: changes when a name is deleted and written again.
    public var sequence: UInt64
}

/// Whether a put stored a new block or found one already there (first write wins).
public enum PutOutcome: Sendable, Equatable {
    case stored
    case alreadyPresent
}

/// A block found by `list`, to turn into a name with `name(of:)`.
public struct BlockLocator: Sendable {
    let segment: Segment
    let page: UInt32
    let headerPages: Int
    public let key: BlockKey
}

/// What recovery found when the store opened.
public struct RecoveryReport: Sendable {
    public var segmentsFromSummary = 0
    public var segmentsScanned = 0
    public var blocks = 0
    public var corruptRecords = 0
    public var tornTailBytes: UInt64 = 0
    public var bytesScanned: UInt64 = 0
    public var nanoseconds: UInt64 = 0
}

/// Counters since the store opened, and the figures of the moment.
public struct StoreStatistics: Sendable {
    public var blocks = 0
    public var capacityBytes: UInt64 = 0
    public var usedBytes: UInt64 = 0
    public var liveBytes: UInt64 = 0
    public var deadBytes: UInt64 = 0
    public var segments = 0
    public var puts = 0
    public var duplicatePuts = 0
    public var bytesWritten: UInt64 = 0
    public var gets = 0
    public var bytesRead: UInt64 = 0
    public var corruptReads = 0
    public var removes = 0
    public var evictedSegments = 0
    public var evictedBlocks = 0
    public var reinsertedBlocks = 0
    public var compactedSegments = 0
    public var reclaimedBytes: UInt64 = 0
    /// Blocks removed because their namespace's time to live passed.
    public var expiredBlocks = 0
    public var namespaces: [(NamespaceInfo, NamespaceUsage)] = []
}

/// What a compaction did.
public struct CompactionReport: Sendable {
    public init() {}
    public var segmentsCompacted = 0
    public var blocksMoved = 0
    public var bytesMoved: UInt64 = 0
    public var bytesReclaimed: UInt64 = 0
}

/// The log-structured block store: segments of records on local disk and an in-memory index.
///
/// Thread-safety: every method may be called from any thread. One mutex (`state`) guards the index and
/// segment table and is held only for in-memory work and the rare segment roll; record reads and
/// writes run outside it at offsets reserved under it. Lock order: `state` before a segment's
/// `GroupCommit` lock (never the other way).
public final class BlockStore: Sendable {
    public let configuration: StoreConfiguration
    public let recovery: RecoveryReport
    let device: any StorageDevice
    private let lockToken: Locked<AnyObject?>
    let state: Locked<StoreState>
    private let stopping = Locked(false)
    /// Told of blocks removed by the store itself (expiry, `removeBlocks`), so caches drop them too.
    private let removalObserver = Locked<(@Sendable (String, String) -> Void)?>(nil)
    /// When maintenance last removed expired blocks (monotonic nanoseconds).
    private let lastExpiry = Locked<UInt64>(0)
    private let wakeup = ConditionLock()
    private let threads = Locked<[BackgroundThread]>([])

    struct StoreState {
        var index: [BlockKey: IndexEntry] = [:]
        var pending: Set<BlockKey> = []
        var segments: [UInt32: SegmentState] = [:]
        var activeID: UInt32 = 0
        var nextSequence: UInt64 = 1
        var usedBytes: UInt64 = 0
        /// Bytes the store may use given the disk's free space (other files share the disk), refreshed
        /// when a segment is started and after a write failed for lack of space.
        var spaceLimit: UInt64 = .max
        var namespaces = NamespaceTable()
        var usage: [UInt16: NamespaceUsage] = [:]
        var stats = StoreStatistics()
        var closed = false
    }

    /// Opens the store in `directory` (creating it), recovering its index.
    public convenience init(directory: String, configuration: StoreConfiguration) throws {
        try self.init(device: DirectoryStorageDevice(directory: directory), configuration: configuration)
    }

    /// Opens the store on `device`: takes its lock, loads the summaries of sealed segments, scans the
    /// rest, truncates torn tails, and starts a new active segment.
    public init(device: any StorageDevice, configuration: StoreConfiguration) throws {
        let started = monotonicNanoseconds()
        self.device = device
        self.configuration = configuration
        let token = try device.lockExclusively()
        var st = StoreState()
        var report = RecoveryReport()
        if let bytes = try device.readWhole(NamespaceTable.fileName) { st.namespaces = try NamespaceTable(decoding: bytes) }

        var dataIDs: [UInt32] = []
        var summaryIDs = Set<UInt32>()
        for name in try device.fileNames() {
            guard let parsed = SegmentFormat.parseFileName(name) else { continue }
            if parsed.isSummary { summaryIDs.insert(parsed.id) } else { dataIDs.append(parsed.id) }
        }
        dataIDs.sort()
        for id in summaryIDs where !dataIDs.contains(id) { try? device.remove(SegmentFormat.summaryFileName(id)) }

        for id in dataIDs {
            let file = try device.open(SegmentFormat.dataFileName(id), create: false)
            let segment = Segment(id: id, file: file)
            var entries: [SummaryEntry]? = nil
            if summaryIDs.contains(id), let bytes = try device.readWhole(SegmentFormat.summaryFileName(id)) {
                entries = SummaryEntry.decodeFile(bytes, segmentID: id)
            }
            var length = try file.length()
            if let entries {
                report.segmentsFromSummary += 1
                st.segments[id] = SegmentState(segment: segment, length: length, sealed: true, summaryWritten: true, summary: entries)
            } else {
                let scan = try SegmentScanner(file: file, segmentID: id).scan()
                report.segmentsScanned += 1
                report.bytesScanned += scan.bytesRead
                report.corruptRecords += scan.damage.count
                if scan.records.isEmpty && length <= UInt64(SegmentFormat.headerSize) * 2 && scan.damage.isEmpty {
                    try device.remove(SegmentFormat.dataFileName(id))
                    continue
                }
                if scan.tailBytes > 0 {
                    report.tornTailBytes += scan.tailBytes
                    try file.truncate(to: scan.validEnd)
                    length = scan.validEnd
                }
                if !scan.headerValid {
                    let page = AlignedBuffer(capacity: SegmentFormat.headerSize)
                    SegmentFormat.encodeHeader(id: id, createdNanoseconds: wallClockNanoseconds(), into: page.mutableBytes(count: SegmentFormat.headerSize))
                    try file.write([page.bytes(count: SegmentFormat.headerSize)], at: 0, direct: false)
                }
                var summary: [SummaryEntry] = []
                for r in scan.records {
                    guard let nsID = st.namespaces.idByName[r.header.namespace] else { continue }
                    summary.append(Self.summaryEntry(for: r.header, namespaceID: nsID, page: UInt32(r.offset / UInt64(RecordFormat.alignment))))
                }
                // The scanned segment is sealed now: make it and its summary durable so the next start skips it.
                try file.synchronize()
                try device.replaceAtomically(SegmentFormat.summaryFileName(id), bytes: SummaryEntry.encodeFile(segmentID: id, entries: summary))
                st.segments[id] = SegmentState(segment: segment, length: length, sealed: true, summaryWritten: true, summary: summary)
            }
        }
        // Apply every record in sequence order: the highest sequence of a key wins; tombstones delete.
        for id in dataIDs {
            guard let seg = st.segments[id] else { continue }
            for e in seg.summary {
                if let old = st.index[e.key], old.sequence > e.sequence { continue }
                st.index[e.key] = IndexEntry(segment: id, summary: e)
            }
        }
        st.index = st.index.filter { !$0.value.isTombstone && st.namespaces.byID[$0.value.namespaceID] != nil }
        for (_, e) in st.index {
            st.segments[e.segment]!.liveBytes += UInt64(e.recordSize)
            st.segments[e.segment]!.countLive(e.namespaceID, 1)
            st.usage[e.namespaceID, default: NamespaceUsage()].add(e)
            st.nextSequence = max(st.nextSequence, e.sequence + 1)
        }
        for (id, seg) in st.segments {
            st.usedBytes += seg.length
            for e in seg.summary { st.nextSequence = max(st.nextSequence, e.sequence + 1) }
            st.segments[id]!.tombstones = seg.summary.filter { $0.flags & EntryFlags.tombstone != 0 }.count
            // Sealed segments' entries live in their summary files; memory holds only the index.
            st.segments[id]!.summary = []
        }
        report.blocks = st.index.count
        st.stats.capacityBytes = configuration.capacity

        try Self.startActiveSegment(&st, id: (dataIDs.last ?? 0) + 1, device: device)
        report.nanoseconds = monotonicNanoseconds() - started
        self.lockToken = Locked(token)
        self.state = Locked(st)
        self.recovery = report
    }

    static func summaryEntry(for h: RecordHeader, namespaceID: UInt16, page: UInt32) -> SummaryEntry {
        let fanout = BlockName.fanout(of: Array(h.key.utf8))
        var flags: UInt8 = 0
        if h.type == .tombstone { flags |= EntryFlags.tombstone }
        if fanout != nil { flags |= EntryFlags.canonical }
        if h.flags & RecordFormat.flagCompressedLZ4 != 0 { flags |= EntryFlags.compressed }
        return SummaryEntry(key: BlockKey(namespace: h.namespace, key: h.key), sequence: h.sequence, page: page,
                            storedLength: UInt32(h.storedLength), logicalLength: UInt32(h.logicalLength),
                            commitSeconds: UInt32(truncatingIfNeeded: h.commitTimeNanoseconds / 1_000_000_000),
                            namespaceID: namespaceID, fanout: fanout ?? 0, flags: flags,
                            headerPages: UInt8(h.headerAreaSize / RecordFormat.alignment))
    }

    /// Creates segment `id`, writes its header, and makes it the active one.
    private static func startActiveSegment(_ st: inout StoreState, id: UInt32, device: any StorageDevice) throws {
        let file = try device.open(SegmentFormat.dataFileName(id), create: true)
        let page = AlignedBuffer(capacity: SegmentFormat.headerSize)
        SegmentFormat.encodeHeader(id: id, createdNanoseconds: wallClockNanoseconds(), into: page.mutableBytes(count: SegmentFormat.headerSize))
        try file.truncate(to: 0)
        try file.write([page.bytes(count: SegmentFormat.headerSize)], at: 0, direct: false)
        try device.synchronizeDirectory()
        st.segments[id] = SegmentState(segment: Segment(id: id, file: file), length: UInt64(SegmentFormat.headerSize))
        st.activeID = id
        st.usedBytes += UInt64(SegmentFormat.headerSize)
    }

    // MARK: Background work

    /// Starts the flusher (batch syncs, summaries of sealed segments) and the maintenance thread
    /// (eviction above the high watermark, compaction of dead segments). Call once.
    public func startBackgroundWork() {
        let flusher = BackgroundThread(name: "tw-flush") { [self] in
            while !stopping.withLock({ $0 }) {
                wakeup.withLock { wakeup.wait(nanoseconds: configuration.batchIntervalNanoseconds) }
                flushOnce()
            }
        }
        let maintenance = BackgroundThread(name: "tw-maintain") { [self] in
            while !stopping.withLock({ $0 }) {
                wakeup.withLock { wakeup.wait(nanoseconds: 50_000_000) }
                if stopping.withLock({ $0 }) { break }
                maintainOnce()
            }
        }
        threads.withLock { $0 = [flusher, maintenance] }
    }

    /// One pass of the flusher: sync what `batch` owes, write summaries of finished sealed segments.
    public func flushOnce() {
        let work = state.withLock { st -> (active: Segment?, sealed: [(Segment, [SummaryEntry])]) in
            let active = configuration.sync == .batch ? st.segments[st.activeID]?.segment : nil
            var sealed: [(Segment, [SummaryEntry])] = []
            for (_, s) in st.segments where s.sealed && !s.summaryWritten && s.inflight == 0 {
                sealed.append((s.segment, s.summary))
            }
            return (active, sealed)
        }
        if let active = work.active, active.commit.hasUnsyncedWrites {
            if (try? active.commit.synchronizeAll(file: active.file)) != nil { active.file.dropCachedPages() }
        }
        for (segment, summary) in work.sealed {
            do {
                try segment.commit.synchronizeAll(file: segment.file)
                segment.file.dropCachedPages()
                try device.replaceAtomically(SegmentFormat.summaryFileName(segment.id), bytes: SummaryEntry.encodeFile(segmentID: segment.id, entries: summary))
                state.withLock { st in
                    // Records may not have been added since (the segment is sealed and had no writes in flight).
                    if st.segments[segment.id]?.summary.count == summary.count {
                        st.segments[segment.id]?.summaryWritten = true
                        st.segments[segment.id]?.summary = []
                    }
                }
            } catch {
                // Left unwritten: the next pass tries again, and recovery scans the segment if it never lands.
            }
        }
    }

    /// One pass of maintenance: evict down to the low watermark, then compact one segment.
    public func maintainOnce() {
        let now = monotonicNanoseconds()
        if lastExpiry.withLock({ last in
            guard now - last >= 1_000_000_000 else { return false }
            last = now
            return true
        }) { expireBlocks() }
        let (used, capacity) = state.withLock { ($0.usedBytes, configuration.capacity) }
        if Double(used) > configuration.highWatermark * Double(capacity) {
            evict(downTo: UInt64(configuration.lowWatermark * Double(capacity)), reinsert: true)
        }
        if configuration.backgroundCompaction {
            _ = try? compact(threshold: configuration.compactionThreshold, maxSegments: 1)
        }
    }

    /// Stops background work, syncs everything, seals the active segment and writes every summary.
    public func close() throws {
        if stopping.withLock({ s -> Bool in defer { s = true }; return s }) { return }
        // No new writes from here on; the ones already reserved finish before the summaries are written.
        state.withLock { $0.closed = true }
        wakeup.withLock { wakeup.broadcast() }
        // Taken out of the store as they are joined: their closures hold the store, and a closed store
        // must not keep itself alive through them (LeakSanitizer found the cycle).
        let background = threads.withLock { t -> [BackgroundThread] in
            defer { t = [] }
            return t
        }
        for t in background { t.join() }
        removalObserver.withLock { $0 = nil }
        for _ in 0..<30_000 {
            if state.withLock({ st in st.segments.values.allSatisfy { $0.inflight == 0 } }) { break }
            usleep(1000)
        }
        let segments = state.withLock { st -> [SegmentState] in
            if var active = st.segments[st.activeID] {
                active.sealed = true
                st.segments[st.activeID] = active
            }
            return Array(st.segments.values)
        }
        for s in segments where !s.summaryWritten {
            try s.segment.commit.synchronizeAll(file: s.segment.file)
            try device.replaceAtomically(SegmentFormat.summaryFileName(s.segment.id), bytes: SummaryEntry.encodeFile(segmentID: s.segment.id, entries: s.summary))
        }
        lockToken.withLock { $0 = nil }
    }

    deinit {
        if !stopping.withLock({ $0 }) { try? close() }
    }

    /// Stops without syncing or sealing anything, as a killed process would (for crash tests).
    func abandonAsIfCrashed() {
        if stopping.withLock({ s -> Bool in defer { s = true }; return s }) { return }
        wakeup.withLock { wakeup.broadcast() }
        // Taken out of the store as they are joined: their closures hold the store, and a closed store
        // must not keep itself alive through them (LeakSanitizer found the cycle).
        let background = threads.withLock { t -> [BackgroundThread] in
            defer { t = [] }
            return t
        }
        for t in background { t.join() }
        removalObserver.withLock { $0 = nil }
        state.withLock { $0.closed = true }
        lockToken.withLock { $0 = nil }
    }

    /// Whether records are written with O_DIRECT (all policies but `none`).
    var writesDirect: Bool { configuration.sync != .none }

    /// Total and available bytes of the filesystem under the store.
    public func deviceSpace() -> (total: UInt64, available: UInt64) { device.space() }

    // MARK: Namespaces

    /// Creates namespace `name` owned by `owner`:`group` with directory mode `mode` (and the policies
    /// another node announced, when it is created from the shared tier).
    public func createNamespace(_ name: String, owner: UInt32, group: UInt32, mode: UInt32,
                                compression: CompressionPolicy = .off, ttlSeconds: UInt64 = 0,
                                share: SharePolicy? = nil) throws -> NamespaceInfo {
        guard BlockName.isValidNamespace(name) else {
            if name.utf8.count > 255 { throw StoreError.nameTooLong(name) }
            throw StoreError.invalidName("namespace names are 1 to 128 of [A-Za-z0-9._@+-], not starting with '.'")
        }
        return try state.withLock { st in
            if st.namespaces[name] != nil { throw StoreError.alreadyExists }
            guard let id = st.namespaces.nextFreeID() else { throw StoreError.noSpace("too many namespaces") }
            let ns = NamespaceInfo(id: id, name: name, owner: owner, group: group, mode: mode & 0o7777,
                                   compression: compression, createdSeconds: wallClockNanoseconds() / 1_000_000_000,
                                   ttlSeconds: ttlSeconds, share: share)
            var table = st.namespaces
            table.insert(ns)
            try device.replaceAtomically(NamespaceTable.fileName, bytes: table.encoded())
            st.namespaces = table
            return ns
        }
    }

    /// Changes a namespace's owner, mode or compression.
    public func updateNamespace(_ name: String, _ change: (inout NamespaceInfo) -> Void) throws -> NamespaceInfo {
        try state.withLock { st in
            guard var ns = st.namespaces[name] else { throw StoreError.notFound }
            change(&ns)
            var table = st.namespaces
            table.insert(ns)
            try device.replaceAtomically(NamespaceTable.fileName, bytes: table.encoded())
            st.namespaces = table
            return ns
        }
    }

    /// Removes an empty namespace.
    public func removeNamespace(_ name: String) throws {
        try state.withLock { st in
            guard let ns = st.namespaces[name] else { throw StoreError.notFound }
            if (st.usage[ns.id]?.blocks ?? 0) > 0 { throw StoreError.namespaceNotEmpty(name) }
            var table = st.namespaces
            table.remove(name)
            try device.replaceAtomically(NamespaceTable.fileName, bytes: table.encoded())
            st.namespaces = table
            st.usage[ns.id] = nil
        }
    }

    public func namespace(named name: String) -> NamespaceInfo? { state.withLock { $0.namespaces[name] } }
    public func namespace(id: UInt16) -> NamespaceInfo? { state.withLock { $0.namespaces.byID[id] } }
    public func namespaces() -> [NamespaceInfo] { state.withLock { $0.namespaces.byID.values.sorted { $0.name < $1.name } } }
    public func usage(of id: UInt16) -> NamespaceUsage { state.withLock { $0.usage[id] ?? NamespaceUsage() } }

    // MARK: Blocks

    /// Stores `payload` as block `key` of `namespace` unless the name already holds a block (first write wins).
    ///
    /// - Returns: `.stored`, or `.alreadyPresent` when the name exists or another writer of it is in flight.
    /// - Throws: `StoreError` (`.tooLarge`, `.invalidName`, `.notFound` for a missing namespace, `.noSpace`, `.io`).
    /// Durability on return follows `configuration.sync` (docs/format.md, "Durability").
    ///
    /// - Parameter stagedInPlace: the caller owns writable, page-aligned memory at `payload` with room up
    ///   to the next page boundary; the store zeroes that tail and writes the payload straight from it
    ///   with O_DIRECT (no copy). Otherwise the payload is written through the page cache.
    /// - Parameter payloadChecksum: XXH3-64 of `payload` if the caller already has it (must be right:
    ///   a wrong one makes the block unreadable, never wrong).
    public func put(namespace: String, key: String, payload: UnsafeRawBufferPointer,
                    metadata: BlockMetadata = BlockMetadata(), commitNanoseconds: UInt64? = nil,
                    stagedInPlace: Bool = false, payloadChecksum knownChecksum: UInt64? = nil) throws -> PutOutcome {
        guard payload.count <= configuration.maxBlockSize else { throw StoreError.tooLarge(size: payload.count, limit: configuration.maxBlockSize) }
        let keyBytes = Array(key.utf8)
        guard BlockName.isValidKey(keyBytes) else { throw StoreError.invalidName("block names are 1 to 255 bytes without '/' or NUL") }
        guard metadata.encodedLength <= RecordFormat.maxMetadataLength else { throw StoreError.invalidName("metadata longer than \(RecordFormat.maxMetadataLength) bytes") }
        let blockKey = BlockKey(namespace: namespace, key: key)
        guard let ns = state.withLock({ st -> NamespaceInfo? in st.namespaces[namespace] }) else { throw StoreError.notFound }
        if ns.quotaBytes > 0 {
            let used = state.withLock { $0.usage[ns.id]?.logicalBytes ?? 0 }
            if used + UInt64(payload.count) > ns.quotaBytes, state.withLock({ $0.index[blockKey] == nil }) {
                throw StoreError.quotaExceeded("namespace \(namespace) holds \(used) of its \(ns.quotaBytes) bytes; a block of \(payload.count) bytes does not fit")
            }
        }
        if state.withLock({ $0.index[blockKey] != nil }) {
            state.withLock { $0.stats.duplicatePuts += 1 }
            return .alreadyPresent
        }

        // Compress outside the lock; `auto` keeps it only when it saves an eighth.
        var stored = payload
        var compressedBuffer: AlignedBuffer? = nil
        var flags: UInt8 = 0
        if ns.compression != .off, payload.count > 0 {
            let limit = ns.compression == .auto ? payload.count - payload.count / 8 : payload.count
            if let (buffer, n) = LZ4Codec.compress(payload, limit: limit) {
                compressedBuffer = buffer
                stored = buffer.bytes(count: n)
                flags |= RecordFormat.flagCompressedLZ4
            }
        }
        // A checksum the caller computed while the bytes arrived is used when they are stored as given.
        let payloadChecksum = compressedBuffer == nil ? (knownChecksum ?? Checksum.xxh3(stored)) : Checksum.xxh3(stored)
        var header = RecordHeader(type: .block, flags: flags, namespace: namespace, key: key, metadata: metadata,
                                  storedLength: stored.count, logicalLength: payload.count, sequence: 0,
                                  commitTimeNanoseconds: commitNanoseconds ?? wallClockNanoseconds(), payloadChecksum: payloadChecksum)
        let areaSize = header.headerAreaSize
        let recordSize = header.recordSize

        let padding = RecordFormat.align(stored.count) - stored.count
        let area = AlignedBuffer(capacity: areaSize)
        var reservation: Reservation
        var attempt = 0
        while true {
            guard let r = try reserve(recordSize: recordSize, key: blockKey) else {
                state.withLock { $0.stats.duplicatePuts += 1 }
                return .alreadyPresent
            }
            reservation = r
            header.sequence = reservation.sequence
            header.encode(into: area.mutableBytes(count: areaSize))
            var parts = [area.bytes(count: areaSize), stored, RecordFormat.zeroPage.page.prefix(padding).asBuffer]
            if let compressedBuffer {
                compressedBuffer.mutableBytes(stored.count, count: padding).initializeMemory(as: UInt8.self, repeating: 0)
                parts = [area.bytes(count: areaSize), compressedBuffer.bytes(count: stored.count + padding)]
            } else if stagedInPlace, let base = payload.baseAddress {
                UnsafeMutableRawPointer(mutating: base + payload.count).initializeMemory(as: UInt8.self, repeating: 0, count: padding)
                parts = [area.bytes(count: areaSize), UnsafeRawBufferPointer(start: base, count: payload.count + padding)]
            }
            do {
                // Under `always` and `batch` the record goes straight to the device (O_DIRECT: no page-cache
                // copy; measured faster than buffered writes here, docs/benchmarks.md); `always` then syncs,
                // `batch` leaves the device-cache flush to the flusher. `none` writes to the page cache.
                try reservation.segment.file.write(parts, at: reservation.offset, direct: writesDirect)
                let ticket = reservation.segment.commit.writeCompleted()
                if configuration.sync == .always { try reservation.segment.commit.waitDurable(ticket: ticket, file: reservation.segment.file) }
                break
            } catch {
                abandon(reservation, key: blockKey, size: recordSize)
                // The disk filled up under us (other files share it): evict to what it can hold, once.
                if attempt == 0, (error as? SystemError)?.code == ENOSPC {
                    attempt += 1
                    state.withLock { refreshSpaceLimit(&$0) }
                    continue
                }
                throw StoreError.wrap(error)
            }
        }
        withExtendedLifetime(compressedBuffer) {}
        let summary = Self.summaryEntry(for: header, namespaceID: ns.id, page: UInt32(reservation.offset / UInt64(RecordFormat.alignment)))
        finish(reservation, key: blockKey, entry: summary, size: recordSize)
        return .stored
    }

    struct Reservation {
        let segment: Segment
        let offset: UInt64
        let sequence: UInt64
    }

    /// Reserves `recordSize` bytes at the tail of the active segment, rolling to a new segment or
    /// evicting old ones as needed. Returns nil when `key` exists or is being written (for puts).
    ///
    /// When only segments holding pinned blocks could make room, they are evicted with their pinned
    /// blocks copied forward (I/O, outside the lock) and the reservation is tried once more; `relocating`
    /// (a copy made by that eviction) never starts another.
    private func reserve(recordSize: Int, key: BlockKey?, force: Bool = false, relocating: Bool = false) throws -> Reservation? {
        var attempt = 0
        while true {
            var doomed: [SegmentState] = []
            defer { deleteEvicted(doomed) }
            do {
                return try state.withLock { st -> Reservation? in
                    try reserveLocked(&st, recordSize: recordSize, key: key, force: force, doomed: &doomed)
                }
            } catch is PinnedBlocksInTheWay {
                if relocating || attempt > 0 { throw StoreError.noSpace("the store is full of pinned blocks and nothing more can be evicted") }
                attempt += 1
                let target = state.withLock { st -> UInt64 in
                    let limit = min(configuration.capacity, st.spaceLimit)
                    let need = UInt64(recordSize) + 2 * UInt64(SegmentFormat.headerSize)
                    return min(UInt64(configuration.lowWatermark * Double(configuration.capacity)), limit > need ? limit - need : 0)
                }
                evict(downTo: target, reinsert: true)
            }
        }
    }

    /// Raised under the lock when making room needs pinned blocks copied forward first.
    struct PinnedBlocksInTheWay: Error {}

    /// `reserve` with the lock held; evicted segments go to `doomed` for deletion after unlocking.
    private func reserveLocked(_ st: inout StoreState, recordSize: Int, key: BlockKey?, force: Bool,
                               doomed: inout [SegmentState]) throws -> Reservation? {
        if st.closed { throw StoreError.io(SystemError(ESHUTDOWN, "store is closed")) }
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
        // tombstones forward (that is I/O), so it prefers segments that hold none.
        var refreshed = rollOver
        let pinned = Self.pinnedNamespaces(st)
        while st.usedBytes + size + header > min(configuration.capacity, st.spaceLimit) {
            guard let victim = chooseVictim(st, avoidingTombstones: true, avoiding: pinned) ?? chooseVictim(st, avoiding: pinned) else {
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
            try Self.startActiveSegment(&st, id: old + 1, device: device)
            st.segments[old]?.sealed = true
            wakeup.withLock { wakeup.broadcast() }
        }
        var active = st.segments[st.activeID]!
        let offset = active.length
        active.length += size
        active.inflight += 1
        st.segments[st.activeID] = active
        st.usedBytes += size
        let sequence = st.nextSequence
        st.nextSequence += 1
        if let key { st.pending.insert(key) }
        return Reservation(segment: active.segment, offset: offset, sequence: sequence)
    }

    /// The disk's free space as a limit on used bytes, keeping 1 MiB and 1% back for summaries.
    private func refreshSpaceLimit(_ st: inout StoreState) {
        let available = device.space().available
        let reserve = UInt64(1 << 20) + st.usedBytes / 100
        st.spaceLimit = st.usedBytes + (available > reserve ? available - reserve : 0)
    }

    /// A write that failed: its bytes become a hole of zeros in the segment (dead bytes; recovery and
    /// `verify` skip zero pages), so a half-written record never looks like a damaged one.
    private func abandon(_ r: Reservation, key: BlockKey?, size: Int) {
        try? r.segment.file.zeroRange(at: r.offset, length: UInt64(size))
        state.withLock { st in
            if let key { st.pending.remove(key) }
            st.segments[r.segment.id]?.inflight -= 1
        }
    }

    /// Publishes a written record: the index points at it and the segment's summary lists it.
    private func finish(_ r: Reservation, key: BlockKey, entry: SummaryEntry, size: Int) {
        state.withLock { st in
            st.pending.remove(key)
            guard var seg = st.segments[r.segment.id] else { return }
            seg.inflight -= 1
            seg.summary.append(entry)
            let indexEntry = IndexEntry(segment: r.segment.id, summary: entry)
            if entry.flags & EntryFlags.tombstone != 0 { seg.tombstones += 1 }
            if entry.flags & EntryFlags.tombstone == 0 {
                seg.liveBytes += UInt64(size)
                seg.countLive(entry.namespaceID, 1)
                st.index[key] = indexEntry
                st.usage[entry.namespaceID, default: NamespaceUsage()].add(indexEntry)
                st.stats.puts += 1
                st.stats.bytesWritten += UInt64(entry.logicalLength)
            }
            st.segments[r.segment.id] = seg
        }
    }

    /// Whether an entry's namespace has a time to live that the block has outlived (it then reads as
    /// missing until maintenance removes it).
    private static func isExpired(_ e: IndexEntry, _ st: StoreState, now: UInt64) -> Bool {
        guard let ttl = st.namespaces.byID[e.namespaceID]?.ttlSeconds, ttl > 0 else { return false }
        return now >= UInt64(e.commitSeconds) + ttl
    }

    private static func nowSeconds() -> UInt64 { wallClockNanoseconds() / 1_000_000_000 }

    /// The live (not expired) index entry of a key.
    private static func live(_ k: BlockKey, _ st: StoreState) -> IndexEntry? {
        guard let e = st.index[k] else { return nil }
        return isExpired(e, st, now: nowSeconds()) ? nil : e
    }

    /// Whether the block exists.
    public func contains(namespace: String, key: String) -> Bool {
        let k = BlockKey(namespace: namespace, key: key)
        return state.withLock { Self.live(k, $0) != nil }
    }

    /// Size, time and flags of a block, from the index.
    public func attributes(namespace: String, key: String) -> BlockAttributes? {
        let k = BlockKey(namespace: namespace, key: key)
        return state.withLock { st in
            Self.live(k, st).map {
                BlockAttributes(logicalLength: Int($0.logicalLength), storedLength: Int($0.storedLength),
                                commitSeconds: $0.commitSeconds, namespaceID: $0.namespaceID, compressed: $0.isCompressed,
                                sequence: $0.sequence)
            }
        }
    }

    /// Reads and verifies a whole block.
    ///
    /// - Throws: `.notFound`, `.corruption` (checksum mismatch or a record of another name: never served), `.io`.
    public func read(namespace: String, key: String) throws -> BlockData {
        guard let located = locate(namespace: namespace, key: key) else { throw StoreError.notFound }
        return try read(located)
    }

    /// Where a block's record is now. Reading through it works even after the block is unlinked, evicted
    /// or moved (the segment file stays open while referenced), as an open file outlives its name.
    public struct LocatedBlock: Sendable {
        let entry: IndexEntry
        let segment: Segment
        public let namespace: String
        public let key: String
        public var logicalLength: Int { Int(entry.logicalLength) }
        public var commitSeconds: UInt32 { entry.commitSeconds }
        public var storedLength: Int { Int(entry.storedLength) }
        /// The record's sequence: a name deleted and written again gets a higher one.
        public var sequence: UInt64 { entry.sequence }
    }

    /// Finds a block and counts the access toward its segment's recency.
    public func locate(namespace: String, key: String) -> LocatedBlock? {
        let k = BlockKey(namespace: namespace, key: key)
        let now = monotonicNanoseconds()
        return state.withLock { st -> LocatedBlock? in
            guard var e = Self.live(k, st), let seg = st.segments[e.segment] else { return nil }
            if !e.wasAccessed {
                e.setAccessed(true)
                st.index[k] = e
            }
            st.segments[e.segment]!.lastAccess = now
            return LocatedBlock(entry: e, segment: seg.segment, namespace: namespace, key: key)
        }
    }

    /// Reads and verifies the record `located` points at.
    public func read(_ located: LocatedBlock) throws -> BlockData {
        let (entry, segment, namespace, key) = (located.entry, located.segment, located.namespace, located.key)
        state.withLock { $0.stats.gets += 1 }
        do {
            let data = try readRecord(entry, from: segment, namespace: namespace, key: key)
            state.withLock { $0.stats.bytesRead += UInt64(data.count) }
            return data
        } catch let e as StoreError {
            if case .corruption = e { state.withLock { $0.stats.corruptReads += 1 } }
            throw e
        } catch {
            throw StoreError.wrap(error)
        }
    }

    /// Reads a record, checks that it is the block asked for and that both checksums hold, and decompresses.
    private func readRecord(_ entry: IndexEntry, from segment: Segment, namespace: String, key: String) throws -> BlockData {
        let areaSize = entry.headerPages * RecordFormat.alignment
        let total = entry.recordSize
        let buffer = AlignedBuffer(capacity: total)
        let n = try segment.file.read(into: buffer.mutableBytes(count: total), at: entry.offset)
        let where_ = "segment \(segment.id) offset \(entry.offset)"
        guard n >= areaSize + Int(entry.storedLength) else { throw StoreError.corruption("\(where_): short read") }
        guard case .success(let header) = RecordHeader.decode(buffer.bytes(count: areaSize)) else {
            throw StoreError.corruption("\(where_): bad header")
        }
        guard header.type == .block, header.namespace == namespace, header.key == key,
              header.storedLength == Int(entry.storedLength), header.logicalLength == Int(entry.logicalLength) else {
            throw StoreError.corruption("\(where_): record belongs to \(header.namespace)/\(header.key)")
        }
        let payload = buffer.bytes(areaSize, count: header.storedLength)
        guard Checksum.xxh3(payload) == header.payloadChecksum else { throw StoreError.corruption("\(where_): payload checksum mismatch") }
        if header.flags & RecordFormat.flagCompressedLZ4 != 0 {
            let out = AlignedBuffer(capacity: header.logicalLength)
            guard LZ4Codec.decompress(payload, into: out.mutableBytes(count: header.logicalLength)) else {
                throw StoreError.corruption("\(where_): LZ4 data does not decompress")
            }
            return BlockData(buffer: out, offset: 0, count: header.logicalLength, commitSeconds: entry.commitSeconds)
        }
        return BlockData(buffer: buffer, offset: areaSize, count: header.storedLength, commitSeconds: entry.commitSeconds,
                         checksum: header.payloadChecksum)
    }

    /// The metadata (xattrs) stored with a block.
    public func metadata(namespace: String, key: String) throws -> BlockMetadata {
        let k = BlockKey(namespace: namespace, key: key)
        guard let (entry, segment) = state.withLock({ st -> (IndexEntry, Segment)? in
            guard let e = st.index[k], let seg = st.segments[e.segment] else { return nil }
            return (e, seg.segment)
        }) else { throw StoreError.notFound }
        let header = try readHeader(page: entry.page, headerPages: entry.headerPages, from: segment)
        guard header.namespace == namespace, header.key == key else { throw StoreError.corruption("record belongs to another name") }
        return header.metadata
    }

    private func readHeader(page: UInt32, headerPages: Int, from segment: Segment) throws -> RecordHeader {
        let size = headerPages * RecordFormat.alignment
        let buffer = AlignedBuffer(capacity: size)
        let n = try segment.file.read(into: buffer.mutableBytes(count: size), at: UInt64(page) * UInt64(RecordFormat.alignment))
        guard case .success(let header) = RecordHeader.decode(buffer.bytes(count: n)) else {
            throw StoreError.corruption("segment \(segment.id) page \(page): bad header")
        }
        return header
    }

    /// Deletes a block: it disappears from the index at once and a tombstone goes to the log.
    ///
    /// The tombstone's sequence is taken in the same critical section that removes the index entry, so
    /// a put of the same name that follows the unlink always gets a higher sequence and survives restart.
    public func remove(namespace: String, key: String) throws {
        let k = BlockKey(namespace: namespace, key: key)
        var header = RecordHeader(type: .tombstone, flags: 0, namespace: namespace, key: key, metadata: BlockMetadata(),
                                  storedLength: 0, logicalLength: 0, sequence: 0, commitTimeNanoseconds: wallClockNanoseconds(),
                                  payloadChecksum: Checksum.xxh3(UnsafeRawBufferPointer(start: nil, count: 0)))
        let size = header.headerAreaSize
        var doomed: [SegmentState] = []
        defer { deleteEvicted(doomed) }
        let found = try state.withLock { st -> (IndexEntry, Reservation?)? in
            guard let e = st.index[k] else { return nil }
            let r = try reserveLocked(&st, recordSize: size, key: nil, force: true, doomed: &doomed)
            st.index[k] = nil
            st.segments[e.segment]?.liveBytes -= UInt64(e.recordSize)
            st.segments[e.segment]?.countLive(e.namespaceID, -1)
            st.usage[e.namespaceID]?.remove(e)
            st.stats.removes += 1
            return (e, r)
        }
        guard let (removed, reservation) = found else { throw StoreError.notFound }
        guard let r = reservation else { return }
        header.sequence = r.sequence
        let area = AlignedBuffer(capacity: size)
        header.encode(into: area.mutableBytes(count: size))
        do {
            try r.segment.file.write([area.bytes(count: size)], at: r.offset, direct: writesDirect)
            let ticket = r.segment.commit.writeCompleted()
            if configuration.sync == .always { try r.segment.commit.waitDurable(ticket: ticket, file: r.segment.file) }
        } catch {
            abandon(r, key: nil, size: size)
            throw StoreError.wrap(error)
        }
        let entry = Self.summaryEntry(for: header, namespaceID: removed.namespaceID, page: UInt32(r.offset / UInt64(RecordFormat.alignment)))
        finish(r, key: k, entry: entry, size: size)
    }

    /// Gives block `from` the name `to` in the same namespace (a copy under the new name, then a tombstone
    /// for the old one). When `to` already exists, first write wins: `from` is just removed.
    public func rename(namespace: String, from: String, to: String) throws {
        if !contains(namespace: namespace, key: to) {
            let data = try read(namespace: namespace, key: from)
            let meta = try metadata(namespace: namespace, key: from)
            _ = try data.withBytes { try put(namespace: namespace, key: to, payload: $0, metadata: meta) }
        }
        try remove(namespace: namespace, key: from)
    }

    /// The blocks of a namespace, either those with canonical names in fan-out directory `fanout`, or
    /// (nil) those with other names; ordered by their place on disk so names read sequentially.
    public func list(namespaceID: UInt16, fanout: UInt8?) -> [BlockLocator] {
        state.withLock { st in
            var out: [(UInt32, UInt32, BlockLocator)] = []
            let now = Self.nowSeconds()
            for (k, e) in st.index where e.namespaceID == namespaceID && !Self.isExpired(e, st, now: now) {
                if let fanout { guard e.isCanonical && e.fanout == fanout else { continue } } else { guard !e.isCanonical else { continue } }
                guard let seg = st.segments[e.segment] else { continue }
                out.append((e.segment, e.page, BlockLocator(segment: seg.segment, page: e.page, headerPages: e.headerPages, key: k)))
            }
            out.sort { ($0.0, $0.1) < ($1.0, $1.1) }
            return out.map(\.2)
        }
    }

    /// The name of a listed block, read from its record header; nil when it is gone or damaged.
    /// Calls `observer(namespace, name)` for every block the store removes by itself (expiry,
    /// `removeBlocks`); unlink callers handle their own.
    public func observeRemovals(_ observer: @escaping @Sendable (String, String) -> Void) {
        removalObserver.withLock { $0 = observer }
    }

    /// Removes the blocks of `namespace` committed before `cutoffSeconds` (wall clock; nil: all of
    /// them), with tombstones as unlink does. Returns how many blocks and logical bytes went.
    @discardableResult
    public func removeBlocks(namespace: String, committedBefore cutoffSeconds: UInt64? = nil) throws -> (blocks: Int, bytes: UInt64) {
        guard let ns = self.namespace(named: namespace) else { throw StoreError.notFound }
        let victims = state.withLock { st -> [BlockLocator] in
            st.index.compactMap { (k, e) -> BlockLocator? in
                guard e.namespaceID == ns.id, cutoffSeconds.map({ UInt64(e.commitSeconds) < $0 }) ?? true,
                      let seg = st.segments[e.segment] else { return nil }
                return BlockLocator(segment: seg.segment, page: e.page, headerPages: e.headerPages, key: k)
            }
        }
        var blocks = 0
        var bytes: UInt64 = 0
        for v in victims {
            // The name is in the record's header; the index keeps only its hash.
            guard let name = name(of: v) else { continue }
            let size = state.withLock { st in st.index[v.key].map { UInt64($0.logicalLength) } }
            do {
                try remove(namespace: namespace, key: name)
                blocks += 1
                bytes += size ?? 0
                removalObserver.withLock { $0 }?(namespace, name)
            } catch StoreError.notFound {
                continue  // removed meanwhile
            }
        }
        return (blocks, bytes)
    }

    /// Removes blocks that outlived their namespace's time to live. Returns how many went.
    @discardableResult
    public func expireBlocks() -> Int {
        let now = Self.nowSeconds()
        var removed = 0
        for ns in namespaces() where ns.ttlSeconds > 0 && now > ns.ttlSeconds {
            removed += (try? removeBlocks(namespace: ns.name, committedBefore: now - ns.ttlSeconds + 1).blocks) ?? 0
        }
        state.withLock { $0.stats.expiredBlocks += removed }
        return removed
    }

    public func name(of locator: BlockLocator) -> String? {
        guard let header = try? readHeader(page: locator.page, headerPages: locator.headerPages, from: locator.segment),
              BlockKey(namespace: header.namespace, key: header.key) == locator.key else { return nil }
        return header.key
    }

    /// Counters and current figures.
    public func statistics() -> StoreStatistics {
        state.withLock { st in
            var s = st.stats
            s.blocks = st.index.count
            s.usedBytes = st.usedBytes
            s.segments = st.segments.count
            s.liveBytes = st.segments.values.reduce(0) { $0 + $1.liveBytes }
            s.deadBytes = st.segments.values.reduce(0) { $0 + $1.deadBytes }
            s.namespaces = st.namespaces.byID.values.sorted { $0.name < $1.name }.map { ($0, st.usage[$0.id] ?? NamespaceUsage()) }
            return s
        }
    }

    // MARK: Eviction and compaction

    /// Picks the sealed, idle segment to evict next, by the configured order.
    private func chooseVictim(_ st: StoreState, avoidingTombstones: Bool = false, avoiding pinned: Set<UInt16> = []) -> UInt32? {
        var best: (UInt32, UInt64)? = nil
        let oldest = st.segments.keys.min() ?? 0
        for (id, s) in st.segments where id != st.activeID && s.sealed && s.inflight == 0 && !s.busy && !s.holdsBlocks(of: pinned) {
            // Dropping a segment's tombstones while an older segment exists could bring deleted blocks back.
            if avoidingTombstones && s.tombstones > 0 && id != oldest { continue }
            let rank = configuration.eviction == .oldest ? UInt64(id) : s.lastAccess
            if best == nil || rank < best!.1 || (rank == best!.1 && id < best!.0) { best = (id, rank) }
        }
        return best?.0
    }

    /// Every record of a segment: the in-memory list while it is open, its summary file once sealed.
    func entries(of seg: SegmentState) -> [SummaryEntry]? {
        if !seg.summaryWritten || !seg.summary.isEmpty { return seg.summary }
        guard let bytes = try? device.readWhole(SegmentFormat.summaryFileName(seg.segment.id)) else { return nil }
        return SummaryEntry.decodeFile(bytes, segmentID: seg.segment.id)
    }

    /// Drops a segment from the index and the table; the caller deletes its files after unlocking.
    private func removeSegment(_ st: inout StoreState, _ id: UInt32) -> SegmentState {
        let seg = st.segments.removeValue(forKey: id)!
        // Normally the summary names the segment's keys; if it cannot be read, search the index.
        let keys = entries(of: seg)?.filter { $0.flags & EntryFlags.tombstone == 0 }.map(\.key)
            ?? st.index.filter { $0.value.segment == id }.map(\.key)
        for key in keys {
            if let cur = st.index[key], cur.segment == id {
                st.index[key] = nil
                st.usage[cur.namespaceID]?.remove(cur)
                st.stats.evictedBlocks += 1
            }
        }
        st.usedBytes -= seg.length
        st.stats.evictedSegments += 1
        return seg
    }

    private func deleteEvicted(_ segments: [SegmentState]) {
        for s in segments {
            try? device.remove(SegmentFormat.summaryFileName(s.segment.id))
            try? device.remove(SegmentFormat.dataFileName(s.segment.id))
        }
    }

    /// Evicts whole segments until used bytes are at most `target`. With `reinsert`, blocks read since
    /// they were written are first copied forward (up to `reinsertionShare` of each segment), and
    /// tombstones are carried forward while an older segment could still hold what they delete.
    public func evict(downTo target: UInt64, reinsert: Bool) {
        // Every segment at most once per call: when pinned blocks fill the store, copying them forward
        // frees nothing, and the loop must end (new writes then get ENOSPC).
        var rounds = state.withLock { $0.segments.count }
        while rounds > 0 {
            rounds -= 1
            guard let (id, seg, pinned) = state.withLock({ st -> (UInt32, SegmentState, Set<UInt16>)? in
                guard st.usedBytes > target, let id = chooseVictim(st) else { return nil }
                st.segments[id]!.busy = true
                return (id, st.segments[id]!, Self.pinnedNamespaces(st))
            }) else { return }
            var wroteTo = Set<ObjectIdentifier>()
            var written: [Segment] = []
            if reinsert || !pinned.isEmpty {
                let budget = reinsert ? UInt64(configuration.reinsertionShare * Double(seg.length)) : 0
                do {
                    let moved = try relocateLive(of: id, seg, budget: budget, onlyAccessed: true, pinned: pinned,
                                                 wroteTo: &wroteTo, segments: &written)
                    state.withLock { $0.stats.reinsertedBlocks += moved }
                } catch {
                    // Pinned blocks that could not be copied keep their segment.
                    let keep = state.withLock { st -> Bool in
                        guard st.segments[id]?.holdsBlocks(of: pinned) == true else { return false }
                        st.segments[id]?.busy = false
                        return true
                    }
                    if keep {
                        for w in written { try? w.commit.synchronizeAll(file: w.file) }
                        continue
                    }
                }
            }
            try? carryTombstones(of: id, seg, wroteTo: &wroteTo, segments: &written)
            // Copies and carried tombstones must be durable before the segment they came from goes.
            for w in written { try? w.commit.synchronizeAll(file: w.file) }
            let doomed = state.withLock { st -> SegmentState? in st.segments[id] == nil ? nil : removeSegment(&st, id) }
            if let doomed { deleteEvicted([doomed]) }
        }
    }

    /// Namespaces whose blocks eviction keeps: pinned and within their quota.
    private static func pinnedNamespaces(_ st: StoreState) -> Set<UInt16> {
        Set(st.namespaces.byID.values.filter { ns in
            ns.pinned && (ns.quotaBytes == 0 || (st.usage[ns.id]?.logicalBytes ?? 0) <= ns.quotaBytes)
        }.map(\.id))
    }

    /// A segment that compaction at some threshold would rewrite.
    public struct CompactionCandidate: Sendable {
        public var id: UInt32
        public var bytes: UInt64
        public var deadShare: Double
    }

    /// Sealed segments whose dead share is at least `threshold`, most dead first.
    public func compactionCandidates(threshold: Double) -> [CompactionCandidate] {
        state.withLock { st in
            st.segments.filter { $0.key != st.activeID && $0.value.sealed && $0.value.deadShare >= threshold }
                .map { CompactionCandidate(id: $0.key, bytes: $0.value.length, deadShare: $0.value.deadShare) }
                .sorted { $0.deadShare > $1.deadShare }
        }
    }

    /// Rewrites sealed segments whose dead share is at least `threshold`: live records are copied
    /// verbatim (same sequence) to the active segment, made durable, then the old segment is deleted.
    @discardableResult
    ///
    /// - Parameters: throttle: called with each record's size before it is copied (a rate limit sleeps
    ///   there, so foreground reads keep the disk); shouldStop: checked between segments.
    public func compact(threshold: Double, maxSegments: Int = .max, maxBytes: UInt64 = .max,
                        throttle: (Int) -> Void = { _ in }, shouldStop: () -> Bool = { false },
                        progress: (CompactionReport) -> Void = { _ in }) throws -> CompactionReport {
        var report = CompactionReport()
        var tried = Set<UInt32>()
        while report.segmentsCompacted < maxSegments && report.bytesMoved < maxBytes && !shouldStop() {
            guard let (id, seg) = state.withLock({ st -> (UInt32, SegmentState)? in
                let candidates = st.segments.filter { $0.key != st.activeID && $0.value.sealed && $0.value.summaryWritten
                    && $0.value.inflight == 0 && !$0.value.busy && !tried.contains($0.key) && $0.value.deadShare >= threshold }
                guard let pick = candidates.max(by: { $0.value.deadShare < $1.value.deadShare }) else { return nil }
                st.segments[pick.key]!.busy = true
                return (pick.key, pick.value)
            }) else { break }
            tried.insert(id)
            let before = seg.length
            var wroteTo = Set<ObjectIdentifier>()
            var written: [Segment] = []
            let moved: Int
            do {
                moved = try relocateLive(of: id, seg, budget: .max, onlyAccessed: false, throttle: throttle,
                                         wroteTo: &wroteTo, segments: &written)
                try carryTombstones(of: id, seg, wroteTo: &wroteTo, segments: &written)
                // The copies must be durable before the originals go away.
                for w in written { try w.commit.synchronizeAll(file: w.file) }
            } catch {
                state.withLock { $0.segments[id]?.busy = false }
                throw error
            }
            let still = state.withLock { st -> Int in st.index.values.filter { $0.segment == id }.count }
            if still > 0 {
                state.withLock { $0.segments[id]?.busy = false }
                continue
            }
            let doomed = state.withLock { st -> SegmentState? in
                guard st.segments[id] != nil else { return nil }
                let s = removeSegment(&st, id)
                st.stats.evictedSegments -= 1
                st.stats.compactedSegments += 1
                return s
            }
            if let doomed { deleteEvicted([doomed]) }
            let movedBytes = seg.liveBytes
            report.segmentsCompacted += 1
            report.blocksMoved += moved
            report.bytesMoved += movedBytes
            report.bytesReclaimed += before > movedBytes ? before - movedBytes : 0
            state.withLock { $0.stats.reclaimedBytes += before > movedBytes ? before - movedBytes : 0 }
            progress(report)
        }
        return report
    }

    /// Copies the live block records of segment `id` to the active segment, verbatim, and repoints the
    /// index when it still points at the old copy. Returns how many moved; `segments` collects the
    /// segments written into, which must be synced before the original goes.
    /// Blocks of `pinned` namespaces are always copied, outside the budget.
    private func relocateLive(of id: UInt32, _ seg: SegmentState, budget: UInt64, onlyAccessed: Bool,
                              pinned: Set<UInt16> = [], throttle: (Int) -> Void = { _ in },
                              wroteTo: inout Set<ObjectIdentifier>, segments: inout [Segment]) throws -> Int {
        var moved = 0
        var spent: UInt64 = 0
        guard let all = entries(of: seg) else { return 0 }
        for e in all where e.flags & EntryFlags.tombstone == 0 {
            let current = state.withLock { st -> IndexEntry? in
                guard let cur = st.index[e.key], cur.segment == id, cur.page == e.page else { return nil }
                return cur
            }
            guard let current else { continue }
            let isPinned = pinned.contains(current.namespaceID)
            guard isPinned || !onlyAccessed || current.wasAccessed else { continue }
            let size = current.recordSize
            if !isPinned && spent + UInt64(size) > budget { continue }
            throttle(size)
            guard let written = try copyRecord(current, key: e.key, from: seg.segment) else { continue }
            if wroteTo.insert(ObjectIdentifier(written)).inserted { segments.append(written) }
            if !isPinned { spent += UInt64(size) }
            moved += 1
        }
        return moved
    }

    /// Carries the tombstones of segment `id` forward when an older segment exists that they may still
    /// mask. (Every tombstone is carried: a newer live record of its key may itself be evicted later.)
    private func carryTombstones(of id: UInt32, _ seg: SegmentState, wroteTo: inout Set<ObjectIdentifier>, segments: inout [Segment]) throws {
        let older = state.withLock { st in st.segments.keys.contains { $0 < id } }
        guard older, let all = entries(of: seg) else { return }
        for e in all where e.flags & EntryFlags.tombstone != 0 {
            if let written = try copyRecord(IndexEntry(segment: id, summary: e), key: e.key, from: seg.segment),
               wroteTo.insert(ObjectIdentifier(written)).inserted {
                segments.append(written)
            }
        }
    }

    /// Copies one record verbatim to the active segment after verifying it. Returns the segment written
    /// into, or nil when the record is damaged (it is then dropped, and counted).
    private func copyRecord(_ entry: IndexEntry, key: BlockKey, from segment: Segment) throws -> Segment? {
        let size = entry.recordSize
        let buffer = AlignedBuffer(capacity: size)
        let n = try segment.file.read(into: buffer.mutableBytes(count: size), at: entry.offset)
        let area = entry.headerPages * RecordFormat.alignment
        guard n == size, case .success(let header) = RecordHeader.decode(buffer.bytes(count: area)),
              BlockKey(namespace: header.namespace, key: header.key) == key,
              header.type == .tombstone || Checksum.xxh3(buffer.bytes(area, count: header.storedLength)) == header.payloadChecksum
        else {
            state.withLock { $0.stats.corruptReads += 1 }
            return nil
        }
        guard let r = try reserve(recordSize: size, key: nil, force: false, relocating: true) else { return nil }
        do {
            try r.segment.file.write([buffer.bytes(count: size)], at: r.offset, direct: writesDirect)
            _ = r.segment.commit.writeCompleted()
        } catch {
            abandon(r, key: nil, size: size)
            throw StoreError.wrap(error)
        }
        let newPage = UInt32(r.offset / UInt64(RecordFormat.alignment))
        state.withLock { st in
            guard var seg = st.segments[r.segment.id] else { return }
            seg.inflight -= 1
            var summary = entry.summary(key: key)
            summary.page = newPage
            seg.summary.append(summary)
            if entry.isTombstone { seg.tombstones += 1 }
            if !entry.isTombstone, let cur = st.index[key], cur.segment == entry.segment, cur.page == entry.page {
                var moved = cur
                moved.segment = r.segment.id
                moved.page = newPage
                moved.setAccessed(false)
                st.index[key] = moved
                seg.liveBytes += UInt64(size)
                seg.countLive(cur.namespaceID, 1)
                st.segments[entry.segment]?.liveBytes -= UInt64(size)
                st.segments[entry.segment]?.countLive(cur.namespaceID, -1)
            }
            st.segments[r.segment.id] = seg
        }
        return r.segment
    }
}

extension NamespaceUsage {
    mutating func add(_ e: IndexEntry) {
        blocks += 1
        logicalBytes += UInt64(e.logicalLength)
        storedBytes += UInt64(e.recordSize)
    }

    mutating func remove(_ e: IndexEntry) {
        blocks -= 1
        logicalBytes -= UInt64(e.logicalLength)
        storedBytes -= UInt64(e.recordSize)
    }
}

extension Slice where Base == UnsafeRawBufferPointer {
    var asBuffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: self) }
}
