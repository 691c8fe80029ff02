"""Driver: SGLang's HiCacheFile (sglang 0.5.23, `sglang.srt.mem_cache.hicache_storage.HiCacheFile`), its own
code on a directory of a twfs mount: `set`/`batch_set` (numpy tofile to `.<uuid>.tmp`, then os.replace onto
`<key>_<model>_<tp_rank>_<tp_size>.bin`), `exists`, `batch_exists_v2`, `get`/`batch_get` (readinto a CPU
tensor), its metadata cache (a directory listing at start), its LRU evictor (stat at start, os.remove to stay
under max_size) and `clear` (list and remove).
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver_common import block_bytes, first_difference, serve, sha256  # noqa: E402

from sglang.srt.mem_cache.hicache_storage import HiCacheFile, HiCacheStorageConfig  # noqa: E402

MODEL = "org/tiny-llama"


def backend(root: str, max_size: int | None = None, metadata_cache: bool = True) -> HiCacheFile:
    extra = {"file_storage_path": root, "enable_metadata_cache": metadata_cache}
    if max_size is not None:
        extra["max_size"] = max_size
    cfg = HiCacheStorageConfig(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
                               is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
                               model_name=MODEL, extra_config=extra)
    return HiCacheFile(cfg)


def page(seed: int, i: int, page_bytes: int) -> torch.Tensor:
    """A KV page as SGLang hands it over: a bf16 CPU tensor whose bytes are block_bytes(seed, i)."""
    raw = torch.frombuffer(bytearray(block_bytes(seed, i, page_bytes)), dtype=torch.uint8)
    return raw.view(torch.bfloat16).reshape(2, -1)


def key(seed: int, i: int) -> str:
    return f"{seed:04x}{i:060x}"  # SGLang keys are hex prefix hashes


def store(root: str, seed: int, n: int, page_bytes: int) -> dict:
    hc = backend(root)
    keys = [key(seed, i) for i in range(n)]
    first = hc.set(keys[0], page(seed, 0, page_bytes))
    batch = hc.batch_set(keys[1:], [page(seed, i, page_bytes) for i in range(1, n)])
    again = hc.set(keys[0], page(seed, 0, page_bytes))  # already there: skipped, True
    names = sorted(os.listdir(root))
    return {"set": first, "batch_set": batch, "set_again": again, "names": names,
            "paths": [f"{hc._get_suffixed_key(k)}.bin" for k in keys], "exists": [hc.exists(k) for k in keys],
            "sha256": [sha256(block_bytes(seed, i, page_bytes)) for i in range(n)]}


def load(root: str, seed: int, n: int, page_bytes: int, metadata_cache: bool = True) -> dict:
    hc = backend(root, metadata_cache=metadata_cache)
    keys = [key(seed, i) for i in range(n)]
    hits = hc.batch_exists_v2(keys + [key(seed + 1, 0)])
    targets = [torch.zeros(2, page_bytes // 4, dtype=torch.bfloat16) for _ in range(n)]
    got = hc.batch_get(keys, targets)
    mismatches = {}
    for i, t in enumerate(targets):
        data = t.view(torch.uint8).numpy().tobytes()
        if got[i] is None or data != block_bytes(seed, i, page_bytes):
            mismatches[i] = "None" if got[i] is None else first_difference(data, block_bytes(seed, i, page_bytes))
    missing = hc.get(key(seed + 1, 0), torch.zeros(2, page_bytes // 4, dtype=torch.bfloat16))
    return {"kv_hit_pages": hits.kv_hit_pages, "exists": [hc.exists(k) for k in keys],
            "mismatches": mismatches, "missing_is_none": missing is None}


def evict(root: str, seed: int, n_new: int, page_bytes: int, max_size: int) -> dict:
    """A backend with a byte cap: it scans what is there (oldest mtime first) and removes the oldest files
    to make room for n_new more pages."""
    hc = backend(root, max_size=max_size)
    ok = [hc.set(key(seed, i), page(seed, i, page_bytes)) for i in range(n_new)]
    return {"set": ok, "names": sorted(os.listdir(root))}


def clear(root: str) -> dict:
    hc = backend(root)
    return {"cleared": hc.clear(), "names": sorted(os.listdir(root))}


if __name__ == "__main__":
    serve({"store": store, "load": load, "evict": evict, "clear": clear})
