// The part of the FUSE handshake libfuse 3.14 cannot express. Its `fuse_conn_info.want` has 32 bits,
// and FUSE_DIRECT_IO_ALLOW_MMAP (Linux 6.6) is bit 36 of the INIT flags: without it a file opened with
// `direct_io` cannot be mapped shared (ENODEV), so reads that bypass the page cache would break `mmap`.
// libfuse lets a session send and receive through its own functions (`fuse_session_custom_io`); these
// pass every message through unchanged but two: the kernel's INIT request is read for whether it offers
// the flag, and the INIT reply gets it when offered. Byte offsets are those of <linux/fuse.h>, protocol 7.39.
import CFuse
import Platform
import Synchronization
import WarehouseFS
#if canImport(Glibc)
import Glibc
#endif

enum InitNegotiation {
    static let opcodeInit: UInt32 = 26
    static let initExtended: UInt32 = 1 << 30  // FUSE_INIT_EXT: flags2 is valid
    static let directIOAllowMmap: UInt32 = 1 << (36 - 32)  // FUSE_DIRECT_IO_ALLOW_MMAP, in flags2

    // fuse_in_header is 40 bytes: len u32, opcode u32, unique u64, ... ; fuse_init_in follows:
    // major, minor, max_readahead, flags, flags2 (u32 each).
    static let requestOpcode = 4, requestUnique = 8, requestFlags = 40 + 12, requestFlags2 = 40 + 16
    // fuse_out_header: len u32, error i32, unique u64. fuse_init_out: flags at 12, flags2 at 32.
    static let replyError = 4, replyUnique = 8, replyFlags = 12, replyFlags2 = 32

    struct Pending {
        /// The INIT request's id while its reply is not sent; nil before and after.
        var unique: UInt64?
        var offered = false
    }

    // One session per process (the daemon's); the state lives until its INIT reply went out.
    static let pending = Mutex(Pending())
    static let done = Atomic<Bool>(false)

    /// The functions libfuse sends and receives through: its own defaults, plus the two amendments.
    static func customIO() -> fuse_custom_io {
        var io = fuse_custom_io()
        io.read = { fd, buffer, length, _ in
            let n = Glibc.read(fd, buffer, length)
            if n >= InitNegotiation.requestFlags2 + 4, !InitNegotiation.done.load(ordering: .relaxed), let buffer {
                InitNegotiation.noteRequest(UnsafeRawBufferPointer(start: buffer, count: n))
            }
            return n
        }
        io.writev = { fd, iov, count, userdata in
            if count >= 2, !InitNegotiation.done.load(ordering: .relaxed), let iov {
                return InitNegotiation.amendReply(fd: fd, iov: iov, count: Int(count), userdata: userdata)
            }
            return Glibc.writev(fd, iov, count)
        }
        // WRITE payloads are spliced into the staging region (FuseAdapter.write_buf): keep splicing.
        io.splice_receive = { fdIn, offIn, fdOut, offOut, length, flags, _ in
            tw_splice(fdIn, offIn, fdOut, offOut, length, flags)
        }
        io.splice_send = { fdIn, offIn, fdOut, offOut, length, flags, _ in
            tw_splice(fdIn, offIn, fdOut, offOut, length, flags)
        }
        return io
    }

    static func noteRequest(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.loadUnaligned(fromByteOffset: requestOpcode, as: UInt32.self) == opcodeInit else { return }
        let flags = bytes.loadUnaligned(fromByteOffset: requestFlags, as: UInt32.self)
        let flags2 = flags & initExtended != 0 ? bytes.loadUnaligned(fromByteOffset: requestFlags2, as: UInt32.self) : 0
        pending.withLock {
            $0.unique = bytes.loadUnaligned(fromByteOffset: requestUnique, as: UInt64.self)
            $0.offered = flags2 & directIOAllowMmap != 0
        }
    }

    /// Sends a reply; the INIT reply goes out with FUSE_DIRECT_IO_ALLOW_MMAP added when the kernel offered it.
    static func amendReply(fd: Int32, iov: UnsafeMutablePointer<iovec>, count: Int, userdata: UnsafeMutableRawPointer?) -> Int {
        let header = UnsafeRawBufferPointer(start: iov[0].iov_base, count: iov[0].iov_len)
        guard header.count >= 16, let (unique, offered) = pending.withLock({ p in p.unique.map { ($0, p.offered) } }),
              header.loadUnaligned(fromByteOffset: replyUnique, as: UInt64.self) == unique else {
            return Glibc.writev(fd, iov, Int32(count))
        }
        pending.withLock { $0.unique = nil }
        done.store(true, ordering: .relaxed)
        let succeeded = header.loadUnaligned(fromByteOffset: replyError, as: Int32.self) == 0
        let body = UnsafeRawBufferPointer(start: iov[1].iov_base, count: iov[1].iov_len)
        var granted = false
        var amended = [UInt8](body)
        if succeeded && offered && amended.count >= replyFlags2 + 4 {
            amended.withUnsafeMutableBytes { out in
                let flags = out.loadUnaligned(fromByteOffset: replyFlags, as: UInt32.self)
                out.storeBytes(of: flags | initExtended, toByteOffset: replyFlags, as: UInt32.self)
                let flags2 = out.loadUnaligned(fromByteOffset: replyFlags2, as: UInt32.self)
                out.storeBytes(of: flags2 | directIOAllowMmap, toByteOffset: replyFlags2, as: UInt32.self)
            }
            granted = true
        }
        let sent = amended.withUnsafeMutableBytes { out -> Int in
            var parts = Array(UnsafeBufferPointer(start: iov, count: count))
            parts[1] = iovec(iov_base: out.baseAddress, iov_len: out.count)
            return Glibc.writev(fd, &parts, Int32(count))
        }
        if succeeded, let userdata {
            Unmanaged<WarehouseFileSystem>.fromOpaque(userdata).takeUnretainedValue().kernelNegotiated(directIOMappable: granted && sent >= 0)
        }
        return sent
    }
}
