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
    /// Per bucket: its first slot. A power of two, at least as many as live slots.
    private var buckets = MappedArray<UInt32>(repeating: BlockIndex.none, count: 1024)
    private var freeList = BlockIndex.none
    private(set) var count = 0

    static let none = UInt32.max
    /// `IndexEntry.segment` of a free slot (segment ids never reach it).
    private static let freeMark = UInt32.max

    private var mask: Int { buckets.count - 1 }

    @inline(__always)
    private func bucket(of key: BlockKey) -> Int { Self.bucket(of: key, mask: mask) }

    @inline(__always)
    private static func bucket(of key: BlockKey, mask: Int) -> Int { Int(truncatingIfNeeded: key.low ^ (key.high >> 17)) & mask }

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
        if count + 1 > buckets.count { rehash(buckets: buckets.count * 2) }
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
        var b = buckets.count
        while b < n { b *= 2 }
        if b > buckets.count { rehash(buckets: b) }
    }

    /// Every live slot into `n` buckets (under the store's lock: one pass over the slab, through pointers).
    private mutating func rehash(buckets n: Int) {
        var fresh = MappedArray<UInt32>(repeating: Self.none, count: n)
        let mask = n - 1
        slots.withUnsafeBufferPointer { s in
            next.withUnsafeMutableBufferPointer { links in
                fresh.withUnsafeMutableBufferPointer { heads in
                    for i in 0..<s.count where s[i].entry.segment != Self.freeMark {
                        let b = Self.bucket(of: s[i].key, mask: mask)
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
        let bucketFunctionVersion: UInt64 = 1
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
              shape.buckets >= 1024, shape.buckets & (shape.buckets - 1) == 0,
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
