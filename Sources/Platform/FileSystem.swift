import CTokenWarehouse
#if canImport(Glibc)
import Glibc
#endif

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
        // Split at the byte `/` (a `/` and a combining mark after it are one Character in Swift).
        for component in path.utf8.split(separator: UInt8(ascii: "/")) {
            current += "/" + String(decoding: component, as: UTF8.self)
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

    /// Owner, group and mode of `path` itself (a symlink is not followed).
    public static func ownership(of path: String) throws(SystemError) -> (uid: UInt32, gid: UInt32, mode: UInt32, isDirectory: Bool) {
        var st = stat()
        if lstat(path, &st) != 0 { throw SystemError.last("lstat", path: path) }
        return (st.st_uid, st.st_gid, st.st_mode & 0o7777, st.st_mode & S_IFMT == S_IFDIR)
    }

    /// Reads a whole small file, to its end (also /proc files, whose size reads as zero).
    public static func readFile(_ path: String) throws(SystemError) -> [UInt8] {
        let fd = try FileDescriptor(open: path, flags: O_RDONLY)
        return try readAll(fd, limit: .max)
    }

    /// The target of a symbolic link (also /proc's magic links, e.g. `/proc/PID/fd/N`).
    /// The device (major << 32 | minor) and inode number of what `path` leads to, from cached
    /// attributes (no FUSE or network filesystem is asked); nil when it cannot be found.
    public static func identity(of path: String) -> (device: UInt64, inode: UInt64)? {
        var device: UInt64 = 0, inode: UInt64 = 0
        return tw_statx_identity(AT_FDCWD, path, &device, &inode) == 0 ? (device, inode) : nil
    }

    /// `identity(of:)` of every entry of `directory` (a /proc/PID/fd listing: what each descriptor leads
    /// to), calling `body` with each until it returns false. The directory is opened once, read with
    /// `getdents64` into a buffer on the stack, and each entry looked up relative to it, so an entry costs
    /// one `statx` of one path component. Returns how many entries (other than "." and "..") were seen,
    /// whether or not their `statx` succeeded: a descriptor closed meanwhile still counts.
    @discardableResult
    public static func forEachIdentity(in directory: String, _ body: (UInt64, UInt64) -> Bool) throws(SystemError) -> Int {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { throw SystemError.last("open", path: directory) }
        defer { close(fd) }
        // struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
        let capacity = 8192
        let (seen, failure) = withUnsafeTemporaryAllocation(byteCount: capacity, alignment: 8) { buffer -> (Int, Int32) in
            let base = buffer.baseAddress!
            var seen = 0
            while true {
                let n = tw_getdents64(fd, base, capacity)
                if n < 0 { return (seen, errno) }
                if n == 0 { return (seen, 0) }
                var at = 0
                while at < n {
                    let length = Int(base.loadUnaligned(fromByteOffset: at + 16, as: UInt16.self))
                    guard length > 0 else { return (seen, 0) }
                    let name = (base + at + 19).assumingMemoryBound(to: CChar.self)
                    at += length
                    if name[0] == 0x2E { continue }  // "." and ".."
                    seen += 1
                    var device: UInt64 = 0, inode: UInt64 = 0
                    guard tw_statx_identity(fd, name, &device, &inode) == 0 else { continue }
                    if !body(device, inode) { return (seen, 0) }
                }
            }
        }
        if failure != 0 { throw SystemError(failure, "getdents64", path: directory) }
        return seen
    }

    public static func readLink(_ path: String) throws(SystemError) -> String {
        var buffer = [CChar](repeating: 0, count: 4097)
        let n = readlink(path, &buffer, 4096)
        if n < 0 { throw SystemError.last("readlink", path: path) }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Reads a whole file the daemon owns (the store's small files): no symlink is followed, only a
    /// regular file is read, and one longer than `limit` bytes is refused (`EFBIG`) instead of read
    /// into memory.
    public static func readOwnFile(_ path: String, limit: Int) throws(SystemError) -> [UInt8] {
        let fd = try FileDescriptor(openOwnFile: path, flags: O_RDONLY)
        if try fd.length() > UInt64(limit) { throw SystemError(EFBIG, "read (the file is larger than \(limit) bytes)", path: path) }
        return try readAll(fd, limit: limit)
    }

    private static func readAll(_ fd: borrowing FileDescriptor, limit: Int) throws(SystemError) -> [UInt8] {
        let chunk = max(4096, min(Int(try fd.length()) + 1, 1 << 20))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
        defer { buffer.deallocate() }
        var bytes: [UInt8] = []
        while true {
            let n = retryOnInterrupt { Glibc.read(fd.rawValue, buffer.baseAddress!, chunk) }
            if n < 0 { throw SystemError.last("read", path: fd.path) }
            if n == 0 { break }
            bytes.append(contentsOf: buffer[0..<n])
            if bytes.count > limit { throw SystemError(EFBIG, "read (the file is larger than \(limit) bytes)", path: fd.path) }
        }
        return bytes
    }

    /// Replaces a small file atomically: write a temporary, sync it, rename it over, sync the directory.
    /// The temporary is created fresh (`O_EXCL`, no symlink followed): whatever stood in its place is
    /// removed first, so a planted link cannot redirect the write.
    public static func writeFileAtomically(_ path: String, bytes: [UInt8], directory: String) throws(SystemError) {
        let temporary = path + ".tmp"
        _ = unlink(temporary)
        do {
            let fd = try FileDescriptor(open: temporary, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o640)
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

extension FileSystem {
    /// Sets an extended attribute on an open file (`fsetxattr`); returns 0 or the errno.
    public static func setExtendedAttribute(descriptor fd: Int32, name: String, value: [UInt8]) -> Int32 {
        let rc = value.withUnsafeBytes { fsetxattr(fd, name, $0.baseAddress, $0.count, 0) }
        return rc == 0 ? 0 : errno
    }
}
