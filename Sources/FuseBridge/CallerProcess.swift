import Platform
#if canImport(Glibc)
import Glibc
#endif

/// What the kernel lets a daemon learn about the process behind a request, from /proc.
///
/// FUSE does not tell the daemon everything POSIX semantics need: an OPEN arrives without O_CREAT
/// and O_TRUNC, and a FLUSH looks the same whether the process closed the file or is dying. The
/// calling thread is blocked in the system call while we handle its request, so /proc/TID/syscall
/// shows that call and its arguments, and /proc/TID/stat shows whether the process is exiting.
enum CallerProcess {
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

    /// The system call a thread is blocked in: its number and arguments; nil when unknown.
    static func currentSyscall(of tid: Int32) -> (number: Int, arguments: [UInt64])? {
        guard tid > 0, let bytes = try? FileSystem.readFile("/proc/\(tid)/syscall") else { return nil }
        let fields = String(decoding: bytes, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard let first = fields.first, let number = Int(first) else { return nil }
        let arguments = fields.dropFirst().prefix(6).map { UInt64($0.dropFirst(2), radix: 16) ?? 0 }
        return (number, arguments)
    }

    /// The flags of the open/openat/creat the thread is in, or nil when it is in another call (or unknown).
    static func openFlags(of tid: Int32) -> Int32? {
        guard let call = currentSyscall(of: tid) else { return nil }
        if call.number == creatCall { return O_CREAT | O_WRONLY | O_TRUNC }
        guard let index = openCalls[call.number], index < call.arguments.count else { return nil }
        return Int32(truncatingIfNeeded: call.arguments[index])
    }

    /// Whether the thread is in truncate or ftruncate.
    static func isTruncating(_ tid: Int32) -> Bool {
        guard let call = currentSyscall(of: tid) else { return false }
        return truncateCalls.contains(call.number)
    }

    /// Whether the thread is in mkdir or mkdirat.
    static func isMakingDirectory(_ tid: Int32) -> Bool {
        guard let call = currentSyscall(of: tid) else { return false }
        return mkdirCalls.contains(call.number)
    }

    /// Whether the thread's process is exiting (PF_EXITING): a close it sends now is a death, not a close.
    static func isExiting(_ tid: Int32) -> Bool {
        guard tid > 0, let bytes = try? FileSystem.readFile("/proc/\(tid)/stat") else { return false }
        // Fields after the command name, which is in parentheses and may contain spaces.
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return false }
        let rest = String(decoding: bytes[(close + 1)...], as: UTF8.self).split(separator: " ")
        // rest[0] is field 3 (state); flags is field 9.
        guard rest.count > 6, let flags = UInt64(rest[6]) else { return false }
        let pfExiting: UInt64 = 0x4
        return flags & pfExiting != 0 || rest[0] == "Z" || rest[0] == "X"
    }
}
