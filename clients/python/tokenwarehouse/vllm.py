"""TokenWarehouse as a vLLM KV connector (KVConnectorBase_V1): a request whose prefix another process on
the node already computed loads those KV blocks from the warehouse instead of prefilling them again.

    from vllm import LLM
    llm = LLM(model=..., kv_transfer_config={
        "kv_connector": "TokenWarehouseConnector", "kv_connector_module_path": "tokenwarehouse.vllm",
        "kv_role": "kv_both", "kv_connector_extra_config": {"mount": "/mnt/kv"}})

How it works (docs/engine.md):
- Names. A block is named by vLLM's own block hash of the request (`Request.block_hashes`, the chained
  hash of every token up to the end of the block, with LoRA, multimodal and cache-salt keys), as
  lowercase hex, in a namespace per model and KV layout built from the engine's config (model, dtype,
  layers, KV heads, head size, block size, cache dtype, layout, hash algorithm, tensor/pipeline rank).
  Every process with the same model and hash settings names a block alike (sha256, vLLM's default, has a
  fixed root; xxhash needs a shared PYTHONHASHSEED).
- Scheduler side. `get_num_new_matched_tokens` returns the longest stored prefix in whole blocks after
  the engine's own prefix-cache hit (never the prompt's last token, whose logits must be computed) and
  sends a prefetch hint for those blocks, so the daemon moves them into the DRAM tier before the worker
  reads them. `build_connector_meta` tells the worker which blocks to load into which cache blocks, and
  which blocks this step completes and are to be saved (prompt and generated tokens, chunked prefill and
  resumed requests alike).
- Worker side. Loads run before the forward pass (synchronous loads): from the DRAM tier's map
  (no system call) or the block file, each checked against its trailer (name, layout, checksums) before
  it counts; a missing, damaged or unreadable block is reported through
  `get_block_ids_with_load_errors`, the engine recomputes from that block on (`kv_load_failure_policy`
  is set to "recompute" unless the extra config says `"on_load_error": "fail"`), and the step's saves
  are dropped, so KV computed over a bad block is never stored. Saves copy the finished blocks out of the
  cache when the step ends (so preemption or reuse of a cache block cannot change what is stored) and a
  background thread writes them with `user.tw.parent` chain links; the first write of a name wins.
- Counters: cumulative totals as JSON lines to MOUNT/.tw/engine (what `twctl status` shows), vLLM's
  connector stats (`KV Transfer metrics` in the engine log, per interval), and per request in the
  request output's `kv_transfer_params["tokenwarehouse"]`.

Extra config keys: `mount` (required); `namespace` (replaces the generated name; `@tpN` is appended when
tensor-parallel); `on_load_error` ("recompute" | "fail"); `load`, `save`, `prefetch` (booleans, default
true); `counters_file` (default MOUNT/.tw/engine; "" for none); `load_threads` (default 2);
`max_pending_save_mib` (default 512: saves beyond that are dropped and counted).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats

from . import _kvblocks as kvb
from .client import Client

try:
    from vllm.v1.metrics.cache_hit_source import CacheHitSource
except ImportError:  # pragma: no cover - older vLLM
    CacheHitSource = None

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

__all__ = ["TokenWarehouseConnector", "TokenWarehouseMetadata", "TokenWarehouseKVStats",
           "TokenWarehouseWorkerMeta", "namespace_for", "wait_for_saves", "counters"]

# Under "vllm." so the engine's own log configuration shows these lines.
log = logging.getLogger("vllm.tokenwarehouse")
FORMAT = "tw-vllm-1"

# Connectors alive in this process (wait_for_saves, counters, the exit hook).
_LIVE: "weakref.WeakSet[TokenWarehouseConnector]" = weakref.WeakSet()


# ------------------------------------------------------------------------------------ metadata

@dataclass
class TokenWarehouseMetadata(KVConnectorMetadata):
    """Scheduler → worker for one step.

    loads: req_id -> [(block index in the request, block name, cache block id)], the request's stored
    prefix beyond its local hit.
    saves: req_id -> [(block index in the request, block name, cache block id, parent name or None)],
    blocks this step completes.
    """

    loads: dict[str, list[tuple[int, str, int]]] = field(default_factory=dict)
    saves: dict[str, list[tuple[int, str, int, Optional[str]]]] = field(default_factory=dict)


@dataclass
class TokenWarehouseWorkerMeta(KVConnectorWorkerMetadata):
    """Worker → scheduler for one step: per-request load results and save rewinds.

    requests: req_id -> counters (loaded_blocks_dram_map, loaded_bytes_file, load_errors, ...).
    rewind: req_id -> block index from which saves must be planned again (they were dropped)."""

    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    rewind: dict[str, int] = field(default_factory=dict)

    def aggregate(self, other: "KVConnectorWorkerMetadata") -> "KVConnectorWorkerMetadata":
        if isinstance(other, TokenWarehouseWorkerMeta):
            for rid, d in other.requests.items():
                mine = self.requests.setdefault(rid, {})
                for k, v in d.items():
                    mine[k] = mine.get(k, 0) + v
            for rid, i in other.rewind.items():
                self.rewind[rid] = min(i, self.rewind.get(rid, i))
        return self


@dataclass
class TokenWarehouseKVStats(KVConnectorStats):
    """vLLM connector stats: counter increments over an interval (summed across workers)."""

    def reset(self):
        self.data = {}

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        for k, v in (other.data or {}).items():
            if isinstance(v, (int, float)):
                self.data[k] = self.data.get(k, 0) + v
        return self

    def reduce(self) -> dict[str, int | float]:
        return {k: self.data[k] for k in sorted(self.data)}

    def is_empty(self) -> bool:
        return not any(self.data.values())


# ----------------------------------------------------------------------------------- namespaces

def _ranks(vllm_config) -> tuple[int, int]:
    pc = vllm_config.parallel_config
    return int(pc.tensor_parallel_size), int(pc.pipeline_parallel_size)


def namespace_for(vllm_config, kv_cache_config, tp_rank: int = 0, pp_rank: int = 0,
                  base: Optional[str] = None) -> str:
    """The namespace of one tensor/pipeline rank's blocks: model and KV layout from the engine config.

    `base` (the extra config's `namespace`) replaces the generated name; `@tpN` (and `ppM`) is appended
    when the engine is tensor (pipeline) parallel."""
    tp, pp = _ranks(vllm_config)
    suffix = f"@tp{tp_rank}" + (f"pp{pp_rank}" if pp > 1 else "")
    if base:
        name = base + (suffix if tp > 1 or pp > 1 else "")
        if kvb.safe_namespace(name) != name:
            raise ValueError(f"namespace {name!r}: use [A-Za-z0-9._@+-], at most 128, not starting with '.'")
        return name
    mc, pc, cc = vllm_config.model_config, vllm_config.parallel_config, vllm_config.cache_config
    layers = mc.get_num_layers(pc)
    kv_heads = mc.get_num_kv_heads(pc)
    head = mc.get_head_size()
    dtype = str(mc.dtype).replace("torch.", "")
    spec = kv_cache_config.kv_cache_groups[0].kv_cache_spec if kv_cache_config.kv_cache_groups else None
    identity = {
        "format": FORMAT, "model": str(mc.model), "revision": str(getattr(mc, "revision", None)),
        "dtype": dtype, "cache_dtype": str(cc.cache_dtype), "layers": layers, "kv_heads": kv_heads,
        "head_size": head, "block_size": int(cc.block_size), "layout": str(getattr(cc, "kv_cache_layout", None)),
        "hash": str(cc.prefix_caching_hash_algo), "tp": tp, "pp": pp,
        "spec": type(spec).__name__ if spec is not None else None,
        "spec_dtype": str(getattr(spec, "dtype", None)),
        "kv_quant": str(getattr(spec, "kv_quant_mode", None)),
        "sliding_window": getattr(spec, "sliding_window", None),
    }
    fp = f"{kvb.layout_fingerprint(identity):016x}"[:12]
    label = os.path.basename(str(mc.model).rstrip("/")) or "model"
    return kvb.safe_namespace(label, dtype, f"L{layers}H{kv_heads}D{head}B{cc.block_size}",
                              fingerprint=fp, suffix=suffix)


# ------------------------------------------------------------------------------------ connector

@dataclass
class _Req:
    """Scheduler-side state of one request."""

    request: Any
    block_ids: list[int] = field(default_factory=list)
    saved_upto: int = 0          # blocks [0, saved_upto) are loaded, local hits or planned for saving
    matched_tokens: int = 0      # external tokens the scheduler was told about (all schedulings)
    save_blocks: int = 0
    stats: dict[str, int] = field(default_factory=dict)


def _bool(v, default: bool) -> bool:
    return kvb.config_flag(v, default)


class TokenWarehouseConnector(KVConnectorBase_V1):
    """vLLM KV connector on a TokenWarehouse mount (module docstring; docs/engine.md)."""

    if CacheHitSource is not None:
        _cache_hit_source = CacheHitSource.DISK

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: "KVCacheConfig"):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        ktc = self._kv_transfer_config
        extra = dict(ktc.kv_connector_extra_config or {})
        mount = extra.get("mount")
        if not mount:
            raise ValueError('TokenWarehouseConnector needs kv_connector_extra_config={"mount": "/mnt/kv"}')
        if not os.path.isdir(mount):
            raise FileNotFoundError(f"TokenWarehouseConnector: mount {mount!r} is not a directory "
                                    f"(is twfs running?)")
        groups = kv_cache_config.kv_cache_groups
        if len(groups) != 1:
            raise ValueError("TokenWarehouseConnector supports models with one KV cache group (full "
                             f"attention); this one has {len(groups)}")
        self._block_size = int(vllm_config.cache_config.block_size)
        hash_bs = getattr(kv_cache_config, "hash_block_size", None)
        if hash_bs not in (None, self._block_size):
            raise ValueError(f"block hashes every {hash_bs} tokens, blocks of {self._block_size}: unsupported")
        algo = str(vllm_config.cache_config.prefix_caching_hash_algo)
        if algo.startswith("xxhash") and os.environ.get("PYTHONHASHSEED") is None:
            log.warning("prefix_caching_hash_algo=%s without PYTHONHASHSEED: block hashes differ between "
                        "processes, so blocks saved by one engine are never found by another", algo)

        self._mount = os.fspath(mount)
        self._client = Client(self._mount)
        self._load_enabled = _bool(extra.get("load"), True)
        self._save_enabled = _bool(extra.get("save"), True)
        self._prefetch_enabled = _bool(extra.get("prefetch"), True)
        policy = str(extra.get("on_load_error", "recompute"))
        if policy not in ("recompute", "fail"):
            raise ValueError(f'on_load_error must be "recompute" or "fail", not {policy!r}')
        # vLLM's default policy fails a request whose external KV could not be loaded. A warehouse is a
        # cache (blocks are evicted, files can be removed), so a missing block means: compute it.
        if role == KVConnectorRole.SCHEDULER and hasattr(ktc, "kv_load_failure_policy"):
            ktc.kv_load_failure_policy = policy

        tp, pp = _ranks(vllm_config)
        base = extra.get("namespace")
        self._all_namespaces = [namespace_for(vllm_config, kv_cache_config, t, p, base)
                                for p in range(pp) for t in range(tp)]
        counters_file = extra.get("counters_file")
        if counters_file is None:
            counters_file = os.path.join(self._mount, ".tw", "engine")
        role_name = "scheduler" if role == KVConnectorRole.SCHEDULER else "worker"
        self._counters = kvb.EngineCounters(
            "vllm", kvb.EngineCounters.default_instance(role_name), counters_file or None,
            interval=float(extra.get("counters_interval", 1.0)),
            create=bool(counters_file) and not counters_file.startswith(os.path.join(self._mount, ".tw")))

        # scheduler side
        self._reqs: dict[str, _Req] = {}
        self._lookups: dict[str, tuple[int, int, int]] = {}      # req_id -> (start block, found, limit)
        self._hinted: set[str] = set()
        self._pending_loads: dict[str, list[tuple[int, str, int]]] = {}
        self._finishing: dict[str, dict] = {}
        self._warned: set[str] = set()

        # worker side
        self._ns: Optional[str] = None
        self._io: Optional[kvb.BlockIO] = None
        self._regions: Optional[kvb.BlockRegions] = None
        self._invalid: set[int] = set()
        self._step_requests: dict[str, dict[str, int]] = {}
        self._step_rewind: dict[str, int] = {}
        self._step_load_failed = False
        self._load_pool: Optional[ThreadPoolExecutor] = None
        self._load_threads = max(1, int(extra.get("load_threads", 2)))
        self._save_queue: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._save_limit = int(float(extra.get("max_pending_save_mib", 512)) * (1 << 20))
        self._save_pending = 0
        self._save_cv = threading.Condition()
        self._save_thread: Optional[threading.Thread] = None
        self._closed = False

        if role == KVConnectorRole.WORKER:
            tp_rank, pp_rank = 0, 0
            if tp * pp > 1:
                # Each rank holds its own shard of every block: the rank must be right, or a rank would
                # load another rank's KV under the same name.
                from vllm.distributed.parallel_state import get_pp_group, get_tensor_model_parallel_rank
                tp_rank = get_tensor_model_parallel_rank()
                pp_rank = get_pp_group().rank_in_group
            self._ns = namespace_for(vllm_config, kv_cache_config, tp_rank, pp_rank, base)
        for ns in (self._all_namespaces if role == KVConnectorRole.SCHEDULER else [self._ns]):
            self._client.ensure_namespace(ns)
        if hasattr(self._client, "refresh"):
            self._client.refresh()     # map the DRAM tier of a namespace made just now
        log.info("TokenWarehouseConnector (%s): mount %s, namespace %s", role_name, self._mount,
                 self._ns or ", ".join(self._all_namespaces))
        _LIVE.add(self)

    # ------------------------------------------------------------------------------ properties

    @property
    def requires_kv_delivery(self) -> bool:
        # A dropped save is a later cache miss, never wrong output: nothing must be delivered.
        return False

    @property
    def namespaces(self) -> list[str]:
        """The namespaces this connector reads (scheduler: every rank's; worker: its own)."""
        return [self._ns] if self._ns else list(self._all_namespaces)

    # ============================================================================ scheduler side

    def _warn_once(self, key: str, msg: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        if not self._load_enabled:
            return 0, False
        rid = request.request_id
        bs = self._block_size
        hashes = request.block_hashes
        start = num_computed_tokens // bs
        # The prompt's last token is always computed: its logits give the next token.
        limit = min(len(hashes), (request.num_tokens - 1) // bs)
        if limit <= start:
            self._lookups[rid] = (start, 0, limit)
            return 0, False
        prev = self._lookups.get(rid)
        if prev is not None and prev[0] == start and prev[2] == limit:
            found = prev[1]       # asked again while the request waits for room: same answer, no I/O
        else:
            found = 0
            t0 = time.monotonic()
            try:
                for i in range(start, limit):
                    name = kvb.hex_name(hashes[i])
                    if not all(self._client.exists(ns, name) for ns in self._all_namespaces):
                        break
                    found += 1
            except OSError as e:      # daemon gone, mount unreachable: serve without the warehouse
                self._warn_once("lookup", "TokenWarehouseConnector: lookup failed (%s); computing instead", e)
                self._counters.add(lookup_errors=1)
                found = 0
            self._lookups[rid] = (start, found, limit)
            self._counters.add(lookups=1, lookup_blocks_found=found,
                               lookup_us=int((time.monotonic() - t0) * 1e6))
        if found and self._prefetch_enabled and rid not in self._hinted:
            self._hinted.add(rid)
            names = [kvb.hex_name(h) for h in hashes[start:start + found]]
            try:
                for ns in self._all_namespaces:
                    if self._client.prefetch(ns, names):
                        self._counters.add(prefetch_hints=len(names))
            except OSError as e:
                self._warn_once("prefetch", "TokenWarehouseConnector: prefetch hint failed: %s", e)
        return found * bs, False

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int):
        rid = request.request_id
        st = self._reqs.get(rid)
        if st is None:
            st = self._reqs[rid] = _Req(request=request)
        st.request = request
        lookup = self._lookups.pop(rid, None)
        self._hinted.discard(rid)      # a preempted request that comes back is hinted again
        if num_external_tokens <= 0:
            return
        bs = self._block_size
        n = num_external_tokens // bs
        start = lookup[0] if lookup is not None else 0
        block_ids = blocks.get_block_ids()[0]
        hashes = request.block_hashes
        self._pending_loads[rid] = [(i, kvb.hex_name(hashes[i]), block_ids[i]) for i in range(start, start + n)]
        st.matched_tokens += num_external_tokens
        st.saved_upto = max(st.saved_upto, start + n)
        self._counters.add(load_blocks_planned=n)

    def get_external_cache_hit_sources(self, request: "Request", num_external_tokens: int):
        if num_external_tokens == 0 or CacheHitSource is None:
            return {}
        return {CacheHitSource.DISK: num_external_tokens}

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = TokenWarehouseMetadata()
        bs = self._block_size
        before: dict[str, int] = {}      # tokens computed before this step, per scheduled request
        for nr in scheduler_output.scheduled_new_reqs:
            before[nr.req_id] = nr.num_computed_tokens
            st = self._reqs.get(nr.req_id)
            if st is not None:
                st.block_ids = list(nr.block_ids[0]) if nr.block_ids else []
                st.saved_upto = max(st.saved_upto, nr.num_computed_tokens // bs)
        cached = scheduler_output.scheduled_cached_reqs
        resumed = getattr(cached, "resumed_req_ids", set()) or set()
        if resumed:
            self._counters.add(resumed_requests=len(resumed))
        for i, rid in enumerate(cached.req_ids):
            before[rid] = cached.num_computed_tokens[i]
            st = self._reqs.get(rid)
            if st is None:
                continue
            new_ids = cached.new_block_ids[i]
            if rid in resumed:
                st.block_ids = list(new_ids[0]) if new_ids else []
                st.saved_upto = max(st.saved_upto, cached.num_computed_tokens[i] // bs)
            elif new_ids:
                st.block_ids.extend(new_ids[0])

        # Every planned load goes out: the scheduler already counts those tokens as computed.
        meta.loads.update(self._pending_loads)
        self._pending_loads.clear()

        if self._save_enabled:
            state = getattr(scheduler_output, "kv_connector_block_state", None)
            for rid, n_sched in scheduler_output.num_scheduled_tokens.items():
                st = self._reqs.get(rid)
                if st is None or rid not in before:
                    continue
                if state is not None:
                    ids = state.get_block_ids(rid)
                    if ids:
                        st.block_ids = list(ids[0])
                hashes = st.request.block_hashes
                full = min((before[rid] + n_sched) // bs, len(hashes), len(st.block_ids))
                if full <= st.saved_upto:
                    continue
                meta.saves[rid] = [
                    (i, kvb.hex_name(hashes[i]), st.block_ids[i], kvb.hex_name(hashes[i - 1]) if i else None)
                    for i in range(st.saved_upto, full)]
                st.save_blocks += full - st.saved_upto
                st.saved_upto = full
        return meta

    def update_connector_output(self, connector_output: "KVConnectorOutput"):
        wm = getattr(connector_output, "kv_connector_worker_meta", None)
        if isinstance(wm, TokenWarehouseWorkerMeta):
            for rid, d in wm.requests.items():
                st = self._reqs.get(rid)
                target = st.stats if st is not None else self._finishing.get(rid)
                if target is None:
                    continue
                for k, v in d.items():
                    target[k] = target.get(k, 0) + v
            for rid, i in wm.rewind.items():
                st = self._reqs.get(rid)
                if st is not None and i < st.saved_upto:
                    st.saved_upto = i
        # A request that finished in this step got its kv_transfer_params before this step's worker
        # results arrived (the scheduler frees finished requests first); the dict handed out is still
        # inside the scheduler's outputs, so completing it here is what the caller receives.
        self._finishing.clear()

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        rid = request.request_id
        st = self._reqs.pop(rid, None)
        self._lookups.pop(rid, None)
        self._hinted.discard(rid)
        self._pending_loads.pop(rid, None)
        if st is None:
            return False, None
        stats = dict(st.stats)
        stats["matched_tokens"] = st.matched_tokens
        stats["save_blocks"] = st.save_blocks
        self._finishing[rid] = stats
        return False, {"tokenwarehouse": stats}

    def get_kv_connector_stats(self) -> Optional[KVConnectorStats]:
        d = self._counters.delta()
        return TokenWarehouseKVStats(data=d) if d else None

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> Optional[KVConnectorStats]:
        return TokenWarehouseKVStats(data=dict(data or {}))

    # =============================================================================== worker side

    def register_kv_caches(self, kv_caches: dict[str, Any]):
        group = self._kv_cache_config.kv_cache_groups[0]
        names = [n for n in group.layer_names if n in kv_caches] or sorted(kv_caches)
        tensors, seen = [], set()
        for n in names:
            t = kv_caches[n]
            key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
            if key in seen:         # a layer that shares another layer's cache
                continue
            seen.add(key)
            tensors.append(t)
        num_blocks = int(self._kv_cache_config.num_blocks)
        per = []
        for t in tensors:
            if t.shape[0] % num_blocks:
                raise ValueError(f"KV cache tensor of {t.shape[0]} rows for {num_blocks} blocks")
            per.append(t.shape[0] // num_blocks)
        regions = kvb.BlockRegions(tensors, per)
        self._regions = regions
        self._io = kvb.BlockIO(self._client, regions.payload_bytes, regions.fingerprint, self._block_size)
        if self._load_pool is None:
            self._load_pool = ThreadPoolExecutor(self._load_threads, thread_name_prefix="tw-load")
        if self._save_enabled and self._save_thread is None:
            self._save_thread = threading.Thread(target=self._save_loop, name="tw-save", daemon=True)
            self._save_thread.start()
        log.info("TokenWarehouseConnector: %d layers, %d bytes per block (%d runs), namespace %s",
                 len(tensors), regions.payload_bytes, len(regions.runs), self._ns)

    def _note(self, rid: str, **kv: int) -> None:
        d = self._step_requests.setdefault(rid, {})
        for k, v in kv.items():
            d[k] = d.get(k, 0) + v

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, TokenWarehouseMetadata) or not meta.loads:
            return
        io, ns = self._io, self._ns
        tasks = [(rid, i, name, bid) for rid, loads in meta.loads.items() for i, name, bid in loads]
        t0 = time.monotonic()

        def load(task):
            rid, _i, name, bid = task
            if io is None:
                return task, None, "unreadable: KV caches not registered", False
            try:
                return task, io.load(ns, name, self._regions.views(bid)), None, False
            except FileNotFoundError:
                return task, None, "missing", False
            except kvb.BlockFormatError as e:
                return task, None, f"damaged: {e}", not e.foreign
            except (OSError, ValueError) as e:
                return task, None, f"unreadable: {e}", False

        results = list(self._load_pool.map(load, tasks)) if self._load_pool and len(tasks) > 1 else \
            [load(t) for t in tasks]
        size = io.size if io is not None else 0
        for (rid, i, name, bid), tier, err, damaged in results:
            if tier is not None:
                self._counters.add(**{f"loaded_blocks_{tier}": 1, f"loaded_bytes_{tier}": size})
                self._note(rid, **{f"loaded_blocks_{tier}": 1, f"loaded_bytes_{tier}": size})
                continue
            self._invalid.add(bid)
            self._counters.add(load_errors=1)
            self._note(rid, load_errors=1)
            # The engine recomputes from this block on; plan its saves again from here.
            self._step_rewind[rid] = min(i, self._step_rewind.get(rid, i))
            self._step_load_failed = True
            self._warn_once(f"load-{err.split(':')[0]}", "TokenWarehouseConnector: block %s/%s %s; the "
                            "engine recomputes it", ns, name, err)
            if damaged:
                # First write wins: the recomputed block can replace a damaged one only once it is gone.
                try:
                    os.unlink(self._client.path(ns, name))
                    self._counters.add(damaged_removed=1)
                except OSError:
                    pass
        self._counters.add(load_us=int((time.monotonic() - t0) * 1e6))

    def wait_for_layer_load(self, layer_name: str) -> None:
        return      # every layer of a block arrives at once, before the forward pass

    def save_kv_layer(self, layer_name: str, kv_layer, attn_metadata, **kwargs: Any) -> None:
        return      # blocks are copied out whole, after the forward pass (wait_for_save)

    def wait_for_save(self):
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not isinstance(meta, TokenWarehouseMetadata) or not meta.saves:
            self._step_load_failed = False
            return
        io, ns = self._io, self._ns
        if self._step_load_failed or io is None or not self._save_enabled:
            # This step attended over a block that did not load: what it computed must not be stored.
            for rid, saves in meta.saves.items():
                first = min(s[0] for s in saves)
                self._step_rewind[rid] = min(first, self._step_rewind.get(rid, first))
                self._counters.add(saves_dropped=len(saves))
            self._step_load_failed = False
            return
        t0 = time.monotonic()
        for rid, saves in meta.saves.items():
            for i, name, bid, parent in saves:
                with self._save_cv:
                    full = self._save_pending + io.size > self._save_limit
                    if not full:
                        self._save_pending += io.size
                if full:
                    self._counters.add(saves_dropped=1)
                    continue
                buf = io.stored_form(ns, name, self._regions.views(bid))
                self._save_queue.put((rid, ns, name, parent, buf))
                self._note(rid, save_queued=1)
        self._counters.add(snapshot_us=int((time.monotonic() - t0) * 1e6))

    def _save_loop(self) -> None:
        while True:
            item = self._save_queue.get()
            if item is None:
                self._save_queue.task_done()
                return
            rid, ns, name, parent, buf = item
            try:
                t0 = time.monotonic()
                try:
                    written = self._client.put(ns, name, buf, parent=parent, tokens=self._block_size)
                except FileNotFoundError:
                    # The namespace is gone (a daemon restarted on a new store): make it and try once more.
                    self._client.ensure_namespace(ns)
                    written = self._client.put(ns, name, buf, parent=parent, tokens=self._block_size)
                if written:
                    self._counters.add(saved_blocks=1, saved_bytes=buf.nbytes,
                                       save_us=int((time.monotonic() - t0) * 1e6))
                else:
                    self._counters.add(skipped_blocks=1)
            except OSError as e:
                self._counters.add(save_errors=1)
                self._warn_once("save", "TokenWarehouseConnector: saving %s/%s failed: %s", ns, name, e)
            finally:
                with self._save_cv:
                    self._save_pending -= buf.nbytes
                    self._save_cv.notify_all()
                self._save_queue.task_done()

    def wait_for_saves(self, timeout: Optional[float] = None) -> bool:
        """Block until every queued save is written (or `timeout` seconds pass). True when none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._save_cv:
            while self._save_pending > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._save_cv.wait(left)
        return True

    def get_block_ids_with_load_errors(self) -> set[int]:
        ids, self._invalid = self._invalid, set()
        return ids

    def build_connector_worker_meta(self) -> Optional[KVConnectorWorkerMetadata]:
        if not self._step_requests and not self._step_rewind:
            return None
        wm = TokenWarehouseWorkerMeta(requests=self._step_requests, rewind=self._step_rewind)
        self._step_requests, self._step_rewind = {}, {}
        return wm

    def counters(self) -> dict[str, int]:
        """This connector's cumulative counters."""
        return self._counters.snapshot()

    def shutdown(self):
        if self._closed:
            return
        self._closed = True
        if self._save_thread is not None:
            self.wait_for_saves(timeout=float(os.environ.get("TW_SAVE_DRAIN_SECONDS", "60")))
            self._save_queue.put(None)
            self._save_thread.join(timeout=10)
        if self._load_pool is not None:
            self._load_pool.shutdown(wait=True)
        self._counters.close()
        _LIVE.discard(self)


def wait_for_saves(timeout: Optional[float] = None) -> bool:
    """Wait until the saves queued by every TokenWarehouseConnector in this process are written."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ok = True
    for c in list(_LIVE):
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ok = c.wait_for_saves(left) and ok
    return ok


def counters() -> dict[str, int]:
    """Counters of every TokenWarehouseConnector in this process, summed (scheduler and workers)."""
    total: dict[str, int] = {}
    for c in list(_LIVE):
        for k, v in c.counters().items():
            total[k] = total.get(k, 0) + v
    return total


@atexit.register
def _drain_at_exit() -> None:
    # An engine process that ends without shutting its connector down still commits what it queued.
    for c in list(_LIVE):
        try:
            c.shutdown()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass
