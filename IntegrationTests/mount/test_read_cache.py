"""Which reads go through the kernel's page cache (docs/fuse.md "Reading", `--read-cache`).

At the default (`reused`), a block not read lately is opened with direct I/O: each read is one copy from
the daemon into the reader's buffer, and nothing is left in the page cache. A block read again within
10 s is opened with keep_cache, so from then on the kernel serves it. Files opened with direct I/O can
still be mapped shared: the daemon asks the kernel for FUSE_DIRECT_IO_ALLOW_MMAP (Linux 6.6), which
libfuse 3.14 cannot ask for. Where the kernel does not grant it, every read uses the page cache.

What the tests observe is the number of READ requests that reached the daemon (`.tw/status`): a read
the page cache served sends none."""

import mmap
import os

import pytest

from twfs_util import block_hash, canonical, first_difference, pattern, read_block, wait_until, write_block

pytestmark = pytest.mark.timeout(60)

SIZE = (1 << 20) + 12345
GRANTED = "are read with direct I/O"
REFUSED = "every read goes through the page cache"


def reads_reaching_daemon(warehouse, body) -> int:
    before = warehouse.status()["operations"]["counts"]["read"]
    body()
    return warehouse.status()["operations"]["counts"]["read"] - before


def direct_reads_granted(warehouse) -> bool:
    log = warehouse.log_tail(1 << 20)
    assert GRANTED in log or REFUSED in log, "the daemon did not say how it reads:\n" + warehouse.log_tail()
    return GRANTED in log


def fresh_block(ns, tag: str) -> tuple[str, bytes]:
    path = canonical(ns, block_hash(tag))
    data = pattern(path, SIZE)
    write_block(path, data)
    return path, data


def check_read(path: str, data: bytes) -> None:
    got = read_block(path)
    assert got == data, first_difference(got, data)


def pushes(warehouse) -> int:
    return warehouse.status()["operations"]["counts"]["page_cache_push"]


def wait_for_push(warehouse, before: int) -> None:
    """The daemon puts a re-read block into the page cache after its reader closed it, on a thread of
    its own: wait for that before the next read."""
    assert wait_until(lambda: pushes(warehouse) > before, 10, 0.02), \
        f"the daemon did not put the re-read block into the page cache: {warehouse.status()['operations']['counts']}"


def test_a_block_read_once_leaves_the_page_cache_alone_and_a_reused_one_is_put_there(warehouse, ns):
    path, data = fresh_block(ns, "read-cache-reused")
    first = reads_reaching_daemon(warehouse, lambda: check_read(path, data))
    assert first > 0
    if not direct_reads_granted(warehouse):
        later = [reads_reaching_daemon(warehouse, lambda: check_read(path, data)) for _ in range(3)]
        assert later == [0, 0, 0], f"page cache only, yet later reads reached the daemon: {later}"
        return
    # Direct I/O left no pages: the second read reaches the daemon too, and being a re-read, its block is
    # then put into the page cache by the daemon, which serves the reads after it.
    before = pushes(warehouse)
    second = reads_reaching_daemon(warehouse, lambda: check_read(path, data))
    assert second > 0, "the first read left the block in the page cache: it was not opened with direct I/O"
    wait_for_push(warehouse, before)
    later = [reads_reaching_daemon(warehouse, lambda: check_read(path, data)) for _ in range(2)]
    assert later == [0, 0], f"a block read again was not served by the page cache: {first}, {second}, {later}"

    # The pages go (as under memory pressure): the next read through the page cache finds them gone and
    # fills them again; the one after it is direct (it reaches the daemon although the pages are back);
    # then the page cache serves the block again. The daemon pushed nothing: the refill put the pages back.
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    before = pushes(warehouse)
    again = [reads_reaching_daemon(warehouse, lambda: check_read(path, data)) for _ in range(4)]
    assert again[0] > 0 and again[1] > 0 and again[3] == 0, \
        f"after its pages went: expected a refill, one direct read, then the page cache: {again}"
    assert pushes(warehouse) == before, "a block whose pages a reader had just filled was pushed again"


def test_a_block_opened_with_direct_io_can_be_mapped_shared(warehouse, ns):
    path, data = fresh_block(ns, "read-cache-mmap")
    # Its first open since the commit: with direct I/O where the kernel grants mapping such files.
    with open(path, "rb") as f:
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
            got = m[:]
            assert got == data, first_difference(got, data)
            # A read through the same descriptor while mapped.
            assert os.pread(f.fileno(), 4096, SIZE - 4096) == data[-4096:]
    direct_reads_granted(warehouse)


def test_read_cache_always_keeps_every_block_in_the_page_cache(warehouse_factory):
    warehouse = warehouse_factory("--read-cache", "always")
    ns = warehouse.namespace()
    path, data = fresh_block(ns, "read-cache-always")
    assert reads_reaching_daemon(warehouse, lambda: check_read(path, data)) > 0
    assert reads_reaching_daemon(warehouse, lambda: check_read(path, data)) == 0, \
        "with --read-cache always, a block read once should be served by the page cache"
    assert GRANTED not in warehouse.log_tail(1 << 20)


def test_a_block_being_written_can_be_mapped_and_only_what_is_stored_before_close_commits(warehouse, ns):
    """Writers' descriptors use direct I/O too, so the flag also lets a writer map its block (numpy's
    memmap(mode="w+"), refused with ENODEV before). The block commits at the writer's last close: bytes
    stored through the map after it are not part of the block, and no reader sees them."""
    import ctypes
    import numpy as np

    path = canonical(ns, block_hash("read-cache-memmap"))
    m = np.memmap(path, dtype=np.uint8, mode="w+", shape=(SIZE,))
    m[:] = np.frombuffer(pattern(path, SIZE), dtype=np.uint8)
    m.flush()
    del m
    check_read(path, pattern(path, SIZE))

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    path = canonical(ns, block_hash("read-cache-after-close"))
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    os.ftruncate(fd, 8192)
    addr = libc.mmap(None, 8192, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), f"mmap: {os.strerror(ctypes.get_errno())}"
    ctypes.memmove(addr, b"hello", 5)
    os.close(fd)                       # the writer's only descriptor: the block commits here
    ctypes.memmove(addr + 5, b"world", 5)
    ctypes.memmove(addr + 4096, b"later", 5)
    libc.msync(addr, 8192, 4)          # MS_SYNC: the kernel sends the pages; the committed block ignores them
    libc.munmap(addr, 8192)
    want = b"hello" + bytes(8192 - 5)
    for _ in range(3):                 # a direct open, then re-reads through the page cache
        check_read(path, want)
