import BlockStore
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// Inode numbers. Directories are computed from what they name, so they need no table; files get
/// numbers from a counter when first looked up and keep them until the kernel forgets them.
enum InodeNumber {
    static let root: UInt64 = 1
    static let controlDirectory: UInt64 = 2
    static let statusFile: UInt64 = 3
    static let dramFile: UInt64 = 4
    static let prefetchFile: UInt64 = 5
    static let controlFile: UInt64 = 6
    private static let namespaceTag: UInt64 = 1 << 60
    private static let fanoutTag: UInt64 = 2 << 60
    static let firstFile: UInt64 = 3 << 60

    static func namespace(_ id: UInt16) -> UInt64 { namespaceTag | UInt64(id) }
    static func fanout(_ id: UInt16, _ byte: UInt8) -> UInt64 { fanoutTag | UInt64(id) << 8 | UInt64(byte) }

    /// What an inode number names.
    enum Kind: Equatable {
        case root, controlDirectory
        case control(ControlFile)
        case namespace(UInt16)
        case fanout(UInt16, UInt8)
        case file
    }

    static func kind(_ ino: UInt64) -> Kind {
        switch ino {
        case root: return .root
        case controlDirectory: return .controlDirectory
        case statusFile: return .control(.status)
        case dramFile: return .control(.dram)
        case prefetchFile: return .control(.prefetch)
        case controlFile: return .control(.ctl)
        default:
            switch ino >> 60 {
            case 1: return .namespace(UInt16(truncatingIfNeeded: ino))
            case 2: return .fanout(UInt16(truncatingIfNeeded: ino >> 8), UInt8(truncatingIfNeeded: ino))
            default: return .file
            }
        }
    }
}

/// Files of the hidden control area `MOUNT/.tw/`.
enum ControlFile: String, CaseIterable {
    /// Figures of the warehouse, one JSON object (read).
    case status
    /// The DRAM tier's path, one line; empty when there is none (read).
    case dram
    /// Prefetch hints: lines `NAMESPACE<TAB>NAME` load blocks into the DRAM tier (write).
    case prefetch
    /// twctl's requests: write a command, read the JSON answer on the same descriptor (root only).
    case ctl

    var ino: UInt64 {
        switch self {
        case .status: return InodeNumber.statusFile
        case .dram: return InodeNumber.dramFile
        case .prefetch: return InodeNumber.prefetchFile
        case .ctl: return InodeNumber.controlFile
        }
    }

    var mode: UInt32 {
        switch self {
        case .prefetch: return 0o222
        case .ctl: return 0o600
        default: return 0o444
        }
    }
}

/// The bytes of a block being written: a reserved region the size of the largest block, written at any
/// offsets by any number of threads, committed to the store when the last writer closes.
///
/// Thread-safety: `state` guards length, metadata and the open count; payload bytes are written
/// outside the lock (the region never moves, and writers of one block write disjoint ranges or
/// accept POSIX's unspecified result for overlapping ones).
final class PendingWrite: Sendable {
    let region: ReservedRegion
    /// Thread group of the creating process: only it sees the name before commit.
    let creator: Int32
    let state: Locked<State>

    struct State {
        var length = 0
        /// Byte ranges written so far; the gaps are zeroed before anyone reads the staged bytes.
        var written = WrittenRanges()
        /// Checksum of the bytes [0, checksummed) while they arrive in order; nil once they do not.
        var checksum: StreamingChecksum? = StreamingChecksum()
        var checksummed = 0
        var metadata = BlockMetadata()
        var openHandles = 0
        /// Handles not yet closed once (FLUSH): the close that brings this to zero commits.
        var unflushed = 0
        /// Set once the block has been committed, discarded or failed; later writes are refused.
        var finished = false
        /// The writer died before closing: nothing is committed.
        var abandoned = false
        var failure: Int32 = 0
    }

    /// Zeroes the bytes no writer filled, so readers of the staged block (and the committed record) see
    /// zeros there and never bytes of the block the region held before. Call with `state` locked.
    static func zeroGaps(_ s: inout State, region: ReservedRegion) {
        for gap in s.written.gaps(upTo: s.length) {
            region.zero(gap.lowerBound, count: gap.count)
            s.written.insert(gap)
        }
    }

    init(region: ReservedRegion, creator: Int32) {
        self.region = region
        self.creator = creator
        state = Locked(State())
    }
}

/// Sorted, disjoint byte ranges of a staged block that writers have filled. A block written front to
/// back is one range; parallel writers of different layers make a few.
struct WrittenRanges {
    private(set) var ranges: [Range<Int>] = []

    mutating func insert(_ r: Range<Int>) {
        guard !r.isEmpty else { return }
        if let last = ranges.last, last.upperBound == r.lowerBound {
            ranges[ranges.count - 1] = last.lowerBound..<r.upperBound  // the common, sequential case
            return
        }
        var merged = r
        var kept: [Range<Int>] = []
        for x in ranges {
            if x.upperBound < merged.lowerBound || x.lowerBound > merged.upperBound {
                kept.append(x)
            } else {
                merged = min(x.lowerBound, merged.lowerBound)..<max(x.upperBound, merged.upperBound)
            }
        }
        kept.append(merged)
        ranges = kept.sorted { $0.lowerBound < $1.lowerBound }
    }

    /// Drops everything at or past `length` (a truncation).
    mutating func clip(to length: Int) {
        ranges = ranges.compactMap { $0.lowerBound >= length ? nil : $0.lowerBound..<min($0.upperBound, length) }
    }

    /// The parts of [0, length) no writer filled.
    func gaps(upTo length: Int) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var at = 0
        for r in ranges where r.lowerBound < length {
            if r.lowerBound > at { out.append(at..<r.lowerBound) }
            at = max(at, r.upperBound)
        }
        if at < length { out.append(at..<length) }
        return out
    }
}

/// A file inode: a committed block, or a block being written.
final class FileNode: Sendable {
    let ino: UInt64
    let namespaceID: UInt16
    let namespace: String
    /// Directory it was looked up in (a namespace or a fan-out directory).
    let state: Locked<State>

    struct State {
        var key: String
        var parent: UInt64
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
        var lastSize = 0
        var lastStored = 0
        var lastSeconds: UInt64 = 0
    }

    init(ino: UInt64, namespaceID: UInt16, namespace: String, key: String, parent: UInt64, pending: PendingWrite?) {
        self.ino = ino
        self.namespaceID = namespaceID
        self.namespace = namespace
        state = Locked(State(key: key, parent: parent, pending: pending))
    }

    var key: String { state.withLock { $0.key } }
}

/// The table of file inodes. Thread-safety: one mutex; never held while calling the store.
struct NodeTable {
    var nodes: [UInt64: FileNode] = [:]
    /// Committed blocks by key, to give a name the same inode on each lookup.
    var committed: [BlockKey: UInt64] = [:]
    /// Blocks being written, by directory and name; one per creating process.
    var pending: [PendingName: [FileNode]] = [:]
    var nextIno: UInt64 = InodeNumber.firstFile

    struct PendingName: Hashable {
        var parent: UInt64
        var name: String
    }

    mutating func allocate() -> UInt64 {
        nextIno += 1
        return nextIno
    }
}

/// The thread group id of a thread (FUSE reports the calling thread's id).
func threadGroup(of tid: Int32) -> Int32 {
    guard let bytes = try? FileSystem.readFile("/proc/\(tid)/status") else { return tid }
    for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("Tgid:") {
        return Int32(line.dropFirst(5).trimmingWhitespace()) ?? tid
    }
    return tid
}

extension Substring {
    func trimmingWhitespace() -> Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return s
    }
}
