"""LMCache 0.5.6's LocalDiskBackend, FSConnector and GDS file layout, their own code, on a twfs namespace,
with a remount in the middle (drivers/lmcache_file.py says exactly what runs)."""

from __future__ import annotations

import errno
import os

import pytest
from twfs_util import file_sha256  # the mount tests' helpers (conftest puts them on the path)

pytestmark = pytest.mark.timeout(600)

LMCACHE = ("lmcache_file", "lmcache.v1.storage_backend.local_disk_backend", "LMCache")


@pytest.mark.parametrize("odirect", [False, True], ids=["buffered", "O_DIRECT"])
def test_local_disk_backend_put_remount_get(warehouse, engine, odirect):
    """One LocalDiskBackend lives through a remount of the mount under it: puts of 8 chunks, remount,
    get_blocking and batched_get_blocking byte for byte, remove (unlink), remount, the removed chunk stays
    gone and the others stay intact."""
    ns = warehouse.namespace("lmcache")
    root = ns / "local_disk"
    lm = engine(*LMCACHE)
    opened = lm.call("ld_open", root=os.fspath(root), odirect=odirect)
    assert opened["use_odirect"] is odirect
    assert 16384 % opened["f_bsize"] == 0, "a 16 KiB chunk is aligned to statvfs' f_bsize, so O_DIRECT is used"
    put = lm.call("ld_put", seed=51, n=8)
    assert put["names"] == sorted(put["paths"]) and all(put["contains"])
    for name, digest in zip(put["paths"], put["sha256"]):
        assert file_sha256(root / name) == digest

    warehouse.restart()  # remount under the live backend: SIGTERM, then a new daemon on the same store

    got = lm.call("ld_get", seed=51, n=8)
    assert got == {"single": {}, "batched": {}}
    removed = lm.call("ld_remove", seed=51, i=3)
    assert removed == {"removed": True, "exists": False, "contains": False}

    warehouse.restart()

    assert sorted(os.listdir(root)) == sorted(p for i, p in enumerate(put["paths"]) if i != 3)
    for i, (name, digest) in enumerate(zip(put["paths"], put["sha256"])):
        if i != 3:
            assert file_sha256(root / name) == digest
    lm.call("ld_close")


@pytest.mark.parametrize("tmp_dir", [None, "tmp"], ids=["tmp-suffix", "relative-tmp-dir"])
def test_fs_connector_put_remount_get_in_new_process(warehouse, engine, tmp_dir):
    """FSConnector.put (metadata + data to a temporary name, then replace: in place, or from a tmp
    subdirectory into the base path), remount, a new connector in a new process: exists_sync, get byte for
    byte, list; remove_sync."""
    ns = warehouse.namespace("lmcache")
    root = ns / "fs"
    writer = engine(*LMCACHE)
    put = writer.call("fs_put", root=os.fspath(root), seed=61, n=6, tmp_dir=tmp_dir)
    writer.close()
    expected_names = sorted(put["paths"] + ([tmp_dir] if tmp_dir else []))
    assert put["names"] == expected_names, "no temporary files may remain"
    if tmp_dir:
        assert put["tmp_names"] == []

    warehouse.restart()

    reader = engine(*LMCACHE)
    got = reader.call("fs_get", root=os.fspath(root), seed=61, n=6, tmp_dir=tmp_dir)
    assert got["exists"] == [True] * 6 and got["mismatches"] == {} and got["missing_is_none"]
    assert got["listed"] == sorted(p[: -len(".data")] for p in put["paths"])
    assert reader.call("fs_remove", root=os.fspath(root), seed=61, i=0) == {"removed": True, "exists": False}
    reader.close()

    warehouse.restart()

    assert sorted(os.listdir(root)) == sorted(expected_names[1:] if not tmp_dir else
                                              [n for n in expected_names if n != put["paths"][0]])


def test_gds_layout_sidecars_and_scan_after_remount(warehouse, engine):
    """The GDS layout ROOT/<h[:2]>/<h[2:4]>/<key>.kvcache.safetensors (+ .metadata sidecar), both written
    to a temporary name and renamed; remount; LMCache's start-up scan in a new process finds every chunk from
    the sidecars and the data reads back byte for byte. LMCache's own GPU writer reopens its closed
    header-only temporary file O_RDWR, which a committed (write-once) block refuses."""
    ns = warehouse.namespace("lmcache")
    root = ns / "gds"
    os.mkdir(root)
    writer = engine(*LMCACHE)
    stored = writer.call("gds_store", root=os.fspath(root), seed=71, n=6)
    writer.close()
    assert stored["reopen_rdwr"] in (errno.errorcode[errno.EACCES], errno.errorcode[errno.EPERM])
    for rel in stored["paths"]:
        l1, l2, name = rel.split("/")
        assert len(l1) == 2 and len(l2) == 2 and name.endswith(".kvcache.safetensors"), rel
    assert stored["tree"] == sorted(stored["paths"] + [p + ".metadata" for p in stored["paths"]]), \
        "only data files and sidecars, no temporary names"

    warehouse.restart()

    for rel, digest in zip(stored["paths"], stored["sha256"]):
        assert file_sha256(root / rel) == digest
    reader = engine(*LMCACHE)
    scanned = reader.call("gds_scan_and_load", root=os.fspath(root), seed=71, n=6)
    assert scanned["scanned"] == 6 and scanned["mismatches"] == {}, scanned
