"""SGLang's HiCacheFile (sglang 0.5.23), its own code, on a twfs namespace, with remounts between storing,
loading, evicting and clearing (drivers/sglang_file.py says exactly what runs)."""

from __future__ import annotations

import os

import pytest
from twfs_util import file_sha256  # the mount tests' helpers (conftest puts them on the path)

pytestmark = pytest.mark.timeout(600)

SGLANG = ("sglang_file", "sglang.srt.mem_cache.hicache_storage", "SGLang HiCacheFile")
PAGE = 32 * 1024


def test_hicache_file_set_remount_get_evict_clear(warehouse, engine):
    ns = warehouse.namespace("sglang")
    root = ns / "hicache"  # HiCacheFile makes its directory itself
    n = 8
    writer = engine(*SGLANG)
    stored = writer.call("store", root=os.fspath(root), seed=41, n=n, page_bytes=PAGE)
    assert stored["set"] and stored["batch_set"] and stored["set_again"]
    assert all(stored["exists"])
    assert stored["names"] == sorted(stored["paths"]), "only the committed pages, no .tmp files"
    writer.close()

    warehouse.restart()  # remount: SIGTERM, then a new daemon on the same store

    for rel, digest in zip(stored["paths"], stored["sha256"]):
        assert file_sha256(root / rel) == digest, f"{rel} differs after the remount"
    reader = engine(*SGLANG)
    # With the metadata cache (a listing of the directory at start) and without (a stat per key).
    for cache in (True, False):
        loaded = reader.call("load", root=os.fspath(root), seed=41, n=n, page_bytes=PAGE, metadata_cache=cache)
        assert loaded["kv_hit_pages"] == n and all(loaded["exists"]), loaded
        assert loaded["mismatches"] == {} and loaded["missing_is_none"]

    # A byte cap of n pages: the evictor scans the pages (oldest commit first) and removes old ones to
    # make room for 4 new pages.
    evicted = reader.call("evict", root=os.fspath(root), seed=42, n_new=4, page_bytes=PAGE, max_size=n * PAGE)
    assert evicted["set"] == [True] * 4
    old_left = [p for p in stored["paths"] if p in evicted["names"]]
    assert len(evicted["names"]) <= n and len(old_left) < n, evicted["names"]
    assert not any(name.endswith(".tmp") for name in evicted["names"])
    reader.close()

    warehouse.restart()

    assert sorted(os.listdir(root)) == evicted["names"], "evicted pages came back, or pages went missing"
    for rel, digest in zip(stored["paths"], stored["sha256"]):
        if rel in old_left:
            assert file_sha256(root / rel) == digest
    cleaner = engine(*SGLANG)
    cleared = cleaner.call("clear", root=os.fspath(root))
    assert cleared == {"cleared": True, "names": []}
    cleaner.close()

    warehouse.restart()

    assert os.listdir(root) == []
    assert os.statvfs(ns).f_bavail > 0
