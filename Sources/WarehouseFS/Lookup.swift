import BlockStore
import Platform
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// Names: looking a name up in a directory, the inodes of committed blocks and of blocks being written,
/// and forgetting them when the kernel does.
extension WarehouseFileSystem {
    /// A directory inside a namespace, as handlers need it: the namespace, the directory's id and its
    /// path relative to the namespace ("" for the namespace itself).
    struct DirectoryContext {
        var namespace: NamespaceInfo
        var id: UInt32
        var path: String
        var ino: UInt64 { InodeNumber.directory(namespace.id, id) }

        func key(of name: String) -> String { BlockPath.key(directory: path, name: name) }
    }

    func directoryContext(_ ino: UInt64) -> FSResult<DirectoryContext> {
        switch InodeNumber.kind(ino) {
        case .directory(let ns, let id):
            guard let info = store.namespace(id: ns), let path = store.directoryPath(namespaceID: ns, id: id) else { return .failure(FSError(ENOENT)) }
            return .success(DirectoryContext(namespace: info, id: id, path: path))
        case .root, .controlDirectory: return .failure(FSError(EPERM))
        case .control, .file: return .failure(FSError(ENOTDIR))
        }
    }

    /// Checks a name for a file or directory inside a namespace.
    func checkName(_ name: [UInt8]) -> FSResult<String> {
        switch BlockName.checkComponent(name) {
        case .success(let text): return .success(text)
        case .failure(.tooLong): return .failure(FSError(ENAMETOOLONG))
        case .failure(.invalid): return .failure(FSError(EINVAL))
        }
    }

    /// Whether `open` of `ino` checks the caller's supplementary groups itself (the control files act
    /// as their opener: hints and commands are checked against its groups). Blocks' permissions are the
    /// kernel's to check before the OPEN arrives.
    public static func checksGroupsAtOpen(_ ino: UInt64) -> Bool {
        if case .control = InodeNumber.kind(ino) { return true }
        return false
    }

    /// The directory `parent` (inside a namespace) and the checked text of `name` in it: what every
    /// call on a name inside a namespace starts with.
    func entryOf(parent: UInt64, name: [UInt8]) -> FSResult<(DirectoryContext, String)> {
        directoryContext(parent).flatMap { dir in checkName(name).map { (dir, $0) } }
    }

    /// The block a name stands for (`create`, `unlink`): its directory and key; `EISDIR` when the name
    /// is a directory.
    func blockEntryOf(parent: UInt64, name: [UInt8]) -> FSResult<(dir: DirectoryContext, key: String)> {
        entryOf(parent: parent, name: name).flatMap { dir, text in
            if store.lookupDirectory(namespaceID: dir.namespace.id, parent: dir.id, name: text) != nil { return .failure(FSError(EISDIR)) }
            return .success((dir, dir.key(of: text)))
        }
    }

    public func lookup(parent: UInt64, name: [UInt8], caller: Caller) -> FSResult<Entry> {
        counters.count(.lookup)
        switch InodeNumber.kind(parent) {
        case .root:
            if name.count > 255 { return .failure(FSError(ENAMETOOLONG)) }
            let text = String(decoding: name, as: UTF8.self)
            if text == ".tw" { return entry(for: InodeNumber.controlDirectory, timeout: settings.entryTimeout) }
            if let ns = store.namespace(named: text) { return entry(for: InodeNumber.namespace(ns.id), timeout: settings.entryTimeout, attributeTimeout: 1) }
            // A namespace another node announced is created here on first use, unless the caller is
            // creating it itself (mkdir looks the name up first).
            if let cluster, BlockName.isValidNamespace(text), !inspector.isMakingDirectory(caller.pid),
               let ns = cluster.importNamespace(text) {
                namespaceChanged(ns)
                return entry(for: InodeNumber.namespace(ns.id), timeout: settings.entryTimeout, attributeTimeout: 1)
            }
            return .failure(FSError(ENOENT))
        case .controlDirectory:
            guard let f = ControlFile(rawValue: String(decoding: name, as: UTF8.self)) else { return .failure(FSError(ENOENT)) }
            return entry(for: f.ino, timeout: settings.entryTimeout, attributeTimeout: 0)
        case .control, .file:
            return .failure(FSError(ENOTDIR))
        case .directory:
            break
        }
        let dir: DirectoryContext, text: String
        switch entryOf(parent: parent, name: name) {
        case .success(let found): (dir, text) = found
        case .failure(let e): return .failure(e)
        }
        if let child = store.lookupDirectory(namespaceID: dir.namespace.id, parent: dir.id, name: text) {
            // A directory keeps its inode while it lives (the kernel updates its own names on rmdir and
            // rename), so its name is cached as long as a block's; its attributes change as things are made
            // in it and are cached briefly.
            return entry(for: InodeNumber.directory(dir.namespace.id, child), timeout: settings.entryTimeout, attributeTimeout: 1)
        }
        let key = dir.key(of: text)
        // A committed block wins over one this process is still writing (that one will be discarded).
        if case .success(let found) = committedEntry(namespace: dir.namespace, key: key, directory: dir.id) {
            if let flags = inspector.openFlags(of: caller.pid), flags & O_CREAT != 0, flags & O_EXCL == 0 {
                // open(O_CREAT) of an existing block: first write wins, so the writer gets a stand-in.
                forget(UInt64(found.attributes.st_ino), count: 1)
                return .success(discardEntry(namespace: dir.namespace, key: key, directory: dir.id))
            }
            return .success(found)
        }
        if let node = pendingNode(namespace: dir.namespace, key: key, caller: caller) {
            node.state.withLock { $0.lookups += 1 }
            return .success(Entry(attributes: fileAttributes(of: node), entryTimeout: 0, attributeTimeout: 0))
        }
        // A local miss looks in the shared tier, unless the caller is creating the name (its open has
        // O_CREAT): a writer's lookup must not wait for the cluster.
        var absenceTimeout = settings.negativeTimeout
        if let cluster {
            absenceTimeout = min(absenceTimeout, cluster.settings.negativeSeconds)
            if inspector.openFlags(of: caller.pid).map({ $0 & O_CREAT == 0 }) ?? true {
                switch cluster.fetch(namespace: dir.namespace.name, key: key) {
                case .stored: return committedEntry(namespace: dir.namespace, key: key, directory: dir.id)
                case .corrupt: return .failure(FSError(EIO))
                case .absent: break
                case .unavailable: absenceTimeout = 0  // the cluster may have it: ask again next time
                }
            }
        }
        return .failure(absence(namespace: dir.namespace, key: key, timeout: absenceTimeout))
    }

    /// ENOENT for a name inside a namespace, cached by the kernel for `timeout` when that is safe: when
    /// nobody is writing the name. A writer that commits after the store was asked has a pending node
    /// until after its commit, so the order (store missed, then no pending node, then the store still
    /// misses) leaves no gap; a writer that starts later goes through the kernel's `create`, which
    /// replaces the negative entry (the parent directory's lock keeps it from racing this lookup).
    func absence(namespace ns: NamespaceInfo, key: String, timeout: Double) -> FSError {
        guard timeout > 0, !pendingNodeExists(namespace: ns, key: key), !store.contains(namespace: ns.name, key: key) else {
            return FSError(ENOENT)
        }
        return .absent(cacheFor: timeout)
    }

    func entry(for ino: UInt64, timeout: Double, attributeTimeout: Double? = nil) -> FSResult<Entry> {
        attributes(of: ino).map { Entry(attributes: $0, entryTimeout: timeout, attributeTimeout: attributeTimeout ?? timeout) }
    }

    /// A fresh stand-in inode for a writer of an existing block (see `FileNode.State.discard`).
    func discardEntry(namespace ns: NamespaceInfo, key: String, directory: UInt32) -> Entry {
        let last = store.attributes(namespace: ns.name, key: key)
        let node = nodes.withLock { table -> FileNode in
            let node = FileNode(ino: table.allocate(), namespaceID: ns.id, namespace: ns.name, key: key, directory: directory, pending: nil)
            node.state.withLock {
                $0.lookups = 1
                $0.discard = true
                $0.last = last
            }
            table.nodes[node.ino] = node
            return node
        }
        return Entry(attributes: fileAttributes(of: node), entryTimeout: 0, attributeTimeout: 0)
    }

    /// The node of a committed block, creating it on first lookup (one lookup reference is taken).
    func committedEntry(namespace ns: NamespaceInfo, key: String, directory: UInt32) -> FSResult<Entry> {
        guard let a = store.attributes(namespace: ns.name, key: key) else { return .failure(FSError(ENOENT)) }
        let blockKey = BlockKey(namespace: ns.name, key: key)
        let node = nodes.withLock { table -> FileNode in
            if let ino = table.committed[blockKey], let node = table.nodes[ino],
               node.state.withLock({ $0.sequence == a.sequence && !$0.unlinked && $0.pending == nil }) {
                node.state.withLock { $0.lookups += 1 }
                return node
            }
            var ino = InodeNumber.committed(blockKey, sequence: a.sequence)
            if table.nodes[ino] != nil { ino = table.allocate() }  // a hash collision, or a stale node: a number of its own
            let node = FileNode(ino: ino, namespaceID: ns.id, namespace: ns.name, key: key, directory: directory, pending: nil)
            node.state.withLock {
                $0.lookups = 1
                $0.sequence = a.sequence
                $0.last = a
            }
            table.nodes[node.ino] = node
            table.committed[blockKey] = node.ino
            return node
        }
        // A block with a time to live may be cached only until it expires: then the kernel asks again.
        // The kernel starts the timeout when the reply reaches it, a little after this is computed (on a
        // loaded machine, milliseconds): a quarter of a second early, no cached name outlives its block.
        var entryTimeout = settings.entryTimeout, attributeTimeout = settings.attributeTimeout
        if ns.ttlSeconds > 0 {
            let left = Double(UInt64(a.commitSeconds) + ns.ttlSeconds) - Double(wallClockNanoseconds()) / 1e9 - 0.25
            entryTimeout = max(0, min(entryTimeout, left))
            attributeTimeout = max(0, min(attributeTimeout, left))
        }
        return .success(Entry(attributes: committedAttributes(ino: node.ino, a), entryTimeout: entryTimeout, attributeTimeout: attributeTimeout))
    }

    /// The block being written under this key by the caller's process, if any.
    func pendingNode(namespace ns: NamespaceInfo, key: String, caller: Caller) -> FileNode? {
        let candidates = nodes.withLock { $0.pending[BlockKey(namespace: ns.name, key: key)] ?? [] }
        guard !candidates.isEmpty else { return nil }
        let group = inspector.threadGroup(of: caller.pid)
        // A block already committed (or dropped) at close is no longer "being written", even though its
        // staging region is only released later (RELEASE arrives after close returns).
        return candidates.first { node in
            guard let pending = node.state.withLock({ $0.pending }), pending.creator == group else { return false }
            return !pending.state.withLock { $0.finished }
        }
    }

    /// The kernel dropped `count` references to an inode. A count it never took is an internal error:
    /// it aborts loudly (libfuse's passthrough_hp does the same) rather than go on with a wrong table.
    public func forget(_ ino: UInt64, count: UInt64) {
        guard InodeNumber.kind(ino) == .file else { return }
        nodes.withLock { table in
            guard let node = table.nodes[ino] else { return }
            let gone = node.state.withLock { s -> Bool in
                precondition(s.lookups >= count, "twfs: the kernel forgot \(count) references of inode \(ino), which had \(s.lookups)")
                s.lookups -= count
                return s.lookups == 0 && s.pending == nil
            }
            if gone {
                table.nodes[ino] = nil
                let key = node.blockKey
                if table.committed[key] == ino { table.committed[key] = nil }
            }
        }
    }
}
