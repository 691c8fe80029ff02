import BlockStore
import DRAMTier
import DequeModule
import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// Settings of the shared tier (`twfs --cluster CONF --pool POOL`).
public struct RemoteSettings: Sendable {
    /// Blocks waiting to be published. A commit that finds the queue full waits for room up to
    /// `backpressureSeconds` while the cluster answers (writers that outrun it slow down to its pace),
    /// then is not shared (counted as dropped); while the cluster is away it is dropped at once.
    public var queueCapacity = 4096
    public var backpressureSeconds = 0.1
    /// How long a name the pool did not have answers ENOENT without asking again. Short: another node
    /// may publish the block any moment, and a miss answered from here recomputes it (a lookup that
    /// asks again costs one round trip). Only demand lookups set it, not prefetch hints, which run ahead
    /// of the writer that is about to publish.
    public var negativeSeconds = 0.5
    /// Objects the publisher keeps in flight at once.
    public var publishBatch = 8
    /// After a call timed out or the connection failed, misses answer at once for this long instead
    /// of each waiting for the timeout; the publisher keeps retrying and ends it when a call works.
    public var backoffSeconds = 1.0
    /// Longest a fetch waits for another fetch of the same block (each returns within the tier's timeout).
    public var singleFlightWaitSeconds = 10.0
    /// Access times in the pool are refreshed at most this often per object (`twctl cluster gc`).
    public var touchIntervalSeconds: UInt64 = 3600
    /// The policy of namespaces `ns-set` did not set.
    public var defaultPolicy = SharePolicy.async

    public init() {}
}

/// What a lookup's look in the pool found.
public enum RemoteFetch: Sendable {
    /// The block was in the pool, verified and stored locally: the lookup can go on as a local hit.
    case stored
    case absent
    /// The cluster is down, slow or refused: treat as absent for now.
    case unavailable
    /// The object failed its checksum or names another block: refused.
    case corrupt
}

/// The daemon's side of the shared tier: a bounded queue of blocks to publish, drained by one thread
/// that also (re)connects (ClusterPublisher.swift); fetches of local misses with a short negative
/// cache and single flight (ClusterFetcher.swift); the figures of the status and the metrics
/// (ClusterStatistics.swift).
///
/// Thread-safety: `fetch` and `enqueue` run on FUSE worker threads, the publisher on its own thread.
/// `state` is only touched with `lock` held (hence `@unchecked Sendable`); `worker` is behind its own
/// mutex. Neither lock is held while calling the tier or the store. Lock order: `lock`, then nothing.
public final class ClusterTier: @unchecked Sendable {
    public let tier: any RemoteTier
    let store: BlockStore
    let dram: DRAMTiers?
    public let settings: RemoteSettings
    /// Where problems a person should know about go (the daemon's log).
    let log: @Sendable (String) -> Void

    enum Job {
        /// `queued`: monotonic nanoseconds when the commit queued it (the publish lag).
        case publish(namespace: String, key: String, queued: UInt64)
        case touch(name: String, seconds: UInt64)
        /// The namespace's descriptor (`RemoteNamespace`), so other nodes can create it.
        case namespace(String)
    }

    struct State {
        var queue = Deque<Job>()
        var negative: [BlockKey: UInt64] = [:]
        /// Blocks a fetch is bringing in now: a second fetch of one waits for it (single flight).
        var fetching: Set<BlockKey> = []
        var negativeNamespaces: [String: UInt64] = [:]
        var touched: [BlockKey: UInt64] = [:]
        var unavailableUntil: UInt64 = 0
        var consecutiveFailures = 0
        /// A publish failed because the cluster was away, and none has got through since: `sync` commits
        /// are queued instead of waiting out the timeout each (the publisher's retries find the way back).
        var publishingFails = false
        var stopping = false
        /// The counters of the `remote` status (the figures of the moment are filled in by `report()`).
        var stats = ClusterReport()
        /// Commit to object stored, of the last published blocks.
        var publishLag = LatencyWindow()
        /// A fetch that found the block: the whole fetch, and its parts in order: the cluster read, the
        /// record's verification (and decompression), the local store's put, the copy into the DRAM tier.
        var fetchTime = LatencyWindow()
        var clusterRead = LatencyWindow()
        var verifyTime = LatencyWindow()
        var storeTime = LatencyWindow()
        var tierTime = LatencyWindow()
        var pending: Int { queue.count }
    }

    let lock = ConditionLock()
    var state = State()
    private let worker = Mutex<BackgroundThread?>(nil)

    public init(tier: any RemoteTier, store: BlockStore, dram: DRAMTiers?, settings: RemoteSettings = RemoteSettings(),
                log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.log = log
        self.tier = tier
        self.store = store
        self.dram = dram
        self.settings = settings
    }

    /// Starts the publisher thread, which connects (after `daemonize`: librados starts threads).
    public func start() {
        worker.withLock { $0 = BackgroundThread(name: "tw-remote") { [self] in run() } }
    }

    /// Stops the publisher; what is still queued is not published.
    public func stop() {
        lock.withLock {
            state.stopping = true
            lock.broadcast()
        }
        let thread = worker.withLock { w -> BackgroundThread? in
            defer { w = nil }
            return w
        }
        thread?.join()
        tier.disconnect()
    }

    // MARK: Policy and namespaces

    /// The namespace's own policy (the namespace table), else the daemon's default.
    public func policy(of namespace: String) -> SharePolicy {
        store.namespace(named: namespace).map(policy(of:)) ?? settings.defaultPolicy
    }

    public func policy(of ns: NamespaceInfo) -> SharePolicy { ns.share ?? settings.defaultPolicy }

    /// After a namespace was created or its policy changed: announces it to the other nodes, unless it
    /// is not shared.
    public func namespaceChanged(_ ns: NamespaceInfo) {
        if policy(of: ns) != .off { enqueue(.namespace(ns.name)) }
    }

    /// A namespace this node does not have, created from the pool's descriptor when another node
    /// announced it; nil when the pool has none (or the cluster is away). Returns within the timeout.
    public func importNamespace(_ name: String) -> NamespaceInfo? {
        let now = monotonicNanoseconds()
        let skip = lock.withLock { () -> Bool in
            if let until = state.negativeNamespaces[name], until > now { return true }
            state.negativeNamespaces[name] = nil
            return state.unavailableUntil > now || !tier.isConnected
        }
        if skip { return nil }
        let object: RemoteObject?
        do { object = try tier.fetch(name: RemoteNamespace.objectName(name)) } catch {
            lock.withLock {
                state.stats.fetchFailures += 1
                noteFailure(error)
            }
            return nil
        }
        guard let described = object.flatMap({ o in o.withBytes { RemoteNamespace.decode($0, expecting: name) } }) else {
            if object != nil { log("twfs: refused the descriptor of namespace \(name) in \(tier.location): damaged") }
            lock.withLock {
                if state.negativeNamespaces.count > 4096 { state.negativeNamespaces.removeAll() }
                state.negativeNamespaces[name] = now + UInt64(settings.negativeSeconds * 1e9)
            }
            return nil
        }
        do {
            let ns = try store.createNamespace(name, owner: described.owner, group: described.group, mode: described.mode,
                                               compression: described.compression, ttlSeconds: described.ttlSeconds,
                                               share: described.share)
            lock.withLock { state.stats.namespacesImported += 1 }
            log("twfs: created namespace \(name) from \(tier.location)")
            return ns
        } catch StoreError.alreadyExists {
            return store.namespace(named: name)   // created meanwhile by another request
        } catch {
            log("twfs: creating namespace \(name) from \(tier.location) failed: \(error)")
            return nil
        }
    }
}
