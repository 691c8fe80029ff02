import BlockStore
import DRAMTier
import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// The verified copies of blocks that open read handles use: one per record, shared by every handle
/// that reads it (sixteen `O_DIRECT` readers of one 128 MiB block hold one copy, not sixteen), dropped
/// when the last of them is released. One load at a time per record: the kernel splits one large
/// `O_DIRECT` read into many requests that arrive at once on different workers, and each loading its
/// own copy would hold several copies of the block at the same moment.
///
/// Thread-safety: one condition lock guards the table; loading runs outside it, and requests for a
/// record being loaded wait for that load.
final class VerifiedBlocks: @unchecked Sendable {
    // Safe: `entries` is only touched with `lock` held.
    struct Key: Hashable {
        var block: BlockKey
        var sequence: UInt64
    }

    struct Entry {
        var data: BlockData?
        var users = 0
        var loading = false
    }

    private let lock = ConditionLock()
    private var entries: [Key: Entry] = [:]

    private static func key(_ located: LocatedBlock) -> Key { Key(block: located.blockKey, sequence: located.sequence) }

    /// Counts a handle of `located` as a user of its copy (once per handle, at open; `release` at release).
    func retain(_ located: LocatedBlock) {
        lock.withLock { entries[Self.key(located), default: Entry()].users += 1 }
    }

    func release(_ located: LocatedBlock) {
        lock.withLock {
            let k = Self.key(located)
            guard var entry = entries[k] else { return }
            entry.users -= 1
            entries[k] = entry.users > 0 || entry.loading ? entry : nil
        }
    }

    func cached(_ located: LocatedBlock) -> BlockData? {
        lock.withLock { entries[Self.key(located)]?.data }
    }

    /// The shared copy of `located`, loaded with `load` by the first request that needs it while the
    /// others wait. `fresh` says whether this call loaded it (the caller then admits it to the tier).
    /// Blocks of handles that did not `retain` (none today) are loaded and not kept.
    func copy(of located: LocatedBlock, load: () throws -> BlockData) throws -> (data: BlockData, fresh: Bool) {
        let k = Self.key(located)
        lock.lock()
        while true {
            guard let entry = entries[k] else {
                lock.unlock()
                return (try load(), true)
            }
            if let data = entry.data {
                lock.unlock()
                return (data, false)
            }
            if !entry.loading { break }
            lock.wait()
        }
        entries[k]!.loading = true
        lock.unlock()
        let result = Result { try load() }
        lock.lock()
        if entries[k] != nil {
            entries[k]!.loading = false
            if case .success(let data) = result { entries[k]!.data = data }
            if entries[k]!.users <= 0 { entries[k] = nil }
        }
        lock.broadcast()
        lock.unlock()
        return (try result.get(), true)
    }

    var count: Int { lock.withLock { entries.count } }
}

/// Reading: replies from the DRAM tier's pinned bytes, or from the verified record read from NVMe
/// (which then enters the DRAM tier), and reads of the caller's own block being written.
extension WarehouseFileSystem {
    public func read(_ handle: OpenFile, size: Int, offset: Int, reply: (UnsafeRawBufferPointer) -> Void) -> FSError? {
        switch handle.kind {
        case .command(let c):
            // The first read runs the request written so far; later reads page through its answer.
            let request = c.state.withLock { s -> [UInt8]? in s.answer == nil ? s.request : nil }
            if let request {
                let answer = execute(request: request, caller: handle.opener)
                c.state.withLock { if $0.answer == nil { $0.answer = answer } }
            }
            let answer = c.state.withLock { $0.answer ?? [] }
            let start = min(max(offset, 0), answer.count), end = min(start + max(size, 0), answer.count)
            answer.withUnsafeBytes { reply(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
            return nil
        case .generated(let bytes):
            let start = min(max(offset, 0), bytes.count), end = min(start + max(size, 0), bytes.count)
            bytes.withUnsafeBytes { reply(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
            return nil
        case .write(let w):
            return readStaged(w, size: size, offset: offset, reply: reply)
        case .read(let r), .discard(let r):
            if !r.wasRead.exchange(true, ordering: .relaxed) { noteFirstRead(r) }
            return readBlock(r, size: size, offset: offset, reply: reply)
        case .lines, .directory:
            return FSError(EBADF)
        }
    }

    /// Reads of a block the caller is writing: what was written, zeros in the gaps, and zeros for ranges
    /// still being copied in (a read concurrent with a write may see the bytes before it: zeros here).
    private func readStaged(_ w: WriteState, size: Int, offset: Int, reply: (UnsafeRawBufferPointer) -> Void) -> FSError? {
        let (length, inFlight) = w.pending.state.withLock { s -> (Int, [Range<Int>]) in
            PendingWrite.zeroGaps(&s, region: w.pending.region)
            return (s.length, s.inFlight)
        }
        let start = min(max(offset, 0), length), end = min(start + max(size, 0), length)
        let source = UnsafeRawBufferPointer(start: w.pending.region.pointer + start, count: end - start)
        if inFlight.allSatisfy({ $0.upperBound <= start || $0.lowerBound >= end }) {
            reply(source)
            return nil
        }
        let copy = AlignedBuffer(capacity: max(end - start, 1))
        copy.mutableBytes(count: end - start).copyMemory(from: source)
        for r in inFlight {
            let lo = max(r.lowerBound, start), hi = min(r.upperBound, end)
            if lo < hi { memset(copy.pointer + (lo - start), 0, hi - lo) }
        }
        reply(copy.bytes(count: end - start))
        return nil
    }

    private func readBlock(_ r: ReadState, size: Int, offset: Int, reply: (UnsafeRawBufferPointer) -> Void) -> FSError? {
        let began = monotonicNanoseconds()
        if let pinned = r.pinned, pinned.isIntact() {
            let served = pinned.withBytes { bytes -> Int in
                let start = min(max(offset, 0), bytes.count), end = min(start + max(size, 0), bytes.count)
                reply(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                return end - start
            }
            counters.read(tier: .dram, bytes: served, nanoseconds: monotonicNanoseconds() - began)
            return nil
        }
        guard let located = r.located else { return FSError(EIO) }
        let loaded: BlockData
        var fresh = false
        if let b = r.block.withLock({ $0 }) {
            loaded = b
        } else if let shared = verified.cached(located) {
            loaded = shared
            r.block.withLock { $0 = shared }
        } else {
            do {
                (loaded, fresh) = try verified.copy(of: located) { try store.read(located) }
                if fresh { counters.loadedForReader() }
            } catch let e as StoreError {
                if case .corruption(let why) = e { warn("twfs: refusing to serve \(r.node.namespace)/\(r.node.key): \(why)") }
                // A block evicted or deleted after open no longer has bytes to give.
                return FSError(e == .notFound ? EIO : e.errnoCode)
            } catch {
                return FSError(error)
            }
            r.block.withLock { $0 = loaded }
        }
        let served = loaded.withBytes { bytes -> Int in
            let start = min(max(offset, 0), bytes.count), end = min(start + max(size, 0), bytes.count)
            reply(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
            return end - start
        }
        counters.read(tier: .nvme, bytes: served, nanoseconds: monotonicNanoseconds() - began)
        // A miss loads the block into the DRAM tier (S3-FIFO decides whether it stays), so the next
        // reader, through the mount or the map, finds it there. After the reply: the copy (and, while
        // the tier fills, the kernel clearing its fresh pages) is not the reader's to wait for.
        if fresh, let tiers, admitsToTier(r.node) {
            loaded.withBytes { bytes in
                admit(tiers, (located.namespace, located.key, located.blockKey), namespaceID: r.node.namespaceID, sequence: located.sequence, bytes: bytes, checksum: loaded.checksum)
            }
        }
        return nil
    }

    /// Copies record `sequence` of a block into the DRAM tier (S3-FIFO decides whether it stays), unless
    /// the name was unlinked, renamed or written again meanwhile: then the tier must not keep these bytes.
    func admit(_ tiers: DRAMTiers, _ block: (namespace: String, key: String, blockKey: BlockKey), namespaceID: UInt16, sequence: UInt64,
               bytes: UnsafeRawBufferPointer, checksum: UInt64?, readSoon: Bool = true) {
        tiers.insert(block.blockKey, namespaceID: namespaceID, bytes: bytes, checksum: checksum ?? Checksum.xxh3(bytes), readSoon: readSoon)
        if store.attributes(namespace: block.namespace, key: block.key)?.sequence != sequence {
            tiers.remove(block.blockKey, namespaceID: namespaceID)
        }
    }

    /// Whether the block may enter the DRAM tier (`AccessChain.admitsToSharedTier`), with `ownership`.
    func admitsToTier(namespaceID: UInt16, key: String, ownership: BlockOwnership) -> Bool {
        guard let chain = store.accessChain(namespaceID: namespaceID, key: key) else { return false }
        return chain.admitsToSharedTier(block: ownership)
    }

    func admitsToTier(_ node: FileNode) -> Bool {
        store.accessChain(namespaceID: node.namespaceID, key: node.key,
                          block: BlockKey(namespace: node.namespace, key: node.key))?.admitsItsBlockToSharedTier ?? false
    }
}
