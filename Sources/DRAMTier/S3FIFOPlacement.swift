import DequeModule

/// What stays in the DRAM tier. `ResidencyPolicy` is what a trace simulator drives; `S3FIFOPlacement`
/// is the policy the daemon runs (it also decides where each block's bytes go), `LRUResidency` the
/// baseline it is compared against (`twctl bench dram-policy`).
public protocol ResidencyPolicy {
    associatedtype Key: Hashable
    var name: String { get }
    /// Reads `key`: returns whether it was resident, and makes it resident if the policy admits it.
    mutating func access(_ key: Key, size: Int) -> Bool
}

/// S3-FIFO (Yang et al., SOSP'23) over two ring buffers of bytes: a small FIFO for new blocks and a main
/// FIFO, plus a ghost list of keys recently dropped from the small one. Blocks read only once leave
/// from the small ring without touching the main one; blocks read again move to the main ring, where a
/// block read since it was placed is copied to the head again (at most three times in a row).
///
/// It places blocks at byte offsets in [0, capacity) and reports every eviction and move to a handler
/// *as it happens*, before the space is reused, so the DRAM tier can unpublish or move the bytes.
/// Pinned blocks are never evicted or moved: an insertion that would need that fails instead.
///
/// Thread-safety: none; the DRAM tier holds its lock around every call.
public struct S3FIFOPlacement<Key: Hashable & Sendable>: ResidencyPolicy, Sendable {
    public enum Queue: Sendable { case small, main }

    public struct Item: Sendable {
        public var offset: Int
        /// Bytes reserved (aligned).
        public var size: Int
        /// Bytes of the block.
        public var length: Int
        public var queue: Queue
        public var frequency: UInt8 = 0
    }

    public enum Event {
        case evicted(Key, Item)
        case moved(Key, from: Item, to: Item)
    }

    struct Ring: Sendable {
        let start: Int
        let end: Int
        var head: Int
        var fifo = Deque<(Key, Int)>()  // (key, offset) in placement order

        init(start: Int, end: Int) {
            self.start = start
            self.end = end
            head = start
        }
    }

    public let capacity: Int
    public let alignment: Int
    public var name: String { "S3-FIFO" }
    public private(set) var items: [Key: Item] = [:]
    /// Bytes of the blocks placed (their lengths, not the aligned sizes).
    public private(set) var residentBytes = 0
    private var small: Ring
    private var main: Ring
    private var ghost = Deque<Key>()
    private var ghostSet = Set<Key>()
    public private(set) var promotions = 0
    public private(set) var reinsertions = 0
    public private(set) var evictions = 0

    /// - Parameters: capacity: bytes to place in; smallShare: the small ring's part (10% in the paper).
    /// Ghost entries kept, as a multiple of the resident blocks.
    public let ghostFactor: Double

    /// Defaults measured on the Mooncake trace with `twctl bench dram-policy` (docs/benchmarks.md): the
    /// paper's 10% small queue and 1x ghost lose to LRU on KV-cache traces, whose blocks come back
    /// after a whole conversation turn rather than soon.
    public static var defaultSmallShare: Double { 0.3 }
    public static var defaultGhostFactor: Double { 4 }

    public init(capacity: Int, smallShare: Double = Self.defaultSmallShare, alignment: Int = 1,
                ghostFactor: Double = Self.defaultGhostFactor) {
        self.alignment = alignment
        self.ghostFactor = ghostFactor
        self.capacity = capacity
        let smallSize = max(alignment, (Int(Double(capacity) * smallShare) / alignment) * alignment)
        small = Ring(start: 0, end: smallSize)
        main = Ring(start: smallSize, end: capacity)
    }

    private func aligned(_ n: Int) -> Int { max(alignment, (n + alignment - 1) / alignment * alignment) }

    public func item(_ key: Key) -> Item? { items[key] }

    public mutating func recordHit(_ key: Key) {
        if let f = items[key]?.frequency, f < 3 { items[key]!.frequency = f + 1 }
    }

    /// Forgets a block (unlinked); its space is reclaimed when its ring reaches it.
    public mutating func remove(_ key: Key) {
        if let item = items.removeValue(forKey: key) { residentBytes -= item.length }
    }

    /// Evicts the oldest block of the small ring, or of the main ring when the small one is empty or
    /// its oldest is pinned, reporting it to `handle`; false when nothing can be evicted. The tier set
    /// calls it to keep several tiers within one memory budget.
    public mutating func evictOldest(isPinned: (Key) -> Bool, handle: (Event) -> Void) -> Bool {
        for q in [Queue.small, .main] {
            guard let (key, item) = oldest(q), !isPinned(key) else { continue }
            if q == .small { small.fifo.removeFirst() } else { main.fifo.removeFirst() }
            dropEvicted(key, item, fromSmall: q == .small, handle: handle)
            return true
        }
        return false
    }

    private mutating func dropEvicted(_ key: Key, _ item: Item, fromSmall: Bool, handle: (Event) -> Void) {
        items[key] = nil
        residentBytes -= item.length
        handle(.evicted(key, item))
        evictions += 1
        if fromSmall {
            ghost.append(key)
            ghostSet.insert(key)
            while ghost.count > max(1024, Int(Double(items.count) * ghostFactor)) { ghostSet.remove(ghost.removeFirst()) }
        }
    }

    /// Places a new block of `length` bytes. Returns its item, or nil when it cannot be placed without
    /// evicting or moving a pinned block (or is larger than a ring).
    ///
    /// - Parameters:
    ///   - isPinned: whether a block may not be evicted or moved now.
    ///   - extraHits: hits counted outside the policy (the map's counters), read when a block reaches a
    ///     ring's tail.
    ///   - handle: called for each eviction and move, in order, before the space is reused.
    ///   - expected: the block was asked for ahead of its use (a prefetch hint): it goes to the main
    ///     ring, where only blocks not read since they were placed make room for it.
    public mutating func insert(_ key: Key, length: Int, expected: Bool = false, isPinned: (Key) -> Bool = { _ in false },
                                extraHits: (Key) -> Int = { _ in 0 }, handle: (Event) -> Void = { _ in }) -> Item? {
        if let existing = items[key] { return existing }
        let size = aligned(length)
        var queue: Queue = .small
        if expected || ghostSet.contains(key) || size > small.end - small.start { queue = .main }
        if size > main.end - main.start { return nil }
        guard let offset = makeRoom(queue, size: size, isPinned: isPinned, extraHits: extraHits, handle: handle) else { return nil }
        if queue == .main, ghostSet.remove(key) != nil {}
        let item = Item(offset: offset, size: size, length: length, queue: queue)
        place(key, item)
        return item
    }

    private mutating func place(_ key: Key, _ item: Item) {
        if let old = items.updateValue(item, forKey: key) { residentBytes -= old.length }
        residentBytes += item.length
        if item.queue == .small {
            small.fifo.append((key, item.offset))
            small.head = item.offset + item.size
        } else {
            main.fifo.append((key, item.offset))
            main.head = item.offset + item.size
        }
    }

    private func ring(_ q: Queue) -> Ring { q == .small ? small : main }

    /// The oldest live block of a ring, dropping stale queue entries (removed or moved blocks).
    private mutating func oldest(_ q: Queue) -> (Key, Item)? {
        while true {
            let first = q == .small ? small.fifo.first : main.fifo.first
            guard let (key, offset) = first else { return nil }
            if let item = items[key], item.queue == q, item.offset == offset { return (key, item) }
            if q == .small { small.fifo.removeFirst() } else { main.fifo.removeFirst() }
        }
    }

    /// Where `size` bytes fit at the ring's head without touching live blocks, if anywhere.
    private mutating func freeOffset(_ q: Queue, size: Int) -> Int? {
        let r = ring(q)
        guard let (_, tail) = oldest(q) else {
            if q == .small { small.head = small.start } else { main.head = main.start }
            return r.start + size <= r.end ? r.start : nil
        }
        // Live blocks run from the tail forward to the head, wrapping at the end; head == tail means full.
        if r.head > tail.offset {
            if r.end - r.head >= size { return r.head }
            if tail.offset - r.start >= size { return r.start }
            return nil
        }
        return tail.offset - r.head >= size ? r.head : nil
    }

    private mutating func makeRoom(_ q: Queue, size: Int, isPinned: (Key) -> Bool, extraHits: (Key) -> Int,
                                   handle: (Event) -> Void) -> Int? {
        // At most one lap of second chances per call: blocks hit on every lap (or counters a client
        // keeps refilling) must not keep the loop, and the tier's lock, forever.
        var secondChances = (q == .small ? small.fifo.count : main.fifo.count) + 1
        while true {
            if let offset = freeOffset(q, size: size) { return offset }
            guard let (key, item) = oldest(q), !isPinned(key) else { return nil }
            let frequency = Int(item.frequency) + extraHits(key)
            if q == .small { small.fifo.removeFirst() } else { main.fifo.removeFirst() }
            if q == .small {
                if frequency > 0, let to = freeOffsetInMain(size: item.size, isPinned: isPinned, extraHits: extraHits, handle: handle) {
                    var moved = item
                    moved.offset = to
                    moved.queue = .main
                    moved.frequency = 0
                    handle(.moved(key, from: item, to: moved))
                    place(key, moved)
                    promotions += 1
                } else {
                    dropEvicted(key, item, fromSmall: true, handle: handle)
                }
            } else {
                secondChances -= 1
                if frequency > 0, secondChances > 0, let to = freeOffset(.main, size: item.size) {
                    var moved = item
                    moved.offset = to
                    moved.frequency = UInt8(min(3, frequency) - 1)
                    handle(.moved(key, from: item, to: moved))
                    place(key, moved)
                    reinsertions += 1
                } else {
                    dropEvicted(key, item, fromSmall: false, handle: handle)
                }
            }
        }
    }

    private mutating func freeOffsetInMain(size: Int, isPinned: (Key) -> Bool, extraHits: (Key) -> Int,
                                           handle: (Event) -> Void) -> Int? {
        makeRoom(.main, size: size, isPinned: isPinned, extraHits: extraHits, handle: handle)
    }

    public mutating func access(_ key: Key, size: Int) -> Bool {
        if items[key] != nil {
            recordHit(key)
            return true
        }
        _ = insert(key, length: size)
        return false
    }
}

/// Least-recently-used residency by bytes: the baseline S3-FIFO is measured against.
public struct LRUResidency<Key: Hashable>: ResidencyPolicy {
    public let capacity: Int
    public var name: String { "LRU" }
    private var used = 0
    private var nodes: [Key: Int] = [:]
    private var keys: [Key?] = []
    private var sizes: [Int] = []
    private var prev: [Int] = []
    private var next: [Int] = []
    private var free: [Int] = []
    private var head = -1  // most recent
    private var tail = -1  // least recent

    public init(capacity: Int) { self.capacity = capacity }

    private mutating func unlink(_ i: Int) {
        if prev[i] >= 0 { next[prev[i]] = next[i] } else { head = next[i] }
        if next[i] >= 0 { prev[next[i]] = prev[i] } else { tail = prev[i] }
    }

    private mutating func pushFront(_ i: Int) {
        prev[i] = -1
        next[i] = head
        if head >= 0 { prev[head] = i }
        head = i
        if tail < 0 { tail = i }
    }

    public mutating func access(_ key: Key, size: Int) -> Bool {
        if let i = nodes[key] {
            unlink(i)
            pushFront(i)
            return true
        }
        guard size <= capacity else { return false }
        while used + size > capacity, tail >= 0 {
            let i = tail
            unlink(i)
            used -= sizes[i]
            nodes[keys[i]!] = nil
            keys[i] = nil
            free.append(i)
        }
        let i: Int
        if let f = free.popLast() {
            i = f
            keys[i] = key
            sizes[i] = size
        } else {
            i = keys.count
            keys.append(key)
            sizes.append(size)
            prev.append(-1)
            next.append(-1)
        }
        nodes[key] = i
        used += size
        pushFront(i)
        return false
    }
}
