import BlockStore
import DRAMTier
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// Whether a namespace's committed blocks go to the shared tier (`.tw/ctl`: `ns-set ns=NS share=...`).
public enum SharePolicy: String, Sendable, CaseIterable {
    /// Not published, and misses do not look in the pool.
    case off
    /// Published in the background after close returns.
    case async
    /// Published before close returns (one try within the timeout; on failure it is queued as `async`).
    case sync
}

/// Settings of the shared tier (`twfs --cluster CONF --pool POOL`).
public struct RemoteSettings: Sendable {
    /// Blocks waiting to be published; a commit that finds the queue full is not shared (counted).
    public var queueCapacity = 4096
    /// How long a name the pool did not have answers ENOENT without asking again.
    public var negativeSeconds = 2.0
    /// After a call timed out or the connection failed, misses answer at once for this long instead
    /// of each waiting for the timeout; the publisher keeps retrying and ends it when a call works.
    public var backoffSeconds = 1.0
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
        case publish(namespace: String, key: String)
        case touch(name: String, seconds: UInt64)
    }

    struct Statistics {
        var queued = 0
        var published = 0
        var publishedBytes: UInt64 = 0
        var publishFailures = 0
        var dropped = 0
        var syncPublished = 0
        var fetched = 0
        var fetchedBytes: UInt64 = 0
        var misses = 0
        var negativeHits = 0
        var fetchFailures = 0
        var skippedUnavailable = 0
        var corrupt = 0
        var touches = 0
        var connects = 0
        var connectFailures = 0
        var lastError: String?
    }

    struct State {
        var queue: [Job] = []
        var head = 0
        var policies: [String: SharePolicy] = [:]
        var negative: [BlockKey: UInt64] = [:]
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

    // MARK: Policy

    public func policy(of namespace: String) -> SharePolicy {
        lock.withLock { state.policies[namespace] ?? settings.defaultPolicy }
    }

    func setPolicy(_ policy: SharePolicy, of namespace: String) {
        lock.withLock { state.policies[namespace] = policy }
    }

    // MARK: Write path

    /// After a commit: publishes the block now (`sync`) or queues it (`async`).
    ///
    /// - Parameter payload: the committed bytes, valid during the call (the staging region).
    func committed(namespace: String, key: String, payload: UnsafeRawBufferPointer, metadata: BlockMetadata, checksum: UInt64?) {
        switch policy(of: namespace) {
        case .off: return
        case .async: enqueue(.publish(namespace: namespace, key: key))
        case .sync:
            let commit = store.locate(namespace: namespace, key: key).map { UInt64($0.commitSeconds) * 1_000_000_000 } ?? wallClockNanoseconds()
            let object = RemoteRecord.encode(namespace: namespace, key: key, payload: payload, metadata: metadata,
                                             commitNanoseconds: commit, payloadChecksum: checksum)
            do {
                try object.withBytes { try tier.publish(name: RemoteRecord.objectName(namespace: namespace, key: key), object: $0) }
                lock.withLock {
                    state.stats.published += 1
                    state.stats.syncPublished += 1
                    state.stats.publishedBytes += UInt64(object.count)
                    noteSuccess()
                }
            } catch {
                lock.withLock {
                    state.stats.publishFailures += 1
                    noteFailure(error)
                }
                enqueue(.publish(namespace: namespace, key: key))
            }
        }
    }

    /// Queues a job; a full queue drops it (back-pressure on the writers would stall commits on the cluster).
    func enqueue(_ job: Job) {
        lock.withLock {
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
    func fetch(namespace: String, key: String) -> RemoteFetch {
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
        let name = RemoteRecord.objectName(blockKey)
        let object: RemoteObject?
        do {
            object = try tier.fetch(name: name)
        } catch {
            lock.withLock {
                state.stats.fetchFailures += 1
                noteFailure(error)
            }
            return .unavailable
        }
        guard let object else {
            lock.withLock {
                state.stats.misses += 1
                remember(absent: blockKey, now: now)
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
        let touch = lock.withLock { () -> Bool in
            state.stats.fetched += 1
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
                } catch {
                    lock.withLock {
                        state.stats.connectFailures += 1
                        state.stats.lastError = "\(error)"
                        if !state.stopping { lock.wait(nanoseconds: UInt64(settings.backoffSeconds * 1e9)) }
                    }
                    continue
                }
            }
            let job = lock.withLock { () -> Job? in
                if state.pending == 0 && !state.stopping { lock.wait(nanoseconds: 1_000_000_000) }
                guard state.pending > 0, !state.stopping else { return nil }
                let job = state.queue[state.head]
                state.head += 1
                if state.head >= 1024 && state.head * 2 >= state.queue.count {
                    state.queue.removeFirst(state.head)
                    state.head = 0
                }
                return job
            }
            guard let job else { continue }
            do {
                try perform(job)
            } catch {
                let retry = (error as? RemoteTierError).map { if case .unavailable = $0 { true } else { false } } ?? false
                lock.withLock {
                    if case .publish = job { state.stats.publishFailures += 1 }
                    noteFailure(error)
                    // Kept for when the cluster is back (front of the queue: order is kept).
                    if retry {
                        if state.head > 0 { state.head -= 1; state.queue[state.head] = job } else { state.queue.insert(job, at: 0) }
                        if !state.stopping { lock.wait(nanoseconds: UInt64(settings.backoffSeconds * 1e9)) }
                    }
                }
            }
        }
    }

    private func perform(_ job: Job) throws {
        switch job {
        case .touch(let name, let seconds):
            try tier.touch(name: name, seconds: seconds)
            lock.withLock { state.stats.touches += 1 }
        case .publish(let namespace, let key):
            // Gone meanwhile (removed, evicted): nothing to share.
            guard let located = store.locate(namespace: namespace, key: key),
                  let data = try? store.read(located),
                  let metadata = try? store.metadata(namespace: namespace, key: key) else { return }
            let object = data.withBytes { payload in
                RemoteRecord.encode(namespace: namespace, key: key, payload: payload, metadata: metadata,
                                    commitNanoseconds: UInt64(located.commitSeconds) * 1_000_000_000, payloadChecksum: data.checksum)
            }
            try object.withBytes { try tier.publish(name: RemoteRecord.objectName(namespace: namespace, key: key), object: $0) }
            lock.withLock {
                state.stats.published += 1
                state.stats.publishedBytes += UInt64(object.count)
                noteSuccess()
            }
        }
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
        var policies: [String: SharePolicy]
    }

    func snapshot() -> Snapshot {
        let connected = tier.isConnected
        return lock.withLock { Snapshot(connected: connected, depth: state.pending, stats: state.stats, policies: state.policies) }
    }

    /// The "remote" object of `.tw/status`.
    func json() -> String {
        let s = snapshot()
        let t = s.stats
        let policies = s.policies.sorted { $0.key < $1.key }.map { "\(jsonString($0.key)): \(jsonString($0.value.rawValue))" }
        return "{\"enabled\": true, \"location\": \(jsonString(tier.location)), \"connected\": \(s.connected), "
            + "\"queue_depth\": \(s.depth), \"queue_capacity\": \(settings.queueCapacity), \"queued\": \(t.queued), "
            + "\"published\": \(t.published), \"published_bytes\": \(t.publishedBytes), \"sync_published\": \(t.syncPublished), "
            + "\"publish_failures\": \(t.publishFailures), \"dropped\": \(t.dropped), "
            + "\"fetched\": \(t.fetched), \"fetched_bytes\": \(t.fetchedBytes), \"misses\": \(t.misses), "
            + "\"negative_hits\": \(t.negativeHits), \"fetch_failures\": \(t.fetchFailures), "
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
