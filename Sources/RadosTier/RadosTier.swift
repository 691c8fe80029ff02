import ClusterTier
import Synchronization
import CRados
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// The remote tier on Ceph RADOS through librados (docs/cluster-tier.md): one object per block in one
/// pool, written whole with its access-time attribute in one atomic operation.
///
/// Every call is bounded: `rados_osd_op_timeout`, `rados_mon_op_timeout` and `client_mount_timeout` are
/// set to `timeoutSeconds`, so with the monitors or OSDs gone a call fails with `.unavailable` after at
/// most that long instead of waiting for the cluster (librados' defaults wait forever).
///
/// Thread-safety: librados handles are thread-safe. The open connection is shared under a lock; each
/// call holds a reference to it, so `disconnect` (or a reconnect) never frees handles a call is using:
/// the last call to finish closes them.
public final class RadosTier: RemoteTier {
    public let configurationFile: String
    public let pool: String
    public let timeoutSeconds: Int
    public let user: String
    public var location: String { "rados:" + pool }

    /// Objects up to this size are read in one operation (with their size); the rest of a larger one is
    /// read in ranges of `rangeSize`, `rangesInFlight` at a time.
    static let firstReadSize = 4 << 20
    static let rangeSize = 1 << 20
    static let rangesInFlight = 16
    /// Objects up to this size are written in one atomic operation (librados refuses writes above
    /// `osd_max_write_size`, 90 MiB by default); larger records are written in pieces of this size.
    static let writePieceSize = 64 << 20

    private let connection = Mutex<Connection?>(nil)
    /// Serialises connection attempts; never held by a call that only uses the connection.
    private let connectLock = Mutex(())

    public init(configurationFile: String, pool: String, timeoutSeconds: Int = 3, user: String = "admin") {
        self.configurationFile = configurationFile
        self.pool = pool
        self.timeoutSeconds = timeoutSeconds
        self.user = user
    }

    public var isConnected: Bool { connection.withLock { $0 != nil } }

    public func connect() throws(RemoteTierError) {
        var failure: RemoteTierError? = nil
        connectLock.withLock { _ in
            if connection.withLock({ $0 != nil }) { return }
            do {
                let c = try Connection(configurationFile: configurationFile, pool: pool, user: user, timeoutSeconds: timeoutSeconds)
                connection.withLock { $0 = c }
            } catch {
                failure = error as? RemoteTierError ?? .unavailable("\(error)")
            }
        }
        if let failure { throw failure }
    }

    public func disconnect() {
        let old = connection.withLock { c -> Connection? in
            defer { c = nil }
            return c
        }
        // Released here (or by the last call still using it), outside the lock.
        withExtendedLifetime(old) {}
    }

    private func open() throws(RemoteTierError) -> Connection {
        guard let c = connection.withLock({ $0 }) else { throw .unavailable("not connected to \(location)") }
        return c
    }

    public func publish(name: String, object: UnsafeRawBufferPointer) throws(RemoteTierError) {
        let c = try open()
        let seconds = Array(String(wallClockNanoseconds() / 1_000_000_000).utf8CString.dropLast())
        var rc: Int32 = 0
        var offset = 0
        repeat {
            let piece = min(object.count - offset, Self.writePieceSize)
            let op = rados_create_write_op()
            defer { rados_release_write_op(op) }
            let base = object.baseAddress.map { UnsafeRawPointer($0 + offset).assumingMemoryBound(to: CChar.self) }
            if offset == 0 {
                rados_write_op_write_full(op, base, piece)
                seconds.withUnsafeBufferPointer { rados_write_op_setxattr(op, RemoteRecord.accessAttribute, $0.baseAddress, $0.count) }
            } else {
                rados_write_op_write(op, base, piece, UInt64(offset))
            }
            // FULL_TRY: a pool at its quota answers EDQUOT at once instead of holding the write until
            // the timeout.
            rc = rados_write_op_operate(op, c.io, name, nil, Int32(LIBRADOS_OPERATION_FULL_TRY))
            offset += piece
        } while rc == 0 && offset < object.count
        if rc < 0 { throw Self.error(rc, "writing \(name) to \(location)") }
    }

    /// All objects of the batch in flight at once (asynchronous operations, then a wait for each):
    /// one object at a time leaves the OSDs idle between round trips. Objects too large for one
    /// operation go through `publish(name:object:)`.
    public func publish(batch: [(name: String, object: UnsafeRawBufferPointer)]) -> [RemoteTierError?] {
        let c: Connection
        do { c = try open() } catch { return batch.map { _ in error } }
        let seconds = Array(String(wallClockNanoseconds() / 1_000_000_000).utf8CString.dropLast())
        var results = [RemoteTierError?](repeating: nil, count: batch.count)
        var inFlight: [(index: Int, op: rados_write_op_t, completion: rados_completion_t)] = []
        for (i, item) in batch.enumerated() {
            if item.object.count > Self.writePieceSize {
                do { try publish(name: item.name, object: item.object) } catch { results[i] = error }
                continue
            }
            var completion: rados_completion_t? = nil
            var rc = rados_aio_create_completion2(nil, nil, &completion)
            guard rc == 0, let completion else {
                results[i] = Self.error(rc == 0 ? -ENOMEM : rc, "starting a write of \(item.name)")
                continue
            }
            guard let op = rados_create_write_op() else {
                rados_aio_release(completion)
                results[i] = Self.error(-ENOMEM, "starting a write of \(item.name)")
                continue
            }
            rados_write_op_write_full(op, item.object.baseAddress?.assumingMemoryBound(to: CChar.self), item.object.count)
            seconds.withUnsafeBufferPointer { rados_write_op_setxattr(op, RemoteRecord.accessAttribute, $0.baseAddress, $0.count) }
            // FULL_TRY as in publish(name:object:).
            rc = rados_aio_write_op_operate(op, c.io, completion, item.name, nil, Int32(LIBRADOS_OPERATION_FULL_TRY))
            if rc < 0 {
                rados_release_write_op(op)
                rados_aio_release(completion)
                results[i] = Self.error(rc, "writing \(item.name) to \(location)")
                continue
            }
            inFlight.append((i, op, completion))
        }
        // Every operation ends within rados_osd_op_timeout; the objects' bytes must outlive them all.
        for f in inFlight {
            rados_aio_wait_for_complete(f.completion)
            let rc = rados_aio_get_return_value(f.completion)
            if rc < 0 { results[f.index] = Self.error(rc, "writing \(batch[f.index].name) to \(location)") }
            rados_aio_release(f.completion)
            rados_release_write_op(f.op)
        }
        withExtendedLifetime(c) {}
        return results
    }

    /// One operation asks for the object's size and its first `firstReadSize` bytes, so a block up to that
    /// size costs one round trip. The rest of a larger object is read in `rangeSize` pieces, up to
    /// `rangesInFlight` at once: one large read leaves the OSD waiting on the network and the network on
    /// the OSD (`Tools/bench/rados_ranges.py` on the single-host cluster of docs/benchmarks.md: a 16 MiB
    /// object in 24.6-27.0 ms whole, 19.5-22.3 ms as four ranges, 16.4-18.1 ms as sixteen; a 1 MiB object
    /// gains nothing from being split, so small ones are not).
    public func fetch(name: String) throws(RemoteTierError) -> RemoteObject? {
        let c = try open()
        let first = AlignedBuffer(capacity: Self.firstReadSize)
        var size: UInt64 = 0
        var mtime: time_t = 0
        var statResult: Int32 = 0, readResult: Int32 = 0
        var bytesRead = 0
        guard let op = rados_create_read_op() else { throw Self.error(-ENOMEM, "starting a read of \(name)") }
        rados_read_op_stat(op, &size, &mtime, &statResult)
        rados_read_op_read(op, 0, Self.firstReadSize, first.pointer.assumingMemoryBound(to: CChar.self), &bytesRead, &readResult)
        let rc = rados_read_op_operate(op, c.io, name, 0)
        rados_release_read_op(op)
        if rc == -ENOENT || statResult == -ENOENT { return nil }
        if rc < 0 { throw Self.error(rc, "reading \(name) from \(location)") }
        if statResult < 0 { throw Self.error(statResult, "stat of \(name) in \(location)") }
        if readResult < 0 { throw Self.error(readResult, "reading \(name) from \(location)") }
        let total = Int(size)
        guard total > bytesRead else { return RemoteObject(buffer: first, count: bytesRead) }
        guard bytesRead == Self.firstReadSize else {
            // Shorter than its size said: rewritten between the stat and the read (a publish replaces
            // objects whole). What was read is one version; the record's checksums decide.
            return RemoteObject(buffer: first, count: bytesRead)
        }
        let whole = AlignedBuffer(capacity: total)
        var failure: RemoteTierError? = nil
        var inFlight: [(completion: rados_completion_t, offset: Int, length: Int)] = []
        func waitOldest() {
            let f = inFlight.removeFirst()
            rados_aio_wait_for_complete(f.completion)
            let n = rados_aio_get_return_value(f.completion)
            rados_aio_release(f.completion)
            if failure != nil { return }
            if n < 0 {
                failure = Self.error(n, "reading \(name) from \(location)")
            } else if Int(n) != f.length {
                failure = .failed("\(name) in \(location) changed while it was read (\(n) of \(f.length) bytes at \(f.offset))", code: EIO)
            }
        }
        var offset = Self.firstReadSize
        while offset < total && failure == nil {
            let length = min(Self.rangeSize, total - offset)
            var completion: rados_completion_t? = nil
            let created = rados_aio_create_completion2(nil, nil, &completion)
            guard created == 0, let completion else {
                failure = Self.error(created < 0 ? created : -ENOMEM, "starting a read of \(name)")
                break
            }
            let started = rados_aio_read(c.io, name, completion, (whole.pointer + offset).assumingMemoryBound(to: CChar.self), length, UInt64(offset))
            guard started == 0 else {
                rados_aio_release(completion)
                failure = Self.error(started < 0 ? started : -EIO, "reading \(name) from \(location)")
                break
            }
            inFlight.append((completion, offset, length))
            offset += length
            if inFlight.count >= Self.rangesInFlight { waitOldest() }
        }
        // The first piece is copied while the others are on their way; every read must end before
        // `whole` may go (each ends within rados_osd_op_timeout).
        whole.pointer.copyMemory(from: first.pointer, byteCount: Self.firstReadSize)
        while !inFlight.isEmpty { waitOldest() }
        withExtendedLifetime(c) {}
        if let failure { throw failure }
        return RemoteObject(buffer: whole, count: total)
    }

    public func touch(name: String, seconds: UInt64) throws(RemoteTierError) {
        let c = try open()
        let value = Array(String(seconds).utf8)
        let rc = value.withUnsafeBufferPointer { v in
            v.withMemoryRebound(to: CChar.self) { rados_setxattr(c.io, name, RemoteRecord.accessAttribute, $0.baseAddress, $0.count) }
        }
        if rc < 0 && rc != -ENOENT { throw Self.error(rc, "setting the access time of \(name)") }
    }

    public func inventory() throws(RemoteTierError) -> [RemoteObjectInfo] {
        let c = try open()
        var names: [String] = []
        var ctx: rados_list_ctx_t? = nil
        var rc = rados_nobjects_list_open(c.io, &ctx)
        if rc < 0 { throw Self.error(rc, "listing \(location)") }
        while true {
            var entry: UnsafePointer<CChar>? = nil
            rc = rados_nobjects_list_next(ctx, &entry, nil, nil)
            if rc == -ENOENT { break }
            if rc < 0 {
                rados_nobjects_list_close(ctx)
                throw Self.error(rc, "listing \(location)")
            }
            if let entry {
                let name = String(cString: entry)
                if name.hasPrefix(RemoteRecord.objectPrefix) { names.append(name) }
            }
        }
        rados_nobjects_list_close(ctx)
        var out: [RemoteObjectInfo] = []
        out.reserveCapacity(names.count)
        var value = [CChar](repeating: 0, count: 32)
        for name in names {
            var size: UInt64 = 0
            var mtime: time_t = 0
            let s = rados_stat(c.io, name, &size, &mtime)
            if s == -ENOENT { continue }
            if s < 0 { throw Self.error(s, "stat of \(name)") }
            var access = UInt64(max(0, mtime))
            let n = value.withUnsafeMutableBufferPointer { rados_getxattr(c.io, name, RemoteRecord.accessAttribute, $0.baseAddress, $0.count) }
            if n > 0, let t = UInt64(String(decoding: value[0..<Int(n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)) { access = t }
            out.append(RemoteObjectInfo(name: name, size: size, accessSeconds: access))
        }
        return out
    }

    public func remove(name: String) throws(RemoteTierError) {
        let c = try open()
        let op = rados_create_write_op()
        defer { rados_release_write_op(op) }
        rados_write_op_remove(op)
        // FULL_FORCE: removing is how a pool at its quota gets room again.
        let rc = rados_write_op_operate(op, c.io, name, nil, Int32(LIBRADOS_OPERATION_FULL_FORCE))
        if rc < 0 && rc != -ENOENT { throw Self.error(rc, "removing \(name) from \(location)") }
    }

    /// Timeouts and lost connections are `.unavailable` (serve locally, try again later); anything
    /// else the cluster said is `.failed`.
    static func error(_ rc: Int32, _ what: String) -> RemoteTierError {
        let code = -rc
        let text = String(cString: strerror(code))
        switch code {
        case ETIMEDOUT, ENOTCONN, ESHUTDOWN, ECONNREFUSED, ECONNRESET, EHOSTUNREACH, EAGAIN:
            return .unavailable("\(what): \(text)")
        default:
            return .failed("\(what): \(text)", code: code)
        }
    }
}

/// An open cluster handle and an I/O context on the pool; closed when the last user lets go.
///
/// `@unchecked Sendable`: librados handles may be used from any thread; they are written once in init.
final class Connection: @unchecked Sendable {
    let cluster: rados_t
    let io: rados_ioctx_t

    init(configurationFile: String, pool: String, user: String, timeoutSeconds: Int) throws(RemoteTierError) {
        var handle: rados_t? = nil
        var rc = rados_create(&handle, user)
        guard rc == 0, let cluster = handle else { throw RadosTier.error(rc, "creating a cluster handle") }
        rc = rados_conf_read_file(cluster, configurationFile)
        if rc < 0 {
            rados_shutdown(cluster)
            throw .failed("reading \(configurationFile): \(String(cString: strerror(-rc)))", code: -rc)
        }
        let timeout = String(timeoutSeconds)
        for option in ["rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout"] {
            rc = rados_conf_set(cluster, option, timeout)
            if rc < 0 {
                rados_shutdown(cluster)
                throw .failed("setting \(option): \(String(cString: strerror(-rc)))", code: -rc)
            }
        }
        rc = rados_connect(cluster)
        if rc < 0 {
            rados_shutdown(cluster)
            throw RadosTier.error(rc, "connecting to the cluster of \(configurationFile)")
        }
        var ctx: rados_ioctx_t? = nil
        rc = rados_ioctx_create(cluster, pool, &ctx)
        guard rc == 0, let ctx else {
            rados_shutdown(cluster)
            throw RadosTier.error(rc, rc == -ENOENT ? "no pool \(pool) in the cluster (create it: ceph osd pool create \(pool))" : "opening pool \(pool)")
        }
        self.cluster = cluster
        io = ctx
    }

    deinit {
        rados_ioctx_destroy(io)
        rados_shutdown(cluster)
    }
}
