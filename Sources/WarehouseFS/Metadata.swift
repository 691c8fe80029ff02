import BlockStore
import Platform
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// What `setattr` may change, as FUSE sends it (nil: unchanged). Times are nanoseconds since the epoch.
public struct AttributeChange: Sendable {
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: Int?
    public var modifiedNanoseconds: UInt64?
    public var accessedNanoseconds: UInt64?

    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: Int? = nil,
                modifiedNanoseconds: UInt64? = nil, accessedNanoseconds: UInt64? = nil) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.modifiedNanoseconds = modifiedNanoseconds
        self.accessedNanoseconds = accessedNanoseconds
    }
}

/// Attributes and extended attributes: chmod, chown, utimes and truncate; the xattrs of docs/design.md.
/// The kernel has already checked who may change what (`default_permissions`, against the owner and
/// mode this file system reports); a committed block stays immutable whatever its mode says.
extension WarehouseFileSystem {
    public func setAttributes(ino: UInt64, _ change: AttributeChange, caller: Caller) -> FSResult<stat> {
        if let size = change.size { return setSize(ino: ino, size: size, caller: caller) }
        let owned = change.mode != nil || change.uid != nil || change.gid != nil
        switch InodeNumber.kind(ino) {
        case .root, .controlDirectory, .control:
            // Times of the control area are accepted and ignored (touch); nothing else changes.
            return owned ? .failure(FSError(EPERM)) : attributes(of: ino)
        case .directory(let ns, let id):
            guard let d = store.directory(namespaceID: ns, id: id) else { return .failure(FSError(ENOENT)) }
            let ownership = owned ? BlockOwnership(uid: change.uid ?? d.ownership.uid, gid: change.gid ?? d.ownership.gid,
                                                   mode: change.mode ?? d.ownership.mode) : nil
            do {
                try store.setDirectoryAttributes(namespaceID: ns, id: id, ownership: ownership, modifiedNanoseconds: change.modifiedNanoseconds,
                                                 accessedNanoseconds: change.accessedNanoseconds)
                if id == DirectoryID.namespaceRoot, owned, let info = store.namespace(id: ns) { namespaceChanged(info) }
            } catch {
                return .failure(FSError(error))
            }
            // The blocks below may no longer be readable by everyone who maps the namespace's tier (the
            // namespace directory's own change moves it to another domain instead).
            if owned && id != DirectoryID.namespaceRoot { evictFromTier(namespaceID: ns, below: id) }
            return attributes(of: ino)
        case .file:
            break
        }
        guard let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(FSError(ENOENT)) }
        let (pending, discard, key) = node.state.withLock { ($0.pending, $0.discard, $0.key) }
        if let pending {
            // fchmod, fchown, futimens while writing (tar x, cp -p): kept with the block at commit.
            pending.state.withLock { s in
                s.ownership = BlockOwnership(uid: change.uid ?? s.ownership.uid, gid: change.gid ?? s.ownership.gid,
                                             mode: change.mode ?? s.ownership.mode)
                if change.mode != nil { s.modeSet = true }
                if let m = change.modifiedNanoseconds { s.metadata.modifiedNanoseconds = m }
                if let a = change.accessedNanoseconds { s.metadata.accessedNanoseconds = a }
            }
            return .success(fileAttributes(of: node))
        }
        // A stand-in (`open(O_CREAT)` of a committed block, as `touch -d` and `cp -p` onto one do) stands for
        // the block: its owner, mode and times change the block's, its bytes are dropped.
        guard let current = store.attributes(namespace: node.namespace, key: key) else {
            return discard ? .success(fileAttributes(of: node)) : .failure(FSError(ENOENT))
        }
        guard owned || change.modifiedNanoseconds != nil || change.accessedNanoseconds != nil else { return .success(fileAttributes(of: node)) }
        let ownership = owned ? BlockOwnership(uid: change.uid ?? current.ownership.uid, gid: change.gid ?? current.ownership.gid,
                                               mode: change.mode ?? current.ownership.mode) : nil
        do {
            try store.setAttributes(namespace: node.namespace, key: key, ownership: ownership, modifiedNanoseconds: change.modifiedNanoseconds,
                                    accessedNanoseconds: change.accessedNanoseconds)
        } catch {
            return .failure(FSError(error))
        }
        // A block no longer readable by its tier's readers leaves the tier.
        if let ownership, !admitsToTier(namespaceID: node.namespaceID, key: key, ownership: ownership) {
            tiers?.remove(node.blockKey, namespaceID: node.namespaceID)
        }
        if discard {
            let updated = store.attributes(namespace: node.namespace, key: key)
            node.state.withLock { $0.last = updated }
            // The block's own inode shows the new attributes at once, not after its 60 s cache.
            if let ino = nodes.withLock({ $0.committed[node.blockKey] }), let invalidate = attributeInvalidator.withLock({ $0 }) {
                invalidate(ino)
            }
        }
        return .success(fileAttributes(of: node))
    }

    /// Takes every block below directory `id` out of the DRAM tier, after its owner, group or mode changed.
    /// Reads put back the blocks the tier may still hold (`AccessChain.admitsToSharedTier`); a chmod of a
    /// directory is rare, and keeping a block that others may no longer read would not be safe.
    func evictFromTier(namespaceID: UInt16, below id: UInt32) {
        guard let tiers else { return }
        var directories = [id]
        while let directory = directories.popLast() {
            store.beginListing(namespaceID: namespaceID, id: directory)
            defer { store.endListing(namespaceID: namespaceID, id: directory) }
            var cursor: UInt64 = 0
            while cursor != BlockStore.DirectoryPage.end {
                let page = store.listDirectory(namespaceID: namespaceID, id: directory, from: cursor, limit: 1024)
                for (item, _) in page.items {
                    switch item {
                    case .directory(_, let child): directories.append(child)
                    case .block(let locator): tiers.remove(locator.key, namespaceID: namespaceID)
                    }
                }
                cursor = page.next
            }
        }
    }

    // MARK: Extended attributes

    static let parentAttribute = "user.tw.parent"
    static let tokensAttribute = "user.tw.tokens"
    static let tierAttribute = "user.tw.tier"
    static let storedSizeAttribute = "user.tw.stored_size"
    /// `user.tw.compression` of a namespace directory: `off`, `lz4` or `auto` for blocks written from now on.
    static let compressionAttribute = "user.tw.compression"

    /// setxattr flags (sys/xattr.h).
    static let xattrCreate: Int32 = 1
    static let xattrReplace: Int32 = 2

    public func getExtendedAttribute(ino: UInt64, name: String, caller: Caller) -> FSResult<[UInt8]> {
        if case .directory(let ns, DirectoryID.namespaceRoot) = InodeNumber.kind(ino) {
            guard name == Self.compressionAttribute, let info = store.namespace(id: ns) else { return .failure(FSError(ENODATA)) }
            return .success(Array(info.compression.rawValue.utf8))
        }
        guard InodeNumber.kind(ino) == .file, let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(FSError(ENODATA)) }
        if let pending = node.state.withLock({ $0.pending }) {
            let meta = pending.state.withLock { $0.metadata }
            return Self.value(of: name, in: meta).map { .success($0) } ?? .failure(FSError(ENODATA))
        }
        let key = node.key
        switch name {
        case Self.tierAttribute:
            if tiers?.contains(node.blockKey, namespaceID: node.namespaceID) == true { return .success(Array("dram".utf8)) }
            return store.contains(namespace: node.namespace, key: key) ? .success(Array("nvme".utf8)) : .failure(FSError(ENOENT))
        case Self.storedSizeAttribute:
            guard let a = store.attributes(namespace: node.namespace, key: key) else { return .failure(FSError(ENOENT)) }
            return .success(Array(String(a.storedLength).utf8))
        default:
            guard name.hasPrefix("user.") else { return .failure(FSError(ENODATA)) }
            do {
                let meta = try store.metadata(namespace: node.namespace, key: key)
                return Self.value(of: name, in: meta).map { .success($0) } ?? .failure(FSError(ENODATA))
            } catch {
                return .failure(FSError(error))
            }
        }
    }

    static func value(of name: String, in meta: BlockMetadata) -> [UInt8]? {
        switch name {
        case parentAttribute: return meta.parent.map { Array($0.utf8) }
        case tokensAttribute: return meta.tokens.map { Array($0.utf8) }
        default: return meta.userAttributes[name]
        }
    }

    public func listExtendedAttributes(ino: UInt64) -> FSResult<[String]> {
        if case .directory(_, DirectoryID.namespaceRoot) = InodeNumber.kind(ino) { return .success([Self.compressionAttribute]) }
        guard InodeNumber.kind(ino) == .file, let node = nodes.withLock({ $0.nodes[ino] }) else { return .success([]) }
        var names: [String] = []
        let meta: BlockMetadata
        if let pending = node.state.withLock({ $0.pending }) {
            meta = pending.state.withLock { $0.metadata }
        } else {
            names = [Self.tierAttribute, Self.storedSizeAttribute]
            meta = (try? store.metadata(namespace: node.namespace, key: node.key)) ?? BlockMetadata()
        }
        if meta.parent != nil { names.append(Self.parentAttribute) }
        if meta.tokens != nil { names.append(Self.tokensAttribute) }
        names += meta.userAttributes.keys.sorted()
        return .success(names)
    }

    /// Writers set `user.tw.parent` (a prefix hash), `user.tw.tokens` and any other `user.*` attribute
    /// (4 KiB in all) before close; everything of a committed block is read-only.
    public func setExtendedAttribute(ino: UInt64, name: String, value: [UInt8], flags: Int32 = 0, remove: Bool = false,
                                     caller: Caller) -> FSResult<Void> {
        if case .directory(let ns, DirectoryID.namespaceRoot) = InodeNumber.kind(ino) {
            guard name == Self.compressionAttribute else { return .failure(FSError(ENOTSUP)) }
            guard let info = store.namespace(id: ns) else { return .failure(FSError(ENOENT)) }
            // Like chmod: the namespace's owner (or root) decides.
            if !caller.isRoot, caller.uid != info.owner { return .failure(FSError(EPERM)) }
            guard let policy = remove ? .off : CompressionPolicy(rawValue: String(decoding: value, as: UTF8.self)) else {
                return .failure(FSError(EINVAL))
            }
            do {
                let changed = try store.updateNamespace(info.name) { $0.compression = policy }
                cluster?.namespaceChanged(changed)
            } catch { return .failure(FSError(error)) }
            return .success(())
        }
        guard InodeNumber.kind(ino) == .file, let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(FSError(ENOTSUP)) }
        guard name.hasPrefix("user.") else { return .failure(FSError(ENOTSUP)) }
        switch name {
        case Self.tierAttribute, Self.storedSizeAttribute: return .failure(FSError(EPERM))
        default: break
        }
        if node.state.withLock({ $0.discard }) { return .success(()) }  // dropped with the writer's bytes
        guard let pending = node.state.withLock({ $0.pending }) else { return .failure(FSError(EPERM)) }
        if name == Self.parentAttribute && !remove && !BlockName.isCanonicalHash(value) { return .failure(FSError(EINVAL)) }
        if name.utf8.count > 255 { return .failure(FSError(ERANGE)) }
        if value.count > BlockMetadata.userAttributeLimit { return .failure(FSError(E2BIG)) }
        return pending.state.withLock { s -> FSResult<Void> in
            if s.finished { return .failure(FSError(EPERM)) }
            let exists = Self.value(of: name, in: s.metadata) != nil
            if remove && !exists { return .failure(FSError(ENODATA)) }
            if flags & Self.xattrCreate != 0 && exists { return .failure(FSError(EEXIST)) }
            if flags & Self.xattrReplace != 0 && !exists { return .failure(FSError(ENODATA)) }
            var meta = s.metadata
            let text = String(decoding: value, as: UTF8.self)
            switch name {
            case Self.parentAttribute: meta.parent = remove ? nil : text
            case Self.tokensAttribute: meta.tokens = remove ? nil : text
            default: meta.userAttributes[name] = remove ? nil : value
            }
            if meta.userAttributeBytes > BlockMetadata.userAttributeLimit { return .failure(FSError(ENOSPC)) }
            s.metadata = meta
            return .success(())
        }
    }
}
