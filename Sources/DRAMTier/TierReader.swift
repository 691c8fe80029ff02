import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// A reader of a mount's DRAM tiers for Swift clients: gets the descriptors of the tiers it may read
/// from the daemon's broker, maps them read-only and copies resident blocks out with no system call,
/// following the sequence-lock protocol of docs/dram-tier.md.
///
/// Nothing read from shared memory is trusted: the table's place and size and the data area are taken
/// from the superblock once, checked against the file's size at map time, and every entry's offset and
/// length is checked against that snapshot with overflow-safe arithmetic before a byte is copied.
///
/// Thread-safety: every method may be called from any thread. Each generation of mappings is an
/// immutable object; `refresh` swaps in a new one, and a lookup in flight keeps the old one mapped
/// until it is done.
public final class TierReader: Sendable {
    public let mount: String

    /// One tier file as mapped, with the layout read and checked once.
    final class Mapped: Sendable {
        let name: String
        let data: ReadOnlyMapping
        let hits: SharedHits?
        let generation: UInt64
        let tableOffset: Int
        let capacity: Int
        let probes: Int
        let dataStart: Int
        let dataEnd: Int

        init?(name: String, data: ReadOnlyMapping, hits: SharedHits?) {
            let sb = UnsafeRawBufferPointer(start: data.pointer, count: min(data.size, TierFormat.superblockSize))
            guard sb.count == TierFormat.superblockSize,
                  Array(sb[TierFormat.magicOffset..<(TierFormat.magicOffset + 8)]) == TierFormat.magic,
                  LittleEndian.load(UInt32.self, at: TierFormat.versionOffset, in: sb) == TierFormat.version,
                  LittleEndian.load(UInt32.self, at: TierFormat.entrySizeOffset, in: sb) == UInt32(TierFormat.entrySize) else { return nil }
            let table = LittleEndian.load(UInt64.self, at: TierFormat.tableOffsetOffset, in: sb)
            let capacity = LittleEndian.load(UInt64.self, at: TierFormat.tableCapacityOffset, in: sb)
            let probes = UInt64(LittleEndian.load(UInt32.self, at: TierFormat.maxProbeOffset, in: sb))
            let start = LittleEndian.load(UInt64.self, at: TierFormat.dataOffsetOffset, in: sb)
            let size = LittleEndian.load(UInt64.self, at: TierFormat.dataSizeOffset, in: sb)
            let fileSize = UInt64(data.size)
            // Every bound is checked in 64 bits before anything becomes an Int.
            guard capacity > 0, capacity & (capacity - 1) == 0, capacity <= 1 << 32, table >= UInt64(TierFormat.superblockSize),
                  table % 8 == 0, table <= fileSize, capacity * UInt64(TierFormat.entrySize) <= fileSize - table,
                  start <= fileSize, size <= fileSize - start else { return nil }
            self.name = name
            self.data = data
            self.hits = hits.flatMap { $0.count >= Int(capacity) ? $0 : nil }
            generation = SharedAtomics.loadAcquire(data.pointer.advanced(by: TierFormat.generationOffset).assumingMemoryBound(to: UInt64.self))
            tableOffset = Int(table)
            self.capacity = Int(capacity)
            self.probes = Int(min(probes, capacity))
            dataStart = Int(start)
            dataEnd = Int(start + size)
        }

        var isCurrent: Bool {
            let g = SharedAtomics.loadAcquire(data.pointer.advanced(by: TierFormat.generationOffset).assumingMemoryBound(to: UInt64.self))
            return g != 0 && g == generation
        }
    }

    /// The hit counters a reader may write (a size-sealed memory file: it cannot shrink under us).
    final class SharedHits: @unchecked Sendable {
        // Safe: the mapping is fixed; increments are relaxed atomics of single words.
        let mapping: UnsafeMutableRawPointer
        let size: Int
        var count: Int { size / 4 }

        init?(descriptor fd: Int32) {
            var st = stat()
            guard fstat(fd, &st) == 0, st.st_size >= 4,
                  let p = mmap(nil, Int(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else { return nil }
            mapping = p
            size = Int(st.st_size)
        }

        deinit { munmap(mapping, size) }

        func increment(_ index: Int) {
            let p = (mapping + index * 4).assumingMemoryBound(to: UInt32.self)
            SharedAtomics.storeRelaxed32(p, (UInt32(littleEndian: SharedAtomics.loadRelaxed32(p)) &+ 1).littleEndian)
        }
    }

    /// The daemon's liveness page: its first word is non-zero while the daemon that handed out the
    /// tiers runs (`TierProtocol`).
    final class Liveness: Sendable {
        let page: ReadOnlyMapping
        let mark: UInt64

        init?(page: ReadOnlyMapping) {
            guard page.size >= 8 else { return nil }
            self.page = page
            mark = SharedAtomics.loadAcquire(page.pointer.assumingMemoryBound(to: UInt64.self))
            if mark == 0 { return nil }
        }

        var isAlive: Bool { SharedAtomics.loadAcquire(page.pointer.assumingMemoryBound(to: UInt64.self)) == mark }
    }

    /// One generation: the tiers this process may read, by namespace.
    final class Generation: Sendable {
        let byNamespace: [String: Mapped]
        let socket: String
        let liveness: Liveness?
        init(byNamespace: [String: Mapped], socket: String, liveness: Liveness?) {
            self.byNamespace = byNamespace
            self.socket = socket
            self.liveness = liveness
        }

        /// Whether the daemon still runs (always true with a broker that sends no liveness page).
        var daemonAlive: Bool { liveness?.isAlive ?? true }
    }

    private let current = Mutex<Generation?>(nil)
    private let remapCount = Mutex(0)

    /// Opens the tiers of the warehouse mounted at `mount` (none when it has no tier or this process
    /// may read no namespace's).
    public init(mount: String) {
        self.mount = mount
        refresh()
    }

    /// How many times the tiers were mapped (again).
    public var remaps: Int { remapCount.withLock { $0 } }

    /// Asks the daemon again for the tiers (after it restarted, or for namespaces made since).
    public func refresh() {
        let generation = Self.connect(mount: mount)
        current.withLock { $0 = generation }
        if generation != nil { remapCount.withLock { $0 += 1 } }
    }

    private static func connect(mount: String) -> Generation? {
        guard let bytes = try? FileSystem.readFile(mount + "/.tw/dram") else { return nil }
        let line = String(decoding: bytes, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
        guard parts.count == 2, parts[0] == TierProtocol.dramFileHeader else { return nil }
        guard let connection = try? UnixConnection(connectingTo: parts[1]) else { return nil }
        connection.setTimeout(seconds: 2)
        var byNamespace: [String: Mapped] = [:]
        var liveness: Liveness? = nil
        while true {
            guard let (message, fds) = try? connection.receive(), !message.isEmpty || !fds.isEmpty else { break }
            defer { for fd in fds { close(fd) } }
            let text = String(decoding: message, as: UTF8.self)
            let lines = text.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
            guard let head = lines.first, let word = head.first else { break }
            if word == TierProtocol.endMessage {
                if fds.count == 1, let page = try? ReadOnlyMapping(descriptor: fds[0], what: "liveness page") {
                    liveness = Liveness(page: page)
                    // A daemon that was already stopping: nothing it handed out is to be used.
                    if liveness == nil { byNamespace = [:] }
                }
                break
            }
            guard word == TierProtocol.tierMessage, head.count == 2, fds.count == 2, lines.count == 2,
                  lines[1].first == TierProtocol.namespacesLine,
                  let data = try? ReadOnlyMapping(descriptor: fds[0], what: head[1]),
                  let mapped = Mapped(name: head[1], data: data, hits: SharedHits(descriptor: fds[1])) else { continue }
            for ns in lines[1].dropFirst() { byNamespace[ns] = mapped }
        }
        return Generation(byNamespace: byNamespace, socket: parts[1], liveness: liveness)
    }

    /// Whether a tier is mapped and its daemon still runs.
    public var isMapped: Bool {
        guard let g = current.withLock({ $0 }), g.daemonAlive else { return false }
        return g.byNamespace.values.contains { $0.isCurrent }
    }

    /// Copies block `name` (a canonical hash, or a path inside the namespace) of `namespace` into
    /// `buffer` if resident: returns its length, or nil (not resident, changed while copying, not
    /// readable by this process, or buffer too small): then read the block file.
    public func copy(namespace: String, name: String, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard let generation = current.withLock({ $0 }), let m = generation.byNamespace[namespace], m.isCurrent,
              generation.daemonAlive, let key = BlockPath.key(clientName: name) else { return nil }
        let blockKey = BlockKey(namespace: namespace, key: key)
        let base = m.data.pointer
        for i in 0..<m.probes {
            let index = (Int(truncatingIfNeeded: blockKey.low) &+ i) & (m.capacity - 1)
            let e = base + m.tableOffset + index * TierFormat.entrySize
            let seqPointer = e.assumingMemoryBound(to: UInt64.self)
            let seq = SharedAtomics.loadAcquire(seqPointer)
            if seq & 1 == 1 { return nil }
            let state = UInt32(littleEndian: (e + TierFormat.stateOffset).loadUnaligned(as: UInt32.self))
            if state == TierFormat.stateEmpty { return nil }
            guard state == TierFormat.stateValid,
                  UInt64(littleEndian: (e + TierFormat.keyLowOffset).loadUnaligned(as: UInt64.self)) == blockKey.low,
                  UInt64(littleEndian: (e + TierFormat.keyHighOffset).loadUnaligned(as: UInt64.self)) == blockKey.high else { continue }
            let offset = UInt64(littleEndian: (e + TierFormat.dataOffsetField).loadUnaligned(as: UInt64.self))
            let length = UInt64(littleEndian: (e + TierFormat.lengthOffset).loadUnaligned(as: UInt64.self))
            // Checked against the snapshot of the layout, in 64 bits: no value from shared memory can
            // point a copy outside the mapping or overflow on the way.
            guard offset >= UInt64(m.dataStart), offset <= UInt64(m.dataEnd), length <= UInt64(m.dataEnd) - offset,
                  length <= UInt64(buffer.count) else { return nil }
            if length > 0 { memcpy(buffer.baseAddress!, base + Int(offset), Int(length)) }
            SharedAtomics.acquireFence()
            guard SharedAtomics.loadRelaxed(seqPointer) == seq else { return nil }
            m.hits?.increment(index)
            return Int(length)
        }
        return nil
    }
}
