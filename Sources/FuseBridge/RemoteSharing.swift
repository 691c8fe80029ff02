import BlockStore
import DRAMTier
import Platform
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
enum RemoteFetch {
    /// The block was in the pool, verified and stored locally: the lookup can go on as a local hit.
    case stored
    case absent
    /// The cluster is down, slow or refused: treat as absent for now.
    case unavailable
    /// The object failed its checksum or names another block: refused.
    case corrupt
}

/// The daemon's side of the shared tier: a bounded queue of blocks to publish, drained by one thread
/// that also (re)connects; fetches of local misses with a short negative cache; the counters of
/// `.tw/status` ("remote") and the metrics.
///
/// Thread-safety: `fetch` and `enqueue` run on FUSE worker threads, `run` on its own thread. `state`
/// is only touched with `lock` held (hence `@unchecked Sendable`); the lock is never held while
/// calling the tier or the store. Lock order: `lock`, then nothing.
public final class RemoteSharing: @unchecked Sendable {
    public let tier: any RemoteTier
    let store: BlockStore
    let dram: DRAMTier?
    public let settings: RemoteSettings

    enum Job {
        /// `queued`: monotonic nanoseconds when the commit queued it (the publish lag).
        case publish(namespace: String, key: String, queued: UInt64)
        case touch(name: String, seconds: UInt64)
        /// The namespace's descriptor (`RemoteNamespace`), so other nodes can create it.
        case namespace(String)
    }

    struct Statistics {
        var queued = 0
        var published = 0
        var publishedBytes: UInt64 = 0
        var publishFailures = 0
        var dropped = 0
        /// Commits that found the queue full and waited for room.
        var backpressureWaits = 0
        var syncPublished = 0
        var fetched = 0
        var fetchedBytes: UInt64 = 0
        var misses = 0
        var negativeHits = 0
        /// Fetches that found another fetch of the same block in flight and took its result.
        var joinedFetches = 0
        var fetchFailures = 0
        var skippedUnavailable = 0
        var corrupt = 0
        var touches = 0
        var namespacesPublished = 0
        var namespacesImported = 0
        /// Commit to object stored, of the last published blocks.
        var publishLag = LatencyWindow()
        /// A fetch that found the block: the cluster read alone, and the whole fetch (read, verify, store).
        var clusterRead = LatencyWindow()
        var fetchTime = LatencyWindow()
        var connects = 0
        var connectFailures = 0
        var lastError: String?
    }

    struct State {
        var queue: [Job] = []
        var head = 0
        var negative: [BlockKey: UInt64] = [:]
        /// Blocks a fetch is bringing in now: a second fetch of one waits for it (single flight).
        var fetching: Set<BlockKey> = []
        var negativeNamespaces: [String: UInt64] = [:]
        var touched: [BlockKey: UInt64] = [:]
        var unavailableUntil: UInt64 = 0
        var consecutiveFailures = 0
        var stopping = false
        var stats = Statistics()
        var pending: Int { queue.count - head }
    }

    private let lock = ConditionLock()
    private var state = State()
    private var worker: BackgroundThread?

    public init(tier: any RemoteTier, store: BlockStore, dram: DRAMTier?, settings: RemoteSettings = RemoteSettings()) {
        self.tier = tier
        self.store = store
        self.dram = dram
        self.settings = settings
    }

    /// Starts the publisher thread, which connects (after `daemonize`: librados starts threads).
    public func start() {
        worker = BackgroundThread(name: "tw-remote") { [self] in run() }
    }

    /// Stops the publisher; what is still queued is not published.
    public func stop() {
        lock.withLock {
            state.stopping = true
            lock.broadcast()
        }
        worker?.join()
        worker = nil
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
    func namespaceChanged(_ ns: NamespaceInfo) {
        if policy(of: ns) != .off { enqueue(.namespace(ns.name)) }
    }

    /// A namespace this node does not have, created from the pool's descriptor when another node
    /// announced it; nil when the pool has none (or the cluster is away). Returns within the timeout.
    func importNamespace(_ name: String) -> NamespaceInfo? {
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

    // MARK: Write path

    /// After a commit: publishes the block now (`sync`) or queues it (`async`).
    ///
    /// - Parameter payload: the committed bytes, valid during the call (the staging region).
    func committed(namespace: String, key: String, payload: UnsafeRawBufferPointer, metadata: BlockMetadata, checksum: UInt64?) {
        switch policy(of: namespace) {
        case .off: return
        case .async: enqueue(.publish(namespace: namespace, key: key, queued: monotonicNanoseconds()), holdWriter: true)
        case .sync:
            let commit = store.locate(namespace: namespace, key: key).map { UInt64($0.commitSeconds) * 1_000_000_000 } ?? wallClockNanoseconds()
            let object = RemoteRecord.encode(namespace: namespace, key: key, payload: payload, metadata: metadata,
                                             commitNanoseconds: commit, payloadChecksum: checksum)
            do {
                try object.withBytes { try tier.publish(name: RemoteRecord.objectName(namespace: namespace, key: key), object: $0) }
                lock.withLock {
                    state.stats.syncPublished += 1
                    notePublished(bytes: object.count, lag: 0)
                }
            } catch {
                lock.withLock {
                    state.stats.publishFailures += 1
                    noteFailure(error)
                }
                enqueue(.publish(namespace: namespace, key: key, queued: monotonicNanoseconds()))
            }
        }
    }

    /// Queues a job. A full queue holds a committing writer (`holdWriter`) up to `backpressureSeconds`
    /// while the cluster is answering, then drops the job: commits never wait for a cluster that is
    /// down, and reads (touches) and the publisher itself (announcements) never wait at all.
    func enqueue(_ job: Job, holdWriter: Bool = false) {
        lock.withLock {
            if state.pending >= settings.queueCapacity && holdWriter {
                let deadline = monotonicNanoseconds() + UInt64(settings.backpressureSeconds * 1e9)
                state.stats.backpressureWaits += 1
                while state.pending >= settings.queueCapacity && !state.stopping {
                    let now = monotonicNanoseconds()
                    guard now < deadline, state.unavailableUntil <= now, tier.isConnected else { break }
                    lock.wait(nanoseconds: deadline - now)
                }
            }
            if state.pending >= settings.queueCapacity {
                state.stats.dropped += 1
                return
            }
            state.queue.append(job)
            state.stats.queued += 1
            lock.broadcast()
        }
    }

    // MARK: Read path

    /// Looks for a block the store does not have in the pool; stores it locally when found and sound.
    /// Returns within the tier's timeout.
    ///
    /// - Parameter rememberAbsence: whether a miss enters the negative cache (demand lookups; not hints).
    func fetch(namespace: String, key: String, rememberAbsence: Bool = true) -> RemoteFetch {
        if policy(of: namespace) == .off { return .absent }
        let blockKey = BlockKey(namespace: namespace, key: key)
        let now = monotonicNanoseconds()
        let skip = lock.withLock { () -> RemoteFetch? in
            if let until = state.negative[blockKey] {
                if until > now {
                    state.stats.negativeHits += 1
                    return .absent
                }
                state.negative[blockKey] = nil
            }
            if state.unavailableUntil > now || !tier.isConnected {
                state.stats.skippedUnavailable += 1
                return .unavailable
            }
            return nil
        }
        if let skip { return skip }
        // Single flight: a prefetch hint and the engine's read often ask for the same block at once.
        // The second must not answer "absent" while the first is storing it (the store refuses a second
        // writer of a name in flight): it waits for the first and takes what it found.
        let deadline = now + UInt64(settings.singleFlightWaitSeconds * 1e9)
        let (mine, waited) = lock.withLock { () -> (Bool, Bool) in
            var waited = false
            while state.fetching.contains(blockKey) {
                waited = true
                let t = monotonicNanoseconds()
                guard t < deadline else { return (false, true) }
                lock.wait(nanoseconds: deadline - t)
            }
            state.fetching.insert(blockKey)
            return (true, waited)
        }
        guard mine else { return .unavailable }
        defer {
            lock.withLock {
                state.fetching.remove(blockKey)
                lock.broadcast()
            }
        }
        if waited {
            if store.locate(namespace: namespace, key: key) != nil {
                lock.withLock { state.stats.joinedFetches += 1 }
                return .stored
            }
            if lock.withLock({ state.negative[blockKey].map { $0 > monotonicNanoseconds() } ?? false }) { return .absent }
        }
        let name = RemoteRecord.objectName(blockKey)
        let object: RemoteObject?
        let readStarted = monotonicNanoseconds()
        do {
            object = try tier.fetch(name: name)
        } catch {
            lock.withLock {
                state.stats.fetchFailures += 1
                noteFailure(error)
            }
            return .unavailable
        }
        let read = monotonicNanoseconds()
        guard let object else {
            lock.withLock {
                state.stats.misses += 1
                if rememberAbsence { remember(absent: blockKey, now: now) }
                noteSuccess()
            }
            return .absent
        }
        do {
            try object.withBytes { bytes in try RemoteRecord.withVerifiedPayload(bytes, namespace: namespace, key: key) { header, payload in
                let uncompressed = header.flags & RecordFormat.flagCompressedLZ4 == 0
                // The payload lies in a page-aligned buffer of ours with room to the next page: the
                // store may write it in place.
                _ = try store.put(namespace: namespace, key: key, payload: payload, metadata: header.metadata,
                                  commitNanoseconds: header.commitTimeNanoseconds, stagedInPlace: true,
                                  payloadChecksum: uncompressed ? header.payloadChecksum : nil)
                dram?.insert(blockKey, bytes: payload, checksum: uncompressed ? header.payloadChecksum : Checksum.xxh3(payload))
            } }
        } catch let e as StoreError {
            if case .corruption(let why) = e {
                log("twfs: refused a block from \(tier.location): \(why)")
                lock.withLock {
                    state.stats.corrupt += 1
                    remember(absent: blockKey, now: now)
                }
                return .corrupt
            }
            log("twfs: storing \(namespace)/\(key) fetched from \(tier.location) failed: \(e)")
            lock.withLock { state.stats.fetchFailures += 1 }
            return .unavailable
        } catch {
            lock.withLock { state.stats.fetchFailures += 1 }
            return .unavailable
        }
        let seconds = wallClockNanoseconds() / 1_000_000_000
        let done = monotonicNanoseconds()
        let touch = lock.withLock { () -> Bool in
            state.stats.fetched += 1
            state.stats.clusterRead.add(read - readStarted)
            state.stats.fetchTime.add(done - readStarted)
            state.stats.fetchedBytes += UInt64(object.count)
            noteSuccess()
            if state.touched.count > 1 << 20 { state.touched.removeAll() }
            let last = state.touched[blockKey] ?? 0
            guard seconds >= last + settings.touchIntervalSeconds else { return false }
            state.touched[blockKey] = seconds
            return true
        }
        if touch { enqueue(.touch(name: name, seconds: seconds)) }
        return .stored
    }

    /// Call with `lock` held.
    private func remember(absent key: BlockKey, now: UInt64) {
        if state.negative.count > 1 << 16 { state.negative.removeAll() }
        state.negative[key] = now + UInt64(settings.negativeSeconds * 1e9)
    }

    /// Call with `lock` held.
    private func notePublished(bytes: Int, lag: UInt64) {
        state.stats.published += 1
        state.stats.publishedBytes += UInt64(bytes)
        state.stats.publishLag.add(lag)
        noteSuccess()
    }

    /// Call with `lock` held.
    private func noteSuccess() {
        state.consecutiveFailures = 0
        state.unavailableUntil = 0
    }

    /// Call with `lock` held. A timeout or lost connection opens the back-off window; three failures
    /// in a row also drop the connection, so the publisher opens a fresh one.
    private func noteFailure(_ error: any Error) {
        state.stats.lastError = "\(error)"
        guard case .unavailable? = error as? RemoteTierError else { return }
        state.consecutiveFailures += 1
        state.unavailableUntil = monotonicNanoseconds() + UInt64(settings.backoffSeconds * 1e9)
    }

    // MARK: The publisher

    private func run() {
        while true {
            // Connect first (and again after failures); nothing is taken from the queue meanwhile.
            let (stopping, reconnect) = lock.withLock { (state.stopping, state.consecutiveFailures >= 3) }
            if stopping { return }
            if reconnect {
                tier.disconnect()
                lock.withLock { state.consecutiveFailures = 0 }
            }
            if !tier.isConnected {
                do {
                    try tier.connect()
                    lock.withLock {
                        state.stats.connects += 1
                        noteSuccess()
                    }
                    // Announce the shared namespaces (again: the pool may be new, or they were created
                    // while the cluster was away).
                    for ns in store.namespaces() { namespaceChanged(ns) }
                } catch {
                    lock.withLock {
                        state.stats.connectFailures += 1
                        state.stats.lastError = "\(error)"
                        if !state.stopping { lock.wait(nanoseconds: UInt64(settings.backoffSeconds * 1e9)) }
                    }
                    continue
                }
            }
            // Up to `publishBatch` jobs at once, so that many objects are in flight.
            let jobs = lock.withLock { () -> [Job] in
                if state.pending == 0 && !state.stopping { lock.wait(nanoseconds: 1_000_000_000) }
                guard state.pending > 0, !state.stopping else { return [] }
                let n = min(state.pending, max(1, settings.publishBatch))
                let jobs = Array(state.queue[state.head..<(state.head + n)])
                state.head += n
                lock.broadcast()   // room for writers held by a full queue
                if state.head >= 1024 && state.head * 2 >= state.queue.count {
                    state.queue.removeFirst(state.head)
                    state.head = 0
                }
                return jobs
            }
            if jobs.isEmpty { continue }
            let failures = perform(jobs)
            guard !failures.isEmpty else { continue }
            lock.withLock {
                var retry: [Job] = []
                for (job, error) in failures {
                    if case .publish = job { state.stats.publishFailures += 1 }
                    noteFailure(error)
                    // Kept for when the cluster is back (front of the queue: order is kept).
                    if case .unavailable = error { retry.append(job) }
                }
                if !retry.isEmpty {
                    state.queue.replaceSubrange(state.head..<state.head, with: retry)
                    if !state.stopping { lock.wait(nanoseconds: UInt64(settings.backoffSeconds * 1e9)) }
                }
            }
        }
    }

    /// Performs jobs; returns those that failed, with why.
    private func perform(_ jobs: [Job]) -> [(Job, RemoteTierError)] {
        var failures: [(Job, RemoteTierError)] = []
        var batch: [(job: Job, name: String, object: AlignedBuffer.Filled, queued: UInt64)] = []
        for job in jobs {
            switch job {
            case .touch(let name, let seconds):
                do throws(RemoteTierError) {
                    try tier.touch(name: name, seconds: seconds)
                    lock.withLock { state.stats.touches += 1 }
                } catch { failures.append((job, error)) }
            case .namespace(let name):
                // Gone or no longer shared meanwhile: nothing to announce.
                guard let ns = store.namespace(named: name), policy(of: ns) != .off else { continue }
                var failure: RemoteTierError? = nil
                RemoteNamespace.encode(ns).withUnsafeBytes { bytes in
                    do throws(RemoteTierError) { try tier.publish(name: RemoteNamespace.objectName(name), object: bytes) } catch { failure = error }
                }
                if let failure { failures.append((job, failure)) } else { lock.withLock { state.stats.namespacesPublished += 1 } }
            case .publish(let namespace, let key, let queued):
                // Gone meanwhile (removed, evicted): nothing to share.
                guard let located = store.locate(namespace: namespace, key: key),
                      let data = try? store.read(located),
                      let metadata = try? store.metadata(namespace: namespace, key: key) else { continue }
                let object = data.withBytes { payload in
                    RemoteRecord.encode(namespace: namespace, key: key, payload: payload, metadata: metadata,
                                        commitNanoseconds: UInt64(located.commitSeconds) * 1_000_000_000, payloadChecksum: data.checksum)
                }
                batch.append((job, RemoteRecord.objectName(namespace: namespace, key: key), object, queued))
            }
        }
        guard !batch.isEmpty else { return failures }
        let results = withExtendedLifetime(batch) {
            tier.publish(batch: batch.map { ($0.name, $0.object.buffer.bytes(count: $0.object.count)) })
        }
        let now = monotonicNanoseconds()
        lock.withLock {
            for (item, error) in zip(batch, results) where error == nil {
                notePublished(bytes: item.object.count, lag: now > item.queued ? now - item.queued : 0)
            }
        }
        for (item, error) in zip(batch, results) { if let error { failures.append((item.job, error)) } }
        return failures
    }

    // MARK: Capacity

    /// Removes the least recently used objects of the pool until it holds at most `targetBytes`
    /// (`twctl cluster gc`). Access times are those `touch` recorded (at most hourly per object and
    /// node), else the last write. Runs on the caller's thread; returns the JSON answer.
    func collectGarbage(targetBytes: UInt64) -> String {
        let started = monotonicNanoseconds()
        let objects: [RemoteObjectInfo]
        do { objects = try tier.inventory() } catch { return "{\"error\": \(jsonString("listing \(tier.location): \(error)"))}" }
        var total = objects.reduce(UInt64(0)) { $0 + $1.size }
        let before = total
        var removed = 0
        var removedBytes: UInt64 = 0
        var failure: String? = nil
        for object in objects.sorted(by: { ($0.accessSeconds, $0.name) < ($1.accessSeconds, $1.name) }) where total > targetBytes {
            do {
                try tier.remove(name: object.name)
            } catch {
                failure = "\(error)"
                break
            }
            total -= object.size
            removed += 1
            removedBytes += object.size
        }
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        return "{\"location\": \(jsonString(tier.location)), \"objects\": \(objects.count), \"bytes_before\": \(before), "
            + "\"target_bytes\": \(targetBytes), \"removed_objects\": \(removed), \"removed_bytes\": \(removedBytes), "
            + "\"bytes_after\": \(total), \"seconds\": \(seconds), \"error\": \(failure.map(jsonString) ?? "null")}"
    }

    // MARK: Figures

    struct Snapshot {
        var connected: Bool
        var depth: Int
        var stats: Statistics
    }

    func snapshot() -> Snapshot {
        let connected = tier.isConnected
        return lock.withLock { Snapshot(connected: connected, depth: state.pending, stats: state.stats) }
    }

    /// The "remote" object of `.tw/status`.
    func json() -> String {
        let s = snapshot()
        let t = s.stats
        let policies = store.namespaces().map { "\(jsonString($0.name)): \(jsonString(policy(of: $0).rawValue))" }
        return "{\"enabled\": true, \"location\": \(jsonString(tier.location)), \"connected\": \(s.connected), "
            + "\"queue_depth\": \(s.depth), \"queue_capacity\": \(settings.queueCapacity), \"queued\": \(t.queued), "
            + "\"published\": \(t.published), \"published_bytes\": \(t.publishedBytes), \"sync_published\": \(t.syncPublished), "
            + "\"publish_failures\": \(t.publishFailures), \"dropped\": \(t.dropped), \"backpressure_waits\": \(t.backpressureWaits), "
            + "\"publish_lag_ms\": \(t.publishLag.json()), \"fetch_ms\": \(t.fetchTime.json()), \"cluster_read_ms\": \(t.clusterRead.json()), "
            + "\"namespaces_published\": \(t.namespacesPublished), \"namespaces_imported\": \(t.namespacesImported), "
            + "\"fetched\": \(t.fetched), \"fetched_bytes\": \(t.fetchedBytes), \"misses\": \(t.misses), "
            + "\"negative_hits\": \(t.negativeHits), \"joined_fetches\": \(t.joinedFetches), \"fetch_failures\": \(t.fetchFailures), "
            + "\"skipped_unavailable\": \(t.skippedUnavailable), \"corrupt\": \(t.corrupt), \"touches\": \(t.touches), "
            + "\"failed\": \(t.publishFailures + t.fetchFailures + t.corrupt), "
            + "\"connects\": \(t.connects), \"connect_failures\": \(t.connectFailures), "
            + "\"default_share\": \(jsonString(settings.defaultPolicy.rawValue)), \"share\": {\(policies.joined(separator: ", "))}, "
            + "\"last_error\": \(t.lastError.map(jsonString) ?? "null")}"
    }

    /// The remote tier's lines of the Prometheus exposition.
    public func metricsText() -> String {
        let s = snapshot()
        let t = s.stats
        var text = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: Double) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        metric("tw_remote_connected", "gauge", "1 while connected to the shared tier's cluster", s.connected ? 1 : 0)
        metric("tw_remote_queue_depth", "gauge", "Blocks waiting to be published to the shared tier", Double(s.depth))
        metric("tw_remote_published_total", "counter", "Blocks published to the shared tier", Double(t.published))
        metric("tw_remote_published_bytes_total", "counter", "Bytes of objects published to the shared tier", Double(t.publishedBytes))
        metric("tw_remote_publish_lag_p99_seconds", "gauge", "99th percentile of commit-to-published time over the last 4096 blocks",
               t.publishLag.percentiles().p99 / 1e9)
        metric("tw_remote_fetch_p99_seconds", "gauge", "99th percentile of a fetch from the shared tier (read, verify, store) over the last 4096",
               t.fetchTime.percentiles().p99 / 1e9)
        metric("tw_remote_dropped_total", "counter", "Commits not shared because the publish queue was full", Double(t.dropped))
        metric("tw_remote_fetched_total", "counter", "Local misses served from the shared tier", Double(t.fetched))
        metric("tw_remote_fetched_bytes_total", "counter", "Bytes of objects fetched from the shared tier", Double(t.fetchedBytes))
        metric("tw_remote_misses_total", "counter", "Local misses the shared tier did not have", Double(t.misses))
        metric("tw_remote_failed_total", "counter", "Shared-tier calls that failed or timed out, and objects refused as corrupt",
               Double(t.publishFailures + t.fetchFailures + t.corrupt))
        metric("tw_remote_corrupt_total", "counter", "Objects from the shared tier refused by their checksums", Double(t.corrupt))
        return text
    }
}

/// The last `capacity` durations of something, for percentiles in the status (a ring: constant memory,
/// adding is O(1); percentiles sort a copy when the status is read).
struct LatencyWindow {
    static let capacity = 4096
    private var samples: [UInt64] = []
    private var next = 0

    mutating func add(_ nanoseconds: UInt64) {
        if samples.count < Self.capacity { samples.append(nanoseconds) } else { samples[next] = nanoseconds }
        next = (next + 1) % Self.capacity
    }

    /// Median, 99th percentile and largest, in nanoseconds (zeros when empty).
    func percentiles() -> (p50: Double, p99: Double, max: Double) {
        guard !samples.isEmpty else { return (0, 0, 0) }
        let sorted = samples.sorted()
        func at(_ p: Double) -> Double { Double(sorted[min(sorted.count - 1, Int(p * Double(sorted.count)))]) }
        return (at(0.5), at(0.99), Double(sorted.last!))
    }

    /// `{"p50": ms, "p99": ms, "max": ms}`.
    func json() -> String {
        let p = percentiles()
        return "{\"p50\": \(p.p50 / 1e6), \"p99\": \(p.p99 / 1e6), \"max\": \(p.max / 1e6)}"
    }
}
