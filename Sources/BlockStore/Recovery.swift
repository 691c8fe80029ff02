import Platform
import WarehouseCore

/// Opening a store: the namespace table, the directory journal, then the segments: summaries of
/// sealed segments are loaded, segments without one are scanned (torn tails truncated, damaged records
/// skipped and counted) and get one. The index is the newest record of every name (docs/format.md
/// "Recovery"): a block binds its name, a tombstone deletes it, an update binds it to an earlier block
/// record (a rename or an attribute change).
struct StoreRecovery {
    let device: any StorageDevice
    let configuration: StoreConfiguration

    struct Recovered {
        var state: StoreState
        var journal: DirectoryJournal
        var report: RecoveryReport
    }

    /// One record found in a segment, with where it lies.
    struct Found {
        var segment: UInt32
        var entry: SummaryEntry
    }

    func recover() throws -> Recovered {
        let names = try device.fileNames()
        var ignored = ""
        if names.contains(IndexSnapshot.retiredName) { try device.remove(IndexSnapshot.retiredName) }
        if names.contains(IndexSnapshot.fileName) || names.contains(IndexSnapshot.temporaryName) {
            if names.contains(IndexSnapshot.fileName), let recovered = try restoreFromSnapshot(why: &ignored) { return recovered }
            // Not used, or used up: gone before the store writes anything, so no later start mistakes it
            // for the state of a store that has changed since.
            try? device.remove(IndexSnapshot.temporaryName)
            try device.remove(IndexSnapshot.fileName)
            try device.synchronizeDirectory()
        }
        var recovered = try recoverFromLog()
        if !ignored.isEmpty { recovered.report.indexSnapshot = "ignored: " + ignored }
        return recovered
    }

    /// The namespace table and the directory tree from the journal, as every start reads them.
    private func readTables(into st: inout StoreState) throws -> DirectoryJournal {
        if let bytes = try device.readWhole(NamespaceTable.fileName, limit: NamespaceTable.maxFileSize) {
            st.namespaces = try NamespaceTable(decoding: bytes)
        }
        for ns in st.namespaces.byID.values { st.directories.addNamespace(ns) }
        let (journal, changes) = try DirectoryJournal.open(device: device)
        for change in changes { Self.apply(change, to: &st.directories) }
        return journal
    }

    /// Data segment ids, oldest first, and the ids that have a summary.
    private func segmentFiles() throws -> (data: [UInt32], summaries: Set<UInt32>) {
        var dataIDs: [UInt32] = []
        var summaryIDs = Set<UInt32>()
        for name in try device.fileNames() {
            guard let parsed = SegmentFormat.parseFileName(name) else { continue }
            if parsed.isSummary { summaryIDs.insert(parsed.id) } else { dataIDs.append(parsed.id) }
        }
        return (dataIDs.sorted(), summaryIDs)
    }

    /// The state from the index snapshot of the last clean stop (`IndexSnapshot`), or nil (with the
    /// reason) when it does not describe the store as it is. Once read, the snapshot is renamed out of
    /// the way (durably) before anything else happens, whichever way this ends.
    private func restoreFromSnapshot(why: inout String) throws -> Recovered? {
        let (dataIDs, summaryIDs) = try segmentFiles()
        guard dataIDs.allSatisfy(summaryIDs.contains) else { why = "a segment has no summary"; return nil }
        var files: [(id: UInt32, file: any DeviceFile, length: UInt64)] = []
        for id in dataIDs {
            let file = try device.open(SegmentFormat.dataFileName(id), create: false)
            files.append((id, file, try file.length()))
        }
        let fingerprint = try IndexSnapshot.fingerprint(device: device, segments: files.map { ($0.id, $0.length) })
        guard let restored = IndexSnapshot.read(device: device, expecting: fingerprint, why: &why) else { return nil }
        // Renamed, not removed: removing a large file took ext4 a tenth of a second at 10M blocks, on
        // the way to the mount. The maintenance thread removes it.
        try device.rename(IndexSnapshot.fileName, to: IndexSnapshot.retiredName)
        try device.synchronizeDirectory()
        guard Set(restored.segments.keys) == Set(dataIDs) else { why = "its segments are not the store's"; return nil }
        guard let attributes = AttributeTable(classes: restored.attributeClasses) else { why = "bad attribute table"; return nil }

        var st = StoreState()
        var report = RecoveryReport()
        let journal = try readTables(into: &st)
        st.attributes = attributes
        st.extras = restored.extras
        st.nextSequence = restored.nextSequence
        st.usage = restored.usage
        // Segment ids are dense from the oldest one on: lengths by position, one array read per block.
        let first = dataIDs.first ?? 0
        let span = Int((dataIDs.last ?? 0) - first) + 1
        guard span <= 1 << 24 else { why = "segment ids too sparse"; return nil }
        var lengths = [UInt64](repeating: 0, count: dataIDs.isEmpty ? 0 : span)
        for f in files {
            lengths[Int(f.id - first)] = f.length
            var s = SegmentState(segment: Segment(id: f.id, file: f.file), length: f.length, sealed: true, summaryWritten: true)
            let tally = restored.segments[f.id]!
            s.liveBytes = tally.liveBytes
            s.metadataRecords = tally.metadataRecords
            s.liveBlocksByNamespace = tally.liveBlocks
            st.segments[f.id] = s
            st.usedBytes += f.length
        }
        // Every directory's list names distinct slots, as many as there are live blocks, and every live
        // block lies inside one of the segments and is listed: the lists hold exactly the live blocks.
        // (A bitmap of the slots: the lists come from the snapshot, so the start does not sort 10M blocks
        // into directories, 0.17 s at 10M blocks.)
        let slabSlots = restored.index.shape.slots
        var listed = [UInt64](repeating: 0, count: (slabSlots + 63) / 64)
        var listedCount = 0
        for group in restored.members {
            for slot in group.slots {
                let i = Int(slot)
                guard i < slabSlots, listed[i >> 6] & (1 << (i & 63)) == 0 else { why = "its directory lists do not hold together"; return nil }
                listed[i >> 6] |= 1 << (i & 63)
            }
            listedCount += group.slots.count
        }
        var holds = true
        var live = 0
        restored.index.forEachLive { slot, e in
            let i = Int(e.segment) - Int(first)
            guard i >= 0, i < lengths.count, e.offset + UInt64(e.recordSize) <= lengths[i],
                  listed[Int(slot) >> 6] & (1 << (Int(slot) & 63)) != 0 else {
                holds = false
                return
            }
            live += 1
        }
        guard holds else { why = "a block lies outside its segments or its directory"; return nil }
        guard live == restored.index.count, listedCount == live else { why = "its index does not hold together"; return nil }
        listed = []
        for group in restored.members {
            guard st.directories.addBlocksIfDirectory(group.slots, namespace: group.namespace, directory: group.directory) else {
                why = "a block lies outside the directories"
                return nil
            }
        }
        st.index = restored.index
        report.blocks = st.index.count
        report.directories = st.directories.namespaces.values.reduce(0) { $0 + $1.nodes.count - 1 }
        report.indexSnapshot = "loaded"
        try BlockStore.startActiveSegment(&st, id: (dataIDs.last ?? 0) + 1, device: device)
        try journal.synchronize()
        return Recovered(state: st, journal: journal, report: report)
    }

    /// The state from the log: summaries of sealed segments, scans of the others.
    private func recoverFromLog() throws -> Recovered {
        var st = StoreState()
        var report = RecoveryReport()
        let journal = try readTables(into: &st)

        // Segments, oldest first.
        let (dataIDs, summaryIDs) = try segmentFiles()
        for id in summaryIDs where !dataIDs.contains(id) { try? device.remove(SegmentFormat.summaryFileName(id)) }

        // Every record found, per segment (no copy into one array of all of them: 10M records are 1 GB).
        var all = FoundRecords()
        var knownNamespace = [Bool](repeating: false, count: Int(UInt16.max) + 1)
        for id in st.namespaces.byID.keys { knownNamespace[Int(id)] = true }
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
                st.segments[id] = SegmentState(segment: segment, length: length, sealed: true, summaryWritten: true)
                all.add(segment: id, entries.allSatisfy { knownNamespace[Int($0.namespaceID)] } ? entries
                        : entries.filter { knownNamespace[Int($0.namespaceID)] })
                continue
            }
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
                try file.write([page.bytes(count: SegmentFormat.headerSize)], at: 0)
            }
            var summary: [SummaryEntry] = []
            for r in scan.records {
                guard let ns = st.namespaces[r.header.namespace] else { continue }
                // The directory comes from the key's path; directories the journal lost (a crash before
                // it was synced) are made again.
                let directory = try Self.directory(of: r.header.key, namespace: ns, state: &st, journal: journal, report: &report)
                var e = BlockStore.summaryEntry(for: r.header, namespaceID: ns.id, page: UInt32(r.offset / UInt64(RecordFormat.alignment)),
                                                directory: directory)
                e.ownership = r.header.metadata.ownership
                summary.append(e)
            }
            // The scanned segment is sealed now: make it and its summary durable so the next start skips it.
            try file.synchronize()
            try device.replaceAtomically(SegmentFormat.summaryFileName(id), bytes: SummaryEntry.encodeFile(segmentID: id, entries: summary))
            st.segments[id] = SegmentState(segment: segment, length: length, sealed: true, summaryWritten: true)
            all.add(segment: id, summary)
        }

        // The newest record of every name decides (a relocated copy keeps its sequence: ties go to the
        // later segment, which holds the copy).
        // Positions in `all`, not copies of the entries: the table is a fifth of the size.
        var newest = NewestRecords(capacity: all.count)
        for s in all.segments.indices {
            let segment = all.segments[s]
            var metadataRecords = 0
            all.entries[s].withUnsafeBufferPointer { entries in
                for (i, e) in entries.enumerated() {
                    st.nextSequence = max(st.nextSequence, e.sequence + 1)
                    if e.type != .block { metadataRecords += 1 }
                    newest.offer(e.key, position: FoundRecords.position(s, i)) { all[$0].sequence > e.sequence }
                }
            }
            if metadataRecords > 0 { st.segments[segment]?.metadataRecords += metadataRecords }
        }
        // Block records that updates bind other names to.
        var wanted = Set<UInt64>()
        for p in newest.values where all[p].type == .update { wanted.insert(all[p].dataSequence) }
        var dataRecords: [UInt64: Found] = [:]
        if !wanted.isEmpty {
            for s in all.segments.indices {
                for e in all.entries[s] where e.type == .block && wanted.contains(e.sequence) {
                    dataRecords[e.sequence] = Found(segment: all.segments[s], entry: e)
                }
            }
        }

        var needsHeader: [(BlockKey, Found, Found?)] = []
        let now = wallClockNanoseconds()
        st.index.reserveCapacity(newest.count)
        // Caches for the per-block checks below (each a `Dictionary` lookup, SipHash, otherwise).
        var segmentExists = PlaceTable<Bool>()
        var directoryExists = PlaceTable<Bool>()
        var lastOwnership: BlockOwnership?? = .none
        var lastClass = AttributeTable.legacy
        for (key, p) in newest.entries {
            let f = all.found(p)
            var e = f.entry
            var located = f
            switch e.type {
            case .tombstone:
                continue
            case .block:
                break
            case .update:
                guard let data = dataRecords[e.dataSequence] else { continue }
                located = data
                let binding = e
                e = data.entry
                e.directory = binding.directory
                e.ownership = binding.ownership
                e.flags = (e.flags & ~EntryFlags.canonical) | (binding.flags & EntryFlags.canonical) | EntryFlags.updated
                st.extras[key] = BlockExtras(updateSequence: binding.sequence, modifiedNanoseconds: binding.modifiedNanoseconds)
            }
            guard segmentExists.value(at: UInt64(located.segment), orMake: { st.segments[located.segment] != nil }) else { continue }
            if lastOwnership != .some(e.ownership) {
                lastOwnership = .some(e.ownership)
                lastClass = st.attributes.intern(e.ownership) ?? AttributeTable.legacy
            }
            let entry = IndexEntry(segment: located.segment, summary: e, attributes: lastClass)
            let place = UInt64(e.namespaceID) << 32 | UInt64(e.directory)
            if f.entry.type == .update || e.flags & EntryFlags.timed != 0
                || !directoryExists.value(at: place, orMake: { st.directories.isDirectory(e.namespaceID, e.directory) }) {
                needsHeader.append((key, located, f.entry.type == .update ? f : nil))
            }
            st.index.insert(key, entry)  // each name once: `newest` holds one record per name
        }

        all = FoundRecords()
        newest = NewestRecords(capacity: 0)

        // The few blocks whose record header must be read: renamed or updated ones (their current name),
        // explicit modification times, and blocks whose directory the journal lost.
        for (key, data, update) in needsHeader {
            guard var entry = st.index[key], let ns = st.namespaces.byID[entry.namespaceID] else { continue }
            if let update, let seg = st.segments[update.segment],
               let h = try? Self.readHeader(page: update.entry.page, headerPages: Int(update.entry.headerPages), file: seg.segment.file) {
                st.extras[key, default: BlockExtras()].renamedKey = h.key
                // The update record's time is the block's ctime; its metadata the times utimes set.
                st.extras[key, default: BlockExtras()].changedNanoseconds = h.commitTimeNanoseconds
                if let a = h.metadata.accessedNanoseconds { st.extras[key, default: BlockExtras()].accessedNanoseconds = a }
            }
            if entry.flags & EntryFlags.timed != 0, update == nil, let seg = st.segments[data.segment],
               let h = try? Self.readHeader(page: data.entry.page, headerPages: Int(data.entry.headerPages), file: seg.segment.file) {
                if let m = h.metadata.modifiedNanoseconds { st.extras[key, default: BlockExtras()].modifiedNanoseconds = m }
                if let a = h.metadata.accessedNanoseconds { st.extras[key, default: BlockExtras()].accessedNanoseconds = a }
            }
            if !st.directories.isDirectory(entry.namespaceID, entry.directory) {
                var name = st.extras[key]?.renamedKey
                if name == nil, let seg = st.segments[data.segment],
                   let h = try? Self.readHeader(page: data.entry.page, headerPages: Int(data.entry.headerPages), file: seg.segment.file) {
                    name = h.key
                }
                guard let name else { st.index[key] = nil; continue }
                entry.directory = try Self.directory(of: name, namespace: ns, state: &st, journal: journal, report: &report)
                st.index[key] = entry
            }
        }

        // Live bytes and blocks per segment and namespace, each namespace's usage and each directory's
        // blocks, summed in tables on the ids' own bits and stored once each: a `Dictionary` update per
        // block (SipHash) and a tree lookup per block were most of this pass.
        var liveBytes = PlaceTable<UInt64>()
        var liveBlocks = PlaceTable<Int>()      // segment << 16 | namespace
        var usage = PlaceTable<NamespaceUsage>()
        var members = PlaceTable<[UInt32]>()    // namespace << 32 | directory
        st.index.forEachLive { slot, e in
            liveBytes[liveBytes.position(of: UInt64(e.segment), orMake: { 0 })] += UInt64(e.recordSize)
            liveBlocks[liveBlocks.position(of: UInt64(e.segment) << 16 | UInt64(e.namespaceID), orMake: { 0 })] += 1
            usage[usage.position(of: UInt64(e.namespaceID), orMake: { NamespaceUsage() })].add(e)
            members[members.position(of: UInt64(e.namespaceID) << 32 | UInt64(e.directory), orMake: { [] })].append(slot)
        }
        for (segment, bytes) in liveBytes.pairs { st.segments[UInt32(segment)]!.liveBytes += bytes }
        for (place, blocks) in liveBlocks.pairs {
            st.segments[UInt32(place >> 16)]!.countLive(UInt16(truncatingIfNeeded: place), blocks)
        }
        for (ns, u) in usage.pairs { st.usage[UInt16(ns)] = u }  // empty until here
        for (place, slots) in members.pairs {
            // Every block's directory exists (those the journal lost were made above); times are not touched.
            _ = st.directories.addBlocksIfDirectory(slots, namespace: UInt16(truncatingIfNeeded: place >> 32),
                                                    directory: UInt32(truncatingIfNeeded: place))
        }
        for (_, seg) in st.segments { st.usedBytes += seg.length }
        report.blocks = st.index.count
        report.directories = st.directories.namespaces.values.reduce(0) { $0 + $1.nodes.count - 1 }
        _ = now

        try BlockStore.startActiveSegment(&st, id: (dataIDs.last ?? 0) + 1, device: device)
        try journal.synchronize()
        return Recovered(state: st, journal: journal, report: report)
    }

    /// Applies one journal record to the tree.
    static func apply(_ change: DirectoryChange, to tree: inout DirectoryTree) {
        switch change {
        case .create(let ns, let id, let parent, let name, let ownership, let mtime):
            tree.add(ns, id: id, parent: parent, name: name, ownership: ownership, modifiedNanoseconds: mtime)
        case .remove(let ns, let id):
            tree.remove(ns, id: id, now: 0)
        case .attributes(let ns, let id, let ownership, let mtime, let atime):
            tree.setAttributes(ns, id: id, ownership: ownership, modifiedNanoseconds: mtime,
                               accessedNanoseconds: atime == 0 ? nil : atime, now: mtime)
        case .move(let ns, let id, let parent, let name):
            tree.move(ns, id: id, to: parent, name: name, now: 0)
        }
    }

    /// The directory of a key, made (and journaled) when missing.
    private static func directory(of key: String, namespace ns: NamespaceInfo, state st: inout StoreState,
                                  journal: DirectoryJournal, report: inout RecoveryReport) throws -> UInt32 {
        if let d = st.directories.directory(ofKey: key, namespace: ns.id) { return d }
        let (id, made) = try BlockStore.makeDirectories(of: key, namespace: ns, state: &st, journal: journal)
        report.directoriesRestored += made
        return id
    }

    static func readHeader(page: UInt32, headerPages: Int, file: any DeviceFile) throws -> RecordHeader {
        let size = max(1, headerPages) * RecordFormat.alignment
        let buffer = AlignedBuffer(capacity: size)
        let n = try file.read(into: buffer.mutableBytes(count: size), at: UInt64(page) * UInt64(RecordFormat.alignment))
        guard case .success(let header) = RecordHeader.decode(buffer.bytes(count: n)) else {
            throw StoreError.corruption("page \(page): bad header")
        }
        return header
    }
}

/// The newest record of each name while recovery reads the summaries: open addressing on the key's own
/// bits (a `BlockKey` is already an XXH3-128 of the name), positions in recovery's list of records. A
/// `Dictionary` hashed every key again with SipHash: at 1M blocks its inserts were a quarter of a
/// restart.
private struct NewestRecords {
    private var keys: [BlockKey]
    private var positions: [Int]
    private let mask: Int
    private(set) var count = 0

    init(capacity: Int) {
        var n = 16
        while n < capacity * 2 { n *= 2 }
        keys = [BlockKey](repeating: BlockKey(low: 0, high: 0), count: n)
        positions = [Int](repeating: -1, count: n)
        mask = n - 1
    }

    /// Records `position` for `key` unless the position it has is newer (`keepsOld` of that position).
    mutating func offer(_ key: BlockKey, position: Int, keepsOld: (Int) -> Bool) {
        var i = Int(truncatingIfNeeded: key.low) & mask
        while positions[i] >= 0 {
            if keys[i] == key {
                if !keepsOld(positions[i]) { positions[i] = position }
                return
            }
            i = (i + 1) & mask
        }
        keys[i] = key
        positions[i] = position
        count += 1
    }

    /// The positions of the newest records.
    var values: some Sequence<Int> { positions.lazy.filter { $0 >= 0 } }

    /// Every name and the position of its newest record.
    var entries: some Sequence<(BlockKey, Int)> {
        zip(keys, positions).lazy.filter { $0.1 >= 0 }
    }
}

/// The records recovery found, per segment in id order; a record's position is its segment's index and
/// its own, packed in one `Int`.
private struct FoundRecords {
    var segments: [UInt32] = []
    var entries: [[SummaryEntry]] = []
    private(set) var count = 0

    static func position(_ segment: Int, _ entry: Int) -> Int { segment << 32 | entry }

    mutating func add(segment: UInt32, _ records: [SummaryEntry]) {
        segments.append(segment)
        entries.append(records)
        count += records.count
    }

    subscript(position: Int) -> SummaryEntry { entries[position >> 32][position & 0xFFFF_FFFF] }

    func found(_ position: Int) -> StoreRecovery.Found {
        StoreRecovery.Found(segment: segments[position >> 32], entry: self[position])
    }
}

/// Values by a 64-bit place (a segment id, a namespace and directory pair): open addressing on a
/// multiplicative hash of the place. Recovery's per-block passes look up a few such places per block,
/// and a `Dictionary` (SipHash) cost tens of nanoseconds each.
private struct PlaceTable<Value> {
    private var places: [UInt64] = []
    private var values: [Value] = []
    /// Per table position: an index into `places` and `values`, or -1.
    private var table = [Int32](repeating: -1, count: 1024)

    var pairs: Zip2Sequence<[UInt64], [Value]> { zip(places, values) }

    @inline(__always)
    private static func start(_ place: UInt64, _ mask: Int) -> Int { Int(truncatingIfNeeded: (place &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask }

    /// The index of `place`'s value, made by `make` when the place is new.
    mutating func position(of place: UInt64, orMake make: () -> Value) -> Int {
        let mask = table.count - 1
        var i = Self.start(place, mask)
        while table[i] >= 0 {
            let g = Int(table[i])
            if places[g] == place { return g }
            i = (i + 1) & mask
        }
        table[i] = Int32(places.count)
        places.append(place)
        values.append(make())
        if places.count * 2 > table.count { grow() }
        return places.count - 1
    }

    /// `place`'s value, made by `make` the first time.
    mutating func value(at place: UInt64, orMake make: () -> Value) -> Value { values[position(of: place, orMake: make)] }

    subscript(index: Int) -> Value {
        get { values[index] }
        _modify { yield &values[index] }
    }

    private mutating func grow() {
        table = [Int32](repeating: -1, count: table.count * 2)
        let mask = table.count - 1
        for (g, place) in places.enumerated() {
            var i = Self.start(place, mask)
            while table[i] >= 0 { i = (i + 1) & mask }
            table[i] = Int32(g)
        }
    }
}
