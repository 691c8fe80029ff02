// Values and calls of glibc that Swift's Glibc module hides behind _GNU_SOURCE or does not import,
// and C11-style atomics on shared memory.
#ifndef TW_CSYSTEM_SHIM_H
#define TW_CSYSTEM_SHIM_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/xattr.h>

static inline int tw_o_direct(void) { return O_DIRECT; }

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
