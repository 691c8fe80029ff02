import BlockStore
import DRAMTier
import Platform

/// Loads hinted blocks (`MOUNT/.tw/prefetch`, `Client.prefetch`, `twctl prefetch`) from NVMe into the
/// DRAM tier in the background, before engines read them.
///
/// Bounded: a queue of at most `queueLimit` hints (more are dropped and counted) served by `workers`
/// threads, never by request threads. Thread-safety: the queue is behind a condition lock.
public final class HintLoader: Sendable {
    public struct Statistics: Sendable {
        public var hinted = 0
        public var loaded = 0
        public var alreadyResident = 0
        public var missing = 0
        public var dropped = 0
        public var failed = 0
    }

    let store: BlockStore
    let tier: DRAMTier
    let queueLimit: Int
    private let lock = ConditionLock()
    private let queue = Locked<(items: [(String, String)], head: Int, stopping: Bool)>(([], 0, false))
    private let stats = Locked(Statistics())
    private let threads = Locked<[BackgroundThread]>([])

    let workers: Int

    public init(store: BlockStore, tier: DRAMTier, workers: Int = 2, queueLimit: Int = 65536) {
        self.store = store
        self.tier = tier
        self.queueLimit = queueLimit
        self.workers = workers
    }

    /// Starts the worker threads (after the daemon has forked into the background).
    public func start() {
        let started = (0..<workers).map { i in BackgroundThread(name: "tw-hint\(i)") { [self] in work() } }
        threads.withLock { $0 = started }
    }

    /// Queues hints, in order; returns how many were accepted.
    @discardableResult
    public func hint(_ blocks: [(namespace: String, name: String)]) -> Int {
        let accepted = queue.withLock { q -> Int in
            let room = max(0, queueLimit - (q.items.count - q.head))
            q.items.append(contentsOf: blocks.prefix(room).map { ($0.namespace, $0.name) })
            return min(room, blocks.count)
        }
        stats.withLock {
            $0.hinted += blocks.count
            $0.dropped += blocks.count - accepted
        }
        lock.withLock { lock.broadcast() }
        return accepted
    }

    /// Parses `NAMESPACE<TAB or space>NAME` lines.
    public static func parse(_ bytes: [UInt8]) -> [(namespace: String, name: String)] {
        String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { line in
            let parts = line.split(maxSplits: 1, whereSeparator: { $0 == "\t" || $0 == " " })
            guard parts.count == 2 else { return nil }
            return (String(parts[0]), String(parts[1]).trimmingTrailingCarriageReturn())
        }
    }

    private func next() -> (String, String)? {
        while true {
            let item = queue.withLock { q -> (String, String)?? in
                if q.stopping { return .some(nil) }
                guard q.head < q.items.count else { return nil }
                let x = q.items[q.head]
                q.head += 1
                if q.head > 4096 && q.head * 2 > q.items.count {
                    q.items.removeFirst(q.head)
                    q.head = 0
                }
                return .some(x)
            }
            if let item { return item }
            lock.withLock { lock.wait(nanoseconds: 100_000_000) }
        }
    }

    private func work() {
        while let (namespace, name) = next() {
            let key = BlockKey(namespace: namespace, key: name)
            if tier.contains(key) {
                stats.withLock { $0.alreadyResident += 1 }
                continue
            }
            do {
                guard let located = store.locate(namespace: namespace, key: name) else { throw StoreError.notFound }
                let data = try store.read(located)
                let inserted = data.withBytes { tier.insert(key, bytes: $0, checksum: data.checksum ?? Checksum.xxh3($0), hinted: true) }
                // Unlinked or replaced while it was read: do not keep the old bytes.
                if store.attributes(namespace: namespace, key: name)?.sequence != located.sequence { tier.remove(key) }
                stats.withLock { if inserted { $0.loaded += 1 } else { $0.failed += 1 } }
            } catch StoreError.notFound {
                stats.withLock { $0.missing += 1 }
            } catch {
                stats.withLock { $0.failed += 1 }
            }
        }
    }

    public func statistics() -> Statistics { stats.withLock { $0 } }

    public func stop() {
        queue.withLock { $0.stopping = true }
        lock.withLock { lock.broadcast() }
        for t in threads.withLock({ $0 }) { t.join() }
    }
}

extension String {
    func trimmingTrailingCarriageReturn() -> String { hasSuffix("\r") ? String(dropLast()) : self }
}
