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
}

/// A `Mutex` with a place in the lock order (`LockLevel`).
///
/// Thread-safety: as `Mutex`; in debug builds each thread also keeps the ranks it holds.
public final class OrderedMutex<Value: ~Copyable>: Sendable {
    public let level: LockLevel
    private let mutex: Mutex<Value>

    public init(_ level: LockLevel, _ value: consuming sending Value) {
        self.level = level
        mutex = Mutex(value)
    }

    @inline(__always)
    public func withLock<Result, E: Error>(_ body: (inout sending Value) throws(E) -> sending Result) throws(E) -> sending Result {
        #if DEBUG
        HeldLocks.acquire(level)
        defer { HeldLocks.release(level) }
        #endif
        return try mutex.withLock(body)
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
