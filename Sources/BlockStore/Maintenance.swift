import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// Background work and shutdown: the flusher (batch syncs, summaries of sealed segments, the directory
/// journal), maintenance (expiry, eviction above the high watermark, background compaction), `close`.
extension BlockStore {
    /// Starts the flusher and the maintenance thread. Call once.
    public func startBackgroundWork() {
        let flusher = BackgroundThread(name: "tw-flush") { [self] in
            while !stopping.withLock({ $0 }) {
                wakeup.withLock { wakeup.wait(nanoseconds: configuration.batchIntervalNanoseconds) }
                flushOnce()
            }
        }
        let maintenance = BackgroundThread(name: "tw-maintain") { [self] in
            try? device.remove(IndexSnapshot.retiredName)  // the snapshot this start read
            while !stopping.withLock({ $0 }) {
                wakeup.withLock { wakeup.wait(nanoseconds: 50_000_000) }
                if stopping.withLock({ $0 }) { break }
                maintainOnce()
            }
        }
        threads.withLock { $0 = [flusher, maintenance] }
    }

    /// One pass of the flusher: sync what `batch` owes (the active segment and the directory journal),
    /// write summaries of finished sealed segments.
    public func flushOnce() {
        let work = state.withLock { st -> (active: Segment?, sealed: [(Segment, [SummaryEntry])]) in
            let active = configuration.sync == .batch ? st.segments[st.activeID]?.segment : nil
            var sealed: [(Segment, [SummaryEntry])] = []
            for (_, s) in st.segments where s.sealed && !s.summaryWritten && s.inflight == 0 {
                sealed.append((s.segment, s.summary))
            }
            return (active, sealed)
        }
        // Synced outside the store's lock: under writeback an `fdatasync` can wait a large part of a second.
        if configuration.sync != .none, let file = state.withLock({ _ in journal.takeUnsynced() }) {
            do { try file.synchronize() } catch {
                state.withLock { _ in journal.syncFailed() }
                noteSyncFailure()
            }
        }
        if let active = work.active, active.commit.hasUnsyncedWrites,
           (try? countingSyncFailure { try active.commit.synchronizeAll(file: active.file) }) != nil {
            active.file.dropCachedPages()
        }
        for (segment, summary) in work.sealed {
            do {
                try countingSyncFailure { try segment.commit.synchronizeAll(file: segment.file) }
                segment.file.dropCachedPages()
                try device.replaceAtomically(SegmentFormat.summaryFileName(segment.id), bytes: SummaryEntry.encodeFile(segmentID: segment.id, entries: summary))
                state.withLock { st in
                    // Records may not have been added since (the segment is sealed and had no writes in flight).
                    if st.segments[segment.id]?.summary.count == summary.count {
                        st.segments[segment.id]?.summaryWritten = true
                        st.segments[segment.id]?.summary = []
                    }
                }
            } catch {
                // Left unwritten: the next pass tries again, and recovery scans the segment if it never lands.
            }
        }
    }

    /// Counts a failed sync (`StoreCounters.syncFailures`): the status and the metrics show it.
    func noteSyncFailure() { state.withLock { $0.stats.syncFailures += 1 } }

    /// Runs `sync` (a segment's); a failure is counted, then rethrown. Not for syncs made with the store's
    /// lock held: counting takes it.
    func countingSyncFailure(_ sync: () throws -> Void) throws {
        do { try sync() } catch {
            noteSyncFailure()
            throw error
        }
    }

    /// One pass of maintenance: expire, evict down to the low watermark, compact one segment, and
    /// rewrite the directory journal when it is mostly history.
    public func maintainOnce() {
        let now = monotonicNanoseconds()
        if lastExpiry.withLock({ last in
            guard now - last >= 1_000_000_000 else { return false }
            last = now
            return true
        }) { expireBlocks() }
        let used = state.withLock { $0.usedBytes }
        let capacity = configuration.capacity
        if Double(used) > configuration.highWatermark * Double(capacity) {
            evict(downTo: UInt64(configuration.lowWatermark * Double(capacity)), reinsert: true)
        }
        if configuration.backgroundCompaction {
            _ = try? compact(threshold: configuration.compactionThreshold, maxSegments: 1)
        }
        state.withLock { st in
            let live = st.directories.namespaces.values.reduce(0) { $0 + $1.nodes.count }
            if journal.wantsCheckpoint(liveDirectories: live) { try? checkpointJournal(st) }
        }
    }

    /// Rewrites the directory journal from the tree (with the lock held).
    func checkpointJournal(_ st: StoreState) throws {
        var changes: [DirectoryChange] = []
        for ns in st.namespaces.byID.keys.sorted() {
            for (id, n) in st.directories.explicitDirectories(ns) {
                changes.append(.create(ns: ns, id: id, parent: n.parent, name: n.name, ownership: n.ownership,
                                       modifiedNanoseconds: n.modifiedNanoseconds))
                if n.accessedNanoseconds != 0 {
                    changes.append(.attributes(ns: ns, id: id, ownership: n.ownership, modifiedNanoseconds: n.modifiedNanoseconds,
                                               accessedNanoseconds: n.accessedNanoseconds))
                }
            }
        }
        try journal.checkpoint(changes)
    }

    /// Stops background work, waits for writes in flight, syncs everything, seals the active segment,
    /// writes every summary and checkpoints the directory journal.
    public func close() throws {
        if stopping.withLock({ s -> Bool in defer { s = true }; return s }) { return }
        // No new writes from here on; the ones already reserved finish before the summaries are written.
        state.withLock { $0.closed = true }
        wakeup.withLock { wakeup.broadcast() }
        joinBackgroundThreads()
        removalObserver.withLock { $0 = nil }
        let deadline = monotonicNanoseconds() + 30_000_000_000
        idle.withLock {
            while !state.withLock({ st in st.segments.values.allSatisfy { $0.inflight == 0 } }) && monotonicNanoseconds() < deadline {
                idle.wait(nanoseconds: 100_000_000)
            }
        }
        discardSpareSegment()
        let segments = state.withLock { st -> [SegmentState] in
            if var active = st.segments[st.activeID] {
                active.sealed = true
                st.segments[st.activeID] = active
            }
            return Array(st.segments.values)
        }
        for s in segments where !s.summaryWritten {
            try s.segment.commit.synchronizeAll(file: s.segment.file)
            try device.replaceAtomically(SegmentFormat.summaryFileName(s.segment.id), bytes: SummaryEntry.encodeFile(segmentID: s.segment.id, entries: s.summary))
        }
        try state.withLock { st in try checkpointJournal(st) }
        writeIndexSnapshot()
        lockToken.withLock { $0 = nil }
    }

    /// The index for the next start to read whole (`IndexSnapshot`), written once everything else is
    /// durable. A failure costs only the next start's speed: that start reads the summaries.
    private func writeIndexSnapshot() {
        try? device.remove(IndexSnapshot.retiredName)
        do {
            try state.withLock { st in
                var segments: [(id: UInt32, length: UInt64)] = []
                for (id, s) in st.segments { segments.append((id, try s.segment.file.length())) }
                let fingerprint = try IndexSnapshot.fingerprint(device: device, segments: segments)
                try IndexSnapshot.write(st, fingerprint: fingerprint, device: device)
            }
        } catch {
            try? device.remove(IndexSnapshot.temporaryName)
            try? device.remove(IndexSnapshot.fileName)
            snapshotFailure.withLock { $0 = "\(error)" }
        }
    }

    /// Stops without syncing or sealing anything, as a killed process would (for crash tests).
    package func abandonAsIfCrashed() {
        if stopping.withLock({ s -> Bool in defer { s = true }; return s }) { return }
        wakeup.withLock { wakeup.broadcast() }
        joinBackgroundThreads()
        removalObserver.withLock { $0 = nil }
        state.withLock { $0.closed = true }
        lockToken.withLock { $0 = nil }
    }

    /// Joins the background threads. They are taken out of the store as they are joined: their
    /// closures hold the store, and a closed store must not keep itself alive through them
    /// (LeakSanitizer found the cycle).
    private func joinBackgroundThreads() {
        let background = threads.withLock { t -> [BackgroundThread] in
            defer { t = [] }
            return t
        }
        for t in background { t.join() }
    }
}
