"""Helpers of the engine tests: running engine_run.py, comparing outputs, walking stored chains."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLIENT = REPO / "clients" / "python"
ENGINE_RUN = HERE / "engine_run.py"
BLOCK = 32                 # the engines' block size (CPU attention needs a multiple of 32)
LOGPROB_TOL = 1e-4         # logprobs of a served prefix against a recompute (they are bitwise equal here)


def engine_env() -> dict:
    env = dict(os.environ)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(
        [os.fspath(CLIENT), os.fspath(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_engine_process(job: dict, workdir: Path, timeout: float = 300) -> dict:
    """Run one engine process for `job` (see engine_run.py) and return its JSON result (+ "log")."""
    workdir = Path(workdir)
    n = len(list(workdir.glob("job*.json"))) + 1
    path = workdir / f"job{n}.json"
    path.write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, os.fspath(ENGINE_RUN), os.fspath(path)], env=engine_env(),
                          capture_output=True, text=True, timeout=timeout)
    tail = f"\n--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, f"engine process failed ({proc.returncode}){tail}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"engine printed no result{tail}"
    out = json.loads(lines[-1])
    out["log"] = proc.stdout[-20000:]
    return out


def tokens(rng: random.Random, n: int) -> list[int]:
    """n random token ids of the tiny model's words (ids 4..1019)."""
    return [rng.randrange(4, 1020) for _ in range(n)]


def assert_same_outputs(got: list[dict], want: list[dict], what: str) -> float:
    """Greedy tokens equal, top logprobs equal within LOGPROB_TOL; returns the largest difference."""
    assert len(got) == len(want), what
    worst = 0.0
    for k, (g, w) in enumerate(zip(got, want)):
        assert g["tokens"] == w["tokens"], f"{what}: request {k} generated {g['tokens']}, recompute {w['tokens']}"
        assert len(g["logprobs"]) == len(w["logprobs"]) == len(g["tokens"])
        for step, (a, b) in enumerate(zip(g["logprobs"], w["logprobs"])):
            assert set(a) == set(b), f"{what}: request {k} step {step}: top tokens {sorted(a)} vs {sorted(b)}"
            for tok in a:
                d = abs(a[tok] - b[tok])
                worst = max(worst, d)
                assert d <= LOGPROB_TOL, f"{what}: request {k} step {step} token {tok}: {a[tok]} vs {b[tok]}"
    return worst


def stored_blocks(ns_dir: Path) -> dict[str, Path]:
    """name -> path of every block file in a namespace (canonical NS/hh/HASH)."""
    return {p.name: p for d in ns_dir.iterdir() if d.is_dir() for p in d.iterdir()}


def parent_of(path: Path):
    try:
        return os.getxattr(path, "user.tw.parent").decode()
    except OSError:
        return None


def chains(ns_dir: Path) -> list[list[str]]:
    """The stored blocks as chains from each root (a block without user.tw.parent), following the single
    child of each block; asserts that every parent link names a stored block and that no block has two
    children (prompts with distinct prefixes)."""
    blocks = stored_blocks(ns_dir)
    parents = {n: parent_of(p) for n, p in blocks.items()}
    children: dict = {}
    for n, par in parents.items():
        assert par is None or par in blocks, f"{n}: user.tw.parent {par} is not a stored block"
        children.setdefault(par, []).append(n)
    out = []
    for root in sorted(children.get(None, [])):
        chain = [root]
        while chain[-1] in children:
            kids = children[chain[-1]]
            assert len(kids) == 1, f"block {chain[-1]} has {len(kids)} children"
            chain.append(kids[0])
        out.append(chain)
    return out


def namespace_dir(mount: Path) -> Path:
    dirs = [p for p in Path(mount).iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(dirs) == 1, f"expected one namespace in {mount}, found {[d.name for d in dirs]}"
    return dirs[0]
