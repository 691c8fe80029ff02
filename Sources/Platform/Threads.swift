#if canImport(Glibc)
import Glibc
#endif
import CTokenWarehouse

/// A mutex with a condition variable, for the few places a thread must wait for another (group commit,
/// background loops). Timed waits use the monotonic clock, so a change of the wall clock neither
/// shortens nor stretches them.
///
/// Thread-safety: the type exists to be shared; pthread objects live on the heap and never move.
public final class ConditionLock: @unchecked Sendable {
    // Safe: the pthread objects are only touched through the pthread calls, which synchronise.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
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
    /// Waits at most `nanoseconds` (monotonic); call with the lock held.
    public func wait(nanoseconds: UInt64) {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let total = UInt64(now.tv_nsec) + min(nanoseconds, 1 << 62)
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

/// An OS thread of its own (not Swift concurrency) running `body`, named so `top -H`, gdb and
/// `/proc/PID/task/*/comm` show what it is (`tw-flush`, `tw-prefetch0`, ...).
///
/// Background work (flush, eviction, compaction, prefetch) runs on threads of its own, never on a request thread.
public final class BackgroundThread: @unchecked Sendable {
    // Safe: `thread` is written once in init before anyone else can see the object.
    private var thread = pthread_t()
    private let body: @Sendable () -> Void
    public let name: String

    /// The thread starts with every signal blocked (as libfuse's workers do): SIGINT and SIGTERM must reach
    /// the main thread, whose wait in the FUSE loop they end. Delivered to a background thread instead,
    /// the handler set the exit flag but nothing woke the loop, and the daemon did not stop (seen in CI).
    public init(name: String, _ body: @escaping @Sendable () -> Void) {
        self.body = body
        self.name = name
        let box = Unmanaged.passRetained(self).toOpaque()
        var all = sigset_t(), previous = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, &previous)
        let rc = pthread_create(&thread, nil, { arg in
            let me = Unmanaged<BackgroundThread>.fromOpaque(arg!).takeRetainedValue()
            me.name.withCString { tw_set_thread_name($0) }
            me.body()
            return nil
        }, box)
        pthread_sigmask(SIG_SETMASK, &previous, nil)
        precondition(rc == 0, "pthread_create failed: \(rc)")
    }

    /// Waits for the thread to finish.
    public func join() { pthread_join(thread, nil) }
}

/// Gives the calling thread the lowest CPU priority (nice 19): for background work that should take
/// only time nobody else wants.
public func lowerThreadPriority() { tw_lower_thread_priority() }

/// The kernel's id of the calling thread (its /proc/TID directory).
public func currentThreadID() -> Int32 { tw_thread_id() }

/// The name the kernel shows for the calling thread (for tests of thread naming).
public func currentThreadName() -> String {
    (try? FileSystem.readFile("/proc/thread-self/comm")).map { String(decoding: $0, as: UTF8.self).trimmingNewline() } ?? ""
}

extension String {
    func trimmingNewline() -> String { hasSuffix("\n") ? String(dropLast()) : self }
}
