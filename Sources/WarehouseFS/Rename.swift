import BlockStore
import Platform
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// unlink and rename.
extension WarehouseFileSystem {
    /// renameat2 flags (linux/fs.h).
    static let renameNoReplace: UInt32 = 1 << 0
    static let renameExchange: UInt32 = 1 << 1

    public func unlink(parent: UInt64, name: [UInt8], caller: Caller) -> FSResult<Void> {
        counters.count(.unlink)
        let dir: DirectoryContext, key: String
        switch blockEntryOf(parent: parent, name: name) {
        case .success(let found): (dir, key) = found
        case .failure(let e): return .failure(e)
        }
        let blockKey = BlockKey(namespace: dir.namespace.name, key: key)
        if let node = pendingNode(namespace: dir.namespace, key: key, caller: caller) {
            node.state.withLock { $0.unlinked = true }
            nodes.withLock { $0.removePending(node, key: blockKey, directory: dir.id) }
            return .success(())
        }
        do {
            try store.remove(namespace: dir.namespace.name, key: key)
        } catch {
            return .failure(FSError(error))
        }
        tiers?.remove(blockKey, namespaceID: dir.namespace.id)
        nodes.withLock { table in
            if let ino = table.committed.removeValue(forKey: blockKey) { table.nodes[ino]?.state.withLock { $0.unlinked = true } }
        }
        return .success(())
    }

    public func rename(parent: UInt64, name: [UInt8], newParent: UInt64, newName: [UInt8], flags: UInt32, caller: Caller) -> FSResult<Void> {
        counters.count(.rename)
        if flags & Self.renameExchange != 0 { return .failure(FSError(EINVAL)) }
        switch (InodeNumber.kind(parent), InodeNumber.kind(newParent)) {
        case (.root, .root):
            // A namespace's name is part of every block's key: renaming it means copying it.
            return .failure(FSError(EXDEV))
        case (.root, _), (_, .root):
            return .failure(FSError(EXDEV))
        default: break
        }
        let from: DirectoryContext, to: DirectoryContext
        switch (directoryContext(parent), directoryContext(newParent)) {
        case (.success(let a), .success(let b)): (from, to) = (a, b)
        case (.failure(let e), _), (_, .failure(let e)): return .failure(e)
        }
        guard from.namespace.id == to.namespace.id else { return .failure(FSError(EXDEV)) }
        let oldName: String, newNameText: String
        switch (checkName(name), checkName(newName)) {
        case (.success(let a), .success(let b)): (oldName, newNameText) = (a, b)
        case (.failure(let e), _), (_, .failure(let e)): return .failure(e)
        }
        let ns = from.namespace
        let targetDirectory = store.lookupDirectory(namespaceID: ns.id, parent: to.id, name: newNameText)
        // A directory moves only while no block lies below it (block keys are their paths).
        if let source = store.lookupDirectory(namespaceID: ns.id, parent: from.id, name: oldName) {
            if flags & Self.renameNoReplace != 0, targetDirectory != nil || store.contains(namespace: ns.name, key: to.key(of: newNameText)) {
                return .failure(FSError(EEXIST))
            }
            if nodes.withLock({ $0.pendingPerDirectory.keys.contains { $0.namespace == ns.id && $0.id == source } }) {
                return .failure(FSError(EXDEV))
            }
            do {
                try store.renameDirectory(namespaceID: ns.id, id: source, newParent: to.id, newName: newNameText)
                return .success(())
            } catch {
                return .failure(FSError(error))
            }
        }
        if targetDirectory != nil { return .failure(FSError(EISDIR)) }
        let oldKey = from.key(of: oldName), newKey = to.key(of: newNameText)
        if newKey.utf8.count > BlockName.maxPathLength + 1 { return .failure(FSError(ENAMETOOLONG)) }
        if flags & Self.renameNoReplace != 0 && (store.contains(namespace: ns.name, key: newKey) || pendingNodeExists(namespace: ns, key: newKey)) {
            return .failure(FSError(EEXIST))
        }
        let oldBlockKey = BlockKey(namespace: ns.name, key: oldKey), newBlockKey = BlockKey(namespace: ns.name, key: newKey)
        if let node = pendingNode(namespace: ns, key: oldKey, caller: caller), let pending = node.state.withLock({ $0.pending }) {
            // Still open for writing (safetensors renames before it closes): the rename commits the
            // block under the new name; the name stays visible to its writer until the last close.
            nodes.withLock { table in
                table.removePending(node, key: oldBlockKey, directory: from.id)
                table.addPending(node, key: newBlockKey, directory: to.id)
            }
            node.state.withLock {
                $0.key = newKey
                $0.directory = to.id
            }
            if let e = commit(node, pending) { return .failure(e) }
            return .success(())
        }
        let outcome: BlockStore.RenameOutcome
        do {
            outcome = try store.rename(namespace: ns.name, from: oldKey, to: newKey, replace: flags & Self.renameNoReplace == 0)
        } catch {
            return .failure(FSError(error))
        }
        tiers?.remove(oldBlockKey, namespaceID: ns.id)
        nodes.withLock { table in
            guard let ino = table.committed.removeValue(forKey: oldBlockKey), let node = table.nodes[ino] else { return }
            node.state.withLock {
                $0.key = newKey
                $0.directory = to.id
            }
            if outcome == .renamed {
                table.committed[newBlockKey] = ino
            } else {
                // First write wins: the target keeps its bytes. The kernel now names the source's inode
                // `newKey`, but its cached pages hold the source's bytes: it keeps the source's
                // sequence, so an open of it answers ESTALE and the kernel looks the target up afresh.
                node.state.withLock { $0.unlinked = false }
            }
        }
        return .success(())
    }
}
