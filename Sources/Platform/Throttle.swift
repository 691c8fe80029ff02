import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A token bucket over bytes: `acquire` sleeps while the rate would be exceeded (bursts up to 1/10 s).
/// Rate-limits background reads (prefetch, compaction) so foreground reads keep the disk.
///
/// Thread-safety: any number of threads may acquire; the bucket is behind a mutex.
public final class Throttle: Sendable {
    public let bytesPerSecond: UInt64
    private let state = Mutex<(tokens: Double, at: UInt64)>((0, monotonicNanoseconds()))

    /// `bytesPerSecond` 0 means no limit.
    public init(bytesPerSecond: UInt64) { self.bytesPerSecond = bytesPerSecond }

    /// Takes `bytes` from the bucket, sleeping (at most a second per call) while it is empty.
    public func acquire(_ bytes: Int) {
        guard bytesPerSecond > 0 else { return }
        let rate = Double(bytesPerSecond)
        let wait = state.withLock { s -> Double in
            let now = monotonicNanoseconds()
            s.tokens = min(rate / 10, s.tokens + Double(now - s.at) / 1e9 * rate)
            s.at = now
            s.tokens -= Double(bytes)
            return s.tokens < 0 ? -s.tokens / rate : 0
        }
        if wait > 0 { usleep(useconds_t(min(wait, 1) * 1e6)) }
    }
}
