import Platform
import WarehouseCore

/// Where a record lies in the log: its segment and its pages.
///
/// Blocks written one after another lie one after another in the log, so the log keeps the write order
/// across restarts, when the prefetcher's learned order is gone: a reader that goes through blocks in
/// the order they were written (a request's prefix, a model's layers) can be read ahead along it.
public struct LogPosition: Sendable, Equatable {
    public let segment: UInt32
    public let page: UInt32
    /// The first page after the record.
    public let endPage: UInt32
}

extension LocatedBlock {
    public var logPosition: LogPosition {
        LogPosition(segment: segment.id, page: entry.page, endPage: entry.page + UInt32(entry.recordSize / RecordFormat.alignment))
    }
}

extension BlockStore {
    /// Up to `count` live blocks of namespace `namespaceID` recorded after `position`, in log order: the
    /// rest of its segment, then the segments written after it. Skips tombstones, other namespaces'
    /// blocks and records no longer live where they were written (deleted, replaced, moved by
    /// compaction); looks at `scanLimit` records at most, so a log of other namespaces' blocks costs
    /// little. An open segment's records are in memory; a sealed one's come from its summary file,
    /// decoded once and kept for the next call (a reader goes through one segment at a time).
    ///
    /// The blocks returned carry no name (`LocatedBlock.key` is empty): `read` verifies their record
    /// against the 128-bit `BlockKey` instead.
    public func blocksFollowing(_ position: LogPosition, namespaceID: UInt16, count: Int, scanLimit: Int = 256) -> [LocatedBlock] {
        var found: [LocatedBlock] = []
        var segmentID = position.segment
        var after = position.page
        var examined = 0
        while found.count < count && examined < scanLimit {
            if let entries = summaryEntries(of: segmentID) {
                // Summaries are in log order, so the first record after `after` is found by bisection.
                var low = 0, high = entries.count
                while low < high {
                    let mid = (low + high) / 2
                    if entries[mid].page <= after { low = mid + 1 } else { high = mid }
                }
                var i = low
                while i < entries.count && found.count < count && examined < scanLimit {
                    let e = entries[i]
                    i += 1
                    examined += 1
                    guard e.type == .block, e.namespaceID == namespaceID else { continue }
                    if let located = liveBlock(e, segment: segmentID) { found.append(located) }
                }
                if i < entries.count { break }
            }
            // The segment written next: ids grow as segments are started.
            guard let next = state.withLock({ st in st.segments.keys.filter { $0 > segmentID }.min() }) else { break }
            segmentID = next
            after = 0
        }
        return found
    }

    /// The block a summary entry describes, if the index still holds it at that place.
    private func liveBlock(_ e: SummaryEntry, segment id: UInt32) -> LocatedBlock? {
        state.withLock { st -> LocatedBlock? in
            guard let current = Self.live(e.key, st), current.segment == id, current.page == e.page, current.sequence == e.sequence,
                  let segment = st.segments[id], let ns = st.namespaces.byID[current.namespaceID] else { return nil }
            return LocatedBlock(entry: current, segment: segment.segment, namespace: ns.name, key: "", blockKey: e.key)
        }
    }

    /// Every record of segment `id` in log order (`entries(of:)`), or nil when it is gone or its summary
    /// unreadable; a sealed segment's summary file is decoded once for consecutive calls.
    private func summaryEntries(of id: UInt32) -> [SummaryEntry]? {
        guard let segment = state.withLock({ $0.segments[id] }) else { return nil }
        let sealed = segment.summaryWritten && segment.summary.isEmpty
        if sealed, let cached = logOrderSummary.withLock({ $0?.segment == id ? $0?.entries : nil }) { return cached }
        let entries = entries(of: segment)
        if sealed, let entries { logOrderSummary.withLock { $0 = (id, entries) } }
        return entries
    }
}
