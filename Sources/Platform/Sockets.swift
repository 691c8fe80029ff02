import CTokenWarehouse
#if canImport(Glibc)
import Glibc
#endif

/// Who is at the other end of a unix socket, as the kernel says (not as the peer claims).
public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    /// Supplementary groups (SO_PEERGROUPS), without `gid`.
    public var groups: [UInt32]

    public init(pid: Int32, uid: UInt32, gid: UInt32, groups: [UInt32]) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.groups = groups
    }

    public func isMember(of group: UInt32) -> Bool { gid == group || groups.contains(group) }
}

/// A connected unix socket (SOCK_SEQPACKET: messages keep their boundaries) that can carry descriptors.
///
/// Thread-safety: one owner at a time; closed when it goes away.
public struct UnixConnection: ~Copyable, @unchecked Sendable {
    // Safe: the descriptor is an integer owned by this value alone; only deinit closes it.
    public let descriptor: Int32

    init(descriptor: Int32) { self.descriptor = descriptor }

    /// Connects to the socket at `path`.
    public init(connectingTo path: String) throws(SystemError) {
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError.last("socket", path: path) }
        var address = try Self.address(path)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            let e = SystemError.last("connect", path: path)
            close(fd)
            throw e
        }
        descriptor = fd
    }

    deinit { close(descriptor) }

    static func address(_ path: String) throws(SystemError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw SystemError(ENAMETOOLONG, "socket path", path: path) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        return address
    }

    /// The kernel's account of the peer (SO_PEERCRED, SO_PEERGROUPS).
    public func peer() throws(SystemError) -> PeerCredentials {
        var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
        if tw_peer_credentials(descriptor, &pid, &uid, &gid) != 0 { throw SystemError.last("getsockopt(SO_PEERCRED)") }
        var groups = [UInt32](repeating: 0, count: 256)
        let n = groups.withUnsafeMutableBufferPointer { tw_peer_groups(descriptor, $0.baseAddress, Int32($0.count)) }
        return PeerCredentials(pid: pid, uid: uid, gid: gid, groups: n > 0 ? Array(groups[0..<Int(n)]) : [])
    }

    /// Sends one message with up to 16 descriptors (which stay open here).
    public func send(_ bytes: [UInt8], descriptors: [Int32] = []) throws(SystemError) {
        let n = bytes.withUnsafeBytes { raw in
            descriptors.withUnsafeBufferPointer { fds in
                tw_send_with_descriptors(descriptor, raw.baseAddress, raw.count, fds.baseAddress, Int32(fds.count))
            }
        }
        if n < 0 { throw SystemError.last("sendmsg") }
    }

    /// Receives one message (at most `capacity` bytes) and the descriptors that came with it, which
    /// the caller now owns. An empty message with no descriptors means the peer closed.
    public func receive(capacity: Int = 65536) throws(SystemError) -> (bytes: [UInt8], descriptors: [Int32]) {
        var buffer = [UInt8](repeating: 0, count: capacity)
        var fds = [Int32](repeating: -1, count: 16)
        var count: Int32 = 0
        let n = buffer.withUnsafeMutableBytes { raw in
            fds.withUnsafeMutableBufferPointer { f in
                tw_receive_with_descriptors(descriptor, raw.baseAddress, raw.count, f.baseAddress, 16, &count)
            }
        }
        if n < 0 { throw SystemError.last("recvmsg") }
        return (Array(buffer[0..<n]), Array(fds[0..<Int(count)]))
    }

    /// Sets a receive and send timeout, so a peer that stops answering cannot hold the other end.
    public func setTimeout(seconds: Int) {
        var t = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
    }
}

/// A listening unix socket (SOCK_SEQPACKET) at a path, removed when the listener goes away.
public final class UnixListener: @unchecked Sendable {
    // Safe: the descriptor and path never change; `accept` may run on one thread while `shutdown`
    // runs on another (the kernel arbitrates).
    public let path: String
    private let descriptor: Int32

    /// Binds `path` (an old socket file there is replaced) with permission bits `mode`.
    public init(path: String, mode: mode_t) throws(SystemError) {
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError.last("socket", path: path) }
        _ = unlink(path)
        var address: sockaddr_un
        do { address = try UnixConnection.address(path) } catch {
            close(fd)
            throw error
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, chmod(path, mode) == 0, listen(fd, 64) == 0 else {
            let e = SystemError.last("bind", path: path)
            close(fd)
            throw e
        }
        self.path = path
        descriptor = fd
    }

    deinit {
        close(descriptor)
        _ = unlink(path)
    }

    /// Waits for a connection; nil once the listener was shut down.
    public func accept() -> UnixConnection? {
        while true {
            let fd = tw_accept_cloexec(descriptor)
            if fd >= 0 { return UnixConnection(descriptor: fd) }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }

    /// Makes a thread blocked in `accept` return nil.
    public func shutdown() { _ = Glibc.shutdown(descriptor, Int32(SHUT_RDWR)) }
}

/// A listening TCP socket (IPv4) for the metrics endpoint.
public final class TCPListener: @unchecked Sendable {
    // Safe: the descriptor never changes; `accept` and `shutdown` may run on different threads.
    public let host: String
    public let port: UInt16
    private let descriptor: Int32

    /// Binds `host:port` (port 0: any free port).
    public init(host: String, port: UInt16) throws(SystemError) {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &sin.sin_addr) == 1 else { throw SystemError(EINVAL, "'\(host)' is not an IPv4 address") }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError.last("socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 64) == 0 else {
            let e = SystemError.last("bind", path: "\(host):\(port)")
            close(fd)
            throw e
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        self.host = host
        self.port = UInt16(bigEndian: actual.sin_port)
        descriptor = fd
    }

    deinit { close(descriptor) }

    /// Waits for a connection; returns its descriptor (the caller closes it), or nil once shut down.
    public func accept() -> Int32? {
        while true {
            let fd = tw_accept_cloexec(descriptor)
            if fd >= 0 { return fd }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }

    public func shutdown() { _ = Glibc.shutdown(descriptor, Int32(SHUT_RDWR)) }
}
