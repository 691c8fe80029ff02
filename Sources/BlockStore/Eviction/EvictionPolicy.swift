/// Which sealed segment eviction takes first (CacheLib navy's `EvictionPolicy`, reduced to what a
/// segment store needs: a rank per segment, lowest first).
///
/// Thread-safety: implementations are immutable values; the store calls them with its lock held.
public protocol EvictionPolicy: Sendable {
    /// The name `twfs --eviction` and the status use.
    var name: String { get }
    /// The rank of a segment: the lowest is evicted first (ties: the lower id).
    func rank(segment id: UInt32, lastAccessNanoseconds: UInt64) -> UInt64
}

/// The segment written longest ago goes first (FIFO).
public struct OldestFirst: EvictionPolicy {
    public init() {}
    public var name: String { "oldest" }
    public func rank(segment id: UInt32, lastAccessNanoseconds: UInt64) -> UInt64 { UInt64(id) }
}

/// The segment whose blocks were read least recently goes first (LRU over segments).
public struct ColdestFirst: EvictionPolicy {
    public init() {}
    public var name: String { "coldest" }
    public func rank(segment id: UInt32, lastAccessNanoseconds: UInt64) -> UInt64 { lastAccessNanoseconds }
}
