/*
 * dram_reader: reads blocks straight from a TokenWarehouse DRAM tier (include/tokenwarehouse.h) and
 * measures it against memcpy of the same bytes, in the same program, threads and buffers.
 *
 * It is the C half of the target "read through the direct map: >= 90% of memcpy bandwidth"
 * (docs/design.md, "Performance targets"); Tools/bench/dram_bench.py builds and runs it.
 *
 * Build:  cc -O2 -I include -o dram_reader Tools/bench/dram_reader.c -lxxhash -lpthread
 * Run:    dram_reader --mount MOUNT --ns NS --names FILE [--threads T] [--passes R]
 *                     [--buffer BYTES] [--no-hits]
 *         --buffer: the longest block expected (default 64 MiB); --no-hits: leave the hit counters alone.
 *         FILE: one block key per line (the HASH of MOUNT/NS/hh/HASH, or a path inside NS).
 *
 * What it does:
 *  1. asks the mount's tier broker for the tiers (tw_broker_connect), maps the one that holds NS
 *     read-only, checks its layout (tw_tier_open) and maps its hit counters read-write (unless
 *     --no-hits);
 *  2. computes every key: XXH3_128bits("NS/KEY");
 *  3. a verification pass, not timed: tw_lookup_copy() of every block into one buffer; every block
 *     must be a hit, and the XXH3-64 of the copy must equal the entry's checksum. The copies also
 *     fill the memcpy source: one private buffer holding the same bytes at the same sizes;
 *  4. R rounds, each: a memcpy pass (every block, from the private source into the thread's one
 *     buffer) and a map pass (every block, tw_lookup_copy() into the thread's one buffer, one hit
 *     counter increment per hit, a generation check before each lookup, as a real client does).
 *     For information a third pass per round copies each block straight from its place in the tier
 *     (memcpy, no lookup or seqlock: "tier_memcpy"), which separates the cost of the lookup protocol
 *     from that of the tier's memory itself (shared memory, 4 KiB pages).
 *     Blocks are split over T threads by index (thread t takes t, t+T, ...). A pass's time runs from
 *     the first thread's start (all wait at a barrier first) to the last thread's end, read by the
 *     threads themselves.
 * Output: one JSON object on stdout (GB = 1e9 bytes); errors on stderr. Exit status 0, or 2 for a
 * usage/setup error, 3 when a block was not a hit (a miss, a retry, a checksum mismatch or a new
 * generation): the benchmark requires every block to be resident.
 */
#define _GNU_SOURCE

#include "tokenwarehouse.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

struct block {
	uint64_t lo, hi;      /* key */
	uint64_t length;      /* from the verification pass */
	uint64_t src_offset;  /* in the memcpy source */
	uint64_t tier_offset; /* the entry's data offset at verification (for the raw-tier series) */
};

static struct {
	const char *mount, *ns, *names;
	int threads, passes, hits_on;
	uint64_t buffer;
} opt = { .threads = 1, .passes = 5, .hits_on = 1 };

static tw_tier tier;             /* the tier that holds NS, with its hit counters (or none) */
static struct block *blocks;
static size_t nblocks;
static unsigned char *source;    /* memcpy source: the same bytes, private memory */
static uint64_t total_bytes;

static pthread_barrier_t barrier;
static volatile unsigned char sink;  /* keeps the copies observable */
static uint64_t failures;            /* misses + retries + stale generations, atomically */

static void die(const char *fmt, const char *arg)
{
	fprintf(stderr, "dram_reader: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	exit(2);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *page_aligned(uint64_t n)
{
	void *p = NULL;
	if (posix_memalign(&p, 4096, n ? n : 1) != 0)
		die("out of memory (%s)", "buffer");
	memset(p, 0, n); /* fault every page in before any timing */
	return p;
}

static void map_tier(void)
{
	static tw_broker_tier got[64];
	int alive_fd = -1;
	int n = tw_broker_connect(opt.mount, got, 64, &alive_fd);
	if (n < 0)
		die("cannot reach the tier broker of %s (is it a TokenWarehouse mount?)", opt.mount);
	int found = -1;
	for (int i = 0; i < n; i++)
		if (found < 0 && tw_list_contains(got[i].namespaces, opt.ns))
			found = i;
	if (found < 0)
		die("the daemon handed this process no tier that holds namespace %s (no DRAM tier, or not readable)", opt.ns);
	struct stat st;
	if (fstat(got[found].data_fd, &st) != 0)
		die("cannot stat tier %s", got[found].name);
	void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, got[found].data_fd, 0);
	if (map == MAP_FAILED)
		die("cannot map tier %s", got[found].name);
	if (tw_tier_open(map, (uint64_t)st.st_size, &tier) != 0)
		die("tier %s is not a DRAM tier of layout version 1 (or its daemon stopped)", got[found].name);
	if (opt.hits_on && fstat(got[found].hits_fd, &st) == 0 && (uint64_t)st.st_size >= tier.capacity * 4) {
		void *h = mmap(NULL, tier.capacity * 4, PROT_READ | PROT_WRITE, MAP_SHARED, got[found].hits_fd, 0);
		if (h != MAP_FAILED) {
			tier.hits = h;
			tier.hits_count = tier.capacity;
		}
	}
	if (alive_fd >= 0) {
		void *page = mmap(NULL, 4096, PROT_READ, MAP_SHARED, alive_fd, 0);
		if (page == MAP_FAILED || tw_tier_watch_daemon(&tier, page) != 0)
			die("the daemon of %s is stopping", opt.mount);
		close(alive_fd);
	}
	for (int i = 0; i < n; i++) {
		close(got[i].data_fd);
		close(got[i].hits_fd);
	}
}

static void read_names(void)
{
	FILE *f = fopen(opt.names, "r");
	if (!f)
		die("cannot open %s", opt.names);
	size_t cap = 1024;
	blocks = calloc(cap, sizeof *blocks);
	char line[1024], key[1200];
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\r\n")] = 0;
		if (!line[0])
			continue;
		if (nblocks == cap) {
			cap *= 2;
			blocks = realloc(blocks, cap * sizeof *blocks);
			if (!blocks)
				die("out of memory (%s)", "names");
		}
		int n = snprintf(key, sizeof key, "%s/%s", opt.ns, line);
		XXH128_hash_t h = XXH3_128bits(key, (size_t)n);
		blocks[nblocks].lo = h.low64;
		blocks[nblocks].hi = h.high64;
		nblocks++;
	}
	fclose(f);
	if (nblocks == 0)
		die("%s holds no names", opt.names);
}

/* One lookup as a client does it: generation check, lookup-and-copy, hit counter. */
static inline int lookup(const struct block *b, void *buf, uint64_t cap, uint64_t *len, uint64_t *index)
{
	if (!tw_tier_is_current(&tier))
		return -1;
	*len = cap;
	int r = tw_lookup_copy(&tier, b->lo, b->hi, buf, len, index);
	if (r == TW_HIT)
		tw_count_hit(&tier, *index);
	return r;
}

static void verify(void)
{
	unsigned char *buf = page_aligned(opt.buffer);
	const tw_entry *table = (const tw_entry *)(tier.map + tier.table_offset);
	size_t bad = 0;
	for (size_t i = 0; i < nblocks; i++) {
		uint64_t len = 0, index = 0;
		int r = lookup(&blocks[i], buf, opt.buffer, &len, &index);
		if (r != TW_HIT) {
			if (bad++ < 10)
				fprintf(stderr, "dram_reader: block %zu: %s\n", i,
					r == TW_MISS ? "miss (not resident)" : r == TW_RETRY ? "retry (entry changing)" :
					r == TW_TOO_SMALL ? "larger than --buffer" : "tier generation changed");
			continue;
		}
		uint64_t sum = XXH3_64bits(buf, len);
		if (sum != __atomic_load_n(&table[index].checksum, __ATOMIC_RELAXED)) {
			if (bad++ < 10)
				fprintf(stderr, "dram_reader: block %zu: XXH3-64 of the copy does not match the entry\n", i);
			continue;
		}
		blocks[i].length = len;
		blocks[i].tier_offset = __atomic_load_n(&table[index].data_offset, __ATOMIC_RELAXED);
		blocks[i].src_offset = total_bytes;
		total_bytes += (len + 4095) & ~(uint64_t)4095;
	}
	if (bad) {
		fprintf(stderr, "dram_reader: %zu of %zu blocks are not clean map hits\n", bad, nblocks);
		exit(3);
	}
	/* The memcpy source: the same bytes, copied out of the tier once more. */
	source = page_aligned(total_bytes);
	for (size_t i = 0; i < nblocks; i++) {
		uint64_t len = 0, index = 0;
		if (lookup(&blocks[i], source + blocks[i].src_offset, blocks[i].length, &len, &index) != TW_HIT ||
		    len != blocks[i].length) {
			fprintf(stderr, "dram_reader: block %zu changed between passes\n", i);
			exit(3);
		}
	}
	total_bytes = 0;
	for (size_t i = 0; i < nblocks; i++)
		total_bytes += blocks[i].length;
	free(buf);
}

struct worker {
	pthread_t thread;
	int index, use_map; /* 0: memcpy from the private source, 1: tw_lookup_copy, 2: memcpy from the tier */
	unsigned char *buf;
	double start, end;    /* this thread's own clock: after the barrier, after its last block */
};

static void *work(void *arg)
{
	struct worker *w = arg;
	unsigned char acc = 0;
	uint64_t failed = 0;
	pthread_barrier_wait(&barrier);
	w->start = now();
	for (size_t i = (size_t)w->index; i < nblocks; i += (size_t)opt.threads) {
		const struct block *b = &blocks[i];
		if (w->use_map == 2) {
			memcpy(w->buf, tier.map + b->tier_offset, b->length);
			acc ^= w->buf[0] ^ w->buf[b->length - 1];
		} else if (w->use_map) {
			uint64_t len, index;
			if (lookup(b, w->buf, opt.buffer, &len, &index) != TW_HIT) {
				failed++;
				continue;
			}
			acc ^= w->buf[0] ^ w->buf[len - 1];
		} else {
			memcpy(w->buf, source + b->src_offset, b->length);
			acc ^= w->buf[0] ^ w->buf[b->length - 1];
		}
	}
	w->end = now();
	sink ^= acc;
	if (failed)
		__atomic_fetch_add(&failures, failed, __ATOMIC_RELAXED);
	return NULL;
}

static double run_pass(struct worker *ws, int use_map)
{
	for (int t = 0; t < opt.threads; t++) {
		ws[t].use_map = use_map;
		if (pthread_create(&ws[t].thread, NULL, work, &ws[t]) != 0)
			die("pthread_create failed%s", "");
	}
	pthread_barrier_wait(&barrier);
	for (int t = 0; t < opt.threads; t++)
		pthread_join(ws[t].thread, NULL);
	/* From the first thread's start to the last thread's end, as the threads saw them: the main thread
	 * may be scheduled late after the barrier (more threads than CPUs), so its own clock would not do. */
	double first = ws[0].start, last = ws[0].end;
	for (int t = 1; t < opt.threads; t++) {
		if (ws[t].start < first)
			first = ws[t].start;
		if (ws[t].end > last)
			last = ws[t].end;
	}
	return last - first;
}

static void print_series(const char *name, const double *secs, int n, int last)
{
	double best = 0;
	printf("  \"%s\": {\"passes_gb_s\": [", name);
	for (int i = 0; i < n; i++) {
		double g = total_bytes / secs[i] / 1e9;
		if (g > best)
			best = g;
		printf("%s%.4f", i ? ", " : "", g);
	}
	printf("], \"best_gb_s\": %.4f}%s\n", best, last ? "" : ",");
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--no-hits")) { opt.hits_on = 0; continue; }
		if (!v)
			die("missing value after %s (see the comment at the top of dram_reader.c)", a);
		if (!strcmp(a, "--mount")) opt.mount = v;
		else if (!strcmp(a, "--ns")) opt.ns = v;
		else if (!strcmp(a, "--names")) opt.names = v;
		else if (!strcmp(a, "--threads")) opt.threads = atoi(v);
		else if (!strcmp(a, "--passes")) opt.passes = atoi(v);
		else if (!strcmp(a, "--buffer")) opt.buffer = strtoull(v, NULL, 0);
		else die("unknown option %s", a);
		i++;
	}
	if (!opt.mount || !opt.ns || !opt.names || opt.threads < 1 || opt.passes < 1)
		die("usage: dram_reader --mount MOUNT --ns NS --names FILE [--threads T] "
		    "[--passes R] [--buffer BYTES] [--no-hits]%s", "");

	map_tier();
	if (!opt.buffer)
		opt.buffer = 64u << 20;
	read_names();
	verify();
	uint64_t longest = 1;
	for (size_t i = 0; i < nblocks; i++)
		if (blocks[i].length > longest)
			longest = blocks[i].length;
	opt.buffer = longest; /* each thread's one buffer: as long as the longest block */

	struct worker *ws = calloc((size_t)opt.threads, sizeof *ws);
	for (int t = 0; t < opt.threads; t++) {
		ws[t].index = t;
		ws[t].buf = page_aligned(opt.buffer);
	}
	pthread_barrier_init(&barrier, NULL, (unsigned)opt.threads + 1);
	double *mem = calloc((size_t)opt.passes, sizeof *mem), *mapped = calloc((size_t)opt.passes, sizeof *mapped);
	double *raw = calloc((size_t)opt.passes, sizeof *raw);
	for (int p = 0; p < opt.passes; p++) {
		mem[p] = run_pass(ws, 0);
		mapped[p] = run_pass(ws, 1);
		raw[p] = run_pass(ws, 2);
	}
	/* The raw-tier series read the offsets seen at verification without the seqlock: valid only if no
	 * entry changed meanwhile, which the map passes' hits and the generation confirm. */
	uint64_t failed = __atomic_load_n(&failures, __ATOMIC_RELAXED);

	printf("{\n  \"namespace\": \"%s\",\n  \"threads\": %d,\n  \"blocks\": %zu,\n  \"bytes_per_pass\": %llu,\n"
	       "  \"hit_counters\": %s,\n  \"failed_lookups\": %llu,\n",
	       opt.ns, opt.threads, nblocks, (unsigned long long)total_bytes, tier.hits ? "true" : "false",
	       (unsigned long long)failed);
	print_series("memcpy", mem, opt.passes, 0);
	print_series("map", mapped, opt.passes, 0);
	print_series("tier_memcpy", raw, opt.passes, 1);
	printf("}\n");
	return failed ? 3 : 0;
}
