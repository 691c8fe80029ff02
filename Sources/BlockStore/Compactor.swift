import Platform
import Synchronization
import WarehouseCore

/// Compaction: sealed segments whose dead share passes a threshold are rewritten (live records copied
/// forward, tombstones and current updates carried) and deleted.
extension BlockStore {
    /// A segment that compaction at some threshold would rewrite.
    public struct CompactionCandidate: Sendable {
        public var id: UInt32
        public var bytes: UInt64
        public var deadShare: Double
    }

    /// Sealed segments whose dead share is at least `threshold`, most dead first.
    public func compactionCandidates(threshold: Double) -> [CompactionCandidate] {
        state.withLock { st in
            st.segments.filter { $0.key != st.activeID && $0.value.sealed && $0.value.deadShare >= threshold }
                .map { CompactionCandidate(id: $0.key, bytes: $0.value.length, deadShare: $0.value.deadShare) }
                .sorted { $0.deadShare > $1.deadShare }
        }
    }

    /// Rewrites sealed segments whose dead share is at least `threshold`: live records are copied to
    /// the active segment, made durable, then the old segment is deleted.
    ///
    /// - Parameters:
    ///   - throttle: called with each record's size before it is copied (a rate limit sleeps there, so
    ///     foreground reads keep the disk).
    ///   - shouldStop: checked between segments.
    @discardableResult
    public func compact(threshold: Double, maxSegments: Int = .max, maxBytes: UInt64 = .max,
                        throttle: (Int) -> Void = { _ in }, shouldStop: () -> Bool = { false },
                        progress: (CompactionReport) -> Void = { _ in }) throws -> CompactionReport {
        var report = CompactionReport()
        var tried = Set<UInt32>()
        while report.segmentsCompacted < maxSegments && report.bytesMoved < maxBytes && !shouldStop() {
            guard let (id, seg) = state.withLock({ st -> (UInt32, SegmentState)? in
                let candidates = st.segments.filter { $0.key != st.activeID && $0.value.sealed && $0.value.summaryWritten
                    && $0.value.inflight == 0 && !$0.value.busy && !tried.contains($0.key) && $0.value.deadShare >= threshold }
                guard let pick = candidates.max(by: { $0.value.deadShare < $1.value.deadShare }) else { return nil }
                st.segments[pick.key]!.busy = true
                return (pick.key, pick.value)
            }) else { break }
            tried.insert(id)
            let before = seg.length
            var written: [Segment] = []
            let moved: Int
            do {
                moved = try relocateLive(of: id, seg, budget: .max, onlyWanted: false, throttle: throttle, segments: &written)
                try carryMetadataRecords(of: id, seg, segments: &written)
                // The copies must be durable before the originals go away.
                for w in written { try w.commit.synchronizeAll(file: w.file) }
            } catch {
                state.withLock { $0.segments[id]?.busy = false }
                throw error
            }
            let still = state.withLock { st -> Int in st.segments[id]?.liveBlocksByNamespace.values.reduce(0, +) ?? 0 }
            if still > 0 {
                state.withLock { $0.segments[id]?.busy = false }
                continue
            }
            let doomed = state.withLock { st -> SegmentState? in
                guard st.segments[id] != nil else { return nil }
                let s = removeSegment(&st, id)
                st.stats.evictedSegments -= 1
                st.stats.compactedSegments += 1
                return s
            }
            if let doomed { deleteEvicted([doomed]) }
            let movedBytes = seg.liveBytes
            report.segmentsCompacted += 1
            report.blocksMoved += moved
            report.bytesMoved += movedBytes
            report.bytesReclaimed += before > movedBytes ? before - movedBytes : 0
            state.withLock { $0.stats.reclaimedBytes += before > movedBytes ? before - movedBytes : 0 }
            progress(report)
        }
        return report
    }
}

/// A compaction run asked for online (`twctl compact MOUNT`): one at a time, on its own thread,
/// rate-limited, with its progress readable while it runs.
///
/// Thread-safety: `start`, `stop` and `progress` may be called from any thread.
public final class OnlineCompaction: Sendable {
    public struct Progress: Sendable {
        public var running = false
        public var threshold = 0.0
        public var candidates = 0
        public var report = CompactionReport()
        public var startedNanoseconds: UInt64 = 0
        public var seconds = 0.0
        public var error: String?
        public var runs = 0
    }

    let store: BlockStore
    private let state = Mutex(Progress())
    private let worker = Mutex<BackgroundThread?>(nil)
    private let stopping = Mutex(false)

    public init(store: BlockStore) { self.store = store }

    public var progress: Progress { state.withLock { $0 } }

    /// Starts a run unless one is going; returns whether it started.
    public func start(threshold: Double, maxBytes: UInt64, bytesPerSecond: UInt64) -> Bool {
        let candidates = store.compactionCandidates(threshold: threshold).count
        let started = state.withLock { p -> Bool in
            if p.running { return false }
            let runs = p.runs + 1
            p = Progress()
            p.running = true
            p.threshold = threshold
            p.candidates = candidates
            p.startedNanoseconds = monotonicNanoseconds()
            p.runs = runs
            return true
        }
        guard started else { return false }
        let throttle = Throttle(bytesPerSecond: bytesPerSecond)
        let previous = worker.withLock { w -> BackgroundThread? in
            defer { w = nil }
            return w
        }
        previous?.join()
        let thread = BackgroundThread(name: "tw-compact") { [self] in
            var failure: String? = nil
            do {
                _ = try store.compact(threshold: threshold, maxBytes: maxBytes, throttle: { throttle.acquire($0) },
                                      shouldStop: { stopping.withLock { $0 } }) { r in
                    state.withLock {
                        $0.report = r
                        $0.seconds = Double(monotonicNanoseconds() - $0.startedNanoseconds) / 1e9
                    }
                }
            } catch {
                failure = "\(error)"
            }
            state.withLock {
                $0.running = false
                $0.error = failure
                $0.seconds = Double(monotonicNanoseconds() - $0.startedNanoseconds) / 1e9
            }
        }
        worker.withLock { $0 = thread }
        return true
    }

    /// Ends a run between segments and waits for its thread.
    public func stop() {
        stopping.withLock { $0 = true }
        let thread = worker.withLock { w -> BackgroundThread? in
            defer { w = nil }
            return w
        }
        thread?.join()
    }
}
