import BlockStore
import Platform

/// The last `capacity` durations of something, for percentiles in the status (a ring: constant memory,
/// adding is O(1); percentiles sort a copy when the status is read).
struct LatencyWindow: Sendable {
    static let capacity = 4096
    private var samples: [UInt64] = []
    private var next = 0

    mutating func add(_ nanoseconds: UInt64) {
        if samples.count < Self.capacity { samples.append(nanoseconds) } else { samples[next] = nanoseconds }
        next = (next + 1) % Self.capacity
    }

    /// Median, 99th percentile and largest, in milliseconds (zeros when empty); nearest-rank percentiles.
    var milliseconds: ClusterReport.Percentiles {
        guard !samples.isEmpty else { return ClusterReport.Percentiles() }
        let sorted = samples.sorted()
        func rank(_ p: Double) -> Double {
            let index = max(0, Int((p * Double(sorted.count)).rounded(.up)) - 1)
            return Double(sorted[min(sorted.count - 1, index)]) / 1e6
        }
        return ClusterReport.Percentiles(p50: rank(0.5), p99: rank(0.99), max: Double(sorted.last!) / 1e6)
    }
}

/// What the shared tier reports (the `remote` part of the status and the `tw_remote_*` metrics).
public struct ClusterReport: Sendable {
    public struct Percentiles: Sendable, Equatable {
        public var p50 = 0.0
        public var p99 = 0.0
        public var max = 0.0
    }

    public var location = ""
    public var connected = false
    public var queueDepth = 0
    public var queueCapacity = 0
    public var queued = 0
    public var published = 0
    public var publishedBytes: UInt64 = 0
    public var syncPublished = 0
    public var publishFailures = 0
    public var dropped = 0
    public var backpressureWaits = 0
    public var publishLagMilliseconds = Percentiles()
    public var fetchMilliseconds = Percentiles()
    public var clusterReadMilliseconds = Percentiles()
    public var namespacesPublished = 0
    public var namespacesImported = 0
    public var fetched = 0
    public var fetchedBytes: UInt64 = 0
    public var misses = 0
    public var negativeHits = 0
    public var joinedFetches = 0
    public var fetchFailures = 0
    public var skippedUnavailable = 0
    public var corrupt = 0
    public var touches = 0
    public var connects = 0
    public var connectFailures = 0
    public var defaultShare = ""
    /// The effective policy of each namespace.
    public var share: [String: String] = [:]
    public var lastError: String?
    public var failed: Int { publishFailures + fetchFailures + corrupt }
}

/// What a garbage collection of the pool did.
public struct GarbageReport: Sendable {
    public var location = ""
    public var objects = 0
    public var bytesBefore: UInt64 = 0
    public var targetBytes: UInt64 = 0
    public var removedObjects = 0
    public var removedBytes: UInt64 = 0
    public var bytesAfter: UInt64 = 0
    public var seconds = 0.0
    public var error: String?
}

extension ClusterTier {
    /// The figures of the shared tier now.
    public func report() -> ClusterReport {
        let connected = tier.isConnected
        let (depth, t) = lock.withLock { (state.pending, state.stats) }
        var r = ClusterReport()
        r.location = tier.location
        r.connected = connected
        r.queueDepth = depth
        r.queueCapacity = settings.queueCapacity
        r.queued = t.queued
        r.published = t.published
        r.publishedBytes = t.publishedBytes
        r.syncPublished = t.syncPublished
        r.publishFailures = t.publishFailures
        r.dropped = t.dropped
        r.backpressureWaits = t.backpressureWaits
        r.publishLagMilliseconds = t.publishLag.milliseconds
        r.fetchMilliseconds = t.fetchTime.milliseconds
        r.clusterReadMilliseconds = t.clusterRead.milliseconds
        r.namespacesPublished = t.namespacesPublished
        r.namespacesImported = t.namespacesImported
        r.fetched = t.fetched
        r.fetchedBytes = t.fetchedBytes
        r.misses = t.misses
        r.negativeHits = t.negativeHits
        r.joinedFetches = t.joinedFetches
        r.fetchFailures = t.fetchFailures
        r.skippedUnavailable = t.skippedUnavailable
        r.corrupt = t.corrupt
        r.touches = t.touches
        r.connects = t.connects
        r.connectFailures = t.connectFailures
        r.defaultShare = settings.defaultPolicy.rawValue
        for ns in store.namespaces() { r.share[ns.name] = policy(of: ns).rawValue }
        r.lastError = t.lastError
        return r
    }

    /// Removes the least recently used objects of the pool until it holds at most `targetBytes`
    /// (`twctl cluster gc`). Access times are those `touch` recorded (at most hourly per object and
    /// node), else the last write. Runs on the caller's thread (the control plane's job thread).
    public func collectGarbage(targetBytes: UInt64) -> GarbageReport {
        let started = monotonicNanoseconds()
        var r = GarbageReport()
        r.location = tier.location
        r.targetBytes = targetBytes
        let objects: [RemoteObjectInfo]
        do { objects = try tier.inventory() } catch {
            r.error = "listing \(tier.location): \(error)"
            return r
        }
        var total = objects.reduce(UInt64(0)) { $0 + $1.size }
        r.objects = objects.count
        r.bytesBefore = total
        for object in objects.sorted(by: { ($0.accessSeconds, $0.name) < ($1.accessSeconds, $1.name) }) where total > targetBytes {
            do {
                try tier.remove(name: object.name)
            } catch {
                r.error = "\(error)"
                break
            }
            total -= object.size
            r.removedObjects += 1
            r.removedBytes += object.size
        }
        r.bytesAfter = total
        r.seconds = Double(monotonicNanoseconds() - started) / 1e9
        return r
    }
}
