import BlockStore
import Platform
import WarehouseCore

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
    var milliseconds: Percentiles {
        guard !samples.isEmpty else { return Percentiles() }
        let sorted = samples.sorted()
        func rank(_ p: Double) -> Double {
            let index = max(0, Int((p * Double(sorted.count)).rounded(.up)) - 1)
            return Double(sorted[min(sorted.count - 1, index)]) / 1e6
        }
        return Percentiles(p50: rank(0.5), p99: rank(0.99), max: Double(sorted.last!) / 1e6)
    }
}

extension ClusterTier {
    /// The figures of the shared tier now: its counters, the queue and the latency windows.
    public func report() -> ClusterReport {
        let connected = tier.isConnected
        // Copied under the lock, sorted for percentiles outside it.
        var (r, depth, lag, fetch, read, verify, put, tierCopy) = lock.withLock {
            (state.stats, state.pending, state.publishLag, state.fetchTime, state.clusterRead, state.verifyTime, state.storeTime, state.tierTime)
        }
        r.queueDepth = depth
        r.publishLagMs = lag.milliseconds
        r.fetchMs = fetch.milliseconds
        r.clusterReadMs = read.milliseconds
        r.fetchVerifyMs = verify.milliseconds
        r.fetchStoreMs = put.milliseconds
        r.fetchTierMs = tierCopy.milliseconds
        r.enabled = true
        r.location = tier.location
        r.connected = connected
        r.queueCapacity = settings.queueCapacity
        r.failed = r.publishFailures + r.fetchFailures + r.corrupt
        r.defaultShare = settings.defaultPolicy.rawValue
        for ns in store.namespaces() { r.share[ns.name] = policy(of: ns).rawValue }
        return r
    }

    /// Removes the least recently used objects of the pool until it holds at most `targetBytes`
    /// (`twctl cluster gc`). Access times are those `touch` recorded (at most hourly per object and
    /// node), else the last write. Runs on the caller's thread (the control plane's job thread).
    public func collectGarbage(targetBytes: UInt64) -> GarbageReport {
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
        return r
    }
}
