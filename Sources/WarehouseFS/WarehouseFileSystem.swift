// WarehouseFS: the file system of docs/design.md ("Naming", "Block file semantics", "Tenants") over
// the block store, the DRAM tiers, the prefetcher and the cluster tier. Every handler returns a value
// or an errno and acts as its caller; FuseBridge (the only importer of libfuse) turns requests into
// calls and sends one reply each. No CFuse here: the tests drive it in-process with any caller
// (`CallerInspector`). Thread-safety: handlers run concurrently on libfuse's worker threads; the lock
// order is `nodes`, then a `FileNode.state`, then a `PendingWrite.state`, and none of these is held
// while calling the store, the tiers or the cluster.
import BlockStore
import ClusterTier
import ControlPlane
import DRAMTier
import Logging
import Platform
import Prefetcher
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// Settings of the mount that the file system needs.
public struct MountSettings: Sendable {
    /// How long the kernel may cache names and attributes of committed blocks (they are immutable).
    public var entryTimeout: Double = 60
    public var attributeTimeout: Double = 60
    /// How long the kernel may remember that a name inside a namespace is absent (a negative entry), so
    /// engines' `exists` of blocks nobody stored costs no round trip. Safe without invalidation: it is
    /// given only while nobody writes the name, and a writer's `create` goes through the kernel, which
    /// replaces the negative entry. With a cluster tier, no longer than the tier's own memory of a miss
    /// (another node may publish the block).
    public var negativeTimeout: Double = 10
    public var storeDirectory: String = ""
    /// Committed blocks also enter the DRAM tier (as a miss would: S3-FIFO's small ring, so blocks
    /// never read again leave without pushing out hot ones). The next turn of a conversation reads
    /// what the last one wrote.
    public var admitWrites = true
    /// Which reads of committed blocks go through the kernel's page cache (docs/fuse.md "Reading").
    public var readCache: ReadCache = .reused
    public var limits = ResourceLimits()

    public init() {}
}

/// Which opens of committed blocks read through the kernel's page cache (`keep_cache`) and which straight
/// from the daemon (`direct_io`: one copy, from the DRAM tier or the verified record into the reader's
/// buffer, instead of a copy into fresh page-cache pages and a second one out of them).
public enum ReadCache: String, Sendable, CaseIterable {
    /// A block read again within `ReadCache.reuseWindow` of its last read is put into the page cache by
    /// the daemon after that read, and read through it from then on; others directly. Needs a kernel that lets a
    /// `direct_io` file be mapped shared (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6); without it, `always`.
    case reused
    /// Every read through the page cache.
    case always

    /// How soon a second read makes a block worth keeping in the page cache (on top of the DRAM tier).
    public static let reuseWindowNanoseconds: UInt64 = 10_000_000_000
}

/// An errno a handler answers with.
public struct FSError: Error, Equatable, Sendable {
    public let code: Int32
    /// For ENOENT from a lookup: how long the kernel may remember the absence (0: ask again each time).
    public var absenceTimeout: Double = 0
    public init(_ code: Int32) { self.code = code }
    /// A name that does not exist, which the kernel may remember as absent for `seconds`.
    public static func absent(cacheFor seconds: Double) -> FSError {
        var e = FSError(ENOENT)
        e.absenceTimeout = seconds
        return e
    }
    /// The errno of a store or system error; anything else is EIO.
    public init(_ error: any Error) {
        if let e = error as? StoreError { code = e.errnoCode } else if let e = error as? SystemError { code = e.code } else { code = EIO }
    }
}

public typealias FSResult<T> = Result<T, FSError>

/// A lookup's answer: the attributes and how long the kernel may cache them.
public struct Entry: Sendable {
    public var attributes: stat
    public var entryTimeout: Double
    public var attributeTimeout: Double
}

/// The file system. See the module comment for its thread-safety and lock order.
public final class WarehouseFileSystem: Sendable {
    public let store: BlockStore
    /// The shared-memory DRAM tiers, when the mount has them.
    public let tiers: DRAMTiers?
    /// How `.tw/dram` tells clients to reach the tiers (the broker's socket), when there are tiers.
    public let tierSocket: String?
    /// Loads blocks into the tier before they are read (hints, chain links, learned order).
    public let prefetcher: Prefetcher?
    /// The tier shared with other nodes through a cluster (`twfs --cluster`), when the mount has one.
    public let cluster: ClusterTier?
    let settings: MountSettings
    let inspector: any CallerInspector
    let logger: Logger
    let nodes = OrderedMutex(.inodeTable, NodeTable())
    let staging: StagingPool
    let limits: ResourceLedger
    let verified = VerifiedBlocks()
    let scratch = ScratchPool()
    /// Online compaction and other long control commands run on threads of their own.
    let compaction: OnlineCompaction
    let jobs = ControlJobs()
    let engines = EngineReports()
    let counters = OperationCounters()
    let startedSeconds = wallClockNanoseconds() / 1_000_000_000
    /// Where the tier's memory comes from (for the status).
    let tierMemory: String?
    /// Tells the kernel to forget a cached name (set by `FuseSession` once mounted).
    let entryInvalidator = Mutex<(@Sendable (UInt64, String) -> Void)?>(nil)
    let attributeInvalidator = Mutex<(@Sendable (UInt64) -> Void)?>(nil)
    /// Whether the kernel agreed to map files opened with `direct_io` (set once, when the mount starts).
    let directReadsMappable = Atomic<Bool>(false)
    /// Puts re-read blocks into the kernel's page cache (set by `FuseSession` once mounted).
    let pageCachePusher = Mutex<PageCachePusher?>(nil)
    /// Whether `pageCachePusher` is set: asked by every open, which need not take the lock for it.
    let pushesToPageCache = Atomic<Bool>(false)

    public init(store: BlockStore, tiers: DRAMTiers?, tierSocket: String?, settings: MountSettings,
                prefetch: PrefetchSettings = PrefetchSettings(), cluster: ClusterTier? = nil,
                inspector: any CallerInspector = ProcCallerInspector(), logger: Logger = Logger(label: "twfs")) {
        self.store = store
        self.cluster = cluster
        self.tiers = tiers
        self.tierSocket = tierSocket
        self.settings = settings
        self.inspector = inspector
        self.logger = logger
        tierMemory = tiers?.storage.reason
        var fetch: (@Sendable (String, String) -> Bool)? = nil
        if let cluster {
            fetch = { ns, key in
                if case .stored = cluster.fetch(namespace: ns, key: key, rememberAbsence: false) { return true }
                return false
            }
        }
        // Loaded blocks (hinted, learned, found by following the log) enter the tier under the read path's rule.
        let admits: @Sendable (LocatedBlock) -> Bool = { [store] located in
            store.accessChain(of: located)?.admitsItsBlockToSharedTier ?? false
        }
        prefetcher = tiers.map { Prefetcher(store: store, tier: $0, settings: prefetch, fetchMissing: fetch, admits: admits) }
        compaction = OnlineCompaction(store: store)
        staging = StagingPool(regionSize: store.configuration.maxBlockSize)
        limits = ResourceLedger(limits: settings.limits)
        for ns in store.namespaces() {
            do {
                try tiers?.namespaceChanged(id: ns.id, name: ns.name, owner: ns.owner, group: ns.group, mode: ns.mode)
            } catch {
                logger.warning("twfs: namespace \(ns.name) gets no DRAM tier: \(error)")
            }
        }
        // Blocks the store removes by itself (expiry, `twctl evict`) leave the DRAM tier and the kernel's
        // name cache too (committed names are cached for 60 s).
        store.observeRemovals { [weak self] ns, key in
            guard let self, let info = self.store.namespace(named: ns) else { return }
            self.tiers?.remove(BlockKey(namespace: ns, key: key), namespaceID: info.id)
            self.invalidateEntry(namespace: info, key: key)
        }
    }

    /// Logs a problem a person should know about (a refused corrupt block, a failed commit).
    func warn(_ message: String) { logger.warning("\(message)") }

    /// How to put bytes into an inode's cached pages (libfuse's NOTIFY_STORE): `store(ino, offset, bytes)`
    /// returns 0 or -errno. Re-read blocks are pushed there after their reader got its bytes; nil stops it.
    public func setPageCacheStore(_ store: (@Sendable (UInt64, Int, UnsafeRawBufferPointer) -> Int32)?) {
        let old = pageCachePusher.withLock { p in
            defer { p = store.map { [counters] in PageCachePusher(store: $0, pushed: { counters.count(.pageCachePush) }) } }
            pushesToPageCache.store(store != nil, ordering: .relaxed)
            return p
        }
        old?.close()
    }

    /// What the kernel agreed to at the mount's start: whether a file opened with `direct_io` may be
    /// mapped shared. Without that, reads keep the page cache, or `mmap` of a block would fail (ENODEV).
    public func kernelNegotiated(directIOMappable: Bool) {
        directReadsMappable.store(directIOMappable, ordering: .relaxed)
        guard settings.readCache == .reused else { return }
        if directIOMappable {
            logger.info("twfs: blocks not read in the last \(ReadCache.reuseWindowNanoseconds / 1_000_000_000) s are read with direct I/O (one copy); re-read blocks go into the page cache")
        } else {
            logger.info("twfs: every read goes through the page cache: this kernel cannot map files opened with direct I/O (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6)")
        }
    }

    /// How the file system tells the kernel to forget a cached name (set by the FUSE session once mounted).
    public func setEntryInvalidator(_ invalidate: (@Sendable (UInt64, String) -> Void)?) {
        entryInvalidator.withLock { $0 = invalidate }
    }

    /// How the file system tells the kernel to forget an inode's cached attributes.
    public func setAttributeInvalidator(_ invalidate: (@Sendable (UInt64) -> Void)?) {
        attributeInvalidator.withLock { $0 = invalidate }
    }

    /// How long the kernel may cache an inode's attributes (committed blocks never change).
    public func attributeTimeout(_ ino: UInt64) -> Double { InodeNumber.kind(ino) == .file ? settings.attributeTimeout : 1 }

    /// Makes the kernel look a name up again (after the daemon itself removed the block).
    func invalidateEntry(namespace ns: NamespaceInfo, key: String) {
        guard let invalidate = entryInvalidator.withLock({ $0 }) else { return }
        let (path, name) = BlockPath.split(key: key)
        var dir = DirectoryID.namespaceRoot
        if !path.isEmpty {
            for component in BlockPath.components(of: path) {
                guard let next = store.lookupDirectory(namespaceID: ns.id, parent: dir, name: String(component)) else { return }
                dir = next
            }
        }
        invalidate(InodeNumber.directory(ns.id, dir), name)
    }

    /// A namespace was made or changed (owner, mode): the DRAM tier follows its security domain.
    func namespaceChanged(_ ns: NamespaceInfo) {
        do {
            try tiers?.namespaceChanged(id: ns.id, name: ns.name, owner: ns.owner, group: ns.group, mode: ns.mode)
        } catch {
            warn("twfs: namespace \(ns.name) gets no DRAM tier: \(error)")
        }
        cluster?.namespaceChanged(ns)
    }

    /// Ends background work this file system started (online compaction, jobs, prefetch).
    public func stop() {
        compaction.stop()
        jobs.stop()
        prefetcher?.stop()
    }
}
