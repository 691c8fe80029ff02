import BlockStore
import ControlPlane
import Platform
import Synchronization
import Testing
import WarehouseCore
@testable import WarehouseFS
#if canImport(Glibc)
import Glibc
#endif

/// Plays the processes behind requests: what each thread's open flags are and whether it is exiting.
final class FakeInspector: CallerInspector {
    let flags = Mutex<[Int32: Int32]>([:])
    let exits = Mutex<[Int32: ExitState]>([:])
    /// Descriptors each process holds on an inode (as /proc/PID/fd would show them after a close).
    let held = Mutex<[Int32: [UInt64: Int]]>([:])

    func openFlags(of tid: Int32) -> Int32? { flags.withLock { $0[tid] } }
    func isTruncating(_ tid: Int32) -> Bool { false }
    func isMakingDirectory(_ tid: Int32) -> Bool { false }
    func exitState(of tid: Int32) -> ExitState { exits.withLock { $0[tid] ?? .running } }
    func threadGroup(of tid: Int32) -> Int32 { tid }
    /// A thread's table is in use unless its process is exiting (as /proc shows it while the exit closes
    /// the files).
    func descriptors(of tid: Int32, onInode ino: UInt64, limit: Int) -> DescriptorTable {
        DescriptorTable(onInode: min(limit, held.withLock { $0[tid]?[ino] ?? 0 }), inUse: exitState(of: tid) == .running)
    }
}

/// A file system on an in-memory store, driven as the FUSE adapter would, without a mount.
final class Harness {
    let device = MemoryStorageDevice()
    var store: BlockStore
    var fs: WarehouseFileSystem
    let inspector = FakeInspector()
    let root = Caller(uid: 0, gid: 0, pid: 100)

    init(capacity: UInt64 = 1 << 30, limits: ResourceLimits = ResourceLimits()) throws {
        store = try BlockStore(device: device, configuration: StoreConfiguration(capacity: capacity, segmentSize: 4 << 20, sync: .batch))
        var settings = MountSettings()
        settings.limits = limits
        fs = WarehouseFileSystem(store: store, tiers: nil, tierSocket: nil, settings: settings, inspector: inspector)
    }

    /// Stops and opens the store again, as a restart of the daemon does.
    func restart() throws {
        fs.stop()
        try store.close()
        store = try BlockStore(device: device, configuration: store.configuration)
        fs = WarehouseFileSystem(store: store, tiers: nil, tierSocket: nil, settings: MountSettings(), inspector: inspector)
    }

    func ino(_ r: FSResult<Entry>) throws -> UInt64 { UInt64(try r.get().attributes.st_ino) }

    func namespace(_ name: String = "ns", caller: Caller? = nil, mode: UInt32 = 0o755) throws -> UInt64 {
        try ino(fs.makeDirectory(parent: InodeNumber.root, name: Array(name.utf8), mode: mode, caller: caller ?? root))
    }

    func mkdir(_ parent: UInt64, _ name: String, caller: Caller? = nil) throws -> UInt64 {
        try ino(fs.makeDirectory(parent: parent, name: Array(name.utf8), mode: 0o755, caller: caller ?? root))
    }

    func lookup(_ parent: UInt64, _ name: String, caller: Caller? = nil) -> FSResult<Entry> {
        fs.lookup(parent: parent, name: Array(name.utf8), caller: caller ?? root)
    }

    /// create, write `bytes`, close: returns close's error.
    @discardableResult
    func write(_ parent: UInt64, _ name: String, _ bytes: [UInt8], caller: Caller? = nil, close: Bool = true) throws -> (OpenFile, FSError?) {
        let c = caller ?? root
        let (_, handle) = try fs.create(parent: parent, name: Array(name.utf8), flags: O_CREAT | O_WRONLY, mode: 0o644, caller: c).get()
        if !bytes.isEmpty {
            _ = try fs.write(handle, count: bytes.count, offset: 0) { dst in
                bytes.withUnsafeBytes { dst.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
                return bytes.count
            }.get()
        }
        guard close else { return (handle, nil) }
        let e = fs.flush(handle, caller: c)
        fs.release(handle)
        return (handle, e)
    }

    func read(_ parent: UInt64, _ name: String, caller: Caller? = nil) throws -> [UInt8] {
        let c = caller ?? root
        let ino = try self.ino(lookup(parent, name, caller: c))
        let (handle, _, _) = try fs.open(ino: ino, flags: O_RDONLY, caller: c).get()
        defer { fs.release(handle) }
        var out: [UInt8] = []
        _ = fs.read(handle, size: 1 << 30, offset: 0) { out = Array($0) }
        return out
    }

    func names(_ ino: UInt64) throws -> [String] {
        let handle = try fs.openDirectory(ino: ino, caller: root).get()
        defer { fs.release(handle) }
        var all: [String] = []
        var offset: Int64 = 0
        while true {
            let page = try fs.readDirectory(handle, offset: offset, limit: 3).get()
            if page.isEmpty { break }
            all += page.map(\.name)
            offset = page.last!.next
        }
        return all.filter { $0 != "." && $0 != ".." }.sorted()
    }
}

@Suite struct WarehouseFSTests {
    @Test func aBlockIsCommittedAtCloseAndInvisibleToOthersBefore() throws {
        let h = try Harness()
        let ns = try h.namespace()
        let (handle, _) = try h.write(ns, "a.bin", [1, 2, 3], close: false)
        let other = Caller(uid: 0, gid: 0, pid: 200)
        #expect(h.lookup(ns, "a.bin", caller: other).failure == ENOENT)
        #expect(h.fs.flush(handle, caller: h.root) == nil)
        h.fs.release(handle)
        #expect(try h.read(ns, "a.bin", caller: other) == [1, 2, 3])
    }

    /// A `READDIR` reply holds what fits its bytes (names of every length, as `fuse_add_direntry` sizes
    /// them) and the next resumes at the last entry's offset: every name once, none left out.
    @Test func aListingPageHoldsWhatFitsItsReplyAndTheNextResumesAfterIt() throws {
        let h = try Harness()
        let ns = try h.namespace()
        var expected: Set<String> = [".", ".."]
        for i in 0..<150 {
            let name = String(repeating: "x", count: 1 + (i * 7) % 200) + "-\(i)"
            _ = try h.write(ns, name, [UInt8(i % 256)])
            expected.insert(name)
        }
        for replyBytes in [4096, 300] {
            let handle = try h.fs.openDirectory(ino: ns, caller: h.root).get()
            defer { h.fs.release(handle) }
            var seen: [String] = []
            var offset: Int64 = 0
            while true {
                let page = try h.fs.readDirectory(handle, offset: offset, limit: replyBytes / 32, replyBytes: replyBytes).get()
                if page.isEmpty { break }
                #expect(page.reduce(0) { $0 + WarehouseFileSystem.DirectoryEntry.replySize(nameBytes: $1.name.utf8.count, plus: false) } <= replyBytes)
                seen += page.map(\.name)
                offset = page.last!.next
            }
            #expect(seen.count == expected.count, "reply of \(replyBytes) bytes: \(seen.count) entries for \(expected.count) names")
            #expect(Set(seen) == expected)
        }
    }

    /// `READDIRPLUS`: every block and subdirectory comes with the entry its `LOOKUP` would give, and each
    /// block entry holds exactly one lookup reference (the kernel forgets it later), including across
    /// pages that ran out of room.
    @Test func aListingWithEntriesGivesWhatLookupGivesAndOneReferenceEach() throws {
        let h = try Harness()
        let ns = try h.namespace()
        for i in 0..<40 { _ = try h.write(ns, String(repeating: "y", count: 1 + i % 60) + "\(i)", [UInt8](repeating: 7, count: i * 100)) }
        _ = try h.fs.makeDirectory(parent: ns, name: Array("sub".utf8), mode: 0o755, caller: h.root).get()
        func listAll(replyBytes: Int) throws -> [WarehouseFileSystem.DirectoryEntry] {
            let handle = try h.fs.openDirectory(ino: ns, caller: h.root).get()
            defer { h.fs.release(handle) }
            var listed: [WarehouseFileSystem.DirectoryEntry] = []
            var offset: Int64 = 0
            while true {
                let page = try h.fs.readDirectory(handle, offset: offset, limit: 100, replyBytes: replyBytes, plus: true).get()
                if page.isEmpty { break }
                #expect(page.reduce(0) { $0 + WarehouseFileSystem.DirectoryEntry.replySize(nameBytes: $1.name.utf8.count, plus: true) } <= replyBytes)
                listed += page
                offset = page.last!.next
            }
            return listed
        }
        func references(_ ino: UInt64) -> Int { h.fs.nodes.withLock { $0.nodes[ino]?.state.withLock { Int($0.lookups) } } ?? 0 }
        let listed = try listAll(replyBytes: 1000)
        #expect(listed.count == 43)  // ".", "..", "sub" and 40 blocks
        let before = Dictionary(uniqueKeysWithValues: listed.map { ($0.ino, references($0.ino)) })
        #expect(try listAll(replyBytes: 4096).map(\.ino).sorted() == listed.map(\.ino).sorted())
        for e in listed where e.name != "." && e.name != ".." {
            let entry = try #require(e.entry, "\(e.name) came without its entry")
            #expect(UInt64(entry.attributes.st_ino) == e.ino)
            let looked = try h.fs.lookup(parent: ns, name: Array(e.name.utf8), caller: h.root).get()
            #expect(looked.attributes.st_ino == entry.attributes.st_ino)
            #expect(looked.attributes.st_size == entry.attributes.st_size)
            #expect(looked.attributes.st_mode == entry.attributes.st_mode)
            guard !e.isDirectory else { continue }
            // One reference per listing that named it (the second one's), and the lookup's.
            #expect(before[e.ino]! >= 1)
            #expect(references(e.ino) == before[e.ino]! + 2)
            h.fs.forget(e.ino, count: UInt64(before[e.ino]! + 2))
            #expect(references(e.ino) == 0)
        }
    }

    @Test func anAbsentNameMayBeRememberedUnlessSomeoneIsWritingIt() throws {
        let h = try Harness()
        let ns = try h.namespace()
        let other = Caller(uid: 0, gid: 0, pid: 200)
        func absence(_ name: String) -> Double? {
            if case .failure(let e) = h.lookup(ns, name, caller: other), e.code == ENOENT { return e.absenceTimeout }
            return nil
        }
        // Nobody stored it: the kernel may keep the answer (a negative entry).
        #expect(absence("never.bin") == MountSettings().negativeTimeout)
        // Being written by another process: absent for now, but asked again next time.
        let (handle, _) = try h.write(ns, "soon.bin", [7], close: false)
        #expect(absence("soon.bin") == 0)
        // Committed but not yet released (the pending node is still there): visible.
        #expect(h.fs.flush(handle, caller: h.root) == nil)
        #expect(absence("soon.bin") == nil)
        h.fs.release(handle)
        #expect(try h.read(ns, "soon.bin", caller: other) == [7])
        // An absent namespace is not remembered (one another node announces is made on first use).
        if case .failure(let e) = h.fs.lookup(parent: InodeNumber.root, name: Array("nons".utf8), caller: other) {
            #expect(e.code == ENOENT && e.absenceTimeout == 0)
        } else {
            Issue.record("a namespace nobody made was found")
        }
    }

    @Test func procTextIsParsedAsTheKernelWritesIt() throws {
        let syscall = Array("257 0xffffff9c 0x7ffd2a 0x241 0x1b6 0x0 0x0 0x7ffd28 0x7f12ab\n".utf8)
        let fields = ProcText.fields(syscall)
        #expect(fields.count == 9)
        #expect(ProcText.decimal(syscall[fields[0]]) == 257)
        #expect(ProcText.hexadecimal(syscall[fields[3]]) == 0x241)
        #expect(ProcText.hexadecimal(syscall[fields[1]]) == 0xffff_ff9c)
        #expect(ProcText.decimal(Array("-1".utf8)[...]) == -1)
        #expect(ProcText.decimal(Array("12a".utf8)[...]) == nil)
        #expect(ProcText.hexadecimal(Array("0xzz".utf8)[...]) == nil)
        let status = Array("Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4250\n".utf8)
        #expect(ProcText.value(of: "Tgid:", in: status) == 4242)
        #expect(ProcText.value(of: "Pid:", in: status) == 4250)
        #expect(ProcText.value(of: "PPid:", in: status) == nil)
        // The real files of this process: its thread group is its pid, and it is running.
        let inspector = ProcCallerInspector()
        #expect(inspector.threadGroup(of: getpid()) == getpid())
        #expect(inspector.threadGroup(of: getpid()) == getpid())  // remembered
        #expect(inspector.exitState(of: getpid()) == .running)
    }

    @Test func aThreadsDescriptorTableCountsDuplicatesOfAFileAndShowsItIsInUse() throws {
        // A directory stands in for the mount: its device is the one compared. Two descriptors lead to
        // the file (one a dup), and the count stops at the limit asked for.
        let directory = "/tmp/tw-descriptors-\(getpid())"
        mkdir(directory, 0o700)
        defer { rmdir(directory) }
        let path = directory + "/block"
        let fd = open(path, O_CREAT | O_WRONLY, 0o600)
        #expect(fd >= 0)
        defer { unlink(path) }
        let inode = FileSystem.identity(of: path)!.inode
        let inspector = ProcCallerInspector(mountPoint: directory)
        let me = currentThreadID()
        #expect(inspector.descriptors(of: me, onInode: inode, limit: 8) == DescriptorTable(onInode: 1, inUse: true))
        let duplicate = dup(fd)
        #expect(inspector.descriptors(of: me, onInode: inode, limit: 8) == DescriptorTable(onInode: 2, inUse: true))
        #expect(inspector.descriptors(of: me, onInode: inode, limit: 1) == DescriptorTable(onInode: 1, inUse: true))
        close(duplicate)
        close(fd)
        #expect(inspector.descriptors(of: me, onInode: inode, limit: 8) == DescriptorTable(onInode: 0, inUse: true))
        // A thread that is gone has no table to look at.
        #expect(inspector.descriptors(of: Int32.max, onInode: inode, limit: 8) == DescriptorTable(onInode: 0, inUse: false))
    }

    @Test func theSystemCallOfAThreadIsReadWhenItBlocksAndGivenUpOnWhenItRuns() throws {
        // A thread blocked in read(2) on a pipe: its call is read. A thread that never blocks: /proc
        // says "running" each time, and the inspector gives up within milliseconds, not forever.
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        let readerEnd = ends[0]
        let tids = Mutex<[Int32]>([])
        let spinning = Atomic<Bool>(true)
        let blocked = BackgroundThread(name: "tw-test-blocked") {
            tids.withLock { $0.append(currentThreadID()) }
            var byte: UInt8 = 0
            _ = read(readerEnd, &byte, 1)
        }
        let spinner = BackgroundThread(name: "tw-test-spin") {
            tids.withLock { $0.append(-currentThreadID()) }
            while spinning.load(ordering: .relaxed) {}
        }
        while tids.withLock({ $0.count }) < 2 { usleep(1000) }
        usleep(50_000)
        let blockedTid = tids.withLock { $0.first { $0 > 0 }! }, spinningTid = -tids.withLock { $0.first { $0 < 0 }! }
        #if arch(x86_64)
        #expect(ProcCallerInspector.currentSyscall(of: blockedTid)?.number == 0)
        #elseif arch(arm64)
        #expect(ProcCallerInspector.currentSyscall(of: blockedTid)?.number == 63)
        #endif
        let started = monotonicNanoseconds()
        #expect(ProcCallerInspector.currentSyscall(of: spinningTid) == nil)
        #expect(monotonicNanoseconds() - started < 1_000_000_000)
        spinning.store(false, ordering: .relaxed)
        var one: UInt8 = 1
        _ = write(ends[1], &one, 1)
        blocked.join()
        spinner.join()
    }

    @Test func firstWriteWinsAndExclusiveCreateOfAnExistingBlockFails() throws {
        let h = try Harness()
        let ns = try h.namespace()
        try h.write(ns, "k", [1])
        #expect(h.fs.create(parent: ns, name: Array("k".utf8), flags: O_CREAT | O_EXCL | O_WRONLY, mode: 0o644, caller: h.root).failure == EEXIST)
        try h.write(ns, "k", [9, 9])
        #expect(try h.read(ns, "k") == [1])
    }

    @Test func aRenameMovesTheNameWithoutCopyingTheBytes() throws {
        let h = try Harness()
        let ns = try h.namespace()
        let dir = try h.mkdir(ns, "sub")
        try h.write(ns, "tmp", Array(repeating: 7, count: 100_000))
        let written = h.store.statistics().bytesWritten
        #expect(throws: Never.self) { try h.fs.rename(parent: ns, name: Array("tmp".utf8), newParent: dir, newName: Array("final".utf8), flags: 0, caller: h.root).get() }
        #expect(h.store.statistics().bytesWritten == written)
        #expect(h.store.statistics().renames == 1)
        #expect(h.lookup(ns, "tmp").failure == ENOENT)
        #expect(try h.read(dir, "final") == Array(repeating: 7, count: 100_000))
        // And after a restart.
        try h.restart()
        let dir2 = try h.ino(h.lookup(ns, "sub"))
        #expect(try h.read(dir2, "final") == Array(repeating: 7, count: 100_000))
        #expect(try h.names(ns) == ["sub"])
    }

    @Test func aWriterKilledBeforeOrAfterWritingLeavesNothingAndTheNameStaysFree() throws {
        let h = try Harness()
        let ns = try h.namespace()
        for (name, bytes) in [("empty", [UInt8]()), ("partial", [UInt8](repeating: 1, count: 5000))] {
            let killed = Caller(uid: 0, gid: 0, pid: 300)
            let (handle, _) = try h.write(ns, name, bytes, caller: killed, close: false)
            h.inspector.exits.withLock { $0[300] = .killed }
            #expect(h.fs.flush(handle, caller: killed) == nil)
            h.fs.release(handle)
            h.inspector.exits.withLock { $0[300] = nil }
            #expect(h.lookup(ns, name).failure == ENOENT)
            try h.write(ns, name, [4, 2])
            #expect(try h.read(ns, name) == [4, 2])
        }
    }

    @Test func aProcessThatExitsWithoutClosingCommitsWhatItWrote() throws {
        let h = try Harness()
        let ns = try h.namespace()
        let shell = Caller(uid: 0, gid: 0, pid: 400)
        // `cmd > f`: the shell opens, dup2s and closes the original before anything is written...
        let (handle, _) = try h.write(ns, "out.txt", [], caller: shell, close: false)
        guard case .write(let w) = handle.kind else { Issue.record("not a write handle"); return }
        h.inspector.held.withLock { $0[400] = [w.node.ino: 1] }   // its stdout is the duplicate
        #expect(h.fs.flush(handle, caller: shell) == nil)
        #expect(h.lookup(ns, "out.txt", caller: Caller(uid: 0, gid: 0, pid: 999)).failure == ENOENT)
        // ...the program writes through the duplicate and exits without closing it.
        _ = try h.fs.write(handle, count: 2, offset: 0) { dst in dst.storeBytes(of: 0x0a78, as: UInt16.self); return 2 }.get()
        h.inspector.exits.withLock { $0[400] = .exiting }
        #expect(h.fs.flush(handle, caller: shell) == nil)
        #expect(try h.read(ns, "out.txt") == [0x78, 0x0a])
        h.fs.release(handle)
        // `touch f` and `: > f` make empty blocks (committed at their close).
        let (touched, _) = try h.write(ns, "touched", [], close: false)
        _ = h.fs.flush(touched, caller: h.root)
        h.fs.release(touched)
        #expect(try h.read(ns, "touched") == [])
    }

    @Test func theCloseOfADuplicateWaitsForTheWritersLastDescriptor() throws {
        let h = try Harness()
        let ns = try h.namespace()
        let (handle, _) = try h.write(ns, "dup.txt", Array("first\n".utf8), close: false)
        guard case .write(let w) = handle.kind else { Issue.record("not a write handle"); return }
        // `exec 3>f; echo first >&3`: the shell's dup of fd 3 is closed while fd 3 stays open.
        h.inspector.held.withLock { $0[h.root.pid] = [w.node.ino: 1] }
        #expect(h.fs.flush(handle, caller: h.root) == nil)
        #expect(h.lookup(ns, "dup.txt", caller: Caller(uid: 0, gid: 0, pid: 999)).failure == ENOENT)
        let more = Array("second\n".utf8)
        #expect(throws: Never.self) {
            _ = try h.fs.write(handle, count: more.count, offset: 6) { dst in
                more.withUnsafeBytes { dst.copyMemory(from: $0.baseAddress!, byteCount: more.count) }
                return more.count
            }.get()
        }
        // The last descriptor's close commits both lines.
        h.inspector.held.withLock { $0[h.root.pid] = [:] }
        #expect(h.fs.flush(handle, caller: h.root) == nil)
        h.fs.release(handle)
        #expect(try h.read(ns, "dup.txt") == Array("first\nsecond\n".utf8))
    }

    @Test func anEmptyFileIsVisibleWhenItsCloseReturns() throws {
        let h = try Harness()
        let ns = try h.namespace()
        let (handle, _) = try h.write(ns, "touched", [], close: false)
        #expect(h.fs.flush(handle, caller: h.root) == nil)
        // Before RELEASE: `touch f && stat f` must find it.
        #expect(try h.read(ns, "touched", caller: Caller(uid: 0, gid: 0, pid: 998)) == [])
        h.fs.release(handle)
    }

    @Test func modeAndTimesSetWhileWritingAreKept() throws {
        let h = try Harness()
        let ns = try h.namespace()
        let (handle, _) = try h.write(ns, "kept", [7], close: false)
        guard case .write(let w) = handle.kind else { Issue.record("not a write handle"); return }
        // tar x: fchmod 0640, futimens; the mode is kept as given (write bits too), the times exactly.
        _ = try h.fs.setAttributes(ino: w.node.ino, AttributeChange(mode: 0o640, modifiedNanoseconds: 1_500_000_000_123_456_789,
                                                                    accessedNanoseconds: 1_400_000_000_000_000_001), caller: h.root).get()
        #expect(h.fs.flush(handle, caller: h.root) == nil)
        h.fs.release(handle)
        var st = try h.lookup(ns, "kept").get().attributes
        #expect(st.st_mode & 0o7777 == 0o640)
        #expect(st.st_mtim.tv_sec == 1_500_000_000 && st.st_mtim.tv_nsec == 123_456_789)
        #expect(st.st_atim.tv_sec == 1_400_000_000 && st.st_atim.tv_nsec == 1)
        try h.restart()
        st = try h.lookup(ns, "kept").get().attributes
        #expect(st.st_mode & 0o7777 == 0o640 && st.st_mtim.tv_nsec == 123_456_789 && st.st_atim.tv_nsec == 1)
        // Without an explicit mode, a committed block shows no write bits.
        try h.write(ns, "plain", [1])
        #expect(try h.lookup(ns, "plain").get().attributes.st_mode & 0o777 == 0o444)
    }

    @Test func chmodOfACommittedBlockMovesItsChangeTimeAndSurvivesARestart() throws {
        let h = try Harness()
        let ns = try h.namespace()
        try h.write(ns, "b", [1, 2])
        let ino = try h.ino(h.lookup(ns, "b"))
        let before = try h.lookup(ns, "b").get().attributes.st_ctim.tv_sec
        _ = try h.fs.setAttributes(ino: ino, AttributeChange(accessedNanoseconds: 42_000_000_007), caller: h.root).get()
        let st = try h.lookup(ns, "b").get().attributes
        #expect(st.st_atim.tv_sec == 42 && st.st_atim.tv_nsec == 7)
        #expect(st.st_ctim.tv_sec >= before)
        try h.restart()
        let again = try h.lookup(ns, "b").get().attributes
        #expect(again.st_atim.tv_sec == 42 && again.st_atim.tv_nsec == 7 && again.st_ctim.tv_sec == st.st_ctim.tv_sec)
    }

    @Test func directoryAttributesSurviveARestartAndLaterDirectoriesToo() throws {
        let h = try Harness()
        let ns = try h.namespace()
        let d = try h.mkdir(ns, "dir")
        _ = try h.fs.setAttributes(ino: d, AttributeChange(mode: 0o700, modifiedNanoseconds: 5_000_000_000, accessedNanoseconds: 6_000_000_000),
                                   caller: h.root).get()
        _ = try h.mkdir(ns, "after")         // journalled after the attributes record
        try h.restart()
        let st = try h.lookup(ns, "dir").get().attributes
        #expect(st.st_mode & 0o7777 == 0o700 && st.st_mtim.tv_sec == 5 && st.st_atim.tv_sec == 6)
        #expect(try h.names(ns) == ["after", "dir"])
    }

    @Test func aHintFloodWithoutNewlinesHoldsAtMostOneLine() {
        let input = LineInput(.hints)
        let chunk = [UInt8](repeating: 0x61, count: 1 << 20)
        for _ in 0..<64 {
            let (lines, tooLong) = chunk.withUnsafeBytes { input.append($0) }
            #expect(lines.isEmpty && tooLong)
            #expect(input.state.withLock { $0.partial.count } <= LineInput.maxLine)
        }
        // The over-long line ends at its newline; the lines after it are taken.
        let tail = Array("aaaa\nns\t0123456789abcdef\npartial".utf8)
        let (lines, tooLong) = tail.withUnsafeBytes { input.append($0) }
        #expect(tooLong && lines == [Array("ns\t0123456789abcdef".utf8)])
        #expect(input.finish() == Array("partial".utf8))
    }

    @Test func concurrentReadsOfOneBlockLoadItOnce() throws {
        let h = try Harness()
        let ns = try h.namespace()
        try h.write(ns, "big", [UInt8](repeating: 5, count: 3 << 20))
        let located = try #require(h.store.locate(namespace: "ns", key: "big"))
        h.fs.verified.retain(located)
        let loads = Atomic<Int>(0)
        let (verified, store) = (h.fs.verified, h.store)
        let threads = (0..<8).map { t in
            BackgroundThread(name: "load\(t)") {
                _ = try? verified.copy(of: located) {
                    loads.add(1, ordering: .relaxed)
                    usleep(20_000)
                    return try store.read(located)
                }
            }
        }
        threads.forEach { $0.join() }
        #expect(loads.load(ordering: .relaxed) == 1)
        #expect(h.fs.verified.cached(located) != nil)
        h.fs.verified.release(located)
        #expect(h.fs.verified.count == 0)
    }

    @Test func directoriesNestPersistAndOnlyEmptyOnesAreRemoved() throws {
        let h = try Harness()
        let ns = try h.namespace()
        var parent = ns
        for level in 0..<BlockName.maxDepth { parent = try h.mkdir(parent, "level\(level)") }
        #expect(h.fs.makeDirectory(parent: parent, name: Array("deeper".utf8), mode: 0o755, caller: h.root).failure == ENAMETOOLONG)
        let a = try h.mkdir(ns, "a")
        let b = try h.mkdir(a, "b")
        try h.write(b, "f", [1])
        #expect(h.fs.makeDirectory(parent: b, name: Array("f".utf8), mode: 0o755, caller: h.root).failure == EEXIST)
        #expect(h.fs.create(parent: a, name: Array("b".utf8), flags: O_CREAT | O_WRONLY, mode: 0o644, caller: h.root).failure == EISDIR)
        #expect(h.fs.removeDirectory(parent: a, name: Array("b".utf8), caller: h.root).failure == ENOTEMPTY)
        #expect(h.fs.removeDirectory(parent: b, name: Array("f".utf8), caller: h.root).failure == ENOTDIR)
        #expect(h.fs.unlink(parent: a, name: Array("b".utf8), caller: h.root).failure == EISDIR)
        _ = try h.mkdir(ns, "empty")
        try h.restart()
        #expect(try h.names(ns) == ["a", "empty", "level0"])
        let a2 = try h.ino(h.lookup(ns, "a")), b2 = try h.ino(h.lookup(a2, "b"))
        #expect(try h.read(b2, "f") == [1])
        // rm -rf: unlink the files, then rmdir bottom up.
        #expect(throws: Never.self) { try h.fs.unlink(parent: b2, name: Array("f".utf8), caller: h.root).get() }
        #expect(throws: Never.self) { try h.fs.removeDirectory(parent: a2, name: Array("b".utf8), caller: h.root).get() }
        #expect(throws: Never.self) { try h.fs.removeDirectory(parent: ns, name: Array("a".utf8), caller: h.root).get() }
        #expect(try h.names(ns) == ["empty", "level0"])
    }

    @Test func fanOutDirectoriesExistOnlyWhileTheyHoldSomething() throws {
        let h = try Harness()
        let ns = try h.namespace()
        #expect(try h.names(ns) == [])
        let hash = "ab23456789abcdef0011"
        let fanout = try h.ino(h.lookup(ns, "ab"))   // always looked up: open(NS/hh/HASH) needs no mkdir
        // So it already exists: mkdir says so (mkdir -p, os.makedirs(exist_ok=True) go on), and no block takes its name.
        #expect(h.fs.makeDirectory(parent: ns, name: Array("ab".utf8), mode: 0o755, caller: h.root).failure == EEXIST)
        #expect(h.fs.create(parent: ns, name: Array("ab".utf8), flags: O_CREAT | O_WRONLY, mode: 0o644, caller: h.root).failure == EISDIR)
        try h.write(fanout, hash, [5])
        #expect(try h.names(ns) == ["ab"])
        #expect(try h.names(fanout) == [hash])
        #expect(h.store.contains(namespace: "ns", key: hash))   // the canonical key is the hash
        try h.write(ns, hash, [6])                              // the same name at the top is another block
        #expect(try h.read(fanout, hash) == [5])
        #expect(try h.read(ns, hash) == [6])
        #expect(throws: Never.self) { try h.fs.unlink(parent: fanout, name: Array(hash.utf8), caller: h.root).get() }
        #expect(try h.names(ns) == [hash])
        // rmdir of the emptied fan-out directory succeeds (rm -rf, shutil.rmtree).
        #expect(throws: Never.self) { try h.fs.removeDirectory(parent: ns, name: Array("ab".utf8), caller: h.root).get() }
    }

    @Test func listingsStreamPageByPageWithoutMissingEntries() throws {
        let h = try Harness()
        let ns = try h.namespace()
        for i in 0..<50 { try h.write(ns, "blk\(i)", [UInt8(i)]) }
        for i in 0..<5 { _ = try h.mkdir(ns, "dir\(i)") }
        #expect(try h.names(ns) == ((0..<50).map { "blk\($0)" } + (0..<5).map { "dir\($0)" }).sorted())
    }

    @Test func userAttributesAreKeptUpToFourKibibytesAndFrozenAtCommit() throws {
        let h = try Harness()
        let ns = try h.namespace()
        let (handle, _) = try h.write(ns, "k", [1], close: false)
        guard case .write(let w) = handle.kind else { Issue.record("not a write handle"); return }
        let ino = w.node.ino
        #expect(throws: Never.self) { try h.fs.setExtendedAttribute(ino: ino, name: "user.vllm.kv_crc32c", value: Array("1234".utf8), caller: h.root).get() }
        #expect(h.fs.setExtendedAttribute(ino: ino, name: "user.big", value: [UInt8](repeating: 1, count: 5000), caller: h.root).failure == E2BIG)
        #expect(h.fs.setExtendedAttribute(ino: ino, name: "user.a", value: [UInt8](repeating: 1, count: 4080), caller: h.root).failure == ENOSPC)
        #expect(h.fs.setExtendedAttribute(ino: ino, name: "security.x", value: [1], caller: h.root).failure == ENOTSUP)
        _ = h.fs.flush(handle, caller: h.root)
        h.fs.release(handle)
        try h.restart()
        let committed = try h.ino(h.lookup(ns, "k"))
        #expect(try h.fs.getExtendedAttribute(ino: committed, name: "user.vllm.kv_crc32c", caller: h.root).get() == Array("1234".utf8))
        #expect(try h.fs.listExtendedAttributes(ino: committed).get().contains("user.vllm.kv_crc32c"))
        #expect(h.fs.setExtendedAttribute(ino: committed, name: "user.vllm.kv_crc32c", value: [0], caller: h.root).failure == EPERM)
    }

    @Test func ownersModesAndTimesOfCommittedBlocksAreRecordedAndTheBlockStaysImmutable() throws {
        let h = try Harness()
        let ns = try h.namespace(mode: 0o1777)
        let alice = Caller(uid: 1000, gid: 1000, pid: 500)
        try h.write(ns, "mine", [1, 2], caller: alice)
        var st = try h.lookup(ns, "mine").get().attributes
        #expect(st.st_uid == 1000 && st.st_gid == 1000 && st.st_mode & 0o777 == 0o444)
        let ino = UInt64(st.st_ino)
        let mtime: UInt64 = 1_600_000_000_123_456_789
        st = try h.fs.setAttributes(ino: ino, AttributeChange(mode: 0o644, modifiedNanoseconds: mtime), caller: alice).get()
        #expect(st.st_mode & 0o777 == 0o644 && st.st_mtim.tv_sec == 1_600_000_000 && st.st_mtim.tv_nsec == 123_456_789)
        #expect(h.fs.open(ino: ino, flags: O_WRONLY, caller: alice).failure == EACCES)
        try h.restart()
        st = try h.lookup(ns, "mine").get().attributes
        #expect(st.st_mode & 0o777 == 0o644 && st.st_uid == 1000 && st.st_mtim.tv_nsec == 123_456_789)
    }

    @Test func theQuotaIsChargedAsBytesAreWrittenAndNeverOvershot() throws {
        let h = try Harness()
        let ns = try h.namespace()
        var r = ControlRequest(command: .namespaceSet, namespace: "ns")
        r.quota = 3 << 20
        #expect(h.fs.answer(r, caller: h.root).error == nil)
        let (a, _) = try h.write(ns, "a", [UInt8](repeating: 1, count: 2 << 20), close: false)
        // A second writer cannot take what the first has reserved, even before either commits.
        let second = Caller(uid: 0, gid: 0, pid: 600)
        let (_, b) = try h.fs.create(parent: ns, name: Array("b".utf8), flags: O_CREAT | O_WRONLY, mode: 0o644, caller: second).get()
        let big = [UInt8](repeating: 2, count: 2 << 20)
        let result = h.fs.write(b, count: big.count, offset: 0) { dst in big.withUnsafeBytes { dst.copyMemory(from: $0.baseAddress!, byteCount: big.count) }; return big.count }
        #expect(result.failure == EDQUOT)
        #expect(h.fs.flush(b, caller: second)?.code == EDQUOT)
        h.fs.release(b)
        #expect(h.fs.flush(a, caller: h.root) == nil)
        h.fs.release(a)
        let usage = h.store.usage(of: h.store.namespace(named: "ns")!.id)
        #expect(usage.storedBytes <= 3 << 20 && usage.reservedBytes == 0 && usage.blocks == 1)
    }

    @Test func stagedMemoryIsBoundedPerUser() throws {
        var limits = ResourceLimits()
        limits.stagedBytesPerUser = 4 << 20
        limits.pendingBlocksPerUser = 3
        let h = try Harness(limits: limits)
        let ns = try h.namespace(mode: 0o777)
        let bob = Caller(uid: 2000, gid: 2000, pid: 700)
        let chunk = [UInt8](repeating: 3, count: 3 << 20)
        let (first, _) = try h.write(ns, "x", chunk, caller: bob, close: false)
        let (_, second) = try h.fs.create(parent: ns, name: Array("y".utf8), flags: O_CREAT | O_WRONLY, mode: 0o644, caller: bob).get()
        let over = h.fs.write(second, count: chunk.count, offset: 0) { dst in chunk.withUnsafeBytes { dst.copyMemory(from: $0.baseAddress!, byteCount: chunk.count) }; return chunk.count }
        #expect(over.failure == EDQUOT)
        let (_, third) = try h.fs.create(parent: ns, name: Array("z".utf8), flags: O_CREAT | O_WRONLY, mode: 0o644, caller: bob).get()
        #expect(h.fs.create(parent: ns, name: Array("w".utf8), flags: O_CREAT | O_WRONLY, mode: 0o644, caller: bob).failure == EMFILE)
        // Another user is not held back by bob.
        try h.write(ns, "other", chunk, caller: Caller(uid: 3000, gid: 3000, pid: 800))
        #expect(h.fs.limits.snapshot.total.stagedBytes >= 3 << 20)
        for handle in [first, second, third] {
            _ = h.fs.flush(handle, caller: bob)
            h.fs.release(handle)
        }
        // Every staged byte and pending block is given back: nothing leaks into later writes.
        #expect(h.fs.limits.snapshot.total.stagedBytes == 0)
        #expect(try h.read(ns, "x") == chunk)
    }

    @Test func hintsForNamespacesTheSenderCannotReadAreDroppedLikeMissingBlocks() throws {
        let h = try Harness()
        let owner = Caller(uid: 1000, gid: 1000, pid: 900)
        _ = try h.namespace("private", caller: owner, mode: 0o700)
        let mallory = Caller(uid: 1001, gid: 1001, pid: 901)
        #expect(!h.fs.mayRead(mallory, namespace: h.store.namespace(named: "private")!, key: "0123456789abcdef"))
        #expect(h.fs.mayRead(owner, namespace: h.store.namespace(named: "private")!, key: "0123456789abcdef"))
        // The status shows the namespace to its owner only.
        #expect(h.fs.status(for: mallory).namespaces.isEmpty)
        #expect(h.fs.status(for: owner).namespaces == ["private"])
        #expect(h.fs.answer(ControlRequest(command: .namespaceList), caller: mallory).namespaces?.isEmpty == true)
        var evict = ControlRequest(command: .evict, namespace: "private")
        evict.olderThan = 0
        #expect(h.fs.answer(evict, caller: mallory).error == "no namespace private")
    }

    @Test func controlNumbersFromOutsideAreCheckedNotTrapped() throws {
        let h = try Harness()
        _ = try h.namespace()
        for line in ["ns-set ns=ns ttl=18446744073709551615", "evict ns=ns older_than=5184000000000", "compact threshold=7"] {
            let answer = try ControlJSON.decode(ControlResponse.self, from: h.fs.execute(request: Array(line.utf8), caller: h.root))
            #expect(answer.error != nil, "\(line) was accepted")
        }
        var evict = ControlRequest(command: .evict, namespace: "ns")
        evict.olderThan = 1 << 40
        let job = try #require(h.fs.answer(evict, caller: h.root).job)
        h.fs.jobs.stop()
        #expect(h.fs.jobs.status(job.id, caller: h.root)?.running == false)
    }
}

extension Result {
    /// The errno of a failed result, nil on success.
    var failure: Int32? {
        if case .failure(let e) = self { return (e as? FSError)?.code }
        return nil
    }
}
