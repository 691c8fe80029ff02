#!/usr/bin/env python3
"""Prefetcher and DRAM-policy benchmark: `twctl replay` of the Mooncake trace and three synthetic traces
against fresh twfs mounts, with hints on and off, at the targets' capacities (issue 5):

  - NVMe capacity at least the trace's footprint (here 1.5x the footprint in records, so the store's
    watermarks and record headers never evict): the prefix hit ratio should be >= 99% of the ideal;
  - DRAM at 10% of the footprint, hints on, a 50 ms lead: >= 95% of hits from DRAM;
  - hints off: the DRAM hit ratio within 10% of Belady's at the same capacity (dram_of_belady >= 0.9).

Every run gets a new store and mount; the same settings (daemon defaults, --block-bytes, --speed,
--concurrency, --lead-ms) are used for every trace. Needs root and a built twfs/twctl
(swift build -c release). Prints a table and, with --json FILE, every replay's JSON.

  python3 Tools/bench/replay_bench.py                       # the four traces, both hint settings
  python3 Tools/bench/replay_bench.py --traces mooncake     # one
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
TWFS = Path(os.environ.get("TWFS_BIN", REPO / ".build/release/twfs"))
TWCTL = Path(os.environ.get("TWCTL_BIN", TWFS.parent / "twctl"))
# The project's development trace (a Mooncake-format serving trace, not part of the repository); give
# another with --mooncake, or leave "mooncake" out of --traces.
MOONCAKE = Path(os.environ.get("TW_MOONCAKE_TRACE", REPO.parent / "shared/traces/mooncake_synthetic_trace.jsonl"))
KiB, MiB = 1024, 1024 * 1024


def trace_stats(path: Path) -> dict:
    out = subprocess.run([TWCTL, "trace", "stats", path, "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def replay(trace: Path, block_bytes: int, hints: bool, args) -> dict:
    stats = trace_stats(trace)
    footprint = stats["unique_blocks"] * block_bytes
    record = block_bytes + 4 * KiB                   # a record's header page
    capacity = max(256 * MiB, int(stats["unique_blocks"] * record * 1.5))
    dram_data = int(footprint * args.dram_share)
    dram = dram_data + dram_data // 100 + 64 * KiB + 4 * KiB   # the table: 0.8% of the data, 64 KiB at least
    dram = max(dram, 8 * MiB)     # twfs's smallest tier
    work = Path(tempfile.mkdtemp(prefix="tw-replay-"))
    mnt, store = work / "mnt", work / "store"
    mnt.mkdir()
    store.mkdir()
    daemon = subprocess.Popen([TWFS, mnt, "--store", store, "--capacity", str(capacity), "--dram", str(dram), "-f"], stdout=subprocess.DEVNULL, stderr=open(work / "twfs.log", "w"))
    try:
        for _ in range(300):
            if (mnt / ".tw/status").exists():
                break
            if daemon.poll() is not None:
                break
            time.sleep(0.1)
        else:
            daemon.poll()
        if not (mnt / ".tw/status").exists():
            log = (work / "twfs.log").read_text(errors="replace")[-2000:]
            state = f"exited with {daemon.returncode}" if daemon.returncode is not None else "still running after 30 s"
            raise RuntimeError(f"twfs did not mount ({state}); its log ends:\n{log}")
        cmd = [TWCTL, "replay", mnt, trace, "--block-bytes", str(block_bytes), "--speed", str(args.speed),
               "--concurrency", str(args.concurrency), "--lead-ms", str(args.lead_ms), "--hints", "on" if hints else "off", "--json"]
        print("$ " + " ".join(map(str, cmd)), file=sys.stderr, flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if r.returncode not in (0, 1) or not r.stdout.strip():
            raise RuntimeError(f"replay failed ({r.returncode}): {r.stderr}")
        result = json.loads(r.stdout)
        result["footprint_bytes"] = footprint
        result["nvme_capacity_bytes"] = capacity
        return result
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traces", default="mooncake,agentic,chat,rag")
    p.add_argument("--requests", type=int, default=2000, help="requests of each synthetic trace")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--block-bytes", type=int, default=16 * KiB)
    p.add_argument("--speed", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--lead-ms", type=float, default=50)
    p.add_argument("--dram-share", type=float, default=0.10, help="DRAM tier as a share of the footprint")
    p.add_argument("--json", help="write every replay's JSON here")
    p.add_argument("--mooncake", type=Path, default=MOONCAKE, help="the Mooncake-format trace for 'mooncake'")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("replay_bench needs root (it mounts twfs)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="tw-traces-"))
    traces = {}
    for t in args.traces.split(","):
        if t == "mooncake":
            if not args.mooncake.exists():
                print(f"skipping the mooncake trace: {args.mooncake} does not exist (give --mooncake PATH)", file=sys.stderr)
                continue
            traces[t] = args.mooncake
        else:
            path = tmp / f"{t}.jsonl"
            with open(path, "w") as f:
                subprocess.run([TWCTL, "trace", "generate", t, "--requests", str(args.requests), "--seed", str(args.seed)],
                               stdout=f, check=True)
            traces[t] = path
    print(f"$ {' '.join(sys.argv)}")
    print(f"blocks of {args.block_bytes // KiB} KiB, speed {args.speed}, concurrency {args.concurrency}, "
          f"lead {args.lead_ms} ms, DRAM {args.dram_share:.0%} of the footprint, NVMe 1.5x the footprint\n")
    print(f"{'trace':10} {'hints':5} {'hit ratio':>9} {'of ideal':>8} {'DRAM share':>10} {'DRAM ratio':>10} "
          f"{'Belady DRAM':>11} {'of Belady':>9} {'DRAM p99 us':>11} {'NVMe p99 us':>11} {'pf used':>8} {'pf wasted':>9} {'errors':>6}")
    results = []
    for name, path in traces.items():
        for hints in (True, False):
            r = replay(path, args.block_bytes, hints, args)
            r["trace_name"] = name
            results.append(r)
            print(f"{name:10} {'on' if hints else 'off':5} {r['prefix_hit_ratio']:9.3f} {r['hit_ratio_of_ideal']:8.3f} "
                  f"{r['dram_hit_share']:10.3f} {r['dram_hit_ratio']:10.3f} {r['belady_hit_ratio_dram']:11.3f} "
                  f"{r['dram_of_belady']:9.3f} {r['dram_read_p99_us']:11.1f} {r['nvme_read_p99_us']:11.1f} "
                  f"{r['prefetch_used']:8d} {r['prefetch_wasted']:9d} {r['errors']:6d}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
