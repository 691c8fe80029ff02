import WarehouseCore

/// Directory ids inside a namespace (docs/format.md "Directories"). Blocks record the id of the
/// directory they lie in; the ids of explicit directories are kept by `DirectoryJournal`.
public enum DirectoryID {
    /// The namespace directory itself.
    public static let namespaceRoot: UInt32 = 0
    /// Fan-out directories `hh` directly in a namespace have fixed ids, so canonical blocks need no
    /// journal record to have a directory.
    static let fanoutBase: UInt32 = 0xFFFF_FF00
    public static func fanout(_ byte: UInt8) -> UInt32 { fanoutBase | UInt32(byte) }
    public static func isFanout(_ id: UInt32) -> Bool { id >= fanoutBase }
    public static func fanoutByte(_ id: UInt32) -> UInt8 { UInt8(truncatingIfNeeded: id) }
    /// Ids given to explicit directories (`mkdir`).
    static let firstExplicit: UInt32 = 1
    static let lastExplicit: UInt32 = fanoutBase - 1
}

/// What the file system shows of a directory.
/// Who may reach a block: its namespace, the ownership of each directory on its path (outermost
/// first) and its own (`BlockStore.accessChain`).
public struct AccessChain: Sendable {
    public var namespace: NamespaceInfo
    public var directories: [BlockOwnership]
    public var block: BlockOwnership?
}

extension AccessChain {
    /// Whether a block with `ownership` at the end of this chain may enter the shared-memory tier of its
    /// namespace's security domain: everyone who can map that tier must be able to read the block
    /// through the mount. That holds when the block is readable by every class the namespace lets in,
    /// and every directory on its path is searchable by all, or at least by the same owner and group as
    /// the namespace. Every way into the tier asks: the read path, commits, prefetches, cluster fetches.
    public func admitsToSharedTier(block ownership: BlockOwnership) -> Bool {
        let ns = namespace
        let nsSearch = ns.mode & 0o111
        // The block: readable by every class the namespace lets in.
        let readable = (nsSearch & 0o100 == 0 || ownership.mode & 0o444 == 0o444 || (ownership.uid == ns.owner && ownership.mode & 0o400 != 0))
            && (nsSearch & 0o010 == 0 || ownership.mode & 0o044 == 0o044 || (ownership.gid == ns.group && ownership.mode & 0o040 != 0))
            && (nsSearch & 0o001 == 0 || ownership.mode & 0o004 != 0)
        guard readable else { return false }
        // Directories on the path: each lets in at least whom the namespace does.
        for directory in directories {
            let bits = directory.mode & 0o111
            let same = directory.uid == ns.owner && directory.gid == ns.group
            guard bits == 0o111 || (same && bits & nsSearch == nsSearch) else { return false }
        }
        return true
    }

    /// `admitsToSharedTier` for the block the chain was made for (false when it names none).
    public var admitsItsBlockToSharedTier: Bool { block.map { admitsToSharedTier(block: $0) } ?? false }
}

public struct DirectoryInfo: Sendable, Equatable {
    public var namespaceID: UInt16
    public var id: UInt32
    public var parent: UInt32
    public var name: String
    public var ownership: BlockOwnership
    public var modifiedNanoseconds: UInt64
    public var changedNanoseconds: UInt64
    /// Set by `utimes`; 0: the modification time.
    public var accessedNanoseconds: UInt64 = 0
    /// Subdirectories and blocks it holds now.
    public var subdirectories: Int
    public var blocks: Int
    public var isEmpty: Bool { subdirectories == 0 && blocks == 0 }
}

/// An unordered collection with stable positions, for streaming `readdir`: new members are appended,
/// removed ones are marked and skipped, and the array is compacted only while nobody is listing it, so
/// a listing resumes at its position without skipping a member that stayed.
///
/// Thread-safety: none; the store's lock guards it.
struct MemberList<Element: Hashable & Sendable>: Sendable {
    private(set) var items: [Element] = []
    private var removed: Set<Element> = []

    var count: Int { items.count - removed.count }
    var isEmpty: Bool { count == 0 }

    /// Adds an element that is not a member now.
    mutating func insert(_ x: Element) {
        if removed.remove(x) != nil { return }  // its old slot is live again
        items.append(x)
    }

    /// Adds elements none of which is a member now.
    mutating func insert(contentsOf xs: [Element]) {
        if items.isEmpty && removed.isEmpty {
            items = xs  // shares the caller's buffer instead of copying it
        } else if removed.isEmpty {
            items.append(contentsOf: xs)
        } else {
            for x in xs { insert(x) }
        }
    }

    /// Removes an element that is a member now. `compactable`: no listing is open on the list.
    mutating func remove(_ x: Element, compactable: Bool) {
        if compactable && items.count <= 32, let i = items.lastIndex(of: x) {
            items.remove(at: i)
            return
        }
        removed.insert(x)
        if compactable && removed.count > 64 && removed.count * 2 > items.count { compact() }
    }

    mutating func compact() {
        guard !removed.isEmpty else { return }
        items.removeAll { removed.contains($0) }
        removed.removeAll()
    }

    /// The members, in their order.
    var members: [Element] { removed.isEmpty ? items : items.filter { !removed.contains($0) } }

    /// Up to `limit` members from `position` on, each with the position after it.
    func slice(from position: Int, limit: Int) -> [(member: Element, next: Int)] {
        var out: [(Element, Int)] = []
        var i = max(0, position)
        while i < items.count && out.count < limit {
            if !removed.contains(items[i]) { out.append((items[i], i + 1)) }
            i += 1
        }
        return out
    }

    var all: [Element] { items.filter { !removed.contains($0) } }
}

/// The directory trees of all namespaces, in memory (docs/format.md "Directories"): explicit
/// directories (made by `mkdir`, kept in the journal) and implicit fan-out directories, which exist
/// while they hold something. Each directory knows its subdirectories by name and its blocks by key.
///
/// Thread-safety: none; it lives in the store's state and its lock guards it.
struct DirectoryTree: Sendable {
    struct Node: Sendable {
        var parent: UInt32
        var name: String
        /// Recorded in the journal: made by `mkdir` or given attributes. Implicit fan-out directories
        /// are not, and go away when they hold nothing.
        var explicit: Bool
        var ownership: BlockOwnership
        var modifiedNanoseconds: UInt64
        var changedNanoseconds: UInt64
        var accessedNanoseconds: UInt64 = 0
        var children: [String: UInt32] = [:]
        var childOrder = MemberList<UInt32>()
        /// Its blocks, by their slots in the index (`BlockIndex`): 4 bytes a block.
        var blocks = MemberList<UInt32>()
        /// Open listings (`readdir` in progress): positions must stay valid, so no compaction.
        var listings = 0

        var isEmpty: Bool { children.isEmpty && blocks.isEmpty }
    }

    struct NamespaceTree: Sendable {
        var nodes: [UInt32: Node] = [:]
    }

    private(set) var namespaces: [UInt16: NamespaceTree] = [:]
    private(set) var nextID: UInt32 = DirectoryID.firstExplicit

    /// Adds the root of a namespace (the namespace directory itself).
    mutating func addNamespace(_ ns: NamespaceInfo) {
        guard namespaces[ns.id] == nil else { return }
        let t = ns.createdSeconds &* 1_000_000_000
        var tree = NamespaceTree()
        tree.nodes[DirectoryID.namespaceRoot] = Node(parent: DirectoryID.namespaceRoot, name: "", explicit: true,
                                                     ownership: BlockOwnership(uid: ns.owner, gid: ns.group, mode: ns.mode),
                                                     modifiedNanoseconds: t, changedNanoseconds: t)
        namespaces[ns.id] = tree
    }

    mutating func removeNamespace(_ id: UInt16) { namespaces[id] = nil }

    /// The root's owner and mode follow the namespace's (`chmod`/`chown` of the namespace directory).
    mutating func updateNamespace(_ ns: NamespaceInfo, now: UInt64) {
        namespaces[ns.id]?.nodes[DirectoryID.namespaceRoot]?.ownership = BlockOwnership(uid: ns.owner, gid: ns.group, mode: ns.mode)
        namespaces[ns.id]?.nodes[DirectoryID.namespaceRoot]?.changedNanoseconds = now
    }

    func node(_ ns: UInt16, _ id: UInt32) -> Node? { namespaces[ns]?.nodes[id] }

    /// Whether directory `id` of namespace `ns` can be looked up: it exists, or it is a fan-out
    /// directory (those always can, so `open(NS/hh/HASH, O_CREAT)` needs no `mkdir`).
    func isDirectory(_ ns: UInt16, _ id: UInt32) -> Bool {
        guard let tree = namespaces[ns] else { return false }
        return tree.nodes[id] != nil || DirectoryID.isFanout(id)
    }

    func info(_ ns: UInt16, _ id: UInt32, namespace: NamespaceInfo) -> DirectoryInfo? {
        guard let tree = namespaces[ns] else { return nil }
        if let n = tree.nodes[id] {
            return DirectoryInfo(namespaceID: ns, id: id, parent: n.parent, name: n.name, ownership: n.ownership,
                                 modifiedNanoseconds: n.modifiedNanoseconds, changedNanoseconds: n.changedNanoseconds,
                                 accessedNanoseconds: n.accessedNanoseconds, subdirectories: n.children.count, blocks: n.blocks.count)
        }
        guard DirectoryID.isFanout(id) else { return nil }
        // A fan-out directory that holds nothing: shown with the namespace's owner and times.
        let root = tree.nodes[DirectoryID.namespaceRoot]
        let t = namespace.createdSeconds &* 1_000_000_000
        return DirectoryInfo(namespaceID: ns, id: id, parent: DirectoryID.namespaceRoot,
                             name: hexByte(DirectoryID.fanoutByte(id)),
                             ownership: root?.ownership ?? BlockOwnership(uid: namespace.owner, gid: namespace.group, mode: namespace.mode),
                             modifiedNanoseconds: t, changedNanoseconds: t, subdirectories: 0, blocks: 0)
    }

    /// The subdirectory `name` of `parent`: an existing one, or at the namespace's top level the
    /// fan-out directory a two-hex-digit name stands for.
    func child(_ ns: UInt16, of parent: UInt32, named name: String) -> UInt32? {
        guard let tree = namespaces[ns], let p = tree.nodes[parent] ?? (DirectoryID.isFanout(parent) ? Node.empty : nil) else { return nil }
        if let id = p.children[name] { return id }
        if parent == DirectoryID.namespaceRoot, let byte = BlockName.fanoutByte(ofDirectory: name.utf8) { return DirectoryID.fanout(byte) }
        return nil
    }

    /// The directory holding a key (its path's directory), or nil when a directory on the way is missing.
    func directory(ofKey key: String, namespace ns: UInt16) -> UInt32? {
        let (path, _) = BlockPath.split(key: key)
        var id = DirectoryID.namespaceRoot
        guard !path.isEmpty else { return id }
        for component in BlockPath.components(of: path) {
            guard let next = child(ns, of: id, named: String(component)) else { return nil }
            id = next
        }
        return id
    }

    /// The path of a directory relative to its namespace ("" for the namespace itself).
    func path(_ ns: UInt16, _ id: UInt32) -> String? {
        var parts: [String] = []
        var current = id
        var depth = 0
        while current != DirectoryID.namespaceRoot {
            if let n = namespaces[ns]?.nodes[current] {
                parts.append(n.name)
                current = n.parent
            } else if DirectoryID.isFanout(current) {
                parts.append(hexByte(DirectoryID.fanoutByte(current)))
                current = DirectoryID.namespaceRoot
            } else {
                return nil
            }
            depth += 1
            if depth > BlockName.maxDepth + 1 { return nil }
        }
        return parts.reversed().joined(separator: "/")
    }

    /// Depth of a directory below its namespace (0 for the namespace itself).
    func depth(_ ns: UInt16, _ id: UInt32) -> Int {
        guard let p = path(ns, id) else { return 0 }
        return p.isEmpty ? 0 : BlockPath.components(of: p).count
    }

    // MARK: Changes (the store journals the explicit ones)

    /// A fresh id for a new explicit directory, or nil when they ran out.
    mutating func allocateID() -> UInt32? {
        var tries: UInt32 = 0
        while tries < 1024 {
            let id = nextID
            nextID = nextID >= DirectoryID.lastExplicit ? DirectoryID.firstExplicit : nextID + 1
            if !namespaces.values.contains(where: { $0.nodes[id] != nil }) { return id }
            tries += 1
        }
        return nil
    }

    mutating func noteExisting(id: UInt32) {
        if id < DirectoryID.fanoutBase && id >= nextID { nextID = id + 1 }
    }

    /// Makes the node of an implicit fan-out directory exist (before it gets a member or child).
    private mutating func materialize(_ ns: UInt16, _ id: UInt32, now: UInt64) {
        guard namespaces[ns]?.nodes[id] == nil, DirectoryID.isFanout(id),
              let root = namespaces[ns]?.nodes[DirectoryID.namespaceRoot] else { return }
        let name = hexByte(DirectoryID.fanoutByte(id))
        namespaces[ns]!.nodes[id] = Node(parent: DirectoryID.namespaceRoot, name: name, explicit: false,
                                         ownership: root.ownership, modifiedNanoseconds: now, changedNanoseconds: now)
        linkChild(ns, parent: DirectoryID.namespaceRoot, name: name, id: id, now: now)
    }

    private mutating func linkChild(_ ns: UInt16, parent: UInt32, name: String, id: UInt32, now: UInt64) {
        namespaces[ns]!.nodes[parent]!.children[name] = id
        namespaces[ns]!.nodes[parent]!.childOrder.insert(id)
        namespaces[ns]!.nodes[parent]!.modifiedNanoseconds = now
        namespaces[ns]!.nodes[parent]!.changedNanoseconds = now
    }

    private mutating func unlinkChild(_ ns: UInt16, parent: UInt32, name: String, id: UInt32, now: UInt64) {
        guard var p = namespaces[ns]?.nodes[parent] else { return }
        p.children[name] = nil
        p.childOrder.remove(id, compactable: p.listings == 0)
        p.modifiedNanoseconds = now
        p.changedNanoseconds = now
        namespaces[ns]!.nodes[parent] = p
        dropIfImplicitAndEmpty(ns, parent, now: now)
    }

    /// An implicit fan-out directory that holds nothing any more goes away.
    private mutating func dropIfImplicitAndEmpty(_ ns: UInt16, _ id: UInt32, now: UInt64) {
        guard let n = namespaces[ns]?.nodes[id], !n.explicit, n.isEmpty, n.listings == 0, id != DirectoryID.namespaceRoot else { return }
        namespaces[ns]!.nodes[id] = nil
        unlinkChild(ns, parent: n.parent, name: n.name, id: id, now: now)
    }

    /// Adds a directory (mkdir, or a journal record at recovery). The parent must exist or be a fan-out.
    mutating func add(_ ns: UInt16, id: UInt32, parent: UInt32, name: String, ownership: BlockOwnership,
                      modifiedNanoseconds: UInt64, explicit: Bool = true) {
        guard namespaces[ns] != nil else { return }
        if DirectoryID.isFanout(parent) { materialize(ns, parent, now: modifiedNanoseconds) }
        guard namespaces[ns]?.nodes[parent] != nil else { return }
        if var existing = namespaces[ns]!.nodes[id] {
            // An implicit fan-out directory made explicit (chmod, utimes of it, or its journal record).
            existing.explicit = existing.explicit || explicit
            existing.ownership = ownership
            existing.modifiedNanoseconds = modifiedNanoseconds
            namespaces[ns]!.nodes[id] = existing
            return
        }
        namespaces[ns]!.nodes[id] = Node(parent: parent, name: name, explicit: explicit, ownership: ownership,
                                         modifiedNanoseconds: modifiedNanoseconds, changedNanoseconds: modifiedNanoseconds)
        linkChild(ns, parent: parent, name: name, id: id, now: modifiedNanoseconds)
        noteExisting(id: id)
    }

    /// Removes an empty directory; an implicit fan-out directory goes back to being virtual.
    mutating func remove(_ ns: UInt16, id: UInt32, now: UInt64) {
        guard let n = namespaces[ns]?.nodes[id], id != DirectoryID.namespaceRoot else { return }
        if DirectoryID.isFanout(id) && !n.isEmpty {
            namespaces[ns]!.nodes[id]!.explicit = false
            return
        }
        namespaces[ns]!.nodes[id] = nil
        unlinkChild(ns, parent: n.parent, name: n.name, id: id, now: now)
    }

    /// Moves a directory (a rename of one that holds no blocks anywhere below it).
    mutating func move(_ ns: UInt16, id: UInt32, to parent: UInt32, name: String, now: UInt64) {
        guard let n = namespaces[ns]?.nodes[id] else { return }
        if DirectoryID.isFanout(parent) { materialize(ns, parent, now: now) }
        guard namespaces[ns]?.nodes[parent] != nil else { return }
        unlinkChild(ns, parent: n.parent, name: n.name, id: id, now: now)
        namespaces[ns]!.nodes[id]!.parent = parent
        namespaces[ns]!.nodes[id]!.name = name
        namespaces[ns]!.nodes[id]!.changedNanoseconds = now
        linkChild(ns, parent: parent, name: name, id: id, now: now)
    }

    mutating func setAttributes(_ ns: UInt16, id: UInt32, ownership: BlockOwnership?, modifiedNanoseconds: UInt64?,
                                accessedNanoseconds: UInt64? = nil, now: UInt64) {
        if DirectoryID.isFanout(id) { materialize(ns, id, now: now) }
        guard namespaces[ns]?.nodes[id] != nil else { return }
        if id != DirectoryID.namespaceRoot { namespaces[ns]!.nodes[id]!.explicit = true }
        if let ownership { namespaces[ns]!.nodes[id]!.ownership = ownership }
        if let modifiedNanoseconds { namespaces[ns]!.nodes[id]!.modifiedNanoseconds = modifiedNanoseconds }
        if let accessedNanoseconds { namespaces[ns]!.nodes[id]!.accessedNanoseconds = accessedNanoseconds }
        namespaces[ns]!.nodes[id]!.changedNanoseconds = now
    }

    /// Whether any block lies in the directory or below it.
    func holdsBlocks(_ ns: UInt16, _ id: UInt32) -> Bool {
        guard let n = namespaces[ns]?.nodes[id] else { return false }
        if !n.blocks.isEmpty { return true }
        return n.children.values.contains { holdsBlocks(ns, $0) }
    }

    /// Whether `ancestor` is `id` or one of its parents (a directory cannot move into itself).
    func isAncestor(_ ns: UInt16, _ ancestor: UInt32, of id: UInt32) -> Bool {
        var current = id
        for _ in 0...(BlockName.maxDepth + 2) {
            if current == ancestor { return true }
            if current == DirectoryID.namespaceRoot { return false }
            guard let n = namespaces[ns]?.nodes[current] else { return DirectoryID.isFanout(current) && ancestor == DirectoryID.namespaceRoot }
            current = n.parent
        }
        return false
    }

    /// Deepest level of subdirectories below `id` (0: none).
    func height(_ ns: UInt16, _ id: UInt32) -> Int {
        guard let n = namespaces[ns]?.nodes[id], !n.children.isEmpty else { return 0 }
        return 1 + (n.children.values.map { height(ns, $0) }.max() ?? 0)
    }

    // MARK: Blocks

    // Nodes are changed in place (`nodes[id]!.field`): a copy of a node would make the next change of
    // its member list copy the whole list.

    mutating func addBlock(_ slot: UInt32, namespace ns: UInt16, directory id: UInt32, now: UInt64) {
        if DirectoryID.isFanout(id) { materialize(ns, id, now: now) }
        guard namespaces[ns]?.nodes[id] != nil else { return }
        namespaces[ns]!.nodes[id]!.blocks.insert(slot)
        namespaces[ns]!.nodes[id]!.modifiedNanoseconds = now
        namespaces[ns]!.nodes[id]!.changedNanoseconds = now
    }

    mutating func removeBlock(_ slot: UInt32, namespace ns: UInt16, directory id: UInt32, now: UInt64) {
        guard namespaces[ns]?.nodes[id] != nil else { return }
        let compactable = namespaces[ns]!.nodes[id]!.listings == 0
        namespaces[ns]!.nodes[id]!.blocks.remove(slot, compactable: compactable)
        namespaces[ns]!.nodes[id]!.modifiedNanoseconds = now
        namespaces[ns]!.nodes[id]!.changedNanoseconds = now
        dropIfImplicitAndEmpty(ns, id, now: now)
    }

    /// Blocks (none of them members yet) added to a directory at once without touching times, when the
    /// directory exists: an index snapshot's blocks, gathered by directory first (one tree lookup a
    /// directory, not a block).
    mutating func addBlocksIfDirectory(_ slots: [UInt32], namespace ns: UInt16, directory id: UInt32) -> Bool {
        guard namespaces[ns] != nil else { return false }
        if DirectoryID.isFanout(id) { materialize(ns, id, now: namespaces[ns]?.nodes[DirectoryID.namespaceRoot]?.modifiedNanoseconds ?? 0) }
        return namespaces[ns]?.nodes[id]?.blocks.insert(contentsOf: slots) != nil
    }

    /// Blocks added without touching times (recovery building the tree).
    mutating func addBlockQuietly(_ slot: UInt32, namespace ns: UInt16, directory id: UInt32) {
        if DirectoryID.isFanout(id) { materialize(ns, id, now: namespaces[ns]?.nodes[DirectoryID.namespaceRoot]?.modifiedNanoseconds ?? 0) }
        namespaces[ns]?.nodes[id]?.blocks.insert(slot)
    }

    // MARK: Listing

    mutating func beginListing(_ ns: UInt16, _ id: UInt32) { namespaces[ns]?.nodes[id]?.listings += 1 }

    mutating func endListing(_ ns: UInt16, _ id: UInt32, now: UInt64) {
        guard namespaces[ns]?.nodes[id] != nil else { return }
        namespaces[ns]!.nodes[id]!.listings = max(0, namespaces[ns]!.nodes[id]!.listings - 1)
        if namespaces[ns]!.nodes[id]!.listings == 0 {
            namespaces[ns]!.nodes[id]!.blocks.compact()
            namespaces[ns]!.nodes[id]!.childOrder.compact()
        }
        dropIfImplicitAndEmpty(ns, id, now: now)
    }

    /// The explicit directories of a namespace, parents before children (for the journal's checkpoint).
    func explicitDirectories(_ ns: UInt16) -> [(id: UInt32, node: Node)] {
        guard let tree = namespaces[ns] else { return [] }
        var out: [(UInt32, Node)] = []
        var queue = [DirectoryID.namespaceRoot]
        var i = 0
        while i < queue.count {
            let id = queue[i]
            i += 1
            guard let n = tree.nodes[id] else { continue }
            if id != DirectoryID.namespaceRoot && n.explicit { out.append((id, n)) }
            queue += n.childOrder.all
        }
        return out
    }
}

extension DirectoryTree.Node {
    static let empty = DirectoryTree.Node(parent: 0, name: "", explicit: false, ownership: BlockOwnership(uid: 0, gid: 0, mode: 0),
                                          modifiedNanoseconds: 0, changedNanoseconds: 0)
}

/// Two lowercase hex digits of a byte (a fan-out directory's name).
func hexByte(_ b: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(b >> 4)], digits[Int(b & 15)]])
}
