#!/usr/bin/env python3
"""Listing a namespace through the mount: names per second of a whole-namespace walk (`os.scandir`
down every directory, as `find`, `ls -R`, `rsync` and `rm -rf` do), with the page cache dropped first,
against the same tree on ext4 on the same disk, all in one run.

    python3 Tools/bench/listing_bench.py                        # 200,000 blocks of 16 KiB, two rounds
    python3 Tools/bench/listing_bench.py --compare-twfs OLD     # also an older build, alternating
    python3 Tools/bench/listing_bench.py --stat                 # and a stat of every entry (ls -l, rsync)

The blocks are written once through a twfs mount (4 writer threads, canonical 32-hex names, the flat
layout engines use); every listing round then mounts that store afresh, drops the page cache
(`echo 3 > drop_caches`, so the records' headers come from the disk) and walks the namespace. A block's
name lives in its record's header (the index keeps a hash), so each name listed is a read of the
disk: the figure to compare is also fio's 4 KiB random-read rate at depth 64, printed beside it.
ext4 holds the same names as empty files in one directory. Needs root (mounting, drop_caches).
Each daemon is always unmounted and killed (`fs_bench.Daemon`), pass or fail.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fs_bench as fb  # noqa: E402
from fs_bench import Daemon, Watchdog  # noqa: E402


def walk(top: str, stat: bool) -> int:
    """Names under `top`, every directory listed once (entries' types come with the listing); with
    `stat`, each entry's attributes too, as `ls -l`, `rsync` and `tar` ask for them."""
    count, stack = 0, [top]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                count += 1
                if stat:
                    e.stat(follow_symlinks=False)
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return count


def timed_walk(top: str, stat: bool) -> tuple[int, float]:
    os.sync()
    if not fb.drop_caches(3):
        raise fb.BenchError("cannot drop the page cache (needs root)")
    t0 = time.perf_counter()
    n = walk(top, stat)
    return n, time.perf_counter() - t0


def fio_randread_iops(work: Path) -> float | None:
    if not shutil.which("fio"):
        return None
    path = work / "fio-randread"
    try:
        out = subprocess.run(["fio", "--name=r", f"--filename={path}", "--size=2G", "--direct=1", "--rw=randread",
                              "--bs=4k", "--iodepth=64", "--ioengine=libaio", "--runtime=8", "--time_based",
                              "--output-format=json"], capture_output=True, text=True, check=True).stdout
        return float(json.loads(out)["jobs"][0]["read"]["iops"])
    finally:
        path.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twfs", default=".build/release/twfs", help="the daemon under test")
    ap.add_argument("--compare-twfs", help="a second build, listed in alternation with --twfs (same store)")
    ap.add_argument("--dir", default="/var/tmp/tw-listing-bench", help="scratch directory on the disk under test")
    ap.add_argument("--blocks", type=int, default=200_000)
    ap.add_argument("--block-size", default="16K")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--stat", action="store_true", help="also stat every entry (ls -l, rsync, tar)")
    fb.add_mount_options(ap, phase_timeout=1800)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (mounting, drop_caches)", file=sys.stderr)
        return 2
    size = fb.parse_size(args.block_size)
    work = Path(args.dir)
    fb.rmtree(work)
    (work / "store").mkdir(parents=True)
    builds = {"twfs": Path(args.twfs).resolve()}
    if args.compare_twfs:
        builds["compare"] = Path(args.compare_twfs).resolve()
    names = [fb.block_hash(i) for i in range(args.blocks)]
    capacity = fb.fmt_capacity(args.blocks * (size + 8192) * 2 + (1 << 30))
    mnt = work / "mnt"

    def daemon(build: Path, label: str) -> Daemon:
        return Daemon(label, [str(build), str(mnt), "--store", str(work / "store"), "--capacity", capacity, "-f"],
                      mnt, work / f"{label}.log", args.mount_timeout)

    figures: dict[str, list[float]] = {k: [] for k in builds}
    figures["ext4"] = []
    payload = b"\0" * size
    d = daemon(builds["twfs"], "twfs-write")
    try:
        d.start()
        with Watchdog(d, args.phase_timeout, "writing the blocks"):
            ns = mnt / "bench"
            ns.mkdir()
            t0 = time.perf_counter()

            def writer(t: int) -> None:
                for i in range(t, len(names), 4):
                    fb.write_new_file(f"{ns}/{names[i]}", memoryview(payload))
            threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            fb.log(f"wrote {len(names)} blocks of {args.block_size} in {time.perf_counter() - t0:.1f} s")
    finally:
        d.stop()
    ext4 = work / "ext4"
    ext4.mkdir()
    for n in names:
        os.close(os.open(ext4 / n, os.O_CREAT | os.O_WRONLY, 0o644))
    errors = []
    for r in range(args.rounds):
        for label, build in builds.items():
            d = daemon(build, label)
            try:
                d.start()
                with Watchdog(d, args.phase_timeout, f"listing with {label}"):
                    n, secs = timed_walk(str(mnt / "bench"), args.stat)
                if n != len(names):
                    errors.append(f"{label}: listed {n} names of {len(names)}")
                figures[label].append(n / secs)
                fb.log(f"round {r + 1} {label} ({build}): {n} names in {secs:.2f} s, {n / secs:.0f} names/s")
            finally:
                d.stop()
        n, secs = timed_walk(str(ext4), args.stat)
        figures["ext4"].append(n / secs)
        fb.log(f"round {r + 1} ext4: {n} names in {secs:.2f} s, {n / secs:.0f} names/s")
    iops = fio_randread_iops(work)
    if not args.keep:
        fb.rmtree(work)
    best = {k: max(v) for k, v in figures.items() if v}
    what = "a walk with a stat of every entry" if args.stat else "a walk"
    print(f"\n{args.blocks} blocks of {args.block_size}, {args.rounds} rounds, {what}, page cache dropped before each (best round):")
    for k, v in best.items():
        extra = f"  ({v / iops:.2f} of fio's 4 KiB random reads at depth 64, {iops:.0f}/s)" if iops and k != "ext4" else ""
        print(f"  {k:8} {v:10.0f} names/s  {v / best['ext4']:.3f} of ext4{extra}")
    if args.json:
        args.json.write_text(json.dumps({"blocks": args.blocks, "block_size": size, "stat": args.stat, "names_per_s": figures,
                                               "fio_randread_4k_iops": iops, "builds": {k: str(v) for k, v in builds.items()},
                                               "errors": errors}, indent=1))
    for e in errors:
        print("error:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
