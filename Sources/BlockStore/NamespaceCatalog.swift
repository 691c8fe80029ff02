import WarehouseCore

/// A namespace: one model and parallel layout (docs/design.md), with the owner and mode its directory shows.
public struct NamespaceInfo: Sendable, Equatable {
    public var id: UInt16
    public var name: String
    public var owner: UInt32
    public var group: UInt32
    /// Permission bits of the namespace directory (e.g. 0o755).
    public var mode: UInt32
    public var compression: CompressionPolicy
    public var createdSeconds: UInt64
    /// Stored bytes (records, headers included) the namespace may hold (0: no quota); a write past it
    /// fails with EDQUOT.
    public var quotaBytes: UInt64 = 0
    /// Blocks older than this many seconds expire (0: never): they read as missing and are removed.
    public var ttlSeconds: UInt64 = 0
    /// Blocks of a pinned namespace are kept through eviction while it is within its quota: how an
    /// operator offers a tier of persistent context.
    public var pinned = false
    /// Whether the namespace's blocks go to the shared tier; nil: the daemon's `--share` default.
    public var share: SharePolicy? = nil

    /// The longest time to live a namespace may have (100 years): larger values are refused, and a
    /// table that holds one is read as this (saturated), so no arithmetic on it can overflow.
    public static let maxTTLSeconds: UInt64 = 100 * 366 * 86_400

    public init(id: UInt16, name: String, owner: UInt32, group: UInt32, mode: UInt32,
                compression: CompressionPolicy = .off, createdSeconds: UInt64,
                quotaBytes: UInt64 = 0, ttlSeconds: UInt64 = 0, pinned: Bool = false, share: SharePolicy? = nil) {
        self.id = id
        self.name = name
        self.owner = owner
        self.group = group
        self.mode = mode
        self.compression = compression
        self.createdSeconds = createdSeconds
        self.quotaBytes = quotaBytes
        self.ttlSeconds = min(ttlSeconds, Self.maxTTLSeconds)
        self.pinned = pinned
        self.share = share
    }
}

/// Whether a namespace's committed blocks go to the shared tier across nodes (`twctl ns set NS --share
/// ...`); kept in the namespace table so it outlives the daemon. The cluster tier (module ClusterTier)
/// interprets it; the store only keeps it.
public enum SharePolicy: String, Sendable, CaseIterable {
    /// Not published, and misses do not look in the pool.
    case off
    /// Published in the background after close returns.
    case async
    /// Published before close returns (one try within the timeout; on failure it is queued as `async`).
    case sync
}

/// Figures of one namespace.
public struct NamespaceUsage: Sendable, Equatable {
    public var blocks: Int = 0
    public var logicalBytes: UInt64 = 0
    /// Bytes of the namespace's live records: what its quota counts.
    public var storedBytes: UInt64 = 0
    /// Bytes reserved by writes in progress (staged blocks not committed yet), also counted by the quota.
    public var reservedBytes: UInt64 = 0

    public init() {}
}

/// The namespace table, persisted as the text file `namespaces` in the store directory: one line per
/// namespace, `v1 ID NAME UID GID MODE(octal) COMPRESSION CREATED`, or with a policy
/// `v2 ID NAME UID GID MODE(octal) COMPRESSION CREATED QUOTA_BYTES TTL_SECONDS PINNED(0/1)`, or with a
/// share policy `v3 … PINNED SHARE(off/async/sync)`. Each line is the oldest version that holds its
/// namespace, so older daemons read stores that do not use newer fields. Rewritten atomically on change.
///
/// Reading it trusts nothing: a malformed line, a duplicate id or name, or an out-of-range number is
/// refused with the line in the message; a time to live beyond `maxTTLSeconds` is saturated.
public struct NamespaceTable: Sendable {
    public static let fileName = "namespaces"
    /// The table is refused when larger than this (65535 namespaces of long names fit well below).
    public static let maxFileSize = 16 << 20
    public private(set) var byID: [UInt16: NamespaceInfo] = [:]
    public private(set) var idByName: [String: UInt16] = [:]

    public init() {}

    public init(decoding bytes: [UInt8]) throws {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw StoreError.corruption("the namespace table is not UTF-8 text; fix or remove the file 'namespaces'")
        }
        for line in text.split(separator: "\n") {
            func bad(_ why: String) -> StoreError {
                StoreError.corruption("namespace table line '\(line.prefix(200))' \(why); fix or remove the file 'namespaces'")
            }
            let f = line.split(separator: " ", omittingEmptySubsequences: false)
            guard (f.count == 8 && f[0] == "v1") || (f.count == 11 && f[0] == "v2") || (f.count == 12 && f[0] == "v3") else {
                throw bad("is malformed")
            }
            guard let id = UInt16(f[1]), id > 0, let uid = UInt32(f[3]), let gid = UInt32(f[4]),
                  let mode = UInt32(f[5], radix: 8), mode <= 0o7777,
                  let compression = CompressionPolicy(rawValue: String(f[6])),
                  let created = UInt64(f[7]), BlockName.isValidNamespace(String(f[2])) else { throw bad("is malformed") }
            var ns = NamespaceInfo(id: id, name: String(f[2]), owner: uid, group: gid, mode: mode,
                                   compression: compression, createdSeconds: min(created, UInt64(UInt32.max)))
            if f[0] != "v1" {
                guard let quota = UInt64(f[8]), let ttl = UInt64(f[9]), f[10] == "0" || f[10] == "1" else { throw bad("is malformed") }
                ns.quotaBytes = quota
                ns.ttlSeconds = min(ttl, NamespaceInfo.maxTTLSeconds)
                ns.pinned = f[10] == "1"
            }
            if f[0] == "v3" {
                guard let share = SharePolicy(rawValue: String(f[11])) else { throw bad("is malformed") }
                ns.share = share
            }
            guard byID[id] == nil, idByName[ns.name] == nil else { throw bad("repeats an id or name") }
            insert(ns)
        }
    }

    public func encoded() -> [UInt8] {
        var text = ""
        for ns in byID.values.sorted(by: { $0.id < $1.id }) {
            let base = "\(ns.id) \(ns.name) \(ns.owner) \(ns.group) \(String(ns.mode, radix: 8)) \(ns.compression.rawValue) \(ns.createdSeconds)"
            // v1 while no policy is set, so a store without policies stays readable by older daemons.
            let policy = "\(ns.quotaBytes) \(ns.ttlSeconds) \(ns.pinned ? 1 : 0)"
            if let share = ns.share {
                text += "v3 \(base) \(policy) \(share.rawValue)\n"
            } else if ns.quotaBytes == 0 && ns.ttlSeconds == 0 && !ns.pinned {
                text += "v1 \(base)\n"
            } else {
                text += "v2 \(base) \(policy)\n"
            }
        }
        return Array(text.utf8)
    }

    public subscript(name: String) -> NamespaceInfo? { idByName[name].flatMap { byID[$0] } }

    mutating func insert(_ ns: NamespaceInfo) {
        if let old = byID[ns.id], old.name != ns.name { idByName[old.name] = nil }
        byID[ns.id] = ns
        idByName[ns.name] = ns.id
    }

    mutating func remove(_ name: String) {
        if let id = idByName.removeValue(forKey: name) { byID[id] = nil }
    }

    func nextFreeID() -> UInt16? {
        var id: UInt16 = 1
        while byID[id] != nil {
            if id == UInt16.max { return nil }
            id += 1
        }
        return id
    }
}
