import BlockStore
import DRAMTier
import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// An open file or directory, held by the kernel as `fi->fh` (a retained pointer) until release. What
/// it is, is a closed set (`Kind`): every handler switches over it exhaustively.
///
/// Thread-safety: immutable; each kind's state guards its own mutable parts.
public final class OpenFile: Sendable {
    enum Kind: Sendable {
        /// A committed block opened for reading.
        case read(ReadState)
        /// An existing block opened with O_CREAT: writes are accepted and dropped (first write wins);
        /// reads show the committed block.
        case discard(ReadState)
        /// A block being written.
        case write(WriteState)
        /// `.tw/prefetch` or `.tw/engine` opened for writing: lines handled as they arrive.
        case lines(LineInput)
        /// `.tw/ctl`: a request written, then its answer read.
        case command(CommandState)
        /// A generated read-only file of the control area (status, dram), made at open for its opener.
        case generated([UInt8])
        /// An open directory.
        case directory(DirectoryState)
    }

    let kind: Kind
    /// Who opened it: control files act for their opener.
    let opener: Caller

    init(_ kind: Kind, opener: Caller) {
        self.kind = kind
        self.opener = opener
    }

    /// Whether a close of it must reach the daemon (a FLUSH): readers have nothing to flush.
    public var needsFlush: Bool {
        switch kind {
        case .read, .generated, .directory: return false
        case .discard, .write, .lines, .command: return true
        }
    }
}

/// A committed block opened for reading. The verified block is loaded on the first read that reaches
/// the daemon (with `keep_cache`, repeated reads are served by the kernel's page cache and never come)
/// and shared with every other handle reading the same record (`VerifiedBlocks`).
final class ReadState: Sendable {
    let node: FileNode
    /// The record as it was at open: reads keep working after an unlink or eviction, as POSIX wants.
    let located: LocatedBlock?
    /// The block in the DRAM tier, pinned until this handle is released (replies come straight from it).
    let pinned: PinnedBlock?
    /// The verified bytes, once loaded (shared with other handles of the record).
    let block = Mutex<BlockData?>(nil)
    /// Whether this handle counts as a user of the shared verified copy (it reads from the store).
    let sharesVerifiedCopy: Bool
    /// Whether a READ request reached this handle (otherwise its reader used the page cache, or read nothing).
    let wasRead = Atomic<Bool>(false)
    /// Opened with `keep_cache` alone (reads through the page cache), not `direct_io` (`ReadCache`).
    let throughPageCache: Bool
    /// Through the page cache, after an earlier page-cache reader filled the pages: a READ means they went.
    let expectsCachedPages: Bool
    /// Read directly within `ReadCache.reuseWindow` of the block's last read: its bytes go into the page
    /// cache after this handle is released (`PageCachePusher`).
    let pushToPageCache = Atomic<Bool>(false)

    init(node: FileNode, located: LocatedBlock?, pinned: PinnedBlock? = nil, verified: VerifiedBlocks,
         throughPageCache: Bool = true, expectsCachedPages: Bool = false) {
        self.node = node
        self.located = located
        self.pinned = pinned
        self.throughPageCache = throughPageCache
        self.expectsCachedPages = expectsCachedPages
        sharesVerifiedCopy = pinned == nil && located != nil
        if sharesVerifiedCopy, let located { verified.retain(located) }
    }
}

/// A block being written; shares the node's `PendingWrite` with every other handle of it.
final class WriteState: Sendable {
    let node: FileNode
    let pending: PendingWrite
    /// Whether this handle's descriptor has been closed once (its first FLUSH).
    let flushed = Mutex(false)

    /// Counts the handle among the node's open handles of the writing process (see `FileNode.State.writerHandles`).
    init(node: FileNode, pending: PendingWrite) {
        self.node = node
        self.pending = pending
        node.state.withLock { $0.writerHandles[pending.creator, default: 0] += 1 }
    }

    /// At RELEASE.
    func released() {
        node.state.withLock { s in
            let n = (s.writerHandles[pending.creator] ?? 1) - 1
            s.writerHandles[pending.creator] = n > 0 ? n : nil
        }
    }
}

/// A control file written line by line: complete lines are handled as each write arrives, so nothing
/// accumulates but the part of a line not finished yet (at most `maxLine` bytes). A line longer than
/// that is dropped whole, up to its newline, and the writes that carried it fail with `E2BIG`; what a
/// descriptor holds never grows past `maxLine`, whatever is written to it.
final class LineInput: Sendable {
    enum Purpose: Sendable { case hints, engine }
    let purpose: Purpose
    struct State: Sendable {
        var partial: [UInt8] = []
        /// Inside a line that passed `maxLine`: bytes are dropped until its newline.
        var overflowing = false
    }
    let state = Mutex(State())
    static let maxLine = 4096

    init(_ purpose: Purpose) { self.purpose = purpose }

    /// Takes a write: the complete lines it finishes, and whether a line of it was too long (E2BIG).
    func append(_ bytes: UnsafeRawBufferPointer) -> (lines: [[UInt8]], tooLong: Bool) {
        state.withLock { st in
            var lines: [[UInt8]] = []
            var tooLong = false
            var start = 0
            let base = bytes.baseAddress
            while start < bytes.count, let base {
                let rest = bytes.count - start
                guard let hit = memchr(base + start, Int32(UInt8(ascii: "\n")), rest) else {
                    // No newline in the rest: keep it as the unfinished line, if it fits.
                    if st.overflowing {
                        tooLong = true
                    } else if st.partial.count + rest > Self.maxLine {
                        st.partial.removeAll()
                        st.overflowing = true
                        tooLong = true
                    } else {
                        st.partial.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start...]))
                    }
                    return (lines, tooLong)
                }
                let end = base.distance(to: UnsafeRawPointer(hit))
                if st.overflowing || st.partial.count + (end - start) > Self.maxLine {
                    st.overflowing = false
                    st.partial.removeAll()
                    tooLong = true
                } else {
                    st.partial.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                    lines.append(st.partial)
                    st.partial.removeAll(keepingCapacity: true)
                }
                start = end + 1
            }
            return (lines, tooLong)
        }
    }

    /// What is left when the file is closed (a last line without its newline; nothing of a line that
    /// was too long).
    func finish() -> [UInt8] {
        state.withLock { st in
            defer { st = State() }
            return st.overflowing ? [] : st.partial
        }
    }
}

final class CommandState: Sendable {
    let state = Mutex<(request: [UInt8], answer: [UInt8]?)>(([], nil))
}

/// An open directory: where it is, and (for the root and the control area) the names fixed at opendir.
/// Namespace directories are listed by position from the store, a page per `readdir`, without a
/// snapshot (see `BlockStore.listDirectory`).
final class DirectoryState: Sendable {
    enum Place: Sendable {
        case root([(String, UInt64)])
        case control
        case namespace(UInt16, UInt32, parent: UInt64)
    }
    let place: Place

    init(_ place: Place) { self.place = place }
}
