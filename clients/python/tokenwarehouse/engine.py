"""Engine adapters: chained prefix hashes, a HiCache-shaped page store and a vLLM/LMCache-shaped KV connector.

An inference engine that uses these never builds a path, an xattr or a tier lookup itself:

    from tokenwarehouse import Client
    from tokenwarehouse.engine import KVConnector

    tw = Client("/mnt/kv")
    conn = KVConnector(tw, "llama-8b@tp0", block_size=256, salt="llama-8b")
    conn.save(prompt_ids, [kv_bytes_of_block(i) for i in range(len(prompt_ids) // 256)])
    ...                                                    # later, in any process on the node
    hit = conn.lookup(new_prompt_ids)                      # tokens whose KV is stored (whole blocks)
    got = conn.load(new_prompt_ids, buffers[: hit // 256]) # fills the buffers; tokens actually loaded

Prefix hashes (docs/design.md "Naming"): block i of a token sequence is named by
`h_i = SHA-256(h_{i-1} || u32 n || n token ids as u32 || extra_i)` with `h_{-1} = SHA-256(tag || salt)`, each
part in the canonical byte encoding of `_encode` (little-endian, length-prefixed, typed). That is the chain
vLLM's `hash_block_tokens` builds (parent hash, the block's token ids, extra keys such as a LoRA name,
multimodal hashes or a cache salt), but over bytes instead of a pickle and with a fixed root instead of one
drawn from PYTHONHASHSEED, so every process and every host computes the same names. A name is the digest's
lowercase hex (64 characters), so blocks live at the canonical path `NS/hh/HASH`; each stored block gets
`user.tw.parent` (its predecessor's hex) and `user.tw.tokens` (the number of token ids in the block).

Only whole blocks are named and stored, as engines do: a trailing partial block is recomputed.
"""

from __future__ import annotations

import array
import errno
import hashlib
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from .client import Client

__all__ = [
    "HASH_SCHEME", "root_hash", "hash_block_tokens", "prefix_hashes", "PrefixHasher", "HiCacheStore",
    "KVConnector", "LoadReport", "byte_view",
]

HASH_SCHEME = "tw-sha256-v1"
_ROOT_TAG = b"tokenwarehouse prefix hash v1\0"
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_DIGEST = 32

ExtraKeys = Union[None, Any, Sequence[Any], Callable[[int, int, int], Any]]


# ------------------------------------------------------------------------------------------ hashing

def _encode(value: Any, out: bytearray) -> None:
    """Append the canonical encoding of an extra key: a type tag, then a u32 length and the bytes.

    None, bool, int, float, str, bytes and (nested) tuples/lists of these are accepted; two values encode
    equal exactly when they are equal and of the same type, in every process (no repr, no pickle)."""
    if value is None:
        out += b"N"
    elif value is True or value is False:
        out += b"T" if value else b"F"
    elif isinstance(value, int):
        s = str(int(value)).encode()
        out += b"I" + _U32.pack(len(s)) + s
    elif isinstance(value, float):
        out += b"D" + _F64.pack(value)
    elif isinstance(value, str):
        b = value.encode("utf-8", "surrogatepass")
        out += b"S" + _U32.pack(len(b)) + b
    elif isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        out += b"B" + _U32.pack(len(b)) + b
    elif isinstance(value, (tuple, list)):
        out += b"L" + _U32.pack(len(value))
        for v in value:
            _encode(v, out)
    else:
        raise TypeError(f"an extra key must be None, bool, int, float, str, bytes or a tuple of them, "
                        f"not {type(value).__name__}")


def _token_bytes(token_ids) -> bytes:
    """Token ids as little-endian u32 (the client refuses big-endian machines, so native order is LE)."""
    if hasattr(token_ids, "tolist"):        # numpy arrays and torch tensors
        token_ids = token_ids.tolist()
    a = array.array("I")
    if a.itemsize != 4:  # pragma: no cover - every Linux ABI the daemon runs on has a 4-byte unsigned int
        a = array.array("L")
    try:
        a.extend(token_ids)
    except OverflowError:
        raise ValueError("token ids must be integers in [0, 2**32)") from None
    except TypeError:
        raise TypeError("token ids must be a sequence of ints") from None
    return a.tobytes()


def root_hash(salt: Any = None) -> bytes:
    """The parent of a sequence's first block: SHA-256 of a fixed tag and the encoded salt (e.g. a model id)."""
    buf = bytearray(_ROOT_TAG)
    _encode(salt, buf)
    return hashlib.sha256(buf).digest()


def _parent_bytes(parent) -> bytes:
    if isinstance(parent, str):
        parent = bytes.fromhex(parent)
    if not isinstance(parent, (bytes, bytearray)) or len(parent) != _DIGEST:
        raise ValueError("a parent hash is 32 bytes (or their 64 hex characters)")
    return bytes(parent)


def hash_block_tokens(parent_hash, token_ids, extra_keys: Any = None) -> bytes:
    """The chained hash of one block: SHA-256(parent || u32 count || token ids as u32 || extra keys).

    `parent_hash`: the previous block's hash (32 bytes or 64 hex characters), or `root_hash(salt)` for the
    first block. Returns the 32-byte digest."""
    toks = _token_bytes(token_ids)
    buf = bytearray(_parent_bytes(parent_hash))
    buf += _U32.pack(len(toks) // 4)
    buf += toks
    _encode(extra_keys, buf)
    return hashlib.sha256(buf).digest()


def _extra_for(extra_keys: ExtraKeys, i: int, start: int, end: int) -> Any:
    if callable(extra_keys):
        return extra_keys(i, start, end)
    if isinstance(extra_keys, list):     # one entry per block
        return extra_keys[i] if i < len(extra_keys) else None
    return extra_keys                    # the same key for every block (a LoRA name, a tenant salt)


def prefix_hashes(token_ids, block_size: int, extra_keys: ExtraKeys = None, salt: Any = None,
                  parent=None) -> list[str]:
    """Hex names of the whole blocks of `token_ids` (len // block_size of them), chained from the root.

    `extra_keys`: None; one value for every block; a *list* with one value per block; or a callable
    `(block_index, start, end) -> value`. `parent`: continue a chain after this hash instead of the root."""
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    prev = root_hash(salt) if parent is None else _parent_bytes(parent)
    names = []
    for i in range(len(token_ids) // block_size):
        s, e = i * block_size, (i + 1) * block_size
        prev = hash_block_tokens(prev, token_ids[s:e], _extra_for(extra_keys, i, s, e))
        names.append(prev.hex())
    return names


class PrefixHasher:
    """Names the blocks of token sequences for one model: a block size and a salt (model or adapter id).

    Caches nothing; safe to share between threads."""

    def __init__(self, block_size: int, salt: Any = None):
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = int(block_size)
        self.salt = salt
        self.root = root_hash(salt)

    def names(self, token_ids, extra_keys: ExtraKeys = None) -> list[str]:
        """Hex names of the whole blocks of `token_ids`, first to last."""
        return prefix_hashes(token_ids, self.block_size, extra_keys, parent=self.root)


# ----------------------------------------------------------------------------------------- buffers

def byte_view(obj, writable: bool = False) -> memoryview:
    """A flat byte memoryview of a buffer-protocol object or of a contiguous CPU torch tensor (no copy)."""
    try:
        mv = memoryview(obj)
    except TypeError:
        if not hasattr(obj, "untyped_storage"):
            raise TypeError(f"{type(obj).__name__} is neither a buffer nor a tensor") from None
        if obj.device.type != "cpu":
            raise ValueError("a tensor handed to the warehouse must be in CPU memory (copy it to a pinned "
                             "host buffer first)") from None
        if not obj.is_contiguous():
            raise ValueError("a tensor handed to the warehouse must be contiguous") from None
        import torch  # only reached with a tensor, so torch is there
        mv = memoryview(obj.reshape(-1).view(torch.uint8).numpy())
    if writable and mv.readonly:
        raise TypeError("a writable buffer is needed")
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


# ---------------------------------------------------------------------------------- HiCache-shaped

def _attach(client_or_mount) -> tuple[Client, bool]:
    if isinstance(client_or_mount, Client):
        return client_or_mount, False
    return Client(client_or_mount), True


class HiCacheStore:
    """A page store with the shape of SGLang HiCache's storage backends, on one namespace of a mount.

    Keys are page hashes (hex strings, or any file name: those use the compatibility path). Values are
    bytes-like objects or contiguous CPU tensors. Thread-safe as the Client is.
    """

    def __init__(self, client_or_mount, namespace: str, *, create: bool = True):
        self.client, self._owns = _attach(client_or_mount)
        self.namespace = namespace
        if create:
            self.client.ensure_namespace(namespace)

    def get(self, key: str, target_location=None):
        """The page's bytes (None when absent); with `target_location`, copy into it and return its length."""
        try:
            if target_location is None:
                return self.client.get(self.namespace, key)
            return self.client.get_into(self.namespace, key, byte_view(target_location, writable=True))
        except FileNotFoundError:
            return None

    def batch_get(self, keys: Sequence[str], target_locations: Optional[Sequence] = None) -> list:
        """get for each key, in order (None for a missing page)."""
        if target_locations is None:
            return [self.get(k) for k in keys]
        if len(target_locations) != len(keys):
            raise ValueError("one target location per key")
        return [self.get(k, t) for k, t in zip(keys, target_locations)]

    def set(self, key: str, value, parent: Optional[str] = None, tokens: Optional[int] = None) -> bool:
        """Store the page unless it exists (first write wins). True when the page is stored afterwards."""
        self.client.put(self.namespace, key, byte_view(value), parent=parent, tokens=tokens)
        return True

    def batch_set(self, keys: Sequence[str], values: Sequence, parents: Union[None, str, Sequence] = None,
                  tokens: Optional[int] = None) -> bool:
        """set for each key. `parents`: None, one parent per key, or "chain" (keys are consecutive pages
        of one sequence: each key's parent is the key before it)."""
        if len(values) != len(keys):
            raise ValueError("one value per key")
        if parents == "chain":
            parents = [None, *keys[:-1]]
        elif parents is None:
            parents = [None] * len(keys)
        elif len(parents) != len(keys):
            raise ValueError("one parent per key")
        ok = True
        for k, v, p in zip(keys, values, parents):
            ok = self.set(k, v, parent=p, tokens=tokens) and ok
        return ok

    def exists(self, key: str) -> bool:
        return self.client.exists(self.namespace, key)

    def batch_exists(self, keys: Sequence[str]) -> int:
        """How many keys, from the first, exist (a prefix stops at its first missing page)."""
        n = 0
        for k in keys:
            if not self.client.exists(self.namespace, k):
                break
            n += 1
        return n

    def delete(self, key: str) -> bool:
        """Remove the page; False when it did not exist."""
        try:
            os.unlink(self.client.path(self.namespace, key))
        except FileNotFoundError:
            return False
        return True

    def close(self) -> None:
        if self._owns:
            self.client.close()


# ------------------------------------------------------------------------------ vLLM/LMCache-shaped

@dataclass
class LoadReport:
    """What loads cost, by where the bytes came from.

    `dram_map`: copied from the DRAM tier's shared-memory map (no system call); `dram_file` and `nvme`: read
    through the block file while the daemon held the block in DRAM or only on NVMe (its `user.tw.tier`)."""
    blocks: int = 0
    bytes: dict = field(default_factory=lambda: {"dram_map": 0, "dram_file": 0, "nvme": 0})

    def add(self, other: "LoadReport") -> None:
        self.blocks += other.blocks
        for k, v in other.bytes.items():
            self.bytes[k] = self.bytes.get(k, 0) + v

    @property
    def dram_bytes(self) -> int:
        return self.bytes["dram_map"] + self.bytes["dram_file"]


class KVConnector:
    """Saves and loads the KV cache of token blocks, with the shape of vLLM's KV connectors and LMCache.

    The engine owns the KV layout: a block's KV is an opaque byte string (all layers of `block_size`
    tokens, in whatever order the engine writes and reads it), handed over as a buffer per block.
    The connector names blocks by chained prefix hashes, stores them with their parent link, finds the
    longest stored prefix of a token sequence, hints the daemon to prefetch it, and loads it.

    Thread-safe: calls may run concurrently (the Client is; the report is updated under a lock).
    """

    def __init__(self, client_or_mount, namespace: str, block_size: int, *, salt: Any = None,
                 prefetch: bool = True, threads: int = 1, create: bool = True):
        self.client, self._owns = _attach(client_or_mount)
        self.namespace = namespace
        self.hasher = PrefixHasher(block_size, salt)
        self.block_size = self.hasher.block_size
        self.prefetch = prefetch
        self.report = LoadReport()        # all loads so far
        self.last_load = LoadReport()     # the latest load (meaningful when one thread loads)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tw-load") if threads > 1 else None
        if create:
            self.client.ensure_namespace(namespace)

    def block_names(self, token_ids, extra_keys: ExtraKeys = None) -> list[str]:
        """Hex names of the whole blocks of `token_ids`."""
        return self.hasher.names(token_ids, extra_keys)

    # -- save

    def save(self, token_ids, blocks: Sequence, extra_keys: ExtraKeys = None, start_block: int = 0) -> int:
        """Store `blocks[j]`, the KV of block `start_block + j` of `token_ids`; returns how many were new.

        Blocks already stored are skipped (first write wins, so a block's bytes never change)."""
        names = self.block_names(token_ids, extra_keys)
        if start_block < 0 or start_block + len(blocks) > len(names):
            raise ValueError(f"blocks {start_block}..{start_block + len(blocks) - 1} given, but the tokens "
                             f"hold {len(names)} whole blocks of {self.block_size}")
        written = 0
        for j, blk in enumerate(blocks):
            i = start_block + j
            parent = names[i - 1] if i > 0 else None
            if self.client.put(self.namespace, names[i], byte_view(blk), parent=parent,
                               tokens=self.block_size):
                written += 1
        return written

    # -- lookup and load

    def lookup(self, token_ids, extra_keys: ExtraKeys = None, names: Optional[list[str]] = None) -> int:
        """Tokens at the start of `token_ids` whose KV is stored (a multiple of block_size).

        With prefetch on, hints the daemon to bring those blocks into the DRAM tier before `load` reads
        them (the engine knows the whole prefix when the request arrives)."""
        if names is None:
            names = self.block_names(token_ids, extra_keys)
        n = 0
        for name in names:
            if not self.client.exists(self.namespace, name):
                break
            n += 1
        if n and self.prefetch:
            self.client.prefetch(self.namespace, names[:n])
        return n * self.block_size

    def _load_one(self, name: str, buf) -> tuple[int, str]:
        mv = byte_view(buf, writable=True)
        n = self.client.map_into(self.namespace, name, mv)
        if n is not None:
            return n, "dram_map"
        # Not in the map: ask where the daemon holds it before the read (which may move it to DRAM).
        try:
            tier = os.getxattr(self.client.path(self.namespace, name), "user.tw.tier")
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise
            tier = b"nvme"       # not a twfs mount (a plain directory): the bytes come from a disk
        n = self.client.get_into(self.namespace, name, mv)
        return n, "dram_file" if tier == b"dram" else "nvme"

    def load(self, token_ids, buffers: Sequence, extra_keys: ExtraKeys = None,
             names: Optional[list[str]] = None) -> int:
        """Load the longest stored prefix of `token_ids` into `buffers` (buffer j gets block j).

        Loads at most len(buffers) blocks and stops at the first block that is missing (evicted since a
        lookup). Returns the number of tokens loaded (a multiple of block_size)."""
        if names is None:
            names = self.block_names(token_ids, extra_keys)
        names = names[:len(buffers)]

        def one(j):
            try:
                return self._load_one(names[j], buffers[j])
            except FileNotFoundError:
                return None

        if self._pool is not None and len(names) > 1:
            results = list(self._pool.map(one, range(len(names))))
        else:
            results = []
            for j in range(len(names)):
                r = one(j)
                results.append(r)
                if r is None:
                    break
        rep = LoadReport()
        loaded = 0
        for r in results:
            if r is None:
                break
            n, where = r
            rep.blocks += 1
            rep.bytes[where] += n
            loaded += 1
        with self._lock:
            self.report.add(rep)
        self.last_load = rep
        return loaded * self.block_size

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        if self._owns:
            self.client.close()

    def __enter__(self) -> "KVConnector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
