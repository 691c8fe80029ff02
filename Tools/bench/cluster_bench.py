#!/usr/bin/env python3
"""Cluster-tier benchmark (issue 9), one run on a throwaway single-host Ceph cluster:

  1. `rados bench` on the pool: 1 MiB objects written for --seconds, then read back sequentially
     (one op in flight, `-t 1`, and 8 in flight): the cluster's own figures;
  2. cross-node hits: N blocks of 1 MiB written on node A and published; node B reads each once through
     its mount (a local miss: fetched from the pool, verified, stored, served): MiB/s and latency
     percentiles, against (1) at one op in flight; then another N blocks read by 8 threads at once on B,
     against (1) at 8 in flight;
  3. local hits with the remote tier on: B reads the same blocks again (now in its own tiers, page cache
     dropped before each read) against a node C without --cluster reading, a second time too, the same
     blocks it wrote itself: the remote tier must not slow local hits.

Needs root, /dev/fuse, the Ceph packages (Tools/install-deps.sh) and a built twfs (swift build -c release).

  python3 Tools/bench/cluster_bench.py --json /tmp/cluster.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "IntegrationTests" / "ceph"))
sys.path.insert(0, str(REPO / "IntegrationTests" / "mount"))

from ceph_cluster import CephCluster  # noqa: E402
from test_cluster_tier import POOL, Node, wait_for  # noqa: E402
from twfs_util import block_hash, canonical, write_block  # noqa: E402

MiB = 1 << 20


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] if s else 0.0


def read_into(path: str, view: memoryview) -> int:
    """open, one readv into `view`, close: the bytes read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.readv(fd, [view])
    finally:
        os.close(fd)


def timed_reads(paths: list[str], size: int, expect: dict[str, bytes], drop_cache: bool = True) -> list[float]:
    """Reads each file whole into one buffer allocated beforehand, as an engine reads a block of known size
    into its own memory (and `rados bench` into its buffer): timed from open to the last byte; returns
    seconds per read; checks the bytes. (With `f.read()`, Python allocated and faulted in a fresh buffer
    for each block: about 1 ms of a 1.6 ms read of a 1 MiB DRAM-resident block on this VM.) `drop_cache`
    first drops the file's page cache (an untimed open: not for first reads, whose open is what fetches
    from the pool)."""
    out = []
    buffer = bytearray(size)
    view = memoryview(buffer)
    for p in paths:
        if drop_cache:
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        t = time.perf_counter()
        n = read_into(p, view)
        out.append(time.perf_counter() - t)
        assert n == size and buffer == expect[p.rsplit("/", 1)[1]], f"wrong bytes in {p}"
    return out


def parallel_reads(paths: list[str], size: int, expect: dict[str, bytes], threads: int) -> float:
    """Reads every file whole, `threads` readers at once, each into its own buffer allocated beforehand;
    checks the bytes; returns the wall-clock seconds of the whole set."""
    import threading
    lock = threading.Lock()
    todo = list(paths)
    errors: list[str] = []

    def reader() -> None:
        buffer = bytearray(size)
        view = memoryview(buffer)
        while True:
            with lock:
                if not todo:
                    return
                p = todo.pop()
            n = read_into(p, view)
            if n != size or buffer != expect[p.rsplit("/", 1)[1]]:
                with lock:
                    errors.append(p)

    workers = [threading.Thread(target=reader) for _ in range(threads)]
    t = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t
    assert not errors, f"wrong bytes in {errors[:3]}"
    return seconds


def rados_bench(cluster: CephCluster, seconds: int, threads: int) -> dict:
    w = cluster.rados("-p", POOL, "bench", str(seconds), "write", "-b", str(MiB), "-t", str(threads), "--no-cleanup",
                      timeout=seconds * 4 + 60)
    r = cluster.rados("-p", POOL, "bench", str(seconds), "seq", "-t", str(threads), timeout=seconds * 4 + 60)
    cluster.rados("-p", POOL, "cleanup", timeout=120)

    def field(text, name: str) -> float:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        m = re.search(rf"^{re.escape(name)}:\s+([\d.]+)", text, re.M)
        return float(m.group(1)) if m else 0.0
    return {"threads": threads, "write_mib_s": field(w.stdout, "Bandwidth (MB/sec)"),
            "read_mib_s": field(r.stdout, "Bandwidth (MB/sec)"),
            "read_avg_latency_ms": field(r.stdout, "Average Latency(s)") * 1000,
            "read_max_latency_ms": field(r.stdout, "Max latency(s)") * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=5, help="rados bench duration per phase")
    ap.add_argument("--trace", help="also replay this trace split across nodes A and B (alternate requests) "
                    "and on one node alone, and compare hit ratios")
    ap.add_argument("--replay-args", default="--block-bytes 16K --speed 10 --concurrency 8 --lead-ms 50",
                    help="twctl replay options for --trace")
    ap.add_argument("--share", default="async", help="twfs --share of nodes A and B (async or sync)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("cluster_bench needs root", file=sys.stderr)
        return 2
    print(f"$ {' '.join(sys.argv)}")
    base = Path(tempfile.mkdtemp(prefix="tw-cluster-bench-"))
    cluster = CephCluster(base / "ceph")
    nodes = []
    result: dict = {}
    try:
        cluster.start()
        cluster.create_pool(POOL)
        result["rados_bench_1"] = rados_bench(cluster, args.seconds, 1)
        result["rados_bench_8"] = rados_bench(cluster, args.seconds, 8)
        a = Node(base, "a", cluster.conf, ["--capacity", "2G", "--dram", "64M", "--share", args.share])
        b = Node(base, "b", cluster.conf, ["--capacity", "2G", "--dram", "64M", "--share", args.share])
        nodes += [a, b]
        c_base = base / "c"
        c_base.mkdir()
        # Node C: the same daemon without the remote tier.
        import subprocess
        from twfs_util import lazy_unmount, proc_mounts_types
        c_mount, c_store = c_base / "mnt", c_base / "store"
        c_mount.mkdir()
        c = subprocess.Popen([str(Path(os.environ.get("TWFS_BIN", REPO / ".build/release/twfs"))), str(c_mount), "--store", str(c_store),
                              "--capacity", "2G", "--dram", "64M", "-f"],
                             stdout=open(c_base / "log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: "fuse.twfs" in proc_mounts_types(c_mount), 20, "node C to mount")
        for m in (a.mount, b.mount, c_mount):
            os.mkdir(m / "kv", 0o755)
        blocks = {block_hash("cluster-bench", os.getpid(), i, length=32): random.Random(i).randbytes(MiB) for i in range(args.blocks)}
        # A second set, for B's readers in parallel (fetched once each, like the first).
        parallel = {block_hash("cluster-bench-8", os.getpid(), i, length=32): random.Random(-1 - i).randbytes(MiB) for i in range(args.blocks)}
        before = a.remote()["published"]
        for name, data in blocks.items():
            write_block(canonical(a.mount / "kv", name), data)
            write_block(canonical(c_mount / "kv", name), data)
        for name, data in parallel.items():
            write_block(canonical(a.mount / "kv", name), data)
        wait_for(lambda: a.remote()["published"] >= before + len(blocks) + len(parallel), 180, "A to publish every block")
        # Cross-node: every read on B is a local miss served from the pool.
        b_paths = [canonical(b.mount / "kv", n) for n in blocks]
        cross = timed_reads(b_paths, MiB, blocks, drop_cache=False)
        rb = b.remote()
        fetched = rb["fetched"]
        # B's own split of a cross-node hit: the whole fetch and its parts (the RADOS read, verifying the
        # record, the put into B's store, the copy into B's DRAM tier); the rest of the timed read is the
        # FUSE lookup, open and read.
        fetch_split = {k: rb[k] for k in ("fetch_ms", "cluster_read_ms", "fetch_verify_ms", "fetch_store_ms", "fetch_tier_ms") if k in rb}
        # Local hits, remote tier on (B, its own copies now) and off (C). C reads its blocks once first
        # (untimed), as B just did: both then time a second read of each block, which twfs serves
        # differently from a first one (docs/fuse.md "Reading").
        c_paths = [canonical(c_mount / "kv", n) for n in blocks]
        timed_reads(c_paths, MiB, blocks, drop_cache=False)
        local_on = timed_reads(b_paths, MiB, blocks)
        local_off = timed_reads(c_paths, MiB, blocks)
        # Cross-node hits with 8 readers at once on B (after the local phase: these fill B's DRAM tier),
        # against `rados bench seq -t 8`.
        parallel_seconds = parallel_reads([canonical(b.mount / "kv", n) for n in parallel], MiB, parallel, threads=8)
        def summary(t: list[float]) -> dict:
            return {"mib_s": len(t) / sum(t), "p50_ms": pct(t, 0.5) * 1000, "p99_ms": pct(t, 0.99) * 1000}
        result.update({"blocks": len(blocks), "block_bytes": MiB, "b_fetched": fetched, "b_fetch_split": fetch_split,
                       "cross_node": summary(cross), "local_remote_on": summary(local_on), "local_remote_off": summary(local_off),
                       "cross_node_8_readers": {"mib_s": len(parallel) / parallel_seconds, "seconds": parallel_seconds}})
        if args.trace:
            import shlex
            twctl = str(Path(os.environ.get("TWFS_BIN", REPO / ".build/release/twfs")).parent / "twctl")
            common = shlex.split(args.replay_args) + ["--hints", "on", "--json"]
            two = json.loads(subprocess.run([twctl, "replay", str(a.mount), args.trace, "--peer", str(b.mount), *common],
                                            check=True, capture_output=True, text=True).stdout)
            one = json.loads(subprocess.run([twctl, "replay", str(c_mount), args.trace, *common],
                                            check=True, capture_output=True, text=True).stdout)
            keep = ("published", "fetched", "misses", "negative_hits", "dropped", "publish_failures", "publish_lag_ms")
            remote_figures = {n: {k: node.remote().get(k) for k in keep} for n, node in (("a", a), ("b", b))}
            result["replay"] = {"trace": args.trace, "args": args.replay_args, "two_nodes": two, "one_node": one,
                                "remote": remote_figures}
        c.terminate()
        c.wait(timeout=20)
        lazy_unmount(c_mount)
    finally:
        for n in nodes:
            n.close()
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)
    r1, r8 = result["rados_bench_1"], result["rados_bench_8"]
    x, on, off = result["cross_node"], result["local_remote_on"], result["local_remote_off"]
    print(f"\n{result['blocks']} blocks of 1 MiB; B fetched {result['b_fetched']} from the pool")
    split = result["b_fetch_split"]
    print(f"B's fetch p50 {split['fetch_ms']['p50']:.2f} ms, of which the RADOS read {split['cluster_read_ms']['p50']:.2f} ms "
          f"({split['cluster_read_ms']['p50'] / max(split['fetch_ms']['p50'], 1e-9):.2f}); cross-node read p50 "
          f"{result['cross_node']['p50_ms']:.2f} ms")
    if "fetch_store_ms" in split:
        print(f"  p50 of the fetch's parts: RADOS read {split['cluster_read_ms']['p50']:.2f}, verify {split['fetch_verify_ms']['p50']:.2f}, "
              f"store {split['fetch_store_ms']['p50']:.2f}, DRAM tier {split['fetch_tier_ms']['p50']:.2f} ms; the mount's part of the "
              f"read (lookup reply, open, read, close) {result['cross_node']['p50_ms'] - split['fetch_ms']['p50']:.2f} ms")
    print()
    print(f"{'measure':46} {'value':>10} {'baseline':44} {'value':>10} {'ratio':>6}")
    print(f"{'cross-node hit, MiB/s (B reads, 1 at a time)':46} {x['mib_s']:10.1f} {'rados bench seq, 1 in flight, MiB/s':44} {r1['read_mib_s']:10.1f} {x['mib_s'] / max(r1['read_mib_s'], 1e-9):6.2f}")
    print(f"{'cross-node hit, p50 / p99 ms':46} {x['p50_ms']:5.2f}/{x['p99_ms']:5.2f} {'rados bench seq avg / max latency ms':44} {r1['read_avg_latency_ms']:5.2f}/{r1['read_max_latency_ms']:5.2f}")
    x8 = result["cross_node_8_readers"]
    print(f"{'cross-node hit, MiB/s (B reads, 8 at a time)':46} {x8['mib_s']:10.1f} {'rados bench seq, 8 in flight, MiB/s':44} {r8['read_mib_s']:10.1f} {x8['mib_s'] / max(r8['read_mib_s'], 1e-9):6.2f}")
    print(f"{'local hit with the remote tier on, MiB/s':46} {on['mib_s']:10.1f} {'same daemon without --cluster, MiB/s':44} {off['mib_s']:10.1f} {on['mib_s'] / off['mib_s']:6.2f}")
    print(f"{'local hit, p99 ms, remote tier on / off':46} {on['p99_ms']:10.2f} {'':44} {off['p99_ms']:10.2f}")
    if "replay" in result:
        one, two = result["replay"]["one_node"], result["replay"]["two_nodes"]
        print(f"\nreplay of {args.trace} ({args.replay_args}):")
        print(f"  two nodes, alternate requests: prefix hit ratio {two['prefix_hit_ratio']:.4f}, DRAM share {two['dram_hit_share']:.3f}, errors {two['errors']}")
        print(f"  one node (no cluster):         prefix hit ratio {one['prefix_hit_ratio']:.4f}, DRAM share {one['dram_hit_share']:.3f}, errors {one['errors']}")
        print(f"  ratio {two['prefix_hit_ratio'] / max(one['prefix_hit_ratio'], 1e-9):.4f} (ideal {one['ideal_hit_ratio']:.4f})")
        for n, figures in result["replay"]["remote"].items():
            print(f"  node {n.upper()}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
