import BlockStore
import Platform
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// `stat` of every kind of inode: the root, the control area, namespace directories and the
/// directories inside them, committed blocks and blocks being written.
extension WarehouseFileSystem {
    func directoryAttributes(ino: UInt64, mode: UInt32, uid: UInt32, gid: UInt32, modified: UInt64, changed: UInt64,
                             accessed: UInt64? = nil, links: Int = 2) -> stat {
        var st = stat()
        st.st_ino = UInt(ino)
        st.st_mode = S_IFDIR | (mode & 0o7777)
        st.st_nlink = UInt(links)
        st.st_uid = uid
        st.st_gid = gid
        st.st_size = 4096
        st.st_blksize = 4096
        Self.setTime(&st.st_mtim, modified)
        Self.setTime(&st.st_ctim, changed)
        Self.setTime(&st.st_atim, accessed ?? modified)
        return st
    }

    func fileAttributes(ino: UInt64, size: Int, stored: Int, modified: UInt64, changed: UInt64, accessed: UInt64? = nil,
                        ownership: BlockOwnership) -> stat {
        var st = stat()
        st.st_ino = UInt(ino)
        st.st_mode = S_IFREG | (ownership.mode & 0o7777)
        st.st_nlink = 1
        st.st_uid = ownership.uid
        st.st_gid = ownership.gid
        st.st_size = size
        st.st_blocks = (stored + 511) / 512
        st.st_blksize = 1 << 20
        Self.setTime(&st.st_mtim, modified)
        Self.setTime(&st.st_ctim, changed)
        Self.setTime(&st.st_atim, accessed ?? modified)
        return st
    }

    static func setTime(_ t: inout timespec, _ nanoseconds: UInt64) {
        t.tv_sec = Int(nanoseconds / 1_000_000_000)
        t.tv_nsec = Int(nanoseconds % 1_000_000_000)
    }

    var startedNanoseconds: UInt64 { startedSeconds * 1_000_000_000 }

    public func attributes(of ino: UInt64) -> FSResult<stat> {
        switch InodeNumber.kind(ino) {
        case .root:
            return .success(directoryAttributes(ino: ino, mode: 0o755, uid: 0, gid: 0, modified: startedNanoseconds, changed: startedNanoseconds))
        case .controlDirectory:
            return .success(directoryAttributes(ino: ino, mode: 0o555, uid: 0, gid: 0, modified: startedNanoseconds, changed: startedNanoseconds))
        case .control(let f):
            return .success(fileAttributes(ino: ino, size: 0, stored: 0, modified: startedNanoseconds, changed: startedNanoseconds,
                                           ownership: BlockOwnership(uid: 0, gid: 0, mode: f.mode)))
        case .directory(let ns, let id):
            guard let d = store.directory(namespaceID: ns, id: id) else { return .failure(FSError(ENOENT)) }
            return .success(directoryAttributes(ino: ino, mode: d.ownership.mode, uid: d.ownership.uid, gid: d.ownership.gid,
                                                modified: d.modifiedNanoseconds, changed: d.changedNanoseconds,
                                                accessed: d.accessedNanoseconds == 0 ? nil : d.accessedNanoseconds,
                                                links: 2 + d.subdirectories))
        case .file:
            guard let node = nodes.withLock({ $0.nodes[ino] }) else { return .failure(FSError(ENOENT)) }
            return .success(fileAttributes(of: node))
        }
    }

    /// Attributes of a file inode: the block being written, the stand-in of a discarded write, or the
    /// committed block (as it was, with no links, once its name is gone).
    func fileAttributes(of node: FileNode) -> stat {
        let (key, pending, discard, last, unlinked) = node.state.withLock { ($0.key, $0.pending, $0.discard, $0.last, $0.unlinked) }
        let now = wallClockNanoseconds()
        if discard {
            let owner = last?.ownership ?? BlockOwnership(uid: 0, gid: 0, mode: 0o644)
            return fileAttributes(ino: node.ino, size: 0, stored: 0, modified: now, changed: now, ownership: owner)
        }
        if let pending {
            let (length, ownership, modified, accessed) = pending.state.withLock {
                ($0.length, $0.ownership, $0.metadata.modifiedNanoseconds, $0.metadata.accessedNanoseconds)
            }
            return fileAttributes(ino: node.ino, size: length, stored: length, modified: modified ?? now, changed: now,
                                  accessed: accessed, ownership: ownership)
        }
        if !unlinked, let a = store.attributes(namespace: node.namespace, key: key) {
            node.state.withLock { $0.last = a }
            return committedAttributes(ino: node.ino, a)
        }
        // Gone (unlinked or evicted) while the kernel still holds the inode: show what it was.
        guard let last else {
            var st = fileAttributes(ino: node.ino, size: 0, stored: 0, modified: now, changed: now, ownership: BlockOwnership(uid: 0, gid: 0, mode: 0o444))
            st.st_nlink = 0
            return st
        }
        var st = committedAttributes(ino: node.ino, last)
        st.st_nlink = 0
        return st
    }

    func committedAttributes(ino: UInt64, _ a: BlockAttributes) -> stat {
        let committed = UInt64(a.commitSeconds) * 1_000_000_000
        return fileAttributes(ino: ino, size: a.logicalLength, stored: a.storedLength, modified: a.modifiedNanoseconds ?? committed,
                              changed: a.changedNanoseconds ?? committed, accessed: a.accessedNanoseconds, ownership: a.ownership)
    }
}

extension WarehouseFileSystem {
    /// `statfs`: the store's capacity and what is free of it (`df` works).
    public func filesystemStatistics() -> statvfs {
        let s = store.statistics()
        var st = statvfs()
        let block: UInt64 = 4096
        let space = store.deviceSpace()
        let capacity = store.configuration.capacity
        let free = min(capacity > s.usedBytes ? capacity - s.usedBytes : 0, space.available)
        st.f_bsize = UInt(block)
        st.f_frsize = UInt(block)
        st.f_blocks = fsblkcnt_t(capacity / block)
        st.f_bfree = fsblkcnt_t(free / block)
        st.f_bavail = fsblkcnt_t(free / block)
        st.f_files = fsfilcnt_t(s.blocks + 1_000_000_000)
        st.f_ffree = fsfilcnt_t(1_000_000_000)
        st.f_favail = fsfilcnt_t(1_000_000_000)
        st.f_namemax = 255
        return st
    }
}
