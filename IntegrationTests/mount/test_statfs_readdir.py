"""statfs reports the store's capacity and free space (df works); readdir lists namespaces and blocks,
hides .tw, and streams large directories; writing past capacity evicts or fails with ENOSPC but never
corrupts (docs/design.md "Block file semantics", "BlockStore")."""

import errno
import os
import subprocess
import threading

import pytest

from twfs_util import (block_hash, canonical, errname, first_difference, pattern, read_block, wait_until,
                       write_block)

MiB = 1 << 20


def _total_and_free(mount) -> tuple[int, int, int]:
    st = os.statvfs(mount)
    frsize = st.f_frsize or st.f_bsize
    return st.f_blocks * frsize, st.f_bfree * frsize, st.f_bavail * frsize


# ---------------------------------------------------------------------------------------------- statfs

@pytest.mark.timeout(60)
def test_statvfs_reports_configured_capacity(warehouse):
    total, free, avail = _total_and_free(warehouse.mount)
    cap = 2 << 30
    assert abs(total - cap) <= cap // 10, f"total {total} is not near --capacity 2G"
    assert 0 < avail <= free <= total


@pytest.mark.timeout(60)
def test_statvfs_capacity_follows_the_option(warehouse_factory):
    wh = warehouse_factory(capacity="20G")
    total, _, _ = _total_and_free(wh.mount)
    cap = 20 << 30
    assert abs(total - cap) <= cap // 10, f"total {total} is not near --capacity 20G"


@pytest.mark.timeout(120)
def test_free_space_goes_down_after_writes(warehouse):
    ns = warehouse.namespace("ns")
    _, free_before, avail_before = _total_and_free(warehouse.mount)
    written = 0
    for i in range(24):
        write_block(canonical(ns, block_hash("fill", i)), os.urandom(4 * MiB))
        written += 4 * MiB

    def dropped():
        _, free, avail = _total_and_free(warehouse.mount)
        return free_before - free >= written // 2 and avail_before - avail >= written // 2

    assert wait_until(dropped, timeout=10), (
        f"free space did not go down by half of {written} bytes written: before {free_before}, "
        f"after {_total_and_free(warehouse.mount)[1]}")
    st = warehouse.status()
    assert st["used_bytes"] >= written // 2, st


@pytest.mark.timeout(60)
def test_df_on_the_mount_succeeds(warehouse):
    r = subprocess.run(["df", "-B1", os.fspath(warehouse.mount)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert os.fspath(warehouse.mount) in r.stdout, r.stdout
    r = subprocess.run(["df", "-h"], capture_output=True, text=True, timeout=30)
    assert os.fspath(warehouse.mount) in r.stdout, r.stdout


# --------------------------------------------------------------------------------------------- readdir

@pytest.mark.timeout(60)
def test_root_lists_namespaces_but_not_control_area(warehouse):
    names = {"model-a", "model-b@tp2", "c"}
    for n in names:
        warehouse.namespace(n)
    listed = os.listdir(warehouse.mount)
    assert names <= set(listed), listed
    assert ".tw" not in listed
    assert len(listed) == len(set(listed)), "duplicate entries"
    assert os.path.isdir(warehouse.mount / ".tw")   # hidden, not absent
    with os.scandir(warehouse.mount) as it:
        kinds = {e.name: e.is_dir() for e in it}
    assert all(kinds[n] for n in names), kinds


@pytest.mark.timeout(60)
def test_fan_out_directory_lists_exactly_its_canonical_blocks(ns):
    in_ab, in_cd = set(), set()
    i = 0
    while len(in_ab) < 40 or len(in_cd) < 10:
        h = block_hash("listing", i)
        i += 1
        h = ("ab" if len(in_ab) < 40 else "cd") + h[2:]
        (in_ab if h.startswith("ab") else in_cd).add(h)
        write_block(canonical(ns, h), pattern(h, 1000 + i))
    assert set(os.listdir(ns / "ab")) == in_ab
    assert set(os.listdir(ns / "cd")) == in_cd
    assert os.listdir(ns / "ef") == []
    with os.scandir(ns / "ab") as it:
        for e in it:
            assert e.is_file()
            assert e.stat().st_size > 1000


@pytest.mark.timeout(60)
def test_namespace_lists_compatibility_blocks(ns):
    names = {f"key@model@{i}.pt" for i in range(30)} | {"with space", "ünï"}
    for n in names:
        write_block(os.path.join(ns, n), n.encode())
    listed = os.listdir(ns)
    assert names <= set(listed)
    assert len(listed) == len(set(listed)), "duplicate entries"
    os.unlink(os.path.join(ns, "with space"))
    assert "with space" not in os.listdir(ns)


@pytest.mark.timeout(600)
def test_namespace_with_20k_blocks_lists_completely(warehouse_factory):
    wh = warehouse_factory(sync="none")
    ns = wh.namespace("many")
    count = 20000
    names = [f"blk-{i:06d}@m" for i in range(count)]
    errors = []

    def writer(part):
        try:
            for n in part:
                write_block(os.path.join(ns, n), n.encode() * 2)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(names[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(500)
    assert not errors, errors[:3]

    listed = os.listdir(ns)
    ours = [n for n in listed if n.startswith("blk-")]
    assert len(ours) == len(set(ours)), f"{len(ours) - len(set(ours))} duplicate entries"
    missing = set(names) - set(ours)
    assert not missing, f"{len(missing)} of {count} blocks missing from readdir, e.g. {sorted(missing)[:5]}"
    # A second, interleaved pass with scandir (separate directory handles) gives the same set.
    with os.scandir(ns) as it1, os.scandir(ns) as it2:
        a = {e.name for e in it1 if e.name.startswith("blk-")}
        b = {e.name for e in it2 if e.name.startswith("blk-")}
    assert a == b == set(names)
    assert read_block(os.path.join(ns, names[12345])) == names[12345].encode() * 2


# ------------------------------------------------------------------------------------ past capacity

@pytest.mark.timeout(600)
def test_writing_past_capacity_evicts_or_enospc_but_never_corrupts(warehouse_factory):
    wh = warehouse_factory(capacity="512M", sync="none")
    ns = wh.namespace("ns")
    written, refused = [], []
    for i in range(600):                    # ~1.2 GiB of 2 MiB blocks into 512 MiB
        path = canonical(ns, block_hash("overflow", i))
        try:
            write_block(path, pattern(path, 2 * MiB))
            written.append(path)
        except OSError as e:
            assert e.errno == errno.ENOSPC, f"block {i}: {errname(e.errno)}"
            refused.append(path)
    assert written, "no block could be written at all"
    st = wh.status()
    assert st["used_bytes"] <= st["capacity_bytes"] * 1.1, st
    present = 0
    for path in written:
        try:
            got = read_block(path)
        except FileNotFoundError:
            continue                        # evicted: normal for a cache
        present += 1
        want = pattern(path, 2 * MiB)
        assert got == want, f"{path}: {first_difference(got, want)}"
    for path in refused:
        assert not os.path.exists(path)
    assert present > 0, "every block was evicted"
    assert present * 2 * MiB <= 600 * MiB, f"{present} blocks of 2 MiB present in a 512 MiB warehouse"
    assert wh.alive()
    print(f"written {len(written)}, refused {len(refused)}, present {present}")
