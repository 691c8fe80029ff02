/// Which live blocks of a segment being evicted are copied forward instead of dropped (CacheLib navy's
/// reinsertion policies). Blocks of pinned namespaces are always copied, outside any policy's budget.
///
/// Thread-safety: implementations are immutable values.
public protocol ReinsertionPolicy: Sendable {
    var name: String { get }
    /// Bytes of an evicted segment of `segmentBytes` that may be copied forward.
    func budget(segmentBytes: UInt64) -> UInt64
    /// Whether a block is worth copying forward.
    func shouldReinsert(_ entry: IndexEntry) -> Bool
}

/// Blocks read since they were written (or last copied), up to a share of each segment.
public struct AccessedShare: ReinsertionPolicy {
    public let share: Double

    public init(share: Double) { self.share = max(0, min(1, share)) }
    public var name: String { "accessed-\(share)" }
    public func budget(segmentBytes: UInt64) -> UInt64 { UInt64(share * Double(segmentBytes)) }
    public func shouldReinsert(_ entry: IndexEntry) -> Bool { entry.wasAccessed }
}
