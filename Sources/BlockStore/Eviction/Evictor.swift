import Platform
import Synchronization
import WarehouseCore

/// Eviction of whole segments (CacheLib navy's region eviction): the victim is chosen by the
/// `EvictionPolicy`, blocks the `ReinsertionPolicy` wants and pinned namespaces' blocks are copied
/// forward, tombstones and current update records are carried forward, then the segment is deleted.
extension BlockStore {
    /// Picks the sealed, idle segment to evict next, by the eviction policy.
    func chooseVictim(_ st: StoreState, avoidingMetadataRecords: Bool = false, avoiding pinned: Set<UInt16> = []) -> UInt32? {
        var best: (UInt32, UInt64)? = nil
        let oldest = st.segments.keys.min() ?? 0
        for (id, s) in st.segments where id != st.activeID && s.sealed && s.inflight == 0 && !s.busy && !s.holdsBlocks(of: pinned) {
            // Dropping a segment's tombstones or updates unseen could bring deleted blocks back or lose renames.
            if avoidingMetadataRecords && s.metadataRecords > 0 && id != oldest { continue }
            let rank = evictionPolicy.rank(segment: id, lastAccessNanoseconds: s.lastAccess)
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
    func removeSegment(_ st: inout StoreState, _ id: UInt32) -> SegmentState {
        let seg = st.segments.removeValue(forKey: id)!
        // Normally the summary names the segment's records; if it cannot be read, search the index.
        let keys = entries(of: seg)?.filter { $0.type == .block }.map(\.key)
            ?? st.index.filter { $0.value.segment == id }.map(\.key)
        let now = wallClockNanoseconds()
        for key in keys {
            if let cur = st.index[key], cur.segment == id {
                st.unlink(key, now: now)
                st.stats.evictedBlocks += 1
            }
        }
        // Renamed blocks are indexed under their new name, which their record (and summary) does not hold.
        for (key, x) in st.extras where x.renamedKey != nil && st.index[key]?.segment == id {
            st.unlink(key, now: now)
            st.stats.evictedBlocks += 1
        }
        st.usedBytes -= seg.length
        st.stats.evictedSegments += 1
        return seg
    }

    /// Evicts whole segments until used bytes are at most `target`. With `reinsert`, blocks the
    /// reinsertion policy wants are first copied forward (up to its budget per segment), and tombstones
    /// and current update records are carried forward.
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
            var written: [Segment] = []
            if reinsert || !pinned.isEmpty {
                let budget = reinsert ? reinsertionPolicy.budget(segmentBytes: seg.length) : 0
                do {
                    let moved = try relocateLive(of: id, seg, budget: budget, onlyWanted: true, pinned: pinned, segments: &written)
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
            try? carryMetadataRecords(of: id, seg, segments: &written)
            // Copies and carried records must be durable before the segment they came from goes.
            for w in written { try? w.commit.synchronizeAll(file: w.file) }
            let doomed = state.withLock { st -> SegmentState? in st.segments[id] == nil ? nil : removeSegment(&st, id) }
            if let doomed { deleteEvicted([doomed]) }
        }
    }

    /// Copies the live block records of segment `id` to the active segment and repoints the index when
    /// it still points at the old copy. Returns how many moved; `segments` collects the segments written
    /// into, which must be synced before the original goes. With `onlyWanted`, only blocks the
    /// reinsertion policy wants are copied (within `budget`); blocks of `pinned` namespaces always are.
    func relocateLive(of id: UInt32, _ seg: SegmentState, budget: UInt64, onlyWanted: Bool,
                      pinned: Set<UInt16> = [], throttle: (Int) -> Void = { _ in },
                      segments: inout [Segment]) throws -> Int {
        var moved = 0
        var spent: UInt64 = 0
        guard let all = entries(of: seg) else { return 0 }
        for e in all where e.type == .block {
            // The index entry that still points at this record: under its header's name, or under the
            // name a rename gave it.
            let current = state.withLock { st -> (BlockKey, IndexEntry)? in
                if let cur = st.index[e.key], cur.segment == id, cur.page == e.page { return (e.key, cur) }
                return nil
            } ?? renamedEntry(pointingAt: id, page: e.page)
            guard let (key, entry) = current else { continue }
            let isPinned = pinned.contains(entry.namespaceID)
            guard isPinned || !onlyWanted || reinsertionPolicy.shouldReinsert(entry) else { continue }
            let size = entry.recordSize
            if !isPinned && spent + UInt64(size) > budget { continue }
            throttle(size)
            guard let written = try copyRecord(entry, key: key, summaryKey: e.key, from: seg.segment) else { continue }
            if !segments.contains(where: { $0 === written }) { segments.append(written) }
            if !isPinned { spent += UInt64(size) }
            moved += 1
        }
        return moved
    }

    /// The index entry of a renamed block whose record lies at `segment`/`page` (its summary entry
    /// carries the old name). Renamed blocks are few: they are found through the side table.
    private func renamedEntry(pointingAt segment: UInt32, page: UInt32) -> (BlockKey, IndexEntry)? {
        state.withLock { st in
            for (k, x) in st.extras where x.renamedKey != nil {
                if let cur = st.index[k], cur.segment == segment, cur.page == page { return (k, cur) }
            }
            return nil
        }
    }

    /// Carries the tombstones of segment `id` forward while an older segment exists that they may
    /// still mask, and its update records while they are the current binding of their name.
    func carryMetadataRecords(of id: UInt32, _ seg: SegmentState, segments: inout [Segment]) throws {
        let older = state.withLock { st in st.segments.keys.contains { $0 < id } }
        guard let all = entries(of: seg) else { return }
        for e in all where e.type != .block {
            let carry = e.type == .tombstone ? older : state.withLock { st in st.extras[e.key]?.updateSequence == e.sequence && st.index[e.key] != nil }
            guard carry else { continue }
            let record = IndexEntry(segment: id, summary: e, attributes: AttributeTable.legacy)
            if let written = try copyRecord(record, key: e.key, summaryKey: e.key, from: seg.segment, metadataRecord: e),
               !segments.contains(where: { $0 === written }) {
                segments.append(written)
            }
        }
    }

    /// Copies one record to the active segment after verifying it. A block whose name or attributes
    /// come from update records is written anew under its current name and attributes (a fresh
    /// sequence; the update records are then no longer needed); any other record is copied verbatim.
    /// Returns the segment written into, or nil when the record is damaged (dropped and counted).
    func copyRecord(_ entry: IndexEntry, key: BlockKey, summaryKey: BlockKey, from segment: Segment,
                    metadataRecord: SummaryEntry? = nil) throws -> Segment? {
        let size = entry.recordSize
        let buffer = AlignedBuffer(capacity: size)
        let n = try segment.file.read(into: buffer.mutableBytes(count: size), at: entry.offset)
        let area = entry.headerPages * RecordFormat.alignment
        guard n == size, case .success(var header) = RecordHeader.decode(buffer.bytes(count: area)),
              BlockKey(namespace: header.namespace, key: header.key) == summaryKey,
              metadataRecord != nil || header.sequence == entry.sequence,
              header.type != .block || Checksum.xxh3(buffer.bytes(area, count: header.storedLength)) == header.payloadChecksum
        else {
            state.withLock { $0.stats.corruptReads += 1 }
            return nil
        }
        let rewrite = metadataRecord == nil && entry.isUpdated
        var parts = [buffer.bytes(count: size)]
        var newArea: AlignedBuffer? = nil
        var recordSize = size
        if rewrite {
            let (current, ownership, modified, accessed) = state.withLock { st in
                (st.extras[key]?.renamedKey ?? header.key,
                 st.attributes.ownership(entry.attributes, namespace: st.namespaces.byID[entry.namespaceID]),
                 st.extras[key]?.modifiedNanoseconds ?? 0, st.extras[key]?.accessedNanoseconds ?? 0)
            }
            header.key = current
            header.metadata.ownership = ownership
            header.metadata.modifiedNanoseconds = modified > 0 ? modified : header.metadata.modifiedNanoseconds
            header.metadata.accessedNanoseconds = accessed > 0 ? accessed : header.metadata.accessedNanoseconds
            let headerArea = header.headerAreaSize
            newArea = AlignedBuffer(capacity: headerArea)
            recordSize = headerArea + RecordFormat.align(header.storedLength)
            parts = [newArea!.bytes(count: headerArea), buffer.bytes(area, count: RecordFormat.align(header.storedLength))]
        }
        var doomed: [SegmentState] = []
        defer { deleteEvicted(doomed) }
        let r: Reservation
        do {
            guard let placed = try state.withLock({ st in try reserveLocked(&st, recordSize: recordSize, key: nil, force: false, doomed: &doomed) }) else { return nil }
            r = placed
        } catch is PinnedBlocksInTheWay {
            throw StoreError.noSpace("no room to copy a record forward")
        }
        if rewrite, let newArea {
            header.sequence = r.sequence
            header.encode(into: newArea.mutableBytes(count: header.headerAreaSize))
        }
        do {
            try r.segment.file.write(parts, at: r.offset)
            r.segment.commit.writeCompleted(bytes: recordSize)
        } catch {
            abandon(r, key: nil, size: recordSize)
            throw StoreError.wrap(error)
        }
        let published = state.withLock { st -> Bool in
            let id = r.segment.id   // changed in place (see `finish`)
            guard st.segments[id] != nil else { return true }
            st.segments[id]!.inflight -= 1
            if let metadataRecord {
                var summary = metadataRecord
                summary.page = r.page
                st.segments[id]!.summary.append(summary)
                st.segments[id]!.metadataRecords += 1
            } else if let cur = st.index[key], cur.segment == entry.segment, cur.page == entry.page, cur.sequence == entry.sequence {
                var moved = cur
                moved.segment = r.segment.id
                moved.page = r.page
                moved.setFlag(EntryFlags.accessed, false)
                var summary = Self.summaryEntry(for: header, namespaceID: cur.namespaceID, page: r.page, directory: cur.directory)
                summary.ownership = st.attributes.ownership(cur.attributes, namespace: st.namespaces.byID[cur.namespaceID])
                if rewrite {
                    moved.sequence = r.sequence
                    moved.headerPageCount = UInt8(header.headerAreaSize / RecordFormat.alignment)
                    moved.setFlag(EntryFlags.updated, false)
                    moved.setFlag(EntryFlags.timed, header.metadata.modifiedNanoseconds != nil || header.metadata.accessedNanoseconds != nil)
                    if var x = st.extras[key] {
                        x.updateSequence = 0
                        x.renamedKey = nil
                        x.changedNanoseconds = 0    // the copy's header holds the times; ctime becomes its commit time
                        st.extras[key] = x.modifiedNanoseconds > 0 || x.accessedNanoseconds > 0 ? x : nil
                    }
                }
                st.index[key] = moved
                st.segments[id]!.summary.append(summary)
                st.segments[id]!.liveBytes += UInt64(recordSize)
                st.segments[id]!.countLive(cur.namespaceID, 1)
                st.segments[entry.segment]?.liveBytes -= UInt64(size)
                st.segments[entry.segment]?.countLive(cur.namespaceID, -1)
            } else {
                // The block changed or went while it was copied: the copy is dead bytes, and no summary
                // names it. A rewritten copy has a fresh sequence that would outrank the tombstone of
                // an unlink, so its bytes are zeroed below (a hole, which recovery skips).
                return !rewrite
            }
            return true
        }
        if !published { try? r.segment.file.zeroRange(at: r.offset, length: UInt64(recordSize)) }
        idle.withLock { idle.broadcast() }
        return r.segment
    }
}
