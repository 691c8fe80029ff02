import CTokenWarehouse
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A growable array of plain values in an anonymous mapping of its own, for arrays of gigabytes that
/// must grow without stopping the world: the store's index.
///
/// Why not `[Element]`: an array grows by allocating anew and copying every element, and the index grows
/// by a quarter at a time under the store's lock: 113 ms at 2.6M blocks (`twctl bench store`, an
/// instrumented build), about 43 ns a block, so seconds at 100M while every commit and lookup waits.
/// This one grows with `mremap`, which moves page-table entries instead of bytes.
///
/// Value semantics by copy-on-write of its storage, like `Array`; inlinable, so the index's loops are
/// specialized as they were over arrays. Thread-safety: as `Array`.
@frozen
public struct MappedArray<Element: BitwiseCopyable>: RandomAccessCollection {
    public typealias Index = Int

    @usableFromInline
    final class Storage: @unchecked Sendable {
        // Safe: a storage is only reached through its arrays, whose owners serialise access (as for `Array`).
        @usableFromInline @exclusivity(unchecked) var base: UnsafeMutableRawPointer?
        @usableFromInline @exclusivity(unchecked) var mappedBytes = 0
        @usableFromInline @exclusivity(unchecked) var count = 0

        @usableFromInline
        init(capacity: Int) {
            if capacity > 0 { grow(to: capacity) }
        }

        deinit {
            if let base { munmap(base, mappedBytes) }
            MappedArrayStatistics.bytes.subtract(mappedBytes, ordering: .relaxed)
        }

        @inlinable var capacity: Int { mappedBytes / MemoryLayout<Element>.stride }

        /// Grows the mapping to hold at least `capacity` elements (whole pages); keeps the contents.
        @usableFromInline
        func grow(to capacity: Int) {
            let page = Int(sysconf(Int32(_SC_PAGESIZE)))
            let bytes = (capacity * MemoryLayout<Element>.stride + page - 1) / page * page
            guard bytes > mappedBytes else { return }
            let moved: UnsafeMutableRawPointer?
            if let base {
                moved = tw_mremap_maymove(base, mappedBytes, bytes)
            } else {
                moved = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            }
            guard let moved, moved != MAP_FAILED else {
                fatalError("MappedArray: cannot map \(bytes) bytes: \(String(cString: strerror(errno)))")
            }
            MappedArrayStatistics.bytes.add(bytes - mappedBytes, ordering: .relaxed)
            // Bound once, so typed access (`withUnsafeBufferPointer`) and raw loads and stores agree.
            moved.bindMemory(to: Element.self, capacity: bytes / MemoryLayout<Element>.stride)
            base = moved
            mappedBytes = bytes
        }

        @usableFromInline
        func copy() -> Storage {
            let other = Storage(capacity: capacity)
            if let base, let target = other.base { target.copyMemory(from: base, byteCount: count * MemoryLayout<Element>.stride) }
            other.count = count
            return other
        }
    }

    @usableFromInline var storage: Storage

    @inlinable public init() { storage = Storage(capacity: 0) }

    @inlinable
    public init(repeating value: Element, count: Int) {
        storage = Storage(capacity: count)
        storage.base?.assumingMemoryBound(to: Element.self).initialize(repeating: value, count: count)
        storage.count = count
    }

    /// `count` elements whose bytes `fill` writes (all of them: a snapshot read back).
    @inlinable
    public init(count: Int, fill: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        storage = Storage(capacity: count)
        try fill(UnsafeMutableRawBufferPointer(start: storage.base, count: count * MemoryLayout<Element>.stride))
        storage.count = count
    }

    @inlinable public var startIndex: Int { 0 }
    @inlinable public var endIndex: Int { storage.count }
    @inlinable public var count: Int { storage.count }
    @inlinable public var capacity: Int { storage.capacity }

    @inlinable
    public subscript(i: Int) -> Element {
        get {
            precondition(i >= 0 && i < storage.count, "MappedArray index out of range")
            return storage.base.unsafelyUnwrapped.load(fromByteOffset: i * MemoryLayout<Element>.stride, as: Element.self)
        }
        set {
            precondition(i >= 0 && i < storage.count, "MappedArray index out of range")
            makeUnique()
            storage.base.unsafelyUnwrapped.storeBytes(of: newValue, toByteOffset: i * MemoryLayout<Element>.stride, as: Element.self)
        }
    }

    @inlinable
    public mutating func append(_ value: Element) {
        makeUnique()
        if storage.count == storage.capacity { storage.grow(to: Swift.max(16, storage.count * 2)) }
        storage.base.unsafelyUnwrapped.storeBytes(of: value, toByteOffset: storage.count * MemoryLayout<Element>.stride, as: Element.self)
        storage.count += 1
    }

    @inlinable
    public mutating func reserveCapacity(_ n: Int) {
        makeUnique()
        storage.grow(to: n)
    }

    /// The elements' bytes.
    @inlinable
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: storage.base, count: storage.count * MemoryLayout<Element>.stride))
    }

    /// The elements, for loops that go through every one of them (no bounds check or uniqueness test each).
    @inlinable
    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Element>) throws -> R) rethrows -> R {
        let typed = storage.base?.assumingMemoryBound(to: Element.self)
        return try body(UnsafeBufferPointer(start: typed, count: storage.count))
    }

    @inlinable
    public mutating func withUnsafeMutableBufferPointer<R>(_ body: (UnsafeMutableBufferPointer<Element>) throws -> R) rethrows -> R {
        makeUnique()
        let typed = storage.base?.assumingMemoryBound(to: Element.self)
        return try body(UnsafeMutableBufferPointer(start: typed, count: storage.count))
    }

    @inlinable
    mutating func makeUnique() {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
    }
}

/// Bytes mapped by all `MappedArray`s: memory figures add it to the heap's count (`heapBytesInUse` sees
/// only `malloc`'s).
public enum MappedArrayStatistics {
    static let bytes = Atomic<Int>(0)
    public static var mappedBytes: Int { bytes.load(ordering: .relaxed) }
}
