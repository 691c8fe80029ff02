import Platform
#if canImport(Glibc)
import Glibc
#endif

/// Where the DRAM tier's memory comes from, chosen once at start and said in the log (docs/dram-tier.md
/// "Memory"):
///
/// 1. `--dram-dir DIR`: files on a tmpfs the operator mounted (e.g. with `huge=always`);
/// 2. as root: a private tmpfs the daemon mounts with `huge=always`, so readers copy from 2 MiB pages
///    without the operator doing anything; nobody else can reach it (mode 0700, files unlinked at once);
/// 3. otherwise: anonymous memory files (`memfd_create`), on huge pages when the kernel's
///    `shmem_enabled` setting allows.
///
/// Thread-safety: immutable after `prepare`; `makeMapping` may run from any thread.
public final class TierStorage: Sendable {
    public enum Kind: Sendable, Equatable {
        case directory(String)
        case privateHugeTmpfs(String)
        case memoryFiles
    }

    public let kind: Kind
    /// Why this kind was chosen (and why the better ones were not), for the log.
    public let reason: String
    private let mountedHere: String?

    private init(kind: Kind, reason: String, mountedHere: String?) {
        self.kind = kind
        self.reason = reason
        self.mountedHere = mountedHere
    }

    /// Chooses where the tier's memory comes from.
    ///
    /// - Parameters:
    ///   - directory: `--dram-dir`, when the operator gave one.
    ///   - privateDirectory: a directory of this daemon's own (mode 0700) under which a tmpfs may be mounted.
    ///   - size: bytes the tmpfs must hold.
    public static func prepare(directory: String?, privateDirectory: String, size: Int) -> TierStorage {
        if let directory {
            return TierStorage(kind: .directory(directory), reason: "--dram-dir \(directory)", mountedHere: nil)
        }
        let shmem = (try? FileSystem.readFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled"))
            .map { String(decoding: $0, as: UTF8.self) } ?? "unknown"
        guard geteuid() == 0 else {
            return TierStorage(kind: .memoryFiles,
                               reason: "not root, so no private huge-page tmpfs; anonymous memory files (shmem_enabled: \(bracketed(shmem)))",
                               mountedHere: nil)
        }
        let target = privateDirectory + "/memory"
        do {
            try FileSystem.makeDirectories(target, mode: 0o700)
        } catch {
            return TierStorage(kind: .memoryFiles, reason: "cannot make \(target): \(error); anonymous memory files", mountedHere: nil)
        }
        // Room for the tier files of several domains; tmpfs allocates only what is touched.
        let options = "huge=always,mode=0700,size=\(max(size, 64 << 20) * 16 / 1024)k"
        if mount("tokenwarehouse", target, "tmpfs", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), options) != 0 {
            let why = String(cString: strerror(errno))
            return TierStorage(kind: .memoryFiles,
                               reason: "mounting a huge=always tmpfs at \(target) failed (\(why)); anonymous memory files (shmem_enabled: \(bracketed(shmem)))",
                               mountedHere: nil)
        }
        return TierStorage(kind: .privateHugeTmpfs(target), reason: "a private tmpfs with huge=always at \(target)", mountedHere: target)
    }

    private static func bracketed(_ setting: String) -> String {
        // "always within_size advise [never] deny force" -> "never"
        guard let open = setting.firstIndex(of: "["), let close = setting.firstIndex(of: "]"), open < close else {
            return setting.trimmingNewline()
        }
        return String(setting[setting.index(after: open)..<close])
    }

    /// Checks that tier files can be made here (an operator's `--dram-dir` may not exist, or not be
    /// writable): makes and drops a one-page file.
    public func check() throws {
        _ = try makeMapping(name: "check-\(getpid())", size: 4096)
    }

    /// A new shared mapping of `size` bytes named `name`.
    func makeMapping(name: String, size: Int) throws -> SharedMemoryMapping {
        switch kind {
        case .directory(let d), .privateHugeTmpfs(let d):
            return try SharedMemoryMapping(anonymousFileIn: d, name: "tokenwarehouse-" + name, size: size)
        case .memoryFiles:
            return try SharedMemoryMapping(memoryFileNamed: "tokenwarehouse-" + name, size: size, sealed: true)
        }
    }

    /// Unmounts the private tmpfs (its files were unlinked at creation: the memory goes with the last mapping).
    public func close() {
        if let mountedHere {
            _ = umount2(mountedHere, Int32(MNT_DETACH))
            _ = rmdir(mountedHere)
        }
    }
}

extension String {
    func trimmingNewline() -> String {
        var s = self
        while s.hasSuffix("\n") || s.hasSuffix(" ") { s.removeLast() }
        return s
    }
}
