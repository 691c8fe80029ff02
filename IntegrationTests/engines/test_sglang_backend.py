"""tokenwarehouse.sglang.TokenWarehouseStorage through SGLang's own storage interface, on real twfs mounts.

SGLang does not run here (no GPU; its host pool imports torchvision, whose PyPI build needs CUDA). The
backend is built the way SGLang builds it, by the installed package's StorageBackendFactory for the
"dynamic" backend, and called through HiCacheStorage's methods with pages of a host pool laid out as
SGLang's MHA host pool is (sglang_pool.py): zero-copy batch_set_v1 / batch_get_v1 / batch_exists over
the pool's page pointers, and the generic batch_set / batch_get over flat page tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

if os.environ.get("TW_REQUIRE_VLLM") != "1":
    pytest.importorskip("sglang", reason="SGLang's package is in the venv of Tools/vllm-venv.sh (docs/engine.md)")

import torch  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageExtraInfo  # noqa: E402

from engine_util import HERE, engine_env, namespace_dir, parent_of, stored_blocks  # noqa: E402
from sglang_pool import MHAHostPool, make_backend  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def page_keys(n: int, salt: str = "") -> list[str]:
    """Chained SHA-256 page hashes, as SGLang names pages (64 lowercase hex characters)."""
    keys, prev = [], b""
    for i in range(n):
        prev = hashlib.sha256(prev + f"{salt}page{i}".encode()).digest()
        keys.append(prev.hex())
    return keys


def indices(pool: MHAHostPool, pages) -> torch.Tensor:
    return torch.cat([pool.page_indices(p) for p in pages])


def page_bytes(pool: MHAHostPool, page: int) -> bytes:
    return pool.get_data_page(page * pool.page_size).contiguous().numpy().tobytes()


def filled(warehouse, layout: str, pages: int, first_value: int, salt: str):
    """A host pool whose first `pages` pages hold first_value, first_value + 1, ..., a backend on the
    mount, and `pages` page keys."""
    pool = MHAHostPool(layout)
    for p in range(pages):
        pool.fill(p, first_value + p)
    return pool, make_backend(os.fspath(warehouse.mount), pool), page_keys(pages, salt)


@pytest.mark.parametrize("layout", ["page_first", "layer_first"])
def test_pages_stored_by_one_process_load_zero_copy_in_another(warehouse, layout):
    keys = page_keys(6, layout)
    # another process stores 6 pages filled from seed 100 (pages 0..5 of its pool)
    out = subprocess.run([sys.executable, os.fspath(HERE / "sglang_pool.py"), os.fspath(warehouse.mount), layout,
                          "100", json.dumps(keys)], env=engine_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-4000:]
    writer = json.loads(out.stdout.strip().splitlines()[-1])
    assert writer["ok"] == [True] * 6
    assert writer["stats"]["saved_blocks"] == 6

    expect = MHAHostPool(layout)
    for p in range(6):
        expect.fill(p, 100 + p)
    pool = MHAHostPool(layout)
    backend = make_backend(os.fspath(warehouse.mount), pool)
    assert isinstance(backend, HiCacheStorage)
    assert backend.namespace == writer["namespace"]
    assert backend.batch_exists(keys + page_keys(2, "absent")) == 6
    # load into other places of this pool (pages 10..15), through the pool's own pointers
    got = backend.batch_get_v1(keys, indices(pool, range(10, 16)), HiCacheStorageExtraInfo(prefix_keys=None))
    assert got == [True] * 6
    for p in range(6):
        assert page_bytes(pool, 10 + p) == page_bytes(expect, p)
    stats = backend.get_stats()
    assert stats.get("loaded_blocks_dram_map", 0) + stats.get("loaded_blocks_file", 0) == 6
    assert stats.get("prefetch_hints") == 6
    # the pages form one user.tw.parent chain, each holding page_size tokens
    blocks = stored_blocks(namespace_dir(warehouse.mount))
    assert set(blocks) == set(keys)
    assert [parent_of(blocks[k]) for k in keys] == [None] + keys[:-1]
    assert os.getxattr(blocks[keys[0]], "user.tw.tokens") == str(pool.page_size).encode()
    backend.close()


def test_a_damaged_page_is_a_miss_and_a_good_copy_replaces_it(warehouse):
    pool, backend, keys = filled(warehouse, "page_first", 4, 7, "damage")
    assert backend.batch_set_v1(keys, indices(pool, range(4))) == [True] * 4
    blocks = stored_blocks(namespace_dir(warehouse.mount))
    victim = blocks[keys[2]]
    size = os.path.getsize(victim)
    donor = blocks[keys[3]].read_bytes()
    os.unlink(victim)
    victim.write_bytes(donor)                          # a valid block of another name, same size
    # exists still says yes (the file is there); the load finds out, counts it and removes it
    assert backend.batch_exists(keys) == 4
    before = page_bytes(pool, 20)
    got = backend.batch_get_v1(keys, indices(pool, range(20, 24)))
    assert got == [True, True, False, False]
    stats = backend.get_stats()
    assert stats["load_errors"] == 1 and stats["damaged_removed"] == 1
    assert page_bytes(pool, 20) == page_bytes(pool, 0) and before != page_bytes(pool, 20)
    assert not victim.exists()
    # SGLang writes the page back after recomputing it: the good copy is stored again
    assert backend.batch_set_v1(keys[2:3], indices(pool, [2]),
                                HiCacheStorageExtraInfo(prefix_keys=keys[:2])) == [True]
    assert os.path.getsize(victim) == size and victim.read_bytes() != donor
    assert parent_of(victim) == keys[1]
    assert backend.batch_get_v1(keys, indices(pool, range(20, 24))) == [True] * 4
    assert page_bytes(pool, 22) == page_bytes(pool, 2)
    backend.close()


def test_first_write_wins_and_the_generic_path_round_trips_flat_pages(warehouse):
    pool, backend, keys = filled(warehouse, "layer_first", 3, 50, "flat")
    pages = [pool.get_data_page(p * pool.page_size).contiguous() for p in range(3)]
    assert backend.batch_set(keys, pages) is True
    assert backend.get_stats()["saved_blocks"] == 3
    # a second write of the same name keeps the first bytes
    assert backend.set(keys[0], pages[1]) is True
    assert backend.get_stats()["skipped_blocks"] == 1
    targets = [pool.get_dummy_flat_data_page() for _ in range(4)]
    got = backend.batch_get(keys + page_keys(1, "nope"), targets)
    assert [g is not None for g in got] == [True, True, True, False]
    for p in range(3):
        assert torch.equal(got[p], pages[p])
    assert backend.exists(keys[1]) and not backend.exists(page_keys(1, "nope")[0])
    # flat pages and zero-copy pages are stored in different byte orders for layer_first: a flat page is
    # not accepted where a zero-copy page is expected (its layout fingerprint differs)
    assert backend.batch_get_v1(keys[:1], indices(pool, [5])) == [False]
    backend.close()
