/*
 * memfs: an in-memory FUSE server on libfuse3's low-level API.
 *
 * It is the baseline for TokenWarehouse's performance target "read a block file that is in the DRAM
 * tier, through the mount: >= 80% of an in-memory C FUSE server's throughput on the same machine"
 * (docs: docs/design.md, "Performance targets"). Tools/bench/fs_bench.py builds and runs it.
 *
 * Build:  cc -O2 -o memfs Tools/bench/memfs.c $(pkg-config --cflags --libs fuse3) -lpthread
 * Run:    memfs MOUNT [-f] [-d] [--direct-io] [--keep-cache] [--threads N] [--no-clone-fd]
 *         (unmount with `fusermount3 -u MOUNT`, `umount MOUNT`, or SIGTERM/SIGINT to the process)
 *
 * What it serves: a flat root directory. Files can be created and written (create, open+O_TRUNC,
 * write at any offset, setattr/truncate, flush, fsync, release), read (open, read), listed (readdir),
 * renamed within the root and unlinked. Subdirectories are refused (EPERM). All data lives in memory;
 * nothing is persisted.
 *
 * Choices that make it a fair and fast baseline:
 *  - multi-threaded session loop (fuse_session_loop_mt, fuse_loop_cfg: up to 16 worker threads, all
 *    kept as idle threads so none are created/destroyed under load, clone_fd on: one /dev/fuse fd
 *    per worker);
 *  - max_write 1 MiB (libfuse 3.14 negotiates max_pages = 256 from it, so kernel read and write
 *    requests are up to 1 MiB), max_readahead as large as the kernel offers, max_background 128,
 *    congestion_threshold 96, async reads;
 *  - entry, negative-entry and attribute timeouts of one day: every change goes through this
 *    mount, so the kernel's caches never go stale and lookups/getattrs are not re-sent;
 *  - read replies use fuse_reply_buf pointing straight into the file's buffer (a single copy, into
 *    the kernel, by writev on /dev/fuse); a per-file rwlock lets reads of one file run in parallel;
 *  - node ids are the node pointers (no table lookup per request); flush is not requested on close
 *    (FOPEN_NOFLUSH), since there is nothing to flush.
 *
 * Open mode (the --direct-io and --keep-cache flags; the default is neither):
 *  - default: open replies with direct_io = 0 and keep_cache = 0. Reads go through the page cache
 *    (kernel readahead issues the FUSE reads), but every open invalidates the file's cached pages,
 *    so each open-read-close of a block re-reads all of its bytes through FUSE. This is the mode
 *    that measures the FUSE data path, and the one fs_bench.py compares twfs's cached reads with.
 *  - --keep-cache: open replies with keep_cache = 1, so after the first read the kernel serves the
 *    block from its page cache without asking memfs (a measure of the page cache, not of FUSE).
 *  - --direct-io: open replies with direct_io = 1: no page cache; every read(2) becomes one FUSE
 *    READ of up to 1 MiB straight into the caller's buffer.
 *
 * It exits cleanly (unmounts, frees, status 0) on SIGTERM, SIGINT and SIGHUP, and when unmounted.
 */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE

#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_S (86400.0)
#define MAX_IO (1u << 20)

struct node {
	char *name;              /* NULL once unlinked (or replaced by a rename) */
	uint64_t ino;            /* st_ino shown to users; the FUSE node id is the pointer */
	uint64_t nlookup;        /* kernel references; guarded by fs.lock */
	struct node *hnext;      /* hash chain; guarded by fs.lock */
	pthread_rwlock_t lock;   /* guards everything below */
	char *data;
	size_t size, cap;
	mode_t mode;
	uid_t uid;
	gid_t gid;
	struct timespec atime, mtime, ctime;
};

static struct {
	pthread_mutex_t lock;    /* guards the hash table, nlookup, names, counts */
	struct node **buckets;
	size_t nbuckets, count;
	uint64_t next_ino;
	size_t bytes;            /* sum of file sizes, for statfs (atomic) */
	int direct_io, keep_cache;
	struct timespec root_time;
} fs = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* ---------------------------------------------------------------- name table ---- */

static uint64_t hash_name(const char *s)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */
	while (*s) {
		h ^= (unsigned char)*s++;
		h *= 1099511628211ull;
	}
	return h;
}

static struct node **slot_of(const char *name)
{
	struct node **pp = &fs.buckets[hash_name(name) & (fs.nbuckets - 1)];
	while (*pp && strcmp((*pp)->name, name) != 0)
		pp = &(*pp)->hnext;
	return pp;
}

static void table_grow(void)
{
	size_t nb = fs.nbuckets * 2;
	struct node **b = calloc(nb, sizeof *b);
	if (!b)
		return; /* keep the longer chains */
	for (size_t i = 0; i < fs.nbuckets; i++) {
		struct node *n = fs.buckets[i];
		while (n) {
			struct node *next = n->hnext;
			size_t j = hash_name(n->name) & (nb - 1);
			n->hnext = b[j];
			b[j] = n;
			n = next;
		}
	}
	free(fs.buckets);
	fs.buckets = b;
	fs.nbuckets = nb;
}

/* Caller holds fs.lock. Removes n from the table (it must be there). */
static void table_remove(struct node *n)
{
	struct node **pp = slot_of(n->name);
	*pp = n->hnext;
	n->hnext = NULL;
	free(n->name);
	n->name = NULL;
	fs.count--;
}

static void node_free(struct node *n)
{
	/* The kernel sends FORGET once the last reply for this node has been delivered, but the
	 * thread that sent that reply (mfs_read replies while holding the read lock) may not have
	 * unlocked yet: wait for it. */
	pthread_rwlock_wrlock(&n->lock);
	pthread_rwlock_unlock(&n->lock);
	pthread_rwlock_destroy(&n->lock);
	free(n->data);
	free(n);
}

/* ---------------------------------------------------------------- helpers ------- */

static inline struct node *N(fuse_ino_t ino)
{
	return (struct node *)(uintptr_t)ino;
}

static void now(struct timespec *ts)
{
	clock_gettime(CLOCK_REALTIME, ts);
}

static void fill_root_attr(struct stat *st)
{
	memset(st, 0, sizeof *st);
	st->st_ino = FUSE_ROOT_ID;
	st->st_mode = S_IFDIR | 0755;
	st->st_nlink = 2;
	st->st_atim = st->st_mtim = st->st_ctim = fs.root_time;
	st->st_blksize = MAX_IO;
}

/* Caller holds n->lock (read or write). */
static void fill_attr(struct node *n, struct stat *st)
{
	memset(st, 0, sizeof *st);
	st->st_ino = n->ino;
	st->st_mode = S_IFREG | n->mode;
	st->st_nlink = n->name ? 1 : 0;
	st->st_uid = n->uid;
	st->st_gid = n->gid;
	st->st_size = (off_t)n->size;
	st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
	st->st_blksize = MAX_IO;
	st->st_atim = n->atime;
	st->st_mtim = n->mtime;
	st->st_ctim = n->ctime;
}

static void reply_attr_of(fuse_req_t req, fuse_ino_t ino)
{
	struct stat st;
	if (ino == FUSE_ROOT_ID) {
		fill_root_attr(&st);
	} else {
		struct node *n = N(ino);
		pthread_rwlock_rdlock(&n->lock);
		fill_attr(n, &st);
		pthread_rwlock_unlock(&n->lock);
	}
	fuse_reply_attr(req, &st, TIMEOUT_S);
}

static void fill_entry(struct node *n, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof *e);
	e->ino = (fuse_ino_t)(uintptr_t)n;
	e->generation = 1;
	e->attr_timeout = TIMEOUT_S;
	e->entry_timeout = TIMEOUT_S;
	pthread_rwlock_rdlock(&n->lock);
	fill_attr(n, &e->attr);
	pthread_rwlock_unlock(&n->lock);
}

static int name_ok(const char *name)
{
	size_t len = strlen(name);
	if (len == 0 || len > 255)
		return ENAMETOOLONG;
	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return EINVAL;
	return 0;
}

/* Caller holds n->lock for writing. Sets the size, growing the buffer (zero-filled) as needed. */
static int resize_locked(struct node *n, size_t size)
{
	if (size > n->cap) {
		size_t cap = n->cap ? n->cap : 4096;
		while (cap < size)
			cap = cap < (64u << 20) ? cap * 2 : cap + (64u << 20);
		char *d = realloc(n->data, cap);
		if (!d)
			return ENOMEM;
		n->data = d;
		n->cap = cap;
	}
	if (size > n->size)
		memset(n->data + n->size, 0, size - n->size);
	/* unsigned wrap-around gives the right result when shrinking */
	__atomic_fetch_add(&fs.bytes, size - n->size, __ATOMIC_RELAXED);
	n->size = size;
	return 0;
}

static void set_open_flags(struct fuse_file_info *fi)
{
	fi->direct_io = fs.direct_io;
	fi->keep_cache = fs.keep_cache;
	fi->noflush = 1;
}

/* ---------------------------------------------------------------- operations ---- */

static void mfs_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_write = MAX_IO;
	/* conn->max_readahead arrives as the kernel's proposal; the kernel never raises it, so keep it. */
	conn->max_background = 128;
	conn->congestion_threshold = 96;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	/* All writes come through this mount: no need to invalidate on mtime changes. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* No writeback cache: writes are sent at write(2) time, as they are for twfs. */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

static void mfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	if (parent != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	pthread_mutex_lock(&fs.lock);
	struct node *n = *slot_of(name);
	if (n)
		n->nlookup++;
	pthread_mutex_unlock(&fs.lock);
	if (!n) {
		memset(&e, 0, sizeof e);
		e.ino = 0; /* negative entry, cached for entry_timeout */
		e.entry_timeout = TIMEOUT_S;
		fuse_reply_entry(req, &e);
		return;
	}
	fill_entry(n, &e);
	fuse_reply_entry(req, &e);
}

static void forget_one(fuse_ino_t ino, uint64_t nlookup)
{
	if (ino == FUSE_ROOT_ID)
		return;
	struct node *n = N(ino);
	int dead;
	pthread_mutex_lock(&fs.lock);
	n->nlookup -= nlookup;
	dead = n->nlookup == 0 && n->name == NULL;
	pthread_mutex_unlock(&fs.lock);
	if (dead)
		node_free(n);
}

static void mfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	forget_one(ino, nlookup);
	fuse_reply_none(req);
}

static void mfs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		forget_one(forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void mfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	reply_attr_of(req, ino);
}

static void mfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			struct fuse_file_info *fi)
{
	(void)fi;
	if (ino == FUSE_ROOT_ID) {
		if (to_set & FUSE_SET_ATTR_SIZE) {
			fuse_reply_err(req, EISDIR);
			return;
		}
		reply_attr_of(req, ino); /* root attributes are fixed */
		return;
	}
	struct node *n = N(ino);
	struct timespec t;
	now(&t);
	pthread_rwlock_wrlock(&n->lock);
	if (to_set & FUSE_SET_ATTR_SIZE) {
		int err = resize_locked(n, (size_t)attr->st_size);
		if (err) {
			pthread_rwlock_unlock(&n->lock);
			fuse_reply_err(req, err);
			return;
		}
		n->mtime = t;
	}
	if (to_set & FUSE_SET_ATTR_MODE)
		n->mode = attr->st_mode & 07777;
	if (to_set & FUSE_SET_ATTR_UID)
		n->uid = attr->st_uid;
	if (to_set & FUSE_SET_ATTR_GID)
		n->gid = attr->st_gid;
	if (to_set & FUSE_SET_ATTR_ATIME)
		n->atime = attr->st_atim;
	if (to_set & FUSE_SET_ATTR_ATIME_NOW)
		n->atime = t;
	if (to_set & FUSE_SET_ATTR_MTIME)
		n->mtime = attr->st_mtim;
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		n->mtime = t;
	n->ctime = t;
	struct stat st;
	fill_attr(n, &st);
	pthread_rwlock_unlock(&n->lock);
	fuse_reply_attr(req, &st, TIMEOUT_S);
}

static void mfs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		       struct fuse_file_info *fi)
{
	int err;
	if (parent != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if ((err = name_ok(name))) {
		fuse_reply_err(req, err);
		return;
	}
	if (!S_ISREG(mode) && (mode & S_IFMT)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	pthread_mutex_lock(&fs.lock);
	struct node **pp = slot_of(name);
	struct node *n = *pp;
	if (n) {
		if (fi->flags & O_EXCL) {
			pthread_mutex_unlock(&fs.lock);
			fuse_reply_err(req, EEXIST);
			return;
		}
		n->nlookup++;
		pthread_mutex_unlock(&fs.lock);
		if (fi->flags & O_TRUNC) {
			pthread_rwlock_wrlock(&n->lock);
			resize_locked(n, 0);
			now(&n->mtime);
			n->ctime = n->mtime;
			pthread_rwlock_unlock(&n->lock);
		}
	} else {
		n = calloc(1, sizeof *n);
		char *nm = strdup(name);
		if (!n || !nm) {
			pthread_mutex_unlock(&fs.lock);
			free(n);
			free(nm);
			fuse_reply_err(req, ENOMEM);
			return;
		}
		pthread_rwlock_init(&n->lock, NULL);
		n->name = nm;
		n->ino = ++fs.next_ino;
		n->nlookup = 1;
		n->mode = mode & 07777 & ~ctx->umask;
		n->uid = ctx->uid;
		n->gid = ctx->gid;
		now(&n->mtime);
		n->atime = n->ctime = n->mtime;
		*pp = n;
		if (++fs.count > fs.nbuckets * 2)
			table_grow();
		pthread_mutex_unlock(&fs.lock);
	}
	struct fuse_entry_param e;
	fill_entry(n, &e);
	set_open_flags(fi);
	if (fuse_reply_create(req, &e, fi) == -ENOENT) /* interrupted: undo the lookup */
		forget_one(e.ino, 1);
}

static void mfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino == FUSE_ROOT_ID) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	struct node *n = N(ino);
	if ((fi->flags & O_TRUNC) && (fi->flags & O_ACCMODE) != O_RDONLY) {
		pthread_rwlock_wrlock(&n->lock);
		resize_locked(n, 0);
		now(&n->mtime);
		n->ctime = n->mtime;
		pthread_rwlock_unlock(&n->lock);
	}
	set_open_flags(fi);
	fuse_reply_open(req, fi);
}

static void mfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)fi;
	struct node *n = N(ino);
	pthread_rwlock_rdlock(&n->lock);
	size_t len = 0;
	if ((size_t)off < n->size) {
		len = n->size - (size_t)off;
		if (len > size)
			len = size;
	}
	/* Straight from the file's buffer: libfuse writev()s it to /dev/fuse, the only copy. */
	fuse_reply_buf(req, len ? n->data + off : NULL, len);
	pthread_rwlock_unlock(&n->lock);
}

static void mfs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	(void)fi;
	struct node *n = N(ino);
	size_t end = (size_t)off + size;
	pthread_rwlock_wrlock(&n->lock);
	if (end > n->size) {
		int err = resize_locked(n, end);
		if (err) {
			pthread_rwlock_unlock(&n->lock);
			fuse_reply_err(req, err);
			return;
		}
	}
	memcpy(n->data + off, buf, size);
	now(&n->mtime);
	n->ctime = n->mtime;
	pthread_rwlock_unlock(&n->lock);
	fuse_reply_write(req, size);
}

static void mfs_ok(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void mfs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)datasync;
	mfs_ok(req, ino, fi);
}

static void mfs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	if (parent != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	pthread_mutex_lock(&fs.lock);
	struct node *n = *slot_of(name);
	if (!n) {
		pthread_mutex_unlock(&fs.lock);
		fuse_reply_err(req, ENOENT);
		return;
	}
	table_remove(n);
	__atomic_fetch_sub(&fs.bytes, n->size, __ATOMIC_RELAXED);
	int dead = n->nlookup == 0;
	pthread_mutex_unlock(&fs.lock);
	if (dead)
		node_free(n);
	fuse_reply_err(req, 0);
}

static void mfs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		       const char *newname, unsigned int flags)
{
	int err;
	if (parent != FUSE_ROOT_ID || newparent != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (flags & ~RENAME_NOREPLACE) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if ((err = name_ok(newname))) {
		fuse_reply_err(req, err);
		return;
	}
	char *nm = strdup(newname);
	if (!nm) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	struct node *victim = NULL;
	pthread_mutex_lock(&fs.lock);
	struct node *n = *slot_of(name);
	if (!n) {
		pthread_mutex_unlock(&fs.lock);
		free(nm);
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!strcmp(name, newname)) {
		pthread_mutex_unlock(&fs.lock);
		free(nm);
		fuse_reply_err(req, 0);
		return;
	}
	struct node *old = *slot_of(newname);
	if (old) {
		if (flags & RENAME_NOREPLACE) {
			pthread_mutex_unlock(&fs.lock);
			free(nm);
			fuse_reply_err(req, EEXIST);
			return;
		}
		table_remove(old);
		__atomic_fetch_sub(&fs.bytes, old->size, __ATOMIC_RELAXED);
		if (old->nlookup == 0)
			victim = old;
	}
	table_remove(n);
	n->name = nm;
	struct node **pp = slot_of(nm);
	*pp = n;
	fs.count++;
	pthread_mutex_unlock(&fs.lock);
	if (victim)
		node_free(victim);
	fuse_reply_err(req, 0);
}

static void mfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	(void)parent;
	(void)name;
	(void)mode;
	fuse_reply_err(req, EPERM); /* flat namespace */
}

/* readdir works on a snapshot taken at opendir; the offset of an entry is its index + 1. */
struct dirent_snap {
	char *name;
	uint64_t ino;
};
struct dir_snap {
	size_t n;
	struct dirent_snap *e;
};

static void mfs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	struct dir_snap *d = calloc(1, sizeof *d);
	if (!d) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_mutex_lock(&fs.lock);
	d->e = calloc(fs.count + 2, sizeof *d->e);
	if (d->e) {
		d->e[d->n++] = (struct dirent_snap){ strdup("."), FUSE_ROOT_ID };
		d->e[d->n++] = (struct dirent_snap){ strdup(".."), FUSE_ROOT_ID };
		for (size_t i = 0; i < fs.nbuckets; i++)
			for (struct node *n = fs.buckets[i]; n; n = n->hnext)
				d->e[d->n++] = (struct dirent_snap){ strdup(n->name), n->ino };
	}
	pthread_mutex_unlock(&fs.lock);
	if (!d->e) {
		free(d);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	fuse_reply_open(req, fi);
}

static void mfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	(void)ino;
	struct dir_snap *d = (struct dir_snap *)(uintptr_t)fi->fh;
	char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t used = 0;
	for (size_t i = (size_t)off; i < d->n; i++) {
		struct stat st = { 0 };
		st.st_ino = d->e[i].ino;
		st.st_mode = i < 2 ? S_IFDIR : S_IFREG;
		size_t need = fuse_add_direntry(req, buf + used, size - used, d->e[i].name ? d->e[i].name : "?",
						&st, (off_t)(i + 1));
		if (need > size - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void mfs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	struct dir_snap *d = (struct dir_snap *)(uintptr_t)fi->fh;
	for (size_t i = 0; i < d->n; i++)
		free(d->e[i].name);
	free(d->e);
	free(d);
	fuse_reply_err(req, 0);
}

static void mfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct statvfs sv;
	memset(&sv, 0, sizeof sv);
	long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
	uint64_t total = (uint64_t)pages * (uint64_t)psz;
	pthread_mutex_lock(&fs.lock);
	uint64_t used = __atomic_load_n(&fs.bytes, __ATOMIC_RELAXED), files = fs.count;
	pthread_mutex_unlock(&fs.lock);
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	sv.f_blocks = total / 4096;
	sv.f_bfree = sv.f_bavail = used < total ? (total - used) / 4096 : 0;
	sv.f_files = files + 1000000;
	sv.f_ffree = sv.f_favail = 1000000;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops ops = {
	.init = mfs_init,
	.lookup = mfs_lookup,
	.forget = mfs_forget,
	.forget_multi = mfs_forget_multi,
	.getattr = mfs_getattr,
	.setattr = mfs_setattr,
	.create = mfs_create,
	.open = mfs_open,
	.read = mfs_read,
	.write = mfs_write,
	.flush = mfs_ok,
	.release = mfs_ok,
	.fsync = mfs_fsync,
	.unlink = mfs_unlink,
	.rename = mfs_rename,
	.mkdir = mfs_mkdir,
	.opendir = mfs_opendir,
	.readdir = mfs_readdir,
	.releasedir = mfs_releasedir,
	.statfs = mfs_statfs,
};

/* ---------------------------------------------------------------- main ---------- */

static void usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s MOUNT [-f] [-d] [--direct-io] [--keep-cache] [--threads N] [--no-clone-fd]\n"
		"  -f             stay in the foreground\n"
		"  -d             print every request (implies -f)\n"
		"  --direct-io    open replies with direct_io (no page cache)\n"
		"  --keep-cache   open replies with keep_cache (page cache kept across opens)\n"
		"  --threads N    maximum worker threads (default 16)\n"
		"  --no-clone-fd  share one /dev/fuse fd among the workers\n",
		prog);
}

int main(int argc, char *argv[])
{
	const char *mountpoint = NULL;
	int foreground = 0, clone_fd = 1, debug = 0;
	unsigned threads = 16;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-f") || !strcmp(a, "--foreground"))
			foreground = 1;
		else if (!strcmp(a, "--direct-io"))
			fs.direct_io = 1;
		else if (!strcmp(a, "--keep-cache"))
			fs.keep_cache = 1;
		else if (!strcmp(a, "-d") || !strcmp(a, "--debug"))
			debug = foreground = 1;
		else if (!strcmp(a, "--no-clone-fd"))
			clone_fd = 0;
		else if (!strcmp(a, "--threads") && i + 1 < argc)
			threads = (unsigned)strtoul(argv[++i], NULL, 10);
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(argv[0]);
			return 0;
		} else if (a[0] != '-' && !mountpoint)
			mountpoint = a;
		else {
			usage(argv[0]);
			return 2;
		}
	}
	if (!mountpoint || threads == 0) {
		usage(argv[0]);
		return 2;
	}
	/* fuse_daemonize() changes to "/", and the unmount at exit needs the path: make it absolute. */
	char *abs_mountpoint = realpath(mountpoint, NULL);
	if (!abs_mountpoint) {
		perror(mountpoint);
		return 1;
	}
	mountpoint = abs_mountpoint;

	fs.nbuckets = 1024;
	fs.buckets = calloc(fs.nbuckets, sizeof *fs.buckets);
	if (!fs.buckets)
		return 1;
	now(&fs.root_time);

	char *fargv[] = { argv[0], "-o", "fsname=memfs,subtype=memfs,default_permissions", "-o", "debug", NULL };
	struct fuse_args args = FUSE_ARGS_INIT(debug ? 5 : 3, fargv);
	struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
	fuse_opt_free_args(&args);
	if (!se) {
		fprintf(stderr, "memfs: fuse_session_new failed\n");
		return 1;
	}
	int ret = 1;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_destroy;
	if (fuse_session_mount(se, mountpoint) != 0) {
		fprintf(stderr, "memfs: cannot mount on %s\n", mountpoint);
		goto out_signals;
	}
	if (fuse_daemonize(foreground) != 0)
		goto out_unmount;

	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(cfg, threads);
	fuse_loop_cfg_set_idle_threads(cfg, threads);
	fuse_loop_cfg_set_clone_fd(cfg, (unsigned)clone_fd);
	ret = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	/* A loop ended by SIGTERM/SIGINT/SIGHUP returns the signal number: that is a clean exit. */
	if (ret > 0)
		ret = 0;

out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
	for (size_t i = 0; i < fs.nbuckets; i++) {
		struct node *n = fs.buckets[i];
		while (n) {
			struct node *next = n->hnext;
			free(n->name);
			node_free(n);
			n = next;
		}
	}
	free(fs.buckets);
	free(abs_mountpoint);
	return ret ? 1 : 0;
}
