/*
 * tokenwarehouse.h — the shared-memory DRAM tier of a TokenWarehouse mount, for C and C++ readers.
 *
 * Specification: docs/dram-tier.md (layout version 1). The daemon (twfs) is the only writer of the
 * tier file; readers map it read-only and look blocks up without any system call. All integers are
 * little-endian; this header assumes a little-endian machine (x86-64, AArch64).
 *
 * A reader:
 *   1. reads MOUNT/.tw/dram (one line: the tier's path, e.g. /dev/shm/tokenwarehouse-mnt-kv), opens it
 *      O_RDONLY and mmaps it PROT_READ, MAP_SHARED; checks magic and version; remembers `generation`;
 *   2. computes the key: XXH3-128 of the bytes "NAMESPACE/NAME" (libxxhash: XXH3_128bits);
 *   3. calls tw_lookup_copy(); on TW_MISS or TW_RETRY reads MOUNT/NAMESPACE/... as a file instead;
 *   4. when tw_generation(map) differs from the remembered one (0 = the daemon stopped), unmaps and
 *      starts again at 1.
 * Optionally it opens PATH.hits read-write and adds 1 to hits[entry index] on each hit, so the tier
 * counts the hit toward recency and statistics (tw_lookup_copy reports the index).
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
    uint64_t key_lo;           /* XXH3-128 of "NAMESPACE/NAME": low and high 64 bits */
    uint64_t key_hi;
    uint64_t data_offset;      /* from the start of the file; 4096-aligned */
    uint64_t length;           /* bytes of the block */
    uint64_t checksum;         /* XXH3-64 of the block's bytes */
    uint64_t reserved1;
} tw_entry;

_Static_assert(sizeof(tw_superblock) == 72, "superblock layout");
_Static_assert(sizeof(tw_entry) == TW_ENTRY_SIZE, "entry layout");

/* Results of tw_lookup_copy. */
#define TW_HIT 0
#define TW_MISS 1        /* not resident: read the block file */
#define TW_RETRY 2       /* changed while copying (evicted or refilled): read the block file */
#define TW_TOO_SMALL 3   /* the buffer is shorter than the block; *length says how long it is */

static inline const tw_superblock *tw_superblock_of(const void *map) { return (const tw_superblock *)map; }

static inline int tw_map_is_valid(const void *map, uint64_t map_size) {
    const tw_superblock *sb = tw_superblock_of(map);
    return map_size >= TW_SUPERBLOCK_SIZE && memcmp(sb->magic, TW_DRAM_MAGIC, 8) == 0 &&
           sb->version == TW_DRAM_VERSION && sb->entry_size == TW_ENTRY_SIZE &&
           sb->table_offset + sb->table_capacity * TW_ENTRY_SIZE <= map_size &&
           sb->data_offset + sb->data_size <= map_size;
}

static inline uint64_t tw_generation(const void *map) {
    return __atomic_load_n(&tw_superblock_of(map)->generation, __ATOMIC_ACQUIRE);
}

/* Looks up a block by its 128-bit key and copies it into `buffer` (capacity *length). On TW_HIT,
 * *length is the block's size and *entry_index its table index (for the hit counters). */
static inline int tw_lookup_copy(const void *map, uint64_t key_lo, uint64_t key_hi, void *buffer,
                                 uint64_t *length, uint64_t *entry_index) {
    const tw_superblock *sb = tw_superblock_of(map);
    const uint64_t mask = sb->table_capacity - 1;
    const tw_entry *table = (const tw_entry *)((const char *)map + sb->table_offset);
    for (uint64_t i = 0; i < sb->max_probe; i++) {
        uint64_t index = (key_lo + i) & mask;
        const tw_entry *e = &table[index];
        uint64_t seq = __atomic_load_n(&e->seq, __ATOMIC_ACQUIRE);
        if (seq & 1) return TW_RETRY;
        uint32_t state = __atomic_load_n(&e->state, __ATOMIC_RELAXED);
        if (state == TW_ENTRY_EMPTY) return TW_MISS;
        if (state != TW_ENTRY_VALID || e->key_lo != key_lo || e->key_hi != key_hi) continue;
        uint64_t n = e->length, off = e->data_offset;
        if (off < sb->data_offset || off + n > sb->data_offset + sb->data_size) return TW_RETRY;
        if (n > *length) {
            *length = n;
            return TW_TOO_SMALL;
        }
        memcpy(buffer, (const char *)map + off, n);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&e->seq, __ATOMIC_RELAXED) != seq) return TW_RETRY;
        *length = n;
        if (entry_index) *entry_index = index;
        return TW_HIT;
    }
    return TW_MISS;
}

#endif /* TOKENWAREHOUSE_H */
