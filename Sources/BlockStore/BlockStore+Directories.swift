import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// The directory trees inside namespaces (docs/format.md "Directories"): lookups, mkdir, rmdir, cheap
/// renames, attributes, and listings that stream by position without holding the lock between calls.
extension BlockStore {
    /// A directory, or nil. Fan-out directories that hold nothing still answer (they can always be
    /// looked up), with the namespace's owner.
    public func directory(namespaceID: UInt16, id: UInt32) -> DirectoryInfo? {
        state.withLock { st in
            guard let ns = st.namespaces.byID[namespaceID] else { return nil }
            return st.directories.info(namespaceID, id, namespace: ns)
        }
    }

    /// Everything that decides who may read a block, read under one hold of the lock: the namespace,
    /// the ownership of each directory on the key's path (outermost first) and, given its `BlockKey`,
    /// the block's own. An open asks for this; as five separate lookups it was five trips through the
    /// store's lock, which eight readers on two CPUs spent most of their time waiting for. Nil when the
    /// namespace, a directory on the path or the block is gone.
    public func accessChain(namespaceID: UInt16, key: String, block: BlockKey? = nil) -> AccessChain? {
        let components = Self.directoryComponents(of: key)
        return state.withLock { Self.accessChain($0, namespaceID: namespaceID, components: components, block: block) }
    }

    /// `accessChain` of a block found by its place rather than its name (read ahead in log order): the
    /// directories from the one the block lies in up to the namespace. Nil when it is gone.
    public func accessChain(of located: LocatedBlock) -> AccessChain? {
        state.withLock { st -> AccessChain? in
            guard let ns = st.namespaces.byID[located.entry.namespaceID], let e = Self.live(located.blockKey, st),
                  e.sequence == located.sequence else { return nil }
            var directories: [BlockOwnership] = []
            var dir = e.directory
            while dir != DirectoryID.namespaceRoot {
                guard directories.count < 4096, let info = st.directories.info(ns.id, dir, namespace: ns) else { return nil }
                directories.append(info.ownership)
                dir = info.parent
            }
            return AccessChain(namespace: ns, directories: directories.reversed(), block: st.attributes.ownership(e.attributes, namespace: ns))
        }
    }

    /// The directory names on a key's path, outermost first.
    static func directoryComponents(of key: String) -> [String] {
        let (path, _) = BlockPath.split(key: key)
        return path.isEmpty ? [] : BlockPath.components(of: path)
    }

    static func accessChain(_ st: StoreState, namespaceID: UInt16, components: [String], block: BlockKey?) -> AccessChain? {
        guard let ns = st.namespaces.byID[namespaceID] else { return nil }
        var chain = AccessChain(namespace: ns, directories: [], block: nil)
        chain.directories.reserveCapacity(components.count)
        var dir = DirectoryID.namespaceRoot
        for component in components {
            guard let next = st.directories.child(namespaceID, of: dir, named: component),
                  let info = st.directories.info(namespaceID, next, namespace: ns) else { return nil }
            chain.directories.append(info.ownership)
            dir = next
        }
        if let block {
            guard let e = live(block, st) else { return nil }
            chain.block = st.attributes.ownership(e.attributes, namespace: ns)
        }
        return chain
    }

    /// The subdirectory `name` of directory `parent`, or nil.
    public func lookupDirectory(namespaceID: UInt16, parent: UInt32, name: String) -> UInt32? {
        state.withLock { $0.directories.child(namespaceID, of: parent, named: name) }
    }

    /// The path of a directory relative to its namespace ("" for the namespace), or nil.
    public func directoryPath(namespaceID: UInt16, id: UInt32) -> String? {
        state.withLock { $0.directories.path(namespaceID, id) }
    }

    /// Makes directory `name` in `parent`.
    ///
    /// - Throws: `.notFound` (no parent), `.alreadyExists` (a directory or a block of that name),
    ///   `.nameTooLong` (the path would pass 4096 bytes or 16 levels), `.invalidName`, `.noSpace`, `.io`.
    public func makeDirectory(namespaceID: UInt16, parent: UInt32, name: String, ownership: BlockOwnership) throws -> DirectoryInfo {
        guard BlockName.isValidComponent(name.utf8) else { throw StoreError.invalidName("'\(name.prefix(300))' is not a directory name") }
        let now = wallClockNanoseconds()
        return try state.withLock { st in
            if st.closed { throw StoreError.closed }
            guard let ns = st.namespaces.byID[namespaceID], st.directories.isDirectory(namespaceID, parent),
                  let parentPath = st.directories.path(namespaceID, parent) else { throw StoreError.notFound }
            if st.directories.child(namespaceID, of: parent, named: name) != nil { throw StoreError.alreadyExists }
            let path = parentPath.isEmpty ? name : parentPath + "/" + name
            if path.utf8.count > BlockName.maxPathLength { throw StoreError.nameTooLong("the path \(path.prefix(100))… is longer than \(BlockName.maxPathLength) bytes") }
            let depth = BlockPath.components(of: path).count
            if depth > BlockName.maxDepth { throw StoreError.nameTooLong("directories nest at most \(BlockName.maxDepth) deep in a namespace") }
            if Self.live(BlockKey(namespace: ns.name, key: BlockPath.key(directory: parentPath, name: name)), st) != nil {
                throw StoreError.alreadyExists
            }
            guard let id = st.directories.allocateID() else { throw StoreError.noSpace("no directory ids left") }
            try journal.append(.create(ns: namespaceID, id: id, parent: parent, name: name, ownership: ownership, modifiedNanoseconds: now))
            if configuration.sync == .always { try journal.synchronize() }
            st.directories.add(namespaceID, id: id, parent: parent, name: name, ownership: ownership, modifiedNanoseconds: now)
            return st.directories.info(namespaceID, id, namespace: ns)!
        }
    }

    /// Removes the empty directory `name` of `parent`. A fan-out directory that holds nothing is
    /// removed as well (it is virtual: it goes on answering lookups, but is no longer listed).
    ///
    /// - Throws: `.notFound`, `.notEmpty`, `.io`.
    public func removeDirectory(namespaceID: UInt16, parent: UInt32, name: String) throws {
        let now = wallClockNanoseconds()
        try state.withLock { st in
            guard let id = st.directories.child(namespaceID, of: parent, named: name) else { throw StoreError.notFound }
            guard let node = st.directories.node(namespaceID, id) else {
                if DirectoryID.isFanout(id) { return }   // virtual and empty
                throw StoreError.notFound
            }
            if !node.isEmpty { throw StoreError.notEmpty("directory \(name)") }
            if node.explicit {
                try journal.append(.remove(ns: namespaceID, id: id))
                if configuration.sync == .always { try journal.synchronize() }
            }
            st.directories.remove(namespaceID, id: id, now: now)
        }
    }

    /// Moves directory `id` to `name` in `newParent`. Only a directory with no block anywhere below it
    /// moves (the keys of blocks are their paths): otherwise `.crossDevice`, and `mv` copies instead.
    /// An empty directory at the target is replaced.
    ///
    /// - Throws: `.crossDevice`, `.invalidName` (into itself), `.notEmpty` (the target holds something),
    ///   `.wrongType(ENOTDIR)` (the target is a block), `.nameTooLong`, `.notFound`, `.io`.
    public func renameDirectory(namespaceID: UInt16, id: UInt32, newParent: UInt32, newName: String) throws {
        guard BlockName.isValidComponent(newName.utf8) else { throw StoreError.invalidName("'\(newName.prefix(300))' is not a directory name") }
        let now = wallClockNanoseconds()
        try state.withLock { st in
            guard let ns = st.namespaces.byID[namespaceID], let node = st.directories.node(namespaceID, id),
                  st.directories.isDirectory(namespaceID, newParent), let parentPath = st.directories.path(namespaceID, newParent)
            else { throw StoreError.notFound }
            if node.parent == newParent && node.name == newName { return }
            if st.directories.isAncestor(namespaceID, id, of: newParent) {
                throw StoreError.invalidName("a directory cannot move into itself")
            }
            if DirectoryID.isFanout(id) || st.directories.holdsBlocks(namespaceID, id) {
                throw StoreError.crossDevice("directory \(node.name) holds blocks, whose names are their paths: it is copied, not renamed")
            }
            let path = parentPath.isEmpty ? newName : parentPath + "/" + newName
            if BlockPath.components(of: path).count + st.directories.height(namespaceID, id) > BlockName.maxDepth {
                throw StoreError.nameTooLong("directories nest at most \(BlockName.maxDepth) deep in a namespace")
            }
            if Self.live(BlockKey(namespace: ns.name, key: BlockPath.key(directory: parentPath, name: newName)), st) != nil {
                throw StoreError.wrongType(ENOTDIR, "\(newName) is a block")
            }
            if let target = st.directories.child(namespaceID, of: newParent, named: newName) {
                if let t = st.directories.node(namespaceID, target) {
                    if !t.isEmpty { throw StoreError.notEmpty("directory \(newName)") }
                    if t.explicit { try journal.append(.remove(ns: namespaceID, id: target)) }
                    st.directories.remove(namespaceID, id: target, now: now)
                } else if DirectoryID.isFanout(target) == false {
                    throw StoreError.notFound
                }
            }
            try journal.append(.move(ns: namespaceID, id: id, parent: newParent, name: newName))
            if configuration.sync == .always { try journal.synchronize() }
            st.directories.move(namespaceID, id: id, to: newParent, name: newName, now: now)
        }
    }

    /// Sets a directory's owner, mode, modification or access time (the namespace directory changes the
    /// namespace; its times are not kept across restarts).
    public func setDirectoryAttributes(namespaceID: UInt16, id: UInt32, ownership: BlockOwnership?, modifiedNanoseconds: UInt64?,
                                       accessedNanoseconds: UInt64? = nil) throws {
        let now = wallClockNanoseconds()
        if id == DirectoryID.namespaceRoot {
            guard let ns = namespace(id: namespaceID) else { throw StoreError.notFound }
            if let ownership {
                _ = try updateNamespace(ns.name) {
                    $0.owner = ownership.uid
                    $0.group = ownership.gid
                    $0.mode = ownership.mode
                }
            }
            if modifiedNanoseconds != nil || accessedNanoseconds != nil {
                state.withLock {
                    $0.directories.setAttributes(namespaceID, id: id, ownership: nil, modifiedNanoseconds: modifiedNanoseconds,
                                                 accessedNanoseconds: accessedNanoseconds, now: now)
                }
            }
            return
        }
        try state.withLock { st in
            guard let ns = st.namespaces.byID[namespaceID], let info = st.directories.info(namespaceID, id, namespace: ns) else { throw StoreError.notFound }
            let o = ownership ?? info.ownership
            let m = modifiedNanoseconds ?? info.modifiedNanoseconds
            let a = accessedNanoseconds ?? info.accessedNanoseconds
            try journal.append(.attributes(ns: namespaceID, id: id, ownership: o, modifiedNanoseconds: m, accessedNanoseconds: a))
            if DirectoryID.isFanout(id) && st.directories.node(namespaceID, id)?.explicit != true {
                // A fan-out directory becomes explicit: its journal record makes it exist after a restart.
                try journal.append(.create(ns: namespaceID, id: id, parent: DirectoryID.namespaceRoot, name: info.name, ownership: o, modifiedNanoseconds: m))
            }
            st.directories.setAttributes(namespaceID, id: id, ownership: o, modifiedNanoseconds: m,
                                         accessedNanoseconds: a == 0 ? nil : a, now: now)
        }
    }

    // MARK: Listings

    /// A page of a directory listing: subdirectories first, then blocks (whose names `key(of:)` gives),
    /// each with the cursor that resumes after it.
    public struct DirectoryPage: Sendable {
        public enum Item: Sendable {
            case directory(name: String, id: UInt32)
            case block(BlockLocator)
        }
        public var items: [(item: Item, next: UInt64)] = []
        /// Where the page after this one starts; `DirectoryPage.end` when there is no more.
        public var next: UInt64
        public static let end = UInt64.max
    }

    /// Marks a directory as being listed: positions stay valid (no compaction of its member lists)
    /// until `endListing`. Every `beginListing` needs one `endListing`.
    public func beginListing(namespaceID: UInt16, id: UInt32) { state.withLock { $0.directories.beginListing(namespaceID, id) } }

    public func endListing(namespaceID: UInt16, id: UInt32) {
        state.withLock { $0.directories.endListing(namespaceID, id, now: wallClockNanoseconds()) }
    }

    /// Up to `limit` entries of directory `id` from `cursor` (0 for the first page). Costs the entries
    /// returned, never a scan of the index. Cursors below 2^40 are positions among subdirectories, the
    /// others positions among blocks.
    public func listDirectory(namespaceID: UInt16, id: UInt32, from cursor: UInt64, limit: Int) -> DirectoryPage {
        let blockPhase: UInt64 = 1 << 40
        return state.withLock { st in
            guard cursor != DirectoryPage.end, let node = st.directories.node(namespaceID, id) else { return DirectoryPage(next: DirectoryPage.end) }
            var page = DirectoryPage(next: DirectoryPage.end)
            var blockStart = 0
            if cursor < blockPhase {
                let children = node.childOrder.slice(from: Int(cursor), limit: limit)
                for (child, next) in children {
                    if let n = st.directories.node(namespaceID, child) { page.items.append((.directory(name: n.name, id: child), UInt64(next))) }
                }
                if children.count == limit, let last = children.last, last.next < node.childOrder.items.count {
                    page.next = UInt64(last.next)
                    return page
                }
                // The block phase starts after the last subdirectory.
                for i in page.items.indices.reversed() where page.items[i].next == UInt64(children.last?.next ?? -1) {
                    page.items[i].next = blockPhase
                }
            } else {
                blockStart = Int(cursor - blockPhase)
            }
            let left = limit - page.items.count
            guard left > 0 else {
                page.next = blockPhase
                return page
            }
            let members = node.blocks.slice(from: blockStart, limit: left)
            let now = Self.nowSeconds()
            for (slot, next) in members {
                guard let (k, e) = st.index.entry(atSlot: slot), e.directory == id, !Self.isExpired(e, st, now: now),
                      let seg = st.segments[e.segment] else { continue }
                page.items.append((.block(BlockLocator(segment: seg.segment, page: e.page, headerPages: e.headerPages, key: k, sequence: e.sequence,
                                                       knownKey: st.extras[k]?.renamedKey)), blockPhase + UInt64(next)))
            }
            if members.count == left, let last = members.last, last.next < node.blocks.items.count {
                page.next = blockPhase + UInt64(last.next)
            }
            return page
        }
    }

    /// Whether directory `id` holds a block or subdirectory named `name` (for `rmdir` and `create` races).
    public func directoryEntryExists(namespaceID: UInt16, parent: UInt32, name: String) -> Bool {
        state.withLock { st in
            if st.directories.child(namespaceID, of: parent, named: name) != nil,
               st.directories.node(namespaceID, st.directories.child(namespaceID, of: parent, named: name)!) != nil { return true }
            guard let ns = st.namespaces.byID[namespaceID], let path = st.directories.path(namespaceID, parent) else { return false }
            return Self.live(BlockKey(namespace: ns.name, key: BlockPath.key(directory: path, name: name)), st) != nil
        }
    }
}
