import BlockStore
import DRAMTier
import Logging
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// Who is calling, from the FUSE request context.
struct Caller {
    var uid: UInt32
    var gid: UInt32
    var pid: Int32
    var umask: UInt32
}

/// Settings of the mount that the filesystem logic needs.
public struct MountSettings: Sendable {
    /// How long the kernel may cache names and attributes of committed blocks (they are immutable).
    public var entryTimeout: Double = 60
    public var attributeTimeout: Double = 60
    /// Mode of committed block files.
    public var blockMode: UInt32 = 0o444
    public var storeDirectory: String = ""
    public var syncPolicy: String = "batch"
    /// Committed blocks also enter the DRAM tier (as a miss would: S3-FIFO's small ring, so blocks
    /// never read again leave without pushing out hot ones). The next turn of a conversation reads
    /// what the last one wrote.
    public var admitWrites = true

    public init() {}
}

/// The filesystem of DESIGN.md ("Naming", "Block file semantics") over a `BlockStore`: every handler
/// returns a value or an errno; `FuseAdapter` sends exactly one reply per request.
///
/// Thread-safety: handlers run on libfuse's worker threads. `nodes` is the only shared mutable state
/// here; it is never held while calling the store (lock order: nodes, then nothing).
public final class WarehouseFileSystem: Sendable {
    public let store: BlockStore
    /// The shared-memory DRAM tier, when the mount has one.
    public let tier: DRAMTier?
    /// Loads blocks into the tier before they are read (hints, chain links, learned order).
    public let prefetcher: Prefetcher?
    let settings: MountSettings
    let nodes = Locked(NodeTable())
    let staging: StagingPool
    /// Online compaction requested through `.tw/ctl`.
    let compaction: OnlineCompaction
    /// Prometheus figures (`twfs --metrics`).
    public let metrics = WarehouseMetrics()
    let startedSeconds = wallClockNanoseconds() / 1_000_000_000
    /// The tier shared with other nodes through a cluster (`twfs --cluster`), when the mount has one.
    public let remote: RemoteSharing?
    /// Tells the kernel to forget a cached name (set by `FuseSession` once mounted).
    let entryInvalidator = Locked<(@Sendable (UInt64, String) -> Void)?>(nil)

    /// Makes the kernel look a name up again (after the daemon itself removed the block).
    func invalidateEntry(namespace: String, name: String) {
        guard let invalidate = entryInvalidator.withLock({ $0 }), let ns = store.namespace(named: namespace) else { return }
        let bytes = Array(name.utf8)
        if BlockName.isCanonicalHash(bytes), let fanout = BlockName.fanout(of: bytes) {
            invalidate(InodeNumber.fanout(ns.id, fanout), name)
        } else {
            invalidate(InodeNumber.namespace(ns.id), name)
        }
    }

    public init(store: BlockStore, tier: DRAMTier?, settings: MountSettings, prefetch: PrefetchSettings = PrefetchSettings(),
                remote: RemoteSharing? = nil) {
        self.store = store
        self.remote = remote
        self.tier = tier
        var fetch: (@Sendable (String, String) -> Bool)? = nil
        if let remote {
            fetch = { ns, key in
                if case .stored = remote.fetch(namespace: ns, key: key, rememberAbsence: false) { return true }
                return false
            }
        }
        prefetcher = tier.map { Prefetcher(store: store, tier: $0, settings: prefetch, fetchMissing: fetch) }
        compaction = OnlineCompaction(store: store)
        self.settings = settings
        staging = StagingPool(regionSize: store.configuration.maxBlockSize)
        // Blocks the store removes by itself (expiry, `twctl evict`) leave the DRAM tier and the kernel's
        // name cache too (committed names are cached for 60 s).
        store.observeRemovals { [self] ns, name in
            tier?.remove(BlockKey(namespace: ns, key: name))
            invalidateEntry(namespace: ns, name: name)
        }
    }

    typealias Outcome<T> = Result<T, Errno>

    struct Errno: Error {
        let code: Int32
        init(_ code: Int32) { self.code = code }
        init(_ error: any Error) {
            if let e = error as? StoreError { code = e.errnoCode } else if let e = error as? SystemError { code = e.code } else { code = EIO }
        }
    }

    struct Entry {
        var attributes: stat
        var entryTimeout: Double
        var attributeTimeout: Double
    }

    // MARK: Attributes

    func directoryAttributes(ino: UInt64, mode: UInt32, uid: UInt32, gid: UInt32, seconds: UInt64, links: Int = 2) -> stat {
        var st = stat()
        st.st_ino = UInt(ino)
        st.st_mode = S_IFDIR | mode
        st.st_nlink = UInt(links)
        st.st_uid = uid
        st.st_gid = gid
        st.st_size = 4096
        st.st_blksize = 4096
        st.st_mtim.tv_sec = Int(seconds)
        st.st_ctim.tv_sec = Int(seconds)
        st.st_atim.tv_sec = Int(seconds)
        return st
    }

    func fileAttributes(ino: UInt64, size: Int, stored: Int, seconds: UInt64, ns: NamespaceInfo?, mode: UInt32) -> stat {
        var st = stat()
        st.st_ino = UInt(ino)
        st.st_mode = S_IFREG | mode
        st.st_nlink = 1
        st.st_uid = ns?.owner ?? 0
        st.st_gid = ns?.group ?? 0
        st.st_size = size
        st.st_blocks = (stored + 511) / 512
        st.st_blksize = 1 << 20
        st.st_mtim.tv_sec = Int(seconds)
        st.st_ctim.tv_sec = Int(seconds)
        st.st_atim.tv_sec = Int(seconds)
        return st
    }

    func attributes(of ino: UInt64) -> Outcome<stat> {
        switch InodeNumber.kind(ino) {
        case .root:
            return .success(directoryAttributes(ino: ino, mode: 0o755, uid: 0, gid: 0, seconds: startedSeconds))
        case .controlDirectory:
            return .success(directoryAttributes(ino: ino, mode: 0o555, uid: 0, gid: 0, seconds: startedSeconds))
        case .control(let f):
            return .success(fileAttributes(ino: ino, size: 0, stored: 0, seconds: startedSeconds, ns: nil, mode: f.mode))
        case .namespace(let id):
            guard let ns = store.namespace(id: id) else { return .failure(Errno(ENOENT)) }
            return .success(directoryAttributes(ino: ino, mode: ns.mode, uid: ns.owner, gid: ns.group, seconds: ns.createdSeconds, links: 258))
        case .fanout(let id, _):
            guard let ns = store.namespace(id: id) else { return .failure(Errno(ENOENT)) }
            return .success(directoryAttributes(ino: ino, mode: ns.mode, uid: ns.owner, gid: ns.group, seconds: ns.createdSeconds))
        case .file:
            guard let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(Errno(ENOENT)) }
            return fileAttributes(of: node)
        }
    }

    func fileAttributes(of node: FileNode) -> Outcome<stat> {
        let (key, pending, discard) = node.state.withLock { ($0.key, $0.pending, $0.discard) }
        let ns = store.namespace(id: node.namespaceID)
        if discard {
            return .success(fileAttributes(ino: node.ino, size: 0, stored: 0, seconds: wallClockNanoseconds() / 1_000_000_000, ns: ns, mode: 0o644))
        }
        if let pending {
            let length = pending.state.withLock { $0.length }
            return .success(fileAttributes(ino: node.ino, size: length, stored: length, seconds: wallClockNanoseconds() / 1_000_000_000, ns: ns, mode: 0o644))
        }
        let (unlinked, size, stored, seconds) = node.state.withLock { ($0.unlinked, $0.lastSize, $0.lastStored, $0.lastSeconds) }
        guard !unlinked, let a = store.attributes(namespace: node.namespace, key: key) else {
            // Gone (unlinked or evicted) while the kernel still holds the inode: show what it was.
            var st = fileAttributes(ino: node.ino, size: size, stored: stored, seconds: seconds, ns: ns, mode: settings.blockMode)
            st.st_nlink = 0
            return .success(st)
        }
        return .success(fileAttributes(ino: node.ino, size: a.logicalLength, stored: a.storedLength, seconds: UInt64(a.commitSeconds), ns: ns, mode: settings.blockMode))
    }

    // MARK: Names

    /// The namespace a directory inode belongs to, and whether it is a fan-out directory.
    func directoryContext(_ parent: UInt64) -> Outcome<(NamespaceInfo, fanout: UInt8?)> {
        switch InodeNumber.kind(parent) {
        case .namespace(let id):
            guard let ns = store.namespace(id: id) else { return .failure(Errno(ENOENT)) }
            return .success((ns, nil))
        case .fanout(let id, let byte):
            guard let ns = store.namespace(id: id) else { return .failure(Errno(ENOENT)) }
            return .success((ns, byte))
        case .root, .controlDirectory: return .failure(Errno(EPERM))
        case .control, .file: return .failure(Errno(ENOTDIR))
        }
    }

    /// Checks that `name` may name a block in the directory: a canonical hash of the right fan-out in
    /// a fan-out directory, any valid name directly in a namespace.
    func validateBlockName(_ name: [UInt8], fanout: UInt8?) -> Errno? {
        // The rules live in BlockName (fuzzed by Tools/fuzz/FuzzBlockNames); names are kept as UTF-8
        // text, other byte strings are refused rather than altered.
        switch BlockName.checkBlockFileName(name, inFanout: fanout) {
        case nil: return nil
        case .tooLong: return Errno(ENAMETOOLONG)
        case .invalid: return Errno(EINVAL)
        }
    }

    func lookup(parent: UInt64, name: [UInt8], caller: Caller) -> Outcome<Entry> {
        metrics.count(.lookup)
        let text = String(decoding: name, as: UTF8.self)
        switch InodeNumber.kind(parent) {
        case .root:
            if text == ".tw" { return entry(for: InodeNumber.controlDirectory, timeout: settings.entryTimeout) }
            if let ns = store.namespace(named: text) { return entry(for: InodeNumber.namespace(ns.id), timeout: 1) }
            // A namespace another node announced is created here on first use, unless the caller is
            // creating it itself (mkdir looks the name up first).
            if let remote, BlockName.isValidNamespace(text), !CallerProcess.isMakingDirectory(caller.pid),
               let ns = remote.importNamespace(text) {
                return entry(for: InodeNumber.namespace(ns.id), timeout: 1)
            }
            return .failure(Errno(ENOENT))
        case .controlDirectory:
            guard let f = ControlFile(rawValue: text) else { return .failure(Errno(ENOENT)) }
            return .success(Entry(attributes: fileAttributes(ino: f.ino, size: 0, stored: 0, seconds: startedSeconds, ns: nil, mode: f.mode),
                                  entryTimeout: settings.entryTimeout, attributeTimeout: 0))
        case .control, .file:
            return .failure(Errno(ENOTDIR))
        case .namespace, .fanout:
            break
        }
        let context: (NamespaceInfo, fanout: UInt8?)
        switch directoryContext(parent) {
        case .success(let c): context = c
        case .failure(let e): return .failure(e)
        }
        let (ns, fanout) = context
        if fanout == nil && BlockName.isFanout(name) {
            return entry(for: InodeNumber.fanout(ns.id, BlockName.fanout(of: name + Array("00000000000000".utf8))!), timeout: 1)
        }
        if let e = validateBlockName(name, fanout: fanout) { return .failure(e) }
        // A committed block wins over one this process is still writing (that one will be discarded).
        if case .success(let entry) = committedEntry(ns: ns, key: text, parent: parent) {
            if let flags = CallerProcess.openFlags(of: caller.pid), flags & O_CREAT != 0, flags & O_EXCL == 0 {
                // open(O_CREAT) of an existing block: first write wins, so the writer gets a stand-in.
                forget(UInt64(entry.attributes.st_ino), count: 1)
                return .success(discardEntry(ns: ns, key: text, parent: parent))
            }
            return .success(entry)
        }
        if let node = pendingNode(parent: parent, name: text, caller: caller) {
            node.state.withLock { $0.lookups += 1 }
            return fileAttributes(of: node).map { Entry(attributes: $0, entryTimeout: 0, attributeTimeout: 0) }
        }
        // A local miss looks in the shared tier, unless the caller is creating the name (its open has
        // O_CREAT): a writer's lookup must not wait for the cluster.
        if let remote, CallerProcess.openFlags(of: caller.pid).map({ $0 & O_CREAT == 0 }) ?? true {
            switch remote.fetch(namespace: ns.name, key: text) {
            case .stored: return committedEntry(ns: ns, key: text, parent: parent)
            case .corrupt: return .failure(Errno(EIO))
            case .absent, .unavailable: break
            }
        }
        return .failure(Errno(ENOENT))
    }

    private func entry(for ino: UInt64, timeout: Double) -> Outcome<Entry> {
        attributes(of: ino).map { Entry(attributes: $0, entryTimeout: timeout, attributeTimeout: timeout) }
    }

    /// A fresh stand-in inode for a writer of an existing block (see `FileNode.State.discard`).
    func discardEntry(ns: NamespaceInfo, key: String, parent: UInt64) -> Entry {
        let node = nodes.withLock { table -> FileNode in
            let node = FileNode(ino: table.allocate(), namespaceID: ns.id, namespace: ns.name, key: key, parent: parent, pending: nil)
            node.state.withLock {
                $0.lookups = 1
                $0.discard = true
            }
            table.nodes[node.ino] = node
            return node
        }
        let st = fileAttributes(ino: node.ino, size: 0, stored: 0, seconds: wallClockNanoseconds() / 1_000_000_000, ns: ns, mode: 0o644)
        return Entry(attributes: st, entryTimeout: 0, attributeTimeout: 0)
    }

    /// The node of a committed block, creating it on first lookup (one lookup reference is taken).
    func committedEntry(ns: NamespaceInfo, key: String, parent: UInt64) -> Outcome<Entry> {
        guard let a = store.attributes(namespace: ns.name, key: key) else { return .failure(Errno(ENOENT)) }
        let blockKey = BlockKey(namespace: ns.name, key: key)
        let node = nodes.withLock { table -> FileNode in
            if let ino = table.committed[blockKey], let node = table.nodes[ino],
               node.state.withLock({ $0.sequence == a.sequence && !$0.unlinked && $0.pending == nil }) {
                node.state.withLock { $0.lookups += 1 }
                return node
            }
            let node = FileNode(ino: table.allocate(), namespaceID: ns.id, namespace: ns.name, key: key, parent: parent, pending: nil)
            node.state.withLock {
                $0.lookups = 1
                $0.sequence = a.sequence
                $0.lastSize = a.logicalLength
                $0.lastStored = a.storedLength
                $0.lastSeconds = UInt64(a.commitSeconds)
            }
            table.nodes[node.ino] = node
            table.committed[blockKey] = node.ino
            return node
        }
        let st = fileAttributes(ino: node.ino, size: a.logicalLength, stored: a.storedLength, seconds: UInt64(a.commitSeconds), ns: ns, mode: settings.blockMode)
        // A block with a time to live may be cached only until it expires: then the kernel asks again.
        var entryTimeout = settings.entryTimeout, attributeTimeout = settings.attributeTimeout
        if ns.ttlSeconds > 0 {
            let left = Double(UInt64(a.commitSeconds) + ns.ttlSeconds) - Double(wallClockNanoseconds()) / 1e9
            entryTimeout = max(0, min(entryTimeout, left))
            attributeTimeout = max(0, min(attributeTimeout, left))
        }
        return .success(Entry(attributes: st, entryTimeout: entryTimeout, attributeTimeout: attributeTimeout))
    }

    /// The block being written under this name by the caller's process, if any.
    func pendingNode(parent: UInt64, name: String, caller: Caller) -> FileNode? {
        let candidates = nodes.withLock { $0.pending[NodeTable.PendingName(parent: parent, name: name)] ?? [] }
        guard !candidates.isEmpty else { return nil }
        let group = threadGroup(of: caller.pid)
        // A block already committed (or dropped) at close is no longer "being written", even though its
        // staging region is only released later (RELEASE arrives after close returns).
        return candidates.first { node in
            guard let pending = node.state.withLock({ $0.pending }), pending.creator == group else { return false }
            return !pending.state.withLock { $0.finished }
        }
    }

    func forget(_ ino: UInt64, count: UInt64) {
        guard InodeNumber.kind(ino) == .file else { return }
        nodes.withLock { table in
            guard let node = table.nodes[ino] else { return }
            let gone = node.state.withLock { s -> Bool in
                s.lookups = s.lookups > count ? s.lookups - count : 0
                return s.lookups == 0 && s.pending == nil
            }
            if gone {
                table.nodes[ino] = nil
                let key = BlockKey(namespace: node.namespace, key: node.key)
                if table.committed[key] == ino { table.committed[key] = nil }
            }
        }
    }

    // MARK: Namespaces

    func makeDirectory(parent: UInt64, name: [UInt8], mode: UInt32, caller: Caller) -> Outcome<Entry> {
        let text = String(decoding: name, as: UTF8.self)
        switch InodeNumber.kind(parent) {
        case .root:
            if name.count > 255 { return .failure(Errno(ENAMETOOLONG)) }
            do {
                let ns = try store.createNamespace(text, owner: caller.uid, group: caller.gid, mode: mode & 0o7777)
                remote?.namespaceChanged(ns)
                return entry(for: InodeNumber.namespace(ns.id), timeout: 1)
            } catch {
                return .failure(Errno(error))
            }
        case .namespace:
            return .failure(Errno(BlockName.isFanout(name) ? EEXIST : EPERM))
        case .fanout, .controlDirectory: return .failure(Errno(EPERM))
        case .control, .file: return .failure(Errno(ENOTDIR))
        }
    }

    func removeDirectory(parent: UInt64, name: [UInt8]) -> Outcome<Void> {
        guard InodeNumber.kind(parent) == .root else { return .failure(Errno(EPERM)) }
        do {
            try store.removeNamespace(String(decoding: name, as: UTF8.self))
            return .success(())
        } catch {
            return .failure(Errno(error))
        }
    }

    // MARK: Create, open, write, commit

    /// `open(O_CREAT)` of a name the kernel did not find.
    func create(parent: UInt64, name: [UInt8], flags: Int32, caller: Caller) -> Outcome<(Entry, Handle, directIO: Bool)> {
        let context: (NamespaceInfo, fanout: UInt8?)
        switch directoryContext(parent) {
        case .success(let c): context = c
        case .failure(let e): return .failure(e)
        }
        let (ns, fanout) = context
        if fanout == nil && BlockName.isFanout(name) { return .failure(Errno(EISDIR)) }
        if let e = validateBlockName(name, fanout: fanout) { return .failure(e) }
        let key = String(decoding: name, as: UTF8.self)
        let exclusive = flags & O_EXCL != 0
        // A block that exists (committed since the kernel's lookup): first write wins.
        if store.contains(namespace: ns.name, key: key) {
            if exclusive { return .failure(Errno(EEXIST)) }
            // Committed since the kernel's lookup: the writer gets a stand-in, as in `lookup`.
            let entry = discardEntry(ns: ns, key: key, parent: parent)
            guard let node = nodes.withLock({ $0.nodes[UInt64(entry.attributes.st_ino)] }) else { return .failure(Errno(ENOENT)) }
            return .success((entry, DiscardHandle(node: node, located: store.locate(namespace: ns.name, key: key)), true))
        }
        if let node = pendingNode(parent: parent, name: key, caller: caller), let pending = node.state.withLock({ $0.pending }) {
            if exclusive { return .failure(Errno(EEXIST)) }
            pending.state.withLock {
                $0.openHandles += 1
                $0.unflushed += 1
            }
            node.state.withLock { $0.lookups += 1 }
            return fileAttributes(of: node).map { (Entry(attributes: $0, entryTimeout: 0, attributeTimeout: 0), WriteHandle(node: node, pending: pending), true) }
        }
        let region: ReservedRegion
        do { region = try staging.take() } catch { return .failure(Errno(ENOMEM)) }
        let pending = PendingWrite(region: region, creator: threadGroup(of: caller.pid))
        pending.state.withLock {
            $0.openHandles = 1
            $0.unflushed = 1
        }
        let node = nodes.withLock { table -> FileNode in
            let node = FileNode(ino: table.allocate(), namespaceID: ns.id, namespace: ns.name, key: key, parent: parent, pending: pending)
            node.state.withLock { $0.lookups = 1 }
            table.nodes[node.ino] = node
            table.pending[NodeTable.PendingName(parent: parent, name: key), default: []].append(node)
            return node
        }
        let st = fileAttributes(ino: node.ino, size: 0, stored: 0, seconds: wallClockNanoseconds() / 1_000_000_000, ns: ns, mode: 0o644)
        return .success((Entry(attributes: st, entryTimeout: 0, attributeTimeout: 0), WriteHandle(node: node, pending: pending), true))
    }

    /// `open` of an existing inode. Committed blocks are read-only: write access is refused (EACCES)
    /// unless the caller's open had O_CREAT (as `open(p, "wb")` and `torch.save` do): then writes are
    /// accepted and discarded at close, first write wins. FUSE strips O_CREAT from OPEN, so the flags
    /// are read from the caller's system call.
    func open(ino: UInt64, flags: Int32, caller: Caller) -> Outcome<(Handle, keepCache: Bool, directIO: Bool)> {
        switch InodeNumber.kind(ino) {
        case .control(.status):
            if flags & O_ACCMODE != O_RDONLY { return .failure(Errno(EACCES)) }
            return .success((GeneratedHandle(bytes: Array(statusJSON().utf8)), false, true))
        case .control(.dram):
            if flags & O_ACCMODE != O_RDONLY { return .failure(Errno(EACCES)) }
            return .success((GeneratedHandle(bytes: Array(((tier?.path).map { $0 + "\n" } ?? "").utf8)), false, true))
        case .control(.prefetch):
            if flags & O_ACCMODE == O_RDONLY { return .failure(Errno(EACCES)) }
            return .success((HintHandle(), false, true))
        case .control(.ctl):
            if caller.uid != 0 { return .failure(Errno(EACCES)) }
            return .success((CommandHandle(), false, true))
        case .file: break
        default: return .failure(Errno(EISDIR))
        }
        guard let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(Errno(ENOENT)) }
        let writing = flags & O_ACCMODE != O_RDONLY || flags & O_APPEND != 0
        if let pending = node.state.withLock({ $0.pending }) {
            guard pending.creator == threadGroup(of: caller.pid) else { return .failure(Errno(ENOENT)) }
            if let real = CallerProcess.openFlags(of: caller.pid), real & O_CREAT != 0 {
                // Another open(O_CREAT) of a name this process is writing (racing writer threads):
                // an independent writer with its own bytes; the first to close commits, never a mix.
                let region: ReservedRegion
                do { region = try staging.take() } catch { return .failure(Errno(ENOMEM)) }
                let own = PendingWrite(region: region, creator: pending.creator)
                own.state.withLock {
                    $0.openHandles = 1
                    $0.unflushed = 1
                }
                return .success((WriteHandle(node: node, pending: own), false, true))
            }
            let ok = pending.state.withLock { s -> Bool in
                if s.finished { return false }
                s.openHandles += 1
                s.unflushed += 1
                return true
            }
            guard ok else { return .failure(Errno(ENOENT)) }
            return .success((WriteHandle(node: node, pending: pending), false, true))
        }
        let located = store.locate(namespace: node.namespace, key: node.key)
        if node.state.withLock({ $0.discard }) { return .success((DiscardHandle(node: node, located: located), false, true)) }
        guard let located else { return .failure(Errno(ENOENT)) }
        // The name now holds another record than this inode showed (deleted or evicted, then written
        // again): the kernel's cached pages are of the old bytes, so make it look the name up again.
        let shown = node.state.withLock { $0.sequence }
        if shown != 0 && shown != located.sequence { return .failure(Errno(ESTALE)) }
        if writing {
            // O_CREAT without O_EXCL (also with O_APPEND: `open(p, "ab")`) is accepted and discarded.
            guard let real = CallerProcess.openFlags(of: caller.pid), real & O_CREAT != 0 else {
                return .failure(Errno(EACCES))
            }
            // The kernel reused a cached name for this open(O_CREAT): ESTALE makes it look the name up
            // again, and that lookup gives the writer a stand-in inode (see `lookup`).
            return .failure(Errno(ESTALE))
        }
        let pinned = tier?.pin(BlockKey(namespace: node.namespace, key: node.key))
        prefetcher?.noteRead(namespace: node.namespace, name: node.key, process: caller.pid)
        return .success((ReadHandle(node: node, located: located, pinned: pinned), true, false))
    }

    func write(_ handle: Handle, bytes: UnsafeRawBufferPointer, offset: Int) -> Outcome<Int> {
        write(handle, count: bytes.count, offset: offset) { destination in
            if bytes.count > 0 { destination.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
            return bytes.count
        }
    }

    /// Writes `count` bytes at `offset`: `fill` copies them to the destination it is given (the staging
    /// region, or scratch memory for writes that are discarded) and returns how many it copied.
    func write(_ handle: Handle, count: Int, offset: Int, fill: (UnsafeMutableRawPointer) -> Int) -> Outcome<Int> {
        if handle is DiscardHandle {
            let scratch = AlignedBuffer(capacity: max(count, 1))
            return .success(fill(scratch.pointer))
        }
        if let h = handle as? HintHandle {
            let scratch = AlignedBuffer(capacity: max(count, 1))
            let n = fill(scratch.pointer)
            h.bytes.withLock { $0.append(contentsOf: scratch.bytes(count: n)) }
            return .success(n)
        }
        if let c = handle as? CommandHandle {
            guard count <= 65536 else { return .failure(Errno(E2BIG)) }
            let scratch = AlignedBuffer(capacity: max(count, 1))
            let n = fill(scratch.pointer)
            c.state.withLock { $0.command.append(contentsOf: scratch.bytes(count: n)) }
            return .success(n)
        }
        guard let w = handle as? WriteHandle else { return .failure(Errno(EBADF)) }
        let end = offset + count
        let limit = w.pending.region.capacity
        guard offset >= 0, end <= store.configuration.maxBlockSize, end <= limit else {
            // The block can no longer be whole: close reports EFBIG and nothing is committed.
            w.pending.state.withLock { $0.failure = EFBIG }
            return .failure(Errno(EFBIG))
        }
        metrics.wrote(bytes: count)
        // The range counts as written before the copy, so a concurrent zeroing of gaps never lands on it.
        let open = w.pending.state.withLock { s -> Bool in
            if s.finished { return false }
            s.length = max(s.length, end)
            s.written.insert(offset..<end)
            return true
        }
        guard open else { return .failure(Errno(EBADF)) }
        let copied = fill(w.pending.region.pointer + offset)
        guard copied == count else {
            w.pending.state.withLock { $0.failure = EIO }
            return .failure(Errno(EIO))
        }
        w.pending.state.withLock { s in
            // Bytes that arrive in order are checksummed now, so the commit needs no pass over them.
            if let checksum = s.checksum {
                if offset == s.checksummed {
                    checksum.update(UnsafeRawBufferPointer(start: w.pending.region.pointer + offset, count: count))
                    s.checksummed = end
                } else {
                    s.checksum = nil
                }
            }
        }
        return .success(count)
    }

    func read(_ handle: Handle, size: Int, offset: Int, reply: (UnsafeRawBufferPointer) -> Void) -> Errno? {
        if let c = handle as? CommandHandle {
            // The first read runs the command written so far; later reads page through its answer.
            let pending = c.state.withLock { s -> [UInt8]? in s.answer == nil ? s.command : nil }
            if let command = pending {
                let answer = Array((execute(command: command) + "\n").utf8)
                c.state.withLock { if $0.answer == nil { $0.answer = answer } }
            }
            let answer = c.state.withLock { $0.answer ?? [] }
            let start = min(offset, answer.count), end = min(offset + size, answer.count)
            answer.withUnsafeBytes { reply(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
            return nil
        }
        if let g = handle as? GeneratedHandle {
            let start = min(offset, g.bytes.count), end = min(offset + size, g.bytes.count)
            g.bytes.withUnsafeBytes { reply(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
            return nil
        }
        if let w = handle as? WriteHandle {
            let length = w.pending.state.withLock { s -> Int in
                PendingWrite.zeroGaps(&s, region: w.pending.region)
                return s.length
            }
            let start = min(offset, length), end = min(offset + size, length)
            reply(UnsafeRawBufferPointer(start: w.pending.region.pointer + start, count: end - start))
            return nil
        }
        let r: ReadHandle
        if let d = handle as? DiscardHandle { r = d.read } else if let h = handle as? ReadHandle { r = h } else { return Errno(EBADF) }
        let began = monotonicNanoseconds()
        if let pinned = r.pinned {
            let bytes = pinned.bytes
            let start = min(offset, bytes.count), end = min(offset + size, bytes.count)
            reply(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
            metrics.read(tier: .dram, bytes: end - start, nanoseconds: monotonicNanoseconds() - began)
            return nil
        }
        let loaded: BlockData
        if let b = r.block.withLock({ $0 }) {
            loaded = b
        } else {
            do {
                guard let located = r.located else { return Errno(EIO) }
                loaded = try store.read(located)
            } catch let e as StoreError {
                if case .corruption(let why) = e { log("twfs: refusing to serve \(r.node.namespace)/\(r.node.key): \(why)") }
                // A block evicted or deleted after open no longer has bytes to give.
                return Errno(e == .notFound ? EIO : e.errnoCode)
            } catch {
                return Errno(error)
            }
            r.block.withLock { $0 = loaded }
            // A miss loads the block into the DRAM tier (S3-FIFO decides whether it stays), so the next
            // reader, through the mount or the map, finds it there.
            if let tier, let located = r.located {
                let key = BlockKey(namespace: located.namespace, key: located.key)
                loaded.withBytes { bytes in
                    _ = tier.insert(key, bytes: bytes, checksum: loaded.checksum ?? Checksum.xxh3(bytes))
                }
                // Unlinked or replaced while we read it: the tier must not keep the old bytes.
                if store.attributes(namespace: located.namespace, key: located.key)?.sequence != located.sequence { tier.remove(key) }
            }
        }
        let served = loaded.withBytes { bytes -> Int in
            let start = min(offset, bytes.count), end = min(offset + size, bytes.count)
            reply(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
            return end - start
        }
        metrics.read(tier: .nvme, bytes: served, nanoseconds: monotonicNanoseconds() - began)
        return nil
    }

    /// `close` of a descriptor: commits the block when this is its only open handle, so the error
    /// (EFBIG, ENOSPC, EIO) reaches the closing process and the block is visible when close returns.
    func flush(_ handle: Handle, caller: Caller) -> Errno? {
        if let h = handle as? HintHandle {
            let lines = h.bytes.withLock { b -> [UInt8] in
                defer { b = [] }
                return b
            }
            if !lines.isEmpty { prefetcher?.hint(Prefetcher.parse(lines)) }
            return nil
        }
        guard let w = handle as? WriteHandle else { return nil }
        // A close by another process (a forked child closing inherited descriptors at exec or exit)
        // neither commits nor abandons the writer's block.
        if threadGroup(of: caller.pid) != w.pending.creator { return nil }
        let firstFlush = w.flushed.withLock { f -> Bool in
            defer { f = true }
            return !f
        }
        // The close that leaves no handle of this writer unclosed commits (RELEASE comes too late: it
        // arrives after close returned).
        let last = w.pending.state.withLock { s -> Bool in
            if firstFlush { s.unflushed -= 1 }
            // A close before any byte arrived is almost always the close of a duplicate that the same
            // process goes on writing through (`cmd > file` and dd open, dup2 and close the original):
            // FUSE cannot tell which close is the last, so an empty block waits for RELEASE instead.
            return s.unflushed <= 0 && !s.finished && s.length > 0
        }
        guard last else { return w.pending.state.withLock { $0.failure != 0 ? Errno($0.failure) : nil } }
        if CallerProcess.isExiting(caller.pid) {
            // The writer died with the block open (killed, or exited without closing): leave nothing.
            w.pending.state.withLock {
                $0.finished = true
                $0.abandoned = true
            }
            return nil
        }
        return commit(w.node, w.pending)
    }

    func release(_ handle: Handle) {
        guard let w = handle as? WriteHandle else { return }
        let commitNow = w.pending.state.withLock { s -> Bool in
            s.openHandles -= 1
            return s.openHandles == 0 && !s.finished
        }
        if commitNow {
            if let e = commit(w.node, w.pending) { log("twfs: block \(w.node.namespace)/\(w.node.key) not committed: \(String(cString: strerror(e.code)))") }
        }
        let done = w.pending.state.withLock { $0.openHandles == 0 && $0.finished }
        guard done else { return }
        if w.node.state.withLock({ $0.pending === w.pending }) {
            detachPending(w.node, w.pending)
        } else {
            staging.give(w.pending.region, used: w.pending.state.withLock { $0.length })
        }
    }

    /// Commits a block being written; first write wins, so a name that exists keeps its bytes.
    func commit(_ node: FileNode, _ pending: PendingWrite) -> Errno? {
        let (length, metadata, proceed, failure, checksum) = pending.state.withLock { s -> (Int, BlockMetadata, Bool, Int32, UInt64?) in
            if s.finished { return (0, s.metadata, false, s.failure, nil) }
            s.finished = true
            PendingWrite.zeroGaps(&s, region: pending.region)
            let sum = s.checksummed == s.length ? s.checksum?.digest : nil
            return (s.length, s.metadata, true, s.failure, sum)
        }
        guard proceed else { return failure != 0 ? Errno(failure) : nil }
        if failure != 0 { return Errno(failure) }
        let (key, unlinked) = node.state.withLock { ($0.key, $0.unlinked) }
        if unlinked { return nil }
        do {
            let outcome = try store.put(namespace: node.namespace, key: key,
                              payload: UnsafeRawBufferPointer(start: pending.region.pointer, count: length), metadata: metadata,
                              stagedInPlace: true, payloadChecksum: checksum)
            prefetcher?.noteCommit(namespace: node.namespace, name: key, parent: metadata.parent)
            metrics.count(.commit)
            if outcome == .stored, let remote {
                remote.committed(namespace: node.namespace, key: key, payload: UnsafeRawBufferPointer(start: pending.region.pointer, count: length),
                                 metadata: metadata, checksum: checksum)
            }
            // Only the bytes that were stored (first write wins: a losing writer's are discarded).
            if settings.admitWrites, outcome == .stored, let tier {
                let bytes = UnsafeRawBufferPointer(start: pending.region.pointer, count: length)
                tier.insert(BlockKey(namespace: node.namespace, key: key), bytes: bytes, checksum: checksum ?? Checksum.xxh3(bytes))
                // Unlinked meanwhile: the tier must not keep it.
                if !store.contains(namespace: node.namespace, key: key) { tier.remove(BlockKey(namespace: node.namespace, key: key)) }
            }
            return nil
        } catch {
            let e = Errno(error)
            if let s = error as? StoreError, case .tooLarge = s {} else { log("twfs: commit of \(node.namespace)/\(key) failed: \(error)") }
            pending.state.withLock { $0.failure = e.code }
            return e
        }
    }

    /// After the last handle of a written block closed: the node now shows the committed block (or is
    /// gone), and the staging region goes back to the pool.
    func detachPending(_ node: FileNode, _ pending: PendingWrite) {
        let (key, parent) = node.state.withLock { s -> (String, UInt64) in
            s.pending = nil
            return (s.key, s.parent)
        }
        let attributes = store.attributes(namespace: node.namespace, key: key)
        node.state.withLock {
            $0.sequence = attributes?.sequence ?? 0
            $0.lastSize = attributes?.logicalLength ?? 0
            $0.lastStored = attributes?.storedLength ?? 0
            $0.lastSeconds = UInt64(attributes?.commitSeconds ?? 0)
        }
        nodes.withLock { table in
            let name = NodeTable.PendingName(parent: parent, name: key)
            table.pending[name]?.removeAll { $0 === node }
            if table.pending[name]?.isEmpty == true { table.pending[name] = nil }
            if node.state.withLock({ $0.lookups == 0 }) { table.nodes[node.ino] = nil }
        }
        staging.give(pending.region, used: pending.state.withLock { $0.length })
    }

    /// Truncation. A block being written may be resized. A committed block is never changed: the
    /// truncation the kernel sends for `open(O_CREAT|O_TRUNC)` of it is answered with its unchanged
    /// attributes (first write wins; readers keep their size and cached pages); any other is EPERM.
    func setSize(ino: UInt64, size: Int, caller: Caller) -> Outcome<stat> {
        // The writable control files ignore O_TRUNC (`open(p, "w")` of .tw/prefetch); the others are read-only.
        if case .control(let f) = InodeNumber.kind(ino) {
            return f == .prefetch || f == .ctl ? attributes(of: ino) : .failure(Errno(EACCES))
        }
        guard let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(Errno(ENOENT)) }
        if node.state.withLock({ $0.discard }) { return fileAttributes(of: node) }
        guard let pending = node.state.withLock({ $0.pending }) else {
            if let flags = CallerProcess.openFlags(of: caller.pid) {
                return flags & O_CREAT != 0 && flags & O_APPEND == 0 ? fileAttributes(of: node) : .failure(Errno(EACCES))
            }
            return .failure(Errno(EPERM))
        }
        guard size <= store.configuration.maxBlockSize else { return .failure(Errno(EFBIG)) }
        if let flags = CallerProcess.openFlags(of: caller.pid), flags & O_CREAT != 0 {
            // The O_TRUNC of another writer's open(O_CREAT|O_TRUNC): it writes its own copy (see
            // `open`), so the bytes staged here are left alone.
            return fileAttributes(of: node)
        }
        pending.state.withLock { s in
            if size < s.length {
                s.written.clip(to: size)
                if s.checksummed > size { s.checksum = nil }
            }
            s.length = size
        }
        return fileAttributes(of: node)
    }

    /// chmod/chown of a namespace directory change its owner and mode; of a block file they are refused.
    func setOwnerAndMode(ino: UInt64, mode: UInt32?, uid: UInt32?, gid: UInt32?) -> Outcome<stat> {
        switch InodeNumber.kind(ino) {
        case .namespace(let id):
            guard let ns = store.namespace(id: id) else { return .failure(Errno(ENOENT)) }
            do {
                let changed = try store.updateNamespace(ns.name) { n in
                    if let mode { n.mode = mode & 0o7777 }
                    if let uid { n.owner = uid }
                    if let gid { n.group = gid }
                }
                remote?.namespaceChanged(changed)
            } catch { return .failure(Errno(error)) }
            return attributes(of: ino)
        case .file:
            guard let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(Errno(ENOENT)) }
            if node.state.withLock({ $0.pending != nil }) { return fileAttributes(of: node) }
            return .failure(Errno(EPERM))
        default:
            return .failure(Errno(EPERM))
        }
    }

    // MARK: Unlink and rename

    func unlink(parent: UInt64, name: [UInt8], caller: Caller) -> Outcome<Void> {
        metrics.count(.unlink)
        let context: (NamespaceInfo, fanout: UInt8?)
        switch directoryContext(parent) {
        case .success(let c): context = c
        case .failure(let e): return .failure(e)
        }
        let key = String(decoding: name, as: UTF8.self)
        if let node = pendingNode(parent: parent, name: key, caller: caller) {
            node.state.withLock { $0.unlinked = true }
            nodes.withLock { $0.pending[NodeTable.PendingName(parent: parent, name: key)]?.removeAll { $0 === node } }
            return .success(())
        }
        if context.fanout == nil && BlockName.isFanout(name) { return .failure(Errno(EISDIR)) }
        do {
            try store.remove(namespace: context.0.name, key: key)
        } catch {
            return .failure(Errno(error))
        }
        let blockKey = BlockKey(namespace: context.0.name, key: key)
        tier?.remove(blockKey)
        nodes.withLock { table in
            if let ino = table.committed.removeValue(forKey: blockKey) { table.nodes[ino]?.state.withLock { $0.unlinked = true } }
        }
        return .success(())
    }

    func rename(parent: UInt64, name: [UInt8], newParent: UInt64, newName: [UInt8], flags: UInt32, caller: Caller) -> Outcome<Void> {
        if InodeNumber.kind(parent) == .root || InodeNumber.kind(newParent) == .root { return .failure(Errno(EPERM)) }
        let from: (NamespaceInfo, fanout: UInt8?), to: (NamespaceInfo, fanout: UInt8?)
        switch (directoryContext(parent), directoryContext(newParent)) {
        case (.success(let a), .success(let b)): (from, to) = (a, b)
        case (.failure(let e), _), (_, .failure(let e)): return .failure(e)
        }
        guard from.0.id == to.0.id else { return .failure(Errno(EXDEV)) }
        if let e = validateBlockName(newName, fanout: to.fanout) { return .failure(e) }
        if flags & 2 != 0 { return .failure(Errno(EINVAL)) }  // RENAME_EXCHANGE
        let oldKey = String(decoding: name, as: UTF8.self), newKey = String(decoding: newName, as: UTF8.self)
        let ns = from.0.name
        let targetExists = store.contains(namespace: ns, key: newKey)
        if targetExists && flags & 1 != 0 { return .failure(Errno(EEXIST)) }  // RENAME_NOREPLACE
        if let node = pendingNode(parent: parent, name: oldKey, caller: caller), let pending = node.state.withLock({ $0.pending }) {
            // Still open for writing (safetensors renames before it closes): the rename commits the
            // block under the new name; the name stays visible to its writer until the last close.
            nodes.withLock { table in
                table.pending[NodeTable.PendingName(parent: parent, name: oldKey)]?.removeAll { $0 === node }
                table.pending[NodeTable.PendingName(parent: newParent, name: newKey), default: []].append(node)
            }
            node.state.withLock {
                $0.key = newKey
                $0.parent = newParent
            }
            if let e = commit(node, pending) { return .failure(e) }
            return .success(())
        }
        do {
            try store.rename(namespace: ns, from: oldKey, to: newKey)
        } catch {
            return .failure(Errno(error))
        }
        tier?.remove(BlockKey(namespace: ns, key: oldKey))
        let sequence = store.attributes(namespace: ns, key: newKey)?.sequence ?? 0
        nodes.withLock { table in
            guard let ino = table.committed.removeValue(forKey: BlockKey(namespace: ns, key: oldKey)), let node = table.nodes[ino] else { return }
            if targetExists {
                // First write wins: the target keeps its bytes. The kernel now names the source's inode
                // `newKey`, but its cached pages hold the source's bytes: it keeps the source's
                // sequence, so an open of it answers ESTALE and the kernel looks the target up afresh.
                node.state.withLock {
                    $0.key = newKey
                    $0.parent = newParent
                }
                return
            }
            node.state.withLock {
                $0.key = newKey
                $0.parent = newParent
                $0.sequence = sequence
            }
            table.committed[BlockKey(namespace: ns, key: newKey)] = ino
        }
        return .success(())
    }

    // MARK: Extended attributes

    static let parentAttribute = "user.tw.parent"
    static let tokensAttribute = "user.tw.tokens"
    static let tierAttribute = "user.tw.tier"
    static let storedSizeAttribute = "user.tw.stored_size"

    /// `user.tw.compression` of a namespace directory: `off`, `lz4` or `auto` for blocks written from now on.
    static let compressionAttribute = "user.tw.compression"

    func getExtendedAttribute(ino: UInt64, name: String) -> Outcome<[UInt8]> {
        if case .namespace(let id) = InodeNumber.kind(ino) {
            guard name == Self.compressionAttribute, let ns = store.namespace(id: id) else { return .failure(Errno(ENODATA)) }
            return .success(Array(ns.compression.rawValue.utf8))
        }
        guard InodeNumber.kind(ino) == .file, let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(Errno(ENODATA)) }
        if let pending = node.state.withLock({ $0.pending }) {
            let meta = pending.state.withLock { $0.metadata }
            switch name {
            case Self.parentAttribute: return meta.parent.map { .success(Array($0.utf8)) } ?? .failure(Errno(ENODATA))
            case Self.tokensAttribute: return meta.tokens.map { .success(Array($0.utf8)) } ?? .failure(Errno(ENODATA))
            default: return .failure(Errno(ENODATA))
            }
        }
        let key = node.key
        switch name {
        case Self.tierAttribute:
            if tier?.contains(BlockKey(namespace: node.namespace, key: key)) == true { return .success(Array("dram".utf8)) }
            return store.contains(namespace: node.namespace, key: key) ? .success(Array("nvme".utf8)) : .failure(Errno(ENOENT))
        case Self.storedSizeAttribute:
            guard let a = store.attributes(namespace: node.namespace, key: key) else { return .failure(Errno(ENOENT)) }
            return .success(Array(String(a.storedLength).utf8))
        case Self.parentAttribute, Self.tokensAttribute:
            do {
                let meta = try store.metadata(namespace: node.namespace, key: key)
                let value = name == Self.parentAttribute ? meta.parent : meta.tokens
                return value.map { .success(Array($0.utf8)) } ?? .failure(Errno(ENODATA))
            } catch {
                return .failure(Errno(error))
            }
        default:
            return .failure(Errno(ENODATA))
        }
    }

    func listExtendedAttributes(ino: UInt64) -> Outcome<[String]> {
        if case .namespace = InodeNumber.kind(ino) { return .success([Self.compressionAttribute]) }
        guard InodeNumber.kind(ino) == .file, let node = nodes.withLock({ $0.nodes[ino] }) else { return .success([]) }
        var names: [String] = []
        let meta: BlockMetadata
        if let pending = node.state.withLock({ $0.pending }) {
            meta = pending.state.withLock { $0.metadata }
        } else {
            names = [Self.tierAttribute, Self.storedSizeAttribute]
            meta = (try? store.metadata(namespace: node.namespace, key: node.key)) ?? BlockMetadata()
        }
        if meta.parent != nil { names.append(Self.parentAttribute) }
        if meta.tokens != nil { names.append(Self.tokensAttribute) }
        return .success(names)
    }

    /// Writers set `user.tw.parent` (a prefix hash) and `user.tw.tokens` before close; everything of a
    /// committed block is read-only.
    func setExtendedAttribute(ino: UInt64, name: String, value: [UInt8], remove: Bool = false, caller: Caller? = nil) -> Outcome<Void> {
        if case .namespace(let id) = InodeNumber.kind(ino) {
            guard name == Self.compressionAttribute else { return .failure(Errno(ENOTSUP)) }
            guard let ns = store.namespace(id: id) else { return .failure(Errno(ENOENT)) }
            // Like chmod: the namespace's owner (or root) decides.
            if let caller, caller.uid != 0, caller.uid != ns.owner { return .failure(Errno(EPERM)) }
            guard let policy = remove ? .off : CompressionPolicy(rawValue: String(decoding: value, as: UTF8.self)) else {
                return .failure(Errno(EINVAL))
            }
            do {
                // Not `remote?.namespaceChanged(try store.update…)`: without a cluster, optional chaining
                // would skip the update itself.
                let changed = try store.updateNamespace(ns.name) { $0.compression = policy }
                remote?.namespaceChanged(changed)
            } catch { return .failure(Errno(error)) }
            return .success(())
        }
        guard InodeNumber.kind(ino) == .file, let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(Errno(ENOTSUP)) }
        switch name {
        case Self.tierAttribute, Self.storedSizeAttribute: return .failure(Errno(EPERM))
        case Self.parentAttribute, Self.tokensAttribute: break
        default: return .failure(Errno(ENOTSUP))
        }
        if node.state.withLock({ $0.discard }) { return .success(()) }  // dropped with the writer's bytes
        guard let pending = node.state.withLock({ $0.pending }) else { return .failure(Errno(EPERM)) }
        if name == Self.parentAttribute && !remove && !BlockName.isCanonicalHash(value) { return .failure(Errno(EINVAL)) }
        if value.count > 8192 { return .failure(Errno(E2BIG)) }
        let text = String(decoding: value, as: UTF8.self)
        return pending.state.withLock { s -> Outcome<Void> in
            if s.finished { return .failure(Errno(EPERM)) }
            if name == Self.parentAttribute { s.metadata.parent = remove ? nil : text } else { s.metadata.tokens = remove ? nil : text }
            return .success(())
        }
    }

    // MARK: Directories

    func openDirectory(ino: UInt64) -> Outcome<DirectoryHandle> {
        typealias E = DirectoryHandle.Entry
        switch InodeNumber.kind(ino) {
        case .root:
            let ns = store.namespaces().map { E(name: $0.name, ino: InodeNumber.namespace($0.id), isDirectory: true) }
            return .success(DirectoryHandle(fixed: [E(name: ".", ino: ino, isDirectory: true), E(name: "..", ino: ino, isDirectory: true)] + ns, blocks: []))
        case .controlDirectory:
            return .success(DirectoryHandle(fixed: [E(name: ".", ino: ino, isDirectory: true), E(name: "..", ino: InodeNumber.root, isDirectory: true)]
                                                + ControlFile.allCases.map { E(name: $0.rawValue, ino: $0.ino, isDirectory: false) }, blocks: []))
        case .namespace(let id):
            guard store.namespace(id: id) != nil else { return .failure(Errno(ENOENT)) }
            let hex = Array("0123456789abcdef")
            var fixed = [E(name: ".", ino: ino, isDirectory: true), E(name: "..", ino: InodeNumber.root, isDirectory: true)]
            for b in 0..<256 {
                fixed.append(E(name: String([hex[b >> 4], hex[b & 15]]), ino: InodeNumber.fanout(id, UInt8(b)), isDirectory: true))
            }
            return .success(DirectoryHandle(fixed: fixed, blocks: store.list(namespaceID: id, fanout: nil)))
        case .fanout(let id, let byte):
            guard store.namespace(id: id) != nil else { return .failure(Errno(ENOENT)) }
            return .success(DirectoryHandle(fixed: [E(name: ".", ino: ino, isDirectory: true), E(name: "..", ino: InodeNumber.namespace(id), isDirectory: true)],
                                            blocks: store.list(namespaceID: id, fanout: byte)))
        case .control, .file:
            return .failure(Errno(ENOTDIR))
        }
    }

    // MARK: statfs and status

    func filesystemStatistics() -> statvfs {
        let s = store.statistics()
        var st = statvfs()
        let block: UInt64 = 4096
        let space = store.deviceSpace()
        let capacity = store.configuration.capacity
        let free = min(capacity > s.usedBytes ? capacity - s.usedBytes : 0, space.available)
        st.f_bsize = UInt(block)
        st.f_frsize = UInt(block)
        st.f_blocks = fsblkcnt_t(capacity / block)
        st.f_bfree = fsblkcnt_t(free / block)
        st.f_bavail = fsblkcnt_t(free / block)
        st.f_files = fsfilcnt_t(s.blocks + 1_000_000_000)
        st.f_ffree = fsfilcnt_t(1_000_000_000)
        st.f_favail = fsfilcnt_t(1_000_000_000)
        st.f_namemax = 255
        return st
    }

    /// The control area's status, one JSON object.
    public func statusJSON() -> String {
        let s = store.statistics()
        // One look at the tier per status: its figures walk every resident block.
        let t = tier?.statistics()
        let r = store.recovery
        let c = store.configuration
        var ns: [String] = []
        var usage: [String] = []
        for (info, u) in s.namespaces {
            ns.append(jsonString(info.name))
            usage.append("\(jsonString(info.name)): {\"blocks\": \(u.blocks), \"logical_bytes\": \(u.logicalBytes), \"stored_bytes\": \(u.storedBytes), \"compression\": \(jsonString(info.compression.rawValue)), "
                         + "\"quota_bytes\": \(info.quotaBytes), \"ttl_seconds\": \(info.ttlSeconds), \"pinned\": \(info.pinned)}")
        }
        let dead = s.usedBytes > 0 ? Double(s.deadBytes) / Double(s.usedBytes) : 0
        return """
        {"store": \(jsonString(settings.storeDirectory)), "sync": \(jsonString(c.sync.rawValue)), "blocks": \(s.blocks), \
        "capacity_bytes": \(c.capacity), "used_bytes": \(s.usedBytes), "live_bytes": \(s.liveBytes), "dead_bytes": \(s.deadBytes), \
        "dead_ratio": \(dead), "segments": \(s.segments), "segment_bytes": \(c.segmentSize), "max_block_bytes": \(c.maxBlockSize), \
        "namespaces": [\(ns.joined(separator: ", "))], "namespace_usage": {\(usage.joined(separator: ", "))}, \
        "puts": \(s.puts), "duplicate_puts": \(s.duplicatePuts), "bytes_written": \(s.bytesWritten), "gets": \(s.gets), \
        "bytes_read": \(s.bytesRead), "corrupt_reads": \(s.corruptReads), "removes": \(s.removes), \
        "evicted_segments": \(s.evictedSegments), "evicted_blocks": \(s.evictedBlocks), "reinserted_blocks": \(s.reinsertedBlocks), \
        "compacted_segments": \(s.compactedSegments), "reclaimed_bytes": \(s.reclaimedBytes), \
        "expired_blocks": \(s.expiredBlocks), "hit_ratios": \(hitRatiosJSON(s, t)), "compaction": \(compaction.json()), \
        "dram_tier": \(dramJSON(t)), "prefetch": \(prefetchJSON(t)), "remote": \(remote?.json() ?? "{\"enabled\": false}"), \
        "recovery": {"segments_from_summary": \(r.segmentsFromSummary), "segments_scanned": \(r.segmentsScanned), \
        "blocks": \(r.blocks), "corrupt_records": \(r.corruptRecords), "torn_tail_bytes": \(r.tornTailBytes), \
        "bytes_scanned": \(r.bytesScanned), "seconds": \(Double(r.nanoseconds) / 1e9)}}

        """
    }
}

extension WarehouseFileSystem {
    func dramJSON(_ t: TierStatistics?) -> String {
        guard let tier, let t else { return "{\"enabled\": false}" }
        let lookups = t.mountHits + t.misses
        return "{\"enabled\": true, \"path\": \(jsonString(tier.path)), \"capacity_bytes\": \(t.capacityBytes), "
            + "\"resident_blocks\": \(t.residentBlocks), \"resident_bytes\": \(t.residentBytes), \"mount_hits\": \(t.mountHits), "
            + "\"mount_misses\": \(t.misses), \"mount_hit_ratio\": \(lookups > 0 ? Double(t.mountHits) / Double(lookups) : 0), "
            + "\"map_hits\": \(t.mapHits), \"insertions\": \(t.insertions), \"failed_insertions\": \(t.failedInsertions), "
            + "\"evictions\": \(t.evictions), \"promotions\": \(t.promotions), \"reinsertions\": \(t.reinsertions), \"policy\": \"S3-FIFO\"}"
    }

    /// Of the block reads that found their block, the share each tier served (DRAM: through the mount
    /// and the map; NVMe: records read from segments).
    func hitRatiosJSON(_ s: StoreStatistics, _ t: TierStatistics?) -> String {
        let dram = (t?.mountHits ?? 0) + (t?.mapHits ?? 0)
        let total = Double(dram + s.gets)
        return "{\"dram\": \(total > 0 ? Double(dram) / total : 0), \"nvme\": \(total > 0 ? Double(s.gets) / total : 0)}"
    }

    func prefetchJSON(_ t: TierStatistics?) -> String {
        guard let prefetcher, let t else { return "{\"enabled\": false}" }
        let h = prefetcher.statistics()
        return "{\"enabled\": true, \"hinted\": \(h.hinted), \"loaded\": \(h.loaded), \"loaded_hinted\": \(h.loadedHinted), "
            + "\"loaded_chain\": \(h.loadedChain), \"loaded_learned\": \(h.loadedLearned), \"loaded_from_cluster\": \(h.loadedFromCluster), \"already_resident\": \(h.alreadyResident), "
            + "\"missing\": \(h.missing), \"dropped\": \(h.dropped), \"late\": \(h.late), \"expired\": \(h.expired), "
            + "\"failed\": \(h.failed), \"used\": \(t.prefetchUsed), \"wasted\": \(t.prefetchWasted), \"pending\": \(t.prefetchPending), "
            + "\"successor_links\": \(h.successors), \"workers\": \(prefetcher.settings.workers), "
            + "\"bandwidth_bytes_per_second\": \(prefetcher.settings.bandwidth), \"depth\": \(prefetcher.settings.depth)}"
    }
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

/// The daemon's log (swift-log; `twfs` sends it to standard error, the journal under systemd).
let daemonLog = Logger(label: "twfs")

/// Logs a problem a person should know about (a refused corrupt block, a failed commit).
func log(_ message: String) {
    daemonLog.warning("\(message)")
}
