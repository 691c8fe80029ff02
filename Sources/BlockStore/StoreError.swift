import WarehouseCore
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// The closed set of ways a store operation fails, each with a message a person can act on.
public enum StoreError: Error, CustomStringConvertible, Equatable {
    case notFound
    case alreadyExists
    /// A record failed its checksum or does not belong to the name asked for; the block is not served.
    case corruption(String)
    case noSpace(String)
    case tooLarge(size: Int, limit: Int)
    case invalidName(String)
    case nameTooLong(String)
    /// A namespace or directory that still holds something (`ENOTEMPTY`).
    case notEmpty(String)
    case quotaExceeded(String)
    case locked(String)
    /// The store directory is not the daemon's alone (a symlink, another owner, writable by others).
    case unsafeStore(String)
    /// The operation would cross what the store can do cheaply (a directory with blocks moved: `EXDEV`).
    case crossDevice(String)
    /// A directory was expected (`ENOTDIR`) or a file (`EISDIR`), by the errno given.
    case wrongType(Int32, String)
    /// The store is closed (the daemon is stopping).
    case closed
    case io(SystemError)

    /// The errno a filesystem caller should see.
    public var errnoCode: Int32 {
        switch self {
        case .notFound: return ENOENT
        case .alreadyExists: return EEXIST
        case .corruption: return EIO
        case .noSpace: return ENOSPC
        case .tooLarge: return EFBIG
        case .invalidName: return EINVAL
        case .nameTooLong: return ENAMETOOLONG
        case .notEmpty: return ENOTEMPTY
        case .quotaExceeded: return EDQUOT
        case .locked: return EBUSY
        case .unsafeStore: return EPERM
        case .crossDevice: return EXDEV
        case .wrongType(let code, _): return code
        case .closed: return ESHUTDOWN
        case .io(let e): return e.code
        }
    }

    public var description: String {
        switch self {
        case .notFound: return "no such block"
        case .alreadyExists: return "already exists"
        case .corruption(let s): return "corrupt record: \(s)"
        case .noSpace(let s): return "no space: \(s)"
        case .tooLarge(let size, let limit): return "block of \(size) bytes is larger than the maximum of \(limit) bytes (--max-block)"
        case .invalidName(let s): return "invalid name: \(s)"
        case .nameTooLong(let s): return "name too long: \(s)"
        case .notEmpty(let s): return "\(s) is not empty"
        case .quotaExceeded(let s): return "quota exceeded: \(s)"
        case .locked(let s): return s
        case .unsafeStore(let s): return "unsafe store directory: \(s)"
        case .crossDevice(let s): return s
        case .wrongType(_, let s): return s
        case .closed: return "the store is closed"
        case .io(let e): return "I/O error: \(e)"
        }
    }

    /// Wraps any error from the device as a `StoreError`.
    public static func wrap(_ error: any Error) -> StoreError {
        if let e = error as? StoreError { return e }
        if let e = error as? SystemError { return e.code == ENOSPC ? .noSpace("\(e)") : .io(e) }
        return .io(SystemError(EIO, "\(error)"))
    }
}

