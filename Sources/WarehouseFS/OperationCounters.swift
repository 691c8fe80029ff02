import ControlPlane
import Platform

/// The hot path's counters: requests by operation, bytes by tier, read latency histograms. Lock-free
/// (relaxed atomics), read into the status and the metrics.
///
/// Thread-safety: any thread may count; snapshots are per counter, not of all at one instant.
final class OperationCounters: Sendable {
    enum Operation: Int, CaseIterable {
        case lookup, read, write, commit, unlink, rename, mkdir, readdir
        /// A re-read block the daemon put into the kernel's page cache (`PageCachePusher`).
        case pageCachePush

        var name: String { self == .pageCachePush ? "page_cache_push" : "\(self)" }
    }
    enum Tier: Int, CaseIterable { case dram, nvme, cluster }

    /// 10 us to 1 s: a DRAM-tier reply takes microseconds, an NVMe read of a large block milliseconds.
    static let boundsMicroseconds: [UInt64] = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 1_000_000]

    private let operations = AtomicCounters(count: Operation.allCases.count)
    private let readBytes = AtomicCounters(count: Tier.allCases.count)
    private let writtenBytes = AtomicCounters(count: 1)
    /// Blocks a reader's miss loaded from NVMe (one per load, however many readers shared it): the NVMe
    /// side of the hit ratio. The store's `gets` also count the prefetcher's and the publisher's reads.
    private let readerLoads = AtomicCounters(count: 1)
    /// Per tier: one counter per bucket, then the count, then the sum in nanoseconds.
    private let latency = AtomicCounters(count: Tier.allCases.count * (boundsMicroseconds.count + 2))

    func count(_ op: Operation) { operations.add(op.rawValue) }

    func loadedForReader() { readerLoads.add(0) }
    var blocksLoadedForReaders: UInt64 { readerLoads[0] }

    func wrote(bytes: Int) {
        operations.add(Operation.write.rawValue)
        writtenBytes.add(0, UInt64(bytes))
    }

    func read(tier: Tier, bytes: Int, nanoseconds: UInt64) {
        operations.add(Operation.read.rawValue)
        readBytes.add(tier.rawValue, UInt64(bytes))
        let stride = Self.boundsMicroseconds.count + 2
        let base = tier.rawValue * stride
        if let bucket = Self.boundsMicroseconds.firstIndex(where: { nanoseconds <= $0 * 1000 }) { latency.add(base + bucket) }
        latency.add(base + Self.boundsMicroseconds.count)
        latency.add(base + Self.boundsMicroseconds.count + 1, nanoseconds)
    }

    func report() -> OperationStatus {
        var r = OperationStatus()
        for op in Operation.allCases { r.counts[op.name] = operations[op.rawValue] }
        for t in Tier.allCases { r.readBytes["\(t)"] = readBytes[t.rawValue] }
        r.writtenBytes = writtenBytes[0]
        let stride = Self.boundsMicroseconds.count + 2
        for t in Tier.allCases {
            var h = LatencyHistogram()
            h.bounds = Self.boundsMicroseconds.map { Double($0) / 1e6 }
            var running: UInt64 = 0
            for i in 0..<Self.boundsMicroseconds.count {
                running += latency[t.rawValue * stride + i]
                h.cumulative.append(running)
            }
            h.count = latency[t.rawValue * stride + Self.boundsMicroseconds.count]
            h.sumSeconds = Double(latency[t.rawValue * stride + Self.boundsMicroseconds.count + 1]) / 1e9
            r.readLatency["\(t)"] = h
        }
        return r
    }
}
