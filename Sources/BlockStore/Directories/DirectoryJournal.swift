import Platform
import WarehouseCore

/// Byte layout of the directory journal `directories.twdir` (docs/format.md "Directories"): a 16-byte
/// header, then records of `length u32, xxh3 u64, body`, appended as directories change and replayed
/// in order at start. A record that fails its checksum ends the journal (a torn tail, truncated).
public enum DirectoryJournalFormat {
    public static let fileName = "directories.twdir"
    public static let magic: [UInt8] = Array("TWDIRJ01".utf8)
    public static let version: UInt32 = 1
    public static let headerSize = 16
    /// Length and checksum before each body.
    public static let recordHeaderSize = 12
    /// op u8, namespace u16, id u32.
    static let bodyPrefixSize = 7
    static let maxBodySize = 512
    /// A journal larger than this is refused at start rather than read into memory (about 5 million
    /// directories).
    public static let maxFileSize = 512 << 20

    enum Operation: UInt8 {
        case create = 1
        case remove = 2
        case attributes = 3
        case move = 4
    }
}

/// One change of the directory tree, as the journal records it.
public enum DirectoryChange: Equatable, Sendable {
    case create(ns: UInt16, id: UInt32, parent: UInt32, name: String, ownership: BlockOwnership, modifiedNanoseconds: UInt64)
    case remove(ns: UInt16, id: UInt32)
    /// `accessedNanoseconds` 0: the modification time (records of older daemons have none).
    case attributes(ns: UInt16, id: UInt32, ownership: BlockOwnership, modifiedNanoseconds: UInt64, accessedNanoseconds: UInt64 = 0)
    case move(ns: UInt16, id: UInt32, parent: UInt32, name: String)

    public func encoded() -> [UInt8] {
        var body: [UInt8] = []
        func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { body += $0 } }
        func head(_ op: DirectoryJournalFormat.Operation, _ ns: UInt16, _ id: UInt32) {
            body.append(op.rawValue)
            le(ns)
            le(id)
        }
        switch self {
        case .create(let ns, let id, let parent, let name, let o, let mtime):
            head(.create, ns, id)
            le(parent); le(o.uid); le(o.gid); le(o.mode); le(mtime)
            body += Array(name.utf8)
        case .remove(let ns, let id):
            head(.remove, ns, id)
        case .attributes(let ns, let id, let o, let mtime, let atime):
            head(.attributes, ns, id)
            le(o.uid); le(o.gid); le(o.mode); le(mtime)
            if atime != 0 { le(atime) }
        case .move(let ns, let id, let parent, let name):
            head(.move, ns, id)
            le(parent)
            body += Array(name.utf8)
        }
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt32(body.count).littleEndian) { out += $0 }
        let sum = body.withUnsafeBytes { Checksum.xxh3($0) }
        withUnsafeBytes(of: sum.littleEndian) { out += $0 }
        return out + body
    }

    /// Decodes one body; nil when it is malformed.
    static func decode(_ body: UnsafeRawBufferPointer) -> DirectoryChange? {
        guard body.count >= DirectoryJournalFormat.bodyPrefixSize,
              let op = DirectoryJournalFormat.Operation(rawValue: body[0]) else { return nil }
        let ns = LittleEndian.load(UInt16.self, at: 1, in: body)
        let id = LittleEndian.load(UInt32.self, at: 3, in: body)
        func u32(_ at: Int) -> UInt32 { LittleEndian.load(UInt32.self, at: at, in: body) }
        func name(from at: Int) -> String? {
            let bytes = Array(body[at...])
            guard case .success(let text) = BlockName.checkComponent(bytes) else { return nil }
            return text
        }
        switch op {
        case .create:
            guard body.count > 31, let n = name(from: 31) else { return nil }
            return .create(ns: ns, id: id, parent: u32(7), name: n, ownership: BlockOwnership(uid: u32(11), gid: u32(15), mode: u32(19)),
                           modifiedNanoseconds: LittleEndian.load(UInt64.self, at: 23, in: body))
        case .remove:
            return .remove(ns: ns, id: id)
        case .attributes:
            guard body.count == 27 || body.count == 35 else { return nil }
            return .attributes(ns: ns, id: id, ownership: BlockOwnership(uid: u32(7), gid: u32(11), mode: u32(15)),
                               modifiedNanoseconds: LittleEndian.load(UInt64.self, at: 19, in: body),
                               accessedNanoseconds: body.count == 35 ? LittleEndian.load(UInt64.self, at: 27, in: body) : 0)
        case .move:
            guard body.count > 11, let n = name(from: 11) else { return nil }
            return .move(ns: ns, id: id, parent: u32(7), name: n)
        }
    }

    /// The records of a journal file, and where its valid part ends (a torn tail is cut there).
    public static func decodeFile(_ bytes: [UInt8]) -> (changes: [DirectoryChange], validEnd: Int)? {
        typealias F = DirectoryJournalFormat
        return bytes.withUnsafeBytes { raw -> ([DirectoryChange], Int)? in
            guard raw.count >= F.headerSize, Array(raw[0..<8]) == F.magic,
                  LittleEndian.load(UInt32.self, at: 8, in: raw) == F.version else { return nil }
            var changes: [DirectoryChange] = []
            var at = F.headerSize
            while at + F.recordHeaderSize <= raw.count {
                let length = Int(LittleEndian.load(UInt32.self, at: at, in: raw))
                guard length <= F.maxBodySize, at + F.recordHeaderSize + length <= raw.count else { break }
                let body = UnsafeRawBufferPointer(rebasing: raw[(at + F.recordHeaderSize)..<(at + F.recordHeaderSize + length)])
                guard Checksum.xxh3(body) == LittleEndian.load(UInt64.self, at: at + 4, in: raw),
                      let change = decode(body) else { break }
                changes.append(change)
                at += F.recordHeaderSize + length
            }
            return (changes, at)
        }
    }

    public static func header() -> [UInt8] {
        var out = DirectoryJournalFormat.magic
        withUnsafeBytes(of: DirectoryJournalFormat.version.littleEndian) { out += $0 }
        withUnsafeBytes(of: UInt32(DirectoryJournalFormat.headerSize).littleEndian) { out += $0 }
        return out
    }
}

/// The directory journal: appends changes of explicit directories, and rewrites itself from the tree
/// when most of it is history (`checkpoint`).
///
/// Thread-safety: called with the store's lock held (appends are small buffered writes); `synchronize`
/// may run outside it.
final class DirectoryJournal: @unchecked Sendable {
    // Safe: `file`, `length` and `dirty` change only under the store's lock (the caller's contract).
    private let device: any StorageDevice
    private var file: any DeviceFile
    private(set) var length: UInt64
    private var dirty = false
    /// Records appended since the last checkpoint, to tell when a rewrite pays.
    private var appended = 0

    /// Opens the journal (creating an empty one) and returns it with its changes in order.
    static func open(device: any StorageDevice) throws -> (DirectoryJournal, [DirectoryChange]) {
        typealias F = DirectoryJournalFormat
        var changes: [DirectoryChange] = []
        if let bytes = try device.readWhole(F.fileName, limit: F.maxFileSize) {
            guard let decoded = DirectoryChange.decodeFile(bytes) else {
                throw StoreError.corruption("the directory journal \(F.fileName) is not one (bad header); move it away to start without the directories it held")
            }
            changes = decoded.changes
            let file = try device.open(F.fileName, create: false)
            if decoded.validEnd < bytes.count { try file.truncate(to: UInt64(decoded.validEnd)) }
            return (DirectoryJournal(device: device, file: file, length: UInt64(decoded.validEnd), records: changes.count), changes)
        }
        try device.replaceAtomically(F.fileName, bytes: DirectoryChange.header())
        let file = try device.open(F.fileName, create: false)
        return (DirectoryJournal(device: device, file: file, length: UInt64(F.headerSize), records: 0), changes)
    }

    private init(device: any StorageDevice, file: any DeviceFile, length: UInt64, records: Int) {
        self.device = device
        self.file = file
        self.length = length
        appended = records
    }

    /// Appends one change (through the page cache; `synchronize` makes it durable).
    func append(_ change: DirectoryChange) throws {
        let bytes = change.encoded()
        try bytes.withUnsafeBytes { try file.write([$0], at: length) }
        length += UInt64(bytes.count)
        dirty = true
        appended += 1
    }

    var needsSync: Bool { dirty }

    func synchronize() throws {
        guard dirty else { return }
        try file.synchronize()
        dirty = false
    }

    /// The file to sync when appends are unsynced, counted as synced from now (under the store's lock):
    /// the flusher syncs it after releasing the lock, where an `fdatasync` waits for the filesystem's
    /// journal, and calls `syncFailed` if it fails. An append made meanwhile marks it unsynced again.
    func takeUnsynced() -> (any DeviceFile)? {
        guard dirty else { return nil }
        dirty = false
        return file
    }

    func syncFailed() { dirty = true }

    /// Whether the journal holds many more records than there are live directories.
    func wantsCheckpoint(liveDirectories: Int) -> Bool { appended > 4096 && appended > 4 * max(liveDirectories, 1) }

    /// Rewrites the journal as one `create` per live explicit directory (atomically: a new file renamed over).
    func checkpoint(_ changes: [DirectoryChange]) throws {
        var bytes = DirectoryChange.header()
        for c in changes { bytes += c.encoded() }
        try device.replaceAtomically(DirectoryJournalFormat.fileName, bytes: bytes)
        file = try device.open(DirectoryJournalFormat.fileName, create: false)
        length = UInt64(bytes.count)
        dirty = false
        appended = changes.count
    }
}
