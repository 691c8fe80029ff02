"""TokenWarehouse as an SGLang HiCache storage backend (L3 tier below SGLang's host memory pool).

    python -m sglang.launch_server --model-path ... --enable-hierarchical-cache \\
        --hicache-storage-backend dynamic --hicache-storage-backend-extra-config \\
        '{"backend_name": "tokenwarehouse", "module_path": "tokenwarehouse.sglang",
          "class_name": "TokenWarehouseStorage", "interface_v1": 1, "mount": "/mnt/kv"}'

`TokenWarehouseStorage` subclasses the installed SGLang's `HiCacheStorage` and is built by SGLang's
`StorageBackendFactory` for the "dynamic" backend (`backend_class(storage_config, kwargs)`).

- Keys are SGLang's page hashes (64 lowercase hex characters: the canonical `NS/hh/HASH`); any other key
  is a file name directly in the namespace. The namespace is one per model and host-pool layout
  (model name, dtype, layers, heads, head size, page size, pool layout, tensor/pipeline rank; one shared
  namespace for MLA models, written by SGLang's designated writer rank).
- With `"interface_v1": 1` SGLang calls the zero-copy methods: `batch_get_v1` / `batch_set_v1` read and
  write the host pool's own pages (the pointers `get_page_buffer_meta` hands out), `batch_exists` counts
  the stored prefix and sends the daemon a prefetch hint for it. Without it, SGLang's generic path calls
  `batch_get` / `batch_set` with flat page tensors; both paths are implemented.
- A block is the page's bytes and the 64-byte trailer of docs/engine.md (name, layout, checksums): a
  damaged, foreign or truncated block is a miss, never wrong KV. Sets chain pages with `user.tw.parent`
  (the previous page's hash, from `extra_info.prefix_keys` for a batch's first page); the first write of
  a name wins.
- Counters: `get_stats()`, and JSON lines to MOUNT/.tw/engine like the vLLM connector's.

Extra config keys: `mount` (required), `namespace` (replaces the generated name), `counters_file`,
`prefetch` (default true).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig, HiCacheStorageExtraInfo

from . import _kvblocks as kvb
from .client import Client

__all__ = ["TokenWarehouseStorage"]

log = logging.getLogger("sglang.tokenwarehouse")
FORMAT = "tw-sglang-1"
_HEX = re.compile(r"[0-9a-f]{16,128}")


def _bool(v, default: bool) -> bool:
    return kvb.config_flag(v, default)


class TokenWarehouseStorage(HiCacheStorage):
    """HiCache storage backend on a TokenWarehouse mount (module docstring)."""

    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None):
        extra = dict(storage_config.extra_config or {})
        mount = extra.get("mount")
        if not mount:
            raise ValueError('TokenWarehouseStorage needs "mount" in --hicache-storage-backend-extra-config')
        if not os.path.isdir(mount):
            raise FileNotFoundError(f"TokenWarehouseStorage: mount {mount!r} is not a directory (is twfs running?)")
        self.storage_config = storage_config
        self.mount = os.fspath(mount)
        self.client = Client(self.mount)
        self.base_namespace = extra.get("namespace")
        self.prefetch_enabled = _bool(extra.get("prefetch"), True)
        self.is_writer = bool(getattr(storage_config, "is_storage_writer", True))
        counters_file = extra.get("counters_file")
        if counters_file is None:
            counters_file = os.path.join(self.mount, ".tw", "engine")
        self.counters = kvb.EngineCounters(
            "sglang", kvb.EngineCounters.default_instance(f"tp{storage_config.tp_rank}"), counters_file or None,
            create=bool(counters_file) and not counters_file.startswith(os.path.join(self.mount, ".tw")))
        self.mem_pool_host = None
        self.namespace: Optional[str] = None
        self._page_io: Optional[kvb.BlockIO] = None      # zero-copy pages (interface v1)
        self._flat_io: dict[int, kvb.BlockIO] = {}       # flat page tensors (generic path), by byte size
        self._layout: dict = {}
        self._tokens = 0

    # --------------------------------------------------------------------------------- setup

    def register_mem_pool_host(self, mem_pool_host):
        super().register_mem_pool_host(mem_pool_host)
        pool = mem_pool_host
        cfg = self.storage_config
        dtype = str(getattr(pool, "dtype", "")).replace("torch.", "")
        layers = int(getattr(pool, "layer_num", 0))
        heads = int(getattr(pool, "head_num", 0) or 0)
        head_dim = int(getattr(pool, "head_dim", 0) or getattr(pool, "kv_lora_rank", 0) or 0)
        page = int(pool.page_size)
        layout = str(getattr(pool, "layout", ""))
        self._tokens = page
        self._layout = {
            "format": FORMAT, "pool": type(pool).__name__, "dtype": dtype, "layers": layers, "heads": heads,
            "head_dim": head_dim, "v_head_dim": int(getattr(pool, "v_head_dim", head_dim) or 0), "page": page,
            "layout": layout, "mla": bool(cfg.is_mla_model), "model": str(cfg.model_name),
            "tp": cfg.tp_size, "pp": cfg.pp_size, "pp_rank": cfg.pp_rank,
        }
        if self.base_namespace:
            ns = self.base_namespace
            if not cfg.is_mla_model and cfg.tp_size > 1:
                ns += f"@tp{cfg.tp_rank}"
        else:
            fp = f"{kvb.layout_fingerprint(self._layout):016x}"[:12]
            suffix = "@mla" if cfg.is_mla_model else f"@tp{cfg.tp_rank}"
            if cfg.pp_size > 1:
                suffix += f"pp{cfg.pp_rank}"
            label = os.path.basename(str(cfg.model_name or "model").rstrip("/")) or "model"
            ns = kvb.safe_namespace(label, dtype, f"L{layers}H{heads}D{head_dim}P{page}", layout,
                                    fingerprint=fp, suffix=suffix)
        if kvb.safe_namespace(ns) != ns:
            raise ValueError(f"namespace {ns!r}: use [A-Za-z0-9._@+-], at most 128, not starting with '.'")
        self.client.ensure_namespace(ns)
        if hasattr(self.client, "refresh"):
            self.client.refresh()      # map the DRAM tier of a namespace made just now
        self.namespace = ns
        log.info("TokenWarehouseStorage: mount %s, namespace %s", self.mount, ns)

    def _require_ns(self) -> str:
        if self.namespace is None:
            raise RuntimeError("TokenWarehouseStorage: register_mem_pool_host was not called")
        return self.namespace

    # ------------------------------------------------------------------------ zero copy (v1)

    def _page_views(self, keys: List[str], host_indices: torch.Tensor) -> list[list]:
        """Per key, the host pool's memory runs of its page, as numpy views (SGLang's zero-copy metadata)."""
        ptrs, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        if len(ptrs) % len(keys):
            raise ValueError(f"{len(ptrs)} buffers for {len(keys)} pages")
        per = len(ptrs) // len(keys)
        pages = []
        for i in range(len(keys)):
            pages.append([kvb.host_view(int(p), int(n)) for p, n in zip(ptrs[i * per:(i + 1) * per],
                                                                       sizes[i * per:(i + 1) * per])])
        if self._page_io is None:
            sizes0 = [v.nbytes for v in pages[0]]
            fp = kvb.layout_fingerprint({**self._layout, "path": "v1", "runs": sizes0})
            self._page_io = kvb.BlockIO(self.client, sum(sizes0), fp, self._tokens)
        return pages

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        """Load pages into the host pool at `host_indices`; True per page loaded. Stops at the first miss
        (SGLang uses the leading run of successes)."""
        if not keys:
            return []
        ns = self._require_ns()
        pages = self._page_views(keys, host_indices)
        out = [False] * len(keys)
        t0 = time.monotonic()
        for i, (key, views) in enumerate(zip(keys, pages)):
            if not self._load(ns, key, views, self._page_io):
                break
            out[i] = True
        self.counters.add(load_us=int((time.monotonic() - t0) * 1e6))
        return out

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        """Store the host pool's pages at `host_indices` under `keys`; True per page stored or present."""
        if not keys:
            return []
        ns = self._require_ns()
        if not self.is_writer:
            return [True] * len(keys)
        pages = self._page_views(keys, host_indices)
        parents = self._parents(keys, extra_info)
        return [self._store(ns, key, self._page_io.stored_form(ns, key, views), parent)
                for key, views, parent in zip(keys, pages, parents)]

    # ------------------------------------------------------------------ generic (flat pages)

    def _flat(self, t: torch.Tensor):
        """A uint8 view of a contiguous CPU page tensor and the BlockIO for its size."""
        if t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError("TokenWarehouseStorage needs contiguous host tensors")
        view = t.reshape(-1).view(torch.uint8).numpy()
        io = self._flat_io.get(view.nbytes)
        if io is None:
            fp = kvb.layout_fingerprint({**self._layout, "path": "flat", "dtype_t": str(t.dtype),
                                         "bytes": view.nbytes})
            io = self._flat_io[view.nbytes] = kvb.BlockIO(self.client, view.nbytes, fp, self._tokens)
        return view, io

    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None):
        """Load one page into `target_location` (a flat page tensor, e.g. the pool's dummy page); returns
        it, or None when the page is missing or fails its check."""
        ns = self._require_ns()
        if target_location is None:
            target_location = self.mem_pool_host.get_dummy_flat_data_page()
        view, io = self._flat(target_location)
        return target_location if self._load(ns, key, [view], io) else None

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> List[Optional[torch.Tensor]]:
        targets = target_locations if target_locations is not None else [None] * len(keys)
        out: List[Optional[torch.Tensor]] = []
        for key, t in zip(keys, targets):
            got = self.get(key, t)
            out.append(got)
            if got is None:       # SGLang uses the leading run of pages
                out.extend([None] * (len(keys) - len(out)))
                break
        return out

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None, parent: Optional[str] = None) -> bool:
        ns = self._require_ns()
        if not self.is_writer:
            return True
        view, io = self._flat(value)
        return self._store(ns, key, io.stored_form(ns, key, [view]), parent)

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        parents = self._parents(keys, None)
        return all([self.set(k, v, parent=p) for k, v, p in zip(keys, values, parents)])

    # ----------------------------------------------------------------------------- lookups

    def exists(self, key: str) -> bool:
        try:
            return self.client.exists(self._require_ns(), key)
        except OSError:
            return False

    def batch_exists(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        """How many keys from the first are stored; sends the daemon a prefetch hint for those."""
        ns = self._require_ns()
        n = 0
        try:
            for key in keys:
                if not self.client.exists(ns, key):
                    break
                n += 1
        except OSError as e:
            log.warning("TokenWarehouseStorage: lookup failed: %s", e)
            self.counters.add(lookup_errors=1)
        self.counters.add(lookups=1, lookup_blocks_found=n)
        if n and self.prefetch_enabled:
            try:
                if self.client.prefetch(ns, keys[:n]):
                    self.counters.add(prefetch_hints=n)
            except (OSError, ValueError):
                pass
        return n

    def clear(self) -> None:
        """Nothing to clear here: the warehouse is shared with other processes (evict with twctl)."""

    def get_stats(self):
        return self.counters.snapshot()

    def close(self) -> None:
        self.counters.close()
        self.client.close()

    # ----------------------------------------------------------------------------- helpers

    @staticmethod
    def _parents(keys: List[str], extra_info) -> list[Optional[str]]:
        prefix = getattr(extra_info, "prefix_keys", None) if extra_info is not None else None
        first = prefix[-1] if prefix else None
        return [first] + list(keys[:-1])

    def _load(self, ns: str, key: str, dests, io: kvb.BlockIO) -> bool:
        try:
            tier = io.load(ns, key, dests)
        except FileNotFoundError:
            self.counters.add(load_misses=1)
            return False
        except kvb.BlockFormatError as e:
            self.counters.add(load_errors=1)
            log.warning("TokenWarehouseStorage: block %s/%s damaged (%s); treated as a miss", ns, key, e)
            if not e.foreign:
                try:     # first write wins: a good copy can replace it only once it is gone
                    os.unlink(self.client.path(ns, key))
                    self.counters.add(damaged_removed=1)
                except OSError:
                    pass
            return False
        except (OSError, ValueError) as e:
            self.counters.add(load_errors=1)
            log.warning("TokenWarehouseStorage: block %s/%s unreadable: %s", ns, key, e)
            return False
        self.counters.add(**{f"loaded_blocks_{tier}": 1, f"loaded_bytes_{tier}": io.size})
        return True

    def _store(self, ns: str, key: str, data, parent: Optional[str]) -> bool:
        if parent is not None and not _HEX.fullmatch(parent):
            parent = None        # user.tw.parent holds a prefix hash; other keys are not chained
        try:
            if self.client.put(ns, key, data, parent=parent, tokens=self._tokens):
                self.counters.add(saved_blocks=1, saved_bytes=data.nbytes)
            else:
                self.counters.add(skipped_blocks=1)
            return True
        except OSError as e:
            self.counters.add(save_errors=1)
            log.warning("TokenWarehouseStorage: storing %s/%s failed: %s", ns, key, e)
            return False
