import Platform
import WarehouseCore
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
    /// Renames a file of the store over another atomically (`rename(2)`); durable once the directory
    /// is synced.
    func rename(_ name: String, to newName: String) throws
    /// Replaces a small file atomically and durably (summaries, the namespace table).
    func replaceAtomically(_ name: String, bytes: [UInt8]) throws
    /// The whole content of a small file, or nil when it does not exist; a file longer than `limit`
    /// bytes is refused (`SystemError` EFBIG), never read into memory.
    func readWhole(_ name: String, limit: Int) throws -> [UInt8]?
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
    /// Writes `parts` one after another at `offset`, through the page cache (`BlockStore.settle` says
    /// when it is synced).
    func write(_ parts: [UnsafeRawBufferPointer], at offset: UInt64) throws
    /// Lets the kernel drop cached pages of the file (after they were synced).
    func dropCachedPages()
    /// Starts reading a range into the page cache and returns without waiting (`POSIX_FADV_WILLNEED`).
    /// Many small reads started this way reach the device together, where `read` waits for each one
    /// in turn: a listing needs the header page of every block it names.
    func startReading(at offset: UInt64, length: Int)
    /// Reads through the page cache: what `startReading` started is found there or waited for. (Without
    /// the start, a read that misses the cache also reads ahead past the range.)
    func readCached(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int
    /// Lets the kernel drop a range's cached pages once read: the store keeps no record pages cached for itself.
    func dropCached(at offset: UInt64, length: Int)
    func synchronize() throws
    func truncate(to length: UInt64) throws
    func length() throws -> UInt64
    /// Makes a range read as zeros (and frees its space where the filesystem can): what a failed
    /// write leaves behind must not look like a damaged record.
    func zeroRange(at offset: UInt64, length: UInt64) throws
}

extension StorageDevice {
    /// `readWhole` with the limit of the store's small files (summaries and the namespace table).
    public func readWhole(_ name: String) throws -> [UInt8]? { try readWhole(name, limit: 64 << 20) }
}

/// The real device: files in a directory on local disk that belongs to the daemon alone.
///
/// Every file is opened without following a symbolic link and must be a regular file; small files are
/// read only up to a size limit. The directory itself must be the daemon's and writable by nobody else
/// (docs/security.md): otherwise another user could plant links or files in place of the store's.
public struct DirectoryStorageDevice: StorageDevice {
    public let directory: String

    /// Opens (creating it with mode 0700 if missing) the store directory.
    ///
    /// - Parameter requirePrivate: refuse a directory that is a symlink, belongs to another user or
    ///   that group or others may write (the daemon's stores); tools that only read may pass false.
    public init(directory: String, requirePrivate: Bool = true) throws {
        try FileSystem.makeDirectories(directory, mode: 0o700)
        self.directory = directory
        if requirePrivate { try Self.checkPrivate(directory) }
    }

    /// Throws `StoreError.unsafeStore` with what to change when `directory` is not the daemon's alone.
    static func checkPrivate(_ directory: String) throws {
        let o = try FileSystem.ownership(of: directory)
        guard o.isDirectory else {
            throw StoreError.unsafeStore("\(directory) is not a directory (a symbolic link or a file stands there); give the real directory")
        }
        let me = geteuid()
        if o.uid != me {
            throw StoreError.unsafeStore("\(directory) belongs to uid \(o.uid), not to this daemon's uid \(me); chown it to the daemon's user or use another --store")
        }
        if o.mode & 0o022 != 0 {
            throw StoreError.unsafeStore("\(directory) may be written by group or others (mode \(String(o.mode, radix: 8))); run chmod go-w \(directory)")
        }
    }

    public var location: String { directory }

    public func fileNames() throws -> [String] { try FileSystem.listDirectory(directory) }

    public func open(_ name: String, create: Bool) throws -> any DeviceFile {
        try PosixDeviceFile(path: directory + "/" + name, create: create)
    }

    public func remove(_ name: String) throws {
        do { try FileSystem.remove(directory + "/" + name) } catch let e where e.code == ENOENT {}
    }

    public func rename(_ name: String, to newName: String) throws {
        try FileSystem.rename(directory + "/" + name, to: directory + "/" + newName)
    }

    public func replaceAtomically(_ name: String, bytes: [UInt8]) throws {
        try FileSystem.writeFileAtomically(directory + "/" + name, bytes: bytes, directory: directory)
    }

    public func readWhole(_ name: String, limit: Int) throws -> [UInt8]? {
        do { return try FileSystem.readOwnFile(directory + "/" + name, limit: limit) } catch let e where e.code == ENOENT { return nil }
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

/// A segment file on disk, open twice: with `O_DIRECT` for page-aligned record reads, and buffered for
/// writes and everything else. Linux keeps the two coherent (a direct read writes back dirty cached
/// pages of its range first). Filesystems without `O_DIRECT` (tmpfs) get the buffered descriptor only.
///
/// Why writes are buffered, `--sync always` included: a commit is then a copy into memory, and the
/// device sees the flusher's or the group commit's `fdatasync`, which writes many records at once. With
/// `O_DIRECT` records, four writers of 2 MiB blocks at `always` made 247-254 MiB/s against 398-408
/// buffered (docs/benchmarks.md).
final class PosixDeviceFile: DeviceFile {
    let buffered: FileDescriptor
    /// Opened with O_DIRECT when `directIO`; otherwise a second buffered descriptor.
    let direct: FileDescriptor
    let directIO: Bool

    init(path: String, create: Bool) throws {
        buffered = try FileDescriptor(openOwnFile: path, flags: O_RDWR | (create ? O_CREAT : 0), mode: 0o640)
        // The second descriptor is opened through the first (/proc/self/fd), so it is the same file
        // even if the name were replaced in between.
        var usable = true
        var fd = Glibc.open("/proc/self/fd/\(buffered.rawValue)", O_RDWR | O_CLOEXEC | openDirectFlag)
        if fd < 0 {
            usable = false
            fd = Glibc.open("/proc/self/fd/\(buffered.rawValue)", O_RDWR | O_CLOEXEC)
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

    func write(_ parts: [UnsafeRawBufferPointer], at offset: UInt64) throws {
        try buffered.write(parts, at: offset)
    }

    func dropCachedPages() { buffered.advise(POSIX_FADV_DONTNEED) }

    func startReading(at offset: UInt64, length: Int) {
        buffered.advise(POSIX_FADV_WILLNEED, offset: offset, length: UInt64(length))
    }

    func readCached(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        try buffered.read(into: buffer, at: offset)
    }

    func dropCached(at offset: UInt64, length: Int) {
        buffered.advise(POSIX_FADV_DONTNEED, offset: offset, length: UInt64(length))
    }

    func synchronize() throws { try buffered.synchronize() }
    func truncate(to length: UInt64) throws { try buffered.truncate(to: length) }
    func length() throws -> UInt64 { try buffered.length() }
    func zeroRange(at offset: UInt64, length: UInt64) throws { try buffered.zeroRange(at: offset, length: length) }
}
