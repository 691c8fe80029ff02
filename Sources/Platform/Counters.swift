import CTokenWarehouse

/// A fixed array of 64-bit counters that any thread increments without a lock (relaxed atomics): the
/// hot path's operation counts, byte counts and latency histograms. Reads are a snapshot of each
/// counter, not of all of them at one instant.
///
/// Thread-safety: every method may be called from any thread.
public final class AtomicCounters: @unchecked Sendable {
    // Safe: the words are only touched through atomic operations; the buffer lives as long as the object.
    private let words: UnsafeMutablePointer<UInt64>
    public let count: Int

    public init(count: Int) {
        self.count = count
        words = .allocate(capacity: max(count, 1))
        words.initialize(repeating: 0, count: max(count, 1))
    }

    deinit { words.deallocate() }

    @inline(__always)
    public func add(_ index: Int, _ value: UInt64 = 1) {
        precondition(index >= 0 && index < count)
        _ = tw_fetch_add_relaxed_u64(words + index, value)
    }

    @inline(__always)
    public subscript(index: Int) -> UInt64 {
        precondition(index >= 0 && index < count)
        return tw_load_relaxed_u64(words + index)
    }
}
