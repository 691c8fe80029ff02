import Platform
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite struct PlatformTests {
    /// Grown past several mappings (moved by `mremap`), a copy keeps its values while the original
    /// changes (copy-on-write), also through the buffer-pointer access.
    @Test func aMappedArrayGrowsInPlaceAndCopiesOnWrite() {
        var a = MappedArray<UInt64>()
        for i in 0..<1_000_000 { a.append(UInt64(i) &* 2_654_435_761) }
        #expect(a.count == 1_000_000 && a.capacity >= a.count)
        let copy = a
        a[10] = 7
        a.reserveCapacity(3_000_000)
        a.append(42)
        #expect(copy[10] == 10 &* 2_654_435_761 && copy.count == 1_000_000)
        #expect(a[10] == 7 && a[1_000_000] == 42 && a[999_999] == 999_999 &* 2_654_435_761)
        #expect(a.withUnsafeBytes { $0.count } == 1_000_001 * 8)
        let second = a
        a.withUnsafeMutableBufferPointer { $0[11] = 8 }
        #expect(second[11] == 11 &* 2_654_435_761 && a[11] == 8)
        #expect(a.withUnsafeBufferPointer { $0.count } == 1_000_001)
        let filled = MappedArray<UInt32>(count: 5) { bytes in
            for i in 0..<5 { bytes.storeBytes(of: UInt32(i * 3), toByteOffset: i * 4, as: UInt32.self) }
        }
        #expect(Array(filled) == [0, 3, 6, 9, 12])
        #expect(Array(MappedArray<UInt16>(repeating: 9, count: 3)) == [9, 9, 9])
    }

    /// The streaming copy lands every byte, and only those, whatever the alignment of either side and
    /// the length (its head up to a 16-byte boundary, its 64-byte body and its tail take different paths).
    @Test func aCopyBypassingTheCacheCopiesExactlyTheBytesAtAnyAlignment() {
        let source = (0..<(300 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) }
        var destination = [UInt8](repeating: 0xEE, count: source.count + 64)
        for (from, to, count) in [(0, 0, 0), (0, 0, 1), (3, 5, 15), (1, 0, 64), (0, 7, 65), (5, 9, 1000),
                                  (0, 0, 256 << 10), (13, 3, (256 << 10) + 37)] {
            for i in destination.indices { destination[i] = 0xEE }
            source.withUnsafeBytes { s in
                destination.withUnsafeMutableBytes { d in
                    copyBypassingCache(to: d.baseAddress! + to, from: s.baseAddress! + from, count: count)
                }
            }
            #expect(Array(destination[to..<(to + count)]) == Array(source[from..<(from + count)]), "copy of \(count) bytes from +\(from) to +\(to)")
            #expect(destination[..<to].allSatisfy { $0 == 0xEE } && destination[(to + count)...].allSatisfy { $0 == 0xEE })
        }
    }

    @Test func locksTakenInTheirOrderNest() {
        let outer = OrderedMutex(.inodeTable, 1)
        let inner = OrderedMutex(.storeState, 2)
        let sum = outer.withLock { a in a + inner.withLock { $0 } }
        #expect(sum == 3)
        // Released in any order, taken again in order.
        #expect(inner.withLock { $0 } == 2)
    }

    #if DEBUG
    @Test func aLockTakenAgainstTheOrderStopsADebugBuild() async {
        await #expect(processExitsWith: .failure) {
            let outer = OrderedMutex(.inodeTable, 1)
            let inner = OrderedMutex(.storeState, 2)
            _ = inner.withLock { _ in outer.withLock { $0 } }
        }
    }
    #endif

    @Test func backgroundThreadsCarryTheirNames() {
        let seen = Mutex("")
        let t = BackgroundThread(name: "tw-test-name") { seen.withLock { $0 = currentThreadName() } }
        t.join()
        #expect(seen.withLock { $0 } == "tw-test-name")
    }

    /// What the daemon asks at a writer's close: how many of the process's descriptors lead to one file.
    @Test func descriptorsAreCountedByWhatTheyLeadTo() throws {
        let path = "/tmp/tw-unit-\(getpid())-identity-\(UInt32.random(in: 0...UInt32.max))"
        let a = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        #expect(a >= 0)
        defer { close(a); unlink(path) }
        let file = try #require(FileSystem.identity(of: path))
        func count() throws -> Int {
            var n = 0
            try FileSystem.forEachIdentity(in: "/proc/self/fd") { device, inode in
                if device == file.device && inode == file.inode { n += 1 }
                return true
            }
            return n
        }
        #expect(try count() == 1)
        let b = dup(a)
        #expect(try count() == 2)
        close(b)
        #expect(try count() == 1)
        #expect(FileSystem.identity(of: path + "-missing") == nil)
    }

    @Test func ownFilesAreNeverReachedThroughASymlinkOrAFifo() throws {
        let dir = "/tmp/tw-unit-\(getpid())-own-\(UInt32.random(in: 0...UInt32.max))"
        try FileSystem.makeDirectories(dir, mode: 0o700)
        defer {
            for n in (try? FileSystem.listDirectory(dir)) ?? [] { _ = unlink(dir + "/" + n) }
            _ = rmdir(dir)
        }
        let target = dir + "/target"
        try FileSystem.writeFileAtomically(target, bytes: Array("precious".utf8), directory: dir)
        #expect(symlink(target, dir + "/link") == 0)
        #expect(throws: SystemError.self) { _ = try FileDescriptor(openOwnFile: dir + "/link", flags: O_RDWR | O_TRUNC) }
        #expect(try FileSystem.readFile(target) == Array("precious".utf8))
        #expect(mkfifo(dir + "/fifo", 0o600) == 0)
        do {
            _ = try FileSystem.readOwnFile(dir + "/fifo", limit: 100)
            Issue.record("a FIFO was read")
        } catch {
            #expect(error.code == EINVAL)
        }
        // A planted temporary is replaced, not followed.
        #expect(symlink(target, dir + "/table.tmp") == 0)
        try FileSystem.writeFileAtomically(dir + "/table", bytes: Array("new".utf8), directory: dir)
        #expect(try FileSystem.readFile(target) == Array("precious".utf8))
        #expect(try FileSystem.readFile(dir + "/table") == Array("new".utf8))
        // Larger than the limit: refused, not read into memory.
        do {
            _ = try FileSystem.readOwnFile(dir + "/table", limit: 2)
            Issue.record("a file over the limit was read")
        } catch {
            #expect(error.code == EFBIG)
        }
    }

    @Test func aSealedMemoryFileCannotBeTruncatedByAnotherHolder() throws {
        let m = try SharedMemoryMapping(memoryFileNamed: "tw-unit-sealed", size: 1 << 20, sealed: true)
        let fd = open("/proc/self/fd/\(m.descriptor)", O_RDWR)
        #expect(fd >= 0)
        defer { close(fd) }
        #expect(ftruncate(fd, 0) != 0)
        #expect(errno == EPERM)
        m.pointer.storeBytes(of: 7, as: UInt8.self)
        #expect(m.pointer.load(as: UInt8.self) == 7)
    }

    @Test func aReadOnlyDescriptorMapsReadOnly() throws {
        let m = try SharedMemoryMapping(memoryFileNamed: "tw-unit-ro", size: 1 << 20, sealed: true)
        let fd = try m.readOnlyDescriptor()
        defer { close(fd) }
        #expect(mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED)
        let ro = try ReadOnlyMapping(descriptor: fd, what: "tier")
        #expect(ro.size == 1 << 20)
    }

    /// A reader handed a read-only descriptor of a memory file must not get a writable one by opening
    /// /proc/self/fd/N again (memfd_create makes files of mode 0777). Checked from a child that runs as
    /// another user (`setpriv`, as root) with the descriptor as its fd 3: reading through it works,
    /// opening it again read-write does not.
    @Test func aReaderOfAnotherUserCannotReopenAMemoryFileForWriting() throws {
        let m = try SharedMemoryMapping(memoryFileNamed: "tw-unit-reopen", size: 4096, sealed: true)
        var st = stat()
        #expect(fstat(m.descriptor, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        guard geteuid() == 0, access("/usr/bin/setpriv", X_OK) == 0 else { return }
        let fd = try m.readOnlyDescriptor()
        defer { close(fd) }
        func asNobody(_ script: String) -> Int32 {
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_adddup2(&actions, fd, 3)
            let args = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c", script]
            var argv = args.map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            var pid: pid_t = 0
            guard posix_spawn(&pid, args[0], &actions, nil, &argv, environ) == 0 else { return -1 }
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            return status
        }
        #expect(asNobody("head -c 1 <&3 >/dev/null") == 0)          // the descriptor itself reads
        #expect(asNobody("exec 4<>/proc/self/fd/3") != 0)            // but cannot be made writable
    }

    @Test func descriptorsAndCredentialsCrossAUnixSocket() throws {
        let path = "/tmp/tw-unit-\(getpid())-sock-\(UInt32.random(in: 0...UInt32.max))"
        let listener = try UnixListener(path: path, mode: 0o600)
        let m = try SharedMemoryMapping(memoryFileNamed: "tw-unit-pass", size: 4096, sealed: true)
        m.pointer.storeBytes(of: 42, as: UInt8.self)
        let server = BackgroundThread(name: "tw-test-srv") {
            guard let c = listener.accept() else { return }
            let peer = try? c.peer()
            let fd = try? m.readOnlyDescriptor()
            try? c.send(Array("uid \(peer?.uid ?? 999)".utf8), descriptors: fd.map { [$0] } ?? [])
            if let fd { close(fd) }
        }
        let client = try UnixConnection(connectingTo: path)
        let (bytes, fds) = try client.receive()
        server.join()
        #expect(String(decoding: bytes, as: UTF8.self) == "uid \(geteuid())")
        #expect(fds.count == 1)
        let ro = try ReadOnlyMapping(descriptor: fds[0], what: "passed")
        close(fds[0])
        #expect(ro.pointer.load(as: UInt8.self) == 42)
    }

    @Test func countersAddFromManyThreads() {
        let c = AtomicCounters(count: 2)
        let threads = (0..<4).map { _ in BackgroundThread(name: "tw-count") { for _ in 0..<10_000 { c.add(1) } } }
        threads.forEach { $0.join() }
        #expect(c[1] == 40_000)
        #expect(c[0] == 0)
    }

    @Test func timedWaitsUseTheMonotonicClock() {
        let lock = ConditionLock()
        let start = monotonicNanoseconds()
        lock.withLock { lock.wait(nanoseconds: 20_000_000) }
        let waited = monotonicNanoseconds() - start
        #expect(waited >= 15_000_000 && waited < 2_000_000_000)
    }
}
