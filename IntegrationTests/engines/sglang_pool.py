"""A host KV pool with SGLang's MHA page layouts, for testing the HiCache backend without SGLang running.

SGLang's own host pool (sglang.srt.mem_cache.pool_host.mha.MHATokenToKVPoolHost) cannot be imported in
this venv: its package imports torchvision, whose PyPI build needs CUDA. This class holds the same
buffer, `kv_buffer` of shape [2, layers, tokens, heads, dim] ("layer_first") or [2, tokens, layers, heads,
dim] ("page_first"), and answers the calls a storage backend makes, with the arithmetic of SGLang 0.5.23's
MHATokenToKVPoolHost: `get_page_buffer_meta` (the zero-copy pointers and sizes of pages),
`get_dummy_flat_data_page`, `get_data_page`, `set_from_flat_data_page`.

Also a script: `python sglang_pool.py MOUNT LAYOUT SEED KEYS_JSON` stores pages filled from SEED under
KEYS (one process writes, the test process reads) and prints the backend's counters.
"""

from __future__ import annotations

import json
import sys

import torch


class MHAHostPool:
    def __init__(self, layout: str = "page_first", layers: int = 4, heads: int = 2, head_dim: int = 64,
                 page_size: int = 16, pages: int = 32, dtype=torch.float16):
        assert layout in ("page_first", "layer_first")
        self.layout = layout
        self.layer_num, self.head_num, self.head_dim, self.v_head_dim = layers, heads, head_dim, head_dim
        self.page_size = page_size
        self.size = page_size * pages
        self.dtype = dtype
        self.device = "cpu"
        if layout == "layer_first":
            dims = (2, layers, self.size, heads, head_dim)
        else:
            dims = (2, self.size, layers, heads, head_dim)
        self.kv_buffer = torch.zeros(dims, dtype=dtype)

    def page_indices(self, page: int) -> torch.Tensor:
        """The token indices of host page `page` (what SGLang passes as host_indices)."""
        return torch.arange(page * self.page_size, (page + 1) * self.page_size, dtype=torch.int64)

    def fill(self, page: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        data = torch.randn(self.get_data_page(page * self.page_size, flat=True).shape, generator=g).to(self.dtype)
        self.set_from_flat_data_page(page * self.page_size, data)

    # --- SGLang MHATokenToKVPoolHost's interface (sglang 0.5.23, pool_host/mha.py)

    def get_page_buffer_meta(self, indices):
        assert len(indices) % self.page_size == 0
        ptr_list = []
        base = self.kv_buffer.data_ptr()
        indices = indices.tolist()
        item = self.dtype.itemsize
        v_offset = self.layer_num * self.size * self.head_num * self.head_dim * item
        if self.layout == "layer_first":
            for index in range(0, len(indices), self.page_size):
                for layer_id in range(self.layer_num):
                    k_ptr = (base + indices[index] * self.head_num * self.head_dim * item
                             + layer_id * self.size * self.head_num * self.head_dim * item)
                    ptr_list += [k_ptr, k_ptr + v_offset]
            element_size = item * self.page_size * self.head_num * self.head_dim
        else:
            for index in range(0, len(indices), self.page_size):
                k_ptr = base + indices[index] * self.layer_num * self.head_num * self.head_dim * item
                ptr_list += [k_ptr, k_ptr + v_offset]
            element_size = self.layer_num * item * self.page_size * self.head_num * self.head_dim
        return ptr_list, [element_size] * len(ptr_list)

    def get_data_page(self, index, flat: bool = True) -> torch.Tensor:
        if self.layout == "layer_first":
            page = self.kv_buffer[:, :, index:index + self.page_size, :, :]
        else:
            page = self.kv_buffer[:, index:index + self.page_size, :, :, :]
        return page.flatten() if flat else page

    def get_dummy_flat_data_page(self) -> torch.Tensor:
        return torch.zeros((2, self.layer_num, self.page_size, self.head_num, self.head_dim),
                           dtype=self.dtype).flatten()

    def set_from_flat_data_page(self, index: int, data_page: torch.Tensor) -> None:
        if self.layout == "layer_first":
            self.kv_buffer[:, :, index:index + self.page_size, :, :] = data_page.reshape(
                2, self.layer_num, self.page_size, self.head_num, self.head_dim)
        else:
            self.kv_buffer[:, index:index + self.page_size, :, :, :] = data_page.reshape(
                2, self.page_size, self.layer_num, self.head_num, self.head_dim)


def storage_config(mount: str, **extra):
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    return HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
        enable_storage_metrics=False, is_page_first_layout=True, model_name="tiny-llama",
        extra_config={"backend_name": "tokenwarehouse", "module_path": "tokenwarehouse.sglang",
                      "class_name": "TokenWarehouseStorage", "interface_v1": 1, "mount": mount, **extra})


def make_backend(mount: str, pool: MHAHostPool, **extra):
    """The backend as SGLang builds it: StorageBackendFactory.create_backend("dynamic", ...), then the host
    pool registered."""
    from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

    backend = StorageBackendFactory.create_backend("dynamic", storage_config(mount, **extra), pool)
    backend.register_mem_pool_host(pool)
    return backend


def main() -> None:
    mount, layout, seed, keys = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageExtraInfo

    pool = MHAHostPool(layout)
    for p in range(len(keys)):
        pool.fill(p, seed + p)
    backend = make_backend(mount, pool)
    idx = torch.cat([pool.page_indices(p) for p in range(len(keys))])
    ok = backend.batch_set_v1(keys, idx, HiCacheStorageExtraInfo(prefix_keys=None))
    stats = backend.get_stats()
    backend.close()
    print(json.dumps({"ok": ok, "stats": stats, "namespace": backend.namespace}))


if __name__ == "__main__":
    main()
