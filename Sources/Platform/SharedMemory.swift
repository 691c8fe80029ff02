import CTokenWarehouse
#if canImport(Glibc)
import Glibc
#endif

/// A shared-memory file mapped read-write by its owner (the DRAM tier's writer side): a file on a
/// tmpfs the daemon alone can reach, or an anonymous memfd. Readers get a descriptor of it (never
/// the path) and map it read-only.
///
/// Thread-safety: the mapping is fixed for the object's life; callers coordinate what they write.
public final class SharedMemoryMapping: @unchecked Sendable {
    // Safe: pointer, size and descriptor never change; the bytes are coordinated by the tier's own locks.
    public let name: String
    public let pointer: UnsafeMutableRawPointer
    public let size: Int
    /// The descriptor the mapping came from, kept open to hand to readers.
    public let descriptor: Int32

    /// Creates a file of `size` bytes in `directory` (a tmpfs the daemon owns: nobody else can open,
    /// replace or truncate it), maps it, and unlinks it at once: only descriptors reach it from then on.
    public convenience init(anonymousFileIn directory: String, name: String, size: Int) throws(SystemError) {
        let path = directory + "/" + name
        _ = unlink(path)
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd < 0 { throw SystemError.last("open", path: path) }
        _ = unlink(path)
        try self.init(descriptor: fd, name: path, size: size)
    }

    /// Creates the file `name` of `size` bytes in `directory` (the daemon's own runtime directory) and
    /// maps it, keeping the name: a later daemon finds it by name (to mark a dead daemon's files stale).
    public convenience init(namedFileIn directory: String, name: String, size: Int) throws(SystemError) {
        let path = directory + "/" + name
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd < 0 { throw SystemError.last("open", path: path) }
        try self.init(descriptor: fd, name: path, size: size)
    }

    /// Creates an anonymous memory file (`memfd_create`) of `size` bytes and maps it. With `sealed`,
    /// its size is sealed (`F_SEAL_SHRINK | F_SEAL_GROW`): a reader given a writable descriptor can
    /// still not truncate it under the mappings of others (which would fault them with SIGBUS).
    public convenience init(memoryFileNamed name: String, size: Int, sealed: Bool) throws(SystemError) {
        let fd = name.withCString { tw_memfd_create($0, UInt32(TW_MFD_CLOEXEC | TW_MFD_ALLOW_SEALING)) }
        if fd < 0 { throw SystemError.last("memfd_create", path: name) }
        // A memory file is made with mode 0777, and anyone holding a descriptor of it, even a read-only
        // one, can open /proc/self/fd/N again read-write: a reader handed the tier could then write into
        // it. 0600 leaves that to the daemon's own user (who can reach the daemon's memory anyway).
        if fchmod(fd, 0o600) != 0 {
            let e = SystemError.last("fchmod", path: name)
            close(fd)
            throw e
        }
        try self.init(descriptor: fd, name: "memfd:" + name, size: size)
        if sealed {
            let seals = Int32(TW_F_SEAL_SHRINK | TW_F_SEAL_GROW | TW_F_SEAL_SEAL)
            if tw_fcntl_int(fd, Int32(TW_F_ADD_SEALS), seals) != 0 { throw SystemError.last("fcntl(F_ADD_SEALS)", path: name) }
        }
    }

    private init(descriptor fd: Int32, name: String, size: Int) throws(SystemError) {
        if ftruncate(fd, off_t(size)) != 0 {
            let e = SystemError.last("ftruncate", path: name)
            close(fd)
            throw e
        }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let e = SystemError.last("mmap", path: name)
            close(fd)
            throw e
        }
        self.name = name
        pointer = p
        self.size = size
        descriptor = fd
    }

    deinit {
        munmap(pointer, size)
        close(descriptor)
    }

    /// Faults in the pages of `range` writable, a chunk at a time, until `stop` says so: the kernel
    /// clears each fresh page when it is first touched (on huge pages, 2 MiB at a time), and done here
    /// that cost is not paid by whoever first writes a block there. False when the kernel cannot
    /// (`MADV_POPULATE_WRITE` needs Linux 5.14) or memory ran out: the pages are then faulted as used.
    public func populate(_ range: Range<Int>, chunk: Int = 16 << 20, stop: () -> Bool) -> Bool {
        let populateWrite: Int32 = 23  // MADV_POPULATE_WRITE
        var offset = max(0, range.lowerBound)
        let end = min(size, range.upperBound)
        while offset < end {
            if stop() { return true }
            let n = min(chunk, end - offset)
            if madvise(pointer + offset, n, populateWrite) != 0 { return false }
            offset += n
        }
        return true
    }

    /// A new descriptor of the file, open read-only, for a reader: it can map it read-only and do
    /// nothing else to it (no write, no truncate).
    public func readOnlyDescriptor() throws(SystemError) -> Int32 {
        let fd = open("/proc/self/fd/\(descriptor)", O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw SystemError.last("open", path: "/proc/self/fd/\(descriptor) (\(name))") }
        return fd
    }

    /// Frees the pages of `[offset, offset + length)`: they read as zeros afterwards and hold no memory.
    /// Removed blocks' bytes are gone before their space is reused.
    public func discard(offset: Int, length: Int) {
        guard length > 0 else { return }
        if tw_punch_hole(descriptor, Int64(offset), Int64(length)) != 0 {
            memset(pointer + offset, 0, length)
        }
    }

    @inline(__always)
    public func word(at offset: Int) -> UnsafeMutablePointer<UInt64> {
        (pointer + offset).assumingMemoryBound(to: UInt64.self)
    }
}

/// A read-only shared mapping of a whole file, unmapped when its owner goes away.
///
/// Thread-safety: immutable; concurrent readers of the bytes are safe (the writer's protocol decides
/// whether what they read is consistent).
public final class ReadOnlyMapping: @unchecked Sendable {
    // Safe: pointer and size never change until deinit, which runs when no reader holds the object.
    public let pointer: UnsafeRawPointer
    public let size: Int

    /// Maps all of the file open as `fd` (which the caller keeps or closes).
    public init(descriptor fd: Int32, what: String) throws(SystemError) {
        var st = stat()
        if fstat(fd, &st) != 0 { throw SystemError.last("fstat", path: what) }
        guard st.st_size > 0 else { throw SystemError(EINVAL, "mmap (empty file)", path: what) }
        guard let p = mmap(nil, Int(st.st_size), PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw SystemError.last("mmap", path: what)
        }
        pointer = UnsafeRawPointer(p)
        size = Int(st.st_size)
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: pointer), size) }
}

/// Atomic loads, stores and fences on words of shared memory, for sequence locks that processes in
/// other languages read.
public enum SharedAtomics {
    @inline(__always) public static func loadAcquire(_ p: UnsafePointer<UInt64>) -> UInt64 { tw_load_acquire_u64(p) }
    @inline(__always) public static func loadRelaxed(_ p: UnsafePointer<UInt64>) -> UInt64 { tw_load_relaxed_u64(p) }
    @inline(__always) public static func storeRelease(_ p: UnsafeMutablePointer<UInt64>, _ v: UInt64) { tw_store_release_u64(p, v) }
    @inline(__always) public static func storeRelaxed(_ p: UnsafeMutablePointer<UInt64>, _ v: UInt64) { tw_store_relaxed_u64(p, v) }
    @inline(__always) public static func loadRelaxed32(_ p: UnsafePointer<UInt32>) -> UInt32 { tw_load_relaxed_u32(p) }
    @inline(__always) public static func storeRelaxed32(_ p: UnsafeMutablePointer<UInt32>, _ v: UInt32) { tw_store_relaxed_u32(p, v) }
    /// Swaps in `v` and returns what was there (a reader's hit counter taken and reset in one step).
    @inline(__always) public static func exchange32(_ p: UnsafeMutablePointer<UInt32>, _ v: UInt32) -> UInt32 { tw_exchange_u32(p, v) }
    @inline(__always) public static func releaseFence() { tw_fence_release() }
    @inline(__always) public static func acquireFence() { tw_fence_acquire() }
}

/// The id of a group by name (or number), or nil.
public func groupID(named name: String) -> gid_t? {
    if let n = UInt32(name) { return n }
    guard let g = getgrnam(name) else { return nil }
    return g.pointee.gr_gid
}
