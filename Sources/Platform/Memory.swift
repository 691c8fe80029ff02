#if canImport(Glibc)
import Glibc
#endif

/// A page-aligned heap buffer of fixed capacity, freed when the last reference goes away.
///
/// Aligned so it can take `O_DIRECT` reads and be handed to the kernel without bounce copies.
/// Thread-safety: `@unchecked Sendable` because its owner fills it before publishing it, and
/// afterwards every holder only reads.
public final class AlignedBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let capacity: Int

    public static let alignment = 4096

    /// Allocates `capacity` bytes (rounded up to a page), uninitialised.
    public init(capacity: Int) {
        let rounded = max(AlignedBuffer.alignment, (capacity + AlignedBuffer.alignment - 1) & ~(AlignedBuffer.alignment - 1))
        var raw: UnsafeMutableRawPointer?
        let rc = posix_memalign(&raw, AlignedBuffer.alignment, rounded)
        precondition(rc == 0 && raw != nil, "out of memory allocating \(rounded) bytes")
        pointer = raw!
        self.capacity = rounded
    }

    deinit { free(pointer) }

    /// The bytes `[offset, offset + count)` as a read-only buffer.
    public func bytes(_ offset: Int = 0, count: Int) -> UnsafeRawBufferPointer {
        precondition(offset >= 0 && count >= 0 && offset + count <= capacity)
        return UnsafeRawBufferPointer(start: pointer + offset, count: count)
    }

    /// The bytes `[offset, offset + count)` as a writable buffer.
    public func mutableBytes(_ offset: Int = 0, count: Int) -> UnsafeMutableRawBufferPointer {
        precondition(offset >= 0 && count >= 0 && offset + count <= capacity)
        return UnsafeMutableRawBufferPointer(start: pointer + offset, count: count)
    }
}

/// A reserved range of anonymous virtual memory; pages are only backed once touched.
///
/// Lets a writer stage a block of unknown final size (up to the maximum) at any offset without
/// ever reallocating or copying. Thread-safety: concurrent writers of disjoint ranges are safe.
public final class ReservedRegion: @unchecked Sendable {
    // Safe to share: the mapping lives until deinit; callers coordinate the ranges they touch.
    public let pointer: UnsafeMutableRawPointer
    public let capacity: Int

    public init(capacity: Int) throws(SystemError) {
        let size = (capacity + 4095) & ~4095
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              p != MAP_FAILED else {
            throw SystemError.last("mmap")
        }
        pointer = p
        self.capacity = size
    }

    deinit { munmap(pointer, capacity) }

    /// Gives the pages beyond `keep` bytes back to the kernel (they read as zero afterwards).
    public func release(beyond keep: Int) {
        let start = (keep + 4095) & ~4095
        if start < capacity { _ = madvise(pointer + start, capacity - start, MADV_DONTNEED) }
    }

    /// Zeroes `[offset, offset + count)`.
    public func zero(_ offset: Int, count: Int) {
        if count > 0 { memset(pointer + offset, 0, count) }
    }
}

/// A mutex with a condition variable, for the few places a thread must wait for another (group commit).
///
/// Thread-safety: the type exists to be shared; pthread objects live on the heap and never move.
public final class ConditionLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }
    /// Waits for a signal; call with the lock held.
    public func wait() { pthread_cond_wait(condition, mutex) }
    /// Waits at most `nanoseconds`; call with the lock held.
    public func wait(nanoseconds: UInt64) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let total = UInt64(now.tv_nsec) + nanoseconds
        var deadline = timespec(tv_sec: now.tv_sec + Int(total / 1_000_000_000), tv_nsec: Int(total % 1_000_000_000))
        pthread_cond_timedwait(condition, mutex, &deadline)
    }
    public func broadcast() { pthread_cond_broadcast(condition) }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// Starts a detached-from-Swift-concurrency OS thread running `body`; returns when it has started.
///
/// Background work (flush, eviction, compaction) runs on threads of its own, never on a request thread.
public final class BackgroundThread: @unchecked Sendable {
    // Safe: `thread` is written once in init before anyone else can see the object.
    private var thread = pthread_t()
    private let body: @Sendable () -> Void

    /// The thread starts with every signal blocked (as libfuse's workers do): SIGINT and SIGTERM must reach
    /// the main thread, whose wait in the FUSE loop they end. Delivered to a background thread instead,
    /// the handler set the exit flag but nothing woke the loop, and the daemon did not stop (seen in CI).
    public init(name: String, _ body: @escaping @Sendable () -> Void) {
        self.body = body
        let box = Unmanaged.passRetained(self).toOpaque()
        var all = sigset_t(), previous = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, &previous)
        let rc = pthread_create(&thread, nil, { arg in
            let me = Unmanaged<BackgroundThread>.fromOpaque(arg!).takeRetainedValue()
            me.body()
            return nil
        }, box)
        pthread_sigmask(SIG_SETMASK, &previous, nil)
        precondition(rc == 0, "pthread_create failed: \(rc)")
    }

    /// Waits for the thread to finish.
    public func join() { pthread_join(thread, nil) }
}
