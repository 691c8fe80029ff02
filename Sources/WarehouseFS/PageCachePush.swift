import BlockStore
import DRAMTier
import Platform
import WarehouseCore

/// Puts re-read blocks into the kernel's page cache from the daemon, after their reader got its bytes
/// (docs/fuse.md "Reading"). A block not read lately is read with direct I/O (one copy, no pages left);
/// when one is read again soon, the daemon hands the kernel its bytes (FUSE's NOTIFY_STORE) on this
/// thread, so the next open of it reads from the page cache without the reader paying to fill it.
/// Filling through a page-cache open instead made that second read the slowest of all (the kernel's
/// 128 KiB readahead requests, and a copy into fresh pages and another out of them).
///
/// Thread-safety: the queue is behind `lock`; one thread (`tw-page-cache`) does the pushing.
final class PageCachePusher: @unchecked Sendable {
    // Safe: `queue` and `closed` are touched only with `lock` held.
    struct Job {
        let node: FileNode
        /// Keeps the bytes alive (a DRAM tier pin, or the verified copy) until they are pushed.
        let source: AnyObject
        let bytes: UnsafeRawBufferPointer
    }

    /// What the kernel is handed at once: NOTIFY_STORE is one message on /dev/fuse.
    static let chunk = 1 << 20
    /// Pushes waiting at most; more are dropped (the block is then read directly again, and pushed then).
    static let queueLimit = 64

    private let lock = ConditionLock()
    private var queue: [Job] = []
    private var closed = false
    private let store: @Sendable (UInt64, Int, UnsafeRawBufferPointer) -> Int32
    private let pushed: @Sendable () -> Void
    private var thread: BackgroundThread?

    /// `store(ino, offset, bytes)` puts bytes into the inode's cached pages; returns 0 or -errno.
    /// `pushed` is called after each block that went in whole.
    init(store: @escaping @Sendable (UInt64, Int, UnsafeRawBufferPointer) -> Int32, pushed: @escaping @Sendable () -> Void) {
        self.store = store
        self.pushed = pushed
        thread = BackgroundThread(name: "tw-page-cache") { [self] in run() }
    }

    /// Queues a push of `bytes` (kept alive by `source`) into the pages of `node`; false when the queue is full.
    @discardableResult
    func push(_ node: FileNode, source: AnyObject, bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count > 0 else { return false }
        return lock.withLock {
            guard !closed, queue.count < Self.queueLimit else { return false }
            queue.append(Job(node: node, source: source, bytes: bytes))
            lock.broadcast()
            return true
        }
    }

    func close() {
        lock.withLock {
            closed = true
            queue.removeAll()
            lock.broadcast()
        }
        thread?.join()
    }

    private func run() {
        // The copies are for later readers: they take only CPU time nobody reading now wants.
        lowerThreadPriority()
        while true {
            lock.lock()
            while queue.isEmpty && !closed { lock.wait() }
            if closed {
                lock.unlock()
                return
            }
            let job = queue.removeFirst()
            lock.unlock()
            var offset = 0
            var failed = false
            withExtendedLifetime(job.source) {
                while offset < job.bytes.count && !failed {
                    let n = min(Self.chunk, job.bytes.count - offset)
                    failed = store(job.node.ino, offset, UnsafeRawBufferPointer(rebasing: job.bytes[offset..<offset + n])) != 0
                    offset += n
                }
            }
            // The kernel forgot the inode, or the name went meanwhile: nothing is cached, and the next
            // open reads directly as before.
            if !failed {
                job.node.state.withLock { $0.pagesFilled = true }
                pushed()
            }
        }
    }
}
