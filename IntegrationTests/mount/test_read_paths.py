"""read, pread, mmap, sendfile, numpy.memmap and safetensors on committed blocks (docs/design.md "Block file
semantics": "read, pread, mmap (numpy.memmap, safetensors) and sendfile of committed blocks work")."""

import mmap
import os

import numpy as np
import pytest

from twfs_util import block_hash, canonical, first_difference, in_threads, pattern, read_block, write_block

pytestmark = pytest.mark.timeout(60)

SIZE = 3 * (1 << 20) + 4321   # not a multiple of the page size


@pytest.fixture
def block(ns):
    path = canonical(ns, block_hash("read-paths"))
    data = pattern(path, SIZE)
    write_block(path, data)
    return path, data


@pytest.mark.parametrize("bufsize", [1, 4095, 65536, 1 << 20, 8 << 20])
def test_sequential_read_with_various_buffer_sizes(block, bufsize):
    path, data = block
    if bufsize == 1:
        with open(path, "rb", buffering=0) as f:
            head = b"".join(f.read(1) for _ in range(5000))
        assert head == data[:5000]
        return
    with open(path, "rb", buffering=0) as f:
        parts = []
        while chunk := f.read(bufsize):
            parts.append(chunk)
    got = b"".join(parts)
    assert got == data, first_difference(got, data)


def test_pread_at_odd_offsets(block):
    path, data = block
    fd = os.open(path, os.O_RDONLY)
    try:
        for off, n in [(0, 1), (1, 4095), (4095, 2), (4097, 65537), (65535, 131073), (999_999, 1_000_003),
                       (SIZE - 1, 1), (SIZE - 3, 10), (SIZE, 10), (SIZE + 4096, 1), (123, SIZE)]:
            got = os.pread(fd, n, off)
            assert got == data[off:off + n], f"pread({n}, {off}): " + first_difference(got, data[off:off + n])
    finally:
        os.close(fd)


def test_concurrent_preads_on_one_fd(block):
    import random
    path, data = block
    fd = os.open(path, os.O_RDONLY)

    def worker(seed):
        rnd = random.Random(seed)
        wrong = []
        for _ in range(200):
            off = rnd.randrange(0, SIZE)
            n = rnd.randrange(1, 300000)
            if os.pread(fd, n, off) != data[off:off + n]:
                wrong.append((off, n))
        return wrong

    errors = in_threads(worker, 8)
    os.close(fd)
    assert not errors, errors[:5]


def test_mmap_of_committed_block(block):
    path, data = block
    with open(path, "rb") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            assert len(m) == len(data)
            assert m[:4096] == data[:4096]
            assert m[SIZE - 5000:] == data[SIZE - 5000:]
            assert m[12345:12345 + 70000] == data[12345:12345 + 70000]
            assert m[:] == data


def test_mmap_at_page_aligned_offset(block):
    path, data = block
    with open(path, "rb") as f:
        with mmap.mmap(f.fileno(), 1 << 20, access=mmap.ACCESS_READ, offset=1 << 20) as m:
            assert m[:] == data[1 << 20:2 << 20]


def test_sendfile_to_a_regular_file(block, tmp_path):
    path, data = block
    out_path = tmp_path / "copy.bin"
    src = os.open(path, os.O_RDONLY)
    dst = os.open(out_path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        off = 0
        while off < SIZE:
            n = os.sendfile(dst, src, off, min(1 << 20, SIZE - off))
            assert n > 0, f"sendfile returned 0 at {off}"
            off += n
        # and one piece from an odd offset
        tail = os.sendfile(dst, src, 7, 100)
        assert tail == 100
    finally:
        os.close(src)
        os.close(dst)
    got = out_path.read_bytes()
    assert got == data + data[7:107], first_difference(got, data + data[7:107])


def test_numpy_memmap_of_committed_block(block):
    path, data = block
    m = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        assert m.shape == (SIZE,)
        assert np.array_equal(m, np.frombuffer(data, dtype=np.uint8))
        # a typed view at an offset, as a KV-cache loader reads a layer
        f16 = np.memmap(path, dtype=np.float16, mode="r", offset=4096, shape=(1000, 64))
        assert f16.tobytes() == data[4096:4096 + 1000 * 64 * 2]
        del f16
    finally:
        del m


def test_numpy_fromfile_and_tofile_roundtrip(ns):
    arr = np.arange(1 << 18, dtype=np.float32).reshape(512, 512) * 0.5
    tmp = os.path.join(ns, "layer.npy.tmp")
    final = os.path.join(ns, "layer.npy")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, final)
    back = np.load(final, mmap_mode="r")
    assert np.array_equal(back, arr)
    assert np.array_equal(np.load(final), arr)


def test_safetensors_saved_through_the_mount_loads_back(ns):
    st_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors is pip-installed by CI")
    from safetensors import safe_open

    rng = np.random.default_rng(7)
    tensors = {
        "k": rng.standard_normal((4, 16, 128, 64)).astype(np.float16),
        "v": rng.standard_normal((4, 16, 128, 64)).astype(np.float16),
        "positions": np.arange(512, dtype=np.int64),
    }
    final = canonical(ns, block_hash("safetensors-block"))
    tmp = os.path.join(ns, f".tmp-{os.getpid()}.safetensors")
    st_numpy.save_file(tensors, tmp, metadata={"tokens": "512"})
    os.replace(tmp, final)
    assert not os.path.exists(tmp)

    loaded = st_numpy.load_file(final)
    assert set(loaded) == set(tensors)
    for name, arr in tensors.items():
        assert loaded[name].dtype == arr.dtype
        assert np.array_equal(loaded[name], arr), name

    with safe_open(final, framework="np") as f:
        assert f.metadata() == {"tokens": "512"}
        assert np.array_equal(f.get_tensor("v"), tensors["v"])
        assert np.array_equal(f.get_slice("k")[1:3], tensors["k"][1:3])


def test_read_of_block_after_many_opens_is_stable(block):
    path, data = block
    for _ in range(20):
        assert read_block(path, chunk=1 << 18) == data
