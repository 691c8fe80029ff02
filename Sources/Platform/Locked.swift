#if canImport(Glibc)
import Glibc
#endif

/// A value behind a pthread mutex: `withLock` gives exclusive access.
///
/// Used instead of `Synchronization.Mutex`/`Atomic` as stored properties of classes that other modules
/// allocate: with Swift 6.3's release builds a client module computed such a class's instance size
/// without the raw-layout fields, and the initializer then wrote past the allocation (found with
/// valgrind: "Invalid write of size 8 ... 0 bytes after a block"). A plain class has one layout everywhere.
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
