#if canImport(Glibc)
import Glibc
#endif
import CSystem

/// An open file descriptor, closed when its owner goes away.
///
/// Thread-safety: positional reads and writes (`pread`, `pwritev`) may run concurrently from many
/// threads; the descriptor itself is immutable.
public struct FileDescriptor: ~Copyable, @unchecked Sendable {
    // Safe to share: an fd is an integer the kernel arbitrates; only deinit closes it, once.
    public let rawValue: Int32
    public let path: String

    /// Opens `path` with `flags` (O_RDWR, O_CREAT, ...), creating with `mode`.
    public init(open path: String, flags: Int32, mode: mode_t = 0o644) throws(SystemError) {
        let fd = retryOnInterrupt { Glibc.open(path, flags | O_CLOEXEC, mode) }
        if fd < 0 { throw SystemError.last("open", path: path) }
        self.rawValue = fd
        self.path = path
    }

    /// Takes ownership of an open descriptor.
    public init(adopting fd: Int32, path: String) {
        rawValue = fd
        self.path = path
    }

    deinit { _ = Glibc.close(rawValue) }

    /// Reads up to `buffer.count` bytes at `offset`; returns how many were read (short only at end of file).
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        var done = 0
        while done < buffer.count {
            let n = retryOnInterrupt {
                Glibc.pread(rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n < 0 { throw SystemError.last("pread", path: path) }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes all of `parts`, one after another, starting at `offset` (one `pwritev` when the kernel takes it whole).
    public func write(_ parts: [UnsafeRawBufferPointer], at offset: UInt64) throws(SystemError) {
        var iov = parts.filter { $0.count > 0 }.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
        var position = off_t(offset)
        var index = 0
        while index < iov.count {
            let n = iov.withUnsafeMutableBufferPointer { vec in
                retryOnInterrupt { Glibc.pwritev(rawValue, vec.baseAddress! + index, Int32(min(vec.count - index, 1024)), position) }
            }
            if n < 0 { throw SystemError.last("pwrite", path: path) }
            if n == 0 { throw SystemError(EIO, "pwrite (wrote nothing)", path: path) }
            position += off_t(n)
            var left = n
            while left > 0 && index < iov.count {
                if left >= iov[index].iov_len {
                    left -= iov[index].iov_len
                    index += 1
                } else {
                    iov[index].iov_base = iov[index].iov_base! + left
                    iov[index].iov_len -= left
                    left = 0
                }
            }
        }
    }

    /// Makes written data durable (`fdatasync`).
    public func synchronize() throws(SystemError) {
        if retryOnInterrupt({ fdatasync(rawValue) }) != 0 { throw SystemError.last("fdatasync", path: path) }
    }

    /// Sets the file's length.
    public func truncate(to length: UInt64) throws(SystemError) {
        if retryOnInterrupt({ ftruncate(rawValue, off_t(length)) }) != 0 { throw SystemError.last("ftruncate", path: path) }
    }

    /// The file's current length.
    public func length() throws(SystemError) -> UInt64 {
        var st = stat()
        if fstat(rawValue, &st) != 0 { throw SystemError.last("fstat", path: path) }
        return UInt64(st.st_size)
    }

    /// Advises the kernel about the access pattern of a range (`posix_fadvise`); failures are ignored.
    /// Frees the bytes of a range, which then reads as zeros (`fallocate` punching a hole); where the
    /// filesystem cannot, writes zeros over it.
    public func zeroRange(at offset: UInt64, length: UInt64) throws(SystemError) {
        if tw_punch_hole(rawValue, Int64(offset), Int64(length)) == 0 { return }
        let zeros = [UInt8](repeating: 0, count: 1 << 16)
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(UInt64(zeros.count), length - done))
            let w = zeros.withUnsafeBytes { pwrite(rawValue, $0.baseAddress, n, off_t(offset + done)) }
            if w <= 0 { throw SystemError.last("pwrite", path: path) }
            done += UInt64(w)
        }
    }

    public func advise(_ advice: Int32, offset: UInt64 = 0, length: UInt64 = 0) {
        _ = posix_fadvise(rawValue, off_t(offset), off_t(length), advice)
    }
}

/// An exclusive advisory lock on a file (`flock`), held for the owner's lifetime.
///
/// Two processes cannot hold it at once: the second `acquire` fails with `EWOULDBLOCK`.
public final class ExclusiveFileLock: Sendable {
    private let descriptor: FileDescriptor

    public init(path: String) throws(SystemError) {
        let fd = try FileDescriptor(open: path, flags: O_RDWR | O_CREAT, mode: 0o644)
        if retryOnInterrupt({ flock(fd.rawValue, LOCK_EX | LOCK_NB) }) != 0 {
            throw SystemError.last("flock", path: path)
        }
        descriptor = fd
    }

    /// Records the holder's pid in the lock file, so the next one to fail can say who holds it.
    public func recordHolder(pid: Int32) {
        let text = Array("\(pid)\n".utf8)
        try? descriptor.truncate(to: 0)
        text.withUnsafeBytes { try? descriptor.write([$0], at: 0) }
    }
}

/// Filesystem helpers on paths.
public enum FileSystem {
    /// Names of the entries of a directory, without `.` and `..`.
    public static func listDirectory(_ path: String) throws(SystemError) -> [String] {
        guard let dir = opendir(path) else { throw SystemError.last("opendir", path: path) }
        defer { closedir(dir) }
        var names: [String] = []
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        while let entry = readdir(dir) {
            // d_name is NUL-terminated inside a fixed array; read only up to the NUL.
            let name = String(cString: (UnsafeRawPointer(entry) + nameOffset).assumingMemoryBound(to: CChar.self))
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Creates `path` and its missing parents with `mode`.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(SystemError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, mode) != 0 && errno != EEXIST { throw SystemError.last("mkdir", path: current) }
        }
    }

    public static func remove(_ path: String) throws(SystemError) {
        if unlink(path) != 0 { throw SystemError.last("unlink", path: path) }
    }

    /// Renames atomically (`rename(2)`).
    public static func rename(_ from: String, to: String) throws(SystemError) {
        if Glibc.rename(from, to) != 0 { throw SystemError.last("rename", path: from) }
    }

    /// Makes a directory's entries durable (after create, rename, unlink).
    public static func synchronizeDirectory(_ path: String) throws(SystemError) {
        let fd = try FileDescriptor(open: path, flags: O_RDONLY | O_DIRECTORY)
        if fsync(fd.rawValue) != 0 { throw SystemError.last("fsync", path: path) }
    }

    /// Total and available bytes of the filesystem holding `path`.
    public static func space(of path: String) throws(SystemError) -> (total: UInt64, available: UInt64) {
        var st = statvfs()
        if statvfs(path, &st) != 0 { throw SystemError.last("statvfs", path: path) }
        return (UInt64(st.f_blocks) * UInt64(st.f_frsize), UInt64(st.f_bavail) * UInt64(st.f_frsize))
    }

    /// Whether `path` exists.
    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0
    }

    /// Reads a whole small file, to its end (also /proc files, whose size reads as zero).
    public static func readFile(_ path: String) throws(SystemError) -> [UInt8] {
        let fd = try FileDescriptor(open: path, flags: O_RDONLY)
        let chunk = max(4096, Int(try fd.length()) + 1)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
        defer { buffer.deallocate() }
        var bytes: [UInt8] = []
        while true {
            let n = retryOnInterrupt { Glibc.read(fd.rawValue, buffer.baseAddress!, chunk) }
            if n < 0 { throw SystemError.last("read", path: path) }
            if n == 0 { break }
            bytes.append(contentsOf: buffer[0..<n])
        }
        return bytes
    }

    /// Replaces a small file atomically: write a temporary, sync it, rename it over, sync the directory.
    public static func writeFileAtomically(_ path: String, bytes: [UInt8], directory: String) throws(SystemError) {
        let temporary = path + ".tmp"
        do {
            let fd = try FileDescriptor(open: temporary, flags: O_WRONLY | O_CREAT | O_TRUNC)
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
            defer { copy.deallocate() }
            copy.copyBytes(from: bytes)
            try fd.write([UnsafeRawBufferPointer(rebasing: copy[0..<bytes.count])], at: 0)
            try fd.synchronize()
        }
        try rename(temporary, to: path)
        try synchronizeDirectory(directory)
    }
}

/// `O_DIRECT` (Glibc's module hides it behind _GNU_SOURCE).
public let openDirectFlag: Int32 = tw_o_direct()

/// Tunes malloc for a daemon that allocates block-sized buffers all the time (see the C shim). Call once at start.
public func keepLargeAllocationsInHeap() { tw_keep_large_allocations_in_heap() }

/// Bytes of heap in use, as malloc counts them (without the free pages it keeps).
public func heapBytesInUse() -> UInt64 { UInt64(tw_heap_in_use()) }
