"""Block life cycle (docs/design.md "Block file semantics"): atomic commit at close, first write wins,
write-then-rename, unlink, parallel pwrite, and the maximum block size."""

import errno
import os
import signal
import subprocess
import sys
import threading

import pytest

from twfs_util import (Prober, assert_errno, block_hash, canonical, first_difference, in_threads, pattern, read_block,
                       sha, write_block)

pytestmark = pytest.mark.timeout(120)

CREATE = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
MiB = 1 << 20


def _new_block(ns, tag: str, size: int) -> tuple[str, bytes]:
    """The canonical path of block `tag` and the bytes a test writes to it."""
    return _path(ns, "canonical", tag), pattern(tag, size)


def _path(ns, kind: str, tag: str) -> str:
    if kind == "canonical":
        return canonical(ns, block_hash(tag))
    return os.path.join(ns, f"{tag}@model@0.pt")


@pytest.fixture
def other():
    """Another process to look through; started before the test opens anything on the mount."""
    with Prober() as p:
        yield p


# -------------------------------------------------------------------------------------- atomic commit

@pytest.mark.parametrize("kind", ["canonical", "compat"])
def test_block_is_enoent_to_other_processes_until_close_then_whole(ns, other, kind):
    path = _path(ns, kind, "atomic-" + kind)
    data = pattern(path, 3 * MiB)
    fd = os.open(path, CREATE, 0o644)
    try:
        os.write(fd, data[:MiB])
        seen = other.probe(path)
        assert seen == {"stat": "ENOENT", "open": "ENOENT"}, f"after 1 of 3 MiB written: {seen}"
        os.write(fd, data[MiB:])
        seen = other.probe(path)
        assert seen == {"stat": "ENOENT", "open": "ENOENT"}, f"after all bytes, before close: {seen}"
    finally:
        os.close(fd)
    assert other.read(path) == sha(data)


def test_writer_killed_mid_block_leaves_nothing_visible(warehouse, ns, other):
    path = _path(ns, "canonical", "dies")
    child = subprocess.Popen([sys.executable, "-c", r"""
import os, signal, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
os.write(fd, b"partial" * 100000)
sys.stdout.write("written\n"); sys.stdout.flush()
sys.stdin.readline()
os.kill(os.getpid(), signal.SIGKILL)
""", path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "written"
        child.stdin.write("die\n")
        child.stdin.flush()
        assert child.wait(timeout=20) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert other.probe(path) == {"stat": "ENOENT", "open": "ENOENT"}
    assert_errno(errno.ENOENT, os.stat, path)
    # The name is still free: a later writer commits it normally.
    data = pattern(path, 200000)
    write_block(path, data)
    assert read_block(path) == data
    assert warehouse.alive()


# ---------------------------------------------------------------------------------- first write wins

def test_o_excl_create_of_existing_block_is_eexist(ns):
    path = _path(ns, "canonical", "excl")
    original = os.urandom(100000)
    write_block(path, original, flags=os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert_errno(errno.EEXIST, os.open, path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    compat = os.path.join(ns, "excl.pt")
    write_block(compat, original)
    assert_errno(errno.EEXIST, os.open, compat, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    assert read_block(path) == original
    assert read_block(compat) == original


@pytest.mark.parametrize("new_size", [50000, 300000, 2 * MiB])
def test_open_wb_on_existing_block_is_accepted_and_writes_are_discarded(ns, other, new_size):
    path = _path(ns, "compat", f"wb-{new_size}")
    original = os.urandom(300000)
    write_block(path, original)
    replacement = b"\xee" * new_size
    with open(path, "wb") as f:   # O_CREAT|O_TRUNC|O_WRONLY, as torch.save does
        assert other.read(path) == sha(original), "O_TRUNC open of a committed block changed what readers see"
        f.write(replacement)
    got = read_block(path)
    assert got == original, first_difference(got, original)
    assert os.stat(path).st_size == len(original)
    assert other.read(path) == sha(original)


def test_discarded_overwrite_never_reaches_readers_page_cache(ns, other):
    # Blocks are immutable, so a daemon may let the kernel cache their pages; the bytes of a discarded
    # open(p, "wb") must not end up in those pages (held open, mapped, or opened afterwards).
    import mmap
    path = _path(ns, "canonical", "cached-pages")
    original = pattern(path, 2 * MiB)
    write_block(path, original)
    rfd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(rfd, 2 * MiB, 0) == original      # pull every page into the cache
        m = mmap.mmap(rfd, 0, access=mmap.ACCESS_READ)
        try:
            with open(path, "wb") as f:
                assert os.pread(rfd, 2 * MiB, 0) == original, "reader's open fd changed by an O_TRUNC open"
                assert m[:] == original, "reader's mapping changed by an O_TRUNC open"
                f.write(b"\xee" * (2 * MiB))
                f.flush()
                assert os.pread(rfd, 2 * MiB, 0) == original, "reader's open fd sees discarded bytes before close"
            assert os.pread(rfd, 2 * MiB, 0) == original, "reader's open fd sees the discarded bytes"
            assert m[:] == original, "reader's mapping sees the discarded bytes"
        finally:
            m.close()
    finally:
        os.close(rfd)
    got = read_block(path)
    assert got == original, first_difference(got, original)
    assert other.read(path) == sha(original)


def test_concurrent_discarded_overwrites_never_shorten_or_change_reads(ns):
    # open(p, "wb") on a committed block truncates nothing: readers running at the same time keep
    # seeing the whole original block (no short read from a kernel size of 0, no foreign bytes).
    import time
    path = _path(ns, "compat", "overwritten-while-read")
    original = pattern(path, 3 * MiB)
    write_block(path, original)
    stop = time.monotonic() + 3
    counts = {"overwrites": 0, "reads": 0}
    bad: list[str] = []

    def overwrite():
        while time.monotonic() < stop:
            with open(path, "wb") as f:
                f.write(b"\xff" * 1000)
            counts["overwrites"] += 1

    def read():
        while time.monotonic() < stop and len(bad) < 10:
            got = read_block(path)
            counts["reads"] += 1
            if got != original:
                bad.append(first_difference(got, original))

    threads = [threading.Thread(target=overwrite)] + [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not bad, f"{len(bad)}+ of {counts['reads']} reads wrong during {counts['overwrites']} overwrites: {bad[:3]}"
    assert read_block(path) == original


def test_second_writer_closing_first_commits_and_the_other_is_discarded(ns):
    path = _path(ns, "canonical", "two-writers-ordered")
    a = pattern("writer-a", MiB)
    b = pattern("writer-b", MiB + MiB // 2)
    fa = os.open(path, CREATE, 0o644)
    fb = os.open(path, CREATE, 0o644)
    try:
        for off in range(0, len(b), 256 * 1024):
            if off < len(a):
                os.pwrite(fa, a[off:off + 256 * 1024], off)
            os.pwrite(fb, b[off:off + 256 * 1024], off)
        os.close(fb)
        fb = -1
        got = read_block(path)
        assert got == b, "first to close must commit: " + first_difference(got, b)
    finally:
        if fb >= 0:
            os.close(fb)
        os.close(fa)
    got = read_block(path)
    assert got == b, "the later close must be discarded: " + first_difference(got, b)


def test_racing_writer_threads_commit_exactly_one_writers_bytes(ns):
    for round_ in range(12):
        path = _path(ns, "canonical", f"race-{round_}")
        payloads = [pattern(f"race-{round_}-{i}", MiB + i * 123457) for i in range(2)]
        barrier = threading.Barrier(2)
        errors, close_errors = [], []

        def writer(data):
            try:
                fd = os.open(path, CREATE, 0o644)
            except OSError as e:
                barrier.abort()
                errors.append(("open", e))
                return
            try:
                barrier.wait(timeout=10)
                for off in range(0, len(data), 128 * 1024):
                    os.pwrite(fd, data[off:off + 128 * 1024], off)
            except (OSError, threading.BrokenBarrierError) as e:
                errors.append(("write", e))
            try:
                os.close(fd)
            except OSError as e:    # the spec does not promise the loser's close succeeds
                close_errors.append(e)

        threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, f"round {round_}: {errors}"
        assert len(close_errors) < 2, f"round {round_}: both closes failed: {close_errors}"
        got = read_block(path)
        assert got in payloads, f"round {round_}: mixed block: " + \
            "; ".join(first_difference(got, p) for p in payloads)


RACE_WRITER = r"""
import os, sys, time
path, seed, size, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
sys.path.insert(0, sys.argv[5])
from twfs_util import pattern
data = pattern(seed, size)
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
while time.time() < start_at:
    pass
for off in range(0, size, 65536):
    os.pwrite(fd, data[off:off + 65536], off)
os.close(fd)
"""


def test_racing_writer_processes_commit_exactly_one_writers_bytes(ns):
    import time
    here = os.path.dirname(os.path.abspath(__file__))
    for round_ in range(4):
        path = _path(ns, "compat", f"proc-race-{round_}")
        seeds = [(f"proc-{round_}-{i}", 2 * MiB + i * 99991) for i in range(2)]
        start_at = f"{time.time() + 1.0:.3f}"
        procs = [subprocess.Popen([sys.executable, "-c", RACE_WRITER, path, seed, str(size), start_at, here],
                                  stderr=subprocess.PIPE, text=True) for seed, size in seeds]
        rcs = [p.wait(timeout=60) for p in procs]
        assert 0 in rcs, [p.stderr.read() for p in procs]
        got = read_block(path)
        expected = [pattern(seed, size) for seed, size in seeds]
        assert got in expected, f"round {round_}: mixed block: " + \
            "; ".join(first_difference(got, e) for e in expected)


# ----------------------------------------------------------------------------------- write-then-rename

@pytest.mark.parametrize("final_kind", ["canonical", "compat"])
def test_rename_of_temporary_name_commits_block_under_final_name(ns, other, final_kind):
    final = _path(ns, final_kind, "renamed-" + final_kind)
    tmp = os.path.join(ns, f".tmp-{os.getpid()}-{final_kind}")
    data = pattern(final, 1234567)
    write_block(tmp, data)
    os.replace(tmp, final)
    got = read_block(final)
    assert got == data, first_difference(got, data)
    assert_errno(errno.ENOENT, os.stat, tmp)
    assert os.stat(final).st_size == len(data)
    assert os.stat(final).st_mode & 0o777 == 0o444
    assert other.read(final) == sha(data)


def test_rename_while_still_open_commits_at_the_rename(ns, other):
    # What safetensors' save_file does: O_RDWR|O_CREAT|O_EXCL a temporary name in the target directory,
    # ftruncate to the final size, write, rename onto the final name, and only then close.
    final = os.path.join(ns, "layer-7.safetensors")
    tmp = os.path.join(ns, ".tmpAbC123")
    data = pattern(final, 777777)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, len(data))
        assert os.write(fd, data) == len(data)
        os.rename(tmp, final)
        assert other.read(final) == sha(data), "block not whole right after the rename that commits it"
    finally:
        os.close(fd)
    got = read_block(final)
    assert got == data, first_difference(got, data)
    assert_errno(errno.ENOENT, os.stat, tmp)
    assert other.probe(tmp) == {"stat": "ENOENT", "open": "ENOENT"}


def test_ftruncate_of_an_uncommitted_block_sets_its_size(ns):
    path = canonical(ns, block_hash("ftruncate"))
    fd = os.open(path, CREATE, 0o644)
    try:
        os.ftruncate(fd, 100000)
        os.pwrite(fd, b"tail", 100000 - 4)
        os.pwrite(fd, b"head", 0)
    finally:
        os.close(fd)
    want = b"head" + b"\0" * (100000 - 8) + b"tail"
    got = read_block(path)
    assert got == want, first_difference(got, want)


def test_rename_across_namespaces_is_exdev(warehouse):
    a = warehouse.namespace("model-a")
    b = warehouse.namespace("model-b")
    src = os.path.join(a, "block.tmp")
    write_block(src, b"cross" * 1000)
    h = block_hash("cross")
    assert_errno(errno.EXDEV, os.rename, src, canonical(b, h))
    assert_errno(errno.EXDEV, os.rename, src, os.path.join(b, "block.pt"))
    assert read_block(src) == b"cross" * 1000
    assert_errno(errno.ENOENT, os.stat, os.path.join(b, "block.pt"))


def test_rename_into_a_fan_out_directory_under_another_name_makes_a_plain_nested_file(ns):
    src = os.path.join(ns, "valid.tmp")
    write_block(src, b"v" * 100)
    os.rename(src, os.path.join(ns, "ab", "not-hex-at-all-xyz"))
    assert read_block(os.path.join(ns, "ab", "not-hex-at-all-xyz")) == b"v" * 100
    os.rename(os.path.join(ns, "ab", "not-hex-at-all-xyz"), os.path.join(ns, "00", "ab" + "0" * 30))
    assert read_block(os.path.join(ns, "00", "ab" + "0" * 30)) == b"v" * 100
    assert not os.path.exists(os.path.join(ns, "ab", "ab" + "0" * 30))     # not the canonical block
    assert_errno(errno.ENOENT, os.stat, src)


def test_rename_onto_an_existing_block_leaves_one_whole_block(ns):
    # The spec does not say whether rename replaces or keeps (first write wins); either whole block is fine.
    final = _path(ns, "canonical", "rename-onto-existing")
    old = pattern("old", 500000)
    new = pattern("new", 700000)
    write_block(final, old)
    tmp = os.path.join(ns, ".tmp-onto")
    write_block(tmp, new)
    try:
        os.replace(tmp, final)
    except OSError as e:
        assert e.errno in (errno.EEXIST, errno.EPERM, errno.EACCES), e
    got = read_block(final)
    assert got in (old, new), first_difference(got, old)


# ----------------------------------------------------------------------------------------------- unlink

@pytest.mark.parametrize("kind", ["canonical", "compat"])
def test_unlink_deletes_block_and_name_can_be_written_again(ns, other, kind):
    path = _path(ns, kind, "unlink-" + kind)
    write_block(path, pattern("first", 400000))
    os.unlink(path)
    assert_errno(errno.ENOENT, os.stat, path)
    assert_errno(errno.ENOENT, os.open, path, os.O_RDONLY)
    assert other.probe(path) == {"stat": "ENOENT", "open": "ENOENT"}
    assert os.path.basename(path) not in os.listdir(os.path.dirname(path))
    second = pattern("second", 300000)
    write_block(path, second)
    got = read_block(path)
    assert got == second, first_difference(got, second)
    assert other.read(path) == sha(second)


def test_unlink_of_missing_block_is_enoent(ns):
    assert_errno(errno.ENOENT, os.unlink, _path(ns, "canonical", "never-written"))
    assert_errno(errno.ENOENT, os.unlink, os.path.join(ns, "never.pt"))


# ------------------------------------------------------------------------------------- parallel pwrite

def test_parallel_pwrite_of_different_offsets_on_one_fd_gives_exact_bytes(ns):
    path = _path(ns, "canonical", "pwrite")
    chunk = 128 * 1024
    data = pattern(path, 8 * MiB + 12345)
    offsets = list(range(0, len(data), chunk))
    fd = os.open(path, CREATE, 0o644)

    def worker(i):
        # Each thread writes every 4th chunk, last first, so offsets arrive out of order.
        for off in reversed(offsets[i::4]):
            piece = data[off:off + chunk]
            assert os.pwrite(fd, piece, off) == len(piece)

    errors = in_threads(worker, 4)
    os.close(fd)
    assert not errors, errors
    got = read_block(path)
    assert got == data, first_difference(got, data)
    assert os.stat(path).st_size == len(data)


# --------------------------------------------------------------------------------------- maximum size

def _first_errno(path: str, write) -> int | None:
    """Creates `path`, calls write(fd) and closes; returns the errno of the first failure (write or close)."""
    fd = os.open(path, CREATE, 0o644)
    failed = None
    try:
        write(fd)
    except OSError as e:
        failed = e.errno
    try:
        os.close(fd)
    except OSError as e:
        failed = failed or e.errno
    return failed


def _write_expecting_efbig(path: str, total: int) -> int | None:
    """Write `total` bytes in 1 MiB pieces and close; return the errno of the first failure."""
    def write(fd):
        piece = b"\x5a" * MiB
        for off in range(0, total, MiB):
            os.write(fd, piece[:min(MiB, total - off)])
    return _first_errno(path, write)


def test_block_larger_than_max_block_is_efbig_and_not_committed(warehouse_factory):
    wh = warehouse_factory("--max-block", "4M")
    ns = wh.namespace("ns")
    path = canonical(ns, block_hash("too-big"))
    got = _write_expecting_efbig(path, 5 * MiB)
    assert got == errno.EFBIG, f"expected EFBIG from a write or close, got {errno.errorcode.get(got, got)}"
    assert_errno(errno.ENOENT, os.stat, path)
    # Exactly the maximum is allowed, and the daemon keeps serving.
    ok = canonical(ns, block_hash("max-size"))
    data = pattern(ok, 4 * MiB)
    write_block(ok, data)
    assert read_block(ok) == data


def test_pwrite_past_max_block_is_efbig(warehouse_factory):
    wh = warehouse_factory("--max-block", "4M")
    ns = wh.namespace("ns")
    path = os.path.join(ns, "sparse-too-big.pt")
    failed = _first_errno(path, lambda fd: os.pwrite(fd, b"x" * 4096, 5 * MiB))
    assert failed == errno.EFBIG, errno.errorcode.get(failed, failed)
    assert_errno(errno.ENOENT, os.stat, path)


def test_holes_in_a_sparse_block_read_as_zeros_even_after_the_staging_region_is_reused(ns):
    # A first block fills the staging region with non-zero bytes; the region is reused for the next.
    full = _path(ns, "canonical", "holes-first")
    write_block(full, b"\xab" * (3 * MiB))
    sparse = _path(ns, "canonical", "holes-second")
    fd = os.open(sparse, CREATE, 0o644)
    try:
        os.pwrite(fd, b"\x01" * 4096, MiB)           # bytes [1 MiB, 1 MiB + 4 KiB)
        os.pwrite(fd, b"\x02" * 100, 2 * MiB + 5)     # a second island
    finally:
        os.close(fd)
    got = read_block(sparse)
    want = bytearray(2 * MiB + 105)
    want[MiB:MiB + 4096] = b"\x01" * 4096
    want[2 * MiB + 5:2 * MiB + 105] = b"\x02" * 100
    assert got == bytes(want), first_difference(got, bytes(want))


def test_block_written_out_of_order_reads_back_exactly(ns):
    path, data = _new_block(ns, "out-of-order", 3 * MiB + 17)
    fd = os.open(path, CREATE, 0o644)
    try:
        for off in sorted(range(0, len(data), 256 * 1024), reverse=True):
            os.pwrite(fd, data[off:off + 256 * 1024], off)
    finally:
        os.close(fd)
    assert read_block(path) == data


def test_a_forked_child_closing_the_descriptor_neither_commits_nor_drops_the_block(ns, other):
    path, data = _new_block(ns, "forked-child", 3 * MiB)
    fd = os.open(path, CREATE, 0o644)
    os.write(fd, data[:MiB])
    pid = os.fork()
    if pid == 0:           # the child closes its copy of the descriptor and exits (as exec or exit would)
        os.close(fd)
        os._exit(0)
    os.waitpid(pid, 0)
    assert other.probe(path)["open"] == "ENOENT", "the child's close committed a partial block"
    os.write(fd, data[MiB:])
    os.close(fd)
    assert read_block(path) == data


def test_with_two_descriptors_the_last_close_commits_before_it_returns(ns, other):
    path, data = _new_block(ns, "two-descriptors", 2 * MiB)
    first = os.open(path, CREATE, 0o644)
    second = os.open(path, os.O_WRONLY)
    os.pwrite(first, data[:MiB], 0)
    os.pwrite(second, data[MiB:], MiB)
    os.close(first)
    assert other.probe(path)["open"] == "ENOENT", "committed while a descriptor was still open"
    os.close(second)
    assert other.read(path) == sha(data), "the block was not whole and visible when the last close returned"


def test_shell_redirection_and_dd_write_whole_blocks(ns, tmp_path):
    # `cmd > file` and dd open the file, dup2 it onto stdout and close the original before writing:
    # that first close must not commit an empty block.
    src = tmp_path / "src"
    data = pattern("redirect", 1_000_003)
    src.write_bytes(data)
    by_shell = _path(ns, "canonical", "shell-redirect")
    subprocess.run(["bash", "-c", f"cat '{src}' > '{by_shell}'"], check=True, timeout=60)
    assert read_block(by_shell) == data
    by_dd = _path(ns, "compat", "dd-output")
    subprocess.run(["dd", f"if={src}", f"of={by_dd}", "bs=4096", "status=none"], check=True, timeout=60)
    assert read_block(by_dd) == data
