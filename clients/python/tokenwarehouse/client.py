"""Client of a TokenWarehouse mount: reads blocks from the shared-memory DRAM tier, else from block files.

    from tokenwarehouse import Client
    with Client("/mnt/kv") as tw:
        tw.put("llama-8b", "9f86d081884c7d65", data)      # first write wins
        data = tw.get("llama-8b", "9f86d081884c7d65")     # map hit: one memcpy, no system call

The tier file is found through `MOUNT/.tw/dram`, mapped read-only and read with the seqlock protocol of
docs/dram-tier.md: a lookup that races with the daemon (odd `seq`, `seq` changed during the copy, bounds
out of the data area) falls back to the block file, so `get` always returns the block's exact bytes.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import sys
import threading
import time

import xxhash

try:  # numpy's copy releases the GIL, so threads copying blocks run in parallel; optional.
    import numpy as _np
except ImportError:  # pragma: no cover - numpy is not required
    _np = None

_PARALLEL_COPY_MIN = 64 * 1024


def _copy(dst, src) -> None:
    """dst[:] = src for two byte memoryviews of equal length, without holding the GIL for large ones."""
    if _np is not None and src.nbytes >= _PARALLEL_COPY_MIN:
        _np.copyto(_np.frombuffer(dst, dtype=_np.uint8), _np.frombuffer(src, dtype=_np.uint8))
    else:
        dst[:] = src

from .layout import (
    ENTRY_BODY, ENTRY_SIZE, GENERATION_OFFSET, HITS_SUFFIX, MAGIC, STATE_EMPTY, STATE_VALID, SUPERBLOCK,
    SUPERBLOCK_SIZE, VERSION,
)

if sys.byteorder != "little":  # the tier is little-endian; so is every machine the daemon runs on
    raise ImportError("tokenwarehouse reads the DRAM tier on little-endian machines only")

__all__ = ["Client", "TierFormatError", "block_key", "block_relpath"]

_MASK64 = (1 << 64) - 1
_xxh3_128 = xxhash.xxh3_128_intdigest
_xxh3_64 = xxhash.xxh3_64_intdigest
_HEX_NAME = re.compile(r"[0-9a-f]{16,128}")
_PREFETCH_CHUNK = 64 << 10   # prefetch hints go out in writes of whole lines, at most this long
_CONTROL = ".tw"
# Python >= 3.13 can map without keeping a duplicate of the descriptor open.
_MMAP_KW = {"trackfd": False} if sys.version_info >= (3, 13) else {}

# Lookup results other than an entry.
_MISS = 0
_RETRY = 1


class TierFormatError(Exception):
    """The tier file is not a DRAM tier this client can read (magic, version or sizes)."""


def _text(s, what: str) -> str:
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    elif not isinstance(s, str):
        raise TypeError(f"{what} must be str or bytes, not {type(s).__name__}")
    return s


def _check_component(s: str, what: str) -> None:
    if not s or "/" in s or "\0" in s or s == "." or s == "..":
        raise ValueError(f"invalid {what} {s!r}: must be a non-empty file name without '/' or NUL")


def block_key(ns, name) -> tuple[int, int]:
    """(key_lo, key_hi): XXH3-128 of the bytes "NAMESPACE/NAME", low and high 64 bits."""
    if ns.__class__ is not str or name.__class__ is not str:
        ns, name = _text(ns, "namespace"), _text(name, "name")
    d = _xxh3_128(f"{ns}/{name}".encode("utf-8", "surrogateescape"))
    return d & _MASK64, d >> 64


def block_relpath(ns, name) -> str:
    """The block file's path inside the mount: NS/hh/NAME for 16-128 lowercase hex names, else NS/NAME."""
    ns = _text(ns, "namespace")
    name = _text(name, "name")
    _check_component(ns, "namespace")
    _check_component(name, "name")
    if _HEX_NAME.fullmatch(name):
        return os.path.join(ns, name[:2], name)
    return os.path.join(ns, name)


class _Map:
    """One mapping of a tier file (immutable once built; a new generation gets a new _Map)."""

    __slots__ = ("path", "mm", "mv", "q", "gen", "gen_index", "table", "mask", "probe", "data_lo", "data_hi",
                 "capacity", "size", "hits_mm", "hits")

    def __init__(self, path: str):
        self.path = path
        self.hits_mm = None
        self.hits = None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < SUPERBLOCK_SIZE:
                raise TierFormatError(f"{path}: {size} bytes, shorter than a superblock")
            self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, **_MMAP_KW)
        finally:
            os.close(fd)
        try:
            (magic, version, sb_size, gen, file_size, table_off, capacity, entry_size, max_probe, data_off,
             data_size) = SUPERBLOCK.unpack_from(self.mm, 0)
            if magic != MAGIC:
                raise TierFormatError(f"{path}: bad magic {magic!r}")
            if version != VERSION:
                raise TierFormatError(f"{path}: layout version {version}, this client reads {VERSION}")
            if sb_size != SUPERBLOCK_SIZE or entry_size != ENTRY_SIZE:
                raise TierFormatError(f"{path}: superblock size {sb_size}, entry size {entry_size}")
            if capacity == 0 or capacity & (capacity - 1):
                raise TierFormatError(f"{path}: table capacity {capacity} is not a power of two")
            limit = min(size, file_size)
            if table_off < SUPERBLOCK_SIZE or table_off % 8 or table_off + capacity * ENTRY_SIZE > limit:
                raise TierFormatError(f"{path}: table [{table_off}, +{capacity}*64) outside the file ({limit})")
            if data_off + data_size > limit:
                raise TierFormatError(f"{path}: data area [{data_off}, +{data_size}) outside the file ({limit})")
            if gen == 0:
                raise TierFormatError(f"{path}: generation 0 (the daemon stopped)")
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
        self._open_hits(path + HITS_SUFFIX)

    def _open_hits(self, path: str) -> None:
        """Map PATH.hits read-write when this process may; hits are then counted, else not."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            need = self.capacity * 4
            if os.fstat(fd).st_size < need:
                return
            self.hits_mm = mmap.mmap(fd, need, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                                     **_MMAP_KW)
            self.hits = memoryview(self.hits_mm).cast("I")
        except OSError:
            self.hits_mm = self.hits = None
        finally:
            os.close(fd)

    def current(self) -> bool:
        return self.q[self.gen_index] == self.gen

    def release(self) -> None:
        """Unmap now (only when no other thread may still use this mapping)."""
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
                if off < self.data_lo or off + n > self.data_hi:
                    return _RETRY
                return i, eo, s1, off, n, csum
            i = (i + 1) & mask
        return _MISS


class Client:
    """A client of one TokenWarehouse mount.

    get/get_into read from the DRAM tier's shared-memory map when the block is resident and stable, else
    from the block file. put writes a block file (first write wins). `stats` counts what happened:
    map_hits, map_misses, map_retries (lost a race with the daemon, read the file instead), file_reads,
    remaps (tier mapped again after a generation change or after it appeared), checksum_errors (verify=True
    found a copy whose XXH3-64 did not match: the file was read instead).

    A Client may be shared by threads (lookups take no lock; a remap does) and survives fork.
    """

    def __init__(self, mount, verify: bool = False, *, retry_interval: float = 1.0):
        self.mount = os.fspath(mount)
        self.verify = bool(verify)
        self.retry_interval = float(retry_interval)
        self.stats = {"map_hits": 0, "map_misses": 0, "map_retries": 0, "file_reads": 0, "remaps": 0,
                      "checksum_errors": 0}
        self.tier_path: str | None = None    # what MOUNT/.tw/dram said last time it was read
        self.tier_error: str | None = None   # why the tier is not mapped, if it is not
        self._lock = threading.Lock()
        self._map: _Map | None = None
        self._next_try = 0.0
        self._closed = False
        self._connect()

    # ------------------------------------------------------------------------------------------ mapping

    @property
    def mapped(self) -> bool:
        """Whether the DRAM tier is mapped now."""
        return self._map is not None

    @property
    def generation(self) -> int:
        """The generation of the mapped tier (0 when none is mapped)."""
        m = self._map
        return m.gen if m is not None else 0

    def _read_tier_path(self) -> str | None:
        try:
            with open(os.path.join(self.mount, _CONTROL, "dram"), "rb", buffering=0) as f:
                text = f.read(4096)
        except (FileNotFoundError, NotADirectoryError):
            return None
        line = os.fsdecode(text).split("\n", 1)[0].strip()
        return line or None

    def _connect(self) -> _Map | None:
        """Read MOUNT/.tw/dram and map the tier it names; on failure use files, try again later."""
        m = None
        try:
            path = self._read_tier_path()
            self.tier_path = path
            if path is None:
                self.tier_error = "no DRAM tier (MOUNT/.tw/dram is missing or empty)"
            else:
                m = _Map(path)
                self.tier_error = None
        except (OSError, TierFormatError, ValueError) as e:
            self.tier_error = f"{type(e).__name__}: {e}"
            m = None
        self._map = m
        if m is None:
            self._next_try = time.monotonic() + self.retry_interval
        return m

    def _remap(self, old: _Map | None) -> _Map | None:
        """The generation changed (old) or no tier is mapped (old is None): map the tier anew."""
        with self._lock:
            if self._closed:
                raise ValueError("operation on a closed tokenwarehouse.Client")
            cur = self._map
            if cur is not old:           # another thread got here first
                return cur if cur is not None and cur.current() else None
            if old is None and time.monotonic() < self._next_try:
                return None
            # Drop the old mapping: it is unmapped once no thread uses it any more (a lookup in flight
            # keeps its own reference), so a stopped daemon's tier file does not stay pinned in memory.
            self._map = None
            m = self._connect()
            if m is not None:
                self.stats["remaps"] += 1
            return m

    def _tier(self) -> _Map | None:
        m = self._map
        if m is not None:
            if m.q[m.gen_index] == m.gen:
                return m
            return self._remap(m)
        if time.monotonic() < self._next_try and not self._closed:
            return None
        return self._remap(None)

    # -------------------------------------------------------------------------------------------- reads

    def path(self, ns, name) -> str:
        """The block file's path: MOUNT/NS/hh/NAME for 16-128 lowercase hex names, else MOUNT/NS/NAME."""
        return os.path.join(self.mount, block_relpath(ns, name))

    def _from_map(self, ns, name, copy, capacity=None):
        """The sequence-locked lookup of docs/dram-tier.md, shared by get and get_into.

        `copy(m, off, n)` copies the block out and returns (result, copied bytes); the result is returned
        when the entry did not change meanwhile (and, with verify, the checksum holds). None means: read
        the file. A block longer than `capacity` raises ValueError."""
        m = self._map
        if m is None or m.q[m.gen_index] != m.gen:
            m = self._tier()
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

    def get(self, ns, name) -> bytes:
        """The block's bytes, from the DRAM tier if it is resident, else from its file.

        Raises FileNotFoundError when the block does not exist."""
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
        dst = _writable_bytes(buffer)
        n = self.map_into(ns, name, dst)
        return n if n is not None else self._read_file_into(ns, name, dst)

    def map_into(self, ns, name, buffer) -> int | None:
        """Copy the block into `buffer` from the DRAM tier's map only: its length, or None when it is not
        resident there (or the copy raced with the daemon). No system call; never reads the file."""
        dst = _writable_bytes(buffer)

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
        m = self._map
        if m is None or m.q[m.gen_index] != m.gen:
            m = self._tier()
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
        _check_component(ns, "namespace")
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
            # On twfs the fan-out directories exist implicitly; on a plain directory make it.
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
        MOUNT/.tw/prefetch). Returns False when the daemon has no prefetch control file."""
        ns = _text(ns, "namespace")
        _check_component(ns, "namespace")
        if isinstance(names, (str, bytes)):
            names = [names]
        lines = []
        for name in names:
            name = _text(name, "name")
            _check_component(name, "name")
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
        """Unmap the tier. Later calls raise ValueError."""
        with self._lock:
            self._closed = True
            self._next_try = float("inf")
            m, self._map = self._map, None
        if m is not None:
            m.release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"tier {self.tier_path} gen {self.generation:#x}" if self._map else "files only"
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
