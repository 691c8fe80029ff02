/*
 * tokenwarehouse._mapcopy: the DRAM tier's lookup and copy in C, for tokenwarehouse.Client.
 *
 * Why: in pure Python a map read spends about 5-8 us per block before its copy starts (the key's hash
 * through an f-string and xxhash's Python call, the probe through struct.unpack, numpy's wrappers). That
 * is nothing beside a 2 MiB copy but three times the copy of a 16 KiB block, the size engines store most.
 * Here one call hashes the name, probes the table, copies and checks the sequence lock, as
 * include/tokenwarehouse.h does for C readers (the same protocol, docs/dram-tier.md "Reading").
 *
 * Optional: setup.py builds it where a compiler, Python's headers and xxhash.h are present; without it
 * the client does the same in Python. Only the common case is handled here (a str namespace and a
 * canonical hash as the name, a contiguous writable buffer); anything else returns NOT_HANDLED and the
 * Python path decides, so the two never disagree on errors.
 *
 * Nothing read from shared memory is trusted: the layout is checked when the tier is opened and kept
 * here, and every entry's bounds are checked against it before a byte is copied.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>
#if !defined(XXH_VERSION_NUMBER) || XXH_VERSION_NUMBER < 800
/* XXH3 was experimental before 0.8 and its values may differ: keys would never match (the build stops
 * here instead, and the client reads the tier in Python). */
#error "xxhash 0.8 or later is needed"
#endif

#define ENTRY_SIZE 64u
#define GENERATION_OFFSET 16u
#define STATE_EMPTY 0u
#define STATE_VALID 1u
#define MAX_NAMESPACE 128
#define MIN_HASH 16
#define MAX_HASH 128
/* Copies at least this long run without the GIL, so threads reading blocks copy in parallel. */
#define PARALLEL_COPY_MIN (64 * 1024)

/* Results other than a length (>= 0). The Python side names them in client.py. */
#define R_MISS (-1)
#define R_RETRY (-2)
#define R_STALE (-3)       /* the daemon stopped or restarted, or this tier was closed: ask again */
#define R_NOT_HANDLED (-4) /* not the common case: let the Python path do it */
#define R_CHECKSUM (-5)    /* verify found a copy whose XXH3-64 does not match */
#define R_TOO_SMALL (-6)

typedef struct {
    PyObject_HEAD
    Py_buffer map;          /* the tier file, mapped read-only */
    Py_buffer hits;         /* the hit counters (u32 per entry), mapped read-write; buf NULL if none */
    Py_buffer alive;        /* the daemon's liveness page; buf NULL if not watched */
    uint64_t generation;
    uint64_t table_offset;
    uint64_t mask;
    uint64_t probe;
    uint64_t data_lo, data_hi;
    uint64_t alive_mark;
    uint64_t hits_count;
    int users;              /* copies in flight without the GIL */
    int closed;
} MapTier;

static void release_buffers(MapTier *t) {
    if (t->map.buf) PyBuffer_Release(&t->map);
    if (t->hits.buf) PyBuffer_Release(&t->hits);
    if (t->alive.buf) PyBuffer_Release(&t->alive);
    t->map.buf = t->hits.buf = t->alive.buf = NULL;
}

static int MapTier_init(MapTier *t, PyObject *args, PyObject *kw) {
    static char *names[] = {"map", "table_offset", "capacity", "probe", "data_lo", "data_hi", "generation",
                            "hits", NULL};
    PyObject *map, *hits = Py_None;
    unsigned long long table, cap, probe, lo, hi, gen;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OKKKKKK|O", names, &map, &table, &cap, &probe, &lo, &hi, &gen,
                                     &hits))
        return -1;
    if (t->map.buf) {
        PyErr_SetString(PyExc_RuntimeError, "MapTier is already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(map, &t->map, PyBUF_SIMPLE) < 0) return -1;
    uint64_t size = (uint64_t)t->map.len;
    /* Every bound in 64 bits, subtracting instead of adding, so no value wraps around. */
    if (cap == 0 || (cap & (cap - 1)) != 0 || cap > (1ull << 32) || table % 8 != 0 || table > size ||
        cap * ENTRY_SIZE > size - table || lo > hi || hi > size || size < GENERATION_OFFSET + 8 || gen == 0) {
        PyBuffer_Release(&t->map);
        t->map.buf = NULL;
        PyErr_SetString(PyExc_ValueError, "tier layout outside the mapping");
        return -1;
    }
    t->generation = gen;
    t->table_offset = table;
    t->mask = cap - 1;
    t->probe = probe == 0 ? 1 : (probe < cap ? probe : cap);
    t->data_lo = lo;
    t->data_hi = hi;
    if (hits != Py_None) {
        if (PyObject_GetBuffer(hits, &t->hits, PyBUF_WRITABLE) < 0) {
            release_buffers(t);
            return -1;
        }
        t->hits_count = (uint64_t)t->hits.len / 4;
    }
    return 0;
}

static void MapTier_dealloc(MapTier *t) {
    release_buffers(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

/* watch(liveness_page, mark): lookups stop (STALE) once the daemon's liveness word changes. */
static PyObject *MapTier_watch(MapTier *t, PyObject *args) {
    PyObject *page;
    unsigned long long mark;
    if (!PyArg_ParseTuple(args, "OK", &page, &mark)) return NULL;
    if (t->alive.buf) PyBuffer_Release(&t->alive);
    t->alive.buf = NULL;
    if (PyObject_GetBuffer(page, &t->alive, PyBUF_SIMPLE) < 0) return NULL;
    if (t->alive.len < 8) {
        PyBuffer_Release(&t->alive);
        t->alive.buf = NULL;
        PyErr_SetString(PyExc_ValueError, "liveness page shorter than 8 bytes");
        return NULL;
    }
    t->alive_mark = mark;
    Py_RETURN_NONE;
}

/* close(): lets go of the mappings (now, or when the last copy in flight ends). */
static PyObject *MapTier_close(MapTier *t, PyObject *unused) {
    (void)unused;
    t->closed = 1;
    if (t->users == 0) release_buffers(t);
    Py_RETURN_NONE;
}

static int current(const MapTier *t) {
    if (t->closed || !t->map.buf) return 0;
    const char *m = (const char *)t->map.buf;
    if (__atomic_load_n((const uint64_t *)(m + GENERATION_OFFSET), __ATOMIC_ACQUIRE) != t->generation) return 0;
    if (t->alive.buf && __atomic_load_n((const uint64_t *)t->alive.buf, __ATOMIC_ACQUIRE) != t->alive_mark) return 0;
    return 1;
}

/* The key of (namespace, canonical hash): XXH3-128 of "NS/HASH". 0 when the pair is not the common case. */
static int key_of(PyObject *ns, PyObject *name, uint64_t *lo, uint64_t *hi) {
    if (!PyUnicode_CheckExact(ns) || !PyUnicode_CheckExact(name)) return 0;
    if (!PyUnicode_IS_ASCII(ns) || !PyUnicode_IS_ASCII(name)) return 0;
    Py_ssize_t nl = PyUnicode_GET_LENGTH(ns), kl = PyUnicode_GET_LENGTH(name);
    if (nl < 1 || nl > MAX_NAMESPACE || kl < MIN_HASH || kl > MAX_HASH) return 0;
    const char *k = (const char *)PyUnicode_DATA(name);
    for (Py_ssize_t i = 0; i < kl; i++) {
        char c = k[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    char buf[MAX_NAMESPACE + 1 + MAX_HASH];
    memcpy(buf, PyUnicode_DATA(ns), (size_t)nl);
    buf[nl] = '/';
    memcpy(buf + nl + 1, k, (size_t)kl);
    XXH128_hash_t h = XXH3_128bits(buf, (size_t)(nl + 1 + kl));
    *lo = h.low64;
    *hi = h.high64;
    return 1;
}

typedef struct {
    const uint64_t *seq;    /* the entry's sequence word */
    uint64_t seen;          /* its (even) value when the entry was read */
    uint64_t index, offset, length, checksum;
} Found;

/* The probe of tw_lookup_copy: R_MISS, R_RETRY or 0 with `f` filled (bounds checked). */
static int find(const MapTier *t, uint64_t lo, uint64_t hi, Found *f) {
    const char *table = (const char *)t->map.buf + t->table_offset;
    for (uint64_t i = 0; i < t->probe; i++) {
        uint64_t index = (lo + i) & t->mask;
        const char *e = table + index * ENTRY_SIZE;
        const uint64_t *seq = (const uint64_t *)e;
        uint64_t s = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
        if (s & 1) return R_RETRY;
        uint32_t state = __atomic_load_n((const uint32_t *)(e + 8), __ATOMIC_RELAXED);
        if (state == STATE_EMPTY) return R_MISS;
        if (state != STATE_VALID || __atomic_load_n((const uint64_t *)(e + 16), __ATOMIC_RELAXED) != lo ||
            __atomic_load_n((const uint64_t *)(e + 24), __ATOMIC_RELAXED) != hi)
            continue;
        uint64_t off = __atomic_load_n((const uint64_t *)(e + 32), __ATOMIC_RELAXED);
        uint64_t n = __atomic_load_n((const uint64_t *)(e + 40), __ATOMIC_RELAXED);
        uint64_t sum = __atomic_load_n((const uint64_t *)(e + 48), __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(seq, __ATOMIC_RELAXED) != s) return R_RETRY; /* fields read while it changed */
        if (off < t->data_lo || off > t->data_hi || n > t->data_hi - off) return R_RETRY;
        f->seq = seq;
        f->seen = s;
        f->index = index;
        f->offset = off;
        f->length = n;
        f->checksum = sum;
        return 0;
    }
    return R_MISS;
}

/* The copy, the second look at `seq`, and the checksum with verify: touches only the mapping and `dst`. */
static int copy_and_check(const char *src, char *dst, const Found *f, int verify) {
    size_t n = (size_t)f->length;
    if (n > 0) memcpy(dst, src, n);     /* (an empty block's buffer may have no address) */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(f->seq, __ATOMIC_RELAXED) != f->seen) return R_RETRY;   /* evicted or moved */
    if (verify && XXH3_64bits(dst, n) != f->checksum) return R_CHECKSUM;
    return 0;
}

/* Copies the found block to `dst`, then checks that the entry did not change meanwhile (and, with
 * verify, the checksum). Large blocks are copied and hashed without the GIL, so threads reading them
 * run in parallel; `users` keeps the mapping alive meanwhile (close() defers to the last one). */
static int copy_out(MapTier *t, const Found *f, char *dst, int verify) {
    const char *src = (const char *)t->map.buf + f->offset;
    int r;
    if (f->length >= PARALLEL_COPY_MIN) {
        t->users++;
        PyThreadState *saved = PyEval_SaveThread();
        r = copy_and_check(src, dst, f, verify);
        PyEval_RestoreThread(saved);
        t->users--;
        if (t->closed && t->users == 0) {
            release_buffers(t);
            return R_STALE;
        }
    } else {
        r = copy_and_check(src, dst, f, verify);
    }
    if (r == 0 && t->hits.buf && f->index < t->hits_count)
        __atomic_fetch_add((uint32_t *)t->hits.buf + f->index, 1, __ATOMIC_RELAXED);
    return r;
}

/* What every method starts with: its argument count, the key of (args[0], args[1]) and a current tier.
 * 1: go on with *lo, *hi; 0: return *early (a code for the Python path, or NULL with an exception set). */
static int begin(MapTier *t, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *usage,
                 uint64_t *lo, uint64_t *hi, PyObject **early) {
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        *early = NULL;
        return 0;
    }
    if (!key_of(args[0], args[1], lo, hi)) {
        *early = PyLong_FromLong(R_NOT_HANDLED);
        return 0;
    }
    if (!current(t)) {
        *early = PyLong_FromLong(R_STALE);
        return 0;
    }
    return 1;
}

/* copy_into(ns, name, buffer, verify) -> the block's length, or a negative R_* code. */
static PyObject *MapTier_copy_into(MapTier *t, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t lo, hi;
    PyObject *early;
    if (!begin(t, args, nargs, 4, "copy_into(ns, name, buffer, verify)", &lo, &hi, &early)) return early;
    int verify = PyObject_IsTrue(args[3]);
    if (verify < 0) return NULL;
    Py_buffer dst;
    if (PyObject_GetBuffer(args[2], &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();   /* read-only or not contiguous: the Python path says which */
        return PyLong_FromLong(R_NOT_HANDLED);
    }
    /* An exporter written in Python may have let another thread close the client meanwhile. */
    if (!current(t)) {
        PyBuffer_Release(&dst);
        return PyLong_FromLong(R_STALE);
    }
    Found f;
    long r = find(t, lo, hi, &f);
    if (r == 0) {
        if (f.length > (uint64_t)dst.len) r = R_TOO_SMALL;
        else r = copy_out(t, &f, (char *)dst.buf, verify);
        if (r == 0) r = (long)f.length;
    }
    PyBuffer_Release(&dst);
    return PyLong_FromLong(r);
}

/* get(ns, name, verify) -> the block's bytes, or a negative R_* code as an int. */
static PyObject *MapTier_get(MapTier *t, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t lo, hi;
    PyObject *early;
    if (!begin(t, args, nargs, 3, "get(ns, name, verify)", &lo, &hi, &early)) return early;
    int verify = PyObject_IsTrue(args[2]);
    if (verify < 0) return NULL;
    if (!current(t)) return PyLong_FromLong(R_STALE);   /* (IsTrue may run Python code) */
    Found f;
    int r = find(t, lo, hi, &f);
    if (r != 0) return PyLong_FromLong(r);
    if (f.length > (uint64_t)PY_SSIZE_T_MAX) return PyLong_FromLong(R_RETRY);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)f.length);
    if (!out) return NULL;
    if (!current(t)) {      /* (an allocation may run a finalizer, which may close the client) */
        Py_DECREF(out);
        return PyLong_FromLong(R_STALE);
    }
    r = copy_out(t, &f, PyBytes_AS_STRING(out), verify);
    if (r != 0) {
        Py_DECREF(out);
        return PyLong_FromLong(r);
    }
    return out;
}

/* contains(ns, name) -> 1 resident (stable while looked at), or a negative R_* code. */
static PyObject *MapTier_contains(MapTier *t, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t lo, hi;
    PyObject *early;
    if (!begin(t, args, nargs, 2, "contains(ns, name)", &lo, &hi, &early)) return early;
    Found f;
    int r = find(t, lo, hi, &f);
    return PyLong_FromLong(r == 0 ? 1 : r);
}

/* key(ns, name) -> (lo, hi) for the common case, None otherwise (tests compare it with block_key). */
static PyObject *mapcopy_key(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    (void)mod;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "key(ns, name)");
        return NULL;
    }
    uint64_t lo, hi;
    if (!key_of(args[0], args[1], &lo, &hi)) Py_RETURN_NONE;
    return Py_BuildValue("(KK)", (unsigned long long)lo, (unsigned long long)hi);
}

static PyMethodDef MapTier_methods[] = {
    {"copy_into", (PyCFunction)(void (*)(void))MapTier_copy_into, METH_FASTCALL,
     "copy_into(ns, name, buffer, verify) -> length, or a negative code"},
    {"get", (PyCFunction)(void (*)(void))MapTier_get, METH_FASTCALL, "get(ns, name, verify) -> bytes, or a negative code"},
    {"contains", (PyCFunction)(void (*)(void))MapTier_contains, METH_FASTCALL,
     "contains(ns, name) -> 1, or a negative code"},
    {"watch", (PyCFunction)MapTier_watch, METH_VARARGS, "watch(liveness_page, mark)"},
    {"close", (PyCFunction)MapTier_close, METH_NOARGS, "let go of the mappings"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MapTierType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tokenwarehouse._mapcopy.MapTier",
    .tp_doc = "One DRAM tier as mapped, its layout checked once: lookups and copies in C.",
    .tp_basicsize = sizeof(MapTier),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)MapTier_init,
    .tp_dealloc = (destructor)MapTier_dealloc,
    .tp_methods = MapTier_methods,
};

static PyMethodDef module_methods[] = {
    {"key", (PyCFunction)(void (*)(void))mapcopy_key, METH_FASTCALL, "key(ns, name) -> (lo, hi) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tokenwarehouse._mapcopy",
    "The DRAM tier's lookup and copy in C (optional accelerator of tokenwarehouse.Client).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__mapcopy(void) {
    if (PyType_Ready(&MapTierType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&MapTierType);
    if (PyModule_AddObject(m, "MapTier", (PyObject *)&MapTierType) < 0) {
        Py_DECREF(&MapTierType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MISS", R_MISS) < 0 || PyModule_AddIntConstant(m, "RETRY", R_RETRY) < 0 ||
        PyModule_AddIntConstant(m, "STALE", R_STALE) < 0 || PyModule_AddIntConstant(m, "NOT_HANDLED", R_NOT_HANDLED) < 0 ||
        PyModule_AddIntConstant(m, "CHECKSUM", R_CHECKSUM) < 0 || PyModule_AddIntConstant(m, "TOO_SMALL", R_TOO_SMALL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
