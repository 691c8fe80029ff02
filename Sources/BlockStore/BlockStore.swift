// BlockStore: the log-structured store of blocks on local disk (docs/format.md). Records are appended
// to segment files; an in-memory index maps (namespace, key) to where the record lies; segment
// summaries checkpoint the index so a restart reads them instead of the log; a journal keeps the
// directory trees of the namespaces. Eviction drops whole segments (copying hot and pinned blocks
// forward), compaction rewrites mostly-dead ones. Every read is checked against both checksums.
//
// Thread-safety: every public method may be called from any thread. One mutex (`state`) guards the
// index, the directory tree and the segment table and is held only for in-memory work, the directory
// journal's small appends and the rare segment roll; record reads and writes run outside it at offsets
// reserved under it.
import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// The log-structured block store: segments of records on local disk, an in-memory index, the
/// namespaces and their directory trees.
///
/// Lock order: `state`, then `DirectoryJournal`'s file (appended with `state` held), then a segment's
/// `GroupCommit` lock, then `wakeup`. No lock is held while calling back into the caller.
public final class BlockStore: Sendable {
    public let configuration: StoreConfiguration
    public let recovery: RecoveryReport
    let device: any StorageDevice
    let lockToken: Mutex<AnyObject?>
    let state: OrderedMutex<StoreState>
    let journal: DirectoryJournal
    let evictionPolicy: any EvictionPolicy
    let reinsertionPolicy: any ReinsertionPolicy
    let stopping = Mutex(false)
    /// Told of blocks removed by the store itself (expiry, `removeBlocks`), so caches drop them too.
    let removalObserver = Mutex<(@Sendable (String, String) -> Void)?>(nil)
    /// When maintenance last removed expired blocks (monotonic nanoseconds).
    let lastExpiry = Mutex<UInt64>(0)
    let wakeup = ConditionLock()
    let threads = Mutex<[BackgroundThread]>([])
    /// Signalled when the last write in flight finishes (`close` waits for it).
    let idle = ConditionLock()
    /// The sealed segment whose summary `blocksFollowing` decoded last (read ahead in log order).
    let logOrderSummary = Mutex<(segment: UInt32, entries: [SummaryEntry])?>(nil)
    /// Why `close` wrote no index snapshot (nil when it did, or has not run).
    let snapshotFailure = Mutex<String?>(nil)
    public var indexSnapshotFailure: String? { snapshotFailure.withLock { $0 } }

    /// Opens the store in `directory` (creating it; it must be the daemon's alone), recovering its index.
    public convenience init(directory: String, configuration: StoreConfiguration) throws {
        try self.init(device: DirectoryStorageDevice(directory: directory), configuration: configuration)
    }

    /// Opens the store on `device`: takes its lock, replays the directory journal, loads the summaries
    /// of sealed segments, scans the rest, truncates torn tails, and starts a new active segment.
    public init(device: any StorageDevice, configuration: StoreConfiguration) throws {
        let started = monotonicNanoseconds()
        self.device = device
        self.configuration = configuration
        evictionPolicy = configuration.eviction == .oldest ? OldestFirst() : ColdestFirst() as any EvictionPolicy
        reinsertionPolicy = AccessedShare(share: configuration.reinsertionShare)
        let token = try device.lockExclusively()
        var recovered = try StoreRecovery(device: device, configuration: configuration).recover()
        recovered.state.spareWanted = recovered.state.activeID + 1  // made by the first writer, outside the lock
        recovered.report.seconds = Double(monotonicNanoseconds() - started) / 1e9
        lockToken = Mutex(token)
        journal = recovered.journal
        state = OrderedMutex(.storeState, recovered.state)
        recovery = recovered.report
    }

    deinit {
        if !stopping.withLock({ $0 }) { try? close() }
    }

    /// Total and available bytes of the filesystem under the store.
    public func deviceSpace() -> (total: UInt64, available: UInt64) { device.space() }

    /// After a record's write into the page cache finished (a copy into memory, not a device round
    /// trip; the page cache survives a `kill -9` of the daemon): under `always`, returns once it is
    /// durable (writers share the sync). Under `batch`, returns at once unless the segment holds more than
    /// `StoreConfiguration.batchBacklogBytes` written since the last sync finished, a writer faster than
    /// the disk: then it waits for a sync too, so a power cut never loses more than that bound. A replica
    /// (a copy of a block the shared tier keeps) never waits.
    func settle(_ segment: Segment, wrote bytes: Int, replica: Bool = false) throws {
        let (ticket, unsynced) = segment.commit.writeCompleted(bytes: bytes)
        guard !replica else { return }
        let waits: Bool
        switch configuration.sync {
        case .always: waits = true
        case .batch: waits = unsynced > StoreConfiguration.batchBacklogBytes
        case .none: waits = false
        }
        if waits { try countingSyncFailure { try segment.commit.waitDurable(ticket: ticket, file: segment.file) } }
    }

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
        guard ttlSeconds <= NamespaceInfo.maxTTLSeconds else {
            throw StoreError.invalidName("a time to live of \(ttlSeconds) s is longer than 100 years")
        }
        return try state.withLock { st in
            if st.closed { throw StoreError.closed }
            if st.namespaces[name] != nil { throw StoreError.alreadyExists }
            guard let id = st.namespaces.nextFreeID() else { throw StoreError.noSpace("too many namespaces (65535)") }
            let ns = NamespaceInfo(id: id, name: name, owner: owner, group: group, mode: mode & 0o7777,
                                   compression: compression, createdSeconds: wallClockNanoseconds() / 1_000_000_000,
                                   ttlSeconds: ttlSeconds, share: share)
            var table = st.namespaces
            table.insert(ns)
            try device.replaceAtomically(NamespaceTable.fileName, bytes: table.encoded())
            st.namespaces = table
            st.directories.addNamespace(ns)
            return ns
        }
    }

    /// Changes a namespace's owner, mode or policies.
    ///
    /// - Throws: `.notFound`, `.invalidName` for a time to live over 100 years, `.io`.
    public func updateNamespace(_ name: String, _ change: (inout NamespaceInfo) -> Void) throws -> NamespaceInfo {
        try state.withLock { st in
            guard var ns = st.namespaces[name] else { throw StoreError.notFound }
            let id = ns.id
            change(&ns)
            ns.id = id
            ns.name = name
            ns.mode &= 0o7777
            guard ns.ttlSeconds <= NamespaceInfo.maxTTLSeconds else {
                throw StoreError.invalidName("a time to live of \(ns.ttlSeconds) s is longer than 100 years")
            }
            var table = st.namespaces
            table.insert(ns)
            try device.replaceAtomically(NamespaceTable.fileName, bytes: table.encoded())
            st.namespaces = table
            st.directories.updateNamespace(ns, now: wallClockNanoseconds())
            return ns
        }
    }

    /// Removes an empty namespace (no blocks, no directories).
    public func removeNamespace(_ name: String) throws {
        try state.withLock { st in
            guard let ns = st.namespaces[name] else { throw StoreError.notFound }
            if (st.usage[ns.id]?.blocks ?? 0) > 0 || st.directories.node(ns.id, DirectoryID.namespaceRoot)?.isEmpty == false {
                throw StoreError.notEmpty("namespace \(name)")
            }
            var table = st.namespaces
            table.remove(name)
            try device.replaceAtomically(NamespaceTable.fileName, bytes: table.encoded())
            st.namespaces = table
            st.usage[ns.id] = nil
            st.directories.removeNamespace(ns.id)
        }
    }

    public func namespace(named name: String) -> NamespaceInfo? { state.withLock { $0.namespaces[name] } }
    public func namespace(id: UInt16) -> NamespaceInfo? { state.withLock { $0.namespaces.byID[id] } }
    public func namespaces() -> [NamespaceInfo] { state.withLock { $0.namespaces.byID.values.sorted { $0.name < $1.name } } }
    public func usage(of id: UInt16) -> NamespaceUsage { state.withLock { $0.usage[id] ?? NamespaceUsage() } }

    // MARK: Quotas

    /// Reserves `bytes` of namespace `namespaceID`'s quota for a block being written, so concurrent
    /// writers can never together pass it. A reservation is handed to `put` (which releases it) or
    /// given back with `releaseQuota`.
    ///
    /// - Throws: `.quotaExceeded` when stored plus reserved bytes would pass the quota.
    public func reserveQuota(namespaceID: UInt16, bytes: UInt64) throws {
        guard bytes > 0 else { return }
        try state.withLock { st in
            guard let ns = st.namespaces.byID[namespaceID] else { throw StoreError.notFound }
            var u = st.usage[namespaceID] ?? NamespaceUsage()
            if ns.quotaBytes > 0 {
                let (total, overflow) = (u.storedBytes + u.reservedBytes).addingReportingOverflow(bytes)
                if overflow || total > ns.quotaBytes {
                    throw StoreError.quotaExceeded("namespace \(ns.name) holds \(u.storedBytes) of its \(ns.quotaBytes) bytes (\(u.reservedBytes) more being written); \(bytes) more do not fit")
                }
            }
            u.reservedBytes += bytes
            st.usage[namespaceID] = u
        }
    }

    /// Gives back a reservation (a block that was not committed).
    public func releaseQuota(namespaceID: UInt16, bytes: UInt64) {
        guard bytes > 0 else { return }
        state.withLock { st in
            guard var u = st.usage[namespaceID] else { return }
            u.reservedBytes = u.reservedBytes > bytes ? u.reservedBytes - bytes : 0
            st.usage[namespaceID] = u
        }
    }

    /// The bytes a block of `payloadBytes` takes in the store (its record, header page included): what
    /// a quota charges for it.
    public static func chargedBytes(payloadBytes: Int, keyLength: Int = 64) -> UInt64 {
        UInt64(RecordFormat.align(RecordFormat.fixedHeaderSize + BlockName.maxNamespaceLength + keyLength) + RecordFormat.align(payloadBytes))
    }

    // MARK: Statistics

    /// Counters and current figures.
    public func statistics() -> StoreStatistics {
        state.withLock { st in
            var s = StoreStatistics(counters: st.stats)
            s.capacityBytes = configuration.capacity
            s.blocks = st.index.count
            s.usedBytes = st.usedBytes
            s.segments = st.segments.count
            s.liveBytes = st.segments.values.reduce(0) { $0 + $1.liveBytes }
            s.deadBytes = st.segments.values.reduce(0) { $0 + $1.deadBytes }
            s.directories = st.directories.namespaces.values.reduce(0) { $0 + $1.nodes.count - 1 }
            s.namespaces = st.namespaces.byID.values.sorted { $0.name < $1.name }.map { ($0, st.usage[$0.id] ?? NamespaceUsage()) }
            return s
        }
    }

    /// Calls `observer(namespace, key)` for every block the store removes by itself (expiry,
    /// `removeBlocks`); unlink callers handle their own.
    public func observeRemovals(_ observer: @escaping @Sendable (String, String) -> Void) {
        removalObserver.withLock { $0 = observer }
    }
}
