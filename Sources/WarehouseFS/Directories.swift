import BlockStore
import Platform
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// Directories: namespaces at the top, directory trees inside them; mkdir, rmdir, listings.
extension WarehouseFileSystem {
    public func makeDirectory(parent: UInt64, name: [UInt8], mode: UInt32, caller: Caller) -> FSResult<Entry> {
        counters.count(.mkdir)
        switch InodeNumber.kind(parent) {
        case .root:
            if name.count > 255 { return .failure(FSError(ENAMETOOLONG)) }
            do {
                let ns = try store.createNamespace(String(decoding: name, as: UTF8.self), owner: caller.uid, group: caller.gid, mode: mode & 0o7777)
                namespaceChanged(ns)
                return entry(for: InodeNumber.namespace(ns.id), timeout: settings.entryTimeout, attributeTimeout: 1)
            } catch {
                return .failure(FSError(error))
            }
        case .controlDirectory: return .failure(FSError(EPERM))
        case .control, .file: return .failure(FSError(ENOTDIR))
        case .directory: break
        }
        let dir: DirectoryContext, text: String
        switch entryOf(parent: parent, name: name) {
        case .success(let found): (dir, text) = found
        case .failure(let e): return .failure(e)
        }
        if pendingNodeExists(namespace: dir.namespace, key: dir.key(of: text)) { return .failure(FSError(EEXIST)) }
        do {
            let info = try store.makeDirectory(namespaceID: dir.namespace.id, parent: dir.id, name: text,
                                               ownership: BlockOwnership(uid: caller.uid, gid: caller.gid, mode: mode & 0o7777))
            return entry(for: InodeNumber.directory(dir.namespace.id, info.id), timeout: settings.entryTimeout, attributeTimeout: 1)
        } catch {
            return .failure(FSError(error))
        }
    }

    /// Whether some process is writing a block under this key (its name is taken, though not visible).
    func pendingNodeExists(namespace ns: NamespaceInfo, key: String) -> Bool {
        nodes.withLock { $0.pending[BlockKey(namespace: ns.name, key: key)]?.isEmpty == false }
    }

    public func removeDirectory(parent: UInt64, name: [UInt8], caller: Caller) -> FSResult<Void> {
        let text = String(decoding: name, as: UTF8.self)
        switch InodeNumber.kind(parent) {
        case .root:
            guard let ns = store.namespace(named: text) else { return .failure(FSError(ENOENT)) }
            if nodes.withLock({ $0.pendingPerDirectory.keys.contains { $0.namespace == ns.id } }) { return .failure(FSError(ENOTEMPTY)) }
            do {
                try store.removeNamespace(text)
                tiers?.namespaceRemoved(id: ns.id)
                return .success(())
            } catch {
                return .failure(FSError(error))
            }
        case .controlDirectory: return .failure(FSError(EPERM))
        case .control, .file: return .failure(FSError(ENOTDIR))
        case .directory: break
        }
        let dir: DirectoryContext
        switch directoryContext(parent) {
        case .success(let d): dir = d
        case .failure(let e): return .failure(e)
        }
        guard let child = store.lookupDirectory(namespaceID: dir.namespace.id, parent: dir.id, name: text) else {
            // A block of that name is not a directory.
            return .failure(FSError(store.contains(namespace: dir.namespace.name, key: dir.key(of: text)) ? ENOTDIR : ENOENT))
        }
        if nodes.withLock({ ($0.pendingPerDirectory[NodeTable.DirectoryRef(namespace: dir.namespace.id, id: child)] ?? 0) > 0 }) {
            return .failure(FSError(ENOTEMPTY))
        }
        do {
            try store.removeDirectory(namespaceID: dir.namespace.id, parent: dir.id, name: text)
            return .success(())
        } catch {
            return .failure(FSError(error))
        }
    }

    // MARK: Listings

    public func openDirectory(ino: UInt64, caller: Caller) -> FSResult<OpenFile> {
        switch InodeNumber.kind(ino) {
        case .root:
            let names = store.namespaces().map { ($0.name, InodeNumber.namespace($0.id)) }
            return .success(OpenFile(.directory(DirectoryState(.root(names))), opener: caller))
        case .controlDirectory:
            return .success(OpenFile(.directory(DirectoryState(.control)), opener: caller))
        case .directory(let ns, let id):
            guard let d = store.directory(namespaceID: ns, id: id) else { return .failure(FSError(ENOENT)) }
            store.beginListing(namespaceID: ns, id: id)
            let parent = id == DirectoryID.namespaceRoot ? InodeNumber.root : InodeNumber.directory(ns, d.parent)
            return .success(OpenFile(.directory(DirectoryState(.namespace(ns, id, parent: parent))), opener: caller))
        case .control, .file:
            return .failure(FSError(ENOTDIR))
        }
    }

    public func releaseDirectory(_ handle: OpenFile) {
        guard case .directory(let d) = handle.kind, case .namespace(let ns, let id, _) = d.place else { return }
        store.endListing(namespaceID: ns, id: id)
    }

    /// One entry of a listing page, with the offset of the next entry (what `readdir` hands back).
    public struct DirectoryEntry: Sendable {
        public var name: String
        public var ino: UInt64
        public var isDirectory: Bool
        public var next: Int64
        /// In a `READDIRPLUS` listing: the entry a `LOOKUP` of the name would give, one lookup reference
        /// taken (the kernel links it or forgets it). Nil in a plain listing, and for "." and ".." and
        /// the entries of the root and the control directory (the kernel then looks them up itself).
        public var entry: Entry?

        /// Bytes the entry takes in a reply: `struct fuse_dirent` (24 bytes) and the name, rounded up to
        /// 8 (`fuse_add_direntry`); with `struct fuse_entry_out` (128 bytes) before it in a `READDIRPLUS`
        /// reply (`fuse_add_direntry_plus`).
        public static func replySize(nameBytes: Int, plus: Bool) -> Int { ((plus ? 152 : 24) + nameBytes + 7) & ~7 }
    }

    /// Blocks whose names a listing reads at a time (and reads ahead for the next `READDIR`): about what
    /// one 4 KiB reply holds of 64-character names (46).
    static let listingBatch = 64

    /// Entries of an open directory from `offset` (0 at first): at most `limit`, and no more than fit in
    /// `replyBytes` (`DirectoryEntry.replySize`), so no block's name is read for an entry the reply has no
    /// room for. Offsets 1 and 2 follow "." and ".."; after them, an offset is 3 plus the store's listing
    /// position, so a listing resumes where it stopped without a snapshot and without a scan of the index.
    ///
    /// A block's name is in its record's header on disk (the index keeps only its hash): the reads of a
    /// batch's headers are started together (`BlockStore.startReadingKeys`), each name is then read as
    /// its entry is added, and the batch after the reply's last entry is started before returning, for
    /// the `READDIR` that usually follows at once.
    ///
    /// With `plus` (`READDIRPLUS`, which the kernel asks for when a listing is followed by `stat`s, as `ls
    /// -l`, `rsync` and `tar` do), each block and subdirectory comes with its `LOOKUP` entry, so those
    /// `stat`s need no request of their own. An entry's lookup reference is taken only once the entry
    /// has room in the reply; the caller forgets the references of a reply it could not send.
    public func readDirectory(_ handle: OpenFile, offset: Int64, limit: Int, replyBytes: Int = Int.max, plus: Bool = false) -> FSResult<[DirectoryEntry]> {
        guard case .directory(let d) = handle.kind else { return .failure(FSError(EBADF)) }
        counters.count(.readdir)
        var out: [DirectoryEntry] = []
        var room = replyBytes
        /// Whether an entry named `name` still has room; when it has, its bytes are counted.
        func reserve(_ name: String) -> Bool {
            let size = DirectoryEntry.replySize(nameBytes: name.utf8.count, plus: plus)
            guard out.count < limit, size <= room else { return false }
            room -= size
            return true
        }
        func add(_ e: DirectoryEntry) -> Bool {
            guard reserve(e.name) else { return false }
            out.append(e)
            return true
        }
        switch d.place {
        case .root(let names):
            let all = [(".", InodeNumber.root), ("..", InodeNumber.root)] + names
            for (i, (name, ino)) in all.enumerated().dropFirst(Int(max(0, offset))) {
                guard add(DirectoryEntry(name: name, ino: ino, isDirectory: true, next: Int64(i + 1))) else { break }
            }
        case .control:
            let all = [(".", InodeNumber.controlDirectory, true), ("..", InodeNumber.root, true)]
                + ControlFile.allCases.map { ($0.rawValue, $0.ino, false) }
            for (i, (name, ino, isDirectory)) in all.enumerated().dropFirst(Int(max(0, offset))) {
                guard add(DirectoryEntry(name: name, ino: ino, isDirectory: isDirectory, next: Int64(i + 1))) else { break }
            }
        case .namespace(let ns, let id, let parent):
            if offset <= 0 && !add(DirectoryEntry(name: ".", ino: InodeNumber.directory(ns, id), isDirectory: true, next: 1)) { break }
            if offset <= 1 && !add(DirectoryEntry(name: "..", ino: parent, isDirectory: true, next: 2)) { break }
            var cursor = UInt64(max(0, offset - 2))
            var full = false
            let namespaceInfo = plus ? store.namespace(id: ns) : nil
            while !full && out.count < limit && room >= 32 && cursor != BlockStore.DirectoryPage.end {
                let page = store.listDirectory(namespaceID: ns, id: id, from: cursor, limit: Self.listingBatch)
                store.startReadingKeys(of: page.items.lazy.compactMap { if case .block(let l) = $0.item { l } else { nil } })
                for (item, next) in page.items {
                    var entry: DirectoryEntry
                    switch item {
                    case .directory(let name, let child):
                        entry = DirectoryEntry(name: name, ino: InodeNumber.directory(ns, child), isDirectory: true, next: Int64(next) + 2)
                        guard reserve(name) else {
                            full = true
                            break
                        }
                        if plus, case .success(let e) = self.entry(for: entry.ino, timeout: settings.entryTimeout, attributeTimeout: 1) { entry.entry = e }
                    case .block(let locator):
                        // Unreadable (the block went away meanwhile): left out, as a listing leaves out a removed file.
                        guard let key = store.key(of: locator) else { continue }
                        entry = DirectoryEntry(name: BlockPath.split(key: key).name, ino: InodeNumber.committed(locator.key, sequence: locator.sequence),
                                               isDirectory: false, next: Int64(next) + 2)
                        guard reserve(entry.name) else {
                            full = true
                            break
                        }
                        if plus, let info = namespaceInfo, case .success(let e) = committedEntry(namespace: info, key: key, directory: id) {
                            entry.entry = e
                            entry.ino = UInt64(e.attributes.st_ino)
                        }
                    }
                    if full { break }
                    out.append(entry)
                }
                cursor = page.next
            }
            if cursor != BlockStore.DirectoryPage.end || full, let last = out.last, last.next >= 2 {
                let ahead = store.listDirectory(namespaceID: ns, id: id, from: UInt64(last.next - 2), limit: Self.listingBatch)
                store.startReadingKeys(of: ahead.items.lazy.compactMap { if case .block(let l) = $0.item { l } else { nil } })
            }
        }
        return .success(out)
    }
}
