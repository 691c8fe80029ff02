"""Crash durability (--sync always), clean shutdown on SIGTERM/SIGINT, refusal of a second daemon on the
same store, and recovery from a stale mount (docs/design.md "BlockStore", daemon contract)."""

import errno
import os
import signal
import stat
import subprocess
import threading
import time

import pytest

from twfs_util import (READY_TIMEOUT_S, assert_errno, block_hash, canonical, errname, first_difference,
                       lazy_unmount, mounts_at, pattern, read_block, size_for, wait_until, write_block)

KiB = 1 << 10


def _data(h: str) -> bytes:
    return pattern(h, size_for(h, 4 * KiB, 512 * KiB))


def _check_visible_blocks_are_whole(ns, known: set[str]) -> int:
    """Every canonical block listed under ns must be one we wrote, byte for byte. Returns the count."""
    seen = 0
    for i in range(256):
        d = os.path.join(ns, f"{i:02x}")
        for name in os.listdir(d):
            assert name in known, f"unknown block {name} appeared in {d}"
            got = read_block(os.path.join(d, name))
            want = _data(name)
            assert got == want, f"visible block {name} is not whole: {first_difference(got, want)}"
            seen += 1
    return seen


def _crash_while_writing(wh, ns, prefix: str, first: int):
    """Write `first` blocks, then SIGKILL the daemon while a thread keeps writing.

    Returns (names whose close returned, every name attempted)."""
    committed: list[str] = []
    attempted: set[str] = set()
    for i in range(first):
        h = block_hash(prefix, i)
        attempted.add(h)
        write_block(canonical(ns, h), _data(h))
        committed.append(h)

    lock = threading.Lock()
    failure: list[BaseException] = []

    def keep_writing():
        i = first
        while True:
            h = block_hash(prefix, i)
            i += 1
            with lock:
                attempted.add(h)
            try:
                write_block(canonical(ns, h), _data(h))
            except OSError as e:       # the daemon is gone: ENOTCONN, ECONNABORTED, EIO...
                failure.append(e)
                return
            with lock:
                committed.append(h)

    t = threading.Thread(target=keep_writing, daemon=True)
    t.start()
    with lock:
        n0 = len(committed)
    assert wait_until(lambda: len(committed) >= n0 + 20 or failure, timeout=60), "background writer stalled"
    assert not failure, f"background writer failed before the crash: {failure}"
    wh.kill(unmount=False)             # kill -9 mid-write
    t.join(30)
    assert not t.is_alive(), "writer thread hung after the daemon was killed"
    lazy_unmount(wh.mount)
    with lock:
        return list(committed), set(attempted)


@pytest.mark.timeout(300)
def test_sync_always_block_survives_sigkill_once_close_returned(warehouse_factory):
    wh = warehouse_factory(sync="always")
    ns = wh.namespace("durable")
    committed, attempted = _crash_while_writing(wh, ns, "durable", 200)
    assert len(committed) >= 220

    wh.start()
    lost, damaged = [], []
    for h in committed:
        try:
            got = read_block(canonical(ns, h))
        except FileNotFoundError:
            lost.append(h)
            continue
        if got != _data(h):
            damaged.append((h, first_difference(got, _data(h))))
    assert not lost, f"{len(lost)} of {len(committed)} blocks whose close() returned are gone, e.g. {lost[:3]}"
    assert not damaged, f"{len(damaged)} blocks damaged, e.g. {damaged[:3]}"
    # Blocks in flight at the crash are either absent or whole; nothing else appears.
    for h in attempted - set(committed):
        try:
            got = read_block(canonical(ns, h))
        except FileNotFoundError:
            continue
        assert got == _data(h), f"in-flight block {h} partially visible: {first_difference(got, _data(h))}"
    seen = _check_visible_blocks_are_whole(ns, attempted)
    assert seen >= len(committed)
    assert wh.status()["blocks"] >= len(committed)


@pytest.mark.timeout(300)
def test_sync_batch_crash_never_exposes_a_partial_block(warehouse_factory):
    # --sync batch promises less at close, but recovery must still never serve a torn block.
    wh = warehouse_factory(sync="batch")
    ns = wh.namespace("batch")
    committed, attempted = _crash_while_writing(wh, ns, "batch", 50)
    wh.start()
    seen = _check_visible_blocks_are_whole(ns, attempted)
    assert seen <= len(attempted)
    # The store stays writable after recovery.
    h = block_hash("after-recovery")
    write_block(canonical(ns, h), _data(h))
    assert read_block(canonical(ns, h)) == _data(h)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_clean_shutdown_exits_zero_unmounts_and_blocks_survive_restart(warehouse, sig):
    wh = warehouse
    ns = wh.namespace("keep", 0o750)
    os.chmod(ns, 0o750)
    names = [block_hash("keep", i) for i in range(50)]
    for h in names:
        write_block(canonical(ns, h), _data(h))
    compat = os.path.join(ns, "k@model@7.pt")
    write_block(compat, b"compat-bytes" * 1000)
    parent = block_hash("keep", 48).encode()
    fd = os.open(canonical(ns, block_hash("child")), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    os.write(fd, b"child" * 100)
    os.setxattr(fd, "user.tw.parent", parent)
    os.close(fd)
    gone = canonical(ns, names[-1])
    os.unlink(gone)
    mtime = os.stat(canonical(ns, names[0])).st_mtime

    rc = wh.stop(sig)
    assert rc == 0, f"exit code {rc} after {sig!r}"
    assert "fuse.twfs" not in [m["fstype"] for m in mounts_at(wh.mount)], "mount still present after clean exit"

    wh.start()
    for h in names[:-1]:
        got = read_block(canonical(ns, h))
        assert got == _data(h), f"{h}: {first_difference(got, _data(h))}"
    assert read_block(compat) == b"compat-bytes" * 1000
    assert os.getxattr(canonical(ns, block_hash("child")), "user.tw.parent") == parent
    assert_errno(errno.ENOENT, os.stat, gone)
    st = os.stat(ns)
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert abs(os.stat(canonical(ns, names[0])).st_mtime - mtime) < 1.0, "commit time changed across restart"
    assert "keep" in wh.status()["namespaces"]
    assert set(os.listdir(ns / names[0][:2])) >= {names[0]}


@pytest.mark.timeout(120)
def test_restart_with_another_sync_mode_serves_the_same_store(warehouse):
    ns = warehouse.namespace("modes")
    h = block_hash("modes")
    write_block(canonical(ns, h), _data(h))
    for mode in ("always", "none", "batch"):
        warehouse.restart(sync=mode)
        assert read_block(canonical(ns, h)) == _data(h)
        h2 = block_hash("modes", mode)
        write_block(canonical(ns, h2), _data(h2))
    warehouse.restart()
    for mode in ("always", "none", "batch"):
        h2 = block_hash("modes", mode)
        assert read_block(canonical(ns, h2)) == _data(h2)


@pytest.mark.timeout(120)
def test_second_daemon_on_the_same_store_is_refused(warehouse):
    wh = warehouse
    ns = wh.namespace("held")
    h = block_hash("held")
    write_block(canonical(ns, h), _data(h))
    other_mount = wh.base / "mnt2"
    other_mount.mkdir()
    wh.extra_mounts.append(other_mount)
    second = subprocess.Popen(wh.command(mount=other_mount), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True)
    wh.all_procs.append(second)
    try:
        out, err = second.communicate(timeout=READY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        second.kill()
        out, err = second.communicate()
        pytest.fail(f"second daemon on a held store kept running; mounted: {mounts_at(other_mount)}")
    assert second.returncode != 0, "second daemon on a held store exited 0"
    assert err.strip(), f"refusal without a message on stderr (stdout: {out!r})"
    assert not mounts_at(other_mount), "second daemon mounted anyway"
    # The first daemon is unaffected.
    assert wh.alive()
    assert read_block(canonical(ns, h)) == _data(h)
    h2 = block_hash("held", 2)
    write_block(canonical(ns, h2), _data(h2))
    assert read_block(canonical(ns, h2)) == _data(h2)


@pytest.mark.timeout(120)
def test_stale_mount_after_sigkill_is_detected_and_replaced(warehouse):
    wh = warehouse
    ns = wh.namespace("stale")
    names = [block_hash("stale", i) for i in range(20)]
    for h in names:
        write_block(canonical(ns, h), _data(h))
    wh.kill(unmount=False)
    assert mounts_at(wh.mount), "expected the dead daemon's mount to linger"
    got = None
    try:
        os.statvfs(wh.mount)       # statfs always reaches the daemon (stat may be answered from cache)
    except OSError as e:
        got = e.errno
    assert got == errno.ENOTCONN, f"statvfs of a dead mount: {errname(got)}"

    wh.start()   # same mount point, same store: must notice the stale mount and mount anyway
    assert os.path.isdir(ns)
    for h in names:
        assert read_block(canonical(ns, h)) == _data(h)
    h = block_hash("stale", "after")
    write_block(canonical(ns, h), _data(h))
    assert read_block(canonical(ns, h)) == _data(h)


@pytest.mark.timeout(120)
def test_batch_blocks_survive_sigkill_after_the_group_commit_window(warehouse):
    ns = warehouse.namespace("idle")
    names = [block_hash("idle", i) for i in range(30)]
    for h in names:
        write_block(canonical(ns, h), _data(h))
    time.sleep(0.5)   # give --sync batch its group commit window
    warehouse.restart(kill=True)
    for h in names:
        assert read_block(canonical(ns, h)) == _data(h)
