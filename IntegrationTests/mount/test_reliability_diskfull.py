"""Disk full (issue 7): a store on a small tmpfs (`mount -t tmpfs -o size=...`).

Two limits can run out: the configured `--capacity` (the daemon evicts whole sealed segments, and fails
with ENOSPC only when eviction cannot make room: docs/format.md "Space"), and the filesystem itself
(capacity set above what the disk holds, or the disk shared with other files). In both, a failed write
leaves no block visible, reads of what is stored keep working, the daemon keeps running, and writes work
again once space returns. Each test lazily unmounts its tmpfs, pass or fail.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from twfs_util import block_hash, canonical, errname, pattern, read_block, run_twctl, write_block

MiB = 1 << 20
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def tmpfs_warehouse(warehouse_factory):
    """make(size, *extra, capacity) -> Warehouse whose store is a fresh tmpfs of `size` (e.g. "40M")."""
    mounted = []

    def make(size: str, *extra: str, capacity: str) -> object:
        wh = warehouse_factory("--dram", "0", *extra, capacity=capacity, sync="always", start=False)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", os.fspath(wh.store)],
                       check=True, timeout=30)
        mounted.append(wh.store)
        wh.start()
        return wh

    yield make
    # Runs before warehouse_factory's teardown kills the daemon: a lazy unmount detaches the tmpfs now
    # and frees it once the daemon's descriptors close.
    for store in mounted:
        subprocess.run(["umount", "-l", os.fspath(store)], capture_output=True, timeout=30)


def _write(path: str, size: int, tag: str) -> int | None:
    """Write a block of `size` bytes; return None, or the errno of the open/write/close that failed."""
    try:
        write_block(path, pattern(tag, size))
    except OSError as e:
        return e.errno
    return None


def _fill_disk(directory) -> None:
    """Fill the filesystem of `directory` with a ballast file until ENOSPC."""
    with open(os.path.join(directory, "ballast"), "wb") as f:
        chunk = b"\xba" * MiB
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    # The final flush of a partial buffer can fail the same way.


def _check_readable(ns, names: list[str], size: int) -> dict:
    """Every name reads back exactly or is gone (evicted): never wrong bytes. Returns counts."""
    seen = {"ok": 0, "ENOENT": 0}
    for h in names:
        try:
            got = read_block(canonical(ns, h))
        except OSError as e:
            assert e.errno == errno.ENOENT, f"{h}: {errname(e.errno)}"
            seen["ENOENT"] += 1
            continue
        assert got == pattern(h, size), f"{h}: wrong bytes"
        seen["ok"] += 1
    return seen


def test_capacity_full_evicts_then_enospc_only_when_nothing_can_be_evicted(tmpfs_warehouse):
    wh = tmpfs_warehouse("256M", "--segment-size", "4M", "--max-block", "128M", capacity="64M")  # 64M: the least
    ns = wh.namespace("cap")
    names = [block_hash("cap", i) for i in range(150)]     # 150 MiB through a 64 MiB capacity
    for h in names:
        got = _write(canonical(ns, h), MiB, h)
        assert got is None, f"write of {h} under --capacity with evictable segments: {errname(got)}"
    st = wh.status()
    assert st["evicted_segments"] > 0, st
    assert st["used_bytes"] <= st["capacity_bytes"], st
    seen = _check_readable(ns, names, MiB)
    assert seen["ENOENT"] > 0 and seen["ok"] >= 8, seen
    for h in names[-4:]:   # the newest survive
        assert read_block(canonical(ns, h)) == pattern(h, MiB)

    # A block larger than the whole capacity: eviction cannot make room.
    big = block_hash("cap", "too-big")
    got = _write(canonical(ns, big), 100 * MiB, big)
    assert got == errno.ENOSPC, f"a 100 MiB block under a 64 MiB capacity: {errname(got)}"
    assert not os.path.exists(canonical(ns, big)), "a block that failed with ENOSPC is visible"
    assert wh.alive()
    _check_readable(ns, names, MiB)        # whatever is still stored reads back exactly
    # Space for ordinary blocks is there again at once.
    after = [block_hash("cap", "after", i) for i in range(20)]
    for h in after:
        got = _write(canonical(ns, h), MiB, h)
        assert got is None, f"write after the ENOSPC: {errname(got)}"
    assert _check_readable(ns, after[-8:], MiB)["ok"] == 8


def test_block_larger_than_capacity_fails_without_evicting_the_cache(tmpfs_warehouse):
    # Such a block can never fit: the daemon should refuse it (ENOSPC) up front, not empty the whole
    # cache first and then refuse it anyway.
    wh = tmpfs_warehouse("256M", "--segment-size", "4M", "--max-block", "128M", capacity="64M")
    ns = wh.namespace("keep")
    names = [block_hash("keep", i) for i in range(32)]     # half the capacity
    for h in names:
        assert _write(canonical(ns, h), MiB, h) is None
    big = block_hash("keep", "too-big")
    got = _write(canonical(ns, big), 100 * MiB, big)
    assert got == errno.ENOSPC, errname(got)
    seen = _check_readable(ns, names, MiB)
    assert seen["ENOENT"] == 0, f"a write that could never fit evicted {seen['ENOENT']} of {len(names)} blocks"


def test_full_disk_gives_enospc_keeps_reads_and_writes_again_when_space_returns(tmpfs_warehouse):
    # The namespace is pinned, so eviction cannot make room from its blocks: the daemon's own cache
    # would otherwise be evicted to make room, as the next test wants (a roll used to fail here only
    # because it created the next segment's file while the evicted ones were not yet deleted).
    wh = tmpfs_warehouse("48M", "--segment-size", "2M", capacity="1G")
    r = run_twctl("ns", "create", os.fspath(wh.mount), "disk", "--pin")
    assert r.returncode == 0, r.stdout + r.stderr
    ns = wh.mount / "disk"
    stored = [block_hash("disk", i) for i in range(8)]
    for h in stored:
        assert _write(canonical(ns, h), MiB, h) is None
    _fill_disk(wh.store)       # the disk fills up with something that is not ours

    failed_with = None
    extra = []
    for i in range(40):        # eviction (if any) runs out of segments well before 40 MiB
        h = block_hash("disk", "more", i)
        got = _write(canonical(ns, h), MiB, h)
        if got is not None:
            failed_with = got
            assert not os.path.exists(canonical(ns, h)), "a block whose write failed is visible"
            break
        extra.append(h)
    assert failed_with == errno.ENOSPC, f"a write on a full disk: {errname(failed_with)}"
    assert wh.alive()
    os.statvfs(wh.mount)
    seen = _check_readable(ns, stored + extra, MiB)
    assert seen["ok"] > 0, seen
    # While the disk stays full a write fails cleanly with ENOSPC, or (when the failed record's hole
    # and the last evictions freed enough) succeeds and reads back whole: never anything else.
    h = block_hash("disk", "still-full")
    got = _write(canonical(ns, h), MiB, h)
    assert got in (None, errno.ENOSPC), errname(got)
    if got is None:
        assert read_block(canonical(ns, h)) == pattern(h, MiB)
    else:
        assert not os.path.exists(canonical(ns, h))

    os.unlink(os.path.join(wh.store, "ballast"))     # space returns
    back = [block_hash("disk", "back", i) for i in range(8)]
    for h in back:
        got = _write(canonical(ns, h), MiB, h)
        assert got is None, f"write after space returned: {errname(got)}"
    for h in back:
        assert read_block(canonical(ns, h)) == pattern(h, MiB)
    wh.restart()
    assert _check_readable(ns, back, MiB)["ok"] == len(back)
    _check_readable(ns, stored + extra, MiB)


def test_full_disk_with_evictable_segments_evicts_instead_of_failing(tmpfs_warehouse):
    # --capacity above what the disk holds (or the disk shared with other files): the daemon holds 30
    # sealed, evictable segments of cache when the disk fills; "No space after eviction: ENOSPC"
    # (docs/design.md) means it evicts before it refuses a write.
    wh = tmpfs_warehouse("40M", "--segment-size", "2M", capacity="1G")
    ns = wh.namespace("evict")
    names = [block_hash("evict", i) for i in range(80)]      # 80 MiB through a 40 MiB disk
    for i, h in enumerate(names):
        got = _write(canonical(ns, h), MiB, h)
        assert got is None, (f"write {i} ({i} MiB stored) on a full disk failed with {errname(got)} "
                             f"while it held {wh.status()['segments']} segments, all but the active one evictable")
    for h in names[-4:]:
        assert read_block(canonical(ns, h)) == pattern(h, MiB)


def test_write_that_failed_for_lack_of_space_leaves_no_damage_for_verify(tmpfs_warehouse):
    # docs/format.md: a write that failed for lack of space leaves a hole (zero pages), which recovery
    # and `twctl verify` skip: an ENOSPC is not corruption, and verify must not report it as such.
    # One large segment holds everything, so when another file fills the disk nothing can be evicted
    # and the write fails halfway through its record.
    wh = tmpfs_warehouse("24M", "--segment-size", "64M", capacity="1G")
    ns = wh.namespace("hole")
    for i in range(4):
        h = block_hash("hole", i)
        assert _write(canonical(ns, h), MiB, h) is None
    _fill_disk(wh.store)
    h = block_hash("hole", "full")
    failed = _write(canonical(ns, h), MiB, h)
    assert failed == errno.ENOSPC, errname(failed)
    assert not os.path.exists(canonical(ns, h))
    os.unlink(os.path.join(wh.store, "ballast"))     # space returns
    h = block_hash("hole", "after")
    assert _write(canonical(ns, h), MiB, h) is None
    assert read_block(canonical(ns, h)) == pattern(h, MiB)
    assert wh.stop() == 0
    r = run_twctl("verify", "--store", os.fspath(wh.store))
    assert r.returncode == 0, f"twctl verify after an ENOSPC (no corruption happened):\n{r.stdout}{r.stderr}"
