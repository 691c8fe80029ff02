import Platform
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The protocol between `TierBroker` and clients (docs/dram-tier.md "Access"): a client connects to
/// the unix socket (SOCK_SEQPACKET) named in `MOUNT/.tw/dram` and reads messages until `end`:
///
///     tier NAME\nnamespaces NS1 NS2 ...\n     with two descriptors: the tier file (read-only) and its
///                                              hit counters (read-write, size-sealed)
///     end COUNT\n                              with one descriptor: the daemon's liveness page (read-only);
///                                              COUNT tier messages came before
///
/// The liveness page's first 8 bytes are a random non-zero number while the daemon runs and 0 once it
/// stopped, cleanly or not: a daemon that died is marked by the next one to start (see
/// `RuntimeDirectory`), before it serves anything, so a client that checks the word with each lookup
/// never reads a dead daemon's tier after a new one could have changed the store.
///
/// The client sends nothing. The broker decides what to hand out from the kernel's account of the
/// client (SO_PEERCRED, SO_PEERGROUPS): the tiers of the security domains whose namespaces it could
/// read through the mount.
public enum TierProtocol {
    public static let dramFileHeader = "socket"
    public static let tierMessage = "tier"
    public static let namespacesLine = "namespaces"
    public static let endMessage = "end"
}

/// Hands clients the descriptors of the DRAM tiers they may read (see `TierProtocol`).
///
/// Thread-safety: one thread accepts and answers (answers never wait for the client: they are a few
/// small messages that fit the socket's buffer); `stop` may run on another.
public final class TierBroker: Sendable {
    public let socketPath: String
    private let listener: UnixListener
    private let tiers: DRAMTiers
    private let liveness: SharedMemoryMapping
    private let thread = Mutex<BackgroundThread?>(nil)
    private let served = Mutex(0)

    /// Listens at `socketPath` (mode 0666: the answer, not the socket, decides what a client gets).
    public init(socketPath: String, tiers: DRAMTiers, liveness: SharedMemoryMapping) throws {
        listener = try UnixListener(path: socketPath, mode: 0o666)
        self.socketPath = socketPath
        self.tiers = tiers
        self.liveness = liveness
    }

    /// Starts answering (after the daemon has forked into the background).
    public func start() {
        thread.withLock { $0 = BackgroundThread(name: "tw-tierbroker") { [self] in serve() } }
    }

    public func stop() {
        listener.shutdown()
        let t = thread.withLock { t -> BackgroundThread? in
            defer { t = nil }
            return t
        }
        t?.join()
    }

    /// Connections answered so far.
    public var connections: Int { served.withLock { $0 } }

    private func serve() {
        while let connection = listener.accept() {
            answer(connection)
            served.withLock { $0 += 1 }
        }
    }

    private func answer(_ connection: borrowing UnixConnection) {
        connection.setTimeout(seconds: 1)
        guard let peer = try? connection.peer() else { return }
        var sent = 0
        for (_, tier, namespaces) in tiers.readable(uid: peer.uid, gid: peer.gid, groups: peer.groups) {
            guard let (data, hits) = try? tier.descriptorsForReader() else { continue }
            defer {
                close(data)
                close(hits)
            }
            let text = "\(TierProtocol.tierMessage) \(tier.name)\n\(TierProtocol.namespacesLine) \(namespaces.joined(separator: " "))\n"
            if (try? connection.send(Array(text.utf8), descriptors: [data, hits])) == nil { return }
            sent += 1
        }
        // A process handed a tier reads blocks from the map (see `DRAMTiers.isClient`).
        if sent > 0 { tiers.noteClient(process: peer.pid) }
        let end = Array("\(TierProtocol.endMessage) \(sent)\n".utf8)
        if let alive = try? liveness.readOnlyDescriptor() {
            defer { close(alive) }
            try? connection.send(end, descriptors: [alive])
        } else {
            try? connection.send(end)
        }
    }
}

/// A directory of this daemon's own for its runtime files (the tier broker's socket, the private
/// tmpfs of the tier's memory): `/run/tokenwarehouse/INSTANCE` as root, else under
/// `$XDG_RUNTIME_DIR` or `/tmp/tokenwarehouse-UID`. The instance name is unique (it ends in random
/// digits and is made with mkdir, which fails on anything already there), so two mounts never share
/// one, and nobody else can make or replace files in it (mode 0711: others reach the socket by name).
///
/// It holds the liveness page (`alive`, see `TierProtocol`): non-zero while this daemon runs. Making a
/// new instance directory first zeroes the liveness pages of daemons that died, before the new daemon
/// serves anything.
public final class RuntimeDirectory: Sendable {
    public let path: String
    public let liveness: SharedMemoryMapping

    /// Makes a fresh instance directory named after `label` (e.g. the mount point), removing those of
    /// daemons that died (their `pid` file names a process that is gone).
    public init(label: String) throws {
        let base: String
        if geteuid() == 0 {
            base = "/run/tokenwarehouse"
        } else if let xdg = getenv("XDG_RUNTIME_DIR").map({ String(cString: $0) }), !xdg.isEmpty {
            base = xdg + "/tokenwarehouse"
        } else {
            base = "/tmp/tokenwarehouse-\(geteuid())"
        }
        try FileSystem.makeDirectories(base, mode: geteuid() == 0 ? 0o755 : 0o700)
        let o = try FileSystem.ownership(of: base)
        guard o.isDirectory, o.uid == geteuid(), o.mode & 0o022 == 0 else {
            throw SystemError(EPERM, "runtime directory is not this user's alone (fix its owner or mode)", path: base)
        }
        Self.removeStale(in: base)
        let safe = String(label.map { $0.isLetter || $0.isNumber || "-_.".contains($0) ? $0 : "-" }.prefix(64))
        var made: String? = nil
        for _ in 0..<16 {
            let candidate = "\(base)/\(safe)-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
            if mkdir(candidate, 0o711) == 0 {
                made = candidate
                break
            }
            if errno != EEXIST { throw SystemError.last("mkdir", path: candidate) }
        }
        guard let made else { throw SystemError(EEXIST, "mkdir (no free instance name)", path: base) }
        _ = chmod(made, 0o711)
        path = made
        liveness = try SharedMemoryMapping(namedFileIn: made, name: "alive", size: 4096)
        var mark: UInt64 = 0
        while mark == 0 { mark = UInt64.random(in: 1...UInt64.max) }
        SharedAtomics.storeRelease(liveness.word(at: 0), mark)
        let pid = Array("\(getpid())\n".utf8)
        try FileSystem.writeFileAtomically(made + "/pid", bytes: pid, directory: made)
    }

    /// Updates the pid file (after the daemon forked into the background).
    public func recordPid() {
        try? FileSystem.writeFileAtomically(path + "/pid", bytes: Array("\(getpid())\n".utf8), directory: path)
    }

    /// Marks the daemon stopped (clients stop using its tiers) and removes the directory.
    public func remove() {
        SharedAtomics.storeRelease(liveness.word(at: 0), 0)
        Self.removeTree(path)
    }

    private static func removeStale(in base: String) {
        for name in (try? FileSystem.listDirectory(base)) ?? [] {
            let dir = base + "/" + name
            guard let bytes = try? FileSystem.readFile(dir + "/pid"),
                  let pid = Int32(String(decoding: bytes, as: UTF8.self).trimmingNewline()), pid > 0 else { continue }
            if kill(pid, 0) == 0 || errno == EPERM { continue }
            markStopped(dir + "/alive")
            removeTree(dir)
        }
    }

    /// Zeroes the liveness word of a dead daemon, so clients still mapping its tiers let them go.
    private static func markStopped(_ path: String) {
        guard let file = try? FileDescriptor(openOwnFile: path, flags: O_RDWR) else { return }
        var zero: UInt64 = 0
        _ = withUnsafeBytes(of: &zero) { try? file.write([$0], at: 0) }
    }

    private static func removeTree(_ dir: String) {
        _ = umount2(dir + "/memory", Int32(MNT_DETACH))
        for name in (try? FileSystem.listDirectory(dir)) ?? [] {
            let p = dir + "/" + name
            if unlink(p) != 0 { _ = rmdir(p) }
        }
        _ = rmdir(dir)
    }
}
