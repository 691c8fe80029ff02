#!/usr/bin/env python3
"""A real transformer that reuses its KV cache from the warehouse (issue 8).

A small decoder-only model (transformers' Llama with random weights from a fixed seed: nothing is
downloaded) runs on CPU. Its KV cache goes to a twfs mount through tokenwarehouse.engine.KVConnector and
comes back in another process, which serves a request that shares the prefix by loading the stored blocks
instead of computing them, and checks that the logits and the generated tokens equal a full recompute.

    python3 Tools/engine_demo.py                    # starts its own twfs, runs both parts, prints tables
    python3 Tools/engine_demo.py --mount /mnt/kv    # against a running mount
    python3 Tools/engine_demo.py prefill|serve ...  # the two processes of part A (the driver runs them)

Part A (prefix reuse): process 1 prefills a long prompt and saves its KV blocks; the daemon is restarted
(its DRAM tier starts empty, the blocks stay on NVMe); process 2 serves a second prompt with the same prefix
cold (NVMe) and process 3 warm (DRAM). Each reports time to first token (TTFT) with the warehouse and with
a full recompute, the bytes read from each tier, and the largest logit difference.
Part B (agentic): sessions whose every turn extends the previous prompt with the model's answer and a tool
output; per turn, prefill tokens computed and TTFT with and without the warehouse.

Block layout (the engine's choice; the warehouse stores bytes): for each block of `block_size` tokens,
float32 [layer][K, V][kv_head][token][head_dim], contiguous.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.fspath(REPO / "clients" / "python"))   # the client from this checkout

from tokenwarehouse import Client  # noqa: E402
from tokenwarehouse.engine import KVConnector  # noqa: E402

SPECS = {
    # a model small enough for a CI test: 2 layers, 16 KiB blocks of 16 tokens
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, block_size=16),
    # the demo's model: 8 layers, 16 KiB of KV per token, 4 MiB blocks of 256 tokens
    "small": dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=4, block_size=256),
}
SEED = 1234


# ------------------------------------------------------------------------------------------- model

class Engine:
    """A model, its KV block codec and the forward passes an engine runs (CPU, float32, no autograd)."""

    def __init__(self, spec: str, threads: int | None = None):
        import torch
        from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        s = dict(SPECS[spec])
        self.block_size = s.pop("block_size")
        self.spec = spec
        self.config = LlamaConfig(max_position_embeddings=32768, **s)
        torch.manual_seed(SEED)
        self.model = LlamaForCausalLM(self.config).eval()
        self.layers = self.config.num_hidden_layers
        self.kv_heads = self.config.num_key_value_heads
        self.head_dim = self.config.hidden_size // self.config.num_attention_heads
        self.vocab = self.config.vocab_size
        self.block_bytes = self.layers * 2 * self.kv_heads * self.block_size * self.head_dim * 4
        self._DynamicCache = DynamicCache
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._cache_takes_config = "config" in inspect.signature(DynamicCache.__init__).parameters

    def new_cache(self):
        return self._DynamicCache(config=self.config) if self._cache_takes_config else self._DynamicCache()

    def forward(self, ids, cache, all_logits: bool = False):
        """Run `ids` (a list of token ids) after what `cache` holds; returns logits [n or 1, vocab]."""
        torch = self.torch
        x = torch.tensor([ids], dtype=torch.long)
        with torch.inference_mode():
            out = self.model(input_ids=x, use_cache=True, logits_to_keep=0 if all_logits else 1,
                             **{self._cache_kw: cache})
        return out.logits[0]

    def _kv(self, cache, layer):
        if hasattr(cache, "layers"):
            return cache.layers[layer].keys, cache.layers[layer].values
        return cache.key_cache[layer], cache.value_cache[layer]      # transformers < 4.56

    def cached_tokens(self, cache) -> int:
        return cache.get_seq_length()

    def pack(self, cache, first: int, count: int):
        """The KV of blocks [first, first+count) as one tensor [count, layer, 2, head, token, dim]."""
        torch, bs = self.torch, self.block_size
        out = torch.empty((count, self.layers, 2, self.kv_heads, bs, self.head_dim), dtype=torch.float32)
        s, e = first * bs, (first + count) * bs
        for layer in range(self.layers):
            k, v = self._kv(cache, layer)
            for j, t in enumerate((k, v)):
                out[:, layer, j] = t[0, :, s:e].reshape(self.kv_heads, count, bs, self.head_dim).transpose(0, 1)
        return out

    def staging(self, count: int):
        return self.torch.empty((count, self.layers, 2, self.kv_heads, self.block_size, self.head_dim),
                                dtype=self.torch.float32)

    def unpack(self, staged, count: int):
        """A cache holding the first `count` blocks of `staged` (what pack made, or what was loaded)."""
        cache = self.new_cache()
        n = count * self.block_size
        for layer in range(self.layers):
            k = staged[:count, layer, 0].transpose(0, 1).reshape(1, self.kv_heads, n, self.head_dim)
            v = staged[:count, layer, 1].transpose(0, 1).reshape(1, self.kv_heads, n, self.head_dim)
            cache.update(k, v, layer)
        return cache

    def decode(self, cache, first_logits, steps: int):
        """Greedy decoding after a prefill: (tokens, logits of each step [steps, vocab])."""
        torch = self.torch
        toks, logits = [], [first_logits[-1]]
        tok = int(torch.argmax(first_logits[-1]))
        for _ in range(steps):
            toks.append(tok)
            lg = self.forward([tok], cache)[-1]
            logits.append(lg)
            tok = int(torch.argmax(lg))
        return toks, torch.stack(logits)

    def warm_up(self):
        c = self.new_cache()
        self.forward(list(range(2 * self.block_size)), c)
        self.forward([1], c)


def tokens(seed: int, n: int, vocab: int) -> list[int]:
    r = random.Random(seed)
    return [r.randrange(3, vocab) for _ in range(n)]


# ----------------------------------------------------------------------------- the engine's serving

def serve_with_warehouse(eng: Engine, conn: KVConnector, prompt: list[int], all_logits: bool = False):
    """One request through the warehouse: lookup, load the stored prefix, prefill the rest, first token.

    At least the prompt's last token is computed (its logits give the first token). Returns
    (logits, cache, info)."""
    t0 = time.perf_counter()
    names = conn.block_names(prompt)
    usable = (len(prompt) - 1) // eng.block_size
    hit_blocks = min(conn.lookup(prompt, names=names) // eng.block_size, usable)
    t1 = time.perf_counter()
    loaded_blocks = 0
    if hit_blocks:
        staged = eng.staging(hit_blocks)
        loaded_blocks = conn.load(prompt, [staged[i] for i in range(hit_blocks)], names=names) // eng.block_size
    t2 = time.perf_counter()
    cache = eng.unpack(staged, loaded_blocks) if loaded_blocks else eng.new_cache()
    p = loaded_blocks * eng.block_size
    logits = eng.forward(prompt[p:], cache, all_logits)
    first = int(eng.torch.argmax(logits[-1]))
    t3 = time.perf_counter()
    rep = conn.last_load if loaded_blocks else None
    info = dict(ttft_s=t3 - t0, lookup_s=t1 - t0, load_s=t2 - t1, prefill_s=t3 - t2, first_token=first,
                loaded_tokens=p, computed_tokens=len(prompt) - p,
                bytes=dict(rep.bytes) if rep else {"dram_map": 0, "dram_file": 0, "nvme": 0})
    return logits, cache, info


def serve_recompute(eng: Engine, prompt: list[int], all_logits: bool = False):
    t0 = time.perf_counter()
    cache = eng.new_cache()
    logits = eng.forward(prompt, cache, all_logits)
    first = int(eng.torch.argmax(logits[-1]))
    return logits, cache, dict(ttft_s=time.perf_counter() - t0, first_token=first, computed_tokens=len(prompt))


def save_prompt_blocks(eng: Engine, conn: KVConnector, prompt: list[int], cache, skip_blocks: int = 0) -> int:
    """Store the prompt's whole blocks that are in `cache` (from block `skip_blocks` on); returns how many
    were new."""
    n = min(len(prompt), eng.cached_tokens(cache)) // eng.block_size
    if n <= skip_blocks:
        return 0
    staged = eng.pack(cache, skip_blocks, n - skip_blocks)
    return conn.save(prompt, [staged[i] for i in range(n - skip_blocks)], start_block=skip_blocks)


# --------------------------------------------------------------------------------- part A: processes

def prompts_a(eng: Engine, prefix_tokens: int, tail_a: int, tail_b: int):
    prefix = tokens(1, prefix_tokens, eng.vocab)
    return prefix + tokens(2, tail_a, eng.vocab), prefix + tokens(3, tail_b, eng.vocab)


def cmd_prefill(args) -> dict:
    eng = Engine(args.spec, args.threads)
    a, _ = prompts_a(eng, args.prefix_tokens, args.tail_a, args.tail_b)
    with Client(args.mount) as tw:
        conn = KVConnector(tw, args.namespace, eng.block_size, salt=f"demo-{args.spec}-{SEED}")
        eng.warm_up()
        t0 = time.perf_counter()
        cache = eng.new_cache()
        eng.forward(a, cache)
        t1 = time.perf_counter()
        written = save_prompt_blocks(eng, conn, a, cache)
        t2 = time.perf_counter()
    return dict(process="prefill", pid=os.getpid(), prompt_tokens=len(a), prefill_s=t1 - t0, save_s=t2 - t1,
                blocks_written=written, block_bytes=eng.block_bytes)


def cmd_serve(args) -> dict:
    torch = __import__("torch")
    eng = Engine(args.spec, args.threads)
    _, b = prompts_a(eng, args.prefix_tokens, args.tail_a, args.tail_b)
    with Client(args.mount) as tw:
        conn = KVConnector(tw, args.namespace, eng.block_size, salt=f"demo-{args.spec}-{SEED}",
                           prefetch=not args.no_prefetch)
        eng.warm_up()
        lw, cw, wh = serve_with_warehouse(eng, conn, b, args.all_logits)
        lr, cr, rc = serve_recompute(eng, b, args.all_logits)
        if args.all_logits:      # compare the logits of every position the warehouse path computed
            lr_cmp = lr[wh["loaded_tokens"]:]
        else:
            lr_cmp = lr[-1:]
        gen_w, step_w = eng.decode(cw, lw, args.generate)
        gen_r, step_r = eng.decode(cr, lr, args.generate)
        control = None
        if wh["loaded_tokens"] >= 2 * eng.block_size:
            # The same load with block 0 replaced by block 1 (a wrong block at one position): shows that
            # the comparison above would catch one. (Swapping two blocks would not: K holds its rotary
            # position already, and attention over a set of keys ignores their order.)
            nb = wh["loaded_tokens"] // eng.block_size
            staged = eng.staging(nb)
            conn.load(b, [staged[i] for i in range(nb)])
            staged[0].copy_(staged[1])
            cs = eng.unpack(staged, nb)
            ls = eng.forward(b[wh["loaded_tokens"]:], cs, args.all_logits)
            control = float((ls[-len(lr_cmp):] - lr_cmp).abs().max())
    diff = float((lw[-len(lr_cmp):] - lr_cmp).abs().max())
    return dict(process="serve", pid=os.getpid(), prompt_tokens=len(b), warehouse=wh, recompute=rc,
                speedup=rc["ttft_s"] / wh["ttft_s"], max_abs_logit_diff=diff,
                logits_bitwise_equal=bool(torch.equal(lw[-len(lr_cmp):], lr_cmp)),
                max_abs_logit_diff_decode=float((step_w - step_r).abs().max()),
                generated_warehouse=gen_w, generated_recompute=gen_r, tokens_equal=gen_w == gen_r,
                control_wrong_block_diff=control, logit_scale=float(lr_cmp.abs().max()),
                client_stats=dict(tw.stats))


# ------------------------------------------------------------------------------ part B: agentic turns

def cmd_agentic(args) -> dict:
    eng = Engine(args.spec, args.threads)
    bs, V = eng.block_size, eng.vocab
    system = tokens(10, args.system_tokens, V)          # shared by every session
    sessions = [system + tokens(100 + s, args.user_tokens, V) for s in range(args.sessions)]
    r = random.Random(7)
    rows = []
    mismatches = 0
    with Client(args.mount) as tw:
        conn = KVConnector(tw, args.namespace, bs, salt=f"demo-{args.spec}-{SEED}")
        eng.warm_up()
        for turn in range(args.turns):
            for s in range(args.sessions):
                prompt = sessions[s]
                # Best of `repeat` for each path, alternating, so a neighbour's burst of CPU use does not
                # decide a row; the bytes are those of the first warehouse run.
                lr, cr, rc = serve_recompute(eng, prompt)
                lw, cw, wh = serve_with_warehouse(eng, conn, prompt)
                for _ in range(args.repeat - 1):
                    rc["ttft_s"] = min(rc["ttft_s"], serve_recompute(eng, prompt)[2]["ttft_s"])
                    wh["ttft_s"] = min(wh["ttft_s"], serve_with_warehouse(eng, conn, prompt)[2]["ttft_s"])
                save_prompt_blocks(eng, conn, prompt, cw, skip_blocks=wh["loaded_tokens"] // bs)
                gen_r, _ = eng.decode(cr, lr, args.answer_tokens)
                gen_w, _ = eng.decode(cw, lw, args.answer_tokens)
                mismatches += gen_r != gen_w
                rows.append(dict(turn=turn + 1, session=s, prompt_tokens=len(prompt),
                                 computed_with=wh["computed_tokens"], loaded=wh["loaded_tokens"],
                                 ttft_with_s=wh["ttft_s"], ttft_without_s=rc["ttft_s"], bytes=wh["bytes"]))
                # the next turn: the model's answer, then a tool's output
                sessions[s] = prompt + gen_r + tokens(1000 * (turn + 1) + s, r.randint(*args.tool_tokens), V)
    per_turn = []
    for t in range(1, args.turns + 1):
        rs = [x for x in rows if x["turn"] == t]
        per_turn.append(dict(
            turn=t, prompt_tokens=statistics.mean(x["prompt_tokens"] for x in rs),
            computed_with=statistics.mean(x["computed_with"] for x in rs),
            saved_share=sum(x["loaded"] for x in rs) / sum(x["prompt_tokens"] for x in rs),
            ttft_with_s=statistics.median(x["ttft_with_s"] for x in rs),
            ttft_without_s=statistics.median(x["ttft_without_s"] for x in rs),
            bytes={k: sum(x["bytes"][k] for x in rs) for k in ("dram_map", "dram_file", "nvme")}))
    return dict(process="agentic", repeat=args.repeat, rows=rows, per_turn=per_turn, answer_mismatches=mismatches,
                total_prompt_tokens=sum(x["prompt_tokens"] for x in rows),
                total_computed_with=sum(x["computed_with"] for x in rows),
                ttft_with_total_s=sum(x["ttft_with_s"] for x in rows),
                ttft_without_total_s=sum(x["ttft_without_s"] for x in rows),
                client_stats=dict(tw.stats))


# ------------------------------------------------------------------------------------ a twfs daemon

class OwnWarehouse:
    """A twfs daemon the demo starts on temporary directories and always stops (unmount, then kill)."""

    def __init__(self, binary: str, dram: str):
        self.binary, self.dram = binary, dram
        self.base = Path(tempfile.mkdtemp(prefix="tw-engine-demo-"))
        self.mount, self.store = self.base / "mnt", self.base / "store"
        self.mount.mkdir()
        self.store.mkdir()
        self.proc = None

    def start(self):
        log = open(self.base / "twfs.log", "ab")
        self.proc = subprocess.Popen([self.binary, os.fspath(self.mount), "--store", os.fspath(self.store),
                                      "--capacity", "4G", "--dram", self.dram, "-f"], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"twfs exited with {self.proc.returncode}: "
                                   f"{(self.base / 'twfs.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if os.stat(self.mount).st_dev != os.stat(self.base).st_dev:
                    os.statvfs(self.mount)
                    return
            time.sleep(0.05)
        raise RuntimeError("twfs did not mount within 20 s")

    def stop(self):
        if self.proc is None:
            return
        subprocess.run(["fusermount3", "-u", "-z", os.fspath(self.mount)], capture_output=True, timeout=30)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def close(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


# ------------------------------------------------------------------------------------------- driver

def run_child(args, what: str, extra: list[str] = ()) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), what, "--mount", args.mount, "--spec", args.spec,
           "--namespace", args.namespace, "--prefix-tokens", str(args.prefix_tokens), "--tail-a",
           str(args.tail_a), "--tail-b", str(args.tail_b), "--generate", str(args.generate), *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / (1 << 20):.2f}"


def print_part_a(prefill: dict, serves: list[tuple[str, dict]]) -> None:
    print(f"\nPart A: prompt of {prefill['prompt_tokens']} tokens prefilled in {prefill['prefill_s']:.2f} s "
          f"(pid {prefill['pid']}); {prefill['blocks_written']} blocks of {mib(prefill['block_bytes'])} MiB "
          f"saved in {prefill['save_s']:.3f} s")
    print("| serve (separate process) | prompt | loaded | computed | TTFT warehouse | TTFT recompute | "
          "speedup | MiB DRAM map / DRAM file / NVMe | max abs logit diff | tokens equal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, s in serves:
        w, b = s["warehouse"], s["warehouse"]["bytes"]
        print(f"| {label} | {s['prompt_tokens']} | {w['loaded_tokens']} | {w['computed_tokens']} | "
              f"{w['ttft_s'] * 1000:.0f} ms | {s['recompute']['ttft_s'] * 1000:.0f} ms | {s['speedup']:.1f}x | "
              f"{mib(b['dram_map'])} / {mib(b['dram_file'])} / {mib(b['nvme'])} | "
              f"{s['max_abs_logit_diff']:.2e} | {s['tokens_equal']} |")


def print_part_b(res: dict) -> None:
    print(f"\nPart B: {res['per_turn'] and len(res['rows']) // len(res['per_turn'])} sessions x "
          f"{len(res['per_turn'])} turns; prefill tokens computed with the warehouse: "
          f"{res['total_computed_with']} of {res['total_prompt_tokens']} "
          f"({100 * (1 - res['total_computed_with'] / res['total_prompt_tokens']):.0f}% saved); "
          f"answers differing from recompute: {res['answer_mismatches']}")
    print("| turn | prompt tokens (mean) | computed with warehouse (mean) | prefill saved | TTFT with (median) | "
          "TTFT without (median) | MiB DRAM map / DRAM file / NVMe |")
    print("|---|---|---|---|---|---|---|")
    for t in res["per_turn"]:
        b = t["bytes"]
        print(f"| {t['turn']} | {t['prompt_tokens']:.0f} | {t['computed_with']:.0f} | {100 * t['saved_share']:.0f}% | "
              f"{t['ttft_with_s'] * 1000:.0f} ms | {t['ttft_without_s'] * 1000:.0f} ms | "
              f"{mib(b['dram_map'])} / {mib(b['dram_file'])} / {mib(b['nvme'])} |")


def plot(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pt = res["per_turn"]
    x = [t["turn"] for t in pt]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(x, [t["ttft_without_s"] * 1000 for t in pt], "o-", label="without warehouse (full prefill)")
    a1.plot(x, [t["ttft_with_s"] * 1000 for t in pt], "o-", label="with warehouse")
    a1.set_xticks(x)
    a1.set_xlabel("turn")
    a1.set_ylabel("TTFT, median over sessions (ms)")
    a1.set_title(f"{len(res['rows']) // len(pt)} sessions, best of {res.get('repeat', 1)} runs per request",
                 fontsize=9)
    a1.set_ylim(bottom=0)
    a1.legend()
    a2.bar(x, [t["prompt_tokens"] for t in pt], label="prompt tokens", color="#bbb")
    a2.bar(x, [t["computed_with"] for t in pt], label="computed with warehouse", color="#d62728")
    a2.set_xticks(x)
    a2.set_xlabel("turn")
    a2.set_ylabel("tokens (mean over sessions)")
    a2.legend()
    fig.suptitle("Agentic sessions: each turn extends the prompt with the answer and a tool output")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cmd_demo(args) -> int:
    own = None
    if args.mount is None:
        binary = os.environ.get("TWFS_BIN") or os.fspath(REPO / ".build" / "release" / "twfs")
        if not os.access(binary, os.X_OK):
            print(f"no twfs at {binary}: build it (swift build -c release --product twfs) or set TWFS_BIN",
                  file=sys.stderr)
            return 2
        own = OwnWarehouse(binary, args.dram)
        own.start()
        args.mount = os.fspath(own.mount)
    try:
        print(f"model '{args.spec}' ({SPECS[args.spec]}), mount {args.mount}, load average "
              f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        results = {"spec": args.spec}
        if not args.skip_a:
            prefill = run_child(args, "prefill")
            serves = [("right after the save", run_child(args, "serve"))]
            if own is not None:      # a new daemon starts with an empty DRAM tier; the blocks stay on NVMe
                own.stop()
                own.start()
                serves.append(("daemon restarted: cold (no prefetch)", run_child(args, "serve", ["--no-prefetch"])))
                serves.append(("again: warm", run_child(args, "serve")))
            print_part_a(prefill, serves)
            results["a"] = dict(prefill=prefill, serves=serves)
            bad = [label for label, s in serves if not s["tokens_equal"] or s["max_abs_logit_diff"] > 1e-4]
            if bad:
                print(f"MISMATCH against full recompute in: {bad}", file=sys.stderr)
                return 1
        if not args.skip_b:
            res = run_child(args, "agentic", [
                "--sessions", str(args.sessions), "--turns", str(args.turns), "--system-tokens",
                str(args.system_tokens), "--user-tokens", str(args.user_tokens), "--answer-tokens",
                str(args.answer_tokens), "--repeat", str(args.repeat), "--tool-tokens", *map(str, args.tool_tokens)])
            print_part_b(res)
            results["b"] = res
            if args.plot:
                plot(res, args.plot)
                print(f"plot: {args.plot}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        if own is not None:
            own.close()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="demo", choices=["demo", "prefill", "serve", "agentic"])
    ap.add_argument("--mount", help="a running twfs mount (default: start one on temporary directories)")
    ap.add_argument("--dram", default="1G", help="DRAM tier of the daemon the demo starts")
    ap.add_argument("--spec", default="small", choices=sorted(SPECS))
    ap.add_argument("--namespace", default="demo-llama@tp0")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--prefix-tokens", type=int, default=2048)
    ap.add_argument("--tail-a", type=int, default=300)
    ap.add_argument("--tail-b", type=int, default=200)
    ap.add_argument("--generate", type=int, default=16)
    ap.add_argument("--all-logits", action="store_true", help="compare the logits of every computed position")
    ap.add_argument("--no-prefetch", action="store_true", help="send no prefetch hint at lookup")
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--system-tokens", type=int, default=512)
    ap.add_argument("--user-tokens", type=int, default=256)
    ap.add_argument("--answer-tokens", type=int, default=8)
    ap.add_argument("--tool-tokens", type=int, nargs=2, default=(192, 384))
    ap.add_argument("--repeat", type=int, default=2, help="agentic: best of this many runs per request")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument("--plot", help="write part B's plot here (PNG)")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args(argv)
    if args.what == "demo":
        return cmd_demo(args)
    if args.mount is None:
        ap.error(f"{args.what} needs --mount")
    res = {"prefill": cmd_prefill, "serve": cmd_serve, "agentic": cmd_agentic}[args.what](args)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
