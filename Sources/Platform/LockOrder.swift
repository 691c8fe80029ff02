import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The order in which the daemon's nested locks are taken, all in one place (docs/architecture.md,
/// "Locks"). A thread holding a lock may take only locks of a higher rank; debug builds check it on
/// every acquisition (`OrderedMutex`) and stop at the first violation, naming both locks, so a test
/// that exercises a path proves the path keeps the order. Release builds check nothing.
///
/// Locks not listed here are leaves: nothing is taken while they are held.
public struct LockLevel: Sendable, Equatable {
    public let rank: Int
    public let name: String

    /// `WarehouseFileSystem.nodes`: the inode table.
    public static let inodeTable = LockLevel(rank: 10, name: "inode table")
    /// `FileNode.state`: one file inode.
    public static let fileNode = LockLevel(rank: 20, name: "file node")
    /// `PendingWrite.state`: the bytes and metadata of a block being written.
    public static let pendingWrite = LockLevel(rank: 30, name: "pending write")
    /// `BlockStore.state`: the index, directory trees, segments and namespaces.
    public static let storeState = LockLevel(rank: 50, name: "store state")
    /// `DRAMTiers.state`: which tier holds which namespace.
    public static let tierSet = LockLevel(rank: 80, name: "tier set")
    /// `DRAMTier.state`: one tier's table and rings.
    public static let tier = LockLevel(rank: 90, name: "tier")
    /// A lock nothing else is taken under (a free list, a ledger): any thread may take one while holding
    /// any lock above, and no leaf is taken while another is held.
    public static let leaf = LockLevel(rank: 1000, name: "leaf")

    /// Whether the calling thread holds a lock of this level. Debug builds only (tests check that slow
    /// I/O happens outside a lock); release builds keep no record and say false.
    public var isHeldByCurrentThread: Bool {
        #if DEBUG
        return HeldLocks.stack().ranks.contains { $0.rank == rank }
        #else
        return false
        #endif
    }
}

/// A mutex with a place in the lock order (`LockLevel`).
///
/// A glibc mutex, not `Synchronization.Mutex`: on Linux the latter is a priority-inheritance futex, which
/// hands a contended lock to the thread that waited rather than letting a running thread take it. With more
/// FUSE workers than CPUs every handoff then waits for a sleeping thread to be scheduled, and the store's
/// lock became a convoy: 8 writers of 16 KiB blocks on 2 CPUs made 1,050 blocks a second, half of what one
/// writer made, with a third of the daemon's time in `futex_lock_pi` (`perf`).
///
/// Thread-safety: the value is reached only inside `withLock`; in debug builds each thread also keeps
/// the ranks it holds.
public final class OrderedMutex<Value: ~Copyable>: @unchecked Sendable {
    public let level: LockLevel
    private let lock: UnsafeMutablePointer<pthread_mutex_t>
    private let value: UnsafeMutablePointer<Value>

    public init(_ level: LockLevel, _ value: consuming sending Value) {
        self.level = level
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_mutex_t())
        pthread_mutex_init(lock, nil)
        self.value = .allocate(capacity: 1)
        self.value.initialize(to: value)
    }

    deinit {
        value.deinitialize(count: 1)
        value.deallocate()
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    @inline(__always)
    public func withLock<Result, E: Error>(_ body: (inout sending Value) throws(E) -> sending Result) throws(E) -> sending Result {
        #if DEBUG
        HeldLocks.acquire(level)
        defer { HeldLocks.release(level) }
        #endif
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return try body(&value.pointee)
    }
}

#if DEBUG
/// The ranks the current thread holds (debug builds only), in a pthread key so every thread has its own.
enum HeldLocks {
    final class Stack {
        var ranks: [(rank: Int, name: String)] = []
    }

    nonisolated(unsafe) static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { pointer in
            if let pointer { Unmanaged<Stack>.fromOpaque(pointer).release() }
        }
        return key
    }()

    static func stack() -> Stack {
        if let p = pthread_getspecific(key) { return Unmanaged<Stack>.fromOpaque(p).takeUnretainedValue() }
        let s = Stack()
        pthread_setspecific(key, Unmanaged.passRetained(s).toOpaque())
        return s
    }

    static func acquire(_ level: LockLevel) {
        let s = stack()
        if let top = s.ranks.last, top.rank >= level.rank {
            preconditionFailure("lock order: taking \(level.name) (rank \(level.rank)) while holding \(top.name) (rank \(top.rank)); see LockLevel")
        }
        s.ranks.append((level.rank, level.name))
    }

    static func release(_ level: LockLevel) {
        let s = stack()
        if let i = s.ranks.lastIndex(where: { $0.rank == level.rank }) { s.ranks.remove(at: i) }
    }
}
#endif
