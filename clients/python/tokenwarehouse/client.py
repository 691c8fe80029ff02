"""Client of a TokenWarehouse mount: reads blocks from the shared-memory DRAM tiers, else from block files.

    from tokenwarehouse import Client
    with Client("/mnt/kv") as tw:
        tw.put("llama-8b", "9f86d081884c7d65", data)      # first write wins
        data = tw.get("llama-8b", "9f86d081884c7d65")     # map hit: one memcpy, no system call

`MOUNT/.tw/dram` names the daemon's tier broker (`socket PATH`). The client connects to it once and is
handed, for each security domain whose namespaces it may read, the tier file's descriptor (read-only) and
its hit counters, with the list of namespaces that tier holds (docs/dram-tier.md "Access"). Lookups then
follow the sequence-lock protocol: a lookup that races with the daemon (odd `seq`, `seq` changed during the
copy, bounds outside the data area) falls back to the block file, so `get` always returns exact bytes.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import socket
import sys
import threading
import time

import xxhash

try:  # numpy's copy releases the GIL, so threads copying blocks run in parallel; optional.
    import numpy as _np
except ImportError:  # pragma: no cover - numpy is not required
    _np = None

_PARALLEL_COPY_MIN = 64 * 1024

try:  # the lookup and copy in C (setup.py builds it where it can); the Python path below does the same
    from . import _mapcopy as _native
except ImportError:  # pragma: no cover - depends on how the package was built
    _native = None


def _copy(dst, src) -> None:
    """dst[:] = src for two byte memoryviews of equal length, without holding the GIL for large ones."""
    if _np is not None and src.nbytes >= _PARALLEL_COPY_MIN:
        _np.copyto(_np.frombuffer(dst, dtype=_np.uint8), _np.frombuffer(src, dtype=_np.uint8))
    else:
        dst[:] = src

from .layout import (
    ENTRY_BODY, ENTRY_SIZE, GENERATION_OFFSET, MAGIC, STATE_EMPTY, STATE_VALID, SUPERBLOCK, SUPERBLOCK_SIZE,
    VERSION,
)

if sys.byteorder != "little":  # the tier is little-endian; so is every machine the daemon runs on
    raise ImportError("tokenwarehouse reads the DRAM tier on little-endian machines only")

__all__ = ["Client", "TierFormatError", "block_key", "block_relpath", "key_of"]

_MASK64 = (1 << 64) - 1
_xxh3_128 = xxhash.xxh3_128_intdigest
_xxh3_64 = xxhash.xxh3_64_intdigest
_HASH = re.compile(r"[0-9a-f]{16,128}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9._@+-]{0,127}")
_MAX_PATH = 4096      # bytes of a path inside a namespace (docs/format.md "Keys")
_MAX_DEPTH = 16       # directories below a namespace
_PREFETCH_CHUNK = 64 << 10   # prefetch hints go out in writes of whole lines, at most this long
_CONTROL = ".tw"
# Python >= 3.13 can map without keeping a duplicate of the descriptor open.
_MMAP_KW = {"trackfd": False} if sys.version_info >= (3, 13) else {}

# Lookup results other than an entry.
_MISS = 0
_RETRY = 1
# The C lookup's results other than a length (tokenwarehouse/_mapcopy.c).
_NATIVE_MISS, _NATIVE_RETRY, _NATIVE_CHECKSUM = ((_native.MISS, _native.RETRY, _native.CHECKSUM) if _native is not None
                                                 else (None, None, None))


class TierFormatError(Exception):
    """A tier file is not a DRAM tier this client can read (magic, version or sizes)."""


def _text(s, what: str) -> str:
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    elif not isinstance(s, str):
        raise TypeError(f"{what} must be str or bytes, not {type(s).__name__}")
    return s


def _check_namespace(ns: str) -> None:
    if not _NAMESPACE.fullmatch(ns):
        raise ValueError(f"invalid namespace {ns!r}: 1-128 of [A-Za-z0-9._@+-], not starting with '.'")


def _components(path: str) -> list[str]:
    parts = path.split("/")
    if len(path.encode("utf-8", "surrogateescape")) > _MAX_PATH or len(parts) > _MAX_DEPTH + 1:
        raise ValueError(f"invalid block name {path!r}: longer than {_MAX_PATH} bytes or deeper than {_MAX_DEPTH}")
    for c in parts:
        if not c or c in (".", "..") or "\0" in c or len(c.encode("utf-8", "surrogateescape")) > 255:
            raise ValueError(f"invalid block name {path!r}: each part must be 1-255 bytes, without NUL, not . or ..")
    return parts


def key_of(name) -> str:
    """The key of a block name as clients give it (docs/format.md "Keys"): a canonical hash (16-128
    lowercase hex digits) means the canonical block, whose file is NS/hh/HASH, and is its own key; any
    other name is a path inside the namespace (`a/b/c.bin`) and is its own key too, except `hh/HASH`,
    which is the canonical block again. Raises ValueError for a name no file can have."""
    name = _text(name, "name")
    if _HASH.fullmatch(name):
        return name
    parts = _components(name)
    last = parts[-1]
    if len(parts) == 1:
        return last
    if len(parts) == 2 and len(parts[0]) == 2 and _HASH.fullmatch(last) and last.startswith(parts[0]):
        return last
    return name


def block_key(ns, name) -> tuple[int, int]:
    """(key_lo, key_hi): XXH3-128 of the bytes "NAMESPACE/KEY", low and high 64 bits, KEY = key_of(name)."""
    if ns.__class__ is str and name.__class__ is str and _HASH.fullmatch(name):
        key = name
    else:
        ns, key = _text(ns, "namespace"), key_of(name)
    d = _xxh3_128(f"{ns}/{key}".encode("utf-8", "surrogateescape"))
    return d & _MASK64, d >> 64


def block_relpath(ns, name) -> str:
    """The block file's path inside the mount: NS/hh/HASH for a canonical hash, NS/a/b/c for a path."""
    ns = _text(ns, "namespace")
    _check_namespace(ns)
    key = key_of(name)
    if _HASH.fullmatch(key):
        return f"{ns}/{key[:2]}/{key}"
    return f"{ns}/{key}"


class _Tier:
    """One tier file as mapped, its layout read and checked once (immutable; a new connection to the
    broker makes new ones). Nothing read from shared memory is trusted: every entry's bounds are checked
    against this snapshot before a byte is copied."""

    __slots__ = ("name", "mm", "mv", "q", "gen", "gen_index", "table", "mask", "probe", "data_lo", "data_hi",
                 "capacity", "size", "hits_mm", "hits", "native")

    def __init__(self, name: str, data_fd: int, hits_fd: int | None):
        self.name = name
        self.hits_mm = None
        self.hits = None
        self.native = None
        self.mm = self.mv = self.q = None
        size = os.fstat(data_fd).st_size
        if size < SUPERBLOCK_SIZE:
            raise TierFormatError(f"tier {name}: {size} bytes, shorter than a superblock")
        self.mm = mmap.mmap(data_fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, **_MMAP_KW)
        try:
            (magic, version, sb_size, gen, _file_size, table_off, capacity, entry_size, max_probe, data_off,
             data_size) = SUPERBLOCK.unpack_from(self.mm, 0)
            if magic != MAGIC:
                raise TierFormatError(f"tier {name}: bad magic {magic!r}")
            if version != VERSION:
                raise TierFormatError(f"tier {name}: layout version {version}, this client reads {VERSION}")
            if sb_size != SUPERBLOCK_SIZE or entry_size != ENTRY_SIZE:
                raise TierFormatError(f"tier {name}: superblock size {sb_size}, entry size {entry_size}")
            if capacity == 0 or capacity & (capacity - 1) or capacity > 1 << 32:
                raise TierFormatError(f"tier {name}: table capacity {capacity} is not a power of two")
            if table_off < SUPERBLOCK_SIZE or table_off % 8 or table_off + capacity * ENTRY_SIZE > size:
                raise TierFormatError(f"tier {name}: table [{table_off}, +{capacity}*64) outside the file ({size})")
            if data_off + data_size > size:
                raise TierFormatError(f"tier {name}: data area [{data_off}, +{data_size}) outside the file ({size})")
            if gen == 0:
                raise TierFormatError(f"tier {name}: generation 0 (the daemon stopped)")
            self.gen = gen
            self.size = size
            self.capacity = capacity
            self.table = table_off
            self.mask = capacity - 1
            self.probe = min(max_probe, capacity) or 1
            self.data_lo = data_off
            self.data_hi = data_off + data_size
            self.mv = memoryview(self.mm)
            self.q = self.mv.cast("Q")   # q[i]: the u64 at byte 8*i, read with one 8-byte load
            self.gen_index = GENERATION_OFFSET // 8
        except BaseException:
            self.release()
            raise
        if hits_fd is not None:
            self._map_hits(hits_fd)
        if _native is not None:
            # The same checked layout, handed to the C lookup (which checks it again itself). Should it
            # refuse, this tier is read in Python.
            try:
                self.native = _native.MapTier(self.mm, self.table, self.capacity, self.probe, self.data_lo,
                                              self.data_hi, self.gen, self.hits_mm)
            except (ValueError, TypeError, BufferError):
                self.native = None

    def _map_hits(self, fd: int) -> None:
        """Map the hit counters (a size-sealed memory file, so it cannot shrink under us)."""
        try:
            need = self.capacity * 4
            if os.fstat(fd).st_size < need:
                return
            self.hits_mm = mmap.mmap(fd, need, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                                     **_MMAP_KW)
            self.hits = memoryview(self.hits_mm).cast("I")
        except OSError:
            self.hits_mm = self.hits = None

    def current(self) -> bool:
        return self.q[self.gen_index] == self.gen

    def release(self) -> None:
        """Unmap now (only when no other thread may still use this mapping)."""
        if self.native is not None:
            self.native.close()   # a copy in flight keeps its mapping until it ends
        for name in ("hits", "q", "mv"):
            v = getattr(self, name, None)
            if v is not None:
                try:
                    v.release()
                except (BufferError, ValueError):
                    pass
        for name in ("hits_mm", "mm"):
            v = getattr(self, name, None)
            if v is not None:
                try:
                    v.close()
                except (BufferError, ValueError):
                    pass

    def find(self, lo: int, hi: int):
        """Probe for the key. Returns (index, entry_offset, seq, data_offset, length, checksum) of a valid
        entry with that key whose bounds lie in the data area (seq even when read; the caller re-reads it
        after using the entry), or _MISS, or _RETRY."""
        q = self.q
        mm = self.mm
        table = self.table
        mask = self.mask
        i = lo & mask
        for _ in range(self.probe):
            eo = table + (i << 6)
            s1 = q[eo >> 3]
            if s1 & 1:
                return _RETRY
            state, klo, khi, off, n, csum = ENTRY_BODY.unpack_from(mm, eo + 8)
            if state == STATE_EMPTY:
                return _MISS
            if state == STATE_VALID and klo == lo and khi == hi:
                if q[eo >> 3] != s1:      # fields read while the entry changed: do not trust the length
                    return _RETRY
                if off < self.data_lo or n > self.data_hi - off:
                    return _RETRY
                return i, eo, s1, off, n, csum
            i = (i + 1) & mask
        return _MISS


class _Connection:
    """What the broker handed this process: the tiers it may read, by namespace, and the daemon's
    liveness page (immutable). `alive` is None with a broker that sends no liveness page."""

    __slots__ = ("socket", "by_namespace", "native_by_namespace", "tiers", "alive_mm", "alive", "mark")

    def __init__(self, socket_path: str, by_namespace: dict, tiers: list, alive_fd: int | None):
        self.socket = socket_path
        self.by_namespace = by_namespace
        self.tiers = tiers
        self.alive_mm = self.alive = None
        self.mark = 0
        if alive_fd is not None:
            try:
                self.alive_mm = mmap.mmap(alive_fd, 4096, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, **_MMAP_KW)
                self.alive = memoryview(self.alive_mm).cast("Q")
                self.mark = self.alive[0]
            except (OSError, ValueError):
                self.alive_mm = self.alive = None
            if self.alive is not None and self.mark == 0:   # the daemon was stopping: use nothing
                self.by_namespace = {}
            elif self.alive is not None:
                for t in tiers:
                    if t.native is not None:
                        t.native.watch(self.alive_mm, self.mark)
        # The C lookups by namespace: one dictionary probe on a read's fast path.
        self.native_by_namespace = {ns: t.native for ns, t in self.by_namespace.items() if t.native is not None}

    def daemon_alive(self) -> bool:
        a = self.alive
        return a is None or a[0] == self.mark

    def release(self) -> None:
        for t in self.tiers:
            t.release()
        for v in (self.alive, self.alive_mm):
            if v is not None:
                try:
                    v.release() if isinstance(v, memoryview) else v.close()
                except (BufferError, ValueError):
                    pass


def _ask_broker(path: str, timeout: float = 2.0) -> _Connection:
    """Connect to the tier broker at `path` and map every tier it hands over (docs/dram-tier.md "Access")."""
    by_namespace: dict[str, _Tier] = {}
    tiers: list[_Tier] = []
    alive_fd = None
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        s.connect(path)
        while True:
            msg, fds, _flags, _addr = socket.recv_fds(s, 65536, 4)
            try:
                if not msg and not fds:
                    break           # the broker closed without "end": keep what came
                lines = msg.decode("utf-8", "replace").split("\n")
                head = lines[0].split(" ")
                if head[0] == "end":
                    if len(fds) == 1:
                        alive_fd = os.dup(fds[0])
                    break
                if head[0] != "tier" or len(head) != 2 or len(fds) != 2 or len(lines) < 2:
                    continue        # a message this client does not know: skip it
                names = lines[1].split(" ")
                if names[0] != "namespaces":
                    continue
                try:
                    tier = _Tier(head[1], fds[0], fds[1])
                except (OSError, ValueError, TierFormatError):
                    continue
                tiers.append(tier)
                for ns in names[1:]:
                    if ns:
                        by_namespace[ns] = tier
            finally:
                for fd in fds:
                    os.close(fd)
    try:
        return _Connection(path, by_namespace, tiers, alive_fd)
    finally:
        if alive_fd is not None:
            os.close(alive_fd)


class Client:
    """A client of one TokenWarehouse mount.

    get/get_into read from a DRAM tier's shared-memory map when the block is resident and stable, else
    from the block file. put writes a block file (first write wins). `stats` counts what happened:
    map_hits, map_misses, map_retries (lost a race with the daemon, read the file instead), file_reads,
    remaps (asked the broker again: after a daemon restart, or for a namespace made since),
    checksum_errors (verify=True found a copy whose XXH3-64 did not match: the file was read instead).

    Block names are canonical hashes (the file NS/hh/HASH) or paths inside the namespace (`a/b/c.bin`).
    A process maps only the tiers of namespaces it may read through the mount (the daemon decides, from
    the kernel's account of who connected): for the others every read goes to the file and its
    permission check.

    A Client may be shared by threads (lookups take no lock; a reconnect does) and survives fork.
    `native` says whether map reads go through the C lookup (built with the package where a compiler and
    xxhash.h were found); the Python path gives the same results, more slowly.
    """

    def __init__(self, mount, verify: bool = False, *, retry_interval: float = 1.0, native: bool = True):
        self.mount = os.fspath(mount)
        self.verify = bool(verify)
        # Map reads through the C lookup (tokenwarehouse._mapcopy) when it was built: same protocol, same
        # results, well under a microsecond a block instead of 5-8 in Python. native=False keeps to Python.
        self.native = bool(native) and _native is not None
        self.retry_interval = float(retry_interval)
        self.stats = {"map_hits": 0, "map_misses": 0, "map_retries": 0, "file_reads": 0, "remaps": 0,
                      "checksum_errors": 0}
        self.tier_socket: str | None = None  # the broker MOUNT/.tw/dram named last time it was read
        self.tier_error: str | None = None   # why no tier is mapped, if none is
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._next_try = 0.0
        self._closed = False
        with self._lock:
            self._reconnect()
        self.stats["remaps"] = 0   # the first connection is not a remap

    # ------------------------------------------------------------------------------------------ mapping

    @property
    def mapped(self) -> bool:
        """Whether at least one DRAM tier is mapped and its daemon still runs."""
        c = self._conn
        return c is not None and c.daemon_alive() and any(t.current() for t in c.tiers)

    @property
    def generation(self) -> int:
        """The generation of the first mapped tier (0 when none is mapped)."""
        c = self._conn
        return c.tiers[0].gen if c is not None and c.tiers else 0

    @property
    def tiers(self) -> dict[str, str]:
        """Namespace -> name of the tier file that holds its resident blocks, for the namespaces mapped."""
        c = self._conn
        return {ns: t.name for ns, t in c.by_namespace.items()} if c is not None else {}

    def _read_dram_file(self) -> str | None:
        try:
            with open(os.path.join(self.mount, _CONTROL, "dram"), "rb", buffering=0) as f:
                text = f.read(4096)
        except (FileNotFoundError, NotADirectoryError):
            return None
        line = os.fsdecode(text).split("\n", 1)[0].strip()
        if not line:
            return None
        word, _, path = line.partition(" ")
        if word != "socket" or not path:
            raise TierFormatError(f"{self.mount}/.tw/dram says {line[:200]!r}; this client understands 'socket PATH'")
        return path

    def _reconnect(self) -> _Connection | None:
        """Ask the broker named in MOUNT/.tw/dram for the tiers (caller holds _lock); on failure use files
        and try again after retry_interval."""
        conn = None
        try:
            path = self._read_dram_file()
            self.tier_socket = path
            if path is None:
                self.tier_error = "no DRAM tier (MOUNT/.tw/dram is missing or empty)"
            else:
                conn = _ask_broker(path)
                self.tier_error = None if conn.tiers else "the daemon handed this process no tier"
        except (OSError, TierFormatError, ValueError) as e:
            self.tier_error = f"{type(e).__name__}: {e}"
        # The old mappings are unmapped once no thread uses them (a lookup in flight keeps its own
        # reference), so a stopped daemon's tier does not stay pinned in this process's memory.
        self._conn = conn
        self._next_try = time.monotonic() + self.retry_interval
        if conn is not None and conn.tiers:
            self.stats["remaps"] += 1
        return conn

    def refresh(self) -> None:
        """Ask the daemon for the tiers again now (after a restart, a new namespace, a chmod)."""
        with self._lock:
            if self._closed:
                raise ValueError("operation on a closed tokenwarehouse.Client")
            self._reconnect()

    def _tier(self, ns: str) -> _Tier | None:
        """The current tier that holds namespace `ns`, or None (then read the file)."""
        c = self._conn
        stale = False
        if c is not None:
            t = c.by_namespace.get(ns)
            if t is not None:
                a = c.alive
                if t.q[t.gen_index] == t.gen and (a is None or a[0] == c.mark):
                    return t
                stale = True    # the daemon stopped, died or restarted: ask again now
        if self._closed:
            raise ValueError("operation on a closed tokenwarehouse.Client")
        # A namespace no tier holds (not readable, no tier, made since): ask again at most once per
        # retry_interval, so misses cost no system call in between.
        if not stale and time.monotonic() < self._next_try:
            return None
        with self._lock:
            if self._closed:
                return None
            if self._conn is c and (stale or time.monotonic() >= self._next_try):
                self._reconnect()
            c = self._conn
        t = c.by_namespace.get(ns) if c is not None else None
        return t if t is not None and t.current() and c.daemon_alive() else None

    # -------------------------------------------------------------------------------------------- reads

    def path(self, ns, name) -> str:
        """The block file's path: MOUNT/NS/hh/HASH for a canonical hash, else MOUNT/NS/NAME (NAME may hold '/')."""
        return os.path.join(self.mount, block_relpath(ns, name))

    def _from_map(self, ns, name, copy, capacity=None):
        """The sequence-locked lookup of docs/dram-tier.md, shared by get and get_into.

        `copy(m, off, n)` copies the block out and returns (result, copied bytes); the result is returned
        when the entry did not change meanwhile (and, with verify, the checksum holds). None means: read
        the file. A block longer than `capacity` raises ValueError."""
        if ns.__class__ is not str:
            ns = _text(ns, "namespace")
        m = self._tier(ns)
        if m is None:
            return None
        lo, hi = block_key(ns, name)
        r = m.find(lo, hi)
        if r.__class__ is not tuple:
            self.stats["map_misses" if r == _MISS else "map_retries"] += 1
            return None
        i, eo, s1, off, n, csum = r
        if capacity is not None and n > capacity:
            if m.q[eo >> 3] == s1:
                raise ValueError(f"buffer of {capacity} bytes is too small for block {ns}/{name} of {n} bytes")
            self.stats["map_retries"] += 1
            return None
        result, copied = copy(m, off, n)
        if m.q[eo >> 3] != s1:   # changed while we copied: evicted or moved
            self.stats["map_retries"] += 1
            return None
        if self.verify and _xxh3_64(copied) != csum:
            self.stats["checksum_errors"] += 1
            return None
        self.stats["map_hits"] += 1
        h = m.hits
        if h is not None:
            h[i] = (h[i] + 1) & 0xFFFFFFFF
        return result

    def _native_tier(self, ns):
        """The tier's C handle for a lookup in C, or None (then the Python path decides everything).
        get_into and map_into repeat these lines (and get_into does not call map_into): the extra call
        level cost 16 KiB reads 4-10% (dram_bench.py --block-size 16K, 2026-12-07 23:42: 0.93 and 0.96 of
        numpy.copyto through map_into, 1.03 and 1.00 without)."""
        c = self._conn
        return c.native_by_namespace.get(ns) if c is not None and self.native else None

    def _native_result(self, r) -> bool:
        """Counts a C lookup's result; True when it settled the read (a hit, a miss, a lost race, a bad
        checksum), False when the Python path must decide (daemon gone, odd name or buffer, too small)."""
        if r >= 0:
            self.stats["map_hits"] += 1
        elif r == _NATIVE_MISS:
            self.stats["map_misses"] += 1
        elif r == _NATIVE_RETRY:
            self.stats["map_retries"] += 1
        elif r == _NATIVE_CHECKSUM:
            self.stats["checksum_errors"] += 1
        else:
            return False
        return True

    def get(self, ns, name) -> bytes:
        """The block's bytes, from the DRAM tier if it is resident, else from its file.

        Raises FileNotFoundError when the block does not exist."""
        t = self._native_tier(ns)
        if t is not None:
            r = t.get(ns, name, self.verify)
            if r.__class__ is bytes:
                self.stats["map_hits"] += 1
                return r
            if self._native_result(r):
                return self._read_file(ns, name)

        def copy(m, off, n):
            data = m.mm[off:off + n]
            return data, data
        data = self._from_map(ns, name, copy)
        return data if data is not None else self._read_file(ns, name)

    def _read_file(self, ns, name) -> bytes:
        self.stats["file_reads"] += 1
        with open(self.path(ns, name), "rb", buffering=0) as f:
            return f.readall()

    def get_into(self, ns, name, buffer) -> int:
        """Copy the block into `buffer` (anything writable with the buffer protocol: bytearray, memoryview,
        a C-contiguous numpy array...). Returns the block's length; ValueError if the buffer is too small."""
        c = self._conn     # _native_tier, inlined
        t = c.native_by_namespace.get(ns) if c is not None and self.native else None
        if t is not None:
            r = t.copy_into(ns, name, buffer, self.verify)
            if r >= 0:
                self.stats["map_hits"] += 1
                return r
            if self._native_result(r):
                return self._read_file_into(ns, name, _writable_bytes(buffer))
        dst = _writable_bytes(buffer)
        n = self._map_into_python(ns, name, dst)
        return n if n is not None else self._read_file_into(ns, name, dst)

    def map_into(self, ns, name, buffer) -> int | None:
        """Copy the block into `buffer` from the DRAM tier's map only: its length, or None when it is not
        resident there (or the copy raced with the daemon). No system call; never reads the file."""
        c = self._conn     # _native_tier, inlined
        t = c.native_by_namespace.get(ns) if c is not None and self.native else None
        if t is not None:
            r = t.copy_into(ns, name, buffer, self.verify)
            if r >= 0:
                self.stats["map_hits"] += 1
                return r
            if self._native_result(r):
                return None
        return self._map_into_python(ns, name, _writable_bytes(buffer))

    def _map_into_python(self, ns, name, dst: memoryview) -> int | None:
        """map_into in Python: any name, any namespace, the reconnect after a daemon restart."""
        def copy(m, off, n):
            _copy(dst[:n], m.mv[off:off + n])
            return n, dst[:n]
        return self._from_map(ns, name, copy, capacity=dst.nbytes)

    def _read_file_into(self, ns, name, dst: memoryview) -> int:
        self.stats["file_reads"] += 1
        with open(self.path(ns, name), "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size > dst.nbytes:
                raise ValueError(f"buffer of {dst.nbytes} bytes is too small for block {ns}/{name} of {size} bytes")
            got = 0
            while got < size:
                k = f.readinto(dst[got:size])
                if not k:
                    break
                got += k
            return got

    def exists(self, ns, name) -> bool:
        """Whether the block exists: resident in the tier, or its file exists."""
        t = self._native_tier(ns)
        if t is not None:
            r = t.contains(ns, name)
            if r == 1:
                return True
            if r == _NATIVE_MISS or r == _NATIVE_RETRY:
                return os.path.exists(self.path(ns, name))
        ns = _text(ns, "namespace")
        m = self._tier(ns)
        if m is not None:
            lo, hi = block_key(ns, name)
            r = m.find(lo, hi)
            if r.__class__ is tuple and m.q[r[1] >> 3] == r[2]:
                return True
        return os.path.exists(self.path(ns, name))

    def tier(self, ns, name) -> str:
        """Where the daemon holds the block: "dram" or "nvme" (xattr user.tw.tier of its file)."""
        return os.fsdecode(os.getxattr(self.path(ns, name), "user.tw.tier"))

    # ------------------------------------------------------------------------------------------- writes

    def ensure_namespace(self, ns, mode: int = 0o755) -> str:
        """Create namespace `ns` if it does not exist; returns its directory."""
        ns = _text(ns, "namespace")
        _check_namespace(ns)
        path = os.path.join(self.mount, ns)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
        return path

    def put(self, ns, name, data, parent=None, tokens=None) -> bool:
        """Store a block: True if written, False if the block already exists (first write wins).

        `parent` (hex prefix hash of the previous block, str or bytes) and `tokens` (int, str or bytes) are
        set as xattrs user.tw.parent / user.tw.tokens before the bytes are written. Raises
        FileNotFoundError if the namespace does not exist (see ensure_namespace)."""
        path = self.path(ns, name)
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        attrs = []
        if parent is not None:
            attrs.append(("user.tw.parent", _attr_bytes(parent, "parent")))
        if tokens is not None:
            attrs.append(("user.tw.tokens", _attr_bytes(tokens, "tokens")))
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:
            ns_dir = os.path.join(self.mount, _text(ns, "namespace"))
            if not os.path.isdir(ns_dir):
                raise FileNotFoundError(errno.ENOENT, f"namespace {ns!r} does not exist in {self.mount} "
                                        f"(create it with Client.ensure_namespace)", ns_dir) from None
            parent_dir = os.path.dirname(path)
            if parent_dir == ns_dir:
                raise
            # A block inside directories: make them (on twfs the fan-out directories of canonical
            # hashes always exist; on a plain directory they are made too).
            os.makedirs(parent_dir, exist_ok=True)
            try:
                fd = os.open(path, flags, 0o644)
            except FileExistsError:
                return False
        try:
            for key, value in attrs:
                os.setxattr(fd, key, value)
            off, total = 0, view.nbytes
            while off < total:
                k = os.write(fd, view[off:])
                if k <= 0:
                    raise OSError(errno.EIO, f"short write to {path} at {off} of {total}")
                off += k
        except BaseException:
            # Closing commits whatever was written; remove the incomplete block we created.
            try:
                os.close(fd)
            finally:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise
        os.close(fd)
        return True

    def prefetch(self, ns, names) -> bool:
        """Ask the daemon to load blocks into the DRAM tier in the background (lines "NS\\tNAME\\n" written to
        MOUNT/.tw/prefetch). Returns False when the daemon has no prefetch control file. The daemon skips
        names this process could not read through the mount, as if they were missing."""
        ns = _text(ns, "namespace")
        _check_namespace(ns)
        if isinstance(names, (str, bytes)):
            names = [names]
        lines = []
        for name in names:
            name = _text(name, "name")
            key_of(name)   # raises ValueError for a name no block can have
            if "\n" in name or "\t" in name:
                raise ValueError(f"a name sent as a prefetch hint may not hold a tab or newline: {name!r}")
            lines.append(f"{ns}\t{name}\n".encode("utf-8", "surrogateescape"))
        try:
            fd = os.open(os.path.join(self.mount, _CONTROL, "prefetch"), os.O_WRONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            for chunk in _line_chunks(lines, _PREFETCH_CHUNK):
                view = memoryview(chunk)
                while view:
                    k = os.write(fd, view)
                    if k <= 0:
                        raise OSError(errno.EIO, "short write of prefetch hints")
                    view = view[k:]
        finally:
            os.close(fd)
        return True

    # ----------------------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Unmap the tiers. Later calls raise ValueError."""
        with self._lock:
            self._closed = True
            self._next_try = float("inf")
            c, self._conn = self._conn, None
        if c is not None:
            c.release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self._conn
        where = f"{len(c.tiers)} tier(s) from {self.tier_socket}" if c is not None and c.tiers else "files only"
        return f"<tokenwarehouse.Client {self.mount!r} {where}{' closed' if self._closed else ''}>"


def _writable_bytes(buffer) -> memoryview:
    dst = memoryview(buffer)
    if dst.readonly:
        raise TypeError("get_into needs a writable buffer")
    if dst.ndim != 1 or dst.format != "B":
        dst = dst.cast("B")
    return dst


def _attr_bytes(value, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool) and what == "tokens":
        return str(value).encode()
    raise TypeError(f"{what} must be str or bytes{' or int' if what == 'tokens' else ''}, "
                    f"not {type(value).__name__}")


def _line_chunks(lines: list[bytes], limit: int):
    """Join lines into chunks of at most `limit` bytes (a longer single line is its own chunk)."""
    if not lines:
        return
    buf, size = [], 0
    for line in lines:
        if buf and size + len(line) > limit:
            yield b"".join(buf)
            buf, size = [], 0
        buf.append(line)
        size += len(line)
    yield b"".join(buf)
