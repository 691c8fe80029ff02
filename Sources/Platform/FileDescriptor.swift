#if canImport(Glibc)
import Glibc
#endif
import CTokenWarehouse

/// An open file descriptor, closed when its owner goes away.
///
/// Thread-safety: positional reads and writes (`pread`, `pwritev`) may run concurrently from many
/// threads; the descriptor itself is immutable.
public struct FileDescriptor: ~Copyable, @unchecked Sendable {
    // Safe to share: an fd is an integer the kernel arbitrates; only deinit closes it, once.
    public let rawValue: Int32
    public let path: String

    /// Opens `path` with `flags` (O_RDWR, O_CREAT, ...), creating with `mode`. Always close-on-exec.
    public init(open path: String, flags: Int32, mode: mode_t = 0o644) throws(SystemError) {
        let fd = retryOnInterrupt { Glibc.open(path, flags | O_CLOEXEC, mode) }
        if fd < 0 { throw SystemError.last("open", path: path) }
        self.rawValue = fd
        self.path = path
    }

    /// Opens a file the daemon owns in a directory of its own (the store): never follows a symbolic
    /// link at the last component, and refuses anything but a regular file (a FIFO would hang the
    /// open or the read, a device would feed it endless bytes).
    ///
    /// - Throws: `ELOOP` for a symlink, `EINVAL` for a non-regular file, or what open(2) gives.
    public init(openOwnFile path: String, flags: Int32, mode: mode_t = 0o640) throws(SystemError) {
        // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused right after.
        let fd = retryOnInterrupt { Glibc.open(path, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode) }
        if fd < 0 { throw SystemError.last("open", path: path) }
        var st = stat()
        if fstat(fd, &st) != 0 {
            let e = SystemError.last("fstat", path: path)
            _ = Glibc.close(fd)
            throw e
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            _ = Glibc.close(fd)
            throw SystemError(EINVAL, "open (not a regular file: something else stands in the store's place)", path: path)
        }
        // Back to blocking I/O for the regular file.
        _ = tw_fcntl_int(fd, F_SETFL, tw_fcntl_int(fd, F_GETFL, 0) & ~O_NONBLOCK)
        rawValue = fd
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

    /// Appends `bytes` at the end of the file (the descriptor must be open with O_APPEND).
    public func append(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        var done = 0
        while done < bytes.count {
            let n = retryOnInterrupt { Glibc.write(rawValue, bytes.baseAddress! + done, bytes.count - done) }
            if n < 0 { throw SystemError.last("write", path: path) }
            if n == 0 { throw SystemError(EIO, "write (wrote nothing)", path: path) }
            done += n
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

    /// Advises the kernel about the access pattern of a range (`posix_fadvise`); failures are ignored.
    public func advise(_ advice: Int32, offset: UInt64 = 0, length: UInt64 = 0) {
        _ = posix_fadvise(rawValue, off_t(offset), off_t(length), advice)
    }
}

/// An exclusive advisory lock on a file (`flock`), held for the owner's lifetime.
///
/// Two processes cannot hold it at once: the second `acquire` fails with `EWOULDBLOCK`.
public final class ExclusiveFileLock: Sendable {
    private let descriptor: FileDescriptor

    /// Takes the lock on `path` (a regular file the daemon owns; created if missing, never a symlink).
    public init(path: String) throws(SystemError) {
        let fd = try FileDescriptor(openOwnFile: path, flags: O_RDWR | O_CREAT, mode: 0o640)
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

/// `O_DIRECT` (Glibc's module hides it behind _GNU_SOURCE).
public let openDirectFlag: Int32 = tw_o_direct()

/// Tunes malloc for a daemon that allocates block-sized buffers all the time (see the C shim). Call once at start.
public func keepLargeAllocationsInHeap() { tw_keep_large_allocations_in_heap() }

/// Bytes of heap in use, as malloc counts them (without the free pages it keeps).
public func heapBytesInUse() -> UInt64 { UInt64(tw_heap_in_use()) }
