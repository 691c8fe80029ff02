import Platform
import WarehouseCore

/// The in-memory index: every live block's `BlockKey` and `IndexEntry`, in a slab of stable slots
/// found through chained buckets (docs/benchmarks.md, "Index memory").
///
/// Why not a `Dictionary`: a dictionary keeps its load factor between 3/8 and 3/4, so its storage is
/// 1.3 to 2.7 times the entries (at 1M blocks, 2M slots of 56 bytes: 117 bytes a block), and its
/// positions move when it grows, so a directory had to list its blocks by their 16-byte keys. Here the
/// slab grows by a quarter at a time (in place: `MappedArray`), the buckets are 4 bytes each, and a
/// slot's number never changes while its block lives: directories list their blocks by 4-byte slot
/// numbers (`DirectoryTree`). About 66 bytes a block for the index, plus 4 in its directory.
///
/// The buckets grow by linear hashing: one bucket is split for each block added past one block a
/// bucket, so the index never stops to rehash every block at once (a doubling rehash stopped the
/// store's commits and lookups for 36 ms at 2M blocks, about 17 ns a block: 1.7 s at 100M).
///
/// Thread-safety: none; it lives in the store's state and its lock guards it.
struct BlockIndex: Sequence {
    struct Slot {
        var key: BlockKey
        var entry: IndexEntry
    }

    // In mappings of their own (`MappedArray`): they grow without copying, where a Swift array's growth
    // by a quarter copied the whole slab under the store's lock (113 ms at 2.6M blocks).
    private var slots = MappedArray<Slot>()
    /// Per slot: the next slot of its bucket's chain, or of the free list.
    private var next = MappedArray<UInt32>()
    /// Per bucket: its first slot. At least `minimumBuckets`, and at least as many as live slots.
    private var buckets = MappedArray<UInt32>(repeating: BlockIndex.none, count: BlockIndex.minimumBuckets)
    private var freeList = BlockIndex.none
    private(set) var count = 0

    static let none = UInt32.max
    static let minimumBuckets = 1024
    /// `IndexEntry.segment` of a free slot (segment ids never reach it).
    private static let freeMark = UInt32.max

    @inline(__always)
    private func bucket(of key: BlockKey) -> Int { Self.bucket(of: key, buckets: buckets.count) }

    @inline(__always)
    private static func hash(_ key: BlockKey) -> Int { Int(truncatingIfNeeded: key.low ^ (key.high >> 17)) }

    /// The bucket of `key` among `n` buckets (linear hashing). With `low` the largest power of two not
    /// above `n`, buckets `0..<n - low` have been split into themselves and their images `low..<n`, so
    /// their keys are placed by one more bit of the hash; the rest by `low - 1`'s bits.
    @inline(__always)
    private static func bucket(of key: BlockKey, buckets n: Int) -> Int {
        let low = 1 << (Int.bitWidth - 1 - n.leadingZeroBitCount)
        let h = hash(key)
        let b = h & (low - 1)
        return b < n - low ? h & (2 * low - 1) : b
    }

    /// The slot holding `key`, if it is in the index.
    func slot(of key: BlockKey) -> UInt32? {
        var s = buckets[bucket(of: key)]
        while s != Self.none {
            if slots[Int(s)].key == key { return s }
            s = next[Int(s)]
        }
        return nil
    }

    /// The key and entry in slot `s` (a slot a directory lists; nil when it is free).
    func entry(atSlot s: UInt32) -> (key: BlockKey, entry: IndexEntry)? {
        guard Int(s) < slots.count, slots[Int(s)].entry.segment != Self.freeMark else { return nil }
        return (slots[Int(s)].key, slots[Int(s)].entry)
    }

    subscript(key: BlockKey) -> IndexEntry? {
        get { slot(of: key).map { slots[Int($0)].entry } }
        set {
            if let newValue {
                if let s = slot(of: key) { slots[Int(s)].entry = newValue } else { _ = insert(key, newValue) }
            } else {
                _ = remove(key)
            }
        }
    }

    /// Adds `key` (not in the index); returns its slot.
    @discardableResult
    mutating func insert(_ key: BlockKey, _ entry: IndexEntry) -> UInt32 {
        precondition(entry.segment != Self.freeMark)
        if count + 1 > buckets.count { splitOneBucket() }
        let s: UInt32
        if freeList != Self.none {
            s = freeList
            freeList = next[Int(s)]
            slots[Int(s)] = Slot(key: key, entry: entry)
        } else {
            if slots.count == slots.capacity {
                // A quarter more at a time: less slack than doubling (the mapping grows in place).
                let more = Swift.max(1024, slots.count / 4)
                slots.reserveCapacity(slots.count + more)
                next.reserveCapacity(slots.count + more)
            }
            s = UInt32(slots.count)
            precondition(s != Self.none, "more than 4 billion blocks")
            slots.append(Slot(key: key, entry: entry))
            next.append(Self.none)
        }
        let b = bucket(of: key)
        next[Int(s)] = buckets[b]
        buckets[b] = s
        count += 1
        return s
    }

    /// Removes `key`; returns its slot and entry.
    @discardableResult
    mutating func remove(_ key: BlockKey) -> (slot: UInt32, entry: IndexEntry)? {
        let b = bucket(of: key)
        var previous = Self.none
        var s = buckets[b]
        while s != Self.none {
            if slots[Int(s)].key == key {
                if previous == Self.none { buckets[b] = next[Int(s)] } else { next[Int(previous)] = next[Int(s)] }
                let entry = slots[Int(s)].entry
                slots[Int(s)].entry.segment = Self.freeMark
                next[Int(s)] = freeList
                freeList = s
                count -= 1
                return (s, entry)
            }
            previous = s
            s = next[Int(s)]
        }
        return nil
    }

    mutating func reserveCapacity(_ n: Int) {
        if n > slots.capacity {
            slots.reserveCapacity(n)
            next.reserveCapacity(n)
        }
        if n > buckets.count { rehash(buckets: n) }
    }

    /// Adds one bucket: the next bucket in order (`n - low`) is split, each of its blocks staying or
    /// moving to the new bucket (`n`) by one more bit of its hash. A chain of about one slot: constant
    /// work per insert where a doubling rehashed every block at once.
    private mutating func splitOneBucket() {
        let n = buckets.count
        let low = 1 << (Int.bitWidth - 1 - n.leadingZeroBitCount)
        let split = n - low
        let mask = 2 * low - 1
        buckets.append(Self.none)
        var s = buckets[split]
        var stay = Self.none
        var move = Self.none
        while s != Self.none {
            let following = next[Int(s)]
            if Self.hash(slots[Int(s)].key) & mask == split {
                next[Int(s)] = stay
                stay = s
            } else {
                next[Int(s)] = move
                move = s
            }
            s = following
        }
        buckets[split] = stay
        buckets[n] = move
    }

    /// Every live slot into `n` buckets at once (a start that knows how many blocks come: one pass over
    /// the slab, through pointers, instead of a split per block).
    private mutating func rehash(buckets n: Int) {
        var fresh = MappedArray<UInt32>(repeating: Self.none, count: n)
        slots.withUnsafeBufferPointer { s in
            next.withUnsafeMutableBufferPointer { links in
                fresh.withUnsafeMutableBufferPointer { heads in
                    for i in 0..<s.count where s[i].entry.segment != Self.freeMark {
                        let b = Self.bucket(of: s[i].key, buckets: n)
                        links[i] = heads[b]
                        heads[b] = UInt32(i)
                    }
                }
            }
        }
        buckets = fresh
    }

    /// Calls `body` with the slot and entry of every live block, in slot order (recovery's tally: the
    /// slot comes with the entry instead of a second hash probe for it).
    func forEachLive(_ body: (UInt32, IndexEntry) throws -> Void) rethrows {
        for i in slots.indices where slots[i].entry.segment != Self.freeMark {
            try body(UInt32(i), slots[i].entry)
        }
    }

    /// Live entries, in slot order.
    struct Iterator: IteratorProtocol {
        let slots: MappedArray<Slot>
        var i = 0
        mutating func next() -> (key: BlockKey, value: IndexEntry)? {
            while i < slots.count {
                defer { i += 1 }
                if slots[i].entry.segment != BlockIndex.freeMark { return (slots[i].key, slots[i].entry) }
            }
            return nil
        }
    }

    func makeIterator() -> Iterator { Iterator(slots: slots) }

    var underestimatedCount: Int { count }
}

/// The index's arrays as they lie in memory, written and read back whole by `IndexSnapshot` (a clean stop
/// and the next start): loading them is a sequential read, where rebuilding them costs a hash probe
/// and a cache miss or two per block.
extension BlockIndex {
    /// Identifies the arrays' in-memory layout and the bucket function: a snapshot written by a build
    /// whose layout or hashing differs is not loaded (the log is read instead).
    static var layoutTag: UInt64 {
        let bucketFunctionVersion: UInt64 = 2  // 2: linear hashing
        var tag = bucketFunctionVersion
        let figures: [Int] = [
            MemoryLayout<Slot>.stride, MemoryLayout<Slot>.offset(of: \Slot.key) ?? -1, MemoryLayout<Slot>.offset(of: \Slot.entry) ?? -1,
            MemoryLayout<BlockKey>.stride, MemoryLayout<IndexEntry>.stride,
            MemoryLayout<IndexEntry>.offset(of: \IndexEntry.segment) ?? -1, MemoryLayout<IndexEntry>.offset(of: \IndexEntry.page) ?? -1,
            MemoryLayout<IndexEntry>.offset(of: \IndexEntry.storedLength) ?? -1, MemoryLayout<IndexEntry>.offset(of: \IndexEntry.logicalLength) ?? -1,
            MemoryLayout<IndexEntry>.offset(of: \IndexEntry.commitSeconds) ?? -1, MemoryLayout<IndexEntry>.offset(of: \IndexEntry.directory) ?? -1,
            MemoryLayout<IndexEntry>.offset(of: \IndexEntry.sequence) ?? -1, MemoryLayout<IndexEntry>.offset(of: \IndexEntry.namespaceID) ?? -1,
            MemoryLayout<IndexEntry>.offset(of: \IndexEntry.attributes) ?? -1, MemoryLayout<IndexEntry>.offset(of: \IndexEntry.flags) ?? -1,
            MemoryLayout<IndexEntry>.offset(of: \IndexEntry.headerPageCount) ?? -1,
        ]
        for f in figures { tag = tag &* 1_000_003 &+ UInt64(bitPattern: Int64(f)) }
        return tag
    }

    struct Shape: Equatable {
        var slots: Int
        var buckets: Int
        var freeList: UInt32
        var count: Int
    }

    var shape: Shape { Shape(slots: slots.count, buckets: buckets.count, freeList: freeList, count: count) }

    /// The slab, the chain links and the buckets as raw bytes, in that order.
    func withStorage<R>(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try slots.withUnsafeBytes { s in try next.withUnsafeBytes { n in try buckets.withUnsafeBytes { b in try body(s, n, b) } } }
    }

    /// An index whose arrays `fill` reads in (the slab, the chain links, the buckets, each called once
    /// with its exact byte size). Nil when the shape is impossible; the caller checked the bytes'
    /// checksum, and `linksStayInside` checks the links.
    init?(shape: Shape, fill: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        guard _isPOD(Slot.self), shape.slots >= 0, shape.slots < Int(Self.none), shape.count >= 0, shape.count <= shape.slots,
              shape.buckets >= Self.minimumBuckets, shape.buckets >= shape.count,
              shape.freeList == Self.none || Int(shape.freeList) < shape.slots else { return nil }
        slots = try MappedArray(count: shape.slots, fill: fill)
        next = try MappedArray(count: shape.slots, fill: fill)
        buckets = try MappedArray(count: shape.buckets, fill: fill)
        freeList = shape.freeList
        count = shape.count
    }

    /// Whether every link stays inside the slab (a snapshot that passed its checksum but does not hold
    /// together is not used; the caller counts the live slots as it walks them).
    func linksStayInside() -> Bool {
        let n = UInt32(slots.count)
        var outside = false
        for x in next { outside = outside || (x != Self.none && x >= n) }
        for x in buckets { outside = outside || (x != Self.none && x >= n) }
        return !outside
    }
}
