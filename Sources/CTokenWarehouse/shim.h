// Values and calls of glibc that Swift's Glibc module hides behind _GNU_SOURCE or cannot import
// (function-like macros such as CMSG_*), and C11-style atomics on shared memory. Only Platform imports
// this module.
#ifndef TW_CTOKENWAREHOUSE_SHIM_H
#define TW_CTOKENWAREHOUSE_SHIM_H
#include <sys/resource.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

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
/// Bytes malloc has handed out: small chunks in its heap (uordblks) and large ones it mapped on their own (hblkhd),
/// such as the index's hash table.
static inline size_t tw_heap_in_use(void) { struct mallinfo2 m = mallinfo2(); return m.uordblks + m.hblkhd; }

/// Keeps large allocations (block buffers of up to 32 MiB, glibc's ceiling) in malloc's heap instead
/// of a fresh mmap per buffer: reusing heap memory avoids faulting and zeroing every page of every
/// block read.
static inline void tw_keep_large_allocations_in_heap(void) {
    mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 512 * 1024 * 1024);
}

/// Names the calling thread (shown by top -H, gdb, /proc/TID/comm); at most 15 bytes are kept.
/// The device and inode number of what `path` (relative to `directory`, or AT_FDCWD) leads to
/// (following a /proc/PID/fd link), from the
/// attributes the kernel has cached: AT_STATX_DONT_SYNC keeps a FUSE or network filesystem from being
/// asked (the daemon may be asking about a file of its own mount). 0 on success, -1 with errno.
static inline int tw_statx_identity(int directory, const char *path, uint64_t *device, uint64_t *inode) {
    unsigned char buffer[256];  /* struct statx: stx_ino at 32, stx_dev_major/minor at 136/140 */
    if (syscall(SYS_statx, directory, path, 0x4000 /* AT_STATX_DONT_SYNC */, 0x100 /* STATX_INO */, buffer) != 0) return -1;
    uint32_t major, minor;
    memcpy(inode, buffer + 32, 8);
    memcpy(&major, buffer + 136, 4);
    memcpy(&minor, buffer + 140, 4);
    *device = ((uint64_t)major << 32) | minor;
    return 0;
}

/* getdents64(2) (glibc declares it only under _GNU_SOURCE, which Swift's Glibc module does not set):
 * a directory read into the caller's buffer, without readdir's fstat, fcntl and heap buffer. */
static inline long tw_getdents64(int directory, void *buffer, size_t length) {
    return syscall(SYS_getdents64, directory, buffer, length);
}

/// Lowest scheduling priority (nice 19) for the calling thread alone (Linux keeps a nice value per thread).
static inline void tw_lower_thread_priority(void) { (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19); }
static inline int tw_thread_id(void) { return (int)syscall(SYS_gettid); }

static inline void tw_set_thread_name(const char *name) {
    char short_name[16];
    strncpy(short_name, name, 15);
    short_name[15] = 0;
    (void)syscall(SYS_prctl, 15 /* PR_SET_NAME */, (unsigned long)short_name, 0, 0, 0);
}

/* Atomic access to 64-bit words of shared memory (the DRAM tier's sequence locks) and to counters. */
static inline uint64_t tw_load_acquire_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t tw_load_relaxed_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void tw_store_release_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void tw_store_relaxed_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint64_t tw_fetch_add_relaxed_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline uint32_t tw_load_relaxed_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void tw_store_relaxed_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint32_t tw_exchange_u32(uint32_t *p, uint32_t v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
static inline void tw_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
static inline void tw_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }

/// Copies `n` bytes with non-temporal stores: straight to memory, without first reading each
/// destination line into the cache (an ordinary copy does, to write it) and without evicting what the
/// cache holds. For copies into memory nobody reads soon from this core: the DRAM tier's space. Into
/// cold memory this moves twice the bytes a second of `memcpy` (Tools/bench/copy_bench.c,
/// docs/benchmarks.md "Copies into the DRAM tier"); into memory read right after, it is slower. Ends
/// with a store fence, so the bytes are ordered before the stores that publish them (streaming stores
/// are weakly ordered). x86-64 only (SSE2, which every x86-64 has); elsewhere `memcpy`.
static inline void tw_copy_streaming(void *destination, const void *source, size_t n) {
#if defined(__x86_64__)
    char *d = (char *)destination;
    const char *s = (const char *)source;
    size_t head = (16 - ((uintptr_t)d & 15)) & 15;
    if (head > n) head = n;
    memcpy(d, s, head);
    d += head; s += head; n -= head;
    for (; n >= 64; n -= 64, d += 64, s += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + 32)), e = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    memcpy(d, s, n);
    _mm_sfence();
#else
    memcpy(destination, source, n);
#endif
}

/* memfd and file seals (glibc declares them only under _GNU_SOURCE). */
enum {
    TW_MFD_CLOEXEC = 0x0001U,
    TW_MFD_ALLOW_SEALING = 0x0002U,
    TW_F_ADD_SEALS = 1033,
    TW_F_GET_SEALS = 1034,
    TW_F_SEAL_SEAL = 0x0001,
    TW_F_SEAL_SHRINK = 0x0002,
    TW_F_SEAL_GROW = 0x0004,
    TW_F_SEAL_WRITE = 0x0008,
    TW_F_SEAL_FUTURE_WRITE = 0x0010,
};

/// memfd_create(2); -1 with errno on failure.
static inline int tw_memfd_create(const char *name, unsigned int flags) {
    return (int)syscall(SYS_memfd_create, name, flags);
}

/// mremap(old, old_size, new_size, MREMAP_MAYMOVE) (declared only under _GNU_SOURCE, and variadic):
/// the mapping grown, moved by its page tables rather than copied. MAP_FAILED with errno on failure.
static inline void *tw_mremap_maymove(void *old, size_t old_size, size_t new_size) {
    return (void *)syscall(SYS_mremap, old, old_size, new_size, 1 /* MREMAP_MAYMOVE */);
}

/// accept4(fd, NULL, NULL, SOCK_CLOEXEC) (glibc declares accept4 only under _GNU_SOURCE).
static inline int tw_accept_cloexec(int fd) { return (int)syscall(SYS_accept4, fd, NULL, NULL, SOCK_CLOEXEC); }

/// fcntl(fd, cmd, arg) for an int argument (Swift cannot call the variadic fcntl).
static inline int tw_fcntl_int(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }

/// The credentials of the process at the other end of a connected unix socket (SO_PEERCRED, whose
/// `struct ucred` glibc declares only under _GNU_SOURCE). Returns 0, or -1 with errno set.
static inline int tw_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct { int32_t pid; uint32_t uid; uint32_t gid; } cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, 17 /* SO_PEERCRED */, &cred, &len) != 0) return -1;
    *pid = cred.pid; *uid = cred.uid; *gid = cred.gid;
    return 0;
}

/// The supplementary groups of the peer of a connected unix socket (SO_PEERGROUPS, Linux 4.13).
/// Returns how many were stored (at most `capacity`), or -1 with errno set.
static inline int tw_peer_groups(int fd, uint32_t *groups, int capacity) {
    socklen_t len = (socklen_t)(capacity * sizeof(uint32_t));
    if (getsockopt(fd, SOL_SOCKET, 59 /* SO_PEERGROUPS */, groups, &len) != 0) return -1;
    return (int)(len / sizeof(uint32_t));
}

/// Sends `length` bytes and up to 16 descriptors in one message (SCM_RIGHTS). Returns the bytes sent
/// or -1 with errno set.
static inline ssize_t tw_send_with_descriptors(int socket, const void *bytes, size_t length, const int *fds, int count) {
    if (count < 0 || count > 16) { errno = EINVAL; return -1; }
    struct iovec iov = { (void *)bytes, length };
    union { char buffer[CMSG_SPACE(16 * sizeof(int))]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = { 0 };
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    if (count > 0) {
        message.msg_control = control.buffer;
        message.msg_controllen = CMSG_SPACE(count * sizeof(int));
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(count * sizeof(int));
        memcpy(CMSG_DATA(header), fds, count * sizeof(int));
    }
    return sendmsg(socket, &message, MSG_NOSIGNAL);
}

/// Receives up to `length` bytes and up to `capacity` descriptors (stored in `fds`, count in
/// `*count`; received descriptors are close-on-exec). Returns the bytes received or -1 with errno set.
static inline ssize_t tw_receive_with_descriptors(int socket, void *bytes, size_t length, int *fds, int capacity, int *count) {
    struct iovec iov = { bytes, length };
    union { char buffer[CMSG_SPACE(16 * sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr message = { 0 };
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof control.buffer;
    *count = 0;
    ssize_t n = recvmsg(socket, &message, 0x40000000 /* MSG_CMSG_CLOEXEC */);
    if (n < 0) return n;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&message); h != NULL; h = CMSG_NXTHDR(&message, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
        int received = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *incoming = (int *)CMSG_DATA(h);
        for (int i = 0; i < received; i++) {
            if (*count < capacity) fds[(*count)++] = incoming[i]; else close(incoming[i]);
        }
    }
    return n;
}
#endif
