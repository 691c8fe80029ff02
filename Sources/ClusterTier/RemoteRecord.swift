import BlockStore
import Platform
import WarehouseCore

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
