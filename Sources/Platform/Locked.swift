#if canImport(Glibc)
import Glibc
#endif

/// A value behind a pthread mutex: `withLock` gives exclusive access. A plain class (heap mutex, stored
/// value), used for the shared state of the store, the tier and the filesystem.
///
/// Thread-safety: the purpose of the type; the mutex lives on the heap and never moves.
public final class Locked<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        self.value = value
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, holding the lock.
    @inline(__always)
    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
