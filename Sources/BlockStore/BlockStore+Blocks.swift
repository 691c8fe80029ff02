import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// The data path: put, read, locate, remove, rename and attribute changes of blocks.
extension BlockStore {
    /// Stores `payload` as block `key` of `namespace` unless the name already holds a block (first write wins).
    ///
    /// - Parameters:
    ///   - key: the block's key (`BlockPath`): a canonical hash, or the path inside the namespace.
    ///   - metadata: xattrs, owner and mode (nil owner: shown as the namespace's with mode 0444).
    ///   - stagedInPlace: the caller owns writable, page-aligned memory at `payload` with room up to the
    ///     next page boundary; the store zeroes that tail and writes the payload and its padding
    ///     straight from it (no copy into a buffer of its own).
    ///   - payloadChecksum: XXH3-64 of `payload` if the caller already has it (must be right: a wrong
    ///     one makes the block unreadable, never wrong).
    ///   - quotaReservation: bytes the caller reserved with `reserveQuota` for this block; released here
    ///     whatever the outcome.
    ///   - createDirectories: make the key's missing directories (a block fetched from another node);
    ///     otherwise a missing directory is `.notFound`.
    ///   - replica: the block is a copy of one the shared tier holds. Its record is never waited on,
    ///     whatever `sync` says: a crash that loses it costs a fetch, not
    ///     data, and the caller's reader is waiting. The next sync of the segment (the flusher's, an
    ///     `always` commit's, the seal's) makes it durable with everything written before it.
    /// - Returns: `.stored` with the record's sequence, or `.alreadyPresent` when the name exists or another writer of it is in flight.
    /// - Throws: `StoreError` (`.tooLarge`, `.invalidName`, `.notFound`, `.noSpace`, `.quotaExceeded`, `.io`).
    ///   Durability on return follows `configuration.sync` (docs/format.md, "Durability").
    public func put(namespace: String, key: String, payload: UnsafeRawBufferPointer,
                    metadata: BlockMetadata = BlockMetadata(), commitNanoseconds: UInt64? = nil,
                    stagedInPlace: Bool = false, payloadChecksum knownChecksum: UInt64? = nil,
                    quotaReservation: UInt64 = 0, createDirectories: Bool = false, replica: Bool = false) throws -> PutOutcome {
        var reservation = quotaReservation
        defer { if reservation > 0, let id = self.namespace(named: namespace)?.id { releaseQuota(namespaceID: id, bytes: reservation) } }
        guard payload.count <= configuration.maxBlockSize else { throw StoreError.tooLarge(size: payload.count, limit: configuration.maxBlockSize) }
        guard BlockPath.isValidKey(key) else { throw StoreError.invalidName("'\(key.prefix(300))' is not a block key") }
        guard metadata.encodedLength <= RecordFormat.maxMetadataLength else {
            throw StoreError.invalidName("metadata longer than \(RecordFormat.maxMetadataLength) bytes")
        }
        let blockKey = BlockKey(namespace: namespace, key: key)
        guard let ns = state.withLock({ st -> NamespaceInfo? in st.namespaces[namespace] }) else { throw StoreError.notFound }
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
        var placed: Reservation
        var attempt = 0
        while true {
            let request = ReservationRequest(recordSize: recordSize, key: blockKey, namespaceID: ns.id, quotaCredit: reservation,
                                             blockKeyString: key, createDirectories: createDirectories, ownership: metadata.ownership)
            let r: Reservation?
            do {
                r = try reserve(request)
            } catch {
                reservation = 0  // released by the failed reservation
                throw error
            }
            reservation = 0
            guard let r else {
                state.withLock { $0.stats.duplicatePuts += 1 }
                return .alreadyPresent
            }
            placed = r
            header.sequence = placed.sequence
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
                try placed.segment.file.write(parts, at: placed.offset)
                try settle(placed.segment, wrote: recordSize, replica: replica)
                break
            } catch {
                abandon(placed, key: blockKey, size: recordSize)
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
        var summary = Self.summaryEntry(for: header, namespaceID: ns.id, page: placed.page, directory: placed.directory)
        summary.ownership = metadata.ownership
        finish(placed, key: blockKey, entries: [summary], size: recordSize)
        return .stored(sequence: placed.sequence)
    }

    /// The summary entry of a record (from its header; the directory is the caller's to resolve).
    static func summaryEntry(for h: RecordHeader, namespaceID: UInt16, page: UInt32, directory: UInt32) -> SummaryEntry {
        let fanout = BlockName.fanout(of: h.key.utf8)
        var flags: UInt8 = 0
        if h.type == .tombstone { flags |= EntryFlags.tombstone }
        if fanout != nil { flags |= EntryFlags.canonical }
        if h.flags & RecordFormat.flagCompressedLZ4 != 0 { flags |= EntryFlags.compressed }
        if h.type == .block && (h.metadata.modifiedNanoseconds != nil || h.metadata.accessedNanoseconds != nil) { flags |= EntryFlags.timed }
        var e = SummaryEntry(key: BlockKey(namespace: h.namespace, key: h.key), sequence: h.sequence, page: page, type: h.type,
                             storedLength: UInt32(h.storedLength), logicalLength: UInt32(h.logicalLength),
                             commitSeconds: UInt32(truncatingIfNeeded: h.commitTimeNanoseconds / 1_000_000_000),
                             namespaceID: namespaceID, fanout: fanout ?? 0, flags: flags,
                             headerPages: UInt8(h.headerAreaSize / RecordFormat.alignment), directory: directory,
                             ownership: h.metadata.ownership)
        if h.type == .update {
            e.dataSequence = h.metadata.dataSequence ?? 0
        }
        // Kept in memory for blocks too (their summary entries have no room for it: recovery reads the
        // header of a timed block), so `finish` can record it.
        e.modifiedNanoseconds = h.metadata.modifiedNanoseconds ?? 0
        e.accessedNanoseconds = h.metadata.accessedNanoseconds ?? 0
        return e
    }

    // MARK: Looking up

    /// Whether an entry's namespace has a time to live that the block has outlived (it then reads as
    /// missing until maintenance removes it). Saturating: no time to live can overflow.
    static func isExpired(_ e: IndexEntry, _ st: StoreState, now: UInt64) -> Bool {
        guard let ttl = st.namespaces.byID[e.namespaceID]?.ttlSeconds, ttl > 0 else { return false }
        let (end, overflow) = UInt64(e.commitSeconds).addingReportingOverflow(ttl)
        return !overflow && now >= end
    }

    static func nowSeconds() -> UInt64 { wallClockNanoseconds() / 1_000_000_000 }

    /// The live (not expired) index entry of a key.
    static func live(_ k: BlockKey, _ st: StoreState) -> IndexEntry? {
        guard let e = st.index[k] else { return nil }
        return isExpired(e, st, now: nowSeconds()) ? nil : e
    }

    /// Whether the block exists.
    public func contains(namespace: String, key: String) -> Bool {
        let k = BlockKey(namespace: namespace, key: key)
        return state.withLock { Self.live(k, $0) != nil }
    }

    /// Size, times, owner and directory of a block, from memory.
    public func attributes(namespace: String, key: String) -> BlockAttributes? {
        attributes(of: BlockKey(namespace: namespace, key: key))
    }

    public func attributes(of k: BlockKey) -> BlockAttributes? {
        state.withLock { st in
            Self.live(k, st).map { e in
                let x = st.extras[k]
                func time(_ t: UInt64?) -> UInt64? { t.flatMap { $0 > 0 ? $0 : nil } }
                var a = BlockAttributes(logicalLength: Int(e.logicalLength), storedLength: Int(e.storedLength), commitSeconds: e.commitSeconds,
                                        modifiedNanoseconds: time(x?.modifiedNanoseconds), namespaceID: e.namespaceID, directory: e.directory,
                                        ownership: st.attributes.ownership(e.attributes, namespace: st.namespaces.byID[e.namespaceID]),
                                        compressed: e.isCompressed, sequence: e.sequence)
                a.accessedNanoseconds = time(x?.accessedNanoseconds)
                a.changedNanoseconds = time(x?.changedNanoseconds)
                return a
            }
        }
    }

    /// Reads and verifies a whole block.
    ///
    /// - Throws: `.notFound`, `.corruption` (checksum mismatch or a record of another block: never served), `.io`.
    public func read(namespace: String, key: String) throws -> BlockData {
        guard let located = locate(namespace: namespace, key: key) else { throw StoreError.notFound }
        return try read(located)
    }

    /// Finds a block and counts the access toward its segment's recency.
    public func locate(namespace: String, key: String) -> LocatedBlock? {
        let k = BlockKey(namespace: namespace, key: key)
        let now = monotonicNanoseconds()
        return state.withLock { Self.locate(k, namespace: namespace, key: key, now: now, &$0) }
    }

    /// `locate` and `accessChain` (the block included) under one hold of the lock: an open for reading
    /// needs both, and the store's lock is the one every reader of the mount goes through.
    public func locateWithAccess(namespaceID: UInt16, namespace: String, key: String) -> (block: LocatedBlock, access: AccessChain?)? {
        let k = BlockKey(namespace: namespace, key: key)
        let components = Self.directoryComponents(of: key)
        let now = monotonicNanoseconds()
        return state.withLock { st -> (block: LocatedBlock, access: AccessChain?)? in
            guard let located = Self.locate(k, namespace: namespace, key: key, now: now, &st) else { return nil }
            return (located, Self.accessChain(st, namespaceID: namespaceID, components: components, block: k))
        }
    }

    private static func locate(_ k: BlockKey, namespace: String, key: String, now: UInt64, _ st: inout StoreState) -> LocatedBlock? {
        guard var e = live(k, st), let seg = st.segments[e.segment] else { return nil }
        if !e.wasAccessed {
            e.setFlag(EntryFlags.accessed, true)
            st.index[k] = e
        }
        st.segments[e.segment]!.lastAccess = now
        return LocatedBlock(entry: e, segment: seg.segment, namespace: namespace, key: key, blockKey: k)
    }

    /// Reads and verifies the record `located` points at.
    public func read(_ located: LocatedBlock) throws -> BlockData {
        state.withLock { $0.stats.gets += 1 }
        do {
            let data = try readRecord(located.entry, from: located.segment, namespace: located.namespace,
                                      key: located.key.isEmpty ? nil : located.key, blockKey: located.blockKey)
            state.withLock { $0.stats.bytesRead += UInt64(data.count) }
            return data
        } catch let e as StoreError {
            if case .corruption = e { state.withLock { $0.stats.corruptReads += 1 } }
            throw e
        } catch {
            throw StoreError.wrap(error)
        }
    }

    /// Reads a record, checks that it is the block record the index expects (namespace, sequence,
    /// lengths, and the name unless the block was renamed since) and that both checksums hold, and
    /// decompresses.
    /// A block found by its place in the log has no name at hand (`key` nil): its record must then
    /// hash to `blockKey`.
    func readRecord(_ entry: IndexEntry, from segment: Segment, namespace: String, key: String?, blockKey: BlockKey? = nil) throws -> BlockData {
        let areaSize = entry.headerPages * RecordFormat.alignment
        let total = entry.recordSize
        let buffer = AlignedBuffer(capacity: total)
        let n = try segment.file.read(into: buffer.mutableBytes(count: total), at: entry.offset)
        let location = "segment \(segment.id) offset \(entry.offset)"
        guard n >= areaSize + Int(entry.storedLength) else { throw StoreError.corruption("\(location): short read") }
        guard case .success(let header) = RecordHeader.decode(buffer.bytes(count: areaSize)) else {
            throw StoreError.corruption("\(location): bad header")
        }
        guard header.type == .block, header.namespace == namespace, header.sequence == entry.sequence,
              entry.isUpdated || (key.map { header.key == $0 } ?? (BlockKey(namespace: header.namespace, key: header.key) == blockKey)),
              header.storedLength == Int(entry.storedLength), header.logicalLength == Int(entry.logicalLength) else {
            throw StoreError.corruption("\(location): record belongs to \(header.namespace)/\(header.key) (sequence \(header.sequence))")
        }
        let payload = buffer.bytes(areaSize, count: header.storedLength)
        guard Checksum.xxh3(payload) == header.payloadChecksum else { throw StoreError.corruption("\(location): payload checksum mismatch") }
        if header.flags & RecordFormat.flagCompressedLZ4 != 0 {
            let out = AlignedBuffer(capacity: header.logicalLength)
            guard LZ4Codec.decompress(payload, into: out.mutableBytes(count: header.logicalLength)) else {
                throw StoreError.corruption("\(location): LZ4 data does not decompress")
            }
            return BlockData(buffer: out, offset: 0, count: header.logicalLength, commitSeconds: entry.commitSeconds)
        }
        return BlockData(buffer: buffer, offset: areaSize, count: header.storedLength, commitSeconds: entry.commitSeconds,
                         checksum: header.payloadChecksum)
    }

    /// The metadata (xattrs) stored with a block, from its record header.
    public func metadata(namespace: String, key: String) throws -> BlockMetadata {
        let k = BlockKey(namespace: namespace, key: key)
        guard let (entry, segment) = state.withLock({ st -> (IndexEntry, Segment)? in
            guard let e = Self.live(k, st), let seg = st.segments[e.segment] else { return nil }
            return (e, seg.segment)
        }) else { throw StoreError.notFound }
        let header = try readHeader(page: entry.page, headerPages: entry.headerPages, from: segment)
        guard header.type == .block, header.namespace == namespace, header.sequence == entry.sequence else {
            throw StoreError.corruption("record belongs to another block")
        }
        return header.metadata
    }

    /// - Parameter cached: read through the page cache (`DeviceFile.readCached`: a read started with
    ///   `startReading` is waited for, not issued again) instead of straight from the device.
    func readHeader(page: UInt32, headerPages: Int, from segment: Segment, cached: Bool = false) throws -> RecordHeader {
        let size = max(1, headerPages) * RecordFormat.alignment
        let buffer = AlignedBuffer(capacity: size)
        let at = UInt64(page) * UInt64(RecordFormat.alignment)
        let into = buffer.mutableBytes(count: size)
        let n = try cached ? segment.file.readCached(into: into, at: at) : segment.file.read(into: into, at: at)
        guard case .success(let header) = RecordHeader.decode(buffer.bytes(count: n)) else {
            throw StoreError.corruption("segment \(segment.id) page \(page): bad header")
        }
        return header
    }

    // MARK: Changing names and attributes

    /// Writes header-only records (tombstones, updates) at one reservation, in the order given, and
    /// publishes them. `prepare` runs with the lock held: it changes the index and returns the headers
    /// to write (empty: nothing to write).
    private func writeMetadataRecords(namespaceID: UInt16,
                                      _ prepare: (inout StoreState) throws -> [(RecordHeader, BlockKey, UInt32)]) throws {
        var doomed: [SegmentState] = []
        defer { deleteEvicted(doomed) }
        let planned = try state.withLock { st -> (Reservation, [(RecordHeader, BlockKey, UInt32)])? in
            // Sequences are taken (`takeSequence`) in the same critical section as the index change, so
            // a later put of one of the names always gets a higher sequence and survives a restart.
            let records = try prepare(&st)
            guard !records.isEmpty else { return nil }
            let size = records.reduce(0) { $0 + $1.0.headerAreaSize }
            guard let r = try reserveLocked(&st, recordSize: size, key: nil, force: true, doomed: &doomed) else { return nil }
            return (r, records)
        }
        guard let (r, records) = planned else { return }
        let size = records.reduce(0) { $0 + $1.0.headerAreaSize }
        let area = AlignedBuffer(capacity: size)
        var at = 0
        var entries: [SummaryEntry] = []
        for (header, _, directory) in records {
            header.encode(into: area.mutableBytes(at, count: header.headerAreaSize))
            var e = Self.summaryEntry(for: header, namespaceID: namespaceID, page: r.page + UInt32(at / RecordFormat.alignment), directory: directory)
            e.ownership = header.metadata.ownership
            entries.append(e)
            at += header.headerAreaSize
        }
        do {
            try r.segment.file.write([area.bytes(count: size)], at: r.offset)
            try settle(r.segment, wrote: size)
        } catch {
            abandon(r, key: nil, size: size)
            throw StoreError.wrap(error)
        }
        finish(r, key: nil, entries: entries, size: size)
    }

    private func tombstone(namespace: String, key: String, sequence: UInt64) -> RecordHeader {
        RecordHeader(type: .tombstone, flags: 0, namespace: namespace, key: key, metadata: BlockMetadata(),
                     storedLength: 0, logicalLength: 0, sequence: sequence, commitTimeNanoseconds: wallClockNanoseconds(),
                     payloadChecksum: Checksum.xxh3(UnsafeRawBufferPointer(start: nil, count: 0)))
    }

    /// Deletes a block: it disappears from the index at once and a tombstone goes to the log.
    public func remove(namespace: String, key: String) throws {
        let k = BlockKey(namespace: namespace, key: key)
        guard let nsID = self.namespace(named: namespace)?.id else { throw StoreError.notFound }
        var found = false
        try writeMetadataRecords(namespaceID: nsID) { st in
            guard let e = st.unlink(k, now: wallClockNanoseconds()) else { return [] }
            found = true
            st.stats.removes += 1
            return [(tombstone(namespace: namespace, key: key, sequence: st.takeSequence()), k, e.directory)]
        }
        if !found { throw StoreError.notFound }
    }

    /// What a rename did.
    public enum RenameOutcome: Sendable, Equatable {
        /// `to` names the block now.
        case renamed
        /// `to` held a block already (first write wins): it keeps its bytes and `from` is gone.
        case targetKept
    }

    /// Gives block `from` the name `to` in the same namespace, without copying its bytes: an update
    /// record binds `to` to the block's record and a tombstone deletes `from` (written together, the
    /// update first, so a torn write leaves both names rather than neither).
    ///
    /// - Parameter replace: false for `RENAME_NOREPLACE` (an existing `to` is `.alreadyExists`).
    /// - Throws: `.notFound` (no `from`, or `to`'s directory is missing), `.alreadyExists`, `.io`.
    @discardableResult
    public func rename(namespace: String, from: String, to: String, replace: Bool = true) throws -> RenameOutcome {
        guard BlockPath.isValidKey(to) else { throw StoreError.invalidName("'\(to.prefix(300))' is not a block key") }
        if from == to { return contains(namespace: namespace, key: from) ? .renamed : .targetKept }
        let (src, dst) = (BlockKey(namespace: namespace, key: from), BlockKey(namespace: namespace, key: to))
        guard let nsID = self.namespace(named: namespace)?.id else { throw StoreError.notFound }
        var outcome = RenameOutcome.renamed
        try writeMetadataRecords(namespaceID: nsID) { st in
            guard let e = Self.live(src, st) else { throw StoreError.notFound }
            let now = wallClockNanoseconds()
            if st.index[dst] != nil || st.pending.contains(dst) {
                if !replace { throw StoreError.alreadyExists }
                outcome = .targetKept
                st.unlink(src, now: now)
                st.stats.removes += 1
                return [(tombstone(namespace: namespace, key: from, sequence: st.takeSequence()), src, e.directory)]
            }
            guard let directory = st.directories.directory(ofKey: to, namespace: nsID) else { throw StoreError.notFound }
            let extras = st.extras[src] ?? BlockExtras()
            st.unlink(src, now: now)
            var moved = e
            moved.directory = directory
            moved.setFlag(EntryFlags.updated, true)
            moved.setFlag(EntryFlags.canonical, BlockName.isCanonicalHash(to.utf8))
            let u = st.takeSequence()
            st.link(dst, moved, now: now)
            st.segments[moved.segment]?.liveBytes += UInt64(moved.recordSize)
            st.segments[moved.segment]?.countLive(moved.namespaceID, 1)
            st.extras[dst] = BlockExtras(updateSequence: u, modifiedNanoseconds: extras.modifiedNanoseconds,
                                         accessedNanoseconds: extras.accessedNanoseconds, changedNanoseconds: now, renamedKey: to)
            st.stats.renames += 1
            var meta = BlockMetadata(ownership: st.attributes.ownership(e.attributes, namespace: st.namespaces.byID[nsID]),
                                     modifiedNanoseconds: extras.modifiedNanoseconds > 0 ? extras.modifiedNanoseconds : nil,
                                     accessedNanoseconds: extras.accessedNanoseconds > 0 ? extras.accessedNanoseconds : nil)
            meta.dataSequence = e.sequence
            meta.previousKey = from
            let update = RecordHeader(type: .update, flags: 0, namespace: namespace, key: to, metadata: meta, storedLength: 0,
                                      logicalLength: 0, sequence: u, commitTimeNanoseconds: now,
                                      payloadChecksum: Checksum.xxh3(UnsafeRawBufferPointer(start: nil, count: 0)))
            return [(update, dst, directory), (tombstone(namespace: namespace, key: from, sequence: st.takeSequence()), src, e.directory)]
        }
        return outcome
    }

    /// Records a new owner, mode or modification time of a committed block (`chmod`, `chown`,
    /// `utimes`): an update record, no copy of the bytes. The block stays immutable whatever its mode.
    ///
    /// - Throws: `.notFound`, `.noSpace` when 65535 distinct owner/mode combinations exist, `.io`.
    public func setAttributes(namespace: String, key: String, ownership: BlockOwnership?, modifiedNanoseconds: UInt64?,
                              accessedNanoseconds: UInt64? = nil) throws {
        let k = BlockKey(namespace: namespace, key: key)
        guard let nsID = self.namespace(named: namespace)?.id else { throw StoreError.notFound }
        try writeMetadataRecords(namespaceID: nsID) { st in
            guard var e = Self.live(k, st) else { throw StoreError.notFound }
            let current = st.attributes.ownership(e.attributes, namespace: st.namespaces.byID[nsID])
            let newOwnership = ownership ?? current
            guard let attributeClass = st.attributes.intern(newOwnership) else {
                throw StoreError.noSpace("65535 distinct owner, group and mode combinations are in use")
            }
            var extras = st.extras[k] ?? BlockExtras()
            if let modifiedNanoseconds { extras.modifiedNanoseconds = modifiedNanoseconds }
            if let accessedNanoseconds { extras.accessedNanoseconds = accessedNanoseconds }
            let now = wallClockNanoseconds()
            extras.changedNanoseconds = now
            let u = st.takeSequence()
            extras.updateSequence = u
            e.attributes = attributeClass
            e.setFlag(EntryFlags.updated, true)
            st.index[k] = e
            st.extras[k] = extras
            st.stats.updates += 1
            var meta = BlockMetadata(ownership: newOwnership, modifiedNanoseconds: extras.modifiedNanoseconds > 0 ? extras.modifiedNanoseconds : nil,
                                     accessedNanoseconds: extras.accessedNanoseconds > 0 ? extras.accessedNanoseconds : nil)
            meta.dataSequence = e.sequence
            let update = RecordHeader(type: .update, flags: 0, namespace: namespace, key: key, metadata: meta, storedLength: 0,
                                      logicalLength: 0, sequence: u, commitTimeNanoseconds: now,
                                      payloadChecksum: Checksum.xxh3(UnsafeRawBufferPointer(start: nil, count: 0)))
            return [(update, k, e.directory)]
        }
    }

    // MARK: Removal by the store itself

    /// Removes the blocks of `namespace` committed before `cutoffSeconds` (wall clock; nil: all of
    /// them), with tombstones as unlink does. Returns how many blocks and logical bytes went.
    @discardableResult
    public func removeBlocks(namespace: String, committedBefore cutoffSeconds: UInt64? = nil) throws -> (blocks: Int, bytes: UInt64) {
        guard let ns = self.namespace(named: namespace) else { throw StoreError.notFound }
        let victims = state.withLock { st -> [BlockLocator] in
            st.index.compactMap { (k, e) -> BlockLocator? in
                guard e.namespaceID == ns.id, cutoffSeconds.map({ UInt64(e.commitSeconds) < $0 }) ?? true,
                      let seg = st.segments[e.segment] else { return nil }
                return BlockLocator(segment: seg.segment, page: e.page, headerPages: e.headerPages, key: k, sequence: e.sequence,
                                    knownKey: st.extras[k]?.renamedKey)
            }
        }
        var blocks = 0
        var bytes: UInt64 = 0
        for v in victims {
            // The name is in the record's header (or in memory for a renamed block); the index keeps its hash.
            guard let name = key(of: v) else { continue }
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

    /// The key of a listed block: known in memory for canonical and renamed blocks, else read from its
    /// record header; nil when it is gone or damaged.
    ///
    /// A listing first starts the reads of a batch's headers together (`startReadingKeys`), so the device
    /// serves them at once, and then asks for each name as it needs it: a name is read only for an entry
    /// the reply has room for, and the headers left unread stay in the page cache for the next `READDIR`.
    /// One read at a time, a million-block namespace took 39-40 s to list (docs/benchmarks.md, "Listing
    /// a namespace").
    public func key(of locator: BlockLocator) -> String? {
        if let known = locator.knownKey { return known }
        let at = UInt64(locator.page) * UInt64(RecordFormat.alignment), length = max(1, locator.headerPages) * RecordFormat.alignment
        // Started here too (nothing to do when the batch's start already did): a buffered read that
        // misses the cache would also read ahead into the payload.
        locator.segment.file.startReading(at: at, length: length)
        defer { locator.segment.file.dropCached(at: at, length: length) }
        guard let header = try? readHeader(page: locator.page, headerPages: locator.headerPages, from: locator.segment, cached: true),
              BlockKey(namespace: header.namespace, key: header.key) == locator.key else { return nil }
        return header.key
    }

    /// Starts reading the headers that name `locators` and returns at once (`key(of:)` then finds them
    /// read or on the way): the batch a listing is answering, and the one after it, for the next `READDIR`.
    public func startReadingKeys(of locators: some Sequence<BlockLocator>) {
        for r in Self.headerRuns(Array(locators)) { r.segment.file.startReading(at: r.start, length: Int(r.end - r.start)) }
    }

    /// The byte ranges of the header pages that name `locators` (those without a `knownKey`), in file
    /// order, adjacent ones joined: a directory's blocks were mostly written one after another, and
    /// small records' headers lie side by side.
    static func headerRuns(_ locators: [BlockLocator]) -> [(segment: Segment, start: UInt64, end: UInt64)] {
        let ranges = locators.filter { $0.knownKey == nil }.map { l in
            let start = UInt64(l.page) * UInt64(RecordFormat.alignment)
            return (segment: l.segment, start: start, end: start + UInt64(max(1, l.headerPages) * RecordFormat.alignment))
        }.sorted { ($0.segment.id, $0.start) < ($1.segment.id, $1.start) }
        var runs: [(segment: Segment, start: UInt64, end: UInt64)] = []
        for r in ranges {
            if let last = runs.last, last.segment === r.segment, r.start <= last.end {
                runs[runs.count - 1].end = max(last.end, r.end)
            } else {
                runs.append(r)
            }
        }
        return runs
    }
}

extension Slice where Base == UnsafeRawBufferPointer {
    var asBuffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: self) }
}
