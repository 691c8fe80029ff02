"""Driver: LMCache 0.5.6's file backends, their own code, on directories of a twfs mount.

- `LocalDiskBackend` (lmcache.v1.storage_backend.local_disk_backend): `submit_put_task` (its asyncio worker
  writes `<key>.pt` with open("wb"), or O_CREAT|O_WRONLY|O_DIRECT with use_odirect), `get_blocking`,
  `batched_get_blocking` (its read thread pool, readinto), `remove` (os.remove). Its index lives in the
  process, so the remount happens while the same backend object stays alive (ld_* ops keep it here).
- `FSConnector` (lmcache.v1.storage_backend.connector.fs_connector): `put` (aiofiles to `<key>.tmp` or to
  a relative tmp directory, then aiofiles.os.replace), `exists_sync`, `get`, `list`, `remove_sync`; a new
  connector in a new process finds what an earlier one stored.
- The GDS backend's layout `ROOT/<hash[:2]>/<hash[2:4]>/<key>.kvcache.safetensors` with its 4 KiB safetensors
  header and the `<...>.metadata` sidecar, each written to a temporary name and renamed: the backend itself
  needs a GPU (cuFile or cudaMemcpy), so the data file is written with plain file calls, while the header
  (`pack_metadata`), the sidecar writer (`save_metadata`, aiofile), the path (`GdsBackend._key_to_path`) and
  the start-up scan that rebuilds the index from the sidecars (`GdsBackend._scan_metadata`, O_NOATIME reads,
  `unpack_metadata`) are LMCache's own functions.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import threading

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver_common import block_bytes, first_difference, serve, sha256  # noqa: E402

from lmcache.utils import CacheEngineKey  # noqa: E402
from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402
from lmcache.v1.memory_allocators.ad_hoc_memory_allocator import AdHocMemoryAllocator  # noqa: E402
from lmcache.v1.memory_management import MemoryFormat  # noqa: E402
from lmcache.v1.metadata import LMCacheMetadata  # noqa: E402
from lmcache.v1.storage_backend import gds_backend  # noqa: E402
from lmcache.v1.storage_backend.connector.fs_connector import FSConnector  # noqa: E402
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend  # noqa: E402
from lmcache.v1.storage_backend.local_disk_backend import LocalDiskBackend  # noqa: E402

MODEL = "tiny-llama"
CHUNK = 16
# (num_layer, 2, chunk_size, num_kv_head, head_size): one chunk of KV is 2*2*16*2*64 bf16 = 16 KiB.
KV_SHAPE = (2, 2, CHUNK, 2, 64)

_loop = asyncio.new_event_loop()
threading.Thread(target=_loop.run_forever, name="lmcache-test-loop", daemon=True).start()
_allocator = AdHocMemoryAllocator(device="cpu")
_state: dict = {}


def run(coro, timeout: float = 60):
    return asyncio.run_coroutine_threadsafe(coro, _loop).result(timeout)


def metadata() -> LMCacheMetadata:
    return LMCacheMetadata(model_name=MODEL, world_size=1, local_world_size=1, worker_id=0, local_worker_id=0,
                           kv_dtype=torch.bfloat16, kv_shape=KV_SHAPE, chunk_size=CHUNK)


def config(**kw) -> LMCacheEngineConfig:
    cfg = LMCacheEngineConfig(chunk_size=CHUNK, max_local_cpu_size=0.25, lmcache_instance_id="tw-test", **kw)
    cfg.validate()
    return cfg


def key(seed: int, i: int) -> CacheEngineKey:
    return CacheEngineKey(MODEL, 1, 0, (seed << 40) + 0x5151 * (i + 1), torch.bfloat16)


def chunk(seed: int, i: int):
    """A full KV chunk in a CPU MemoryObj whose bytes are block_bytes(seed, i)."""
    meta = metadata()
    obj = _allocator.allocate(meta.get_shapes(), meta.get_dtypes(), fmt=MemoryFormat.KV_2LTD)
    raw = block_bytes(seed, i, len(obj.byte_array))
    obj.tensor.view(torch.uint8).view(-1).copy_(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    return obj


def compare(obj, seed: int, i: int) -> str | None:
    if obj is None:
        return "None"
    got = bytes(obj.byte_array)
    want = block_bytes(seed, i, len(got))
    return None if got == want else first_difference(got, want)


# ------------------------------------------------------------------------------------ LocalDiskBackend

def ld_open(root: str, odirect: bool) -> dict:
    cfg = config(local_disk=root, max_local_disk_size=0.5, extra_config={"use_odirect": odirect})
    cpu = LocalCPUBackend(cfg, metadata=metadata(), memory_allocator=_allocator)
    backend = LocalDiskBackend(config=cfg, loop=_loop, local_cpu_backend=cpu, dst_device="cpu")
    _state["ld"] = backend
    return {"path": backend.path, "use_odirect": backend.use_odirect, "f_bsize": backend.os_disk_bs}


def ld_put(seed: int, n: int) -> dict:
    backend = _state["ld"]
    done = threading.Semaphore(0)
    objs = [chunk(seed, i) for i in range(n)]
    backend.batched_submit_put_task([key(seed, i) for i in range(n)], objs,
                                    on_complete_callback=lambda k: done.release())
    for _ in range(n):
        if not done.acquire(timeout=60):
            raise TimeoutError("LocalDiskBackend put tasks did not complete")
    return {"names": sorted(os.listdir(backend.path)),
            "paths": [os.path.basename(backend._key_to_path(key(seed, i))) for i in range(n)],
            "sha256": [sha256(o.byte_array) for o in objs],
            "contains": [backend.contains(key(seed, i)) for i in range(n)]}


def ld_get(seed: int, n: int) -> dict:
    backend = _state["ld"]
    single = {i: compare(backend.get_blocking(key(seed, i)), seed, i) for i in range(n)}
    batched = backend.batched_get_blocking([key(seed, i) for i in range(n)])
    return {"single": {i: m for i, m in single.items() if m is not None},
            "batched": {i: m for i, m in enumerate(compare(o, seed, i) for i, o in enumerate(batched))
                        if m is not None}}


def ld_remove(seed: int, i: int) -> dict:
    backend = _state["ld"]
    removed = backend.remove(key(seed, i))
    return {"removed": removed, "exists": os.path.exists(backend._key_to_path(key(seed, i))),
            "contains": backend.contains(key(seed, i))}


def ld_close() -> dict:
    _state.pop("ld").close()
    return {}


# ----------------------------------------------------------------------------------------- FSConnector

def connector(root: str, tmp_dir: str | None) -> FSConnector:
    extra = {"save_chunk_meta": True}
    if tmp_dir is not None:
        extra["fs_connector_relative_tmp_dir"] = tmp_dir
    cfg = config(extra_config=extra)
    cpu = LocalCPUBackend(cfg, metadata=metadata(), memory_allocator=_allocator)
    return FSConnector(_loop, cpu, cfg, base_paths_str=root)


def fs_put(root: str, seed: int, n: int, tmp_dir: str | None = None) -> dict:
    conn = connector(root, tmp_dir)
    objs = [chunk(seed, i) for i in range(n)]
    for i, obj in enumerate(objs):
        run(conn.put(key(seed, i), obj))
    return {"names": sorted(os.listdir(root)), "paths": [conn._get_file_name(key(seed, i)) for i in range(n)],
            "tmp_names": sorted(os.listdir(os.path.join(root, tmp_dir))) if tmp_dir else None}


def fs_get(root: str, seed: int, n: int, tmp_dir: str | None = None) -> dict:
    conn = connector(root, tmp_dir)
    exists = [conn.exists_sync(key(seed, i)) for i in range(n)]
    mismatches = {i: m for i in range(n) if (m := compare(run(conn.get(key(seed, i))), seed, i)) is not None}
    listed = run(conn.list())
    missing = run(conn.get(key(seed + 1, 0)))
    return {"exists": exists, "mismatches": mismatches, "listed": sorted(listed), "missing_is_none": missing is None}


def fs_remove(root: str, seed: int, i: int) -> dict:
    conn = connector(root, None)
    return {"removed": conn.remove_sync(key(seed, i)), "exists": conn.exists_sync(key(seed, i))}


# ------------------------------------------------------------------------------------------ GDS layout

def gds_view(root: str):
    """A GdsBackend with only what its path, scan and metadata methods use (its constructor needs a GPU)."""
    backend = gds_backend.GdsBackend.__new__(gds_backend.GdsBackend)
    backend.gds_path = root
    backend.gds_paths = [root]
    backend.data_suffix = gds_backend._DATA_FILE_SUFFIX
    backend.hot_lock = threading.Lock()
    backend.hot_cache = {}
    backend.metadata_dirs = set()
    backend._use_noatime = True
    return backend


def gds_store(root: str, seed: int, n: int) -> dict:
    backend = gds_view(root)
    out = {"paths": [], "sha256": []}
    for i in range(n):
        k = key(seed, i)
        obj = chunk(seed, i)
        path, subdir_key, l1, l2 = backend._key_to_path(k)
        os.makedirs(os.path.join(root, l1, l2), exist_ok=True)
        tmp = ".tmp" + gds_backend.rand_suffix(8)
        header = gds_backend.pack_metadata(obj.tensor, fmt=obj.metadata.fmt,
                                           lmcache_version=str(gds_backend._METADATA_VERSION))
        with open(path + tmp, "wb") as f:  # one open: 4 KiB header, then the KV bytes at offset 4096
            f.write(header)
            f.write(obj.byte_array)
        os.rename(path + tmp, path)
        run(gds_backend.save_metadata(path + gds_backend._METADATA_FILE_SUFFIX, tmp, header))
        out["paths"].append(os.path.relpath(path, root))
        out["sha256"].append(sha256(header + bytes(obj.byte_array)))
    # LMCache's own writer (_save_gds) closes the header-only file, then reopens it O_RDWR to put the KV
    # bytes at offset 4096 (cuFile, or ftruncate + mmap): on twfs the closed file is a committed block.
    probe = os.path.join(root, "reopen-probe.kvcache.safetensors.tmp")
    with open(probe, "wb") as f:
        f.write(b"\0" * 4096)
    try:
        os.close(os.open(probe, os.O_RDWR))
        out["reopen_rdwr"] = "no error"
    except OSError as e:
        out["reopen_rdwr"] = errno.errorcode.get(e.errno, str(e.errno))
    os.unlink(probe)
    out["tree"] = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    return out


def gds_scan_and_load(root: str, seed: int, n: int) -> dict:
    """LMCache's start-up scan rebuilds the index from the sidecars; then each data file is read at the
    header's offset (what _load_gds does with cuFile) and compared."""
    backend = gds_view(root)
    asyncio.run(backend._scan_metadata())
    found = {k.to_string(): v for k, v in backend.hot_cache.items()}
    mismatches = {}
    for i in range(n):
        k = key(seed, i)
        meta = found.get(k.to_string())
        if meta is None:
            mismatches[i] = "not found by the scan"
            continue
        with open(meta.path, "rb") as f:
            f.seek(gds_backend._METADATA_MAX_SIZE)
            data = f.read()
        want = block_bytes(seed, i, meta.size)
        shape = tuple(metadata().get_shapes()[0])
        if (len(data), tuple(meta.shape), meta.dtype) != (meta.size, shape, torch.bfloat16) or data != want:
            mismatches[i] = f"shape {tuple(meta.shape)} {meta.dtype}, " + first_difference(data, want)
    return {"scanned": len(found), "noatime": backend._use_noatime, "mismatches": mismatches}


if __name__ == "__main__":
    serve({"ld_open": ld_open, "ld_put": ld_put, "ld_get": ld_get, "ld_remove": ld_remove, "ld_close": ld_close,
           "fs_put": fs_put, "fs_get": fs_get, "fs_remove": fs_remove,
           "gds_store": gds_store, "gds_scan_and_load": gds_scan_and_load})
