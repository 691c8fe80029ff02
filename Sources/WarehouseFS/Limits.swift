import Platform
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Bounds on what callers can make the daemon hold (docs/security.md "Resources"): bytes of blocks being
/// written (staged in memory until they commit) and the number of such blocks, per user and in total.
public struct ResourceLimits: Sendable {
    /// Staged bytes of all writers together (default: half the machine's memory, at most 64 GiB).
    public var stagedBytesTotal: UInt64
    /// Staged bytes of one user's writers (default: half the total).
    public var stagedBytesPerUser: UInt64
    /// Blocks being written at once, in all and per user.
    public var pendingBlocksTotal = 65536
    public var pendingBlocksPerUser = 4096

    public init() {
        let pages = UInt64(max(0, sysconf(Int32(_SC_PHYS_PAGES))))
        let memory = pages * UInt64(max(1, sysconf(Int32(_SC_PAGESIZE))))
        stagedBytesTotal = max(1 << 30, min(memory / 2, 64 << 30))
        stagedBytesPerUser = stagedBytesTotal / 2
    }
}

/// What callers hold against `ResourceLimits`, charged as they write.
///
/// Thread-safety: one mutex; held only to add and subtract.
final class ResourceLedger: Sendable {
    let limits: ResourceLimits

    struct Usage: Sendable {
        var stagedBytes: UInt64 = 0
        var pendingBlocks = 0
    }

    private let state = OrderedMutex<(total: Usage, byUser: [UInt32: Usage], refused: Int)>(.leaf, (Usage(), [:], 0))

    init(limits: ResourceLimits) { self.limits = limits }

    /// Charges one more block being written to `uid`: `EMFILE` past the user's bound, `ENFILE` past the total.
    func beginBlock(uid: UInt32) -> FSError? {
        state.withLock { s in
            let mine = s.byUser[uid] ?? Usage()
            if mine.pendingBlocks >= limits.pendingBlocksPerUser { s.refused += 1; return FSError(EMFILE) }
            if s.total.pendingBlocks >= limits.pendingBlocksTotal { s.refused += 1; return FSError(ENFILE) }
            s.byUser[uid, default: Usage()].pendingBlocks += 1
            s.total.pendingBlocks += 1
            return nil
        }
    }

    func endBlock(uid: UInt32) {
        state.withLock { s in
            s.total.pendingBlocks = max(0, s.total.pendingBlocks - 1)
            if var mine = s.byUser[uid] {
                mine.pendingBlocks = max(0, mine.pendingBlocks - 1)
                s.byUser[uid] = mine.pendingBlocks == 0 && mine.stagedBytes == 0 ? nil : mine
            }
        }
    }

    /// Charges `bytes` more staged memory to `uid`: `EDQUOT` past the user's bound, `ENOSPC` past the total.
    func stage(uid: UInt32, bytes: UInt64) -> FSError? {
        guard bytes > 0 else { return nil }
        return state.withLock { s in
            let mine = s.byUser[uid] ?? Usage()
            if mine.stagedBytes + bytes > limits.stagedBytesPerUser { s.refused += 1; return FSError(EDQUOT) }
            if s.total.stagedBytes + bytes > limits.stagedBytesTotal { s.refused += 1; return FSError(ENOSPC) }
            s.byUser[uid, default: Usage()].stagedBytes += bytes
            s.total.stagedBytes += bytes
            return nil
        }
    }

    func unstage(uid: UInt32, bytes: UInt64) {
        guard bytes > 0 else { return }
        state.withLock { s in
            s.total.stagedBytes = s.total.stagedBytes > bytes ? s.total.stagedBytes - bytes : 0
            if var mine = s.byUser[uid] {
                mine.stagedBytes = mine.stagedBytes > bytes ? mine.stagedBytes - bytes : 0
                s.byUser[uid] = mine.pendingBlocks == 0 && mine.stagedBytes == 0 ? nil : mine
            }
        }
    }

    var snapshot: (total: Usage, refused: Int) { state.withLock { ($0.total, $0.refused) } }
}
