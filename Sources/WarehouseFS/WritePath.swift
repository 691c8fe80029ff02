import BlockStore
import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// The bytes of a block being written: a reserved region the size of the largest block, written at any
/// offsets by any number of threads, committed to the store when its writer closes (docs/fuse.md
/// "Writing").
///
/// Thread-safety: `state` guards everything but the payload bytes, which are written outside the lock
/// (the region never moves; writers of one block write disjoint ranges or accept POSIX's unspecified
/// result for overlapping ones). A range being copied is `inFlight` until the copy is done, so no read
/// of the staged bytes ever shows what the region held before.
final class PendingWrite: Sendable {
    let region: ReservedRegion
    /// Thread group of the creating process: only it sees the name before commit.
    let creator: Int32
    /// The creating user: its staged bytes and pending blocks are charged to it.
    let creatorUID: UInt32
    /// The namespace whose quota the block is charged to.
    let namespaceID: UInt16
    let state: OrderedMutex<State>

    struct State: Sendable {
        var length = 0
        /// Byte ranges written so far; the gaps are zeroed before anyone reads the staged bytes.
        var written = WrittenRanges()
        /// Ranges whose bytes are being copied in right now (not readable yet).
        var inFlight: [Range<Int>] = []
        /// Checksum of the bytes [0, checksummed) while they arrive in order; nil once they do not.
        var checksum: StreamingChecksum? = StreamingChecksum()
        var checksummed = 0
        var metadata = BlockMetadata()
        /// Owner and mode the block gets (the creator's, the create mode; write bits dropped at commit).
        var ownership: BlockOwnership
        /// The writer set the mode (fchmod): kept as given at commit, write bits included.
        var modeSet = false
        var openHandles = 0
        /// Handles not yet closed once (FLUSH): the close that brings this to zero commits.
        var unflushed = 0
        /// Set once the block has been committed, discarded or failed; later writes are refused.
        var finished = false
        var failure: Int32 = 0
        /// Staged bytes and quota bytes charged for this block so far.
        var stagedCharge: UInt64 = 0
        var quotaCharge: UInt64 = 0
        /// A committed block that enters the DRAM tier at RELEASE, from the staging region (see `commit`).
        var tierAdmission: (key: String, sequence: UInt64, length: Int, checksum: UInt64?)?
    }

    init(region: ReservedRegion, creator: Int32, creatorUID: UInt32, namespaceID: UInt16, ownership: BlockOwnership) {
        self.region = region
        self.creator = creator
        self.creatorUID = creatorUID
        self.namespaceID = namespaceID
        state = OrderedMutex(.pendingWrite, State(ownership: ownership))
    }

    /// Zeroes the bytes no writer filled (and none is filling), so readers of the staged block (and the
    /// committed record) see zeros there and never bytes of the block the region held before. Call with
    /// `state` locked.
    static func zeroGaps(_ s: inout State, region: ReservedRegion) {
        var covered = s.written
        for r in s.inFlight { covered.insert(r) }
        for gap in covered.gaps(upTo: s.length) {
            region.zero(gap.lowerBound, count: gap.count)
            s.written.insert(gap)
        }
    }
}

/// Sorted, disjoint byte ranges of a staged block that writers have filled. A block written front to
/// back is one range; parallel writers of different layers make a few.
struct WrittenRanges: Sendable {
    private(set) var ranges: [Range<Int>] = []

    mutating func insert(_ r: Range<Int>) {
        guard !r.isEmpty else { return }
        if let last = ranges.last, last.upperBound == r.lowerBound {
            ranges[ranges.count - 1] = last.lowerBound..<r.upperBound  // the common, sequential case
            return
        }
        var merged = r
        var kept: [Range<Int>] = []
        for x in ranges {
            if x.upperBound < merged.lowerBound || x.lowerBound > merged.upperBound {
                kept.append(x)
            } else {
                merged = min(x.lowerBound, merged.lowerBound)..<max(x.upperBound, merged.upperBound)
            }
        }
        kept.append(merged)
        ranges = kept.sorted { $0.lowerBound < $1.lowerBound }
    }

    /// Drops everything at or past `length` (a truncation).
    mutating func clip(to length: Int) {
        ranges = ranges.compactMap { $0.lowerBound >= length ? nil : $0.lowerBound..<min($0.upperBound, length) }
    }

    /// The parts of [0, length) no writer filled.
    func gaps(upTo length: Int) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var at = 0
        for r in ranges where r.lowerBound < length {
            if r.lowerBound > at { out.append(at..<r.lowerBound) }
            at = max(at, r.upperBound)
        }
        if at < length { out.append(at..<length) }
        return out
    }
}

/// Buffers for the bytes of writes that are not staged (control files, discarded writes): a few
/// buffers of the largest write, reused, so floods of such writes neither allocate per write nor leave
/// freed chunks behind in the heap (at most one buffer per worker thread writing at once).
///
/// Thread-safety: the free list is behind a mutex.
final class ScratchPool: Sendable {
    static let size = 1 << 20
    private let free = OrderedMutex<[AlignedBuffer]>(.leaf, [])

    func using<R>(_ count: Int, _ body: (AlignedBuffer) -> R) -> R {
        guard count <= Self.size else { return body(AlignedBuffer(capacity: max(count, 1))) }
        let buffer = free.withLock { $0.popLast() } ?? AlignedBuffer(capacity: Self.size)
        defer { free.withLock { $0.append(buffer) } }
        return body(buffer)
    }
}

/// Reserved regions for blocks being written, reused so a write does not map and unmap each time.
///
/// Thread-safety: the free list is behind a mutex.
final class StagingPool: Sendable {
    let regionSize: Int
    private let free = OrderedMutex<[ReservedRegion]>(.leaf, [])
    private let keep: Int

    init(regionSize: Int, keep: Int = 16) {
        self.regionSize = regionSize
        self.keep = keep
    }

    func take() throws -> ReservedRegion {
        if let r = free.withLock({ $0.popLast() }) { return r }
        return try ReservedRegion(capacity: regionSize)
    }

    /// Returns a region. Its bytes are not cleared here: the next block zeroes whatever its writers
    /// leave unwritten before anyone reads it, and reads skip ranges still being copied
    /// (`PendingWrite.zeroGaps`). Pages past `retainedBytes` go back to the kernel.
    func give(_ region: ReservedRegion, used: Int) {
        if used > retainedBytes { region.release(beyond: retainedBytes) }
        free.withLock { list in if list.count < keep { list.append(region) } }
    }

    /// Bytes of each pooled region that stay resident between blocks.
    let retainedBytes = 64 << 20
}

/// Writing: create, open for writing, write, close (commit), release, truncate of blocks being written.
extension WarehouseFileSystem {
    /// Staged memory and quota are charged in steps of this many bytes, so a stream of small writes
    /// takes the ledgers' locks rarely.
    static let chargeStep = 1 << 20

    /// `open(O_CREAT)` of a name the kernel did not find.
    public func create(parent: UInt64, name: [UInt8], flags: Int32, mode: UInt32, caller: Caller) -> FSResult<(Entry, OpenFile)> {
        let dir: DirectoryContext, key: String
        switch blockEntryOf(parent: parent, name: name) {
        case .success(let found): (dir, key) = found
        case .failure(let e): return .failure(e)
        }
        if key.utf8.count > BlockName.maxPathLength + 1 { return .failure(FSError(ENAMETOOLONG)) }
        let exclusive = flags & O_EXCL != 0
        // A block that exists (committed since the kernel's lookup): first write wins.
        if store.contains(namespace: dir.namespace.name, key: key) {
            if exclusive { return .failure(FSError(EEXIST)) }
            let entry = discardEntry(namespace: dir.namespace, key: key, directory: dir.id)
            guard let node = nodes.withLock({ $0.nodes[UInt64(entry.attributes.st_ino)] }) else { return .failure(FSError(ENOENT)) }
            return .success((entry, OpenFile(.discard(ReadState(node: node, located: store.locate(namespace: dir.namespace.name, key: key), verified: verified)),
                                             opener: caller)))
        }
        if let node = pendingNode(namespace: dir.namespace, key: key, caller: caller), let pending = node.state.withLock({ $0.pending }) {
            if exclusive { return .failure(FSError(EEXIST)) }
            pending.state.withLock {
                $0.openHandles += 1
                $0.unflushed += 1
            }
            node.state.withLock { $0.lookups += 1 }
            return .success((Entry(attributes: fileAttributes(of: node), entryTimeout: 0, attributeTimeout: 0),
                             OpenFile(.write(WriteState(node: node, pending: pending)), opener: caller)))
        }
        let pending: PendingWrite
        switch beginPending(caller: caller, namespaceID: dir.namespace.id, ownership: BlockOwnership(uid: caller.uid, gid: caller.gid, mode: mode & 0o7777)) {
        case .success(let p): pending = p
        case .failure(let e): return .failure(e)
        }
        // The default create mode (0666 less the umask, as open(p, "wb") and most programs ask) commits
        // read-only (0444); a mode the creator chose (tar's 0600 from an archive) is kept as given.
        if mode & 0o7777 != 0o666 & ~caller.umask { pending.state.withLock { $0.modeSet = true } }
        let blockKey = BlockKey(namespace: dir.namespace.name, key: key)
        let node = nodes.withLock { table -> FileNode in
            let node = FileNode(ino: table.allocate(), namespaceID: dir.namespace.id, namespace: dir.namespace.name, key: key,
                                directory: dir.id, pending: pending)
            node.state.withLock { $0.lookups = 1 }
            table.nodes[node.ino] = node
            table.addPending(node, key: blockKey, directory: dir.id)
            return node
        }
        // The name is not cached (others must keep asking: to them it is absent until the commit), but the
        // new inode's attributes may be, briefly: only this writer reaches the inode, the kernel keeps its
        // size itself as the writer writes, and the open that follows the create checks permissions on
        // these attributes instead of asking for them again (one GETATTR less per block written).
        return .success((Entry(attributes: fileAttributes(of: node), entryTimeout: 0, attributeTimeout: 1),
                         OpenFile(.write(WriteState(node: node, pending: pending)), opener: caller)))
    }

    /// A fresh pending write for the caller, charged to its per-user bounds.
    func beginPending(caller: Caller, namespaceID: UInt16, ownership: BlockOwnership, creator: Int32? = nil) -> FSResult<PendingWrite> {
        if let e = limits.beginBlock(uid: caller.uid) { return .failure(e) }
        let region: ReservedRegion
        do { region = try staging.take() } catch {
            limits.endBlock(uid: caller.uid)
            return .failure(FSError(ENOMEM))
        }
        let pending = PendingWrite(region: region, creator: creator ?? inspector.threadGroup(of: caller.pid), creatorUID: caller.uid,
                                   namespaceID: namespaceID, ownership: ownership)
        pending.state.withLock {
            $0.openHandles = 1
            $0.unflushed = 1
        }
        return .success(pending)
    }

    /// `open` of an existing inode. Committed blocks are read-only: write access is refused (EACCES)
    /// unless the caller's open had O_CREAT (as `open(p, "wb")` and `torch.save` do): then writes are
    /// accepted and discarded at close, first write wins. FUSE strips O_CREAT from OPEN, so the flags
    /// are read from the caller's system call.
    public func open(ino: UInt64, flags: Int32, caller: Caller) -> FSResult<(OpenFile, keepCache: Bool, directIO: Bool)> {
        switch InodeNumber.kind(ino) {
        case .control(let f): return openControlFile(f, flags: flags, caller: caller)
        case .file: break
        default: return .failure(FSError(EISDIR))
        }
        guard let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(FSError(ENOENT)) }
        let writing = flags & O_ACCMODE != O_RDONLY || flags & O_APPEND != 0
        if let pending = node.state.withLock({ $0.pending }) {
            guard pending.creator == inspector.threadGroup(of: caller.pid) else { return .failure(FSError(ENOENT)) }
            if let real = inspector.openFlags(of: caller.pid), real & O_CREAT != 0 {
                // Another open(O_CREAT) of a name this process is writing (racing writer threads):
                // an independent writer with its own bytes; the first to close commits, never a mix.
                let ownership = pending.state.withLock { $0.ownership }
                switch beginPending(caller: caller, namespaceID: node.namespaceID, ownership: ownership, creator: pending.creator) {
                case .success(let own): return .success((OpenFile(.write(WriteState(node: node, pending: own)), opener: caller), false, true))
                case .failure(let e): return .failure(e)
                }
            }
            let ok = pending.state.withLock { s -> Bool in
                if s.finished { return false }
                s.openHandles += 1
                s.unflushed += 1
                return true
            }
            guard ok else { return .failure(FSError(ENOENT)) }
            return .success((OpenFile(.write(WriteState(node: node, pending: pending)), opener: caller), false, true))
        }
        let found = store.locateWithAccess(namespaceID: node.namespaceID, namespace: node.namespace, key: node.key)
        let located = found?.block
        if node.state.withLock({ $0.discard }) { return .success((OpenFile(.discard(ReadState(node: node, located: located, verified: verified)), opener: caller), false, true)) }
        guard let located else { return .failure(FSError(ENOENT)) }
        // The name now holds another record than this inode showed (deleted or evicted, then written
        // again): the kernel's cached pages are of the old bytes, so make it look the name up again.
        let shown = node.state.withLock { $0.sequence }
        if shown != 0 && shown != located.sequence { return .failure(FSError(ESTALE)) }
        if writing {
            // O_CREAT without O_EXCL (also with O_APPEND: `open(p, "ab")`) is accepted and discarded.
            guard let real = inspector.openFlags(of: caller.pid), real & O_CREAT != 0 else { return .failure(FSError(EACCES)) }
            // The kernel reused a cached name for this open(O_CREAT): ESTALE makes it look the name up
            // again, and that lookup gives the writer a stand-in inode (see `lookup`).
            return .failure(FSError(ESTALE))
        }
        let admitted = found?.access?.admitsItsBlockToSharedTier ?? false
        if admitted { prefetcher?.awaitLoad(of: located.blockKey) }
        let pinned = admitted ? tiers?.pin(located.blockKey, namespaceID: node.namespaceID) : nil
        // While this block's readers are served by the page cache, so are most likely those of the blocks
        // after it: loading those into the DRAM tier would only take memory bandwidth from the readers
        // (with more blocks than the tier holds, it halved page-cache reads, Tools/bench/fs_bench.py).
        // Unless the reader maps the tier (an engine's connector): it looks there first, and the page
        // cache does not serve it there (a replay of 8 requests at once without hints: 0.89 of Belady's
        // DRAM hit ratio with the rule applied to it, 0.96 without).
        // The same holds from the first open that expects the pages there (the daemon pushed them, or an
        // earlier reader filled them), not only once a reader found them all: with more blocks than the
        // tier holds, the prefetch workers otherwise spent a pass over pushed blocks loading their
        // successors from NVMe, and took the CPU the readers' copies needed (docs/benchmarks.md).
        let (cached, expectsCachedPages) = readsThroughPageCache(node)
        let speculate = !(expectsCachedPages || node.state.withLock { $0.servedByPageCache })
            || (tiers?.isClient(process: inspector.threadGroup(of: caller.pid)) ?? false)
        prefetcher?.noteRead(namespace: node.namespace, namespaceID: node.namespaceID, name: node.key, process: caller.pid,
                             speculate: speculate, position: located.logPosition)
        // keep_cache also on a direct open: without it the kernel would drop the block's cached pages,
        // which stay valid (a committed block never changes; a rewritten name gets another inode).
        let state = ReadState(node: node, located: located, pinned: pinned, verified: verified,
                              throughPageCache: cached, expectsCachedPages: expectsCachedPages)
        return .success((OpenFile(.read(state), opener: caller), true, !cached))
    }

    /// Whether an open of a committed block reads through the kernel's page cache or directly
    /// (`ReadCache`). Directly, each read is one copy from the DRAM tier or the verified record into the
    /// reader's buffer; through the page cache, a block's first read costs two (into fresh page-cache
    /// pages, then out of them), and later reads none. So the page cache is worth its copy and its
    /// memory (the DRAM tier holds the block already) only for a block that is read again: a block read
    /// directly within `ReadCache.reuseWindow` of its last read is put into the page cache by the daemon
    /// after its reader is done (`PageCachePusher`), and its next opens read from there.
    /// A page-cache open that found gone the pages an earlier one had filled (the kernel reclaimed
    /// them, or someone dropped them) filled them again, at the page cache's slower pace; whether they
    /// stay is unknown, so the block's next read is direct, and the one after it finds out. (Backing off
    /// further, 1, 2, 4 ... direct reads after misses in a row, was tried: a daemon cannot see a page
    /// cache hit, only the absence of requests, so blocks whose pages had come back stayed direct, and
    /// cached reads fell from 13 to 6 GB/s in `dram_bench.py`.)
    /// Returns whether this open reads through the page cache, and whether its pages should be there
    /// already (an earlier page-cache reader filled them, or the daemon pushed them: `pagesFilled`).
    func readsThroughPageCache(_ node: FileNode) -> (cached: Bool, expectsCachedPages: Bool) {
        let always = settings.readCache == .always || !directReadsMappable.load(ordering: .relaxed)
        let pushes = pushesToPageCache.load(ordering: .relaxed)
        let now = monotonicNanoseconds()
        return node.state.withLock { s in
            // Without a pusher (no mount), a re-read fills the pages through the page cache itself.
            let reread = !pushes && s.wasReadRecently(now: now)
            let cached = always || !s.readDirectNext && (s.servedByPageCache || s.pagesFilled || reread)
            guard cached else { return (false, false) }
            defer { s.pagesFilled = true }
            return (true, s.pagesFilled)
        }
    }

    /// What a handle's first READ request tells about the block's pages (`readsThroughPageCache`). Noted
    /// when it arrives, not at RELEASE: the kernel sends RELEASE without waiting for it, so releases of
    /// consecutive readers may reach the daemon out of order, while a reader's READs come before it
    /// returns from `read`.
    func noteFirstRead(_ r: ReadState) {
        let now = monotonicNanoseconds()
        let push = r.node.state.withLock { s -> Bool in
            defer { s.lastReadNanoseconds = now }
            s.servedByPageCache = false
            // A page-cache reader that needs the daemon for pages that were there: they went (its reads
            // put them back). Any READ counts, not only one of the first page: the kernel's readahead
            // after a drop does not always start there, and with only those counted, one thread's reads
            // with the pages dropped fell from 0.90 to 0.67-0.71 of memfs --direct-io (dram_bench.py).
            s.readDirectNext = r.throughPageCache && r.expectsCachedPages
            return s.wasReadRecently(now: now) && !r.throughPageCache && !s.pagesFilled
        }
        if push { r.pushToPageCache.store(true, ordering: .relaxed) }
    }

    /// A released handle that saw no READ: through the page cache, its reader found every page there
    /// (or read nothing); directly, it read nothing, which says nothing. A re-read block read directly
    /// goes into the page cache now, from the bytes this handle served.
    func noteReadReleased(_ r: ReadState) {
        if r.throughPageCache && !r.wasRead.load(ordering: .relaxed) {
            r.node.state.withLock { $0.servedByPageCache = true }
        }
        guard r.pushToPageCache.load(ordering: .relaxed), let pusher = pageCachePusher.withLock({ $0 }) else { return }
        if let data = r.block.withLock({ $0 }) {
            pusher.push(r.node, source: data.buffer, bytes: data.buffer.bytes(data.offset, count: data.count))
        } else if let pinned = r.pinned, pinned.isIntact() {
            // The pointer stays valid while the pin lives, and the job holds the pin.
            pusher.push(r.node, source: pinned, bytes: pinned.withBytes { $0 })
        }
    }

    /// Writes `count` bytes at `offset`: `fill` copies them to the destination it is given (the staging
    /// region, or scratch memory for writes that are discarded or control input) and returns how many.
    public func write(_ handle: OpenFile, count: Int, offset: Int, fill: (UnsafeMutableRawPointer) -> Int) -> FSResult<Int> {
        switch handle.kind {
        case .discard:
            return scratch.using(count) { .success(fill($0.pointer)) }
        case .lines(let input):
            return scratch.using(count) { buffer in
                let n = fill(buffer.pointer)
                return writeLines(input, bytes: buffer.bytes(count: n), caller: handle.opener).map { n }
            }
        case .command(let c):
            guard count <= ControlRequestLimit.bytes else { return .failure(FSError(E2BIG)) }
            return scratch.using(count) { buffer in
                let n = fill(buffer.pointer)
                let ok = c.state.withLock { s -> Bool in
                    guard s.request.count + n <= ControlRequestLimit.bytes else { return false }
                    s.request.append(contentsOf: buffer.bytes(count: n))
                    return true
                }
                return ok ? .success(n) : .failure(FSError(E2BIG))
            }
        case .write(let w):
            return writeStaged(w, count: count, offset: offset, fill: fill)
        case .read, .generated, .directory:
            return .failure(FSError(EBADF))
        }
    }

    private func writeStaged(_ w: WriteState, count: Int, offset: Int, fill: (UnsafeMutableRawPointer) -> Int) -> FSResult<Int> {
        let end = offset + count
        let limit = w.pending.region.capacity
        guard offset >= 0, end <= store.configuration.maxBlockSize, end <= limit else {
            // The block can no longer be whole: close reports EFBIG and nothing is committed.
            w.pending.state.withLock { $0.failure = EFBIG }
            return .failure(FSError(EFBIG))
        }
        if let e = charge(w.pending, key: w.node.key, upTo: end) { return .failure(e) }
        counters.wrote(bytes: count)
        let open = w.pending.state.withLock { s -> Bool in
            if s.finished { return false }
            s.length = max(s.length, end)
            s.inFlight.append(offset..<end)
            return true
        }
        guard open else { return .failure(FSError(EBADF)) }
        let copied = fill(w.pending.region.pointer + offset)
        return w.pending.state.withLock { s -> FSResult<Int> in
            if let i = s.inFlight.firstIndex(of: offset..<end) { s.inFlight.remove(at: i) }
            guard copied == count else {
                s.failure = EIO
                return .failure(FSError(EIO))
            }
            s.written.insert(offset..<end)
            // Bytes that arrive in order are checksummed now, so the commit needs no pass over them.
            if let checksum = s.checksum {
                if offset == s.checksummed {
                    checksum.update(UnsafeRawBufferPointer(start: w.pending.region.pointer + offset, count: count))
                    s.checksummed = end
                } else {
                    s.checksum = nil
                }
            }
            return .success(count)
        }
    }

    /// Charges staged memory (to the writer's user) and quota (to the namespace) for a block that now
    /// reaches `end` bytes, in steps of `chargeStep`. `EDQUOT`/`ENOSPC` past a bound; the block then
    /// cannot be whole, and its close reports the error.
    private func charge(_ pending: PendingWrite, key: String, upTo end: Int) -> FSError? {
        let (staged, quota) = pending.state.withLock { ($0.stagedCharge, $0.quotaCharge) }
        let step = UInt64(Self.chargeStep)
        let want = (UInt64(end) + step - 1) / step * step
        if want > staged {
            if let e = limits.stage(uid: pending.creatorUID, bytes: want - staged) {
                pending.state.withLock { $0.failure = e.code }
                return e
            }
            pending.state.withLock { $0.stagedCharge = want }
        }
        // The namespace's quota is charged as bytes are written (the record's size, header included).
        if let ns = store.namespace(id: pending.namespaceID), ns.quotaBytes > 0 {
            let record = BlockStore.chargedBytes(payloadBytes: end, keyLength: key.utf8.count)
            if record > quota {
                // A whole step when it fits (fewer reservations for a stream of small writes), else just
                // what the record needs: near the quota, the last bytes are not refused for the rounding.
                let target = (record + step - 1) / step * step
                var charged = target
                do { try store.reserveQuota(namespaceID: ns.id, bytes: target - quota) } catch {
                    do {
                        try store.reserveQuota(namespaceID: ns.id, bytes: record - quota)
                        charged = record
                    } catch {
                        let e = FSError(error)
                        pending.state.withLock { $0.failure = e.code }
                        return e
                    }
                }
                pending.state.withLock { $0.quotaCharge = charged }
            }
        }
        return nil
    }

    /// `close` of a descriptor: commits the block when this is its writer's last open handle, so the
    /// error (EFBIG, ENOSPC, EDQUOT, EIO) reaches the closing process and the block is visible when
    /// close returns. How each case is told apart is in docs/fuse.md ("When a block is committed").
    public func flush(_ handle: OpenFile, caller: Caller) -> FSError? {
        switch handle.kind {
        case .lines(let input):
            let last = input.finish()
            if !last.isEmpty { _ = handleLines(input.purpose, [last], caller: handle.opener) }
            return nil
        case .write(let w):
            return flushWrite(w, caller: caller)
        default:
            return nil
        }
    }

    private func flushWrite(_ w: WriteState, caller: Caller) -> FSError? {
        // A close by another process (a forked child closing inherited descriptors at exec or exit)
        // neither commits nor drops the writer's block.
        if inspector.threadGroup(of: caller.pid) != w.pending.creator { return nil }
        // The caller's descriptor table first. While the table is in use, this is an explicit close: a
        // process's files are closed at exit only after every thread sharing the table has let go of it,
        // and it then reads empty. So the usual close costs one look at the table; only a close that
        // finds it empty also reads /proc/TID/stat, to tell an exit from a kill (docs/fuse.md).
        let otherHandles = w.node.state.withLock { ($0.writerHandles[w.pending.creator] ?? 1) - 1 }
        let table = inspector.descriptors(of: caller.pid, onInode: w.node.ino, limit: otherHandles + 1)
        let exit = table.inUse ? .running : inspector.exitState(of: caller.pid)
        if exit == .killed {
            // Killed by a signal (SIGKILL, OOM) with the block open: nothing is left, written or not,
            // and the name stays free for the next writer.
            w.pending.state.withLock { $0.finished = true }
            return nil
        }
        let firstFlush = w.flushed.withLock { f -> Bool in
            defer { f = true }
            return !f
        }
        let lastHandle = w.pending.state.withLock { s -> Bool in
            if firstFlush { s.unflushed -= 1 }
            return s.unflushed <= 0 && !s.finished
        }
        // The close of one duplicate among several (`dup`, `dup2`, the shell's `exec 3>f; echo >&3`,
        // `cmd > f` closing the original after dup2 to stdout) is not the writer's last: the writer still
        // holds a descriptor, and the block waits for that one's close (or the exit, or RELEASE). A
        // process that is exiting is done with the file, whatever its table still shows.
        guard lastHandle, exit == .exiting || table.onInode <= otherHandles else {
            return w.pending.state.withLock { $0.failure != 0 ? FSError($0.failure) : nil }
        }
        return commit(w.node, w.pending)
    }

    public func release(_ handle: OpenFile) {
        switch handle.kind {
        case .write(let w):
            w.released()
            let commitNow = w.pending.state.withLock { s -> Bool in
                s.openHandles -= 1
                return s.openHandles == 0 && !s.finished
            }
            if commitNow, let e = commit(w.node, w.pending) {
                warn("twfs: block \(w.node.namespace)/\(w.node.key) not committed: \(String(cString: strerror(e.code)))")
            }
            let done = w.pending.state.withLock { $0.openHandles == 0 && $0.finished }
            guard done else { return }
            admitCommitted(w.node, w.pending)
            if w.node.state.withLock({ $0.pending === w.pending }) {
                detachPending(w.node, w.pending)
            } else {
                retire(w.pending)
            }
        case .directory:
            releaseDirectory(handle)
        case .read(let r), .discard(let r):
            if r.sharesVerifiedCopy, let located = r.located { verified.release(located) }
            noteReadReleased(r)
        default:
            break
        }
    }

    /// Copies a committed block into the DRAM tier from its staging region (before the region is reused).
    func admitCommitted(_ node: FileNode, _ pending: PendingWrite) {
        guard let tiers, let admission = pending.state.withLock({ s in defer { s.tierAdmission = nil }; return s.tierAdmission }) else { return }
        admit(tiers, (node.namespace, admission.key, BlockKey(namespace: node.namespace, key: admission.key)), namespaceID: node.namespaceID, sequence: admission.sequence,
              bytes: UnsafeRawBufferPointer(start: pending.region.pointer, count: admission.length), checksum: admission.checksum,
              readSoon: false)
    }

    /// Commits a block being written; first write wins, so a name that exists keeps its bytes.
    func commit(_ node: FileNode, _ pending: PendingWrite) -> FSError? {
        let (length, metadata, proceed, failure, checksum, ownership, quota) = pending.state.withLock {
            s -> (Int, BlockMetadata, Bool, Int32, UInt64?, BlockOwnership, UInt64) in
            if s.finished { return (0, s.metadata, false, s.failure, nil, s.ownership, 0) }
            s.finished = true
            PendingWrite.zeroGaps(&s, region: pending.region)
            let sum = s.checksummed == s.length ? s.checksum?.digest : nil
            let quota = s.quotaCharge
            s.quotaCharge = 0
            return (s.length, s.metadata, true, s.failure, sum, s.ownership, quota)
        }
        guard proceed else { return failure != 0 ? FSError(failure) : nil }
        if failure != 0 {
            store.releaseQuota(namespaceID: node.namespaceID, bytes: quota)
            return FSError(failure)
        }
        let (key, unlinked) = node.state.withLock { ($0.key, $0.unlinked) }
        if unlinked {
            store.releaseQuota(namespaceID: node.namespaceID, bytes: quota)
            return nil
        }
        var stored = metadata
        // A committed block is read-only: its mode shows no write bits unless the writer set a mode
        // explicitly (fchmod while writing, as tar x and cp -p do), which is kept as given.
        let modeSet = pending.state.withLock { $0.modeSet }
        stored.ownership = BlockOwnership(uid: ownership.uid, gid: ownership.gid, mode: modeSet ? ownership.mode : ownership.mode & ~0o222)
        do {
            let bytes = UnsafeRawBufferPointer(start: pending.region.pointer, count: length)
            let outcome = try store.put(namespace: node.namespace, key: key, payload: bytes, metadata: stored,
                                        stagedInPlace: true, payloadChecksum: checksum, quotaReservation: quota)
            counters.count(.commit)
            guard case .stored(let sequence) = outcome else { return nil }
            prefetcher?.noteCommit(namespace: node.namespace, namespaceID: node.namespaceID, name: key, parent: metadata.parent)
            cluster?.committed(namespace: node.namespace, key: key, payload: bytes, metadata: stored, checksum: checksum)
            // Only the bytes that were stored (first write wins: a losing writer's are discarded). They
            // enter the tier at RELEASE, which the kernel sends after `close` has returned: the copy (and,
            // while the tier fills, the kernel clearing its fresh pages) is not the writer's to wait for.
            // The staging region holds the bytes until then.
            if settings.admitWrites, tiers != nil, admitsToTier(namespaceID: node.namespaceID, key: key, ownership: stored.ownership!) {
                pending.state.withLock { $0.tierAdmission = (key, sequence, length, checksum) }
            }
            return nil
        } catch {
            let e = FSError(error)
            if let s = error as? StoreError, case .tooLarge = s {} else { warn("twfs: commit of \(node.namespace)/\(key) failed: \(error)") }
            pending.state.withLock { $0.failure = e.code }
            return e
        }
    }

    /// After the last handle of a written block closed: the node now shows the committed block (or is
    /// gone), and the staging region goes back to the pool.
    func detachPending(_ node: FileNode, _ pending: PendingWrite) {
        let (key, directory) = node.state.withLock { s -> (String, UInt32) in
            s.pending = nil
            return (s.key, s.directory)
        }
        let attributes = store.attributes(namespace: node.namespace, key: key)
        node.state.withLock {
            $0.sequence = attributes?.sequence ?? 0
            $0.last = attributes
        }
        nodes.withLock { table in
            table.removePending(node, key: BlockKey(namespace: node.namespace, key: key), directory: directory)
            if node.state.withLock({ $0.lookups == 0 }) { table.nodes[node.ino] = nil }
        }
        retire(pending)
    }

    /// Gives back what a finished pending write held: its region, staged memory, pending-block count
    /// and any quota still reserved.
    func retire(_ pending: PendingWrite) {
        let (length, staged, quota) = pending.state.withLock { s -> (Int, UInt64, UInt64) in
            defer {
                s.stagedCharge = 0
                s.quotaCharge = 0
            }
            return (s.length, s.stagedCharge, s.quotaCharge)
        }
        staging.give(pending.region, used: length)
        limits.unstage(uid: pending.creatorUID, bytes: staged)
        limits.endBlock(uid: pending.creatorUID)
        if quota > 0 { store.releaseQuota(namespaceID: pending.namespaceID, bytes: quota) }
    }

    /// Truncation. A block being written may be resized. A committed block is never changed: the
    /// truncation the kernel sends for `open(O_CREAT|O_TRUNC)` of it is answered with its unchanged
    /// attributes (first write wins; readers keep their size and cached pages); any other is EPERM.
    func setSize(ino: UInt64, size: Int, caller: Caller) -> FSResult<stat> {
        // The writable control files ignore O_TRUNC (`open(p, "w")` of .tw/prefetch); the others are read-only.
        if case .control(let f) = InodeNumber.kind(ino) {
            return f.mode & 0o222 != 0 ? attributes(of: ino) : .failure(FSError(EACCES))
        }
        guard case .file = InodeNumber.kind(ino) else { return .failure(FSError(EISDIR)) }
        guard let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(FSError(ENOENT)) }
        if node.state.withLock({ $0.discard }) { return .success(fileAttributes(of: node)) }
        guard let pending = node.state.withLock({ $0.pending }) else {
            if let flags = inspector.openFlags(of: caller.pid) {
                return flags & O_CREAT != 0 && flags & O_APPEND == 0 ? .success(fileAttributes(of: node)) : .failure(FSError(EACCES))
            }
            return .failure(FSError(EPERM))
        }
        guard size >= 0, size <= store.configuration.maxBlockSize else { return .failure(FSError(EFBIG)) }
        if let flags = inspector.openFlags(of: caller.pid), flags & O_CREAT != 0 {
            // The O_TRUNC of another writer's open(O_CREAT|O_TRUNC): it writes its own copy (see
            // `open`), so the bytes staged here are left alone.
            return .success(fileAttributes(of: node))
        }
        // Growing a block stages memory (the gap is zeroed at commit) and is charged as a write is.
        if size > pending.state.withLock({ $0.length }), let e = charge(pending, key: node.key, upTo: size) { return .failure(e) }
        pending.state.withLock { s in
            if size < s.length {
                s.written.clip(to: size)
                if s.checksummed > size { s.checksum = nil }
            }
            s.length = size
        }
        return .success(fileAttributes(of: node))
    }
}

/// The largest `.tw/ctl` request accepted.
enum ControlRequestLimit {
    static let bytes = 65536
}
