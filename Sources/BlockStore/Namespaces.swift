/// A namespace: one model and parallel layout (DESIGN.md), with the owner and mode its directory shows.
public struct NamespaceInfo: Sendable, Equatable {
    public var id: UInt16
    public var name: String
    public var owner: UInt32
    public var group: UInt32
    /// Permission bits of the namespace directory (e.g. 0o755).
    public var mode: UInt32
    public var compression: CompressionPolicy
    public var createdSeconds: UInt64

    public init(id: UInt16, name: String, owner: UInt32, group: UInt32, mode: UInt32,
                compression: CompressionPolicy = .off, createdSeconds: UInt64) {
        self.id = id
        self.name = name
        self.owner = owner
        self.group = group
        self.mode = mode
        self.compression = compression
        self.createdSeconds = createdSeconds
    }
}

/// Figures of one namespace.
public struct NamespaceUsage: Sendable, Equatable {
    public var blocks: Int = 0
    public var logicalBytes: UInt64 = 0
    public var storedBytes: UInt64 = 0
}

/// The namespace table, persisted as the text file `namespaces` in the store directory: one line per
/// namespace, `v1 ID NAME UID GID MODE(octal) COMPRESSION CREATED`. Rewritten atomically on change.
struct NamespaceTable {
    static let fileName = "namespaces"
    private(set) var byID: [UInt16: NamespaceInfo] = [:]
    private(set) var idByName: [String: UInt16] = [:]

    init() {}

    init(decoding bytes: [UInt8]) throws {
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count == 8, f[0] == "v1", let id = UInt16(f[1]), let uid = UInt32(f[3]), let gid = UInt32(f[4]),
                  let mode = UInt32(f[5], radix: 8), let compression = CompressionPolicy(rawValue: String(f[6])),
                  let created = UInt64(f[7]), BlockName.isValidNamespace(String(f[2])) else {
                throw StoreError.corruption("namespace table line '\(line)' is malformed; fix or remove the file 'namespaces'")
            }
            insert(NamespaceInfo(id: id, name: String(f[2]), owner: uid, group: gid, mode: mode,
                                 compression: compression, createdSeconds: created))
        }
    }

    func encoded() -> [UInt8] {
        var text = ""
        for ns in byID.values.sorted(by: { $0.id < $1.id }) {
            text += "v1 \(ns.id) \(ns.name) \(ns.owner) \(ns.group) \(String(ns.mode, radix: 8)) \(ns.compression.rawValue) \(ns.createdSeconds)\n"
        }
        return Array(text.utf8)
    }

    subscript(name: String) -> NamespaceInfo? { idByName[name].flatMap { byID[$0] } }

    mutating func insert(_ ns: NamespaceInfo) {
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
