"""A real transformer reusing its KV cache through the warehouse (issue 8), on a real twfs mount.

Tools/engine_demo.py runs a tiny Llama (random weights from a fixed seed, CPU, float32): one process
prefills a prompt and saves its KV blocks through tokenwarehouse.engine.KVConnector; another process serves
a second prompt sharing the prefix by loading the stored blocks, and compares its logits (every computed
position) and greedily generated tokens with a full recompute in that process. A control load with one
wrong block shows the comparison catches a wrong block. Also: a cold serve after a daemon restart
(bytes come from NVMe), the user.tw.parent chain of the stored blocks, and the multi-turn agentic run.

Needs torch and transformers (.ci/run installs them); without them the tests skip, unless
TW_REQUIRE_TORCH=1, which CI sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "Tools" / "engine_demo.py"
NS = "tiny-llama@tp0"
BS = 16                     # the tiny spec's block size
PREFIX, TAIL_A, TAIL_B = 96, 20, 13
TOL = 1e-5

pytestmark = pytest.mark.timeout(300)

if os.environ.get("TW_REQUIRE_TORCH") != "1":
    # CI sets TW_REQUIRE_TORCH=1 (pip-installs both), so there a missing one fails the import instead.
    pytest.importorskip("torch", reason="PyPI's torch is a large optional install (.ci/run adds it)")
    pytest.importorskip("transformers", reason="transformers is an optional install (.ci/run adds it)")


def demo(wh, what: str, *extra: str) -> dict:
    cmd = [sys.executable, os.fspath(DEMO), what, "--mount", os.fspath(wh.mount), "--spec", "tiny",
           "--namespace", NS, "--prefix-tokens", str(PREFIX), "--tail-a", str(TAIL_A), "--tail-b", str(TAIL_B),
           "--generate", "8", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, f"{what} failed ({out.returncode}):\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_exact(s: dict, expect_loaded: int) -> None:
    w = s["warehouse"]
    assert w["loaded_tokens"] == expect_loaded, s
    assert w["computed_tokens"] == s["prompt_tokens"] - expect_loaded
    assert s["max_abs_logit_diff"] <= TOL * max(1.0, s["logit_scale"]), s
    assert s["max_abs_logit_diff_decode"] <= TOL * max(1.0, s["logit_scale"]), s
    assert s["tokens_equal"] and len(s["generated_warehouse"]) == 8, s
    assert w["first_token"] == s["recompute"]["first_token"]
    # the control: one wrong block (block 1's KV in block 0's place) moves the logits far outside the
    # tolerance, so the comparison above catches a wrong or misplaced block
    assert s["control_wrong_block_diff"] is not None
    assert s["control_wrong_block_diff"] > 100 * TOL * max(1.0, s["logit_scale"]), s


def test_second_process_serves_the_shared_prefix_from_the_warehouse_exactly(warehouse):
    pre = demo(warehouse, "prefill")
    assert pre["blocks_written"] == (PREFIX + TAIL_A) // BS
    assert pre["pid"] != os.getpid()
    s = demo(warehouse, "serve", "--all-logits")
    assert s["pid"] != pre["pid"]
    check_exact(s, PREFIX)       # the prompts share PREFIX tokens: 6 whole blocks
    assert sum(s["warehouse"]["bytes"].values()) == (PREFIX // BS) * pre["block_bytes"]

    # the stored blocks form one chain through user.tw.parent, each with its token count
    ns_dir = warehouse.mount / NS
    blocks = {p.name: p for d in ns_dir.iterdir() for p in d.iterdir()}
    assert len(blocks) == pre["blocks_written"]
    parents = {}
    for name, p in blocks.items():
        assert os.getxattr(p, "user.tw.tokens") == str(BS).encode()
        try:
            parents[name] = os.getxattr(p, "user.tw.parent").decode()
        except OSError:
            parents[name] = None
    roots = [n for n, par in parents.items() if par is None]
    assert len(roots) == 1
    assert all(par in blocks for par in parents.values() if par is not None)
    assert len(set(p for p in parents.values() if p)) == len(blocks) - 1    # a chain, not a tree


def test_after_a_restart_the_prefix_comes_from_nvme_and_is_still_exact(warehouse):
    pre = demo(warehouse, "prefill")
    warehouse.restart()            # a new daemon: empty DRAM tier, the blocks stay in the store
    cold = demo(warehouse, "serve", "--all-logits", "--no-prefetch")
    check_exact(cold, PREFIX)
    b = cold["warehouse"]["bytes"]
    # The new tier is empty and no hint was sent: at least the first block comes from NVMe (the daemon's
    # chain prefetch may bring later ones into DRAM while the first is read).
    assert b["nvme"] >= pre["block_bytes"], b
    assert sum(b.values()) == (PREFIX // BS) * pre["block_bytes"]
    warm = demo(warehouse, "serve", "--all-logits")
    check_exact(warm, PREFIX)


def test_agentic_turns_load_earlier_turns_and_answer_like_recompute(warehouse):
    res = demo(warehouse, "agentic", "--sessions", "2", "--turns", "3", "--system-tokens", "40",
               "--user-tokens", "20", "--tool-tokens", "10", "30", "--answer-tokens", "4", "--repeat", "1")
    assert res["answer_mismatches"] == 0
    turns = res["per_turn"]
    assert len(turns) == 3
    # turn 1: session 2 shares the 40-token system prompt (2 whole blocks) with session 1
    assert turns[0]["computed_with"] < turns[0]["prompt_tokens"]
    for t in turns[1:]:
        # later turns load everything the previous turn stored: all but the new tokens and the tail
        assert t["saved_share"] > 0.4, t
    assert res["total_computed_with"] < res["total_prompt_tokens"]
