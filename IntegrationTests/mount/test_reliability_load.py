"""Load (issue 7): 64 reader threads in 4 processes plus 8 writer threads on one mount, for a bounded time.

Readers (separate processes, 16 threads each) read whole blocks (checked by SHA-256) and random ranges
(checked against the recomputed pattern). Writers create new blocks (64 KiB..1 MiB) and read each back,
and, past a write budget, send duplicate creates (O_EXCL: EEXIST) and discarded overwrites. Reported:
operations per second, p50/p99 latency per kind, errors (must be 0), and the daemon's memory before and
after (anonymous RSS must not grow beyond a bound for its index and staging buffers; the DRAM tier is
shared memory and counted apart).

TW_REL_LOAD_SECONDS (default 30) sets the length; TW_REL_SEED the seed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest

from twfs_util import block_hash, canonical, errname, pattern, rss_kib, size_for, write_block

SECONDS = float(os.environ.get("TW_REL_LOAD_SECONDS", "30"))
SEED = int(os.environ.get("TW_REL_SEED") or random.SystemRandom().randrange(1 << 32))
READER_PROCS, READER_THREADS, WRITERS = 4, 16, 8
KiB, MiB = 1 << 10, 1 << 20
WRITE_BUDGET = 2048 * MiB
RSS_GROWTH_LIMIT_KIB = 64 * 1024      # index entries and staging buffers of 8 writers fit well inside

_READER = r"""
import hashlib, json, os, random, sys, threading, time
sys.path.insert(0, sys.argv[1])
from twfs_util import pattern
cfg = json.loads(sys.stdin.read())
names, deadline = cfg["blocks"], time.time() + cfg["seconds"]
lock = threading.Lock()
lat = {"read": [], "pread": []}
errors, nbytes = [], [0]
def run(tid):
    rnd = random.Random(cfg["seed"] * 1000 + tid)
    mine = {"read": [], "pread": []}
    got_bytes = 0
    while time.time() < deadline:
        path, size, digest, name = rnd.choice(names)
        t0 = time.perf_counter()
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if rnd.random() < 0.8:
                    parts = []
                    while True:
                        b = os.read(fd, 1 << 20)
                        if not b: break
                        parts.append(b)
                    data = b"".join(parts)
                    kind = "read"
                    ok = len(data) == size and hashlib.sha256(data).hexdigest() == digest
                else:
                    off = rnd.randrange(size); n = rnd.randrange(1, 128 * 1024)
                    data = os.pread(fd, n, off)
                    kind = "pread"
                    ok = data == pattern(name, min(n, size - off), off)
            finally:
                os.close(fd)
        except OSError as e:
            with lock: errors.append("%s: %s" % (path, e))
            continue
        mine[kind].append(time.perf_counter() - t0)
        got_bytes += len(data)
        if not ok:
            with lock: errors.append("wrong bytes in %s (%s)" % (path, kind))
    with lock:
        for k in lat: lat[k] += mine[k]
        nbytes[0] += got_bytes
ts = [threading.Thread(target=run, args=(i,)) for i in range(cfg["threads"])]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"lat": lat, "errors": errors[:20], "n_errors": len(errors), "bytes": nbytes[0]}))
"""


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def _fmt_lat(values: list[float]) -> str:
    return f"n={len(values)} p50={_pct(values, 50) * 1e3:.2f}ms p99={_pct(values, 99) * 1e3:.2f}ms"


@pytest.mark.timeout(int(SECONDS) + 300)
def test_64_readers_in_4_processes_and_8_writers_run_without_errors_or_memory_growth(warehouse_factory):
    print(f"\nload test: seed={SEED}, {SECONDS:.0f}s")
    rnd = random.Random(SEED)
    wh = warehouse_factory("--dram", "256M", capacity="4G", sync="batch")
    ns = wh.namespace("load")
    blocks = []
    for i in range(160):
        h = block_hash("load", SEED, i)
        data = pattern(h, size_for(h, 64 * KiB, MiB))
        write_block(canonical(ns, h), data)
        blocks.append([canonical(ns, h), len(data), hashlib.sha256(data).hexdigest(), h])
    pid = wh.proc.pid

    lock = threading.Lock()
    wlat = {"write": [], "readback": [], "dup": []}
    werrors: list[str] = []
    budget = [WRITE_BUDGET]
    written = [0]

    def writer(wid: int, phase: str, deadline: float):
        r = random.Random(SEED * 100 + wid)
        i = 0
        while time.monotonic() < deadline:
            with lock:
                have = budget[0] > 0
            t0 = time.perf_counter()
            try:
                if have:
                    h = block_hash("load-w", SEED, phase, wid, i)
                    i += 1
                    data = pattern(h, size_for(h, 64 * KiB, MiB))
                    write_block(canonical(ns, h), data, flags=os.O_CREAT | os.O_WRONLY | os.O_EXCL)
                    t1 = time.perf_counter()
                    with open(canonical(ns, h), "rb") as f:
                        ok = f.read() == data
                    t2 = time.perf_counter()
                    with lock:
                        budget[0] -= len(data)
                        written[0] += 1
                        wlat["write"].append(t1 - t0)
                        wlat["readback"].append(t2 - t1)
                        if not ok:
                            werrors.append(f"writer {wid}: read-back of {h} differs")
                else:
                    path = r.choice(blocks)[0]
                    if r.random() < 0.5:
                        try:
                            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                            with lock:
                                werrors.append(f"writer {wid}: O_EXCL create of committed {path} succeeded")
                        except FileExistsError:
                            pass
                    else:
                        with open(path, "wb") as f:
                            f.write(b"\x00" * 4096)
                    with lock:
                        wlat["dup"].append(time.perf_counter() - t0)
            except OSError as e:
                with lock:
                    werrors.append(f"writer {wid}: {errname(e.errno)} {e}")

    # Warm up (caches, staging buffers, worker threads), then take the "before" memory figure.
    warm_end = time.monotonic() + 3
    ts = [threading.Thread(target=writer, args=(w, "warm", warm_end), daemon=True) for w in range(WRITERS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    before = rss_kib(pid)
    st_before = wh.status()
    for k in wlat:
        wlat[k].clear()

    here = os.path.dirname(os.path.abspath(__file__))
    readers = []
    for p in range(READER_PROCS):
        proc = subprocess.Popen([sys.executable, "-c", _READER, here], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdin.write(json.dumps({"blocks": blocks, "seconds": SECONDS, "threads": READER_THREADS,
                                     "seed": SEED + p + 1}))
        proc.stdin.close()
        proc.stdin = None            # communicate() below only collects the output
        readers.append(proc)
    t0 = time.monotonic()
    deadline = t0 + SECONDS
    peak = dict(before)
    ts = [threading.Thread(target=writer, args=(w, "main", deadline), daemon=True) for w in range(WRITERS)]
    for t in ts:
        t.start()
    while time.monotonic() < deadline:
        time.sleep(1)
        now = rss_kib(pid)
        peak = {k: max(peak[k], now[k]) for k in now}
    for t in ts:
        t.join(60)
    results = []
    for proc in readers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"reader process failed: {err[-2000:]}"
        results.append(json.loads(out))
    elapsed = time.monotonic() - t0
    time.sleep(1)
    after = rss_kib(pid)
    st_after = wh.status()

    rlat = {"read": [], "pread": []}
    rerrors, rbytes = [], 0
    for res in results:
        for k in rlat:
            rlat[k] += res["lat"][k]
        rerrors += res["errors"]
        rbytes += res["bytes"]
    n_err = sum(r["n_errors"] for r in results) + len(werrors)
    reads = len(rlat["read"]) + len(rlat["pread"])
    writes = len(wlat["write"])
    all_lat = rlat["read"] + rlat["pread"] + wlat["write"] + wlat["readback"] + wlat["dup"]
    ops = len(all_lat)
    growth = after["RssAnon"] - before["RssAnon"]
    print(f"load: {READER_PROCS}x{READER_THREADS} readers + {WRITERS} writers for {elapsed:.1f}s, seed={SEED}\n"
          f"  ops/s total={ops / elapsed:.0f} (reads {reads / elapsed:.0f}/s, {rbytes / MiB / elapsed:.0f} MiB/s; "
          f"new blocks {writes / elapsed:.1f}/s; duplicate creates+discarded overwrites {len(wlat['dup']) / elapsed:.0f}/s)\n"
          f"  latency all ops: p50={_pct(all_lat, 50) * 1e3:.2f}ms p99={_pct(all_lat, 99) * 1e3:.2f}ms\n"
          f"  whole read {_fmt_lat(rlat['read'])}; pread {_fmt_lat(rlat['pread'])}; write {_fmt_lat(wlat['write'])}; "
          f"read-back {_fmt_lat(wlat['readback'])}; dup {_fmt_lat(wlat['dup'])}\n"
          f"  errors={n_err}\n"
          f"  daemon KiB before: {before}; peak: {peak}; after: {after}; RssAnon growth {growth} KiB\n"
          f"  blocks {st_before['blocks']} -> {st_after['blocks']}, DRAM tier resident "
          f"{st_after['dram_tier']['resident_bytes'] // MiB} MiB")
    assert n_err == 0, "\n".join((rerrors + werrors)[:20])
    assert reads > 0 and writes > 0
    assert growth < RSS_GROWTH_LIMIT_KIB, f"daemon anonymous memory grew by {growth} KiB under load"
    assert wh.alive()
