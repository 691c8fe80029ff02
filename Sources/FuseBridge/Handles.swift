import BlockStore
import DRAMTier
import Platform

/// An open file or directory. The kernel holds it as `fi->fh` (a retained pointer) until release.
class Handle: @unchecked Sendable {
    // Subclasses guard their own mutable state; the base class is immutable.
}

/// A committed block opened for reading. The verified block is loaded on the first read that reaches
/// the daemon (with `keep_cache`, repeated reads are served by the kernel's page cache and never come).
final class ReadHandle: Handle, @unchecked Sendable {
    let node: FileNode
    /// The record as it was at open: reads keep working after an unlink or eviction, as POSIX wants.
    let located: BlockStore.LocatedBlock?
    /// The block in the DRAM tier, pinned until this handle is released (replies come straight from it).
    let pinned: PinnedBlock?
    let block = Locked<BlockData?>(nil)
    init(node: FileNode, located: BlockStore.LocatedBlock?, pinned: PinnedBlock? = nil) {
        self.node = node
        self.located = located
        self.pinned = pinned
    }
}

/// `MOUNT/.tw/prefetch` opened for writing: collects hint lines, handed to the loader at close.
final class HintHandle: Handle, @unchecked Sendable {
    let bytes = Locked<[UInt8]>([])
}

/// A block being written; shares the node's `PendingWrite` with every other handle of it.
final class WriteHandle: Handle, @unchecked Sendable {
    let node: FileNode
    let pending: PendingWrite
    /// Whether this handle's descriptor has been closed once (its first FLUSH).
    let flushed = Locked(false)
    init(node: FileNode, pending: PendingWrite) {
        self.node = node
        self.pending = pending
    }
}

/// An existing block opened with O_CREAT or O_TRUNC: writes are accepted and dropped (first write wins);
/// reads show the committed block.
final class DiscardHandle: Handle, @unchecked Sendable {
    let read: ReadHandle
    init(node: FileNode, located: BlockStore.LocatedBlock?) { read = ReadHandle(node: node, located: located) }
}

/// A generated read-only file of the control area.
final class GeneratedHandle: Handle, @unchecked Sendable {
    let bytes: [UInt8]
    init(bytes: [UInt8]) { self.bytes = bytes }
}

/// An open directory: a snapshot taken at opendir, streamed by offset.
final class DirectoryHandle: Handle, @unchecked Sendable {
    struct Entry {
        var name: String
        var ino: UInt64
        var isDirectory: Bool
    }
    /// Entries with names known up front (".", "..", namespaces, fan-out directories).
    let fixed: [Entry]
    /// Blocks whose names are read from their record headers as the listing reaches them.
    let blocks: [BlockLocator]
    init(fixed: [Entry], blocks: [BlockLocator]) {
        self.fixed = fixed
        self.blocks = blocks
    }
}

/// Reserved regions for blocks being written, reused so a write does not map and unmap each time.
///
/// Thread-safety: the free list is behind a mutex.
final class StagingPool: Sendable {
    let regionSize: Int
    private let free = Locked<[ReservedRegion]>([])
    private let keep: Int

    init(regionSize: Int, keep: Int = 16) {
        self.regionSize = regionSize
        self.keep = keep
    }

    func take() throws -> ReservedRegion {
        if let r = free.withLock({ $0.popLast() }) { return r }
        return try ReservedRegion(capacity: regionSize)
    }

    /// Returns a region. Its bytes are not cleared here: the next block zeroes whatever its writers
    /// leave unwritten before anyone reads it (`PendingWrite.zeroGaps`). Pages past `retainedBytes`
    /// go back to the kernel.
    func give(_ region: ReservedRegion, used: Int) {
        if used > retainedBytes { region.release(beyond: retainedBytes) }
        free.withLock { list in if list.count < keep { list.append(region) } }
    }

    /// Bytes of each pooled region that stay resident between blocks.
    let retainedBytes = 64 << 20
}
