import Platform
#if canImport(Glibc)
import Glibc
#endif

/// Who is calling, from the FUSE request context: every request acts as its caller.
public struct Caller: Sendable, Equatable {
    public var uid: UInt32
    public var gid: UInt32
    /// Supplementary groups (fuse_req_getgroups); empty when the kernel did not give them.
    public var groups: [UInt32]
    /// The calling thread (FUSE gives a thread id, not a process id).
    public var pid: Int32
    public var umask: UInt32

    public init(uid: UInt32, gid: UInt32, groups: [UInt32] = [], pid: Int32, umask: UInt32 = 0o022) {
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.pid = pid
        self.umask = umask
    }

    public var isRoot: Bool { uid == 0 }

    public func isMember(of group: UInt32) -> Bool { gid == group || groups.contains(group) }

    /// Whether permission bits `mode` of a file owned by `owner`:`group` grant this caller `want`
    /// (a combination of 4 read, 2 write, 1 search), as the kernel's generic check does. Root may
    /// read and write anything, and search anything some class may search.
    public func may(_ want: UInt32, mode: UInt32, owner: UInt32, group: UInt32) -> Bool {
        if isRoot { return want & 1 == 0 || mode & 0o111 != 0 }
        let bits: UInt32
        if uid == owner { bits = (mode >> 6) & 7 } else if isMember(of: group) { bits = (mode >> 3) & 7 } else { bits = mode & 7 }
        return bits & want == want
    }
}

/// How a process that sent a close was ending, as far as the kernel tells.
public enum ExitState: Sendable, Equatable {
    /// Not exiting: an explicit `close`.
    case running
    /// Exiting normally (`exit`, end of `main`): its open files are closed for it, and what it wrote is
    /// meant to stay (shell redirection of any program).
    case exiting
    /// Killed by a signal (SIGKILL, the OOM killer, an uncaught SIGSEGV): what it was writing is dropped.
    case killed
}

/// What the daemon needs to learn about the process behind a request that FUSE does not say: the
/// flags of the `open` it is in (FUSE strips O_CREAT and O_TRUNC from OPEN), whether it is in
/// `truncate` or `mkdir`, whether a close comes from a process that is exiting or was killed, and its
/// thread group. A protocol so the file system's tests can play any caller in-process.
public protocol CallerInspector: Sendable {
    /// The flags of the open/openat/creat the thread is in, or nil when it is in another call (or unknown).
    func openFlags(of tid: Int32) -> Int32?
    /// Whether the thread is in truncate or ftruncate.
    func isTruncating(_ tid: Int32) -> Bool
    /// Whether the thread is in mkdir or mkdirat.
    func isMakingDirectory(_ tid: Int32) -> Bool
    /// Whether the thread's process is running, exiting, or was killed.
    func exitState(of tid: Int32) -> ExitState
    /// The thread group id (process id) of a thread.
    func threadGroup(of tid: Int32) -> Int32
    /// A look at thread `tid`'s descriptor table: how many of its descriptors lead to this mount's inode
    /// `ino` (counted up to `limit` at most), and whether it holds any descriptor at all. At a `FLUSH` the
    /// kernel has already taken the closed descriptor out of the table, so more descriptors than the
    /// process has other open handles on the inode means one of them is a duplicate of the one closing
    /// (`dup`, `dup2`, the shell's `>&3`): not the writer's last close.
    func descriptors(of tid: Int32, onInode ino: UInt64, limit: Int) -> DescriptorTable
}

/// What `CallerInspector.descriptors` found.
public struct DescriptorTable: Sendable, Equatable {
    /// Descriptors that lead to the inode asked about, counted up to the limit asked for.
    public var onInode: Int
    /// Whether the table held any descriptor. A process's files are closed at its exit only once every
    /// thread that shares its descriptor table has let go of the table, which then reads empty in /proc:
    /// a close that finds the caller's table in use is an explicit `close`, not the exit's.
    public var inUse: Bool

    public init(onInode: Int, inUse: Bool) {
        self.onInode = onInode
        self.inUse = inUse
    }
}

/// `CallerInspector` from /proc (docs/fuse.md, "What FUSE hides"). The calling thread is blocked in
/// its system call while we serve it, so /proc/TID/syscall shows that call and its arguments, and
/// /proc/TID/stat shows whether the process is exiting (PF_EXITING) and, once it is, its exit code:
/// the kernel sets it before it closes the process's files, so a close at exit tells a normal exit
/// (status << 8) from a death by signal (the signal number). Each answer costs an open, a read and a
/// close of a /proc file (a few microseconds; docs/fuse.md's cost table lists where they happen).
public struct ProcCallerInspector: CallerInspector {
    #if arch(x86_64)
    static let openCalls: [Int: Int] = [2: 1, 257: 2]  // syscall number: index of the flags argument
    static let creatCall = 85
    static let truncateCalls: Set<Int> = [76, 77]
    static let mkdirCalls: Set<Int> = [83, 258]
    #elseif arch(arm64)
    static let openCalls: [Int: Int] = [56: 2]
    static let creatCall = -1
    static let truncateCalls: Set<Int> = [45, 46]
    static let mkdirCalls: Set<Int> = [34]
    #else
    static let openCalls: [Int: Int] = [:]
    static let creatCall = -1
    static let truncateCalls: Set<Int> = []
    static let mkdirCalls: Set<Int> = []
    #endif

    /// This mount's directory: its device tells this mount's descriptors from others' (one `statx` a
    /// descriptor). Without it, or where `statx` fails, every descriptor's `fdinfo` is read.
    let mountPoint: String?

    private let threadGroups = ThreadGroupMemory()

    /// Thread id: its group, and until when (monotonic nanoseconds) that answer is used; and the
    /// mount's device.
    final class ThreadGroupMemory: Sendable {
        private let table = OrderedMutex<[Int32: (group: Int32, until: UInt64)]>(.leaf, [:])

        func group(of tid: Int32, now: UInt64) -> Int32? {
            table.withLock { t in t[tid].flatMap { now < $0.until ? $0.group : nil } }
        }

        /// The mount's device, looked up at the first close that needs it (the mount is up by then).
        private let device = OrderedMutex<UInt64?>(.leaf, nil)

        func mountDevice(of mountPoint: String) -> UInt64? {
            if let known = device.withLock({ $0 }) { return known }
            guard let found = FileSystem.identity(of: mountPoint)?.device else { return nil }
            device.withLock { $0 = found }
            return found
        }

        func remember(_ tid: Int32, group: Int32, until: UInt64) {
            table.withLock { t in
                if t.count >= 4096 { t.removeAll(keepingCapacity: true) }
                t[tid] = (group, until)
            }
        }
    }

    private static let running = Array("running".utf8)

    public init(mountPoint: String? = nil) {
        self.mountPoint = mountPoint.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
    }

    /// The system call a thread is blocked in: its number and arguments; nil when unknown.
    ///
    /// The kernel hands the daemon a request as soon as it is queued, and its sender goes to sleep
    /// after that: in between (for instance when the daemon's wakeup preempted the sender on its CPU)
    /// /proc says "running" although the thread is in the call. The requests that ask (LOOKUP, CREATE,
    /// OPEN, SETATTR, MKDIR) are synchronous, so the sender is about to block: ask again, for a few
    /// milliseconds at most. Answering "unknown" there would refuse a write open (EACCES) or mistake a
    /// truncate.
    static func currentSyscall(of tid: Int32) -> (number: Int, arguments: [UInt64])? {
        guard tid > 0 else { return nil }
        var bytes: [UInt8] = []
        for attempt in 0...64 {
            guard let read = try? FileSystem.readFile("/proc/\(tid)/syscall") else { return nil }
            bytes = read
            guard attempt < 64, bytes.starts(with: Self.running) else { break }
            if attempt < 8 { sched_yield() } else { usleep(50) }
        }
        // "NUMBER 0xARG1 0xARG2 ... 0xSP 0xPC"; "running" or "-1 ..." when not in a call.
        let fields = ProcText.fields(bytes)
        guard let first = fields.first, let number = ProcText.decimal(bytes[first]) else { return nil }
        let arguments = fields.dropFirst().prefix(6).map { ProcText.hexadecimal(bytes[$0]) ?? 0 }
        return (number, arguments)
    }

    public func openFlags(of tid: Int32) -> Int32? {
        guard let call = Self.currentSyscall(of: tid) else { return nil }
        if call.number == Self.creatCall { return O_CREAT | O_WRONLY | O_TRUNC }
        guard let index = Self.openCalls[call.number], index < call.arguments.count else { return nil }
        return Int32(truncatingIfNeeded: call.arguments[index])
    }

    public func isTruncating(_ tid: Int32) -> Bool {
        guard let call = Self.currentSyscall(of: tid) else { return false }
        return Self.truncateCalls.contains(call.number)
    }

    public func isMakingDirectory(_ tid: Int32) -> Bool {
        guard let call = Self.currentSyscall(of: tid) else { return false }
        return Self.mkdirCalls.contains(call.number)
    }

    public func exitState(of tid: Int32) -> ExitState {
        guard tid > 0, let bytes = try? FileSystem.readFile("/proc/\(tid)/stat") else { return .running }
        // Fields after the command name, which is in parentheses and may contain spaces.
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return .running }
        let rest = ProcText.fields(bytes, from: close + 1)
        // rest[0] is field 3 (state); flags is field 9; exit_code is field 52 (rest[49]).
        guard rest.count > 6, let flags = ProcText.decimal(bytes[rest[6]]) else { return .running }
        let pfExiting = 0x4
        let state = bytes[rest[0].lowerBound]
        let exiting = flags & pfExiting != 0 || state == UInt8(ascii: "Z") || state == UInt8(ascii: "X")
        guard exiting else { return .running }
        if rest.count > 49, let code = ProcText.decimal(bytes[rest[49]]), code & 0x7f != 0 { return .killed }
        return .exiting
    }

    public func descriptors(of tid: Int32, onInode ino: UInt64, limit: Int) -> DescriptorTable {
        guard tid > 0, limit > 0 else { return DescriptorTable(onInode: 0, inUse: false) }
        // One statx a descriptor, relative to the open /proc/TID/fd: the device and inode it leads to,
        // compared with the mount's. A writer with hundreds of descriptors (an engine's CUDA devices,
        // sockets, memory files) pays this at every close of a block. The thread's own table: the one its
        // close took the descriptor out of (threads normally share their process's).
        if let mountPoint, let device = threadGroups.mountDevice(of: mountPoint) {
            var count = 0
            do {
                let seen = try FileSystem.forEachIdentity(in: "/proc/\(tid)/fd") { d, i in
                    if d == device && i == ino { count += 1 }
                    return count < limit
                }
                return DescriptorTable(onInode: count, inUse: seen > 0)
            } catch {
                return DescriptorTable(onInode: 0, inUse: false)
            }
        }
        guard let names = try? FileSystem.listDirectory("/proc/\(tid)/fd") else { return DescriptorTable(onInode: 0, inUse: false) }
        var count = 0
        for name in names where count < limit {
            if let mountPoint {
                guard let target = try? FileSystem.readLink("/proc/\(tid)/fd/\(name)"),
                      target.hasPrefix(mountPoint + "/") else { continue }
            }
            // fdinfo: "pos:", "flags:", "mnt_id:", "ino:" lines; the inode number is FUSE's node id.
            guard let info = try? FileSystem.readFile("/proc/\(tid)/fdinfo/\(name)") else { continue }
            for line in String(decoding: info, as: UTF8.self).split(separator: "\n") where line.hasPrefix("ino:") {
                if UInt64(line.dropFirst(4).drop { $0 == " " || $0 == "\t" }) == ino { count += 1 }
            }
        }
        return DescriptorTable(onInode: count, inUse: !names.isEmpty)
    }

    /// A thread's group from `/proc/TID/status` (the kernel formats the whole file, memory figures
    /// included: the costliest /proc read here), remembered for a second: a writer's create and its close
    /// ask about the same thread, and a thread id is not reused that fast (the kernel hands out every other
    /// id up to pid_max first).
    public func threadGroup(of tid: Int32) -> Int32 {
        let now = monotonicNanoseconds()
        if let known = threadGroups.group(of: tid, now: now) { return known }
        guard let bytes = try? FileSystem.readFile("/proc/\(tid)/status") else { return tid }
        let group = ProcText.value(of: "Tgid:", in: bytes).flatMap { Int32(exactly: $0) } ?? tid
        threadGroups.remember(tid, group: group, until: now + 1_000_000_000)
        return group
    }
}

/// Parsing of /proc text as bytes (no String: these files are read on every create and close).
enum ProcText {
    /// The ranges of the space- or newline-separated fields of `bytes` from `start`.
    static func fields(_ bytes: [UInt8], from start: Int = 0) -> [Range<Int>] {
        var fields: [Range<Int>] = []
        var i = start
        while i < bytes.count {
            while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A { i += 1 }
            let begin = i
            while i < bytes.count, bytes[i] != 0x20, bytes[i] != 0x0A { i += 1 }
            if i > begin { fields.append(begin..<i) }
        }
        return fields
    }

    /// A non-negative or negative decimal number, nil if the bytes are not one.
    static func decimal(_ digits: ArraySlice<UInt8>) -> Int? {
        var rest = digits
        let negative = rest.first == UInt8(ascii: "-")
        if negative { rest = rest.dropFirst() }
        guard !rest.isEmpty, rest.count <= 18 else { return nil }
        var value = 0
        for c in rest {
            guard c >= 0x30, c <= 0x39 else { return nil }
            value = value * 10 + Int(c - 0x30)
        }
        return negative ? -value : value
    }

    /// A hexadecimal number written with a 0x prefix.
    static func hexadecimal(_ digits: ArraySlice<UInt8>) -> UInt64? {
        guard digits.count > 2, digits.count <= 18, digits.starts(with: [0x30, 0x78]) else { return nil }
        var value: UInt64 = 0
        for c in digits.dropFirst(2) {
            let v: UInt8
            switch c {
            case 0x30...0x39: v = c - 0x30
            case 0x61...0x66: v = c - 0x61 + 10
            case 0x41...0x46: v = c - 0x41 + 10
            default: return nil
            }
            value = value << 4 | UInt64(v)
        }
        return value
    }

    /// The number after `label` at the start of a line ("Tgid:\t1234").
    static func value(of label: StaticString, in bytes: [UInt8]) -> Int? {
        let tag = UnsafeRawBufferPointer(start: label.utf8Start, count: label.utf8CodeUnitCount)
        var lineStart = 0
        while lineStart < bytes.count {
            let end = bytes[lineStart...].firstIndex(of: 0x0A) ?? bytes.count
            if end - lineStart > tag.count, bytes[lineStart..<lineStart + tag.count].elementsEqual(tag) {
                var i = lineStart + tag.count
                while i < end, bytes[i] == 0x20 || bytes[i] == 0x09 { i += 1 }
                return decimal(bytes[i..<end])
            }
            lineStart = end + 1
        }
        return nil
    }
}
