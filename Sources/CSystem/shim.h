// Values and calls of glibc that Swift's Glibc module hides behind _GNU_SOURCE or does not import.
#ifndef TW_CSYSTEM_SHIM_H
#define TW_CSYSTEM_SHIM_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <malloc.h>
#include <stddef.h>

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
#endif
