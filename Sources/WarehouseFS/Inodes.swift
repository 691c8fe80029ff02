import BlockStore
import Platform
import Synchronization
import WarehouseCore

/// Inode numbers. Directories are computed from what they name (namespace and directory id), so they
/// need no table; files get numbers from a counter when first looked up and keep them until the kernel
/// forgets them.
enum InodeNumber {
    static let root: UInt64 = 1
    static let controlDirectory: UInt64 = 2
    private static let directoryTag: UInt64 = 1 << 60
    /// Blocks being written and stand-ins: numbered from a counter.
    static let firstFile: UInt64 = 2 << 60
    /// Committed blocks: numbered from their key and record sequence, so a listing and a lookup give
    /// the same number, and a name written again gets a new one (the kernel's cached pages of the old
    /// bytes belong to the old inode).
    private static let committedTag: UInt64 = 3 << 60

    static func committed(_ key: BlockKey, sequence: UInt64) -> UInt64 {
        let mixed = (key.low ^ (key.high &* 0x9E37_79B9_7F4A_7C15) ^ (sequence &* 0xC2B2_AE3D_27D4_EB4F)) & ((1 << 60) - 1)
        return committedTag | max(mixed, 1)
    }

    /// Directory `id` of namespace `ns` (id 0: the namespace directory itself).
    static func directory(_ ns: UInt16, _ id: UInt32) -> UInt64 { directoryTag | UInt64(ns) << 32 | UInt64(id) }
    static func namespace(_ ns: UInt16) -> UInt64 { directory(ns, DirectoryID.namespaceRoot) }

    /// What an inode number names.
    enum Kind: Equatable {
        case root, controlDirectory
        case control(ControlFile)
        case directory(namespace: UInt16, id: UInt32)
        case file
    }

    static func kind(_ ino: UInt64) -> Kind {
        switch ino {
        case root: return .root
        case controlDirectory: return .controlDirectory
        default:
            if let f = ControlFile.allCases.first(where: { $0.ino == ino }) { return .control(f) }
            switch ino >> 60 {
            case 1: return .directory(namespace: UInt16(truncatingIfNeeded: ino >> 32), id: UInt32(truncatingIfNeeded: ino))
            case 2, 3: return .file
            default: return .root
            }
        }
    }
}

/// Files of the hidden control area `MOUNT/.tw/` (docs/operations.md).
enum ControlFile: String, CaseIterable {
    /// Figures of the warehouse, one JSON object, as the reader may see them (read).
    case status
    /// How to reach the DRAM tier: `socket PATH` of the tier broker, empty without a tier (read).
    case dram
    /// Prefetch hints: lines `NAMESPACE<TAB>NAME` load blocks into the DRAM tier (write).
    case prefetch
    /// twctl's requests: write a request, read the JSON answer on the same descriptor.
    case ctl
    /// Engines' counters: lines of JSON (`EngineReport`) (write).
    case engine

    var ino: UInt64 {
        switch self {
        case .status: return 3
        case .dram: return 4
        case .prefetch: return 5
        case .ctl: return 6
        case .engine: return 7
        }
    }

    var mode: UInt32 {
        switch self {
        case .prefetch, .engine: return 0o222
        case .ctl: return 0o666
        default: return 0o444
        }
    }
}

/// A file inode: a committed block, or a block being written.
///
/// Thread-safety: `state` guards the mutable fields; lock order is `NodeTable` (the table's mutex),
/// then `FileNode.state`, then `PendingWrite.state`.
final class FileNode: Sendable {
    let ino: UInt64
    let namespaceID: UInt16
    let namespace: String
    let state: OrderedMutex<State>

    struct State: Sendable {
        /// The block's key (its path in the namespace; `BlockPath`).
        var key: String
        /// The directory it was looked up in.
        var directory: UInt32
        var lookups: UInt64 = 0
        var pending: PendingWrite?
        /// Sequence of the committed record this inode shows; a rewritten name gets a new inode so
        /// cached pages of the old bytes are never shown for it.
        var sequence: UInt64 = 0
        var unlinked = false
        /// A stand-in inode given to `open(O_CREAT)` of an existing block: its writes are dropped, and
        /// because it is a separate inode they cannot change the size or cached pages readers of the
        /// block see.
        var discard = false
        /// Attributes of the committed block when last seen, for an inode still open after its name went.
        var last: BlockAttributes?
        /// Open write handles (open file descriptions) on this inode, by writing process. A process with
        /// more descriptors on the inode than it has other handles holds a duplicate of the one closing.
        var writerHandles: [Int32: Int] = [:]
        /// The last read handle on it was closed without a READ request: its reader got the bytes from
        /// the kernel's page cache. Opens of it then do not start speculative loads of what follows it
        /// (see `open`); a handle that does read clears this.
        var servedByPageCache = false
        /// When a read handle on it last received a READ request (monotonic nanoseconds; 0: never):
        /// a block read again soon after is kept in the page cache (`WarehouseFileSystem.readsThroughPageCache`).
        var lastReadNanoseconds: UInt64 = 0
        /// Its pages should be in the page cache: a handle reading through the page cache was opened on
        /// it (its reads fill them, or find them), or the daemon put them there (`PageCachePusher`).
        var pagesFilled = false
        /// A page-cache handle on it needed READ requests after `pagesFilled` (its pages had gone): the
        /// next open reads directly.
        var readDirectNext = false

        /// Whether a handle read it within `ReadCache.reuseWindowNanoseconds` before `now`.
        func wasReadRecently(now: UInt64) -> Bool {
            lastReadNanoseconds != 0 && now &- lastReadNanoseconds < ReadCache.reuseWindowNanoseconds
        }
    }

    init(ino: UInt64, namespaceID: UInt16, namespace: String, key: String, directory: UInt32, pending: PendingWrite?) {
        self.ino = ino
        self.namespaceID = namespaceID
        self.namespace = namespace
        state = OrderedMutex(.fileNode, State(key: key, directory: directory, pending: pending))
    }

    var key: String { state.withLock { $0.key } }
    var blockKey: BlockKey { BlockKey(namespace: namespace, key: key) }
}

/// The table of file inodes.
///
/// Thread-safety: one mutex (`WarehouseFileSystem.nodes`); never held while calling the store. Lock
/// order: the table, then a `FileNode.state`, then a `PendingWrite.state`.
struct NodeTable: Sendable {
    var nodes: [UInt64: FileNode] = [:]
    /// Committed blocks by key, to give a name the same inode on each lookup.
    var committed: [BlockKey: UInt64] = [:]
    /// Blocks being written, by key; one per creating process.
    var pending: [BlockKey: [FileNode]] = [:]
    /// Blocks being written per directory (an rmdir of a directory a block is being written in is
    /// `ENOTEMPTY`).
    var pendingPerDirectory: [DirectoryRef: Int] = [:]
    var nextIno: UInt64 = InodeNumber.firstFile

    struct DirectoryRef: Hashable, Sendable {
        var namespace: UInt16
        var id: UInt32
    }

    mutating func allocate() -> UInt64 {
        nextIno += 1
        return nextIno
    }

    mutating func addPending(_ node: FileNode, key: BlockKey, directory: UInt32) {
        pending[key, default: []].append(node)
        pendingPerDirectory[DirectoryRef(namespace: node.namespaceID, id: directory), default: 0] += 1
    }

    mutating func removePending(_ node: FileNode, key: BlockKey, directory: UInt32) {
        guard var list = pending[key], let i = list.firstIndex(where: { $0 === node }) else { return }
        list.remove(at: i)
        pending[key] = list.isEmpty ? nil : list
        let ref = DirectoryRef(namespace: node.namespaceID, id: directory)
        let n = (pendingPerDirectory[ref] ?? 1) - 1
        pendingPerDirectory[ref] = n > 0 ? n : nil
    }
}
