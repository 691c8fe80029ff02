import BlockStore
import ClusterTier
import ControlPlane
import DRAMTier
import Platform
import Prefetcher
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// Long control commands (evict, cluster-gc) run on a thread of their own, never inside a request: the
/// request starts a job and answers at once; `job` requests follow it.
///
/// Thread-safety: one mutex over the job table; each job's thread writes only its own entry.
final class ControlJobs: Sendable {
    private let state = Mutex<(jobs: [Int: (status: JobStatus, owner: UInt32)], next: Int, threads: [BackgroundThread])>(([:], 1, []))

    /// Starts `work` as job; returns its first status.
    func start(command: String, owner: UInt32, _ work: @escaping @Sendable (inout JobStatus) -> Void) -> JobStatus {
        let status = state.withLock { s -> JobStatus in
            let id = s.next
            s.next += 1
            let status = JobStatus(id: id, command: command, running: true)
            s.jobs[id] = (status, owner)
            // Keep the last 64 finished jobs.
            let finished = s.jobs.filter { !$0.value.status.running }.keys.sorted()
            for id in finished.dropLast(64) { s.jobs[id] = nil }
            return status
        }
        let started = monotonicNanoseconds()
        let thread = BackgroundThread(name: "tw-job\(status.id)") { [self] in
            var result = status
            work(&result)
            result.running = false
            result.seconds = Double(monotonicNanoseconds() - started) / 1e9
            state.withLock { s in s.jobs[status.id]?.status = result }
        }
        state.withLock { s in
            s.threads.append(thread)
            if s.threads.count > 16 { s.threads.removeFirst(s.threads.count - 16) }
        }
        return status
    }

    func status(_ id: Int, caller: Caller) -> JobStatus? {
        state.withLock { s in
            guard let job = s.jobs[id], caller.isRoot || job.owner == caller.uid else { return nil }
            return job.status
        }
    }

    func stop() {
        let threads = state.withLock { s -> [BackgroundThread] in
            defer { s.threads = [] }
            return s.threads
        }
        for t in threads { t.join() }
    }
}

/// The latest counters each engine instance reported through `.tw/engine`, bounded per user.
///
/// Thread-safety: one mutex.
final class EngineReports: Sendable {
    static let instancesPerUser = 16
    private let state = Mutex<[UInt32: [(report: EngineReport, at: UInt64)]]>([:])

    func record(_ report: EngineReport, uid: UInt32) {
        state.withLock { s in
            var list = s[uid] ?? []
            list.removeAll { $0.report.engine == report.engine && $0.report.instance == report.instance }
            list.append((report, monotonicNanoseconds()))
            if list.count > Self.instancesPerUser { list.removeFirst(list.count - Self.instancesPerUser) }
            s[uid] = list
        }
    }

    /// Totals by engine of the reports a caller may see (its own; root sees all).
    func totals(for caller: Caller) -> [String: [String: Int64]] {
        state.withLock { s in
            var out: [String: [String: Int64]] = [:]
            for (uid, list) in s where caller.isRoot || uid == caller.uid {
                for (r, _) in list {
                    out[r.engine, default: ["instances": 0]]["instances", default: 0] += 1
                    for (k, v) in r.counters { out[r.engine, default: [:]][k, default: 0] &+= v }
                }
            }
            return out
        }
    }
}

/// The control area: `.tw/status`, `.tw/dram`, `.tw/prefetch`, `.tw/ctl`, `.tw/engine`. Each acts for
/// whoever opened it: the status shows only the namespaces its reader may read, hints for blocks the
/// sender may not read are dropped as if the blocks were missing, control requests are checked
/// command by command.
extension WarehouseFileSystem {
    func openControlFile(_ f: ControlFile, flags: Int32, caller: Caller) -> FSResult<(OpenFile, keepCache: Bool, directIO: Bool)> {
        let reading = flags & O_ACCMODE == O_RDONLY
        switch f {
        case .status:
            guard reading else { return .failure(FSError(EACCES)) }
            return .success((OpenFile(.generated(ControlJSON.encode(status(for: caller))), opener: caller), false, true))
        case .dram:
            guard reading else { return .failure(FSError(EACCES)) }
            let text = tierSocket.map { "\(TierProtocol.dramFileHeader) \($0)\n" } ?? ""
            return .success((OpenFile(.generated(Array(text.utf8)), opener: caller), false, true))
        case .prefetch:
            guard !reading else { return .failure(FSError(EACCES)) }
            return .success((OpenFile(.lines(LineInput(.hints)), opener: caller), false, true))
        case .engine:
            guard !reading else { return .failure(FSError(EACCES)) }
            return .success((OpenFile(.lines(LineInput(.engine)), opener: caller), false, true))
        case .ctl:
            return .success((OpenFile(.command(CommandState()), opener: caller), false, true))
        }
    }

    /// Handles the complete lines of a write to `.tw/prefetch` or `.tw/engine`; a line over 4 KiB is `E2BIG`.
    func writeLines(_ input: LineInput, bytes: UnsafeRawBufferPointer, caller: Caller) -> FSResult<Void> {
        let (lines, tooLong) = input.append(bytes)
        if !lines.isEmpty { _ = handleLines(input.purpose, lines, caller: caller) }
        return tooLong ? .failure(FSError(E2BIG)) : .success(())
    }

    /// Hints (`NAMESPACE<TAB or space>NAME`) go to the prefetcher when the sender may read the block;
    /// others are counted like hints for missing blocks and dropped. Engine lines are recorded.
    func handleLines(_ purpose: LineInput.Purpose, _ lines: [[UInt8]], caller: Caller) -> Int {
        switch purpose {
        case .engine:
            var n = 0
            for line in lines {
                guard let report = EngineReport.parse(line) else { continue }
                engines.record(report, uid: caller.uid)
                n += 1
            }
            return n
        case .hints:
            guard let prefetcher else { return 0 }
            var hints: [Prefetcher.Hint] = []
            var refused = 0
            var namespaces: [String: NamespaceInfo?] = [:]
            for line in lines {
                // Split at the first tab or space byte (not Character: a combining mark after the tab
                // would join it into one).
                guard let cut = line.firstIndex(where: { $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: " ") }) else { continue }
                let nsName = String(decoding: line[..<cut], as: UTF8.self)
                var name = String(decoding: line[(cut + 1)...], as: UTF8.self)
                guard !nsName.isEmpty, !name.isEmpty else { continue }
                if name.utf8.last == UInt8(ascii: "\r") { name = String(decoding: name.utf8.dropLast(), as: UTF8.self) }
                let info = namespaces[nsName] ?? store.namespace(named: nsName)
                namespaces[nsName] = info
                guard let ns = info, let key = BlockPath.key(clientName: name) else { refused += 1; continue }
                guard mayRead(caller, namespace: ns, key: key) else { refused += 1; continue }
                hints.append(Prefetcher.Hint(namespace: ns.name, namespaceID: ns.id, key: key))
            }
            if !hints.isEmpty { prefetcher.hint(hints) }
            // Indistinguishable from hints for blocks that do not exist.
            if refused > 0 { prefetcher.countMissing(refused) }
            return hints.count
        }
    }

    /// Whether `caller` could open block `key` of `ns` for reading through the mount: search permission
    /// on the namespace and every directory on the path, and read permission on the block if it exists.
    func mayRead(_ caller: Caller, namespace ns: NamespaceInfo, key: String) -> Bool {
        guard caller.may(1, mode: ns.mode, owner: ns.owner, group: ns.group) else { return false }
        let (path, _) = BlockPath.split(key: key)
        var dir = DirectoryID.namespaceRoot
        if !path.isEmpty {
            for component in BlockPath.components(of: path) {
                guard let next = store.lookupDirectory(namespaceID: ns.id, parent: dir, name: String(component)),
                      let info = store.directory(namespaceID: ns.id, id: next),
                      caller.may(1, mode: info.ownership.mode, owner: info.ownership.uid, group: info.ownership.gid) else { return false }
                dir = next
            }
        }
        // A block this node lacks: the caller could look the name up itself, so the hint reveals nothing
        // (it may bring the block from the cluster tier).
        guard let a = store.attributes(namespace: ns.name, key: key) else { return true }
        return caller.may(4, mode: a.ownership.mode, owner: a.ownership.uid, group: a.ownership.gid)
    }

    /// Whether `caller` may see a namespace's figures (it could list or search the namespace).
    func maySee(_ caller: Caller, namespace ns: NamespaceInfo) -> Bool {
        caller.may(1, mode: ns.mode, owner: ns.owner, group: ns.group) || caller.may(4, mode: ns.mode, owner: ns.owner, group: ns.group)
    }

    // MARK: .tw/ctl

    /// Runs one `.tw/ctl` request for `caller` and returns the JSON answer.
    func execute(request bytes: [UInt8], caller: Caller) -> [UInt8] {
        let request: ControlRequest
        do { request = try ControlRequest.parse(bytes) } catch {
            return ControlJSON.encode(ControlResponse(error: error.message))
        }
        return ControlJSON.encode(answer(request, caller: caller))
    }

    func answer(_ r: ControlRequest, caller: Caller) -> ControlResponse {
        func denied(_ what: String) -> ControlResponse { ControlResponse(error: "permission denied: \(what)") }
        func missing(_ name: String) -> ControlResponse { ControlResponse(error: "no namespace \(name)") }
        var out = ControlResponse()
        switch r.command {
        case .compact:
            guard caller.isRoot else { return denied("compaction is root's") }
            out.started = compaction.start(threshold: r.threshold ?? 0.3, maxBytes: r.maxBytes ?? .max, bytesPerSecond: r.rate ?? (64 << 20))
            out.compaction = compactionStatus()
        case .compactStatus:
            out.compaction = compactionStatus()
        case .compactCandidates:
            guard caller.isRoot else { return denied("compaction is root's") }
            out.candidates = store.compactionCandidates(threshold: r.threshold ?? 0.3).map {
                CompactionCandidate(segment: $0.id, bytes: $0.bytes, deadRatio: $0.deadShare)
            }
        case .evict:
            let name = r.namespace!
            // A namespace nobody else may see answers as missing.
            guard let ns = store.namespace(named: name), maySee(caller, namespace: ns) else { return missing(name) }
            guard caller.isRoot || caller.uid == ns.owner else { return denied("only root or the owner of \(name) may evict its blocks") }
            let cutoff = r.olderThan.map { older -> UInt64 in
                let now = wallClockNanoseconds() / 1_000_000_000
                return now > older ? now - older : 0
            }
            let store = self.store
            out.job = jobs.start(command: "evict", owner: caller.uid) { status in
                do {
                    let (blocks, bytes) = try store.removeBlocks(namespace: name, committedBefore: cutoff)
                    status.removedBlocks = blocks
                    status.removedBytes = bytes
                } catch {
                    status.error = "\(error)"
                }
            }
        case .namespaceSet:
            let name = r.namespace!
            guard let ns = store.namespace(named: name), maySee(caller, namespace: ns) else { return missing(name) }
            if !caller.isRoot {
                guard caller.uid == ns.owner else { return denied("only root or the owner of \(name) may change it") }
                if r.quota != nil || r.pinned != nil { return denied("quotas and pinning are root's") }
            }
            if r.share != nil && cluster == nil { return ControlResponse(error: "share needs a mount with --cluster") }
            do {
                let info = try store.updateNamespace(name) { n in
                    if let q = r.quota { n.quotaBytes = q }
                    if let t = r.ttl { n.ttlSeconds = t }
                    if let p = r.pinned { n.pinned = p }
                    if let c = r.compression, let policy = CompressionPolicy(rawValue: c) { n.compression = policy }
                    if let s = r.share { n.share = s == "default" ? nil : SharePolicy(rawValue: s) }
                }
                cluster?.namespaceChanged(info)
                out.namespace = namespaceReport(info)
            } catch StoreError.notFound {
                return missing(name)
            } catch {
                return ControlResponse(error: "\(error)")
            }
        case .namespaceList:
            out.namespaces = store.namespaces().filter { maySee(caller, namespace: $0) }.map(namespaceReport)
        case .clusterGC:
            guard caller.isRoot else { return denied("garbage collection of the shared pool is root's") }
            guard let cluster else { return ControlResponse(error: "this mount has no shared tier (twfs --cluster CONF --pool POOL)") }
            let target = r.target!
            out.job = jobs.start(command: JobStatus.clusterGCCommand, owner: caller.uid) { status in
                let collection = cluster.collectGarbage(targetBytes: target)
                status.collection = collection
                status.error = collection.error
            }
        case .job:
            guard let job = jobs.status(r.job!, caller: caller) else { return ControlResponse(error: "no job \(r.job!)") }
            out.job = job
        }
        return out
    }
}
