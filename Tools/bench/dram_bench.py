#!/usr/bin/env python3
"""DRAM-tier benchmark for TokenWarehouse: reads of resident blocks through the map, through the mount, and
from Redis, each against its baseline, in one run with the same blocks.

One run (see Tools/bench/README.md, "DRAM tier"):
  0. writes N blocks (default 256 x 2 MiB) through a fresh twfs mount (`--dram 2G`), sends a prefetch hint
     for each (MOUNT/.tw/prefetch; or, with --load reads, reads each twice through the mount) and checks that
     every block is resident (xattr user.tw.tier == "dram");
  1. map, Python: tokenwarehouse.Client.get_into(ns, name, preallocated numpy buffer) over all blocks (every
     call must be a map hit: Client.stats is checked) against numpy.copyto of the same bytes from a
     preallocated array into the same buffer; the client's lookup in C (tokenwarehouse._mapcopy, when built)
     and, for comparison, the same client kept to Python (native=False);
  2. map, C: Tools/bench/dram_reader.c (tw_lookup_copy of include/tokenwarehouse.h) against memcpy of the
     same bytes in the same program;
  3. mount: open / readv 1 MiB chunks / close of every resident block through twfs, (a) as the kernel serves
     repeat reads (twfs opens blocks with keep_cache: from the page cache) and (b) with the block files'
     pages dropped before each pass (the reads reach the daemon, which replies from the DRAM tier), against
     memfs (Tools/bench/memfs.c) holding the same blocks, in twfs's open mode, the same two ways;
  4. Redis: GET of the same blocks from a private redis-server on 127.0.0.1 (redis-py, one connection per
     thread), against which the map and mount figures are also shown.
Every reader runs with 1 and 4 threads (--threads). Prints the command, a table of ratios against
docs/design.md's targets ("Performance targets"), and writes every figure as JSON (--json). Needs root (mounting,
page-cache control), a C compiler, libfuse3-dev, libxxhash-dev, redis-server, and Python 3.11 with numpy,
redis and tokenwarehouse (pip install ./clients/python).
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import fs_bench as fb  # noqa: E402  (daemon handling, blocks, open-mode probe, memfs build)
from fs_bench import BenchError, Daemon, MountError, Watchdog  # noqa: E402

MiB = fb.MiB
GiB = fb.GiB
GB = 1e9
NS = "bench"


def log(msg: str) -> None:
    fb.log(msg)


def gb_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / GB if seconds > 0 else 0.0


def series(passes_s: list[float], nbytes: int, **extra) -> dict:
    """Figures of a measurement made of several passes over the same bytes: the best pass counts."""
    rates = [gb_s(nbytes, s) for s in passes_s]
    d = {"gb_s": round(max(rates), 4), "passes_gb_s": [round(r, 4) for r in rates], "bytes_per_pass": nbytes,
         "best_seconds": round(min(passes_s), 6)}
    d.update(extra)
    return d


run_threads = fb.run_threads
loadavg = fb.loadavg
cpu_model = fb.cpu_model
parse_threads = fb.parse_threads
_terminate = fb.terminate_on_signal


def read_files(blocks: fb.Blocks, path_of, threads: int) -> float:
    """Reads every block file as fs_bench's Blocks.read does (open, readv into one preallocated 1 MiB buffer
    until EOF, close; the size and the 16-byte header are checked) and returns the seconds (run_threads)."""
    size = blocks.size
    paths = [path_of(i) for i in range(blocks.n)]
    headers = [fb.block_header(i) for i in range(blocks.n)]

    def worker(t: int, indices) -> None:
        buf = bytearray(fb.READ_CHUNK)
        mv = memoryview(buf)
        for i in indices:
            fd = os.open(paths[i], os.O_RDONLY | os.O_CLOEXEC)
            try:
                got = n = os.readv(fd, [mv])
                if n >= 16 and buf[0:16] != headers[i]:
                    raise BenchError(f"{paths[i]}: wrong content (header {bytes(buf[0:16])!r})")
                while n:
                    n = os.readv(fd, [mv])
                    got += n
            finally:
                os.close(fd)
            if got != size:
                raise BenchError(f"{paths[i]}: read {got} bytes, expected {size}")

    return run_threads(blocks.n, threads, worker)


def open_close(paths: list[str], threads: int) -> float:
    def worker(t: int, indices) -> None:
        for i in indices:
            os.close(os.open(paths[i], os.O_RDONLY | os.O_CLOEXEC))

    return run_threads(len(paths), threads, worker)


def read_status(mnt: Path) -> dict:
    with open(mnt / ".tw" / "status", "rb", buffering=0) as f:
        return json.loads(f.read())


def tiers_of(blocks: fb.Blocks, ns_dir: Path) -> list[str]:
    out = []
    for i in range(blocks.n):
        try:
            out.append(os.fsdecode(os.getxattr(blocks.canonical(ns_dir, i), "user.tw.tier")))
        except OSError as e:
            out.append(f"error:{fb.errno_name(e.errno)}")
    return out


def drop_page_cache_global() -> bool:
    """echo 1 > /proc/sys/vm/drop_caches: clean page-cache pages of every file (tmpfs, thus the tier, stays)."""
    return fb.drop_caches(level=1)


def drop_file_pages(paths: list[str]) -> str:
    """Drops the page cache of these files only (posix_fadvise DONTNEED); checks with mincore on a few of them
    and falls back to drop_caches when pages stayed. Returns the method that worked."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    sample = paths[:: max(1, len(paths) // 8)]
    if all(fb.cached_fraction(p) == 0.0 for p in sample):
        return "fadvise"
    if drop_page_cache_global() and all(fb.cached_fraction(p) == 0.0 for p in sample):
        return "drop_caches"
    raise BenchError(f"cannot drop the page cache of {sample[0]} (fadvise and drop_caches both left pages)")


def block_array(blocks: fb.Blocks):
    """All blocks' bytes in one preallocated (N, size) uint8 array (the baseline's source)."""
    import numpy as np

    src = np.empty((blocks.n, blocks.size), dtype=np.uint8)
    base = np.frombuffer(blocks.base, dtype=np.uint8)
    for i in range(blocks.n):
        src[i] = base
        src[i, :16] = np.frombuffer(fb.block_header(i), dtype=np.uint8)
    return src


def block_bytes(blocks: fb.Blocks, i: int) -> bytes:
    return fb.block_header(i) + blocks.base[16:]


def touched_buffer(size: int):
    import numpy as np

    b = np.empty(size, dtype=np.uint8)
    b.fill(0x5A)  # fault every page in before timing
    return b


# --------------------------------------------------------------------------------- twfs -------

def twfs_daemon(args, work: Path) -> tuple[Daemon, Path, Path]:
    base = work / "twfs"
    fb.rmtree(base)
    store, mnt = base / "store", base / "mnt"
    store.mkdir(parents=True)
    cmd = [str(args.twfs), str(mnt), "--store", str(store), "--capacity", args.capacity, "--dram", args.dram, "-f"]
    if args.twfs_args:
        cmd += shlex.split(args.twfs_args)
    logp = work / "twfs.log"
    logp.unlink(missing_ok=True)
    return Daemon("twfs", cmd, mnt, logp, args.mount_timeout), mnt, base


def read_through_mount(paths: list[str], passes: int) -> list[str]:
    """Reads each file `passes` times through the mount, its pages dropped before each pass so that every
    read reaches the daemon (twfs opens blocks with keep_cache: a repeat read would stay in the kernel).
    Returns how the pages were dropped, per pass."""
    methods = []
    for _ in range(passes):
        methods.append(drop_file_pages(paths))
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while f.read(fb.READ_CHUNK):
                    pass
    return methods


def send_hints(blocks: fb.Blocks, indices: list[int], mnt: Path, timeout: float) -> dict:
    """Prefetch hints (MOUNT/.tw/prefetch) for these blocks; waits until the hint loader has handled them."""
    from tokenwarehouse import Client

    before = read_status(mnt).get("prefetch", {})
    done_keys = ("loaded", "already_resident", "missing", "dropped", "failed")
    with Client(mnt) as c:
        if not c.prefetch(NS, [blocks.names[i] for i in indices]):
            raise BenchError("the mount has no MOUNT/.tw/prefetch")
    deadline = time.monotonic() + timeout
    status = read_status(mnt)
    while time.monotonic() < deadline:
        status = read_status(mnt)
        p = status.get("prefetch", {})
        if sum(p.get(k, 0) - before.get(k, 0) for k in done_keys) >= len(indices):
            break
        time.sleep(0.05)
    return {k: status.get("prefetch", {}).get(k, 0) - before.get(k, 0) for k in ("hinted",) + done_keys}


def make_resident(args, blocks: fb.Blocks, mnt: Path, ns_dir: Path) -> dict:
    """Loads every block into the DRAM tier and checks each one's tier (xattr user.tw.tier).

    --load hints: one prefetch hint per block (hinted blocks go to the main ring); blocks still not
    resident then get two reads through the mount. --load reads: every block read twice through the mount
    (the first read admits it to the small FIFO, the second counts as a reuse); blocks still not resident
    then get a hint. Both figures are kept, so a block that did not become resident the first way shows."""
    info: dict = {"load": args.load}
    everything = list(range(blocks.n))
    if args.load == "hints":
        info["prefetch"] = send_hints(blocks, everything, mnt, args.resident_timeout)
    else:
        info["page_cache_drop"] = read_through_mount([blocks.canonical(ns_dir, i) for i in everything], 2)
    tiers = tiers_of(blocks, ns_dir)
    missing = [i for i, t in enumerate(tiers) if t != "dram"]
    info[f"resident_after_{args.load}"] = blocks.n - len(missing)
    info["dram_tier_after_load"] = read_status(mnt).get("dram_tier", {})
    info["method"] = "prefetch hints" if args.load == "hints" else "two reads through the mount"
    if missing:
        info["not_resident_first_way"] = [blocks.names[i] for i in missing][:50]
        if args.load == "hints":
            log(f"warning: {len(missing)} of {blocks.n} blocks not resident after prefetch hints "
                f"({info['prefetch']}); reading them twice through the mount")
            info["method"] += " + two reads through the mount"
            read_through_mount([blocks.canonical(ns_dir, i) for i in missing], 2)
        else:
            log(f"warning: {len(missing)} of {blocks.n} blocks not resident after two reads through the mount "
                f"(dram_tier: {info['dram_tier_after_load']}); sending prefetch hints for them")
            info["method"] += " + prefetch hints"
            info["prefetch"] = send_hints(blocks, missing, mnt, args.resident_timeout)
        tiers = tiers_of(blocks, ns_dir)
        missing = [i for i, t in enumerate(tiers) if t != "dram"]
    info["resident"] = blocks.n - len(missing)
    info["not_resident"] = [{"index": i, "name": blocks.names[i], "tier": tiers[i]} for i in missing][:50]
    info["dram_tier"] = read_status(mnt).get("dram_tier", {})
    return info


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def _anon_huge_kb() -> int:
    """AnonHugePages of this process (kB): whether numpy's arrays got transparent huge pages."""
    for line in _read_text("/proc/self/smaps_rollup").splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return -1


def python_map_phase(args, blocks: fb.Blocks, mnt: Path, results: dict, info: dict) -> None:
    """Client.get_into of every block into one preallocated numpy buffer per thread, against numpy.copyto of the
    same bytes (and, for information, a memoryview slice assignment: the copy the client itself does)."""
    import numpy as np
    from tokenwarehouse import Client

    n, size, names = blocks.n, blocks.size, blocks.names
    src = block_array(blocks)
    # numpy asks for transparent huge pages for large arrays (madvise), while the tier's shared memory has
    # 4 KiB pages unless /dev/shm gives it huge ones: a second source with 4 KiB pages, for information.
    small_mm = mmap.mmap(-1, n * size)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        small_mm.madvise(mmap.MADV_NOHUGEPAGE)
    src4k = np.frombuffer(small_mm, dtype=np.uint8).reshape(n, size)
    np.copyto(src4k, src)
    info["python_source_pages"] = {"numpy_src_huge_kb": _anon_huge_kb(), "shmem_thp": _read_text(
        "/sys/kernel/mm/transparent_hugepage/shmem_enabled"), "thp": _read_text(
        "/sys/kernel/mm/transparent_hugepage/enabled")}
    # Verification pass (not timed): every block a map hit, with the right bytes. It also faults the tier's
    # pages into this process's mapping, as any long-lived reader has them.
    with Client(mnt) as c:
        dst = touched_buffer(size)
        for i in range(n):
            got = c.get_into(NS, names[i], dst)
            if got != size or not np.array_equal(dst, src[i]):
                raise BenchError(f"map read of block {i} ({names[i]}): {got} bytes, content "
                                 f"{'differs' if got == size else 'short'}")
        if c.stats["map_hits"] != n or c.stats["file_reads"] or c.stats["map_misses"] or c.stats["map_retries"]:
            raise BenchError(f"verification pass: not all map hits: {c.stats}")
    for threads in args.threads:
        clients = [Client(mnt) for _ in range(threads)]
        # The same reads with the client kept to Python (no C lookup), for the before-and-after in one run.
        pure = [Client(mnt, native=False) for _ in range(threads)]
        dsts = [touched_buffer(size) for _ in range(threads)]
        dst_views = [memoryview(d) for d in dsts]
        src_rows = [memoryview(src[i]) for i in range(n)]
        base_s, map_s, mv_s, small_s, pure_s = [], [], [], [], []

        def copy_pass(t, idx):
            d = dsts[t]
            for i in idx:
                np.copyto(d, src[i])

        def small_pass(t, idx):
            d = dsts[t]
            for i in idx:
                np.copyto(d, src4k[i])

        def mv_pass(t, idx):
            d = dst_views[t]
            for i in idx:
                d[:] = src_rows[i]

        def map_pass(t, idx):
            c, d = clients[t], dsts[t]
            for i in idx:
                c.get_into(NS, names[i], d)

        def pure_pass(t, idx):
            c, d = pure[t], dsts[t]
            for i in idx:
                c.get_into(NS, names[i], d)

        try:
            for _ in range(args.repeat):
                base_s.append(run_threads(n, threads, copy_pass))
                map_s.append(run_threads(n, threads, map_pass))
                mv_s.append(run_threads(n, threads, mv_pass))
                small_s.append(run_threads(n, threads, small_pass))
                pure_s.append(run_threads(n, threads, pure_pass))
            stats = {k: sum(c.stats[k] for c in clients) for k in clients[0].stats}
            pure_stats = {k: sum(c.stats[k] for c in pure) for k in pure[0].stats}
            info["python_client_native"] = clients[0].native
        finally:
            for v in dst_views + src_rows:
                v.release()
            for c in clients + pure:
                c.close()
        expected = n * args.repeat
        for what, st in (("", stats), (" (pure Python)", pure_stats)):
            if st["map_hits"] != expected or st["file_reads"] or st["map_misses"] or st["map_retries"]:
                raise BenchError(f"Python map{what}, {threads} threads: not all map hits: {st} (expected {expected} hits)")
        total = n * size
        results[f"py_memcpy_t{threads}"] = series(base_s, total, what="numpy.copyto(dst, src[i])")
        results[f"py_mvcopy_t{threads}"] = series(mv_s, total, what="memoryview dst[:] = src_row")
        results[f"py_memcpy4k_t{threads}"] = series(small_s, total, what="numpy.copyto(dst, src4k[i]), 4 KiB pages")
        results[f"py_map_t{threads}"] = series(map_s, total, what="Client.get_into", client_stats=stats)
        results[f"py_map_pure_t{threads}"] = series(pure_s, total, what="Client(native=False).get_into",
                                                    client_stats=pure_stats)
        log(f"Python, {threads} thread(s): map {results[f'py_map_t{threads}']['gb_s']:.2f} GB/s, numpy.copyto "
            f"{results[f'py_memcpy_t{threads}']['gb_s']:.2f} GB/s, memoryview copy "
            f"{results[f'py_mvcopy_t{threads}']['gb_s']:.2f} GB/s, numpy.copyto from 4 KiB pages "
            f"{results[f'py_memcpy4k_t{threads}']['gb_s']:.2f} GB/s, map in pure Python "
            f"{results[f'py_map_pure_t{threads}']['gb_s']:.2f} GB/s")
    del src, src4k
    small_mm.close()


def build_reader(args, work: Path) -> Path:
    src = HERE / "dram_reader.c"
    out = work / "bin" / "dram_reader"
    out.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-I", str(REPO / "include"), "-o", str(out), str(src), "-lxxhash", "-lpthread"]
    log(f"build dram_reader: {shlex.join(cmd)}")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise BenchError(f"dram_reader build failed (apt-get install -y libxxhash-dev?):\n{r.stderr}")
    return out


def c_map_phase(args, blocks: fb.Blocks, mnt: Path, work: Path, reader: Path, results: dict) -> None:
    names_file = work / "names.txt"
    names_file.write_text("".join(f"{h}\n" for h in blocks.names))
    for threads in args.threads:
        cmd = [str(reader), "--mount", str(mnt), "--ns", NS, "--names", str(names_file), "--threads",
               str(threads), "--passes", str(args.repeat), "--buffer", str(blocks.size)]
        log(f"C reader: {shlex.join(cmd)}")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.phase_timeout)
        if r.returncode != 0:
            raise BenchError(f"dram_reader, {threads} threads, exit {r.returncode}:\n{r.stderr}{r.stdout}")
        doc = json.loads(r.stdout)
        if doc["failed_lookups"]:
            raise BenchError(f"dram_reader, {threads} threads: {doc['failed_lookups']} lookups were not hits")
        total = doc["bytes_per_pass"]
        results[f"c_memcpy_t{threads}"] = {"gb_s": doc["memcpy"]["best_gb_s"],
                                           "passes_gb_s": doc["memcpy"]["passes_gb_s"], "bytes_per_pass": total,
                                           "what": "memcpy in dram_reader"}
        results[f"c_map_t{threads}"] = {"gb_s": doc["map"]["best_gb_s"], "passes_gb_s": doc["map"]["passes_gb_s"],
                                        "bytes_per_pass": total, "what": "tw_lookup_copy in dram_reader",
                                        "hit_counters": doc["hit_counters"], "command": shlex.join(cmd)}
        results[f"c_tiercopy_t{threads}"] = {"gb_s": doc["tier_memcpy"]["best_gb_s"],
                                             "passes_gb_s": doc["tier_memcpy"]["passes_gb_s"], "bytes_per_pass": total,
                                             "what": "memcpy straight from the tier's pages, no lookup"}
        log(f"C, {threads} thread(s): map {doc['map']['best_gb_s']:.2f} GB/s, memcpy {doc['memcpy']['best_gb_s']:.2f} GB/s")


def mount_reads(args, blocks: fb.Blocks, path_of, key: str, results: dict, *, dropped_too: bool,
                daemon: Daemon, page_cache: bool = True) -> None:
    """For each thread count: a warm-up pass (after dropping the files' pages), R passes as the kernel serves
    them (page cache, if the open mode keeps it), and when dropped_too, R passes with the files' pages dropped
    before each. page_cache=False (a direct_io mount: nothing cached, and mmap may be refused): no drops."""
    paths = [path_of(i) for i in range(blocks.n)]
    total = blocks.n * blocks.size
    for threads in args.threads:
        with Watchdog(daemon, args.phase_timeout, f"{key} reads, {threads} threads"):
            # Start from no cached pages, so that on every mount the page cache is filled the same way, by
            # reads (memfs's blocks were written through the page cache; twfs's were not).
            if page_cache:
                drop_file_pages(paths)
            first = read_files(blocks, path_of, threads)
            cached = [read_files(blocks, path_of, threads) for _ in range(args.repeat)]
            results[f"{key}_cached_t{threads}"] = series(cached, total, first_pass_gb_s=round(gb_s(total, first), 4))
            msg = f"{key}, {threads} thread(s): as served {results[f'{key}_cached_t{threads}']['gb_s']:.2f} GB/s"
            # Open and close only (no read): the per-file cost of the FUSE round trips an open-read-close pays.
            oc = [open_close(paths, threads) for _ in range(args.repeat)]
            results[f"{key}_openclose_t{threads}"] = {"us_per_file": round(min(oc) / blocks.n * 1e6, 2),
                                                      "passes_us_per_file": [round(x / blocks.n * 1e6, 2) for x in oc],
                                                      "threads": threads}
            if dropped_too:
                dropped, methods = [], set()
                for _ in range(args.repeat):
                    methods.add(drop_file_pages(paths))
                    dropped.append(read_files(blocks, path_of, threads))
                results[f"{key}_dropped_t{threads}"] = series(dropped, total, page_cache_drop=sorted(methods))
                msg += f", pages dropped {results[f'{key}_dropped_t{threads}']['gb_s']:.2f} GB/s"
        log(msg)


def twfs_phase(args, blocks: fb.Blocks, work: Path, results: dict, info: dict, errors: list) -> None:
    daemon, mnt, base = twfs_daemon(args, work)
    ns_dir = mnt / NS
    try:
        daemon.start()
        with Watchdog(daemon, args.phase_timeout, "twfs write"):
            os.mkdir(ns_dir)
            w = blocks.write(lambda i: blocks.canonical(ns_dir, i), 1)
        log(f"twfs: wrote {blocks.n} blocks ({gb_s(w.bytes, w.seconds):.2f} GB/s)")
        with Watchdog(daemon, args.phase_timeout, "making blocks resident"):
            res = make_resident(args, blocks, mnt, ns_dir)
        info["residency"] = res
        log(f"twfs: {res['resident']}/{blocks.n} blocks resident ({res['method']}; "
            f"{res.get(f'resident_after_{args.load}')} after the {args.load}; prefetch {res.get('prefetch')})")
        if res["resident"] != blocks.n:
            raise BenchError(f"only {res['resident']} of {blocks.n} blocks became resident in the DRAM tier: "
                             f"{res['not_resident'][:5]} ... (dram_tier: {res['dram_tier']})")
        tier_before = res["dram_tier"]

        def guarded(name, fn):
            try:
                with Watchdog(daemon, args.phase_timeout, name):
                    fn()
            except (BenchError, OSError, subprocess.SubprocessError, AssertionError) as e:
                print(f"\nERROR in {name}: {e}\n", file=sys.stderr)
                errors.append(f"{name}: {e}")

        if "py-map" not in args.skip:
            guarded("Python map", lambda: python_map_phase(args, blocks, mnt, results, info))
        if "c-map" not in args.skip:
            guarded("C map", lambda: c_map_phase(args, blocks, mnt, work, build_reader(args, work), results))
        if "mount" not in args.skip:
            def mount_phase():
                probe = fb.probe_open_mode(blocks.canonical(ns_dir, 0))
                info["twfs_open_mode"] = probe
                log(f"twfs open mode: {probe}")
                mount_reads(args, blocks, lambda i: blocks.canonical(ns_dir, i), "twfs", results,
                            dropped_too=True, daemon=daemon)
            guarded("twfs mount reads", mount_phase)
        # Still all resident, nothing evicted, every read through the mount a tier hit?
        tiers = tiers_of(blocks, ns_dir)
        after = read_status(mnt).get("dram_tier", {})
        info["dram_tier_after"] = after
        info["resident_at_end"] = sum(t == "dram" for t in tiers)
        if info["resident_at_end"] != blocks.n:
            errors.append(f"twfs: only {info['resident_at_end']} of {blocks.n} blocks still resident at the end")
        if after.get("evictions", 0) != tier_before.get("evictions", 0):
            errors.append(f"twfs: the tier evicted {after.get('evictions', 0) - tier_before.get('evictions', 0)} "
                          f"blocks during the run")
        if after.get("mount_misses", 0) != tier_before.get("mount_misses", 0):
            info["mount_misses_during_run"] = after.get("mount_misses", 0) - tier_before.get("mount_misses", 0)
            errors.append(f"twfs: {info['mount_misses_during_run']} opens through the mount missed the tier")
        log(f"twfs tier at the end: {after}")
    except MountError as e:
        print(f"\nERROR: {e}\n", file=sys.stderr)
        errors.append(f"twfs: mount failed: {str(e).splitlines()[0]}")
    except (BenchError, OSError) as e:
        print(f"\nERROR: twfs: {e!r}\n--- {daemon.log_path} ---\n{daemon.log_text()}\n", file=sys.stderr)
        errors.append(f"twfs: {e}")
    finally:
        rc = daemon.stop()
        if rc not in (0, None):
            errors.append(f"twfs exited with status {rc}")
        if not args.keep:
            fb.rmtree(base)


# --------------------------------------------------------------------------------- memfs ------

def memfs_phase(args, blocks: fb.Blocks, work: Path, memfs: Path, mode: str, results: dict) -> None:
    base = work / f"memfs-{mode}"
    fb.rmtree(base)
    mnt = base / "mnt"
    mnt.mkdir(parents=True)
    logp = work / f"memfs-{mode}.log"
    logp.unlink(missing_ok=True)
    daemon = Daemon(f"memfs {mode}", [str(memfs), str(mnt), "-f", *fb.MEMFS_MODES[mode]], mnt, logp,
                    args.mount_timeout)
    try:
        daemon.start()
        with Watchdog(daemon, args.phase_timeout, f"memfs {mode} populate"):
            blocks.write(lambda i: blocks.flat(mnt, i), 1)
            probe = fb.probe_open_mode(blocks.flat(mnt, 0))
        if probe.get("mode") != mode:
            log(f"warning: memfs {mode}: open-mode probe says {probe}")
        mount_reads(args, blocks, lambda i: blocks.flat(mnt, i), f"memfs_{mode}", results,
                    dropped_too=(mode == "keep_cache"), daemon=daemon, page_cache=(mode != "direct_io"))
        for k in list(results):
            if k.startswith(f"memfs_{mode}_"):
                results[k]["open_mode"] = probe
    finally:
        daemon.stop()
        fb.rmtree(base)


# --------------------------------------------------------------------------------- redis ------

class RedisServer:
    """A private redis-server on 127.0.0.1 at a random high port, no persistence; always killed by stop()."""

    def __init__(self, binary: str, work: Path):
        self.binary, self.work = binary, work
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = work / "redis.log"

    def start(self, timeout: float = 15.0) -> None:
        import redis

        (self.work / "redis").mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            port = random.randint(20000, 60999)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            cmd = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.work / "redis"), "--daemonize", "no", "--protected-mode", "yes",
                   "--maxmemory", "0"]
            log(f"start redis: {shlex.join(cmd)}")
            with open(self.log_path, "ab") as logf:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            self.port = port
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    if redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).ping():
                        return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
            self.stop()
        raise BenchError(f"redis-server did not start (see {self.log_path})")

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=120, socket_connect_timeout=10)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                log(f"redis-server {proc.pid} still running after {sig.name}")


def redis_phase(args, blocks: fb.Blocks, work: Path, results: dict, info: dict) -> None:
    import redis

    binary = args.redis_server or shutil.which("redis-server")
    if not binary:
        raise BenchError("redis-server not found (apt-get install -y redis-server)")
    server = RedisServer(binary, work)
    try:
        server.start()
        r = server.client()
        pipe = r.pipeline(transaction=False)
        for i in range(blocks.n):
            pipe.set(blocks.names[i], block_bytes(blocks, i))
            if i % 16 == 15:
                pipe.execute()
        pipe.execute()
        if r.dbsize() != blocks.n:
            raise BenchError(f"redis holds {r.dbsize()} keys, expected {blocks.n}")
        for i in range(blocks.n):  # verification pass, not timed
            v = r.get(blocks.names[i])
            if v is None or len(v) != blocks.size or v[:16] != fb.block_header(i):
                raise BenchError(f"redis GET of block {i}: wrong value")
        mem = r.info("memory")
        info["redis"] = {"version": r.info("server").get("redis_version"), "port": server.port,
                         "used_memory": mem.get("used_memory"), "hiredis_parser": redis.utils.HIREDIS_AVAILABLE,
                         "redis_py": redis.__version__}
        r.close()
        size, names = blocks.size, blocks.names
        total = blocks.n * size
        for threads in args.threads:
            conns = [server.client() for _ in range(threads)]
            for c in conns:
                c.ping()  # open each thread's connection before timing

            def get_pass(t, idx):
                c = conns[t]
                for i in idx:
                    v = c.get(names[i])
                    if len(v) != size:
                        raise BenchError(f"redis GET of block {i}: {len(v)} bytes")

            with_timer = [run_threads(blocks.n, threads, get_pass) for _ in range(args.repeat)]
            for c in conns:
                c.close()
            results[f"redis_get_t{threads}"] = series(with_timer, total, what="redis-py get, one connection per thread")
            log(f"Redis GET, {threads} thread(s): {results[f'redis_get_t{threads}']['gb_s']:.2f} GB/s")
    finally:
        server.stop()


# --------------------------------------------------------------------------------- report -----

def build_rows(args, results: dict, info: dict) -> list[dict]:
    mode = (info.get("twfs_open_mode") or {}).get("mode") or "keep_cache"
    mflag = (fb.MEMFS_MODES[mode] or ["(default)"])[0]
    spec = []
    for t in args.threads:
        th = f", {t}T"
        spec += [
            (f"map, Python get_into{th}", f"py_map_t{t}", f"numpy.copyto, same bytes{th}", f"py_memcpy_t{t}", 0.90),
            (f"map, Python get_into{th}", f"py_map_t{t}", f"memoryview copy{th}", f"py_mvcopy_t{t}", None),
            (f"map, Python get_into{th}", f"py_map_t{t}", f"get_into kept to Python{th}", f"py_map_pure_t{t}", None),
            (f"map, Python get_into{th}", f"py_map_t{t}", f"numpy.copyto, 4 KiB-page source{th}", f"py_memcpy4k_t{t}",
             None),
            (f"map, C tw_lookup_copy{th}", f"c_map_t{t}", f"memcpy in dram_reader{th}", f"c_memcpy_t{t}", 0.90),
            (f"map, C tw_lookup_copy{th}", f"c_map_t{t}", f"memcpy from the tier's pages{th}", f"c_tiercopy_t{t}", None),
            (f"mount twfs, page cache{th}", f"twfs_cached_t{t}", f"memfs {mflag}, page cache{th}",
             f"memfs_{mode}_cached_t{t}", 0.80),
            (f"mount twfs, pages dropped{th}", f"twfs_dropped_t{t}", f"memfs {mflag}, pages dropped{th}",
             f"memfs_{mode}_dropped_t{t}" if mode == "keep_cache" else f"memfs_{mode}_cached_t{t}", 0.80),
            (f"mount twfs, pages dropped{th}", f"twfs_dropped_t{t}", f"memfs (default), re-reads via FUSE{th}",
             f"memfs_default_cached_t{t}", None),
            (f"mount twfs, pages dropped{th}", f"twfs_dropped_t{t}", f"memfs --direct-io{th}",
             f"memfs_direct_io_cached_t{t}", None),
            (f"map, Python get_into{th}", f"py_map_t{t}", f"Redis GET, redis-py{th}", f"redis_get_t{t}", None),
            (f"map, C tw_lookup_copy{th}", f"c_map_t{t}", f"Redis GET, redis-py{th}", f"redis_get_t{t}", None),
            (f"mount twfs, page cache{th}", f"twfs_cached_t{t}", f"Redis GET, redis-py{th}", f"redis_get_t{t}", None),
            (f"mount twfs, pages dropped{th}", f"twfs_dropped_t{t}", f"Redis GET, redis-py{th}", f"redis_get_t{t}", None),
        ]
    rows = []
    for label, key, blabel, bkey, target in spec:
        r, b = results.get(key), results.get(bkey)
        ratio = r["gb_s"] / b["gb_s"] if r and b and b["gb_s"] > 0 else None
        rows.append({"path": label, "key": key, "gb_s": r["gb_s"] if r else None, "baseline": blabel,
                     "baseline_key": bkey, "baseline_gb_s": b["gb_s"] if b else None,
                     "ratio": round(ratio, 3) if ratio is not None else None,
                     "target": f">= {target:.2f}" if target is not None else "info", "target_ratio": target,
                     "met": (ratio >= target) if ratio is not None and target is not None else None})
    return rows


def render_table(rows: list[dict]) -> str:
    head = ["path", "GB/s", "baseline", "baseline GB/s", "ratio", "target"]
    body = []
    for r in rows:
        target = r["target"] + ("" if r["met"] is None else (" ok" if r["met"] else " MISS"))
        body.append([r["path"], "-" if r["gb_s"] is None else f"{r['gb_s']:.2f}", r["baseline"],
                     "-" if r["baseline_gb_s"] is None else f"{r['baseline_gb_s']:.2f}",
                     "-" if r["ratio"] is None else f"{r['ratio']:.2f}", target])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    right = {1, 3, 4}

    def line(cells):
        return " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), "-+-".join("-" * w for w in widths)] + [line(b) for b in body])


# --------------------------------------------------------------------------------- main -------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twfs", type=Path, default=REPO / ".build" / "release" / "twfs",
                    help="twfs binary (default .build/release/twfs)")
    ap.add_argument("--dram", default="2G", help="twfs --dram (default 2G)")
    ap.add_argument("--capacity", default="4G", help="twfs --capacity (default 4G)")
    ap.add_argument("--twfs-args", default="", help="extra twfs arguments")
    ap.add_argument("--memfs", help="prebuilt memfs binary (default: build Tools/bench/memfs.c into DIR/bin)")
    ap.add_argument("--redis-server", help="redis-server binary (default: from PATH)")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/tw-dram-bench"),
                    help="scratch directory: twfs store, mount points, logs, binaries (default /var/tmp/tw-dram-bench)")
    ap.add_argument("--block-size", type=fb.parse_size, default=2 * MiB, help="block size (default 2M)")
    ap.add_argument("--blocks", type=int, help="number of blocks (default 256; --quick: 32)")
    ap.add_argument("--threads", type=parse_threads, default=[1, 4], help="reader thread counts (default 1,4)")
    ap.add_argument("--repeat", type=int, help="timed passes per measurement, the best counts (default 9; --quick: 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 32 blocks, 2 passes")
    ap.add_argument("--skip", default="", help="comma list of phases to leave out: py-map,c-map,mount,memfs,redis")
    ap.add_argument("--load", choices=("hints", "reads"), default="hints",
                    help="how blocks are made resident: prefetch hints (default) or two reads through the mount")
    fb.add_mount_options(ap, phase_timeout=600.0, resident_timeout=120.0)
    args = ap.parse_args()

    if args.blocks is None:
        args.blocks = 32 if args.quick else 256
    if args.repeat is None:
        args.repeat = 2 if args.quick else 9
    if args.blocks <= 0 or args.repeat <= 0:
        ap.error("--blocks and --repeat must be positive")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - {"py-map", "c-map", "mount", "memfs", "redis"}
    if unknown:
        ap.error(f"unknown phases in --skip: {', '.join(sorted(unknown))}")
    args.dir = args.dir.resolve()
    args.twfs = Path(os.path.abspath(args.twfs))
    total = args.blocks * args.block_size
    dram = fb.parse_size(args.dram)
    if total > 0.9 * dram * 0.9:  # hinted blocks go to the main ring (90% of the tier), minus some slack
        log(f"warning: {total / MiB:.0f} MiB of blocks may not all fit the DRAM tier's main ring "
            f"(--dram {args.dram}); raise --dram")

    signal.signal(signal.SIGTERM, _terminate)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv))
    print(f"command: {command}")
    print(f"data: {args.blocks} blocks x {fb.fmt_size(args.block_size)} = {total / MiB:.0f} MiB, threads "
          f"{','.join(map(str, args.threads))}, {args.repeat} passes (best counts), twfs --dram {args.dram}; "
          f"{cpu_model()}, {os.cpu_count()} CPUs, kernel {platform.release()}, load average {loadavg()}", flush=True)
    load_start = loadavg()
    if os.geteuid() != 0:
        log("warning: not root: mounting and dropping the page cache may fail")

    work = args.dir
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    info: dict = {}
    errors: list[str] = []
    blocks = fb.Blocks(args.blocks, args.block_size)
    t_start = time.time()
    exit_code = 0
    try:
        if not args.twfs.exists():
            errors.append(f"twfs binary not found: {args.twfs}")
        else:
            twfs_phase(args, blocks, work, results, info, errors)
        if "memfs" not in args.skip and "mount" not in args.skip:
            try:
                memfs = Path(args.memfs) if args.memfs else fb.build_memfs(args, work)
                for mode in ("keep_cache", "default", "direct_io"):
                    try:
                        memfs_phase(args, blocks, work, memfs, mode, results)
                    except (BenchError, OSError) as e:
                        print(f"\nERROR: memfs {mode}: {e}\n", file=sys.stderr)
                        errors.append(f"memfs {mode}: {str(e).splitlines()[0]}")
            except BenchError as e:
                errors.append(str(e))
        if "redis" not in args.skip:
            try:
                redis_phase(args, blocks, work, results, info)
            except (BenchError, OSError, ImportError) as e:
                print(f"\nERROR: redis: {e}\n", file=sys.stderr)
                errors.append(f"redis: {e}")
            except Exception as e:  # redis-py's own errors
                print(f"\nERROR: redis: {e!r}\n", file=sys.stderr)
                errors.append(f"redis: {e!r}")
    except KeyboardInterrupt as e:
        errors.append(f"interrupted ({e})" if str(e) else "interrupted")
        exit_code = 130

    rows = build_rows(args, results, info)
    print()
    print(render_table(rows))
    notes = []
    mode = info.get("twfs_open_mode")
    if mode:
        notes.append(f"twfs open mode (probe): {mode.get('mode')}; 'page cache' rows read what the kernel keeps "
                     f"after a first read, 'pages dropped' rows drop the block files' pages before each pass, so "
                     f"every byte comes from the daemon's DRAM tier")
    res = info.get("residency")
    if res:
        notes.append(f"residency: {res['resident']}/{blocks.n} blocks in the DRAM tier via {res['method']} "
                     f"({res.get(f'resident_after_{args.load}')} after the {args.load} alone); "
                     f"{info.get('resident_at_end', '?')}/{blocks.n} at the end")
    oc = [f"{name} {results[f'{key}_openclose_t{t}']['us_per_file']:.0f} us ({t}T)"
          for name, key in (("twfs", "twfs"), ("memfs --keep-cache", "memfs_keep_cache"))
          for t in args.threads if f"{key}_openclose_t{t}" in results]
    if oc:
        notes.append("open+close only, per file: " + ", ".join(oc))
    pages = info.get("python_source_pages")
    if pages:
        notes.append(f"Python baseline source: numpy array, {pages['numpy_src_huge_kb'] // 1024} MiB of this process in "
                     f"transparent huge pages (THP {pages['thp']}); the tier is shared memory, shmem THP "
                     f"{pages['shmem_thp']} (4 KiB pages unless the selected value allows huge ones)")
    if "python_client_native" in info:
        notes.append("Python client: " + ("lookup and copy in C (tokenwarehouse._mapcopy)" if info["python_client_native"]
                                          else "pure Python (tokenwarehouse._mapcopy was not built)"))
    if "redis" in info:
        notes.append(f"redis {info['redis']['version']}, redis-py {info['redis']['redis_py']}, hiredis parser "
                     f"{'yes' if info['redis']['hiredis_parser'] else 'no'}")
    notes.append(f"load average: {load_start} at the start, {loadavg()} at the end (other work on the machine "
                 f"skews every figure; compare ratios within one run)")
    if fb.print_notes_and_errors(notes, errors):
        exit_code = exit_code or 1
    if args.json:
        doc = {**fb.run_record(command, t_start),
               "config": {"dir": str(args.dir), "block_size": args.block_size, "blocks": args.blocks, "bytes": total,
                          "threads": args.threads, "repeat": args.repeat, "quick": args.quick, "twfs": str(args.twfs),
                          "dram": args.dram, "capacity": args.capacity, "load": args.load, "twfs_args": args.twfs_args,
                          "read_chunk": fb.READ_CHUNK, "gb": "1e9 bytes", "kernel": platform.release(),
                          "cpus": os.cpu_count(), "cpu": cpu_model(), "load_average_start": load_start,
                          "load_average_end": loadavg()},
               "results": results, "info": info, "rows": rows, "errors": errors}
        fb.write_json(args.json, doc)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
