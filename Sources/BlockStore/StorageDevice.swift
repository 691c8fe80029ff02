import Platform
#if canImport(Glibc)
import Glibc
#endif

/// The seam between the store and the disk: the store does all its I/O through this protocol, so
/// tests can substitute a device that loses unsynced writes (`VolatileStorageDevice`).
public protocol StorageDevice: Sendable {
    /// Where the device lives, for messages.
    var location: String { get }
    /// Names of the files in the store.
    func fileNames() throws -> [String]
    /// Opens (and with `create`, creates) a file of the store.
    func open(_ name: String, create: Bool) throws -> any DeviceFile
    func remove(_ name: String) throws
    /// Replaces a small file atomically and durably (summaries, the namespace table).
    func replaceAtomically(_ name: String, bytes: [UInt8]) throws
    /// The whole content of a small file, or nil when it does not exist.
    func readWhole(_ name: String) throws -> [UInt8]?
    /// Makes creations and removals of files durable.
    func synchronizeDirectory() throws
    /// Takes the store's exclusive lock, held as long as the returned token lives.
    func lockExclusively() throws -> AnyObject
    /// Total and available bytes of the underlying filesystem.
    func space() -> (total: UInt64, available: UInt64)
}

/// A file of the store. Positional reads and writes may run concurrently from many threads.
public protocol DeviceFile: AnyObject, Sendable {
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int
    /// Writes `parts` one after another at `offset`; with `direct`, bypassing the page cache when
    /// every part is page-aligned (`O_DIRECT`), otherwise through it.
    func write(_ parts: [UnsafeRawBufferPointer], at offset: UInt64, direct: Bool) throws
    /// Lets the kernel drop cached pages of the file (after they were synced).
    func dropCachedPages()
    func synchronize() throws
    func truncate(to length: UInt64) throws
    func length() throws -> UInt64
    /// Makes a range read as zeros (and frees its space where the filesystem can): what a failed
    /// write leaves behind must not look like a damaged record.
    func zeroRange(at offset: UInt64, length: UInt64) throws
}

/// The real device: files in a directory on local disk.
public struct DirectoryStorageDevice: StorageDevice {
    public let directory: String

    public init(directory: String) throws {
        try FileSystem.makeDirectories(directory, mode: 0o750)
        self.directory = directory
    }

    public var location: String { directory }

    public func fileNames() throws -> [String] { try FileSystem.listDirectory(directory) }

    public func open(_ name: String, create: Bool) throws -> any DeviceFile {
        try PosixDeviceFile(path: directory + "/" + name, create: create)
    }

    public func remove(_ name: String) throws {
        do { try FileSystem.remove(directory + "/" + name) } catch let e where e.code == ENOENT {}
    }

    public func replaceAtomically(_ name: String, bytes: [UInt8]) throws {
        try FileSystem.writeFileAtomically(directory + "/" + name, bytes: bytes, directory: directory)
    }

    public func readWhole(_ name: String) throws -> [UInt8]? {
        do { return try FileSystem.readFile(directory + "/" + name) } catch let e where e.code == ENOENT { return nil }
    }

    public func synchronizeDirectory() throws { try FileSystem.synchronizeDirectory(directory) }

    public func lockExclusively() throws -> AnyObject {
        let path = directory + "/LOCK"
        let lock: ExclusiveFileLock
        do {
            lock = try ExclusiveFileLock(path: path)
        } catch {
            guard error.code == EWOULDBLOCK else { throw error }
            var holder = "?"
            if let bytes = try? FileSystem.readFile(path) {
                holder = String(decoding: bytes.filter { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self)
            }
            throw StoreError.locked("store \(directory) is in use by another process (pid \(holder)); stop it or use another --store")
        }
        lock.recordHolder(pid: getpid())
        return lock
    }

    public func space() -> (total: UInt64, available: UInt64) {
        (try? FileSystem.space(of: directory)) ?? (0, 0)
    }
}

/// A segment file on disk, open twice: with `O_DIRECT` for page-aligned record reads (and writes under
/// `--sync always`: no page-cache copy, as fio's direct I/O), and buffered for everything else. Linux keeps the two coherent
/// (direct I/O writes back and invalidates cached pages of its range). Filesystems without `O_DIRECT`
/// (tmpfs) get the buffered descriptor only.
final class PosixDeviceFile: DeviceFile {
    let buffered: FileDescriptor
    /// Opened with O_DIRECT when `directIO`; otherwise a second buffered descriptor.
    let direct: FileDescriptor
    let directIO: Bool

    init(path: String, create: Bool) throws {
        buffered = try FileDescriptor(open: path, flags: O_RDWR | (create ? O_CREAT : 0), mode: 0o640)
        var usable = true
        var fd = Glibc.open(path, O_RDWR | O_CLOEXEC | openDirectFlag)
        if fd < 0 {
            usable = false
            fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
            if fd < 0 { throw SystemError.last("open", path: path) }
        }
        direct = FileDescriptor(adopting: fd, path: path)
        directIO = usable
    }

    @inline(__always)
    static func aligned(_ address: UnsafeRawPointer?, _ count: Int) -> Bool {
        guard let address else { return count == 0 }
        return UInt(bitPattern: address) % 4096 == 0 && count % 4096 == 0
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        if directIO && offset % 4096 == 0 && Self.aligned(buffer.baseAddress, buffer.count) {
            return try direct.read(into: buffer, at: offset)
        }
        return try buffered.read(into: buffer, at: offset)
    }

    func write(_ parts: [UnsafeRawBufferPointer], at offset: UInt64, direct useDirect: Bool) throws {
        if useDirect && directIO && offset % 4096 == 0 && parts.allSatisfy({ Self.aligned($0.baseAddress, $0.count) }) {
            return try direct.write(parts, at: offset)
        }
        try buffered.write(parts, at: offset)
    }

    func dropCachedPages() { buffered.advise(POSIX_FADV_DONTNEED) }

    func synchronize() throws { try buffered.synchronize() }
    func truncate(to length: UInt64) throws { try buffered.truncate(to: length) }
    func length() throws -> UInt64 { try buffered.length() }
    func zeroRange(at offset: UInt64, length: UInt64) throws { try buffered.zeroRange(at: offset, length: length) }
}
