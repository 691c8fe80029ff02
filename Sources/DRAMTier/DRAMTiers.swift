import DequeModule
import Platform
import Synchronization
import WarehouseCore

/// Who may read the blocks of a namespace through the mount: its owner, group and the permission bits
/// that let each class reach inside (search, `x`). Namespaces with the same domain share a tier file;
/// a process is given the files of the domains it could read through the mount, and no other.
public struct SecurityDomain: Hashable, Sendable, CustomStringConvertible {
    public var owner: UInt32
    public var group: UInt32
    /// The `x` bits of the namespace directory (0o100 owner, 0o010 group, 0o001 others).
    public var searchBits: UInt32

    public init(owner: UInt32, group: UInt32, mode: UInt32) {
        self.owner = owner
        self.group = group
        searchBits = mode & 0o111
    }

    /// Whether a process with these credentials may search (and so read blocks in) such a namespace.
    public func admits(uid: UInt32, gid: UInt32, groups: [UInt32]) -> Bool {
        if uid == 0 { return true }
        if uid == owner { return searchBits & 0o100 != 0 }
        if gid == group || groups.contains(group) { return searchBits & 0o010 != 0 }
        return searchBits & 0o001 != 0
    }

    public var description: String { "uid \(owner) gid \(group) search \(String(searchBits, radix: 8))" }
}

/// The DRAM tiers of all security domains, within one memory budget (`--dram`): blocks go to the tier
/// of their namespace's domain, lookups find them wherever they are, and when the tiers together hold
/// more than the budget the largest gives up its oldest blocks.
///
/// Thread-safety: every method may be called from any thread. `state` (the domain table) is never held
/// while a tier's own lock is taken: lookups read the table, release it, then ask the tier.
public final class DRAMTiers: Sendable {
    public let budget: Int
    public let storage: TierStorage

    struct Domain: Sendable {
        var tier: DRAMTier
        var namespaces: Set<UInt16>
    }

    struct State: Sendable {
        var domains: [SecurityDomain: Domain] = [:]
        var byNamespace: [UInt16: SecurityDomain] = [:]
        var namespaceNames: [UInt16: String] = [:]
        var nextName = 0
        var closed = false
    }

    private let state = OrderedMutex(.tierSet, State())
    /// Tiers that are closed but may still be pinned by replies in flight.
    private let retired = Mutex<[DRAMTier]>([])
    public let namePrefix: String

    /// - Parameters: budget: bytes all tiers may hold together; namePrefix: names of the tier files
    ///   (unique per daemon).
    public init(budget: Int, storage: TierStorage, namePrefix: String) {
        self.budget = budget
        self.storage = storage
        self.namePrefix = namePrefix
    }

    /// Adds or updates a namespace: its blocks go to the tier of its domain from now on. A namespace
    /// that changed domain (chmod, chown) leaves its old tier first: none of its bytes stay where the
    /// old domain's readers can map them.
    public func namespaceChanged(id: UInt16, name: String, owner: UInt32, group: UInt32, mode: UInt32) throws {
        let domain = SecurityDomain(owner: owner, group: group, mode: mode)
        let moved: DRAMTier? = try state.withLock { st in
            st.namespaceNames[id] = name
            if st.byNamespace[id] == domain { return nil }
            var old: DRAMTier? = nil
            if let previous = st.byNamespace[id] {
                st.domains[previous]?.namespaces.remove(id)
                old = st.domains[previous]?.tier
            }
            if st.domains[domain] == nil {
                let tier = try DRAMTier(name: "\(namePrefix)-\(st.nextName)", size: budget, storage: storage,
                                        freeEvictedPages: !st.domains.isEmpty)
                st.nextName += 1
                st.domains[domain] = Domain(tier: tier, namespaces: [])
            }
            st.domains[domain]!.namespaces.insert(id)
            st.byNamespace[id] = domain
            return old
        }
        moved?.removeAll(namespaceID: id)
    }

    /// Forgets a removed namespace.
    public func namespaceRemoved(id: UInt16) {
        let tier = state.withLock { st -> DRAMTier? in
            guard let d = st.byNamespace.removeValue(forKey: id) else { return nil }
            st.namespaceNames[id] = nil
            st.domains[d]?.namespaces.remove(id)
            return st.domains[d]?.tier
        }
        tier?.removeAll(namespaceID: id)
    }

    private func tier(for namespaceID: UInt16) -> DRAMTier? {
        state.withLock { st in st.byNamespace[namespaceID].flatMap { st.domains[$0]?.tier } }
    }

    /// Whether block `key` of namespace `namespaceID` is resident.
    public func contains(_ key: BlockKey, namespaceID: UInt16) -> Bool { tier(for: namespaceID)?.contains(key) ?? false }

    /// The resident, verified block, pinned; nil on a miss.
    public func pin(_ key: BlockKey, namespaceID: UInt16) -> PinnedBlock? {
        guard let tier = tier(for: namespaceID) else {
            missesWithoutTier.withLock { $0 += 1 }
            return nil
        }
        return tier.pin(key)
    }

    private let missesWithoutTier = Mutex(0)

    /// Copies a verified block into the tier of its namespace's domain (see `DRAMTier.insert`), then
    /// keeps all tiers within the budget.
    @discardableResult
    public func insert(_ key: BlockKey, namespaceID: UInt16, bytes: UnsafeRawBufferPointer, checksum: UInt64,
                       hinted: Bool = false, prefetched: Bool = false, readSoon: Bool = true) -> Bool {
        guard let (tier, several) = state.withLock({ st -> (DRAMTier, Bool)? in
            guard let d = st.byNamespace[namespaceID], let t = st.domains[d]?.tier else { return nil }
            return (t, st.domains.count > 1)
        }) else { return false }
        guard tier.insert(key, namespaceID: namespaceID, bytes: bytes, checksum: checksum, hinted: hinted, prefetched: prefetched,
                          readSoon: readSoon) else {
            return false
        }
        if several { enforceBudget() }
        return true
    }

    /// Evicts from the tier holding the most until all hold at most the budget.
    private func enforceBudget() {
        let tiers = state.withLock { st in st.domains.values.map(\.tier) }
        var total = tiers.reduce(0) { $0 + $1.residentBytes }
        var guardRounds = 100_000
        while total > budget && guardRounds > 0 {
            guardRounds -= 1
            guard let largest = tiers.max(by: { $0.residentBytes < $1.residentBytes }) else { return }
            let before = largest.residentBytes
            if !largest.evictOldest() { return }
            total -= before - largest.residentBytes
        }
    }

    /// Drops a block (unlinked).
    public func remove(_ key: BlockKey, namespaceID: UInt16) { tier(for: namespaceID)?.remove(key) }

    /// The domains whose namespaces a process with these credentials may read, with their tiers and
    /// the names of those namespaces (what `TierBroker` hands out).
    public func readable(uid: UInt32, gid: UInt32, groups: [UInt32]) -> [(domain: SecurityDomain, tier: DRAMTier, namespaces: [String])] {
        state.withLock { st in
            st.domains.compactMap { (domain, d) in
                guard domain.admits(uid: uid, gid: gid, groups: groups), !d.namespaces.isEmpty else { return nil }
                return (domain, d.tier, d.namespaces.compactMap { st.namespaceNames[$0] }.sorted())
            }.sorted { $0.tier.name < $1.tier.name }
        }
    }

    /// Figures of all tiers together.
    public func statistics() -> TierStatistics {
        let tiers = state.withLock { st in st.domains.values.map(\.tier) }
        var total = TierStatistics()
        for t in tiers { total.add(t.statistics()) }
        total.capacityBytes = budget
        total.mountMisses += missesWithoutTier.withLock { $0 }
        return total
    }

    /// Processes that asked the broker for the tiers: they read blocks from the map, so blocks loaded
    /// ahead of their reads help them even when the kernel's page cache serves their reads through the
    /// mount (WarehouseFS's open path). The latest 4096; a process id reused by another process counts
    /// as a client until it ages out (it only gets loads ahead it may not use).
    private let clients = Mutex<(known: Set<Int32>, order: Deque<Int32>)>(([], []))

    /// Records that process `pid` (a thread group id, as SO_PEERCRED gives it) took the tiers.
    public func noteClient(process pid: Int32) {
        clients.withLock { c in
            guard c.known.insert(pid).inserted else { return }
            c.order.append(pid)
            if c.order.count > 4096 { c.known.remove(c.order.removeFirst()) }
        }
    }

    /// Whether process `pid` (a thread group id) took the tiers from the broker.
    public func isClient(process pid: Int32) -> Bool { clients.withLock { $0.known.contains(pid) } }

    /// Number of tier files (security domains with a namespace).
    public var domainCount: Int { state.withLock { $0.domains.count } }

    /// Marks every tier stopped and releases the private tmpfs.
    public func close() {
        let tiers = state.withLock { st -> [DRAMTier] in
            st.closed = true
            return st.domains.values.map(\.tier)
        }
        for t in tiers { t.close() }
        retired.withLock { $0 += tiers }
        storage.close()
    }
}
