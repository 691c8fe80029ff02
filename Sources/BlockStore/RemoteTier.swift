import Platform

/// A tier of blocks shared by several nodes (DESIGN.md "Scale-out"; docs/cluster-tier.md): committed
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

/// Whether a namespace's committed blocks go to the shared tier (`twctl ns set NS --share ...`); kept
/// in the namespace table, so it outlives the daemon.
public enum SharePolicy: String, Sendable, CaseIterable {
    /// Not published, and misses do not look in the pool.
    case off
    /// Published in the background after close returns.
    case async
    /// Published before close returns (one try within the timeout; on failure it is queued as `async`).
    case sync
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

/// The object that holds one block in the pool: the record of docs/format.md ("Record") as a segment
/// holds it, header area then stored payload, without the payload's trailing padding. The header
/// carries the namespace, key, metadata, lengths and both XXH3-64 checksums, so a reader on any node
/// checks the whole object before it serves a byte. Spec: docs/cluster-tier.md ("Objects").
public enum RemoteRecord {
    /// Objects of blocks are named `twb.` and the 32 hex digits of the block's XXH3-128 key (high
    /// half first): names are short, spread evenly, and say nothing of the namespace or key.
    public static let objectPrefix = "twb."
    /// The extended attribute holding the last access, decimal seconds since the epoch.
    public static let accessAttribute = "tw.atime"

    public static func objectName(namespace: String, key: String) -> String {
        objectName(BlockKey(namespace: namespace, key: key))
    }

    public static func objectName(_ key: BlockKey) -> String {
        objectPrefix + hex16(key.high) + hex16(key.low)
    }

    static func hex16(_ v: UInt64) -> String {
        let digits = String(v, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// Encodes block `namespace/key` with its (uncompressed) payload as an object.
    ///
    /// - Parameter payloadChecksum: XXH3-64 of `payload` when the caller has it (must be right).
    public static func encode(namespace: String, key: String, payload: UnsafeRawBufferPointer, metadata: BlockMetadata,
                              commitNanoseconds: UInt64, payloadChecksum: UInt64? = nil) -> AlignedBuffer.Filled {
        let header = RecordHeader(type: .block, flags: 0, namespace: namespace, key: key, metadata: metadata,
                                  storedLength: payload.count, logicalLength: payload.count, sequence: 0,
                                  commitTimeNanoseconds: commitNanoseconds,
                                  payloadChecksum: payloadChecksum ?? Checksum.xxh3(payload))
        let area = header.headerAreaSize
        let buffer = AlignedBuffer(capacity: area + payload.count)
        header.encode(into: buffer.mutableBytes(count: area))
        if payload.count > 0 { buffer.mutableBytes(area, count: payload.count).copyMemory(from: payload) }
        return AlignedBuffer.Filled(buffer: buffer, count: area + payload.count)
    }

    /// Checks an object fetched for `namespace/key` and calls `body` with its header and its logical
    /// payload (decompressed when the record is LZ4). Nothing of a damaged object reaches `body`.
    ///
    /// - Throws: `StoreError.corruption` when the header, the name, a length or a checksum is wrong.
    public static func withVerifiedPayload<R>(_ object: UnsafeRawBufferPointer, namespace: String, key: String,
                                              _ body: (RecordHeader, UnsafeRawBufferPointer) throws -> R) throws -> R {
        let header: RecordHeader
        switch RecordHeader.decode(object) {
        case .success(let h): header = h
        case .failure(let why): throw StoreError.corruption("remote object of \(namespace)/\(key): bad header (\(why))")
        }
        guard header.type == .block, header.namespace == namespace, header.key == key else {
            throw StoreError.corruption("remote object of \(namespace)/\(key) holds \(header.namespace)/\(header.key)")
        }
        let area = header.headerAreaSize
        guard object.count == area + header.storedLength else {
            throw StoreError.corruption("remote object of \(namespace)/\(key) is \(object.count) bytes, its header says \(area + header.storedLength)")
        }
        let stored = UnsafeRawBufferPointer(rebasing: object[area...])
        guard Checksum.xxh3(stored) == header.payloadChecksum else {
            throw StoreError.corruption("remote object of \(namespace)/\(key): payload checksum mismatch")
        }
        if header.flags & RecordFormat.flagCompressedLZ4 != 0 {
            let out = AlignedBuffer(capacity: header.logicalLength)
            guard header.logicalLength > 0, LZ4Codec.decompress(stored, into: out.mutableBytes(count: header.logicalLength)) else {
                throw StoreError.corruption("remote object of \(namespace)/\(key): LZ4 data does not decompress")
            }
            return try withExtendedLifetime(out) { try body(header, out.bytes(count: header.logicalLength)) }
        }
        guard header.logicalLength == header.storedLength else {
            throw StoreError.corruption("remote object of \(namespace)/\(key): logical and stored lengths differ")
        }
        return try body(header, stored)
    }
}

extension AlignedBuffer {
    /// A buffer and how many of its bytes hold data.
    public struct Filled: Sendable {
        public let buffer: AlignedBuffer
        public let count: Int
        /// Calls `body` with the filled bytes; the pointer is valid only inside it.
        public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
            try withExtendedLifetime(buffer) { try body(buffer.bytes(count: count)) }
        }
    }
}

/// The object that announces a namespace to the other nodes (docs/cluster-tier.md, "Namespaces"): a
/// node that is asked for a namespace it does not have creates it from this object, with the same
/// owner, mode, compression, time to live and share policy. Quota and pinning stay each node's own
/// choice (they size its disks). One text line, ending in the XXH3-64 of what precedes it:
/// `twn1 NAME UID GID MODE(octal) COMPRESSION TTL_SECONDS SHARE(off/async/sync/default) CHECKSUM(hex)`.
public enum RemoteNamespace {
    public static let objectPrefix = "twn."

    public static func objectName(_ namespace: String) -> String { objectPrefix + namespace }

    public static func encode(_ ns: NamespaceInfo) -> [UInt8] {
        let body = "twn1 \(ns.name) \(ns.owner) \(ns.group) \(String(ns.mode, radix: 8)) \(ns.compression.rawValue) "
            + "\(ns.ttlSeconds) \(ns.share?.rawValue ?? "default")"
        let sum = Array(body.utf8).withUnsafeBytes { Checksum.xxh3($0) }
        return Array("\(body) \(String(sum, radix: 16))\n".utf8)
    }

    /// The namespace an object describes (its `id` and creation time are the reader's to choose), or
    /// nil when the object is damaged or describes another name.
    public static func decode(_ object: UnsafeRawBufferPointer, expecting name: String) -> NamespaceInfo? {
        guard object.count < 1024, object.last == UInt8(ascii: "\n") else { return nil }
        let line = String(decoding: object.dropLast(), as: UTF8.self)
        guard let cut = line.lastIndex(of: " ") else { return nil }
        let body = String(line[..<cut])
        guard let sum = UInt64(line[line.index(after: cut)...], radix: 16),
              Array(body.utf8).withUnsafeBytes({ Checksum.xxh3($0) }) == sum else { return nil }
        let f = body.split(separator: " ", omittingEmptySubsequences: false)
        guard f.count == 8, f[0] == "twn1", f[1] == name, BlockName.isValidNamespace(name),
              let uid = UInt32(f[2]), let gid = UInt32(f[3]), let mode = UInt32(f[4], radix: 8), mode <= 0o7777,
              let compression = CompressionPolicy(rawValue: String(f[5])), let ttl = UInt64(f[6]) else { return nil }
        let share: SharePolicy?
        if f[7] == "default" { share = nil } else {
            guard let s = SharePolicy(rawValue: String(f[7])) else { return nil }
            share = s
        }
        return NamespaceInfo(id: 0, name: name, owner: uid, group: gid, mode: mode, compression: compression,
                             createdSeconds: 0, ttlSeconds: ttl, share: share)
    }
}
