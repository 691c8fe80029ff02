import CTokenWarehouse
#if canImport(Glibc)
import Glibc
#endif

/// Copies `count` bytes into memory that this core will not read soon (the DRAM tier's space), with
/// stores that bypass the cache (`tw_copy_streaming`): about twice `memcpy`'s rate into cold memory.
/// The copy is complete and ordered before any store that follows (a fence), so publishing the bytes
/// afterwards with a release store is safe.
public func copyBypassingCache(to destination: UnsafeMutableRawPointer, from source: UnsafeRawPointer, count: Int) {
    tw_copy_streaming(destination, source, count)
}

/// A page-aligned heap buffer of fixed capacity, freed when the last reference goes away.
///
/// Aligned so it can take `O_DIRECT` reads and be handed to the kernel without bounce copies.
/// Thread-safety: `@unchecked Sendable` because its owner fills it before publishing it, and
/// afterwards every holder only reads.
public final class AlignedBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let capacity: Int

    public static let alignment = 4096

    /// Allocates `capacity` bytes (rounded up to a page), uninitialised.
    public init(capacity: Int) {
        let rounded = max(AlignedBuffer.alignment, (capacity + AlignedBuffer.alignment - 1) & ~(AlignedBuffer.alignment - 1))
        var raw: UnsafeMutableRawPointer?
        let rc = posix_memalign(&raw, AlignedBuffer.alignment, rounded)
        precondition(rc == 0 && raw != nil, "out of memory allocating \(rounded) bytes")
        pointer = raw!
        self.capacity = rounded
    }

    deinit { free(pointer) }

    /// The bytes `[offset, offset + count)` as a read-only buffer.
    public func bytes(_ offset: Int = 0, count: Int) -> UnsafeRawBufferPointer {
        precondition(offset >= 0 && count >= 0 && offset + count <= capacity)
        return UnsafeRawBufferPointer(start: pointer + offset, count: count)
    }

    /// The bytes `[offset, offset + count)` as a writable buffer.
    public func mutableBytes(_ offset: Int = 0, count: Int) -> UnsafeMutableRawBufferPointer {
        precondition(offset >= 0 && count >= 0 && offset + count <= capacity)
        return UnsafeMutableRawBufferPointer(start: pointer + offset, count: count)
    }
}

/// A reserved range of anonymous virtual memory; pages are only backed once touched.
///
/// Lets a writer stage a block of unknown final size (up to the maximum) at any offset without
/// ever reallocating or copying. Thread-safety: concurrent writers of disjoint ranges are safe.
public final class ReservedRegion: @unchecked Sendable {
    // Safe to share: the mapping lives until deinit; callers coordinate the ranges they touch.
    public let pointer: UnsafeMutableRawPointer
    public let capacity: Int

    public init(capacity: Int) throws(SystemError) {
        let size = (capacity + 4095) & ~4095
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              p != MAP_FAILED else {
            throw SystemError.last("mmap")
        }
        pointer = p
        self.capacity = size
    }

    deinit { munmap(pointer, capacity) }

    /// Gives the pages beyond `keep` bytes back to the kernel (they read as zero afterwards).
    public func release(beyond keep: Int) {
        let start = (keep + 4095) & ~4095
        if start < capacity { _ = madvise(pointer + start, capacity - start, MADV_DONTNEED) }
    }

    /// Zeroes `[offset, offset + count)`.
    public func zero(_ offset: Int, count: Int) {
        if count > 0 { memset(pointer + offset, 0, count) }
    }
}
