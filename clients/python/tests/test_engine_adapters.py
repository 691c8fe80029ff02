"""Unit tests of tokenwarehouse.engine that need neither torch nor a daemon: the chained prefix hash (its
byte encoding pinned by an independent computation, stable across processes and hash seeds), and the
HiCache-shaped store and KV connector on a plain directory (the client's file path, which a mount shares).
The same adapters against a real twfs mount and a real model: IntegrationTests/mount/test_engine.py.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))   # the package from this checkout, also when not pip-installed

from tokenwarehouse import Client, block_relpath  # noqa: E402
from tokenwarehouse.engine import (  # noqa: E402
    HiCacheStore, KVConnector, PrefixHasher, byte_view, hash_block_tokens, prefix_hashes, root_hash,
)

BS = 4


def _xattrs_work(path: Path) -> bool:
    p = path / "probe"
    p.write_bytes(b"x")
    try:
        os.setxattr(p, "user.tw.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        p.unlink()


# ----------------------------------------------------------------------------------------- hashing

def test_first_block_hash_matches_the_documented_encoding():
    # Computed here from the spec in engine.py's docstring, not with the module's encoder.
    root = hashlib.sha256(b"tokenwarehouse prefix hash v1\0" + b"S" + struct.pack("<I", 5) + b"llama").digest()
    assert root_hash("llama") == root
    tokens = [1, 2, 70000, 4]
    want = hashlib.sha256(root + struct.pack("<I", 4) + struct.pack("<4I", *tokens) + b"N").digest()
    assert hash_block_tokens(root, tokens) == want
    with_lora = hashlib.sha256(root + struct.pack("<I", 4) + struct.pack("<4I", *tokens)
                               + b"L" + struct.pack("<I", 2) + b"S" + struct.pack("<I", 4) + b"lora"
                               + b"I" + struct.pack("<I", 1) + b"7").digest()
    assert hash_block_tokens(root, tokens, ("lora", 7)) == with_lora
    assert prefix_hashes(tokens, 4, salt="llama") == [want.hex()]


def test_hashes_chain_a_shared_prefix_and_diverge_after_it():
    a = list(range(100, 120))
    b = a[:8] + [999] + a[9:]                       # differs inside block 2 (tokens 8..11)
    ha, hb = prefix_hashes(a, BS), prefix_hashes(b, BS)
    assert len(ha) == len(hb) == 5
    assert ha[:2] == hb[:2]
    assert all(x != y for x, y in zip(ha[2:], hb[2:]))   # every later block names a different prefix
    assert prefix_hashes(a + [1, 2, 3], BS) == ha         # a trailing partial block is not named
    assert prefix_hashes(a[4:], BS) != ha[1:]             # the same tokens at another position differ


def test_extra_keys_salt_and_continuation():
    t = list(range(16))
    base = prefix_hashes(t, BS)
    assert prefix_hashes(t, BS, extra_keys="lora-a") != base
    assert prefix_hashes(t, BS, extra_keys="lora-a") != prefix_hashes(t, BS, extra_keys="lora-b")
    assert prefix_hashes(t, BS, salt="model-1") != prefix_hashes(t, BS, salt="model-2")
    # a list is one key per block: only the block with a different key (and its successors) change
    per_block = prefix_hashes(t, BS, extra_keys=[None, None, "img", None])
    assert per_block[:2] == base[:2] and per_block[2] != base[2] and per_block[3] != base[3]
    assert prefix_hashes(t, BS, extra_keys=lambda i, s, e: None) == base
    # int 1, str "1", True and float 1.0 are different keys
    keys = [1, "1", True, 1.0, b"1", (1,)]
    assert len({prefix_hashes(t, BS, extra_keys=k)[0] for k in keys}) == len(keys)
    # continuing a chain after block 1 gives the names of blocks 2.. of the whole sequence
    assert prefix_hashes(t[8:], BS, parent=base[1]) == base[2:]
    hasher = PrefixHasher(BS, salt="m")
    assert hasher.names(t) == prefix_hashes(t, BS, salt="m")


def test_names_are_canonical_block_names():
    for name in prefix_hashes(list(range(40)), BS):
        assert len(name) == 64 and name == name.lower() and int(name, 16) >= 0
        assert block_relpath("ns", name) == os.path.join("ns", name[:2], name)


def test_token_ids_must_fit_u32():
    with pytest.raises(ValueError):
        prefix_hashes([0, 1, 2, 2 ** 32], BS)
    with pytest.raises(ValueError):
        prefix_hashes([0, 1, 2, -1], BS)
    with pytest.raises(TypeError):
        prefix_hashes([0, 1, 2, object()], BS)


def test_numpy_tokens_hash_like_lists():
    np = pytest.importorskip("numpy")
    t = list(range(1000, 1032))
    assert prefix_hashes(np.array(t, dtype=np.int64), BS) == prefix_hashes(t, BS)


def test_hashes_are_the_same_in_another_process_with_another_hash_seed():
    t = [(i * 7919) % 50000 for i in range(64)]
    here = prefix_hashes(t, 16, extra_keys=("lora", 3), salt="m")
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from tokenwarehouse.engine import prefix_hashes;"
            f"print(','.join(prefix_hashes({t!r}, 16, extra_keys=('lora', 3), salt='m')))")
    for seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code, str(HERE.parent)], env=env, capture_output=True,
                             text=True, check=True, timeout=60).stdout.strip()
        assert out.split(",") == here


# ------------------------------------------------------------------------------ store and connector

def _blocks(n: int, size: int, seed: int) -> list[bytes]:
    return [hashlib.shake_256(f"{seed}/{i}".encode()).digest(size) for i in range(n)]


def test_hicache_store_on_a_directory(tmp_path):
    store = HiCacheStore(Client(tmp_path), "ns")
    keys = prefix_hashes(list(range(12)), BS)
    vals = _blocks(3, 5000, 1)
    assert store.batch_exists(keys) == 0
    assert store.get(keys[0]) is None
    assert store.batch_set(keys[:2], vals[:2], parents="chain")
    assert store.batch_exists(keys) == 2
    assert store.exists(keys[1]) and not store.exists(keys[2])
    assert store.batch_get(keys) == [vals[0], vals[1], None]
    buf = bytearray(8192)
    assert store.get(keys[1], buf) == 5000 and bytes(buf[:5000]) == vals[1]
    assert store.set(keys[0], b"other bytes")          # first write wins
    assert store.get(keys[0]) == vals[0]
    assert store.delete(keys[0]) and not store.delete(keys[0])
    assert store.batch_exists(keys) == 0               # the prefix now stops at page 0
    assert (tmp_path / "ns" / keys[1][:2] / keys[1]).is_file()
    if _xattrs_work(tmp_path):
        assert os.getxattr(tmp_path / "ns" / keys[1][:2] / keys[1], "user.tw.parent") == keys[0].encode()


def test_connector_saves_finds_the_longest_prefix_and_loads_it(tmp_path):
    conn = KVConnector(tmp_path, "model@tp0", BS, salt="model")
    a = list(range(500, 522))                 # 5 whole blocks and 2 tokens
    blocks = _blocks(5, 3000, 2)
    assert conn.lookup(a) == 0
    assert conn.save(a, blocks[:3]) == 3
    assert conn.save(a, blocks[3:], start_block=3) == 2
    assert conn.save(a, blocks) == 0          # all there already
    with pytest.raises(ValueError):
        conn.save(a, blocks + blocks[:1])     # a sixth whole block does not exist
    b = a[:12] + [7, 7, 7, 7, 7, 7]           # shares 3 blocks with a
    assert conn.lookup(b) == 12
    bufs = [bytearray(3000) for _ in range(5)]
    assert conn.load(b, bufs) == 12
    assert [bytes(x) for x in bufs[:3]] == blocks[:3]
    assert bufs[3] == bytearray(3000)         # not loaded: block 3 of b is not stored
    assert conn.last_load.blocks == 3 and sum(conn.last_load.bytes.values()) == 9000
    # another salt (model) or extra key sees nothing
    assert KVConnector(tmp_path, "model@tp0", BS, salt="other").lookup(a) == 0
    assert conn.lookup(a, extra_keys="lora") == 0
    # a block evicted in the middle cuts the prefix there, for lookup and load
    names = conn.block_names(a)
    os.unlink(conn.client.path("model@tp0", names[2]))
    assert conn.lookup(a) == 8
    assert conn.load(a, [bytearray(3000) for _ in range(5)]) == 8
    if _xattrs_work(tmp_path):
        p = conn.client.path("model@tp0", names[4])
        assert os.getxattr(p, "user.tw.parent") == names[3].encode()
        assert os.getxattr(p, "user.tw.tokens") == str(BS).encode()


def test_connector_loads_in_parallel_threads(tmp_path):
    conn = KVConnector(tmp_path, "ns", BS, threads=4)
    t = list(range(64))
    blocks = _blocks(16, 70000, 3)
    conn.save(t, blocks)
    bufs = [bytearray(70000) for _ in range(16)]
    assert conn.load(t, bufs) == 64
    assert [bytes(x) for x in bufs] == blocks
    assert conn.report.blocks == 16
    conn.close()


def test_byte_view_refuses_read_only_targets():
    with pytest.raises(TypeError):
        byte_view(b"abc", writable=True)
    assert byte_view(bytearray(8), writable=True).nbytes == 8
    with pytest.raises(TypeError):
        byte_view(object())


def test_connector_takes_cpu_tensors_of_any_dtype(tmp_path):
    torch = pytest.importorskip("torch")
    conn = KVConnector(tmp_path, "ns", BS)
    t = list(range(12))
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(2, 3, 5, generator=g).to(torch.bfloat16) for _ in range(3)]
    assert conn.save(t, blocks) == 3
    out = torch.empty(3, 2, 3, 5, dtype=torch.bfloat16)
    assert conn.load(t, [out[i] for i in range(3)]) == 12
    assert all(torch.equal(out[i], blocks[i]) for i in range(3))
    with pytest.raises(ValueError):
        conn.save(t, [blocks[0].transpose(0, 2)])   # not contiguous: refused rather than copied silently
