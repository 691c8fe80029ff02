/*
 * tokenwarehouse.h — the shared-memory DRAM tiers of a TokenWarehouse mount, for C and C++ readers.
 *
 * Specification: docs/dram-tier.md (layout version 1, broker protocol). The daemon (twfs) is the only
 * writer of a tier; readers map it read-only and look blocks up without any system call. All integers
 * are little-endian; this header assumes a little-endian Linux machine (x86-64, AArch64).
 *
 * A reader:
 *   1. tw_broker_connect(MOUNT, tiers, max, &liveness_fd): reads MOUNT/.tw/dram ("socket PATH"),
 *      connects to the daemon's broker and receives, for each security domain whose namespaces this
 *      process may read, the tier's descriptor (read-only), its hit counters' descriptor and the
 *      namespaces it holds; and the daemon's liveness page;
 *   2. for each: mmap(fd, PROT_READ, MAP_SHARED) and tw_tier_open(map, size, &tier), which checks the
 *      layout once (overflow-safe) and keeps a snapshot of it: nothing later read from the shared memory
 *      can point a copy outside the mapping; then tw_tier_watch_daemon(&tier, liveness_page) so lookups
 *      stop when the daemon is gone (a daemon killed with SIGKILL cannot zero its tiers' generation: the
 *      next daemon zeroes its liveness page before it serves anything);
 *   3. computes the key: XXH3-128 of the bytes "NAMESPACE/KEY" (libxxhash: XXH3_128bits), KEY being the
 *      canonical hash for NS/hh/HASH, or the path inside the namespace (docs/format.md "Keys");
 *   4. tw_lookup_copy(&tier, ...); on TW_MISS or TW_RETRY reads MOUNT/NAMESPACE/... as a file instead;
 *   5. when tw_tier_is_current(&tier) turns false (the daemon stopped or restarted), unmaps and starts
 *      again at 1.
 * Optionally it maps the hit counters read-write and calls tw_count_hit() after each hit, so the tier
 * counts the hit toward what it keeps and its statistics.
 */
#ifndef TOKENWAREHOUSE_H
#define TOKENWAREHOUSE_H

#include <stdint.h>
#include <string.h>

#define TW_DRAM_MAGIC "TWDRAM01"
#define TW_DRAM_VERSION 1u
#define TW_SUPERBLOCK_SIZE 4096u
#define TW_ENTRY_SIZE 64u

/* Entry states. */
#define TW_ENTRY_EMPTY 0u   /* never used: a lookup stops here */
#define TW_ENTRY_VALID 1u
#define TW_ENTRY_DELETED 2u /* removed: a lookup keeps probing */

/* Superblock, at offset 0 of the tier file (the rest of its page is zero). */
typedef struct tw_superblock {
    char magic[8];             /* "TWDRAM01" */
    uint32_t version;          /* 1 */
    uint32_t superblock_size;  /* 4096 */
    uint64_t generation;       /* random, non-zero while the daemon runs; 0 once it stopped */
    uint64_t file_size;
    uint64_t table_offset;     /* 4096 */
    uint64_t table_capacity;   /* entries, a power of two */
    uint32_t entry_size;       /* 64 */
    uint32_t max_probe;        /* entries a lookup examines at most */
    uint64_t data_offset;
    uint64_t data_size;
} tw_superblock;

/* Table entry. `seq` is a sequence lock: even when stable, odd while the daemon changes the entry.
 * The daemon bumps it before an entry's bytes may be reused, so a reader that sees the same even
 * value before and after copying the bytes has copied a whole, current block. */
typedef struct tw_entry {
    uint64_t seq;
    uint32_t state;            /* TW_ENTRY_* */
    uint32_t reserved0;
    uint64_t key_lo;           /* XXH3-128 of "NAMESPACE/KEY": low and high 64 bits */
    uint64_t key_hi;
    uint64_t data_offset;      /* from the start of the file; 4096-aligned */
    uint64_t length;           /* bytes of the block */
    uint64_t checksum;         /* XXH3-64 of the block's bytes */
    uint64_t reserved1;
} tw_entry;

#ifdef __cplusplus
static_assert(sizeof(tw_superblock) == 72, "superblock layout");
static_assert(sizeof(tw_entry) == TW_ENTRY_SIZE, "entry layout");
#else
_Static_assert(sizeof(tw_superblock) == 72, "superblock layout");
_Static_assert(sizeof(tw_entry) == TW_ENTRY_SIZE, "entry layout");
#endif

/* A mapped tier with its layout checked once and kept here (never re-read from shared memory). */
typedef struct tw_tier {
    const char *map;
    uint64_t map_size;
    uint64_t generation;       /* as seen when opened */
    uint64_t table_offset;
    uint64_t capacity;
    uint64_t max_probe;
    uint64_t data_start;
    uint64_t data_end;
    uint32_t *hits;            /* the hit counters, mapped read-write, or NULL */
    uint64_t hits_count;
    const uint64_t *alive;     /* the daemon's liveness word, or NULL (tw_tier_watch_daemon) */
    uint64_t alive_mark;
} tw_tier;

/* Results of tw_lookup_copy. */
#define TW_HIT 0
#define TW_MISS 1        /* not resident: read the block file */
#define TW_RETRY 2       /* changed while copying (evicted or refilled): read the block file */
#define TW_TOO_SMALL 3   /* the buffer is shorter than the block; *length says how long it is */

/* Checks a mapping of `map_size` bytes and fills `t`. Returns 0, or -1 when it is not a tier this
 * header reads (wrong magic or version, a table or data area outside the mapping, generation 0). */
static inline int tw_tier_open(const void *map, uint64_t map_size, tw_tier *t) {
    const tw_superblock *sb = (const tw_superblock *)map;
    if (map_size < TW_SUPERBLOCK_SIZE || memcmp(sb->magic, TW_DRAM_MAGIC, 8) != 0 || sb->version != TW_DRAM_VERSION ||
        sb->entry_size != TW_ENTRY_SIZE)
        return -1;
    uint64_t table = sb->table_offset, cap = sb->table_capacity, start = sb->data_offset, size = sb->data_size;
    /* Every bound in 64 bits, subtracting instead of adding, so no value can wrap around. */
    if (cap == 0 || (cap & (cap - 1)) != 0 || cap > (1ull << 32) || table < TW_SUPERBLOCK_SIZE || table % 8 != 0 ||
        table > map_size || cap * TW_ENTRY_SIZE > map_size - table || start > map_size || size > map_size - start)
        return -1;
    uint64_t generation = __atomic_load_n(&sb->generation, __ATOMIC_ACQUIRE);
    if (generation == 0) return -1;
    t->map = (const char *)map;
    t->map_size = map_size;
    t->generation = generation;
    t->table_offset = table;
    t->capacity = cap;
    t->max_probe = sb->max_probe < cap ? sb->max_probe : cap;
    t->data_start = start;
    t->data_end = start + size;
    t->hits = NULL;
    t->hits_count = 0;
    t->alive = NULL;
    t->alive_mark = 0;
    return 0;
}

/* Ties the tier to its daemon's liveness page (mapped read-only from the descriptor tw_broker_connect
 * returned). Returns 0, or -1 when the daemon had already stopped (then use files). */
static inline int tw_tier_watch_daemon(tw_tier *t, const void *liveness_page) {
    const uint64_t *w = (const uint64_t *)liveness_page;
    uint64_t mark = __atomic_load_n(w, __ATOMIC_ACQUIRE);
    if (mark == 0) return -1;
    t->alive = w;
    t->alive_mark = mark;
    return 0;
}

/* Whether the daemon that made the tier still runs it (else unmap and ask the broker again). */
static inline int tw_tier_is_current(const tw_tier *t) {
    uint64_t g = __atomic_load_n(&((const tw_superblock *)t->map)->generation, __ATOMIC_ACQUIRE);
    if (t->alive && __atomic_load_n(t->alive, __ATOMIC_ACQUIRE) != t->alive_mark) return 0;
    return g != 0 && g == t->generation;
}

/* Looks up a block by its 128-bit key and copies it into `buffer` (capacity *length). On TW_HIT,
 * *length is the block's size and *entry_index its table index (for tw_count_hit). */
static inline int tw_lookup_copy(const tw_tier *t, uint64_t key_lo, uint64_t key_hi, void *buffer,
                                 uint64_t *length, uint64_t *entry_index) {
    const uint64_t mask = t->capacity - 1;
    const tw_entry *table = (const tw_entry *)(t->map + t->table_offset);
    if (t->alive && __atomic_load_n(t->alive, __ATOMIC_ACQUIRE) != t->alive_mark) return TW_RETRY;
    for (uint64_t i = 0; i < t->max_probe; i++) {
        uint64_t index = (key_lo + i) & mask;
        const tw_entry *e = &table[index];
        uint64_t seq = __atomic_load_n(&e->seq, __ATOMIC_ACQUIRE);
        if (seq & 1) return TW_RETRY;
        uint32_t state = __atomic_load_n(&e->state, __ATOMIC_RELAXED);
        if (state == TW_ENTRY_EMPTY) return TW_MISS;
        if (state != TW_ENTRY_VALID || __atomic_load_n(&e->key_lo, __ATOMIC_RELAXED) != key_lo ||
            __atomic_load_n(&e->key_hi, __ATOMIC_RELAXED) != key_hi)
            continue;
        uint64_t n = __atomic_load_n(&e->length, __ATOMIC_RELAXED);
        uint64_t off = __atomic_load_n(&e->data_offset, __ATOMIC_RELAXED);
        if (off < t->data_start || off > t->data_end || n > t->data_end - off) return TW_RETRY;
        if (n > *length) {
            *length = n;
            return TW_TOO_SMALL;
        }
        memcpy(buffer, t->map + off, n);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&e->seq, __ATOMIC_RELAXED) != seq) return TW_RETRY;
        *length = n;
        if (entry_index) *entry_index = index;
        return TW_HIT;
    }
    return TW_MISS;
}

/* Counts a hit on entry `index` (no-op without hit counters). */
static inline void tw_count_hit(tw_tier *t, uint64_t index) {
    if (t->hits && index < t->hits_count) __atomic_fetch_add(&t->hits[index], 1, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------------------------- the broker */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* Linux's values, for programs built with a strict -std=c11 (which hides them). */
#ifndef O_CLOEXEC
#define O_CLOEXEC 02000000
#endif
#ifndef SOCK_CLOEXEC
#define SOCK_CLOEXEC 02000000
#endif
#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0x40000000
#endif

#define TW_MAX_NAMESPACES_TEXT 16384

/* One tier as the broker hands it over. The caller owns both descriptors (close them once mapped). */
typedef struct tw_broker_tier {
    char name[256];
    int data_fd;               /* the tier, read-only */
    int hits_fd;               /* its hit counters, read-write, size-sealed */
    char namespaces[TW_MAX_NAMESPACES_TEXT]; /* "NS1 NS2 ...": the namespaces whose blocks it holds */
} tw_broker_tier;

/* Whether `ns` is one of the space-separated names of `list`. */
static inline int tw_list_contains(const char *list, const char *ns) {
    size_t n = strlen(ns);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ' ');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && memcmp(p, ns, n) == 0) return 1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

/* Asks the broker of the warehouse mounted at `mount` for the tiers this process may read. Returns how
 * many it filled in `out` (at most `max`; 0 when the mount has no tier or this process may read none),
 * or -1 with errno set (ENOENT: not a TokenWarehouse mount; EPROTO: an answer this header cannot read).
 * `*liveness_fd` (if not NULL) gets the daemon's liveness page, read-only (map 4096 bytes of it for
 * tw_tier_watch_daemon, then close it), or -1. */
static inline int tw_broker_connect(const char *mount, tw_broker_tier *out, int max, int *liveness_fd) {
    if (liveness_fd) *liveness_fd = -1;
    char path[4096], line[4200];
    if (snprintf(path, sizeof path, "%s/.tw/dram", mount) >= (int)sizeof path) { errno = ENAMETOOLONG; return -1; }
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0) return -1;
    ssize_t got = read(f, line, sizeof line - 1);
    close(f);
    if (got < 0) return -1;
    line[got] = 0;
    char *nl = strchr(line, '\n');
    if (nl) *nl = 0;
    if (line[0] == 0) return 0;   /* the daemon runs without a DRAM tier */
    if (strncmp(line, "socket ", 7) != 0) { errno = EPROTO; return -1; }
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(line + 7) >= sizeof addr.sun_path) { errno = ENAMETOOLONG; return -1; }
    strcpy(addr.sun_path, line + 7);
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct timeval tv;
    tv.tv_sec = 2;
    tv.tv_usec = 0;
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) { int e = errno; close(s); errno = e; return -1; }
    int count = 0;
    static __thread char message[TW_MAX_NAMESPACES_TEXT + 512];
    for (;;) {
        union { struct cmsghdr h; char space[CMSG_SPACE(4 * sizeof(int))]; } control;
        struct iovec iov;
        iov.iov_base = message;
        iov.iov_len = sizeof message - 1;
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.space;
        msg.msg_controllen = sizeof control.space;
        ssize_t n = recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
        if (n <= 0) break;   /* closed (or timed out) before "end": keep what came */
        message[n] = 0;
        int fds[4], nfds = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                for (int i = 0; i < k && nfds < 4; i++) memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            }
        }
        int kept = 0;
        const char *second = strchr(message, '\n');
        if (strncmp(message, "end", 3) == 0) {
            if (nfds == 1 && liveness_fd) *liveness_fd = fds[0];
            else for (int i = 0; i < nfds; i++) close(fds[i]);
            break;
        }
        if (strncmp(message, "tier ", 5) == 0 && second && nfds == 2 && count < max && !(msg.msg_flags & MSG_TRUNC) &&
            strncmp(second + 1, "namespaces", 10) == 0) {
            tw_broker_tier *t = &out[count];
            size_t name_len = (size_t)(second - (message + 5));
            if (name_len < sizeof t->name) {
                memcpy(t->name, message + 5, name_len);
                t->name[name_len] = 0;
                const char *after = second + 11;          /* just past "namespaces" */
                const char *list = *after == ' ' ? after + 1 : after;
                const char *end = strchr(list, '\n');
                size_t len = end ? (size_t)(end - list) : strlen(list);
                if (len < sizeof t->namespaces) {
                    memcpy(t->namespaces, list, len);
                    t->namespaces[len] = 0;
                    t->data_fd = fds[0];
                    t->hits_fd = fds[1];
                    count++;
                    kept = 1;
                }
            }
        }
        if (!kept) for (int i = 0; i < nfds; i++) close(fds[i]);
    }
    close(s);
    return count;
}

#endif /* TOKENWAREHOUSE_H */
