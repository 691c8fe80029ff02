"""Unit tests of the Python client against a fake daemon (no twfs needed).

FakeTier below is a small *writer* of the DRAM tier file, built from docs/dram-tier.md alone (layout
version 1): superblock, open-addressing table of 64-byte entries with seqlocks, 4 KiB-aligned data area,
hit counters. FakeBroker hands tiers to clients over a unix socket as the daemon's broker does. A fake
mount directory holds `.tw/dram` (naming the broker), `.tw/prefetch` and plain block files for the
fallback. A C reader built on include/tokenwarehouse.h checks the writer (and so the Python reader)
against the header, when cc and libxxhash are available.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import xxhash

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))   # the package from this checkout, also when not pip-installed

from tokenwarehouse import Client, block_key, block_relpath, key_of  # noqa: E402
from tokenwarehouse.client import _native  # noqa: E402
from tokenwarehouse.layout import (  # noqa: E402
    ENTRY, ENTRY_SIZE, MAGIC, STATE_DELETED, STATE_EMPTY, STATE_VALID, SUPERBLOCK, SUPERBLOCK_SIZE, VERSION,
)

REPO = HERE.parents[2]
# Why tokenwarehouse._mapcopy is missing, when it is (conftest.py built it first, or said why not).
NOT_BUILT = os.environ.get("TW_MAPCOPY_BUILD_ERROR", "see clients/python/tests/native_build.py")
HEADER_DIR = REPO / "include"
KiB, MiB = 1 << 10, 1 << 20


def _align(n: int, a: int = 4096) -> int:
    return (n + a - 1) // a * a


# ------------------------------------------------------------------------------------------ fake daemon

class FakeTier:
    """Writes a tier file exactly as docs/dram-tier.md describes, with the daemon's publish/remove steps."""

    def __init__(self, path, capacity: int = 64, data_size: int = 4 * MiB, max_probe: int = 8,
                 generation: int | None = None, hits: bool = True):
        assert capacity & (capacity - 1) == 0
        self.path = os.fspath(path)
        self.capacity = capacity
        self.max_probe = max_probe
        self.table_offset = SUPERBLOCK_SIZE
        self.data_offset = _align(SUPERBLOCK_SIZE + capacity * ENTRY_SIZE)
        self.data_size = data_size
        self.file_size = self.data_offset + data_size
        self.generation = generation if generation is not None else (int.from_bytes(os.urandom(8), "little") | 1)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.ftruncate(fd, self.file_size)
            self.mm = mmap.mmap(fd, self.file_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        SUPERBLOCK.pack_into(self.mm, 0, MAGIC, VERSION, SUPERBLOCK_SIZE, self.generation, self.file_size,
                             self.table_offset, capacity, ENTRY_SIZE, max_probe, self.data_offset, data_size)
        self.hits_path = self.path + ".hits"
        if hits:
            with open(self.hits_path, "wb") as f:
                f.write(bytes(4 * capacity))
            os.chmod(self.hits_path, 0o660)
        self.cursor = self.data_offset

    # -- raw fields
    def eo(self, i: int) -> int:
        return self.table_offset + i * ENTRY_SIZE

    def seq(self, i: int) -> int:
        return struct.unpack_from("<Q", self.mm, self.eo(i))[0]

    def set_seq(self, i: int, v: int) -> None:
        struct.pack_into("<Q", self.mm, self.eo(i), v)

    def entry(self, i: int) -> tuple:
        return ENTRY.unpack_from(self.mm, self.eo(i))

    def set_generation(self, g: int) -> None:
        struct.pack_into("<Q", self.mm, 16, g)

    def hit_count(self, i: int) -> int:
        with open(self.hits_path, "rb") as f:
            return struct.unpack_from("<I", f.read(), 4 * i)[0]

    # -- the daemon's operations
    def alloc(self, n: int) -> int:
        off = self.cursor
        assert off + n <= self.data_offset + self.data_size, "fake tier full"
        self.cursor = _align(off + max(n, 1))
        return off

    def publish(self, i: int, key: tuple[int, int], off: int, n: int, checksum: int) -> None:
        """seq odd, fields, state valid, seq even."""
        s = self.seq(i)
        assert s % 2 == 0
        self.set_seq(i, s + 1)
        eo = self.eo(i)
        struct.pack_into("<QQQQQ", self.mm, eo + 16, key[0], key[1], off, n, checksum)
        struct.pack_into("<I", self.mm, eo + 8, STATE_VALID)
        self.set_seq(i, s + 2)

    def remove(self, i: int) -> None:
        """seq odd, state deleted, seq even (only then may the bytes be reused)."""
        s = self.seq(i)
        self.set_seq(i, s + 1)
        struct.pack_into("<I", self.mm, self.eo(i) + 8, STATE_DELETED)
        self.set_seq(i, s + 2)

    def slot_for(self, key: tuple[int, int]) -> int:
        i = key[0] & (self.capacity - 1)
        for _ in range(self.max_probe):
            state = struct.unpack_from("<I", self.mm, self.eo(i) + 8)[0]
            if state != STATE_VALID:
                return i
            i = (i + 1) & (self.capacity - 1)
        raise AssertionError("no free slot within max_probe")

    def insert(self, ns: str, name: str, data: bytes, *, key=None, index=None, offset=None, length=None,
               checksum=None) -> int:
        """Place a block: bytes into free space first, then publish its entry. Returns the entry index."""
        key = key or block_key(ns, name)
        off = offset if offset is not None else self.alloc(len(data))
        if offset is None:
            self.mm[off:off + len(data)] = data
        i = index if index is not None else self.slot_for(key)
        self.publish(i, key, off, len(data) if length is None else length,
                     xxhash.xxh3_64_intdigest(data) if checksum is None else checksum)
        return i

    def close(self) -> None:
        self.mm.close()


class FakeBroker:
    """Answers each connection as docs/dram-tier.md "Access" says: one message per tier with its two
    descriptors and namespaces, then `end N`. `tiers` is what it hands out now."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.tiers: list[tuple[str, str | None, list[str]]] = []   # (tier file, hits file, namespaces)
        self.connections = 0
        # The liveness page: non-zero while "the daemon" runs.
        self.alive_fd = os.memfd_create("alive")
        os.ftruncate(self.alive_fd, 4096)
        self.alive = mmap.mmap(self.alive_fd, 4096)
        struct.pack_into("<Q", self.alive, 0, int.from_bytes(os.urandom(8), "little") | 1)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                sent = 0
                for path, hits, namespaces in list(self.tiers):
                    data_fd = os.open(path, os.O_RDONLY)
                    hits_fd = os.open(hits, os.O_RDWR) if hits else os.memfd_create("nohits")
                    try:
                        text = f"tier {os.path.basename(path)}\nnamespaces {' '.join(namespaces)}\n"
                        socket.send_fds(conn, [text.encode()], [data_fd, hits_fd])
                        sent += 1
                    finally:
                        os.close(data_fd)
                        os.close(hits_fd)
                socket.send_fds(conn, [f"end {sent}\n".encode()], [self.alive_fd])

    def die(self) -> None:
        """What the next daemon does to a dead one's page: zero it."""
        struct.pack_into("<Q", self.alive, 0, 0)

    def close(self) -> None:
        self.sock.close()


class FakeMount:
    """A directory laid out like a twfs mount: .tw/dram, .tw/prefetch, namespaces with block files."""

    def __init__(self, root: Path, tier: "FakeTier | str | None", namespaces=("ns", "missing")):
        self.root = root
        (root / ".tw").mkdir(parents=True)
        self.broker = FakeBroker(root.parent / (root.name + ".broker"))
        self.set_tier(tier, namespaces)
        (root / ".tw" / "prefetch").write_bytes(b"")
        (root / "ns").mkdir()

    def set_tier(self, tier, namespaces=("ns", "missing")) -> None:
        """Hand out `tier` (a FakeTier or a file's path) for `namespaces`; None: the mount has no tier."""
        if tier is None:
            self.broker.tiers = []
            (self.root / ".tw" / "dram").write_text("")
            return
        path = tier.path if isinstance(tier, FakeTier) else str(tier)
        hits = tier.hits_path if isinstance(tier, FakeTier) and os.path.exists(tier.hits_path) else None
        self.broker.tiers = [(path, hits, list(namespaces))]
        (self.root / ".tw" / "dram").write_text(f"socket {self.broker.path}\n")

    def write(self, ns: str, name: str, data: bytes) -> Path:
        p = self.root / block_relpath(ns, name)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p


def blob(tag: str, n: int) -> bytes:
    return hashlib.shake_256(tag.encode()).digest(n)


def hexname(tag: str, length: int = 32) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()[:length]


@pytest.fixture
def env(tmp_path):
    tier = FakeTier(tmp_path / "tokenwarehouse-test")
    mount = FakeMount(tmp_path / "mnt", tier)
    yield tier, mount
    tier.close()
    mount.broker.close()


@pytest.fixture(params=[True, False], ids=["native", "python"])
def client(env, request):
    """A client of the fake mount, once with the C lookup (tokenwarehouse._mapcopy) and once in Python."""
    if request.param and _native is None:
        pytest.skip(f"the C lookup is not built here: {NOT_BUILT}")
    tier, mount = env
    c = Client(mount.root, retry_interval=0.2, native=request.param)
    assert c.native == request.param
    yield c
    c.close()


# ------------------------------------------------------------------------------------------------- keys

def test_key_is_xxh3_128_low_then_high():
    ns, name = "llama@tp0", "0123456789abcdef"
    d = xxhash.xxh3_128(f"{ns}/{name}".encode()).intdigest()
    assert block_key(ns, name) == (d & (2**64 - 1), d >> 64)
    # The canonical digest is big-endian: high 64 bits first.
    raw = xxhash.xxh3_128(f"{ns}/{name}".encode()).digest()
    assert block_key(ns, name) == (int.from_bytes(raw[8:], "big"), int.from_bytes(raw[:8], "big"))


def test_paths_canonical_and_other_names():
    h = "ab" + "0" * 30
    assert block_relpath("ns", h) == f"ns/ab/{h}"
    assert block_relpath("ns", "x" * 16) == "ns/" + "x" * 16            # not hex
    assert block_relpath("ns", "AB" + "0" * 30) == "ns/AB" + "0" * 30   # upper case: a plain file name
    assert block_relpath("ns", "ab" * 7) == "ns/" + "ab" * 7             # 14 hex chars: too short
    assert block_relpath("ns", "a" * 128) == "ns/aa/" + "a" * 128
    assert block_relpath("ns", "a" * 129) == "ns/" + "a" * 129
    assert block_relpath("ns", "layer_0.safetensors") == "ns/layer_0.safetensors"
    assert block_relpath("ns", "model/layer_0/kv.bin") == "ns/model/layer_0/kv.bin"   # a path in the namespace
    assert block_relpath("ns", f"ab/{h}") == f"ns/ab/{h}"                # the canonical path is the hash
    for bad in ("", ".", "..", "a//b", "a/../b", "/abs", "a/", "a\0b", "x" * 256, "/".join(["d"] * 18)):
        with pytest.raises(ValueError):
            block_relpath("ns", bad)
    for bad_ns in ("a/b", ".hidden", "", "x" * 129):
        with pytest.raises(ValueError):
            block_relpath(bad_ns, "x")


def test_keys_follow_the_mount_naming():
    """docs/format.md "Keys": the key the tier is indexed by, from the name a client gives."""
    h = "cd" + "1" * 30
    assert key_of(h) == h
    assert key_of(f"cd/{h}") == h                     # NS/hh/HASH is the canonical block
    assert key_of(f"ce/{h}") == f"ce/{h}"             # not its fan-out directory: a plain path
    assert key_of("a/b/c.bin") == "a/b/c.bin"
    assert block_key("ns", f"cd/{h}") == block_key("ns", h)
    assert block_key("ns", "a/b") != block_key("ns2", "a/b")


# ------------------------------------------------------------------------------------------------ reads

def test_hit_returns_exact_bytes_without_the_file(env, client):
    tier, mount = env
    data = blob("hit", 300 * KiB + 7)
    name = hexname("hit")
    tier.insert("ns", name, data)
    assert client.mapped and client.generation == tier.generation
    assert client.get("ns", name) == data      # no block file exists: it came from the map
    assert client.stats["map_hits"] == 1 and client.stats["file_reads"] == 0


def test_empty_block_hit(env, client):
    tier, mount = env
    tier.insert("ns", "empty", b"")
    assert client.get("ns", "empty") == b""
    assert client.stats["map_hits"] == 1


def test_miss_falls_back_to_the_file(env, client):
    tier, mount = env
    data = blob("miss", 5000)
    mount.write("ns", hexname("miss"), data)
    assert client.get("ns", hexname("miss")) == data
    assert client.stats["map_misses"] == 1 and client.stats["file_reads"] == 1
    with pytest.raises(FileNotFoundError):
        client.get("ns", hexname("absent"))
    mount.write("ns", "compat-name.bin", b"compat")
    assert client.get("ns", "compat-name.bin") == b"compat"


def test_odd_seq_falls_back(env, client):
    tier, mount = env
    name = hexname("odd")
    i = tier.insert("ns", name, blob("stale", 8192))
    mount.write("ns", name, blob("file", 8192))
    tier.set_seq(i, tier.seq(i) + 1)           # the daemon is changing this entry
    assert client.get("ns", name) == blob("file", 8192)
    assert client.stats["map_retries"] == 1 and client.stats["map_hits"] == 0
    tier.set_seq(i, tier.seq(i) + 1)           # stable again
    assert client.get("ns", name) == blob("stale", 8192)
    assert client.stats["map_hits"] == 1


class _HookMmap(mmap.mmap):
    """An mmap of the same tier file whose slicing (the client's copy) runs a hook first: the daemon
    evicting the block and refilling its bytes while the reader copies them."""
    hook = None

    def __getitem__(self, item):
        if self.hook is not None:
            self.hook()
        return super().__getitem__(item)


def _hooked_map(client, tier, hook):
    client.native = False     # the hook is in the Python path's copy (the C path's race: test_native_*)
    m = client._conn.by_namespace["ns"]
    fd = os.open(tier.path, os.O_RDONLY)
    try:
        hm = _HookMmap(fd, tier.file_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    hm.hook = hook
    m.mm = hm
    return hm


def test_seq_change_during_copy_falls_back(env, client):
    tier, mount = env
    a, b = hexname("a"), hexname("b")
    data_a, data_b = blob("A", 64 * KiB), blob("B", 64 * KiB)
    ia = tier.insert("ns", a, data_a)
    mount.write("ns", a, data_a)
    off = tier.entry(ia)[5]

    def evict_and_refill():   # evict A, reuse its bytes for B: what a racing reader would copy
        tier.remove(ia)
        tier.mm[off:off + len(data_b)] = data_b
        tier.insert("ns", b, data_b, offset=off)

    hm = _hooked_map(client, tier, evict_and_refill)
    got = client.get("ns", a)
    hm.hook = None
    assert got == data_a
    assert client.stats["map_retries"] == 1 and client.stats["file_reads"] == 1 and client.stats["map_hits"] == 0
    assert client.get("ns", b) == data_b       # B is resident now
    assert client.stats["map_hits"] == 1


def test_seq_bump_with_same_bytes_still_falls_back(env, client):
    """Even if the bytes look right, a changed seq means the copy may be torn: never a hit."""
    tier, mount = env
    name = hexname("same")
    i = tier.insert("ns", name, blob("same", 4096))
    mount.write("ns", name, blob("same", 4096))

    def bump():
        tier.set_seq(i, tier.seq(i) + 2)
    hm = _hooked_map(client, tier, bump)
    assert client.get("ns", name) == blob("same", 4096)
    hm.hook = None
    assert client.stats["map_retries"] == 1 and client.stats["map_hits"] == 0
    assert tier.hit_count(i) == 0


def test_get_into_seq_change_falls_back(env, client):
    tier, mount = env
    name = hexname("into-race")
    data, other = blob("X", 10000), blob("Y", 10000)
    i = tier.insert("ns", name, data)
    mount.write("ns", name, data)
    off = tier.entry(i)[5]
    client.native = False     # the hook is in the Python path's copy
    m = client._conn.by_namespace["ns"]
    real = m.mv

    class Racing:
        def __getitem__(self, item):
            tier.remove(i)
            tier.mm[off:off + len(other)] = other
            return real[item]
    m.mv = Racing()
    buf = bytearray(20000)
    assert client.get_into("ns", name, buf) == len(data)
    m.mv = real
    assert bytes(buf[:len(data)]) == data
    assert client.stats["map_retries"] == 1 and client.stats["file_reads"] == 1


def test_key_mismatch_never_returns_another_block(env, client):
    tier, mount = env
    name = hexname("wanted")
    lo, hi = block_key("ns", name)
    # Another block whose key shares the low 64 bits (same home slot) but not the high ones.
    tier.insert("ns", "other", blob("other", 4096), key=(lo, hi ^ 1))
    with pytest.raises(FileNotFoundError):
        client.get("ns", name)
    mount.write("ns", name, blob("wanted-file", 4096))
    assert client.get("ns", name) == blob("wanted-file", 4096)
    # And the real one, published after the impostor, is found by probing past it.
    tier.insert("ns", name, blob("wanted-tier", 4096))
    assert client.get("ns", name) == blob("wanted-tier", 4096)
    assert client.stats["map_hits"] == 1
    # Same key in another namespace is another key.
    with pytest.raises(FileNotFoundError):
        client.get("ns2", name)


def test_deleted_entries_keep_probing_empty_ends(env, client):
    tier, mount = env
    name = hexname("probe")
    lo, hi = block_key("ns", name)
    home = lo & (tier.capacity - 1)
    i0 = tier.insert("ns", "x", blob("x", 100), key=(lo, hi ^ 5))
    tier.remove(i0)                                        # deleted at the home slot
    i1 = tier.insert("ns", name, blob("probe", 100), index=(home + 1) & (tier.capacity - 1))
    assert client.get("ns", name) == blob("probe", 100)
    assert client.stats["map_hits"] == 1
    # An empty slot before the entry ends the lookup: a miss.
    name2 = hexname("gap")
    lo2, _ = block_key("ns", name2)
    assert tier.entry(lo2 & (tier.capacity - 1))[1] == STATE_EMPTY
    tier.insert("ns", name2, blob("gap", 100), index=(lo2 + 2) & (tier.capacity - 1))
    mount.write("ns", name2, b"file")
    assert client.get("ns", name2) == b"file"
    assert client.stats["map_misses"] == 1
    assert i1 != i0


def test_probe_limit(tmp_path):
    tier = FakeTier(tmp_path / "t", capacity=16, max_probe=2)
    mount = FakeMount(tmp_path / "mnt", tier)
    name = hexname("far")
    lo, hi = block_key("ns", name)
    for k in range(2):
        tier.insert("ns", f"filler{k}", b"f", key=(lo, hi ^ (k + 1)), index=(lo + k) & 15)
    tier.insert("ns", name, b"beyond", index=(lo + 2) & 15)  # beyond max_probe: not found
    mount.write("ns", name, b"file")
    with Client(mount.root) as c:
        assert c.get("ns", name) == b"file"
        assert c.stats["map_misses"] == 1


@pytest.mark.parametrize("where", ["before", "after", "overflow"])
def test_out_of_bounds_entry_falls_back(env, client, where):
    tier, mount = env
    name = hexname("oob" + where)
    mount.write("ns", name, b"from-file")
    if where == "before":                     # inside the table, not the data area
        tier.insert("ns", name, b"x" * 64, offset=tier.table_offset, length=64)
    elif where == "after":
        tier.insert("ns", name, b"x" * 64, offset=tier.data_offset + tier.data_size - 4096, length=8192)
    else:
        tier.insert("ns", name, b"x", offset=tier.data_offset, length=2**64 - 1)
    assert client.get("ns", name) == b"from-file"
    assert client.stats["map_retries"] == 1 and client.stats["map_hits"] == 0
    buf = bytearray(100)
    assert client.get_into("ns", name, buf) == len(b"from-file")


def test_generation_change_remaps_to_new_file(tmp_path, env, client):
    tier, mount = env
    name = hexname("gen")
    tier.insert("ns", name, blob("old", 1000))
    assert client.get("ns", name) == blob("old", 1000)
    tier2 = FakeTier(tmp_path / "tokenwarehouse-second", generation=tier.generation + 1)
    tier2.insert("ns", name, blob("new-tier", 1000))     # (same name, other bytes: tells the maps apart)
    mount.set_tier(tier2)
    tier.set_generation(0)                                # the old daemon stopped
    assert client.get("ns", name) == blob("new-tier", 1000)
    assert client.stats["remaps"] == 1 and client.generation == tier2.generation
    assert client.tiers == {"ns": "tokenwarehouse-second", "missing": "tokenwarehouse-second"}
    tier2.close()


def test_generation_changed_in_place_remaps(env, client):
    """A different non-zero generation in the same file (the path is reused) is also a new tier."""
    tier, mount = env
    name = hexname("inplace")
    tier.insert("ns", name, b"abc")
    assert client.get("ns", name) == b"abc"
    tier.set_generation(tier.generation + 2)
    assert client.get("ns", name) == b"abc"
    assert client.stats["remaps"] == 1 and client.generation == tier.generation + 2


def test_generation_zero_and_file_gone_uses_files(tmp_path, env, client):
    tier, mount = env
    name = hexname("gone")
    tier.insert("ns", name, blob("tier", 100))
    mount.write("ns", name, blob("file", 100))
    assert client.get("ns", name) == blob("tier", 100)
    tier.set_generation(0)
    os.unlink(tier.path)
    mount.set_tier(None)
    assert client.get("ns", name) == blob("file", 100)
    assert not client.mapped and client.stats["file_reads"] == 1 and client.stats["remaps"] == 0
    assert client.get("ns", name) == blob("file", 100)
    # The tier reappears: the client maps it again, but tries at most once per retry_interval (0.2 s).
    tier3 = FakeTier(tmp_path / "tokenwarehouse-third")
    tier3.insert("ns", name, blob("tier3", 100))
    mount.set_tier(tier3)
    deadline = time.monotonic() + 5
    while client.get("ns", name) != blob("tier3", 100):
        assert time.monotonic() < deadline, "the client never remapped the new tier"
        time.sleep(0.02)
    assert client.stats["remaps"] == 1 and client.mapped
    tier3.close()


def test_generation_zero_file_still_there_not_remapped(env, client):
    """A stopped daemon's file (generation 0) left in place is not mapped again."""
    tier, mount = env
    name = hexname("zero")
    tier.insert("ns", name, b"tier")
    mount.write("ns", name, b"file")
    tier.set_generation(0)
    assert client.get("ns", name) == b"file"
    assert not client.mapped and client.tier_error == "the daemon handed this process no tier"


def test_a_dead_daemons_tier_is_let_go_when_its_liveness_page_is_zeroed(env, client):
    """kill -9 leaves the tier's generation as it was; the next daemon zeroes the dead one's liveness page
    before it serves anything, and from then on no read comes from the dead tier."""
    tier, mount = env
    name = hexname("dead")
    tier.insert("ns", name, blob("frozen", 1000))
    mount.write("ns", name, blob("current", 1000))
    assert client.get("ns", name) == blob("frozen", 1000)
    mount.broker.die()
    mount.set_tier(None)
    assert client.get("ns", name) == blob("current", 1000)
    assert not client.mapped and client.stats["map_hits"] == 1


def test_retry_at_most_once_per_interval(tmp_path):
    mount = FakeMount(tmp_path / "mnt", None)
    mount.write("ns", "b", b"file")
    calls = []
    c = Client(mount.root, retry_interval=3600)
    orig = c._reconnect

    def counting():
        calls.append(1)
        return orig()
    c._reconnect = counting
    for _ in range(100):
        assert c.get("ns", "b") == b"file"
    assert calls == []                        # not before the interval
    c._next_try = 0
    for _ in range(100):
        c.get("ns", "b")
    assert len(calls) == 1
    c.close()


def test_no_tier_files_only(tmp_path):
    mount = FakeMount(tmp_path / "mnt", None)
    mount.write("ns", hexname("f"), b"data")
    with Client(mount.root) as c:
        assert not c.mapped
        assert c.get("ns", hexname("f")) == b"data"
        assert c.stats["file_reads"] == 1 and c.stats["map_misses"] == 0
    os.unlink(mount.root / ".tw" / "dram")    # older daemon: no control file at all
    with Client(mount.root) as c:
        assert not c.mapped and c.get("ns", hexname("f")) == b"data"


@pytest.mark.parametrize("field,value", [("magic", b"TWDRAM02"), ("version", 2), ("entry_size", 32),
                                         ("capacity", 48), ("table", 1 << 40), ("data", 1 << 40)])
def test_bad_superblock_not_mapped(tmp_path, field, value):
    tier = FakeTier(tmp_path / "t")
    off, fmt = {"magic": (0, "8s"), "version": (8, "<I"), "entry_size": (48, "<I"), "capacity": (40, "<Q"),
                "table": (32, "<Q"), "data": (64, "<Q")}[field]
    struct.pack_into(fmt, tier.mm, off, value)
    mount = FakeMount(tmp_path / "mnt", tier)
    mount.write("ns", "b", b"file")
    with Client(mount.root) as c:
        assert not c.mapped and c.tier_error
        assert c.get("ns", "b") == b"file"
    tier.close()


def test_truncated_file_not_mapped(tmp_path):
    p = tmp_path / "short"
    p.write_bytes(b"TWDRAM01")
    mount = FakeMount(tmp_path / "mnt", str(p))
    with Client(mount.root) as c:
        assert not c.mapped


def test_only_the_namespaces_handed_over_are_read_from_the_map(env, tmp_path):
    """A tier is used only for the namespaces the broker listed with it; others read files."""
    tier, mount = env
    tier.insert("secret", hexname("s"), b"tier bytes")
    (mount.root / "secret").mkdir()
    mount.write("secret", hexname("s"), b"file bytes")
    with Client(mount.root) as c:
        assert c.get("secret", hexname("s")) == b"file bytes"
        assert c.stats["map_hits"] == 0 and c.stats["file_reads"] == 1


def test_a_broker_that_says_something_else_is_not_trusted(tmp_path):
    mount = FakeMount(tmp_path / "mnt", None)
    (mount.root / ".tw" / "dram").write_text("/dev/shm/some-file\n")    # the layout of an older daemon
    mount.write("ns", "b", b"file")
    with Client(mount.root) as c:
        assert not c.mapped and "socket PATH" in c.tier_error
        assert c.get("ns", "b") == b"file"


def test_hits_counter_incremented(env, client):
    tier, mount = env
    name = hexname("hits")
    i = tier.insert("ns", name, blob("h", 1000))
    for k in range(3):
        client.get("ns", name)
    assert tier.hit_count(i) == 3
    client.get_into("ns", name, bytearray(1000))
    assert tier.hit_count(i) == 4
    client.exists("ns", name)                  # not a read
    assert tier.hit_count(i) == 4
    mount.write("ns", hexname("nohit"), b"f")
    client.get("ns", hexname("nohit"))
    assert sum(tier.hit_count(j) for j in range(tier.capacity)) == 4


def test_hits_file_missing_skips_counting(tmp_path):
    tier = FakeTier(tmp_path / "t", hits=False)
    mount = FakeMount(tmp_path / "mnt", tier)
    tier.insert("ns", "b", b"bytes")
    with Client(mount.root) as c:
        assert c._conn.by_namespace["ns"].hits is None
        assert c.get("ns", "b") == b"bytes"


def test_verify_checks_xxh3_64(env, tmp_path):
    tier, mount = env
    name = hexname("verify")
    data = blob("v", 20000)
    tier.insert("ns", name, data, checksum=xxhash.xxh3_64_intdigest(data) ^ 1)  # wrong checksum
    mount.write("ns", name, data)
    with Client(mount.root, verify=True) as c:
        assert c.get("ns", name) == data
        assert c.stats["checksum_errors"] == 1 and c.stats["map_hits"] == 0 and c.stats["file_reads"] == 1
        assert c.get_into("ns", name, bytearray(len(data))) == len(data)
        assert c.stats["checksum_errors"] == 2
    # A large block is copied and hashed without Python's lock in the C path: checked all the same.
    big, big_data = hexname("verify-big"), blob("vb", 300 * KiB)
    tier.insert("ns", big, big_data, checksum=xxhash.xxh3_64_intdigest(big_data) ^ 1)
    mount.write("ns", big, big_data)
    with Client(mount.root, verify=True) as c:
        assert c.get("ns", big) == big_data and c.get_into("ns", big, bytearray(len(big_data))) == len(big_data)
        assert c.stats["checksum_errors"] == 2 and c.stats["map_hits"] == 0 and c.stats["file_reads"] == 2
    good = hexname("verify-good")
    tier.insert("ns", good, data)
    with Client(mount.root, verify=True) as c:
        assert c.get("ns", good) == data and c.stats["map_hits"] == 1
    with Client(mount.root, verify=False) as c:   # without verify the entry is trusted
        assert c.get("ns", name) == data and c.stats["map_hits"] == 1


def test_get_into(env, client):
    np = pytest.importorskip("numpy")
    tier, mount = env
    name = hexname("into")
    data = blob("into", 100 * KiB)
    tier.insert("ns", name, data)
    buf = bytearray(200 * KiB)
    assert client.get_into("ns", name, buf) == len(data) and buf[:len(data)] == data
    arr = np.zeros(len(data) // 2, dtype=np.float16)
    assert client.get_into("ns", name, arr) == len(data)
    assert arr.tobytes() == data
    assert client.get_into("ns", name, memoryview(buf)[10:]) == len(data) and buf[10:10 + len(data)] == data
    with pytest.raises(ValueError):
        client.get_into("ns", name, bytearray(len(data) - 1))
    with pytest.raises(TypeError):
        client.get_into("ns", name, data)     # read-only
    # From the file.
    fname = hexname("into-file")
    mount.write("ns", fname, blob("f", 3000))
    assert client.get_into("ns", fname, buf) == 3000 and buf[:3000] == blob("f", 3000)
    with pytest.raises(ValueError):
        client.get_into("ns", fname, bytearray(2999))
    with pytest.raises(FileNotFoundError):
        client.get_into("ns", hexname("nothing"), buf)
    assert client.stats["map_hits"] == 3


# ----------------------------------------------------------------------------------------------- writes

def test_put_writes_the_block_file(env, client):
    tier, mount = env
    name = hexname("put")
    data = blob("put", 70000)
    parent = hexname("parent", 64)
    assert client.put("ns", name, data, parent=parent, tokens=512) is True
    p = mount.root / "ns" / name[:2] / name
    assert p.read_bytes() == data
    assert os.getxattr(p, "user.tw.parent") == parent.encode()
    assert os.getxattr(p, "user.tw.tokens") == b"512"
    assert client.put("ns", name, b"other") is False          # first write wins
    assert p.read_bytes() == data
    assert client.get("ns", name) == data
    assert client.put("ns", "compat.bin", memoryview(b"xyz")) is True
    assert (mount.root / "ns" / "compat.bin").read_bytes() == b"xyz"


def test_put_numpy_array(env, client):
    np = pytest.importorskip("numpy")
    arr = np.arange(1000, dtype=np.float32)
    assert client.put("ns", "arr", arr)
    assert client.get("ns", "arr") == arr.tobytes()


def test_put_needs_the_namespace(env, client):
    tier, mount = env
    with pytest.raises(FileNotFoundError, match="ensure_namespace"):
        client.put("missing", hexname("x"), b"data")
    path = client.ensure_namespace("missing")
    assert os.path.isdir(path)
    assert client.ensure_namespace("missing") == path          # idempotent
    assert client.put("missing", hexname("x"), b"data")
    assert client.get("missing", hexname("x")) == b"data"


def test_put_failure_leaves_nothing(env, client):
    tier, mount = env
    with pytest.raises(TypeError):
        client.put("ns", "bad-tokens", b"data", tokens=[1, 2])
    assert not client.exists("ns", "bad-tokens")


def test_exists(env, client):
    tier, mount = env
    tier.insert("ns", hexname("resident"), b"r")
    mount.write("ns", hexname("on-disk"), b"d")
    assert client.exists("ns", hexname("resident"))      # only in the map
    assert client.exists("ns", hexname("on-disk"))
    assert not client.exists("ns", hexname("nowhere"))
    assert not client.exists("other-ns", hexname("resident"))


def test_prefetch_writes_the_control_file(env, client):
    tier, mount = env
    names = [hexname(f"p{i}") for i in range(3)] + ["compat.bin"]
    assert client.prefetch("ns", names) is True
    lines = (mount.root / ".tw" / "prefetch").read_bytes()
    assert lines == b"".join(f"ns\t{n}\n".encode() for n in names)
    (mount.root / ".tw" / "prefetch").write_bytes(b"")
    assert client.prefetch("ns", hexname("single")) is True   # one name as a str
    assert (mount.root / ".tw" / "prefetch").read_bytes() == f"ns\t{hexname('single')}\n".encode()
    with pytest.raises(ValueError):
        client.prefetch("ns", ["bad\tname"])
    os.unlink(mount.root / ".tw" / "prefetch")
    assert client.prefetch("ns", names) is False            # older daemon


def test_prefetch_large_batches_split_at_lines(env, client, monkeypatch):
    tier, mount = env
    writes = []
    real_write = os.write

    def spy(fd, data):
        writes.append(bytes(data))
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", spy)
    names = [hexname(f"many{i}", 64) for i in range(3000)]    # ~ 210 KB of hints
    assert client.prefetch("ns", names)
    monkeypatch.undo()
    assert len(writes) > 1 and all(w.endswith(b"\n") and len(w) <= 64 << 10 for w in writes)
    assert b"".join(writes) == b"".join(f"ns\t{n}\n".encode() for n in names)
    writes.clear()
    assert client.prefetch("ns", names[:10]) and len(writes) == 0   # (spy removed) small: one write


def test_tier_xattr(env, client):
    tier, mount = env
    p = mount.write("ns", hexname("t"), b"x")
    try:
        os.setxattr(p, "user.tw.tier", b"nvme")
    except OSError:
        pytest.skip("no user xattrs here")
    assert client.tier("ns", hexname("t")) == "nvme"
    with pytest.raises(FileNotFoundError):
        client.tier("ns", hexname("none"))


def test_close_and_context_manager(env):
    tier, mount = env
    tier.insert("ns", "b", b"x")
    with Client(mount.root) as c:
        assert c.get("ns", "b") == b"x"
    assert c.closed and not c.mapped
    with pytest.raises(ValueError):
        c.get("ns", "b")
    c.close()   # twice is fine
    assert "closed" in repr(c)


def test_tier_file_mapped_read_only(env, client):
    tier, mount = env
    with pytest.raises(TypeError):
        client._conn.by_namespace["ns"].mm[0:1] = b"X"
    if sys.version_info < (3, 13):
        return   # mmap keeps a duplicate descriptor before Python 3.13 (trackfd)
    fd_dir = Path("/proc/self/fd")
    assert not any(os.readlink(fd_dir / fd) == tier.path for fd in os.listdir(fd_dir)
                   if os.path.exists(fd_dir / fd)), "the tier's descriptor is closed after mapping"


# ---------------------------------------------------------------------------------- concurrent writer

def _churn(path: str, names: list[str], datas: list[bytes], stop, ready) -> None:
    """A fake daemon process that evicts and refills one data slot with alternating blocks, as fast as it
    can, while readers copy from it. One block in four stays for half a millisecond: with every block
    gone within microseconds, a reader on a loaded 2-CPU machine could go a whole run without a hit
    (seen in CI), and the test would not have exercised the map path it is about."""
    tier = _reopen(path)
    off = tier.data_offset
    slots = [tier.slot_for(block_key("ns", n)) for n in names]
    ready.set()
    k = 0
    while not stop.is_set():
        j = k % len(names)
        tier.mm[off:off + len(datas[j])] = datas[j]
        tier.publish(slots[j], block_key("ns", names[j]), off, len(datas[j]), xxhash.xxh3_64_intdigest(datas[j]))
        hold_until = time.perf_counter() + (0.0005 if k % 4 == 0 else 0.0)
        for _ in range(50):
            pass
        while time.perf_counter() < hold_until:
            pass
        tier.remove(slots[j])
        k += 1


def _reopen(path: str) -> FakeTier:
    t = FakeTier.__new__(FakeTier)
    fd = os.open(path, os.O_RDWR)
    size = os.fstat(fd).st_size
    t.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)
    (_, _, _, t.generation, t.file_size, t.table_offset, t.capacity, _, t.max_probe, t.data_offset,
     t.data_size) = SUPERBLOCK.unpack_from(t.mm, 0)
    t.path = path
    return t


def test_concurrent_evict_refill_never_returns_wrong_bytes(env):
    tier, mount = env
    names = [hexname(f"churn{i}") for i in range(3)]
    datas = [blob(f"churn{i}", 256 * KiB) for i in range(3)]
    for n, d in zip(names, datas):
        mount.write("ns", n, d)
    ctx = multiprocessing.get_context("fork")
    stop, ready = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_churn, args=(tier.path, names, datas, stop, ready), daemon=True)
    proc.start()
    try:
        assert ready.wait(10)
        with Client(mount.root) as c:
            wrong = 0
            start = time.monotonic()
            deadline = start + float(os.environ.get("TW_UNIT_CHURN_SECONDS", "3"))
            buf = bytearray(256 * KiB)
            k = 0
            # Past the deadline only while no read has hit the map yet (at most 30 s in all).
            while time.monotonic() < deadline or (c.stats["map_hits"] == 0 and time.monotonic() < start + 30):
                j = k % 3
                if k & 1:
                    n = c.get_into("ns", names[j], buf)
                    wrong += n != len(datas[j]) or buf != datas[j]
                else:
                    wrong += c.get("ns", names[j]) != datas[j]
                k += 1
            stats = dict(c.stats)
    finally:
        stop.set()
        proc.join(10)
    print(f"churn: {k} reads, {stats}")
    assert wrong == 0, f"{wrong} wrong reads of {k}; {stats}"
    assert stats["map_hits"] > 0, stats
    assert stats["map_retries"] + stats["map_misses"] > 0, stats


# ------------------------------------------------------------------------------- C reader cross-check

C_READER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include "tokenwarehouse.h"

int main(int argc, char **argv) {
    tw_broker_tier got[4];
    int alive = -1;
    int n = tw_broker_connect(argv[1], got, 4, &alive);
    if (n != 1) { printf("tiers %d\n", n); return 1; }
    printf("namespaces %s\n", got[0].namespaces);
    struct stat st; fstat(got[0].data_fd, &st);
    void *map = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, got[0].data_fd, 0);
    tw_tier tier;
    if (map == MAP_FAILED || tw_tier_open(map, st.st_size, &tier) != 0) { puts("invalid"); return 1; }
    void *page = mmap(NULL, 4096, PROT_READ, MAP_SHARED, alive, 0);
    if (page == MAP_FAILED || tw_tier_watch_daemon(&tier, page) != 0) { puts("no liveness page"); return 1; }
    printf("gen %llx\n", (unsigned long long)tier.generation);
    static char buf[1 << 22];
    for (int i = 2; i < argc; i++) {
        XXH128_hash_t h = XXH3_128bits(argv[i], strlen(argv[i]));
        uint64_t len = sizeof buf, idx = 0;
        int r = tw_lookup_copy(&tier, h.low64, h.high64, buf, &len, &idx);
        if (r == TW_HIT) printf("hit %llu %llu %016llx\n", (unsigned long long)idx, (unsigned long long)len,
                                (unsigned long long)XXH3_64bits(buf, len));
        else printf("result %d\n", r);
    }
    return 0;
}
"""


def test_c_reader_agrees_with_fake_writer(env, tmp_path):
    tier, mount = env
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc or not (HEADER_DIR / "tokenwarehouse.h").exists():
        pytest.skip("needs cc and include/tokenwarehouse.h")
    src = tmp_path / "reader.c"
    src.write_text(C_READER)
    exe = tmp_path / "reader"
    r = subprocess.run([cc, "-O2", "-std=c11", "-D_GNU_SOURCE", f"-I{HEADER_DIR}", str(src), "-o", str(exe),
                        "-lxxhash"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot build the C reader (libxxhash-dev?): {r.stderr[-500:]}")
    names = [hexname(f"c{i}") for i in range(5)] + ["compat name.bin"]
    datas = [blob(f"c{i}", 1000 * (i + 1)) for i in range(6)]
    idx = [tier.insert("ns", n, d) for n, d in zip(names, datas)]
    out = subprocess.run([str(exe), str(mount.root)] + [f"ns/{n}" for n in names] + ["ns/absent"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "namespaces ns missing"
    assert out[1] == f"gen {tier.generation:x}"
    for line, i, d in zip(out[2:], idx, datas):
        assert line == f"hit {i} {len(d)} {xxhash.xxh3_64_intdigest(d):016x}"
    assert out[-1] == "result 1"   # TW_MISS
    with Client(mount.root) as c:
        for n, d in zip(names, datas):
            assert c.get("ns", n) == d
        assert c.stats["map_hits"] == len(names)


def test_threads_share_a_client_across_remaps(tmp_path):
    import threading
    mount = FakeMount(tmp_path / "mnt", None)
    names = [hexname(f"t{i}") for i in range(8)]
    datas = {n: blob(n, 50000) for n in names}
    for n in names:
        mount.write("ns", n, datas[n])
    tiers = []
    for k in range(2):
        t = FakeTier(tmp_path / f"tier{k}", generation=100 + k)
        for n in names[k::2]:
            t.insert("ns", n, datas[n])
        tiers.append(t)
    mount.set_tier(tiers[0])
    c = Client(mount.root, retry_interval=0)
    errors, stop = [], threading.Event()

    def reader(seed):
        import random
        rnd = random.Random(seed)
        try:
            while not stop.is_set():
                n = rnd.choice(names)
                if c.get("ns", n) != datas[n]:
                    errors.append(f"wrong bytes for {n}")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for k in range(40):   # flip between the two tiers: a new generation each time
        cur = tiers[k % 2]
        mount.set_tier(cur)
        cur.set_generation(1000 + k)
        tiers[(k + 1) % 2].set_generation(0)
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert c.stats["remaps"] >= 10 and c.stats["map_hits"] > 0, c.stats
    c.close()
    for t in tiers:
        t.close()


# ------------------------------------------------------------------------------------- the C lookup

needs_native = pytest.mark.skipif(_native is None, reason=f"the C lookup is not built here: {NOT_BUILT}")


@needs_native
def test_native_and_python_agree_on_every_read(env):
    """The same blocks read both ways: the same bytes, lengths, existence and counts, for canonical names of
    every length (the C path), other names and bytes namespaces (the Python path either way)."""
    import random
    tier, mount = env
    rng = random.Random(7)
    names = [hashlib.shake_256(f"agree{k}".encode()).hexdigest(64)[:length]
             for k, length in enumerate([16, 17, 31, 32, 64, 100, 128] * 3)]
    names += ["plain.bin", "dir/sub/kv.bin", "ABCDEF0123456789", "ab" * 7, "a" * 129]
    blocks = {}
    for k, name in enumerate(names):
        data = os.urandom(rng.choice([0, 1, 4095, 4096, 16 * KiB, 64 * KiB + 3, 200 * KiB]))
        blocks[name] = data
        if k % 3 == 0:
            mount.write("ns", name, data)            # on "disk" only
        else:
            tier.insert("ns", name, data)            # resident (and on disk for every third of those)
            if k % 3 == 2:
                mount.write("ns", name, data)
    with Client(mount.root, native=True) as fast, Client(mount.root, native=False) as slow:
        assert fast.native and not slow.native
        for name, data in blocks.items():
            if 16 <= len(name) <= 128 and all(c in "0123456789abcdef" for c in name):
                assert _native.key("ns", name) == block_key("ns", name)
            else:
                assert _native.key("ns", name) is None
            for c in (fast, slow):
                assert c.get("ns", name) == data
                for ns in ("ns", b"ns"):
                    buf = bytearray(len(data) + 5)
                    assert c.get_into(ns, name, buf) == len(data) and bytes(buf[:len(data)]) == data
                assert c.exists("ns", name)
                small = bytearray(max(len(data) - 1, 0))
                if data:
                    with pytest.raises(ValueError):
                        c.get_into("ns", name, small)
            a, b = fast.map_into("ns", name, bytearray(len(data))), slow.map_into("ns", name, bytearray(len(data)))
            assert a == b
        for c in (fast, slow):
            assert not c.exists("ns", hexname("absent"))
            with pytest.raises(FileNotFoundError):
                c.get("ns", hexname("absent"))
        assert fast.stats == slow.stats


@needs_native
def test_native_reads_never_return_a_block_changed_while_copying(env):
    """A writer thread evicts a block and refills its bytes with another over and over, as the daemon does,
    while readers copy it through the C lookup (large copies run without the GIL, so the two interleave):
    every read returns the whole block it asked for, from the map or from the file, never a mixture."""
    tier, mount = env
    a, b = hexname("race-a"), hexname("race-b")
    n = 256 * KiB
    data_a, data_b = b"A" * n, b"B" * n
    mount.write("ns", a, data_a)
    mount.write("ns", b, data_b)
    ia = tier.insert("ns", a, data_a)
    off = tier.entry(ia)[5]
    stop = threading.Event()
    swaps = [0]

    sums = {a: xxhash.xxh3_64_intdigest(data_a), b: xxhash.xxh3_64_intdigest(data_b)}

    def daemon():
        resident, index = a, ia
        while not stop.is_set():
            tier.remove(index)
            other, content = (b, data_b) if resident == a else (a, data_a)
            tier.mm[off:off + n] = content
            # (checksums computed beforehand: xxhash lets go of the GIL, and readers would only ever run
            # while no block is published)
            index = tier.insert("ns", other, content, offset=off, checksum=sums[other])
            resident = other
            swaps[0] += 1
            time.sleep(0)     # let the readers in between swaps too, not only during their own copies

    wrong = []
    with Client(mount.root, native=True) as c:
        w = threading.Thread(target=daemon)
        w.start()
        try:
            buf = bytearray(n)
            deadline = time.monotonic() + 10
            reads = 0
            # Until both hits and lost races were seen (at least a second).
            while time.monotonic() < deadline and (reads < 1000 or c.stats["map_hits"] < 50 or
                                                   c.stats["map_retries"] < 5):
                for name, want in ((a, data_a), (b, data_b)):
                    if c.get_into("ns", name, buf) != n or buf != want:
                        wrong.append(name)
                    got = c.get("ns", name)
                    if got != want:
                        wrong.append(name)
                    reads += 2
        finally:
            stop.set()
            w.join()
        assert not wrong, f"{len(wrong)} of {reads} reads returned other bytes"
        assert c.stats["map_hits"] >= 50 and c.stats["map_retries"] >= 5, (swaps, reads, c.stats)
        # Lost races were read from the file, not returned from the map.
        assert c.stats["map_hits"] + c.stats["map_misses"] + c.stats["map_retries"] == reads


@needs_native
def test_native_close_while_other_threads_copy(env):
    """Closing a client while threads copy large blocks: each read ends with the right bytes or with the
    closed client's ValueError; the mapping stays until the last copy in flight is done."""
    tier, mount = env
    names = [hexname(f"close{k}") for k in range(4)]
    blocks = {name: bytes([k + 1]) * MiB for k, name in enumerate(names)}
    for name, data in blocks.items():
        tier.insert("ns", name, data)
    c = Client(mount.root, native=True)
    errors, done = [], []

    def reader():
        buf = bytearray(MiB)
        try:
            while True:
                for name, data in blocks.items():
                    if c.get_into("ns", name, buf) != MiB or buf != data:
                        errors.append(name)
        except ValueError:
            done.append(1)
        except BaseException as e:   # noqa: BLE001 - reported below
            errors.append(repr(e))
    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    c.close()
    for t in threads:
        t.join(10)
    assert not errors and len(done) == 3 and c.stats["map_hits"] > 0
