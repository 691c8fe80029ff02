#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An `errno` from a system call, with the operation and the path it concerned.
///
/// This is the one place raw C error numbers become Swift errors: every wrapper in this module
/// throws it, and the FUSE bridge turns it back into the errno it replies with.
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The C error number (`ENOENT`, `EIO`, ...).
    public let code: Int32
    /// What was being done: `"open"`, `"pwrite"`, ...
    public let operation: String
    /// The file concerned, when there is one.
    public let path: String

    public init(_ code: Int32, _ operation: String, path: String = "") {
        self.code = code
        self.operation = operation
        self.path = path
    }

    /// The current `errno` of the calling thread.
    public static func last(_ operation: String, path: String = "") -> SystemError {
        SystemError(errno, operation, path: path)
    }

    public var description: String {
        let reason = String(cString: strerror(code))
        return path.isEmpty ? "\(operation): \(reason)" : "\(operation) \(path): \(reason)"
    }
}

/// Calls `body` until it returns something other than -1 with `EINTR`.
///
/// The only place `EINTR` is retried; every system call wrapper goes through it.
@inline(__always)
public func retryOnInterrupt<T: FixedWidthInteger>(_ body: () -> T) -> T {
    while true {
        let result = body()
        if result == -1 && errno == EINTR { continue }
        return result
    }
}

/// Nanoseconds of the monotonic clock, for latencies and intervals.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Nanoseconds since the Unix epoch, for commit times that outlive the process.
public func wallClockNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
