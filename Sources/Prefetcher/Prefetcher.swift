// Prefetcher: loads blocks from NVMe into the DRAM tier before they are read (docs/design.md
// "Prefetcher"), from hints, chain links and learned order, on threads of its own with bounded queues
// and bandwidth. Thread-safety: all state is behind one mutex; loads run outside it.
import BlockStore
import DRAMTier
import DequeModule
import Platform
import Synchronization
import WarehouseCore
#if canImport(Glibc)
import Glibc
#endif

/// Limits of the prefetcher (twfs `--prefetch-*` flags).
public struct PrefetchSettings: Sendable {
    /// Loader threads: never request threads, so a prefetch never delays a read.
    public var workers = 2
    /// Bytes per second loaded from NVMe at most (0: no limit), so prefetching leaves the disk to reads.
    public var bandwidth: UInt64 = 2 << 30
    /// How many blocks ahead chain links and learned order are followed from a block being read.
    public var depth = 8
    /// Explicit hints queued at most; more are dropped and counted.
    public var hintQueueLimit = 65536
    /// Speculative loads (chain, learned) queued at most; the oldest give way to new ones.
    public var speculativeQueueLimit = 4096
    /// A hint not served within this many nanoseconds is dropped: its request has moved on.
    public var hintDeadline: UInt64 = 10_000_000_000
    /// Successor links kept (each about 100 bytes).
    public var successorLimit = 262_144

    public init() {}
}

/// Loads blocks from NVMe into the DRAM tier before they are read, from three signals, strongest first
/// (docs/design.md "Prefetcher"):
/// 1. explicit hints (`MOUNT/.tw/prefetch`, `Client.prefetch`, `twctl prefetch`): served first, placed
///    as expected blocks (the tier's main ring);
/// 2. chain links: a committed block's `user.tw.parent` makes it its parent's successor;
/// 3. learned order: the block a process reads after another becomes that one's successor;
/// 4. log order: when a process reads blocks in the order the log holds them (the order they were
///    written, which the log keeps across restarts, when nothing was learned yet), the blocks that
///    follow in the log. It starts at the second block of such a run, so random reads load nothing extra,
///    and takes only blocks of the same namespace that the read path would admit to the tier too.
/// Reading a block through the mount queues its successors (up to `depth` ahead) as speculative loads,
/// which enter the tier like misses (the small ring): a block loaded on a guess and never read leaves
/// without pushing out blocks that were read twice (S3-FIFO admission).
///
/// A hint whose block was read after the hint was queued is dropped (the read loaded it already), and
/// so is one older than `hintDeadline`. Loads are rate-limited to `bandwidth`.
///
/// Thread-safety: all state is behind `state`; loads run on the worker threads, outside the lock.
public final class Prefetcher: Sendable {
    enum Source { case hint, chain, learned, logOrder }

    struct Job {
        var namespace: String
        var namespaceID: UInt16
        var name: String
        var key: BlockKey
        var source: Source
        var queuedAt: UInt64
        /// Where a block found by its place in the log is (it has no name at hand).
        var located: LocatedBlock? = nil
    }

    /// A process reading blocks in log order: what it read last, the blocks found after it (queued, or
    /// passed over because the tier may not hold them), and whether a worker is looking for more.
    struct LogStream {
        var namespaceID: UInt16
        var ahead = Deque<LogPosition>()
        var frontier: LogPosition
        var scanning = false
        /// How many blocks the run keeps loaded ahead: 2 when it starts, doubled (up to `depth`) each time
        /// the reader reaches a block the run loaded, so a run that stops soon wastes at most a few loads.
        var window = 2
    }

    /// Work for a loader: a block to load, or the log to search for the blocks after a stream's frontier.
    enum Work {
        case load(Job)
        case scan(process: Int32, namespaceID: UInt16, after: LogPosition, count: Int)
    }

    struct Link {
        var namespace: String
        var namespaceID: UInt16
        var name: String
        var learned: Bool
        /// `BlockKey(namespace:key:)` of the successor, hashed once here: every read of its predecessor
        /// walks the link (up to `depth` steps) under the lock.
        var key: BlockKey

        init(namespace: String, namespaceID: UInt16, name: String, learned: Bool, key: BlockKey? = nil) {
            self.namespace = namespace
            self.namespaceID = namespaceID
            self.name = name
            self.learned = learned
            self.key = key ?? BlockKey(namespace: namespace, key: name)
        }
    }

    struct State {
        var hints = Deque<Job>()
        var speculative = Deque<Job>()
        var queued: Set<BlockKey> = []
        var stopping = false
        /// Successors of a block: at most two, the most recent first.
        var successors: [BlockKey: [Link]] = [:]
        var successorOrder = Deque<BlockKey>()
        /// The last block each process read through the mount, when, and where it lies in the log.
        var lastRead: [Int32: (key: BlockKey, at: UInt64, position: LogPosition?)] = [:]
        var streams: [Int32: LogStream] = [:]
        var scans = Deque<Work>()
        /// When blocks were last read through the mount (bounded), to drop hints that came too late.
        var readAt: [BlockKey: UInt64] = [:]
        var readOrder = Deque<BlockKey>()
        var stats = PrefetchReport()
    }

    let store: BlockStore
    let tier: DRAMTiers
    public let settings: PrefetchSettings
    private let state = Mutex(State())
    private let wakeup = ConditionLock()
    private let threads = Mutex<[BackgroundThread]>([])
    private let throttle: Throttle
    private let loading = LoadsInFlight()
    /// Brings a hinted block that this node lacks from the cluster tier (stored locally and put in the
    /// tier); true when it did. Nil without `--cluster`.
    let fetchMissing: (@Sendable (String, String) -> Bool)?
    /// Whether a block may enter the tier (the read path's rule: everyone who can map the tier could read
    /// it through the mount), asked before every load. Without it (tests), every block may, and the log
    /// is not followed.
    let admits: (@Sendable (LocatedBlock) -> Bool)?

    public init(store: BlockStore, tier: DRAMTiers, settings: PrefetchSettings = PrefetchSettings(),
                fetchMissing: (@Sendable (String, String) -> Bool)? = nil, admits: (@Sendable (LocatedBlock) -> Bool)? = nil) {
        self.store = store
        self.tier = tier
        self.settings = settings
        self.fetchMissing = fetchMissing
        self.admits = admits
        throttle = Throttle(bytesPerSecond: settings.bandwidth)
    }

    /// Blocks a worker is reading now. A reader that opens one waits for it to reach the tier rather
    /// than reading it from NVMe a second time beside the worker.
    final class LoadsInFlight: @unchecked Sendable {
        // Safe: `keys` is read and written only with `lock` held.
        private let lock = ConditionLock()
        private var keys: Set<BlockKey> = []

        func begin(_ key: BlockKey) { lock.withLock { _ = keys.insert(key) } }

        func end(_ key: BlockKey) {
            lock.withLock {
                keys.remove(key)
                lock.broadcast()
            }
        }

        func wait(for key: BlockKey, atMost nanoseconds: UInt64) {
            let deadline = monotonicNanoseconds() &+ nanoseconds
            lock.withLock {
                while keys.contains(key) {
                    let now = monotonicNanoseconds()
                    guard now < deadline else { return }
                    lock.wait(nanoseconds: deadline - now)
                }
            }
        }
    }

    /// Waits (100 ms at most) while a worker loads `key` into the tier: the opener then finds it there.
    public func awaitLoad(of key: BlockKey) {
        loading.wait(for: key, atMost: 100_000_000)
    }

    /// Starts the worker threads (after the daemon has forked into the background).
    public func start() {
        let started = (0..<max(1, settings.workers)).map { i in BackgroundThread(name: "tw-prefetch\(i)") { [self] in work() } }
        threads.withLock { $0 = started }
    }

    public func stop() {
        state.withLock { $0.stopping = true }
        wakeup.withLock { wakeup.broadcast() }
        let workers = threads.withLock { t -> [BackgroundThread] in
            defer { t = [] }
            return t
        }
        for t in workers { t.join() }
    }

    // MARK: Signals

    /// A block a hint names: its namespace and key (`BlockPath`).
    public struct Hint: Sendable, Equatable {
        public var namespace: String
        public var namespaceID: UInt16
        public var key: String
        public init(namespace: String, namespaceID: UInt16, key: String) {
            self.namespace = namespace
            self.namespaceID = namespaceID
            self.key = key
        }
    }

    /// Queues explicit hints, in order; returns how many were accepted. The caller has checked that
    /// whoever sent them may read their namespaces.
    @discardableResult
    public func hint(_ blocks: [Hint]) -> Int {
        let now = monotonicNanoseconds()
        let accepted = state.withLock { st -> Int in
            st.stats.hinted += blocks.count
            var accepted = 0
            for b in blocks {
                let key = BlockKey(namespace: b.namespace, key: b.key)
                if st.queued.contains(key) {
                    accepted += 1
                    continue
                }
                guard st.hints.count < settings.hintQueueLimit else {
                    st.stats.dropped += 1
                    continue
                }
                st.hints.append(Job(namespace: b.namespace, namespaceID: b.namespaceID, name: b.key, key: key, source: .hint, queuedAt: now))
                st.queued.insert(key)
                accepted += 1
            }
            return accepted
        }
        wakeup.withLock { wakeup.broadcast() }
        return accepted
    }

    /// Counts hints that were refused before they reached the queue (the sender may not read their
    /// blocks): they show as missing, like hints for blocks that do not exist.
    public func countMissing(_ n: Int) {
        state.withLock {
            $0.stats.hinted += n
            $0.stats.missing += n
        }
    }

    /// A committed block with a parent (a canonical hash): the chain link makes it the parent's successor.
    public func noteCommit(namespace: String, namespaceID: UInt16, name: String, parent: String?) {
        guard let parent, parent != name else { return }
        let parentKey = BlockKey(namespace: namespace, key: parent)
        state.withLock { st in addSuccessor(&st, of: parentKey, Link(namespace: namespace, namespaceID: namespaceID, name: name, learned: false)) }
    }

    /// A block opened for reading through the mount by process `process`: learns the order, remembers
    /// the read (late hints), and, with `speculate`, queues the blocks expected next: its successors, or
    /// when it has none and `position` continues the process's run through the log, the blocks after it.
    public func noteRead(namespace: String, namespaceID: UInt16, name: String, process: Int32, speculate: Bool = true,
                         position: LogPosition? = nil) {
        let key = BlockKey(namespace: namespace, key: name)
        let now = monotonicNanoseconds()
        let queuedAny = state.withLock { st -> Bool in
            if st.readAt.updateValue(now, forKey: key) == nil {
                st.readOrder.append(key)
                if st.readOrder.count > settings.hintQueueLimit { st.readAt[st.readOrder.removeFirst()] = nil }
            }
            let last = st.lastRead[process]
            if let last, last.key != key, now &- last.at < 2_000_000_000, now >= last.at {
                addSuccessor(&st, of: last.key, Link(namespace: namespace, namespaceID: namespaceID, name: name, learned: true, key: key))
            }
            if st.lastRead.count > 4096 { st.lastRead.removeAll(keepingCapacity: true) }
            st.lastRead[process] = (key, now, position)
            guard speculate else { return false }
            // Known successors (chain links, learned order) say better than the log what comes next, also
            // when they are all resident already.
            if st.successors[key] != nil { return queueSuccessors(&st, of: key, now: now) }
            guard let position, admits != nil, settings.depth > 0 else { return false }
            return followLog(&st, process: process, namespaceID: namespaceID, key: key, at: position,
                             previous: last?.key != key ? last?.position : nil)
        }
        if queuedAny { wakeup.withLock { wakeup.broadcast() } }
    }

    private func addSuccessor(_ st: inout State, of key: BlockKey, _ link: Link) {
        var links = st.successors[key] ?? []
        if let i = links.firstIndex(where: { $0.key == link.key }) {
            if i == 0 { return }
            links.remove(at: i)
        }
        if st.successors[key] == nil {
            st.successorOrder.append(key)
            if st.successorOrder.count > settings.successorLimit { st.successors[st.successorOrder.removeFirst()] = nil }
        }
        links.insert(link, at: 0)
        if links.count > 2 { links.removeLast() }
        st.successors[key] = links
    }

    /// Queues up to `depth` blocks along the most recent successor of `key` (and the second successor of
    /// each step); blocks already resident are walked through, not loaded.
    private func queueSuccessors(_ st: inout State, of key: BlockKey, now: UInt64) -> Bool {
        guard st.successors[key] != nil else { return false }
        var current = key
        var visited: Set<BlockKey> = [key]
        var queuedAny = false
        for _ in 0..<settings.depth {
            guard let links = st.successors[current], let first = links.first else { break }
            for link in links {
                let k = link.key
                guard !st.queued.contains(k), !visited.contains(k), !tier.contains(k, namespaceID: link.namespaceID) else { continue }
                st.speculative.append(Job(namespace: link.namespace, namespaceID: link.namespaceID, name: link.name, key: k,
                                          source: link.learned ? .learned : .chain, queuedAt: now))
                st.queued.insert(k)
                queuedAny = true
                if st.speculative.count > settings.speculativeQueueLimit { st.queued.remove(st.speculative.removeFirst().key) }
            }
            let next = first.key
            guard visited.insert(next).inserted else { break }
            current = next
        }
        return queuedAny
    }

    /// Whether `b` comes right after `a` in the log, allowing for other writers' records in between
    /// (up to 8 MiB of them) and for `a` closing a segment and `b` opening one of the next.
    static func follows(_ b: LogPosition, _ a: LogPosition) -> Bool {
        if a.segment == b.segment { return b.page >= a.endPage && b.page - a.endPage <= 2048 }
        return b.segment > a.segment && b.segment - a.segment <= 2 && b.page <= 64
    }

    static func precedes(_ a: LogPosition, _ b: LogPosition) -> Bool {
        a.segment < b.segment || (a.segment == b.segment && a.page < b.page)
    }

    /// Keeps a process's run through the log up to `depth` blocks ahead of its reads: a read of a block the
    /// run found, or of the block after the last one read, continues it; any other read ends it.
    private func followLog(_ st: inout State, process: Int32, namespaceID: UInt16, key: BlockKey, at position: LogPosition,
                           previous: LogPosition?) -> Bool {
        var stream: LogStream
        if var known = st.streams[process], known.namespaceID == namespaceID, let i = known.ahead.firstIndex(of: position) {
            known.ahead.removeFirst(i + 1)
            known.window = min(settings.depth, known.window * 2)
            stream = known
            // The reader caught up with a load that has not started: it reads the block itself, so the
            // load would only read it a second time.
            if st.queued.contains(key), let j = st.speculative.lastIndex(where: { $0.key == key }) {
                st.speculative.remove(at: j)
                st.queued.remove(key)
            }
        } else if let previous, Self.follows(position, previous) {
            stream = st.streams[process].flatMap { $0.namespaceID == namespaceID ? $0 : nil }
                ?? LogStream(namespaceID: namespaceID, frontier: position, window: min(2, settings.depth))
            stream.ahead.removeAll()
            // The reader went past what was found (or nothing was): search on from here.
            if !stream.scanning && !Self.precedes(position, stream.frontier) { stream.frontier = position }
        } else {
            st.streams[process] = nil
            return false
        }
        defer { st.streams[process] = stream }
        let wanted = stream.window - stream.ahead.count
        guard wanted > 0, !stream.scanning else { return false }
        stream.scanning = true
        if st.streams.count > 1024 { st.streams.removeAll(keepingCapacity: true) }
        st.scans.append(.scan(process: process, namespaceID: namespaceID, after: stream.frontier, count: wanted))
        return true
    }

    /// Finds the blocks after a stream's frontier and queues those the tier may hold, nearest first.
    private func scan(process: Int32, namespaceID: UInt16, after: LogPosition, count: Int) {
        let found = store.blocksFollowing(after, namespaceID: namespaceID, count: count)
        let admitted = found.map { admits?($0) ?? false }
        let now = monotonicNanoseconds()
        state.withLock { st in
            guard var stream = st.streams[process], stream.namespaceID == namespaceID else { return }
            stream.scanning = false
            var jobs: [Job] = []
            // The reader may have gone on while the log was searched: what it read already is behind it.
            let lastRead = st.lastRead[process]?.position
            for (located, admit) in zip(found, admitted) {
                stream.frontier = located.logPosition
                if let lastRead, !Self.precedes(lastRead, located.logPosition) { continue }
                stream.ahead.append(located.logPosition)
                let k = located.blockKey
                guard admit, !st.queued.contains(k), !tier.contains(k, namespaceID: namespaceID) else { continue }
                jobs.append(Job(namespace: located.namespace, namespaceID: namespaceID, name: "", key: k, source: .logOrder,
                                queuedAt: now, located: located))
                st.queued.insert(k)
            }
            // Reads that came while this search ran could not start another: top the run up now, unless
            // the log ended (fewer blocks found than asked for).
            let wanted = stream.window - stream.ahead.count
            if wanted > 0 && found.count == count {
                stream.scanning = true
                st.scans.append(.scan(process: process, namespaceID: namespaceID, after: stream.frontier, count: wanted))
            }
            st.streams[process] = stream
            // Newest guesses are served first: queue the farthest first, so the nearest is loaded first.
            for job in jobs.reversed() {
                st.speculative.append(job)
                if st.speculative.count > settings.speculativeQueueLimit { st.queued.remove(st.speculative.removeFirst().key) }
            }
        }
        wakeup.withLock { wakeup.broadcast() }
    }

    // MARK: Loading

    private func next() -> Work? {
        while true {
            let work = state.withLock { st -> Work?? in
                if st.stopping { return .some(nil) }
                let now = monotonicNanoseconds()
                while let job = st.hints.first {
                    st.hints.removeFirst()
                    st.queued.remove(job.key)
                    if let read = st.readAt[job.key], read >= job.queuedAt {
                        st.stats.late += 1
                        continue
                    }
                    if now > job.queuedAt && now - job.queuedAt > settings.hintDeadline {
                        st.stats.expired += 1
                        continue
                    }
                    return .some(.load(job))
                }
                // Searching the log is quick (memory, or one summary file) and feeds the loads below.
                if let scan = st.scans.popFirst() { return .some(scan) }
                // Newest guesses first: they belong to the reads happening now. A guess whose block was
                // opened since it was queued is dropped: its reader read it itself, and loading it now
                // would read it a second time for nobody (four readers of more blocks than the tier
                // holds left the workers a backlog of such loads that ran on for two passes after the
                // reads had gone to the page cache, taking the CPU the readers' copies needed).
                while let job = st.speculative.popLast() {
                    st.queued.remove(job.key)
                    if let read = st.readAt[job.key], read >= job.queuedAt {
                        st.stats.late += 1
                        continue
                    }
                    return .some(.load(job))
                }
                return nil
            }
            if let work { return work }
            wakeup.withLock { wakeup.wait(nanoseconds: 50_000_000) }
        }
    }

    private func work() {
        while let work = next() {
            let job: Job
            switch work {
            case .scan(let process, let namespaceID, let after, let count):
                scan(process: process, namespaceID: namespaceID, after: after, count: count)
                continue
            case .load(let j):
                job = j
            }
            if tier.contains(job.key, namespaceID: job.namespaceID) {
                state.withLock { $0.stats.alreadyResident += 1 }
                continue
            }
            do {
                guard let located = job.located ?? store.locate(namespace: job.namespace, key: job.name) else {
                    // Hinted but not here: another node may have computed it (the fetch puts it in the tier).
                    if job.source == .hint, let fetchMissing, fetchMissing(job.namespace, job.name) {
                        state.withLock { $0.stats.loadedFromCluster += 1 }
                        continue
                    }
                    throw StoreError.notFound
                }
                // Every map client of the namespace's domain reads what the tier holds: a hint from a
                // reader of a block others may not read must not put it there.
                if let admits, !admits(located) {
                    state.withLock { $0.stats.notAdmitted += 1 }
                    continue
                }
                throttle.acquire(located.storedLength)
                loading.begin(job.key)
                defer { loading.end(job.key) }
                let data = try store.read(located)
                let inserted = data.withBytes {
                    tier.insert(job.key, namespaceID: job.namespaceID, bytes: $0, checksum: data.checksum ?? Checksum.xxh3($0),
                                hinted: job.source == .hint, prefetched: true)
                }
                // Unlinked or replaced while it was read: do not keep the old bytes.
                if store.attributes(of: job.key)?.sequence != located.sequence { tier.remove(job.key, namespaceID: job.namespaceID) }
                state.withLock { st in
                    guard inserted else {
                        // Resident already (a read loaded it meanwhile) is not a failure.
                        if tier.contains(job.key, namespaceID: job.namespaceID) { st.stats.alreadyResident += 1 } else { st.stats.failed += 1 }
                        return
                    }
                    switch job.source {
                    case .hint: st.stats.loadedHinted += 1
                    case .chain: st.stats.loadedChain += 1
                    case .learned: st.stats.loadedLearned += 1
                    case .logOrder: st.stats.loadedLogOrder += 1
                    }
                }
            } catch StoreError.notFound {
                state.withLock { if job.source == .hint { $0.stats.missing += 1 } }
            } catch {
                state.withLock { $0.stats.failed += 1 }
            }
        }
    }

    /// The prefetcher's counters and settings; the DRAM tier fills in what became of the loaded blocks
    /// (`used`, `wasted`, `pending`).
    public func statistics() -> PrefetchReport {
        var s = state.withLock { st in
            var s = st.stats
            s.successorLinks = st.successors.count
            return s
        }
        s.enabled = true
        s.loaded = s.loadedHinted + s.loadedChain + s.loadedLearned + s.loadedLogOrder + s.loadedFromCluster
        s.workers = settings.workers
        s.bandwidthBytesPerSecond = settings.bandwidth
        s.depth = settings.depth
        return s
    }

}
