// FuseBridge: the only importer of libfuse. `FuseAdapter` is the low-level operations table: each
// callback decodes its arguments, calls `WarehouseFileSystem`, and sends exactly one reply.
// `FuseSession` mounts, runs the worker threads and unmounts. Thread-safety: callbacks run on libfuse's
// worker threads and keep no state of their own.
import CFuse
import Platform
import WarehouseFS
#if canImport(Glibc)
import Glibc
#endif

enum FuseAdapter {
    static func fs(_ req: fuse_req_t?) -> WarehouseFileSystem {
        Unmanaged<WarehouseFileSystem>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    /// The caller with its supplementary groups (the kernel sends them on request; libfuse reads
    /// /proc for them, and an exiting process may have none left: then only uid and gid count).
    static func caller(_ req: fuse_req_t?, groups: Bool = false) -> Caller {
        let ctx = fuse_req_ctx(req)!.pointee
        var list: [UInt32] = []
        if groups {
            var buffer = [gid_t](repeating: 0, count: 64)
            let n = buffer.withUnsafeMutableBufferPointer { fuse_req_getgroups(req, Int32($0.count), $0.baseAddress) }
            if n > 0 && Int(n) <= buffer.count { list = Array(buffer[0..<Int(n)]) }
        }
        return Caller(uid: ctx.uid, gid: ctx.gid, groups: list, pid: ctx.pid, umask: ctx.umask)
    }

    static func handle(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> OpenFile? {
        guard let fh = fi?.pointee.fh, fh != 0, let raw = UnsafeRawPointer(bitPattern: UInt(fh)) else { return nil }
        return Unmanaged<OpenFile>.fromOpaque(raw).takeUnretainedValue()
    }

    static func attach(_ handle: OpenFile, to fi: UnsafeMutablePointer<fuse_file_info>?) {
        fi!.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(handle).toOpaque()))
    }

    static func detach(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> OpenFile? {
        guard let fh = fi?.pointee.fh, fh != 0, let raw = UnsafeRawPointer(bitPattern: UInt(fh)) else { return nil }
        fi!.pointee.fh = 0
        return Unmanaged<OpenFile>.fromOpaque(raw).takeRetainedValue()
    }

    static func name(_ p: UnsafePointer<CChar>?) -> [UInt8] {
        guard let p else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: strlen(p)))
    }

    static func entryParameters(_ e: Entry) -> fuse_entry_param {
        var param = fuse_entry_param()
        param.ino = UInt64(e.attributes.st_ino)
        param.generation = 1
        param.attr = e.attributes
        param.attr_timeout = e.attributeTimeout
        param.entry_timeout = e.entryTimeout
        return param
    }

    static func replyEntry(_ req: fuse_req_t?, _ result: FSResult<Entry>) {
        switch result {
        case .success(let e):
            var param = entryParameters(e)
            fuse_reply_entry(req, &param)
        case .failure(let e) where e.code == ENOENT && e.absenceTimeout > 0:
            // A negative entry: inode 0, which the kernel keeps as "absent" for the timeout.
            var param = fuse_entry_param()
            param.entry_timeout = e.absenceTimeout
            fuse_reply_entry(req, &param)
        case .failure(let e):
            fuse_reply_err(req, e.code)
        }
    }

    /// A `READDIR` or `READDIRPLUS` reply: as many entries as fit in `size` bytes (names are read only
    /// for those). A `READDIRPLUS` entry carries its lookup reference (the kernel links every entry it
    /// gets, or forgets it); the references of a reply that could not be sent are forgotten here.
    static func replyDirectory(_ req: fuse_req_t?, size: Int, offset: off_t, fi: UnsafeMutablePointer<fuse_file_info>?, plus: Bool) {
        guard let dir = FuseAdapter.handle(fi) else { fuse_reply_err(req, EBADF); return }
        let fs = FuseAdapter.fs(req)
        let smallest = WarehouseFileSystem.DirectoryEntry.replySize(nameBytes: 1, plus: plus)
        switch fs.readDirectory(dir, offset: Int64(offset), limit: max(1, size / smallest), replyBytes: size, plus: plus) {
        case .failure(let e):
            fuse_reply_err(req, e.code)
        case .success(let entries):
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: max(size, 1))
            defer { buffer.deallocate() }
            var used = 0
            var sent = 0
            for e in entries {
                let n: Int
                if plus {
                    var param = e.entry.map(FuseAdapter.entryParameters) ?? fuse_entry_param()
                    if e.entry == nil {
                        param.attr.st_ino = UInt(e.ino)
                        param.attr.st_mode = e.isDirectory ? S_IFDIR : S_IFREG
                    }
                    n = e.name.withCString { fuse_add_direntry_plus(req, buffer + used, size - used, $0, &param, off_t(e.next)) }
                } else {
                    var st = stat()
                    st.st_ino = UInt(e.ino)
                    st.st_mode = e.isDirectory ? S_IFDIR : S_IFREG
                    n = e.name.withCString { fuse_add_direntry(req, buffer + used, size - used, $0, &st, off_t(e.next)) }
                }
                if n > size - used { break }
                used += n
                sent += 1
            }
            // Entries that did not fit (readDirectory sized them, so none should), or a reply the kernel
            // did not take: their lookup references were never the kernel's.
            let failed = fuse_reply_buf(req, buffer, used) != 0
            for (i, e) in entries.enumerated() where (failed || i >= sent) && !e.isDirectory && e.entry != nil {
                fs.forget(e.ino, count: 1)
            }
        }
    }

    static func replyAttributes(_ req: fuse_req_t?, _ result: FSResult<stat>, timeout: Double) {
        switch result {
        case .success(var st): fuse_reply_attr(req, &st, timeout)
        case .failure(let e): fuse_reply_err(req, e.code)
        }
    }

    static func replyVoid(_ req: fuse_req_t?, _ result: FSResult<Void>) {
        switch result {
        case .success: fuse_reply_err(req, 0)
        case .failure(let e): fuse_reply_err(req, e.code)
        }
    }

    /// Replies to getxattr/listxattr: the size when asked for it, ERANGE when the buffer is short.
    static func replyXattr(_ req: fuse_req_t?, _ value: [UInt8], size: Int) {
        if size == 0 {
            _ = fuse_reply_xattr(req, value.count)
        } else if size < value.count {
            _ = fuse_reply_err(req, ERANGE)
        } else {
            _ = value.withUnsafeBytes { fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), value.count) }
        }
    }

    static func nanoseconds(_ t: timespec) -> UInt64 {
        guard t.tv_sec >= 0 else { return 0 }
        return UInt64(t.tv_sec) &* 1_000_000_000 &+ UInt64(max(0, t.tv_nsec))
    }

    static func makeOperations() -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            guard let conn else { return }
            conn.pointee.max_write = 1 << 20
            conn.pointee.max_readahead = 1 << 20
            conn.pointee.max_background = 64
            conn.pointee.congestion_threshold = 48
            // Without atomic O_TRUNC the kernel sends open(O_TRUNC) as a separate truncate, which we can
            // answer without changing a committed block; with it, the kernel zeroes the size itself.
            conn.pointee.want &= ~UInt32(FUSE_CAP_ATOMIC_O_TRUNC)
            if conn.pointee.capable & UInt32(FUSE_CAP_PARALLEL_DIROPS) != 0 { conn.pointee.want |= UInt32(FUSE_CAP_PARALLEL_DIROPS) }
            if conn.pointee.capable & UInt32(FUSE_CAP_ASYNC_DIO) != 0 { conn.pointee.want |= UInt32(FUSE_CAP_ASYNC_DIO) }
            if conn.pointee.capable & UInt32(FUSE_CAP_SPLICE_READ) != 0 { conn.pointee.want |= UInt32(FUSE_CAP_SPLICE_READ) }
            // READDIRPLUS only where the kernel sees a listing followed by lookups (`ls -l`, rsync, tar):
            // a plain walk keeps the smaller READDIR entries.
            for cap in [FUSE_CAP_READDIRPLUS, FUSE_CAP_READDIRPLUS_AUTO] where conn.pointee.capable & UInt32(cap) != 0 {
                conn.pointee.want |= UInt32(cap)
            }
        }
        ops.lookup = { req, parent, name in
            FuseAdapter.replyEntry(req, FuseAdapter.fs(req).lookup(parent: parent, name: FuseAdapter.name(name), caller: FuseAdapter.caller(req)))
        }
        ops.forget = { req, ino, n in
            FuseAdapter.fs(req).forget(ino, count: n)
            fuse_reply_none(req)
        }
        ops.forget_multi = { req, count, forgets in
            let fs = FuseAdapter.fs(req)
            for i in 0..<count { fs.forget(forgets![i].ino, count: forgets![i].nlookup) }
            fuse_reply_none(req)
        }
        ops.getattr = { req, ino, _ in
            let fs = FuseAdapter.fs(req)
            FuseAdapter.replyAttributes(req, fs.attributes(of: ino), timeout: fs.attributeTimeout(ino))
        }
        ops.setattr = { req, ino, attr, toSet, fi in
            let fs = FuseAdapter.fs(req)
            let set = Int32(toSet)
            guard let a = attr?.pointee else { fuse_reply_err(req, EINVAL); return }
            var change = AttributeChange()
            if set & FUSE_SET_ATTR_SIZE != 0 { change.size = Int(a.st_size) }
            if set & FUSE_SET_ATTR_MODE != 0 { change.mode = a.st_mode & 0o7777 }
            if set & FUSE_SET_ATTR_UID != 0 { change.uid = a.st_uid }
            if set & FUSE_SET_ATTR_GID != 0 { change.gid = a.st_gid }
            let now = wallClockNanoseconds()
            if set & FUSE_SET_ATTR_MTIME_NOW != 0 { change.modifiedNanoseconds = now } else if set & FUSE_SET_ATTR_MTIME != 0 {
                change.modifiedNanoseconds = FuseAdapter.nanoseconds(a.st_mtim)
            }
            if set & FUSE_SET_ATTR_ATIME_NOW != 0 { change.accessedNanoseconds = now } else if set & FUSE_SET_ATTR_ATIME != 0 {
                change.accessedNanoseconds = FuseAdapter.nanoseconds(a.st_atim)
            }
            FuseAdapter.replyAttributes(req, fs.setAttributes(ino: ino, change, caller: FuseAdapter.caller(req)), timeout: 0)
        }
        ops.mkdir = { req, parent, name, mode in
            FuseAdapter.replyEntry(req, FuseAdapter.fs(req).makeDirectory(parent: parent, name: FuseAdapter.name(name), mode: UInt32(mode),
                                                                           caller: FuseAdapter.caller(req)))
        }
        ops.rmdir = { req, parent, name in
            FuseAdapter.replyVoid(req, FuseAdapter.fs(req).removeDirectory(parent: parent, name: FuseAdapter.name(name), caller: FuseAdapter.caller(req)))
        }
        ops.unlink = { req, parent, name in
            FuseAdapter.replyVoid(req, FuseAdapter.fs(req).unlink(parent: parent, name: FuseAdapter.name(name), caller: FuseAdapter.caller(req)))
        }
        ops.rename = { req, parent, name, newParent, newName, flags in
            FuseAdapter.replyVoid(req, FuseAdapter.fs(req).rename(parent: parent, name: FuseAdapter.name(name), newParent: newParent,
                                                                  newName: FuseAdapter.name(newName), flags: UInt32(flags),
                                                                  caller: FuseAdapter.caller(req)))
        }
        // Blocks are files; links and device nodes have no meaning in a warehouse.
        ops.mknod = { req, _, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.symlink = { req, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.link = { req, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.create = { req, parent, name, mode, fi in
            let fs = FuseAdapter.fs(req)
            switch fs.create(parent: parent, name: FuseAdapter.name(name), flags: fi!.pointee.flags, mode: UInt32(mode),
                             caller: FuseAdapter.caller(req)) {
            case .success(let (entry, handle)):
                var param = FuseAdapter.entryParameters(entry)
                FuseAdapter.attach(handle, to: fi)
                fi!.pointee.direct_io = 1
                if fuse_reply_create(req, &param, fi) != 0 {
                    // The caller went away: undo the open.
                    if let h = FuseAdapter.detach(fi) { fs.release(h) }
                }
            case .failure(let e):
                fuse_reply_err(req, e.code)
            }
        }
        ops.open = { req, ino, fi in
            let fs = FuseAdapter.fs(req)
            // The groups cost a read of /proc per request: only the control files' checks need them (the
            // kernel checked a block's permissions before the OPEN).
            let caller = FuseAdapter.caller(req, groups: WarehouseFileSystem.checksGroupsAtOpen(ino))
            switch fs.open(ino: ino, flags: fi!.pointee.flags, caller: caller) {
            case .success(let (handle, keepCache, directIO)):
                FuseAdapter.attach(handle, to: fi)
                fi!.pointee.keep_cache = keepCache ? 1 : 0
                fi!.pointee.direct_io = directIO ? 1 : 0
                // Readers have nothing to flush: spare them a FLUSH request on every close.
                if !handle.needsFlush { fi!.pointee.noflush = 1 }
                if fuse_reply_open(req, fi) != 0, let h = FuseAdapter.detach(fi) { fs.release(h) }
            case .failure(let e):
                fuse_reply_err(req, e.code)
            }
        }
        ops.read = { req, _, size, offset, fi in
            guard let h = FuseAdapter.handle(fi) else { fuse_reply_err(req, EBADF); return }
            var replied = false
            let error = FuseAdapter.fs(req).read(h, size: size, offset: Int(offset)) { bytes in
                fuse_reply_buf(req, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
                replied = true
            }
            if !replied { fuse_reply_err(req, error?.code ?? EIO) }
        }
        // A WRITE's payload reaches the staging region in one copy by the daemon: from the pipe libfuse
        // splices requests into when it can (FUSE_CAP_SPLICE_READ and a pipe of 1 MiB plus a header),
        // or else from the buffer libfuse read the request into. `strace` of 2 MiB writers on this
        // machine showed the second: no `splice` calls (docs/benchmarks.md, fifth session).
        ops.write_buf = { req, _, bufv, offset, fi in
            guard let h = FuseAdapter.handle(fi), let bufv else { fuse_reply_err(req, EBADF); return }
            let size = fuse_buf_size(bufv)
            let result = FuseAdapter.fs(req).write(h, count: size, offset: Int(offset)) { destination in
                var dst = fuse_bufvec(count: 1, idx: 0, off: 0,
                                      buf: (fuse_buf(size: size, flags: fuse_buf_flags(0), mem: destination, fd: -1, pos: 0)))
                let n = fuse_buf_copy(&dst, bufv, fuse_buf_copy_flags(0))
                return n < 0 ? 0 : n
            }
            switch result {
            case .success(let n): fuse_reply_write(req, n)
            case .failure(let e): fuse_reply_err(req, e.code)
            }
        }
        ops.flush = { req, _, fi in
            guard let h = FuseAdapter.handle(fi) else { fuse_reply_err(req, 0); return }
            fuse_reply_err(req, FuseAdapter.fs(req).flush(h, caller: FuseAdapter.caller(req))?.code ?? 0)
        }
        ops.release = { req, _, fi in
            if let h = FuseAdapter.detach(fi) { FuseAdapter.fs(req).release(h) }
            fuse_reply_err(req, 0)
        }
        // A block is committed by close (docs/fuse.md): fsync of a block being written has nothing more
        // to make durable before then, and a committed block is as durable as --sync says.
        ops.fsync = { req, _, _, _ in fuse_reply_err(req, 0) }
        ops.opendir = { req, ino, fi in
            let fs = FuseAdapter.fs(req)
            switch fs.openDirectory(ino: ino, caller: FuseAdapter.caller(req)) {
            case .success(let h):
                FuseAdapter.attach(h, to: fi)
                if fuse_reply_open(req, fi) != 0, let h = FuseAdapter.detach(fi) { fs.release(h) }
            case .failure(let e):
                fuse_reply_err(req, e.code)
            }
        }
        ops.readdir = { req, _, size, offset, fi in FuseAdapter.replyDirectory(req, size: size, offset: offset, fi: fi, plus: false) }
        ops.readdirplus = { req, _, size, offset, fi in FuseAdapter.replyDirectory(req, size: size, offset: offset, fi: fi, plus: true) }
        ops.releasedir = { req, _, fi in
            if let h = FuseAdapter.detach(fi) { FuseAdapter.fs(req).release(h) }
            fuse_reply_err(req, 0)
        }
        ops.fsyncdir = { req, _, _, _ in fuse_reply_err(req, 0) }
        ops.statfs = { req, _ in
            var st = FuseAdapter.fs(req).filesystemStatistics()
            fuse_reply_statfs(req, &st)
        }
        ops.setxattr = { req, ino, name, value, size, flags in
            let bytes = Array(UnsafeRawBufferPointer(start: value, count: size))
            FuseAdapter.replyVoid(req, FuseAdapter.fs(req).setExtendedAttribute(ino: ino, name: String(cString: name!), value: bytes,
                                                                                 flags: flags, caller: FuseAdapter.caller(req)))
        }
        ops.removexattr = { req, ino, name in
            FuseAdapter.replyVoid(req, FuseAdapter.fs(req).setExtendedAttribute(ino: ino, name: String(cString: name!), value: [], remove: true,
                                                                                 caller: FuseAdapter.caller(req)))
        }
        ops.getxattr = { req, ino, name, size in
            switch FuseAdapter.fs(req).getExtendedAttribute(ino: ino, name: String(cString: name!), caller: FuseAdapter.caller(req)) {
            case .success(let value):
                FuseAdapter.replyXattr(req, value, size: size)
            case .failure(let e):
                fuse_reply_err(req, e.code)
            }
        }
        ops.listxattr = { req, ino, size in
            switch FuseAdapter.fs(req).listExtendedAttributes(ino: ino) {
            case .success(let names):
                var bytes: [UInt8] = []
                for n in names { bytes += Array(n.utf8) + [0] }
                FuseAdapter.replyXattr(req, bytes, size: size)
            case .failure(let e):
                fuse_reply_err(req, e.code)
            }
        }
        return ops
    }
}

/// Why mounting failed, in words a person can act on (code, message, cause).
public struct MountError: Error, CustomStringConvertible {
    public let message: String
    public let cause: String?

    public var description: String { cause.map { "\(message) (\($0))" } ?? message }
}

/// A mounted warehouse: the FUSE session around a `WarehouseFileSystem`.
///
/// Thread-safety: create, run and close from one thread; the file system serves requests on the
/// worker threads `run` starts.
public final class FuseSession {
    private let session: OpaquePointer
    private let filesystem: WarehouseFileSystem
    private let unmanaged: Unmanaged<WarehouseFileSystem>
    public let mountpoint: String

    /// Creates the session with libfuse options (`-o` style, e.g. ["allow_other", "fsname=twfs"]) and mounts it.
    public init(filesystem: WarehouseFileSystem, mountpoint: String, options: [String], debug: Bool) throws {
        self.filesystem = filesystem
        self.mountpoint = mountpoint
        let unmanaged = Unmanaged.passRetained(filesystem)
        self.unmanaged = unmanaged
        var argv = ["twfs"]
        if !options.isEmpty { argv += ["-o", options.joined(separator: ",")] }
        if debug { argv.append("-d") }
        var cStrings = argv.map { strdup($0) }
        defer { cStrings.forEach { free($0) } }
        var ops = FuseAdapter.makeOperations()
        let created: OpaquePointer? = cStrings.withUnsafeMutableBufferPointer { buf in
            var args = fuse_args(argc: Int32(buf.count), argv: buf.baseAddress, allocated: 0)
            defer { fuse_opt_free_args(&args) }
            return fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, unmanaged.toOpaque())
        }
        guard let created else {
            unmanaged.release()
            throw MountError(message: "libfuse refused the mount options \(options.joined(separator: ","))",
                             cause: "check the -o options; libfuse printed why above")
        }
        session = created
        // libfuse installs its stop handlers only over the default disposition; a daemon started from a
        // non-interactive shell's background job inherits SIGINT ignored and would not stop on it.
        for sig in [SIGINT, SIGTERM, SIGHUP] { signal(sig, SIG_DFL) }
        if fuse_set_signal_handlers(session) != 0 {
            fuse_session_destroy(session)
            unmanaged.release()
            throw MountError(message: "could not install the signal handlers that stop the daemon", cause: nil)
        }
        if fuse_session_mount(session, mountpoint) != 0 {
            fuse_remove_signal_handlers(session)
            fuse_session_destroy(session)
            unmanaged.release()
            throw MountError(message: "could not mount at \(mountpoint)",
                             cause: "is /dev/fuse there and may this user mount (fusermount3, user_allow_other in /etc/fuse.conf)?")
        }
        // Send and receive through InitNegotiation's functions, which add what libfuse 3.14 cannot ask for.
        // Without them (this cannot fail but for memory) reads simply keep the page cache.
        var io = InitNegotiation.customIO()
        if fuse_session_custom_io(session, &io, fuse_session_fd(session)) != 0 {
            filesystem.kernelNegotiated(directIOMappable: false)
        }
        nonisolated(unsafe) let mounted = session
        filesystem.setEntryInvalidator { parent, name in _ = fuse_lowlevel_notify_inval_entry(mounted, parent, name, name.utf8.count) }
        // Offset -1: the inode's attributes only (no page-cache lock is taken).
        filesystem.setAttributeInvalidator { ino in _ = fuse_lowlevel_notify_inval_inode(mounted, ino, -1, 0) }
        // Bytes into an inode's cached pages, from the daemon (re-read blocks; docs/fuse.md "Reading").
        filesystem.setPageCacheStore { ino, offset, bytes in
            var vector = fuse_bufvec(count: 1, idx: 0, off: 0,
                                     buf: fuse_buf(size: bytes.count, flags: fuse_buf_flags(0),
                                                   mem: UnsafeMutableRawPointer(mutating: bytes.baseAddress), fd: -1, pos: 0))
            return fuse_lowlevel_notify_store(mounted, ino, off_t(offset), &vector, fuse_buf_copy_flags(0))
        }
    }

    /// Detaches from the terminal unless `foreground` (libfuse's fuse_daemonize).
    public func daemonize(foreground: Bool) {
        _ = fuse_daemonize(foreground ? 1 : 0)
    }

    /// Serves requests on up to `threads` worker threads until unmounted or signalled.
    public func run(threads: Int) -> Int32 {
        let config = fuse_loop_cfg_create()
        defer { fuse_loop_cfg_destroy(config) }
        fuse_loop_cfg_set_max_threads(config, UInt32(threads))
        // Every worker stays once started (as memfs, the benchmarks' baseline, runs): with a lower idle
        // limit libfuse ends a worker whenever more than that many wait and starts one (a thread and a
        // cloned /dev/fuse descriptor) when none does. No gain was measurable on this 2-CPU machine.
        fuse_loop_cfg_set_idle_threads(config, UInt32(threads))
        // One /dev/fuse descriptor per worker thread: requests are not funnelled through one queue.
        fuse_loop_cfg_set_clone_fd(config, 1)
        return tw_fuse_session_loop_mt(session, config)
    }

    /// Unmounts and frees the session.
    public func close() {
        filesystem.setEntryInvalidator(nil)
        filesystem.setAttributeInvalidator(nil)
        filesystem.setPageCacheStore(nil)
        fuse_session_unmount(session)
        fuse_remove_signal_handlers(session)
        fuse_session_destroy(session)
        unmanaged.release()
    }
}
