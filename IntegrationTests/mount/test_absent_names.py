"""Absent names: the kernel remembers them (negative entries), so an engine's `exists` of a block nobody stored
costs no round trip to the daemon, and a block written afterwards, by any process, is visible at once
(docs/fuse.md "Absent names")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from twfs_util import Prober, block_hash, canonical, pattern, read_block, write_block

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def other():
    """Another process to look through; started before the test opens anything on the mount."""
    with Prober() as p:
        yield p


def lookups(warehouse) -> int:
    return warehouse.status()["operations"]["counts"].get("lookup", 0)


def test_exists_of_an_absent_block_is_answered_by_the_kernel_after_the_first_time(warehouse):
    ns = warehouse.namespace("ns")
    paths = [canonical(ns, block_hash("absent", i)) for i in range(20)]
    os.makedirs(os.path.dirname(paths[0]), exist_ok=True)
    for p in paths:
        assert not os.path.exists(p)
    before = lookups(warehouse)
    for _ in range(50):
        for p in paths:
            assert not os.path.exists(p)
    # 1,000 more exists() calls; the fan-out directories and the status file itself need a few.
    assert lookups(warehouse) - before < 50


def test_a_block_written_after_exists_said_no_is_visible_at_once_to_every_process(warehouse, other):
    ns = warehouse.namespace("ns")
    path = canonical(ns, block_hash("later"))
    assert other.probe(path) == {"stat": "ENOENT", "open": "ENOENT"}
    assert not os.path.exists(path)
    data = pattern("later", 300_000)
    write_block(path, data)
    assert other.probe(path) == {"stat": "ok", "open": "ok"}
    assert read_block(path) == data


def test_a_block_another_process_writes_after_exists_said_no_is_visible_at_once(warehouse):
    ns = warehouse.namespace("ns")
    path = canonical(ns, block_hash("by-child"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert not os.path.exists(path)
    subprocess.run([sys.executable, "-c", f"open({path!r}, 'wb').write(b'x' * 5000)"], check=True, timeout=30)
    assert os.path.exists(path)
    assert read_block(path) == b"x" * 5000


def test_a_name_being_written_is_not_remembered_absent(warehouse, other):
    ns = warehouse.namespace("ns")
    path = canonical(ns, block_hash("in-progress"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"y" * 10000)
        for _ in range(3):
            assert other.probe(path)["stat"] == "ENOENT"   # not committed: others do not see it
        assert os.fstat(fd).st_size == 10000                # the writer does
    finally:
        os.close(fd)
    assert other.probe(path) == {"stat": "ok", "open": "ok"}


def test_a_renamed_block_leaves_its_old_name_absent_and_takes_the_new_one(warehouse, other):
    ns = warehouse.namespace("ns")
    old, new = os.path.join(ns, "old.bin"), os.path.join(ns, "new.bin")
    assert not os.path.exists(new) and other.probe(new)["stat"] == "ENOENT"
    write_block(old, b"z" * 7000)
    os.rename(old, new)
    assert other.probe(new) == {"stat": "ok", "open": "ok"}
    assert other.probe(old)["stat"] == "ENOENT"
    write_block(old, b"w" * 10)                             # the old name is free again
    assert other.probe(old) == {"stat": "ok", "open": "ok"}
