import WarehouseCore
import Platform

/// Group commit: writers that need durability share `fdatasync` calls. A writer takes a ticket after
/// its write completed; a sync started after ticket T was handed out covers every write up to T.
/// It also counts the bytes written and not yet synced: the backlog `--sync batch` bounds.
final class GroupCommit: @unchecked Sendable {
    // Safe: every field is read and written only with `lock` held.
    private let lock = ConditionLock()
    private var completed: UInt64 = 0
    private var synced: UInt64 = 0
    private var completedBytes: UInt64 = 0
    private var syncedBytes: UInt64 = 0
    private var syncing = false

    /// Records that a write of `bytes` finished; returns its ticket and the bytes written and not yet
    /// covered by a finished sync, this write's included.
    @discardableResult
    func writeCompleted(bytes: Int) -> (ticket: UInt64, unsyncedBytes: UInt64) {
        lock.withLock {
            completed += 1
            completedBytes += UInt64(bytes)
            return (completed, completedBytes - syncedBytes)
        }
    }

    var hasUnsyncedWrites: Bool { lock.withLock { completed > synced } }

    /// Returns once every write up to `ticket` is durable, syncing `file` itself or waiting for a sync in flight.
    func waitDurable(ticket: UInt64, file: any DeviceFile) throws {
        lock.lock()
        defer { lock.unlock() }
        while synced < ticket {
            if syncing {
                lock.wait()
                continue
            }
            syncing = true
            let target = completed, targetBytes = completedBytes
            lock.unlock()
            var failure: (any Error)?
            do { try file.synchronize() } catch { failure = error }
            lock.lock()
            syncing = false
            if failure == nil {
                synced = max(synced, target)
                syncedBytes = max(syncedBytes, targetBytes)
            }
            lock.broadcast()
            if let failure { throw failure }
        }
    }

    /// Syncs every write completed so far.
    func synchronizeAll(file: any DeviceFile) throws {
        let ticket = lock.withLock { completed }
        try waitDurable(ticket: ticket, file: file)
    }
}
