"""What the engine connectors (tokenwarehouse.vllm, tokenwarehouse.sglang) share: the stored form of a KV
block, the byte regions a block occupies in an engine's KV cache, loading and saving blocks through the
public Client API, and the engine counters sent to the daemon.

Stored form of a block (format 1, docs/engine.md): the engine's KV bytes of the block (payload), then a
64-byte trailer that ties those bytes to their name and to the KV layout they were written for:

    offset size field (little-endian)
      0     8  magic b"TWKVBLK1"
      8     4  format version (1)
     12     4  trailer size (64)
     16     8  payload length in bytes
     24     8  XXH3-64 of the payload
     32     8  XXH3-64 of "NAMESPACE/NAME" (the block's own name)
     40     8  layout fingerprint (XXH3-64 of the engine's description of its KV layout)
     48     4  tokens in the block
     52     4  flags (0)
     56     8  XXH3-64 of bytes 0..55

A reader accepts a block only when every field matches what it expects: length, name, layout, both
checksums. The daemon already refuses to serve bytes whose stored checksum fails; the trailer also
catches a block that is intact but not the one asked for (a file replaced under the same name, a block
written by an engine with another layout), so an engine never loads KV that is not its own.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import threading
from typing import Callable, Iterable, Optional, Sequence

import xxhash

try:
    import numpy as np
except ImportError:  # pragma: no cover - the connectors need numpy (torch brings it)
    np = None

__all__ = [
    "TRAILER_SIZE", "BlockFormatError", "seal", "check", "name_check", "layout_fingerprint",
    "safe_namespace", "BlockRegions", "BlockIO", "host_view", "EngineCounters", "read_counter_lines",
    "merge_counters", "hex_name",
]

MAGIC = b"TWKVBLK1"
FORMAT_VERSION = 1
TRAILER = struct.Struct("<8sIIQQQQII")     # fields 0..55; the self-check follows
TRAILER_SIZE = 64
_SELF = struct.Struct("<Q")
assert TRAILER.size == 56 and TRAILER.size + _SELF.size == TRAILER_SIZE

_xxh64 = xxhash.xxh3_64_intdigest
_NS_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@+-")


class BlockFormatError(Exception):
    """A stored block does not have the expected length, trailer, name, layout or checksum.

    `foreign` is True when the block is intact but was written for another KV layout (an engine with a
    different layout sharing the namespace): not damage, so it is left in place."""

    def __init__(self, message: str, foreign: bool = False):
        super().__init__(message)
        self.foreign = foreign


def config_flag(v, default: bool) -> bool:
    """An engine config value as a flag: None is the default; "0", "false", "no", "off" and "" are false."""
    if v is None:
        return default
    if isinstance(v, str):
        return v.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(v)


def hex_name(block_hash) -> str:
    """The canonical name of a block: its hash as lowercase hex (bytes, or an int as 8 bytes)."""
    if isinstance(block_hash, int):
        block_hash = block_hash.to_bytes(8, "little", signed=block_hash < 0)
    return bytes(block_hash).hex()


def name_check(ns: str, name: str) -> int:
    return _xxh64(f"{ns}/{name}".encode("utf-8", "surrogateescape"))


def layout_fingerprint(description) -> int:
    """XXH3-64 of a canonical JSON form of a layout description (dicts, lists, str, int)."""
    return _xxh64(json.dumps(description, sort_keys=True, separators=(",", ":")).encode())


def seal(buf, payload_len: int, ns: str, name: str, layout_fp: int, tokens: int) -> None:
    """Write the trailer into buf[payload_len:payload_len+64] for the payload in buf[:payload_len]."""
    mv = memoryview(buf).cast("B")
    head = TRAILER.pack(MAGIC, FORMAT_VERSION, TRAILER_SIZE, payload_len, _xxh64(mv[:payload_len]),
                        name_check(ns, name), layout_fp, tokens, 0)
    mv[payload_len:payload_len + TRAILER.size] = head
    mv[payload_len + TRAILER.size:payload_len + TRAILER_SIZE] = _SELF.pack(_xxh64(head))


def check(trailer, payload_len: int, ns: str, name: str, layout_fp: int, payload_hash: Callable[[], int]) -> None:
    """Raise BlockFormatError unless `trailer` (64 bytes) describes this block; `payload_hash()` returns the
    XXH3-64 of the payload as it was received (called last, only when the trailer itself holds)."""
    t = memoryview(trailer).cast("B")
    if t.nbytes != TRAILER_SIZE:
        raise BlockFormatError(f"trailer of {t.nbytes} bytes")
    head = bytes(t[:TRAILER.size])
    (self_check,) = _SELF.unpack_from(t, TRAILER.size)
    if _xxh64(head) != self_check:
        raise BlockFormatError("trailer checksum mismatch (not a KV block of this format, or damaged)")
    magic, version, size, plen, phash, ncheck, lfp, _tokens, _flags = TRAILER.unpack(head)
    if magic != MAGIC or version != FORMAT_VERSION or size != TRAILER_SIZE:
        raise BlockFormatError(f"unknown block format {magic!r} v{version}")
    if plen != payload_len:
        raise BlockFormatError(f"payload of {plen} bytes, this engine's blocks have {payload_len}")
    if ncheck != name_check(ns, name):
        raise BlockFormatError("the block holds another name's KV")
    if lfp != layout_fp:
        raise BlockFormatError("the block was written for another KV layout", foreign=True)
    if payload_hash() != phash:
        raise BlockFormatError("payload checksum mismatch")


def safe_namespace(*parts: str, fingerprint: str = "", suffix: str = "") -> str:
    """A namespace name [A-Za-z0-9._@+-]{1,128} not starting with '.', from readable parts (joined by '.',
    other characters become '-'), a fingerprint (after '-') and a suffix (e.g. '@tp0'), cut to fit."""
    def clean(s: str) -> str:
        return "".join(c if c in _NS_CHARS else "-" for c in s).strip(".-") or "x"
    head = ".".join(clean(p) for p in parts if p)
    tail = (f"-{clean(fingerprint)}" if fingerprint else "") + (clean(suffix) if suffix else "")
    head = head[: max(1, 128 - len(tail))].rstrip(".-") or "x"
    name = head + tail
    if name.startswith("."):
        name = "x" + name[1:]
    return name[:128]


# ------------------------------------------------------------------------------------------- regions

def _dense_runs(t) -> list[tuple[int, int]]:
    """(byte offset from t's storage start, length) of the memory runs holding t's elements, in memory
    order: one run when t is dense (any dimension order), otherwise split along its outermost dimension."""
    item = t.element_size()
    if t.numel() == 0:
        return []
    dims = [(t.stride(d), t.size(d)) for d in range(t.dim()) if t.size(d) != 1]
    dims.sort()
    expect = 1
    dense = True
    for stride, size in dims:
        if stride != expect:
            dense = False
            break
        expect *= size
    if dense:
        return [(t.storage_offset() * item, t.numel() * item)]
    outer = max(range(t.dim()), key=lambda d: (t.stride(d) if t.size(d) != 1 else -1))
    runs: list[tuple[int, int]] = []
    for i in range(t.size(outer)):
        for off, n in _dense_runs(t.select(outer, i)):
            if runs and runs[-1][0] + runs[-1][1] == off:
                runs[-1] = (runs[-1][0], runs[-1][1] + n)
            else:
                runs.append((off, n))
    return runs


class BlockRegions:
    """Where one engine block lives in the KV cache: byte runs over the KV tensors' storages.

    `tensors` are the per-layer KV caches in a fixed layer order, each with the engine's blocks along
    dimension 0 (`blocks_per_unit` of its rows make one engine block: vLLM may split a block into kernel
    blocks). Block b of layer l occupies the runs of `tensor[b*k:(b+1)*k]`: the runs of block 0 shifted by
    b times the layer's block stride. The payload of a stored block is those runs concatenated, layers in
    order, each run in memory order, so the byte layout is the engine's own and never assumed here.
    """

    def __init__(self, tensors: Sequence, blocks_per_unit: Sequence[int] | int = 1):
        import torch

        if not tensors:
            raise ValueError("no KV cache tensors")
        if isinstance(blocks_per_unit, int):
            blocks_per_unit = [blocks_per_unit] * len(tensors)
        self.device = tensors[0].device
        self._storages: list = []          # uint8 views of each distinct storage
        storage_index: dict[int, int] = {}
        self.runs: list[tuple[int, int, int, int]] = []   # (storage idx, offset of block 0, length, block stride)
        self.description: list = []
        num_blocks = None
        for t, k in zip(tensors, blocks_per_unit):
            if t.device != self.device:
                raise ValueError("KV cache tensors on different devices")
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in storage_index:
                storage_index[key] = len(self._storages)
                self._storages.append(torch.empty(0, dtype=torch.uint8, device=t.device).set_(st))
            si = storage_index[key]
            nb = t.size(0) // k
            num_blocks = nb if num_blocks is None else min(num_blocks, nb)
            stride = t.stride(0) * k * t.element_size()
            unit = t[0:k]
            for off, n in _dense_runs(unit):
                self.runs.append((si, off, n, stride))
            self.description.append({
                "shape": list(t.shape[1:]), "rows": k, "dtype": str(t.dtype),
                "runs": [[off - t.storage_offset() * t.element_size(), n] for off, n in _dense_runs(unit)],
                "strides": list(t.stride()),
            })
        # Runs that follow each other in memory for every block (a block-outermost layout puts all layers
        # of a block side by side) become one copy.
        merged: list[tuple[int, int, int, int]] = []
        for si, off, n, stride in self.runs:
            if merged and merged[-1][0] == si and merged[-1][3] == stride and merged[-1][1] + merged[-1][2] == off:
                merged[-1] = (si, merged[-1][1], merged[-1][2] + n, stride)
            else:
                merged.append((si, off, n, stride))
        self.runs = merged
        self.num_blocks = num_blocks or 0
        self.payload_bytes = sum(r[2] for r in self.runs)
        self.fingerprint = layout_fingerprint(self.description)
        self.on_cpu = self.device.type == "cpu"
        self._np_storages = [s.numpy() for s in self._storages] if self.on_cpu and np is not None else None

    def views(self, block: int) -> list:
        """Writable views of block `block`'s runs, in payload order: numpy uint8 arrays on CPU, else torch."""
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"block {block} outside the KV cache (0..{self.num_blocks - 1})")
        src = self._np_storages if self._np_storages is not None else self._storages
        return [src[si][off + block * stride: off + block * stride + n] for si, off, n, stride in self.runs]


# --------------------------------------------------------------------------------------- block I/O

class BlockIO:
    """Loads and stores blocks of one payload size and layout through a tokenwarehouse.Client.

    load() copies a stored block into destination buffers (a block's runs in the KV cache): from the DRAM
    tier's map (Client.map_into, no system call) into a staging buffer of this thread, checked, then
    copied out; else from the block file, read with os.preadv straight into host destinations and the
    trailer, checked afterwards. A block that fails its check raises; its destinations may then hold
    anything (the file path wrote them), which is fine because the engine recomputes that block.
    Destinations are numpy uint8 arrays over host memory, or torch uint8 tensors on a device (copied
    through the staging buffer). Thread-safe: each thread has its own staging buffer.
    """

    def __init__(self, client, payload_bytes: int, layout_fp: int, tokens_per_block: int):
        self.client = client
        self.payload = int(payload_bytes)
        self.size = self.payload + TRAILER_SIZE
        self.layout_fp = layout_fp
        self.tokens = tokens_per_block
        self._local = threading.local()

    def _staging(self):
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = np.empty(self.size, dtype=np.uint8)
        return buf

    def _check_dests(self, dests) -> bool:
        total = sum(_nbytes(d) for d in dests)
        if total != self.payload:
            raise ValueError(f"destinations hold {total} bytes, blocks have {self.payload}")
        return all(isinstance(d, np.ndarray) for d in dests)

    def load(self, ns: str, name: str, dests) -> str:
        """Copy block `name` of namespace `ns` into `dests`. Returns the tier it came from, "dram_map" or
        "file". Raises FileNotFoundError (missing), OSError (unreadable) or BlockFormatError (damaged)."""
        host = self._check_dests(dests)
        buf = self._staging()
        n = self.client.map_into(ns, name, buf)
        if n is not None:
            if n != self.size:
                raise BlockFormatError(f"block of {n} bytes, expected {self.size}")
            payload = buf[:self.payload]
            check(buf[self.payload:], self.payload, ns, name, self.layout_fp, lambda: _xxh64(memoryview(payload)))
            _scatter(payload, dests)
            return "dram_map"
        fd = os.open(self.client.path(ns, name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size != self.size:
                raise BlockFormatError(f"block file of {size} bytes, expected {self.size}")
            trailer = buf[self.payload:]
            targets = [*dests, trailer] if host else [buf]
            got = _preadv_all(fd, targets, self.size)
            if got != self.size:
                raise BlockFormatError(f"short read: {got} of {self.size} bytes")
        finally:
            os.close(fd)
        if host:
            check(trailer, self.payload, ns, name, self.layout_fp, lambda: _hash_views(dests))
        else:
            payload = buf[:self.payload]
            check(trailer, self.payload, ns, name, self.layout_fp, lambda: _xxh64(memoryview(payload)))
            _scatter(payload, dests)
        return "file"

    def stored_form(self, ns: str, name: str, sources):
        """The stored form (payload + trailer) of the block held in `sources`, as a new numpy array."""
        self._check_dests(sources)
        out = np.empty(self.size, dtype=np.uint8)
        pos = 0
        for src in sources:
            n = _nbytes(src)
            if isinstance(src, np.ndarray):
                np.copyto(out[pos:pos + n], src)
            else:
                out[pos:pos + n] = src.cpu().numpy()
            pos += n
        seal(out, self.payload, ns, name, self.layout_fp, self.tokens)
        return out


def _nbytes(d) -> int:
    return d.nbytes if isinstance(d, np.ndarray) else d.numel() * d.element_size()


def _scatter(payload, dests) -> None:
    pos = 0
    for d in dests:
        n = _nbytes(d)
        if isinstance(d, np.ndarray):
            np.copyto(d, payload[pos:pos + n])
        else:
            import torch
            d.copy_(torch.from_numpy(payload[pos:pos + n]))
        pos += n


def host_view(ptr: int, size: int):
    """A writable numpy uint8 array over `size` bytes of host memory at address `ptr` (a host KV pool's
    page, as engines hand out for zero-copy storage I/O). The memory must outlive the array."""
    import ctypes
    return np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(ptr))


def _hash_views(views) -> int:
    if len(views) == 1:
        return _xxh64(memoryview(views[0]))
    h = xxhash.xxh3_64()
    for v in views:
        h.update(memoryview(v))
    return h.intdigest()


def _preadv_all(fd: int, bufs: list, total: int) -> int:
    """preadv into the buffers until `total` bytes or end of file; returns bytes read."""
    views = [memoryview(b).cast("B") for b in bufs]
    got = 0
    while views and got < total:
        k = os.preadv(fd, views[:1024], got)
        if k <= 0:
            break
        got += k
        while views and k >= views[0].nbytes:
            k -= views[0].nbytes
            views.pop(0)
        if views and k:
            views[0] = views[0][k:]
    return got


# ----------------------------------------------------------------------------------------- counters

class EngineCounters:
    """Cumulative integer counters of one connector instance, sent to the daemon as JSON lines
    {"engine": ..., "instance": ..., "counters": {...}} (at most 4 KiB each) written to MOUNT/.tw/engine,
    or to another file, at most once a second while they change and once more at close().

    A missing or unwritable control file (ENOENT, EACCES, EPERM...) is ignored: counters are advisory.
    Thread-safe.
    """

    LINE_LIMIT = 4096

    def __init__(self, engine: str, instance: str, path: Optional[str], interval: float = 1.0,
                 create: bool = False):
        self.engine = engine
        self.instance = instance
        self.path = path
        self.interval = interval
        self.create = create
        self._values: dict[str, int] = {}
        self._lock = threading.Lock()
        self._dirty = False
        self._reported: dict[str, int] = {}     # what get_delta() last handed out
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.write_errors = 0
        if path:
            self._thread = threading.Thread(target=self._run, name="tw-counters", daemon=True)
            self._thread.start()

    @staticmethod
    def default_instance(role: str) -> str:
        return f"{socket.gethostname()}-{os.getpid()}-{role}"

    def add(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                if v:
                    self._values[k] = self._values.get(k, 0) + int(v)
                    self._dirty = True

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def delta(self) -> dict[str, int]:
        """What changed since the previous call (for vLLM's per-interval connector stats)."""
        with self._lock:
            out = {k: v - self._reported.get(k, 0) for k, v in self._values.items()
                   if v != self._reported.get(k, 0)}
            self._reported = dict(self._values)
            return out

    def line(self) -> bytes:
        counters = self.snapshot()
        obj = {"engine": self.engine, "instance": self.instance, "counters": counters}
        data = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
        if len(data) > self.LINE_LIMIT:
            # The connectors keep about 25 counters (well under the limit); should a line ever grow past
            # what the daemon accepts, send the first 40 by name rather than nothing.
            keep = {k: counters[k] for k in sorted(counters)[:40]}
            obj["counters"] = keep
            data = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()[: self.LINE_LIMIT]
        return data

    def flush(self, force: bool = False) -> bool:
        """Write the current counters if they changed since the last write (or `force`)."""
        if not self.path:
            return False
        with self._lock:
            if not (self._dirty or force):
                return False
            self._dirty = False
        data = self.line()
        # The daemon's control file takes each write as one message (plain O_WRONLY, like
        # MOUNT/.tw/prefetch); a file of our own is appended to.
        flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT | os.O_APPEND if self.create else 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EROFS,
                               errno.ENOTCONN, errno.EINVAL):
                self.write_errors += 1
            return False
        try:
            os.write(fd, data)
        except OSError:
            self.write_errors += 1
            return False
        finally:
            os.close(fd)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush(force=True)


def read_counter_lines(path: str) -> dict[str, dict]:
    """The last line of each instance in a counters file: {instance: {"engine":..., "counters":...}}."""
    out: dict[str, dict] = {}
    try:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    obj = json.loads(raw)
                except ValueError:
                    continue
                out[obj.get("instance", "")] = obj
    except FileNotFoundError:
        pass
    return out


def merge_counters(objs: Iterable[dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for obj in objs:
        for k, v in obj.get("counters", {}).items():
            total[k] = total.get(k, 0) + int(v)
    return total

