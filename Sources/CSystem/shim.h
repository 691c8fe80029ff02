// Values and calls of glibc that Swift's Glibc module hides behind _GNU_SOURCE or does not import,
// and C11-style atomics on shared memory.
#ifndef TW_CSYSTEM_SHIM_H
#define TW_CSYSTEM_SHIM_H
#include <fcntl.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

/// O_DIRECT without defining _GNU_SOURCE: that macro would give the system headers parsed here other
/// declarations than Swift's Glibc module has (fd_set's member is `fds_bits` under _GNU_SOURCE,
/// `__fds_bits` without), and a fresh debug build then fails to merge the two modules.
/// glibc defines `__O_DIRECT` unconditionally; `O_DIRECT` is its _GNU_SOURCE name.
#ifdef O_DIRECT
static inline int tw_o_direct(void) { return O_DIRECT; }
#else
static inline int tw_o_direct(void) { return __O_DIRECT; }
#endif

/// Frees a range of a file, which then reads as zeros (`fallocate` with FALLOC_FL_PUNCH_HOLE |
/// FALLOC_FL_KEEP_SIZE). Through syscall(2) because glibc declares fallocate only under _GNU_SOURCE.
/// Returns 0, or -1 with errno set.
static inline int tw_punch_hole(int fd, int64_t offset, int64_t length) {
    return (int)syscall(SYS_fallocate, fd, 0x02 | 0x01, (off_t)offset, (off_t)length);
}

/// Bytes of heap in use, by malloc's own count.
static inline size_t tw_heap_in_use(void) { return mallinfo2().uordblks; }

/// Keeps large allocations (block buffers of up to 32 MiB, glibc's ceiling) in malloc's heap instead
/// of a fresh mmap per buffer: reusing heap memory avoids faulting and zeroing every page of every
/// block read.
static inline void tw_keep_large_allocations_in_heap(void) {
    mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 512 * 1024 * 1024);
}

/* Atomic access to 64-bit words of shared memory (the DRAM tier's sequence locks). */
static inline uint64_t tw_load_acquire_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void tw_store_release_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void tw_store_relaxed_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void tw_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
static inline void tw_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
#endif
