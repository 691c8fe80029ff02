import Platform
import WarehouseCore

/// The index written whole at a clean stop and read back whole at the next start, so a restart costs a
/// sequential read instead of rebuilding the index block by block from the segment summaries (about a
/// microsecond a block: minutes at 100 million blocks). docs/format.md "Index snapshot" has the layout.
///
/// A snapshot is only ever used once, and only for the store exactly as it was written:
/// - it is written after `close` sealed every segment, wrote every summary and checkpointed the
///   directory journal, and it records a fingerprint of those files (each segment's id and length, the
///   namespace table's and the journal's bytes);
/// - the next start renames it out of the way (`retiredName`, and syncs the directory) before the store
///   changes anything, so a crash after that start recovers from the log, never from an index that no
///   longer describes it;
/// - a snapshot whose checksum, layout, fingerprint or links do not hold is ignored: the log is read.
/// A crash (no clean stop) therefore leaves no snapshot, and recovery is what it always was.
enum IndexSnapshot {
    static let fileName = "index.snapshot"
    static let temporaryName = "index.snapshot.tmp"
    /// A snapshot that was read: renamed at start (a rename, where removing a large file takes the
    /// filesystem a while) and removed by the store's maintenance thread.
    static let retiredName = "index.snapshot.old"
    static let magic: [UInt8] = Array("TWIDXS01".utf8)
    static let version: UInt32 = 2  // 2: each directory's blocks (the start no longer gathers them)
    static let headerSize = 96
    /// Reads and writes go in pieces of this size (one `pwritev` or `pread` moves at most 2 GiB).
    static let ioChunk = 64 << 20

    /// What the snapshot restores beyond the index itself.
    struct Restored {
        var index: BlockIndex
        var extras: [BlockKey: BlockExtras]
        var attributeClasses: [BlockOwnership]
        var nextSequence: UInt64
        var segments: [UInt32: SegmentTally]
        var usage: [UInt16: NamespaceUsage]
        /// Each directory's blocks by slot, as its list held them.
        var members: [DirectoryMembers]
    }

    struct DirectoryMembers {
        var namespace: UInt16
        var directory: UInt32
        var slots: [UInt32]
    }

    /// A segment's figures that a restart from the log would sum from its records.
    struct SegmentTally: Equatable {
        var liveBytes: UInt64
        var metadataRecords: Int
        var liveBlocks: [UInt16: Int]
    }

    /// XXH3-64 over the namespace table, the directory journal (both read from `device`) and every
    /// segment's id and length: what the snapshot's index describes. Any write to the store changes one
    /// of them. The stop that writes a snapshot and the start that reads it both call this.
    static func fingerprint(device: any StorageDevice, segments: [(id: UInt32, length: UInt64)]) throws -> UInt64 {
        var w = ByteWriter()
        for file in [try device.readWhole(NamespaceTable.fileName, limit: NamespaceTable.maxFileSize),
                     try device.readWhole(DirectoryJournalFormat.fileName, limit: DirectoryJournalFormat.maxFileSize)] {
            w.put(UInt64(file.map { $0.count + 1 } ?? 0))  // 0: no file
            w.put(file.map { $0.withUnsafeBytes { Checksum.xxh3($0) } } ?? 0)
        }
        for s in segments.sorted(by: { $0.id < $1.id }) {
            w.put(s.id)
            w.put(s.length)
        }
        return w.bytes.withUnsafeBytes { Checksum.xxh3($0) }
    }

    // MARK: Writing

    /// Writes the snapshot of `st` (a closed store's state) durably under `fileName`.
    static func write(_ st: StoreState, fingerprint: UInt64, device: any StorageDevice) throws {
        try? device.remove(temporaryName)
        let metadata = encodeMetadata(st)
        let members = encodeMembers(st.directories)
        let shape = st.index.shape
        var header = [UInt8](repeating: 0, count: headerSize)
        header.withUnsafeMutableBytes { h in
            h.copyBytes(from: magic)
            LittleEndian.store(version, at: 8, in: h)
            LittleEndian.store(BlockIndex.layoutTag, at: 16, in: h)
            LittleEndian.store(fingerprint, at: 24, in: h)
            LittleEndian.store(st.nextSequence, at: 32, in: h)
            LittleEndian.store(UInt64(shape.slots), at: 40, in: h)
            LittleEndian.store(UInt64(shape.buckets), at: 48, in: h)
            LittleEndian.store(UInt64(shape.count), at: 56, in: h)
            LittleEndian.store(shape.freeList, at: 64, in: h)
            LittleEndian.store(UInt64(metadata.count), at: 72, in: h)
            LittleEndian.store(UInt64(members.count), at: 80, in: h)
        }
        let file = try device.open(temporaryName, create: true)
        try file.truncate(to: 0)
        let checksum = StreamingChecksum()
        var offset: UInt64 = 0
        func put(_ bytes: UnsafeRawBufferPointer) throws {
            var start = 0
            while start < bytes.count {
                let piece = UnsafeRawBufferPointer(rebasing: bytes[start..<min(bytes.count, start + ioChunk)])
                checksum.update(piece)
                try file.write([piece], at: offset)
                offset += UInt64(piece.count)
                start += piece.count
            }
        }
        try header.withUnsafeBytes { try put($0) }
        try st.index.withStorage { slots, next, buckets in
            try put(slots)
            try put(next)
            try put(buckets)
        }
        try members.withUnsafeBytes { try put($0) }
        try metadata.withUnsafeBytes { try put($0) }
        let digest = checksum.digest.littleEndian
        try withUnsafeBytes(of: digest) { try file.write([$0], at: offset) }
        try file.synchronize()
        try device.rename(temporaryName, to: fileName)
        try device.synchronizeDirectory()
    }

    /// Each directory's blocks: the number of directories, per directory its namespace, id and count,
    /// then all the slots in that order (so the start lists blocks without a pass that sorts them out).
    static func encodeMembers(_ tree: DirectoryTree) -> [UInt8] {
        var w = ByteWriter()
        var slots: [UInt32] = []
        var groups = 0
        for (ns, t) in tree.namespaces.sorted(by: { $0.key < $1.key }) {
            for (id, node) in t.nodes where !node.blocks.isEmpty {
                let m = node.blocks.members
                w.put(ns)
                w.put(id)
                w.put(UInt32(m.count))
                slots.append(contentsOf: m)
                groups += 1
            }
        }
        var out = ByteWriter()
        out.put(UInt32(groups))
        out.bytes.append(contentsOf: w.bytes)
        out.bytes.reserveCapacity(out.bytes.count + slots.count * 4)
        for s in slots { out.put(s) }
        return out.bytes
    }

    /// The members section decoded; nil when it does not hold together.
    static func decodeMembers(_ bytes: [UInt8]) -> [DirectoryMembers]? {
        var r = ByteReader(bytes)
        guard let groups = r.u32(), Int(groups) <= bytes.count / 10 else { return nil }
        var heads: [(UInt16, UInt32, Int)] = []
        var total = 0
        for _ in 0..<groups {
            guard let ns = r.u16(), let id = r.u32(), let n = r.u32() else { return nil }
            heads.append((ns, id, Int(n)))
            total += Int(n)
        }
        guard bytes.count - r.at == total * 4 else { return nil }
        var out: [DirectoryMembers] = []
        out.reserveCapacity(heads.count)
        bytes.withUnsafeBytes { raw in
            var at = r.at
            for (ns, id, n) in heads {
                var slots = [UInt32](repeating: 0, count: n)
                slots.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[at..<at + n * 4])) }
                for i in slots.indices { slots[i] = UInt32(littleEndian: slots[i]) }
                out.append(DirectoryMembers(namespace: ns, directory: id, slots: slots))
                at += n * 4
            }
        }
        return out
    }

    /// Extras, attribute classes, segment tallies and namespace usage, little-endian.
    static func encodeMetadata(_ st: StoreState) -> [UInt8] {
        var w = ByteWriter()
        w.put(UInt64(st.extras.count))
        for (key, x) in st.extras {
            w.put(key.low)
            w.put(key.high)
            w.put(x.updateSequence)
            w.put(x.modifiedNanoseconds)
            w.put(x.accessedNanoseconds)
            w.put(x.changedNanoseconds)
            if let name = x.renamedKey {
                let utf8 = Array(name.utf8)
                w.put(UInt32(utf8.count))
                w.bytes.append(contentsOf: utf8)
            } else {
                w.put(UInt32.max)
            }
        }
        w.put(UInt32(st.attributes.classes.count))
        for o in st.attributes.classes {
            w.put(o.uid)
            w.put(o.gid)
            w.put(o.mode)
        }
        w.put(UInt32(st.segments.count))
        for (id, s) in st.segments.sorted(by: { $0.key < $1.key }) {
            w.put(id)
            w.put(s.liveBytes)
            w.put(UInt64(s.metadataRecords))
            let live = s.liveBlocksByNamespace.filter { $0.value != 0 }.sorted { $0.key < $1.key }
            w.put(UInt32(live.count))
            for (ns, blocks) in live {
                w.put(ns)
                w.put(UInt64(blocks))
            }
        }
        w.put(UInt32(st.usage.count))
        for (ns, u) in st.usage.sorted(by: { $0.key < $1.key }) {
            w.put(ns)
            w.put(UInt64(u.blocks))
            w.put(u.logicalBytes)
            w.put(u.storedBytes)
        }
        return w.bytes
    }

    // MARK: Reading

    /// The snapshot in `fileName`, or nil when there is none or it cannot be used (`why` says which).
    static func read(device: any StorageDevice, expecting fingerprint: UInt64, why: inout String) -> Restored? {
        do {
            let file = try device.open(fileName, create: false)
            let length = try file.length()
            guard length >= UInt64(headerSize + 8) else { why = "too short"; return nil }
            var header = [UInt8](repeating: 0, count: headerSize)
            let n = try header.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }
            guard n == headerSize else { why = "short read"; return nil }
            return try header.withUnsafeBytes { h -> Restored? in
                guard h.prefix(8).elementsEqual(magic) else { why = "not a snapshot"; return nil }
                guard LittleEndian.load(UInt32.self, at: 8, in: h) == version else { why = "another version"; return nil }
                guard LittleEndian.load(UInt64.self, at: 16, in: h) == BlockIndex.layoutTag else { why = "another build's index layout"; return nil }
                guard LittleEndian.load(UInt64.self, at: 24, in: h) == fingerprint else { why = "the store changed after it was written"; return nil }
                let nextSequence = LittleEndian.load(UInt64.self, at: 32, in: h)
                let slots = LittleEndian.load(UInt64.self, at: 40, in: h)
                let buckets = LittleEndian.load(UInt64.self, at: 48, in: h)
                let count = LittleEndian.load(UInt64.self, at: 56, in: h)
                let freeList = LittleEndian.load(UInt32.self, at: 64, in: h)
                let metadataLength = LittleEndian.load(UInt64.self, at: 72, in: h)
                let membersLength = LittleEndian.load(UInt64.self, at: 80, in: h)
                let slotStride = UInt64(MemoryLayout<BlockIndex.Slot>.stride)
                guard slots < UInt64(UInt32.max), buckets <= 1 << 33, count <= slots, metadataLength <= length,
                      membersLength <= length else { why = "bad sizes"; return nil }
                let body = slots * slotStride + slots * 4 + buckets * 4
                guard UInt64(headerSize) + body + membersLength + metadataLength + 8 == length else { why = "length does not match its sizes"; return nil }
                let checksum = StreamingChecksum()
                checksum.update(h)
                var offset = UInt64(headerSize)
                func fill(_ buffer: UnsafeMutableRawBufferPointer) throws {
                    var done = 0
                    while done < buffer.count {
                        let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<min(buffer.count, done + ioChunk)])
                        let got = try file.read(into: piece, at: offset)
                        guard got > 0 else { throw StoreError.corruption("index snapshot: short read") }
                        checksum.update(UnsafeRawBufferPointer(rebasing: piece[0..<got]))
                        offset += UInt64(got)
                        done += got
                    }
                }
                let shape = BlockIndex.Shape(slots: Int(slots), buckets: Int(buckets), freeList: freeList, count: Int(count))
                guard let index = try BlockIndex(shape: shape, fill: fill) else { why = "bad index shape"; return nil }
                var membersBytes = [UInt8](repeating: 0, count: Int(membersLength))
                try membersBytes.withUnsafeMutableBytes { try fill($0) }
                var metadata = [UInt8](repeating: 0, count: Int(metadataLength))
                try metadata.withUnsafeMutableBytes { try fill($0) }
                var stored: UInt64 = 0
                _ = try withUnsafeMutableBytes(of: &stored) { try file.read(into: $0, at: offset) }
                guard UInt64(littleEndian: stored) == checksum.digest else { why = "checksum mismatch"; return nil }
                guard index.linksStayInside() else { why = "its index does not hold together"; return nil }
                guard var restored = decodeMetadata(metadata, index: index, nextSequence: nextSequence) else { why = "bad metadata"; return nil }
                guard let members = decodeMembers(membersBytes) else { why = "bad directory lists"; return nil }
                restored.members = members
                return restored
            }
        } catch {
            why = "\(error)"
            return nil
        }
    }

    /// The metadata section decoded, beside the index and sequence the header and body gave.
    static func decodeMetadata(_ bytes: [UInt8], index: BlockIndex, nextSequence: UInt64) -> Restored? {
        var r = ByteReader(bytes)
        var restored = Restored(index: index, extras: [:], attributeClasses: [], nextSequence: nextSequence, segments: [:], usage: [:], members: [])
        guard let extras = r.u64(), extras <= UInt64(bytes.count) else { return nil }
        for _ in 0..<extras {
            guard let low = r.u64(), let high = r.u64(), let update = r.u64(), let modified = r.u64(), let accessed = r.u64(),
                  let changed = r.u64(), let nameLength = r.u32() else { return nil }
            var x = BlockExtras(updateSequence: update, modifiedNanoseconds: modified, accessedNanoseconds: accessed, changedNanoseconds: changed)
            if nameLength != UInt32.max {
                guard let name = r.bytes(Int(nameLength)) else { return nil }
                x.renamedKey = String(decoding: name, as: UTF8.self)
            }
            restored.extras[BlockKey(low: low, high: high)] = x
        }
        guard let classes = r.u32() else { return nil }
        for _ in 0..<classes {
            guard let uid = r.u32(), let gid = r.u32(), let mode = r.u32() else { return nil }
            restored.attributeClasses.append(BlockOwnership(uid: uid, gid: gid, mode: mode))
        }
        guard let segments = r.u32() else { return nil }
        for _ in 0..<segments {
            guard let id = r.u32(), let liveBytes = r.u64(), let metadataRecords = r.u64(), let namespaces = r.u32() else { return nil }
            var tally = SegmentTally(liveBytes: liveBytes, metadataRecords: Int(clamping: metadataRecords), liveBlocks: [:])
            for _ in 0..<namespaces {
                guard let ns = r.u16(), let blocks = r.u64() else { return nil }
                tally.liveBlocks[ns] = Int(clamping: blocks)
            }
            restored.segments[id] = tally
        }
        guard let namespaces = r.u32() else { return nil }
        for _ in 0..<namespaces {
            guard let ns = r.u16(), let blocks = r.u64(), let logical = r.u64(), let stored = r.u64() else { return nil }
            var u = NamespaceUsage()
            u.blocks = Int(clamping: blocks)
            u.logicalBytes = logical
            u.storedBytes = stored
            restored.usage[ns] = u
        }
        guard r.atEnd else { return nil }
        return restored
    }
}

/// Little-endian integers appended to a byte array.
private struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
}

/// Little-endian integers read from a byte array; nil past its end.
private struct ByteReader {
    let bytes: [UInt8]
    var at = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var atEnd: Bool { at == bytes.count }

    mutating func bytes(_ n: Int) -> ArraySlice<UInt8>? {
        guard n >= 0, n <= bytes.count - at else { return nil }
        defer { at += n }
        return bytes[at..<at + n]
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
        guard let b = bytes(MemoryLayout<T>.size) else { return nil }
        var v: T = 0
        for (i, byte) in b.enumerated() { v |= T(byte) << (8 * i) }
        return v
    }

    mutating func u16() -> UInt16? { integer(UInt16.self) }
    mutating func u32() -> UInt32? { integer(UInt32.self) }
    mutating func u64() -> UInt64? { integer(UInt64.self) }
}
