// ClusterTier: the shared tier across nodes (docs/cluster-tier.md). Committed blocks are published to
// a pool (`RemoteTier`, implemented on Ceph RADOS by the RadosTier module) as self-checking objects
// (`RemoteRecord`); a local miss looks there before it is a miss; namespaces are announced so other
// nodes can create them. `ClusterTier` is the daemon's side: publisher, fetcher, statistics.
import BlockStore
import Platform
import WarehouseCore

/// A tier of blocks shared by several nodes (docs/design.md "Scale-out"; docs/cluster-tier.md): committed
/// blocks are published to it as self-checking objects (`RemoteRecord`), and a local miss looks there.
/// The local store and the DRAM tier are a cache in front of it.
///
/// Contract of every implementation: each call returns or throws within the tier's timeout, also when
/// the cluster is slow or down (it never hangs a FUSE request); `connect` may be called again after
/// any failure and replaces a broken connection.
///
/// Thread-safety: implementations are called concurrently from request threads (fetch) and the
/// publisher thread (publish, touch, connect).
public protocol RemoteTier: AnyObject, Sendable {
    /// Where the blocks go, for people: `rados:POOL`.
    var location: String { get }
    /// Whether a connection is open (the last connect succeeded and none failed since).
    var isConnected: Bool { get }
    /// Opens a connection if none is open; blocks at most the timeout.
    func connect() throws(RemoteTierError)
    /// Drops the connection; the next `connect` opens a new one.
    func disconnect()
    /// Stores `object` (an encoded `RemoteRecord`) under `name`, replacing what was there.
    func publish(name: String, object: UnsafeRawBufferPointer) throws(RemoteTierError)
    /// Stores several objects with all of them in flight at once (the publisher's batches); returns one
    /// result per object, in order (nil: stored). The pointers are valid during the call only.
    func publish(batch: [(name: String, object: UnsafeRawBufferPointer)]) -> [RemoteTierError?]
    /// The object named `name`, or nil when the pool has none.
    func fetch(name: String) throws(RemoteTierError) -> RemoteObject?
    /// Records that the object was used now (its access time for `twctl cluster gc`).
    func touch(name: String, seconds: UInt64) throws(RemoteTierError)
    /// Every object of the pool with its size and access time (for garbage collection).
    func inventory() throws(RemoteTierError) -> [RemoteObjectInfo]
    /// Removes an object; removing one that is gone is not an error.
    func remove(name: String) throws(RemoteTierError)
}

extension RemoteTier {
    /// One object after the other; implementations that can keep several in flight replace it.
    public func publish(batch: [(name: String, object: UnsafeRawBufferPointer)]) -> [RemoteTierError?] {
        batch.map { item -> RemoteTierError? in
            do throws(RemoteTierError) { try publish(name: item.name, object: item.object) } catch { return error }
            return nil
        }
    }
}

/// The bytes of a fetched object, in a page-aligned buffer (the payload of a `RemoteRecord` starts
/// on a page boundary, so it can go to the store without another copy).
public struct RemoteObject: Sendable {
    public let buffer: AlignedBuffer
    public let count: Int

    public init(buffer: AlignedBuffer, count: Int) {
        self.buffer = buffer
        self.count = count
    }

    /// Calls `body` with the object's bytes; the pointer is valid only inside it.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(buffer) { try body(buffer.bytes(count: count)) }
    }
}

/// One object of the pool, as `inventory` lists it.
public struct RemoteObjectInfo: Sendable, Equatable {
    public var name: String
    public var size: UInt64
    /// Seconds since the epoch of the last recorded access, else of the last write.
    public var accessSeconds: UInt64

    public init(name: String, size: UInt64, accessSeconds: UInt64) {
        self.name = name
        self.size = size
        self.accessSeconds = accessSeconds
    }
}

/// How a remote-tier call failed.
public enum RemoteTierError: Error, CustomStringConvertible, Equatable {
    /// No connection, or the cluster did not answer within the timeout: the caller serves what it has.
    case unavailable(String)
    /// The cluster answered with an error (errno from librados).
    case failed(String, code: Int32)

    public var description: String {
        switch self {
        case .unavailable(let s): return "cluster unavailable: \(s)"
        case .failed(let s, let code): return "\(s) (errno \(code))"
        }
    }
}

