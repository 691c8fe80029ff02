import CSystem
#if canImport(Glibc)
import Glibc
#endif

/// A file in /dev/shm mapped read-write and shared, owned by this process (the DRAM tier's writer side).
///
/// Thread-safety: the mapping is fixed for the object's life; callers coordinate what they write.
public final class SharedMemoryMapping: @unchecked Sendable {
    // Safe: pointer and size never change; the bytes are coordinated by the tier's own locks.
    public let path: String
    public let pointer: UnsafeMutableRawPointer
    public let size: Int

    /// Creates (replacing any stale file of a dead daemon) and maps `path` of `size` bytes, with
    /// `mode` and, when given, group `group`.
    public init(creating path: String, size: Int, mode: mode_t, group: gid_t?) throws(SystemError) {
        _ = unlink(path)
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        if fd < 0 { throw SystemError.last("open", path: path) }
        defer { close(fd) }
        if let group, fchown(fd, getuid(), group) != 0 { throw SystemError.last("fchown", path: path) }
        if fchmod(fd, mode) != 0 { throw SystemError.last("fchmod", path: path) }
        if ftruncate(fd, off_t(size)) != 0 { throw SystemError.last("ftruncate", path: path) }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw SystemError.last("mmap", path: path)
        }
        self.path = path
        pointer = p
        self.size = size
    }

    deinit { munmap(pointer, size) }

    /// Removes the file (mappings stay valid until unmapped).
    public func unlinkFile() { _ = unlink(path) }

    @inline(__always)
    public func word(at offset: Int) -> UnsafeMutablePointer<UInt64> {
        (pointer + offset).assumingMemoryBound(to: UInt64.self)
    }
}

/// Atomic loads, stores and fences on words of shared memory, for sequence locks that processes in
/// other languages read.
public enum SharedAtomics {
    @inline(__always) public static func loadAcquire(_ p: UnsafeMutablePointer<UInt64>) -> UInt64 { tw_load_acquire_u64(p) }
    @inline(__always) public static func storeRelease(_ p: UnsafeMutablePointer<UInt64>, _ v: UInt64) { tw_store_release_u64(p, v) }
    @inline(__always) public static func storeRelaxed(_ p: UnsafeMutablePointer<UInt64>, _ v: UInt64) { tw_store_relaxed_u64(p, v) }
    @inline(__always) public static func releaseFence() { tw_fence_release() }
    @inline(__always) public static func acquireFence() { tw_fence_acquire() }
}

/// The id of a group by name, or nil.
public func groupID(named name: String) -> gid_t? {
    if let n = UInt32(name) { return n }
    guard let g = getgrnam(name) else { return nil }
    return g.pointee.gr_gid
}
