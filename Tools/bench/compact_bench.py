#!/usr/bin/env python3
"""Compaction benchmark for TokenWarehouse: throughput against fio, and read latency during compaction.

One run, with fresh directories under --dir (on the disk under test):
  a. fio direct sequential write, then read, of that disk (one job, 1 MiB requests): the baselines;
  b. compaction throughput: a twfs store filled with blocks, --dead of them deleted evenly (so every
     sealed segment has that dead share), the page cache dropped, then
     `twctl compact MOUNT --threshold 0.3 --rate 0 --json` (no rate limit); MiB/s = bytes_moved / seconds
     as twctl reports them, against fio write, fio read and the copy bound 1/(1/read + 1/write);
  c. foreground read latency: a second store filled and thinned the same way, part of the survivors
     made resident in the DRAM tier (`twctl prefetch`), then a reader at a fixed rate reads blocks
     through the mount (open, drop the file's pages, read all, close; resident and non-resident
     alternately) for --idle-seconds without compaction, then while `twctl compact MOUNT --threshold 0.3`
     runs at the daemon's default rate (or --rate). p50/p99/p99.9 of each class, during vs without.
Prints the command, a table and, with --json, writes every figure. Python 3.11 standard library, fio,
root (mounting, drop_caches), and release builds of twfs and twctl. See Tools/bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fs_bench as fb  # noqa: E402  (daemon handling, blocks, sizes, drop_caches)
from fs_bench import BenchError, Daemon, MountError, Watchdog  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NS = "bench"


# --------------------------------------------------------------------------------- helpers ----

def twctl(args, *cmd: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    full = [str(args.twctl), *cmd]
    shown = full if len(full) <= 12 else full[:6] + [f"... ({len(full) - 6} more)"]
    fb.log(f"$ {shlex.join(shown)}")
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout or args.phase_timeout)


def twctl_json(args, *cmd: str) -> dict:
    r = twctl(args, *cmd, "--json")
    if r.returncode != 0:
        raise BenchError(f"twctl {' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise BenchError(f"twctl {' '.join(cmd)} --json printed no JSON object ({e}): {r.stdout[:500]!r}")


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[k - 1]


def summary(lat_us: list[float]) -> dict:
    v = sorted(lat_us)
    return {"count": len(v), "p50_us": _r(percentile(v, 50)), "p99_us": _r(percentile(v, 99)),
            "p999_us": _r(percentile(v, 99.9)), "max_us": _r(v[-1] if v else None),
            "mean_us": _r(sum(v) / len(v) if v else None)}


def _r(x):
    return None if x is None else round(x, 1)


def fio_phase(args, work: Path) -> dict:
    fio = shutil.which("fio")
    if not fio:
        raise BenchError("fio not found (apt-get install -y fio)")
    d = work / "fio"
    fb.rmtree(d)
    d.mkdir(parents=True)
    out = {}
    try:
        for rw in ("write", "read"):
            cmd = [fio, "--name=seq", f"--directory={d}", f"--rw={rw}", "--bs=1M", "--direct=1",
                   f"--size={args.fio_size}", "--numjobs=1", "--output-format=json"]
            os.sync()
            fb.log(f"$ {shlex.join(cmd)}")
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.phase_timeout)
            if r.returncode != 0:
                raise BenchError(f"fio {rw} failed ({r.returncode}):\n{r.stderr}\n{r.stdout}")
            job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0][rw]
            out[f"fio_{rw}"] = {"mib_s": round(job["bw_bytes"] / MiB, 1), "bytes": job["io_bytes"],
                                "command": shlex.join(cmd)}
            fb.log(f"fio {rw}: {out[f'fio_{rw}']['mib_s']} MiB/s")
    finally:
        fb.rmtree(d)
    return out


class Store:
    """A twfs mount on a fresh store under WORK/NAME, filled with the benchmark blocks and thinned."""

    def __init__(self, args, work: Path, name: str, blocks: fb.Blocks):
        self.args, self.blocks = args, blocks
        self.base = work / name
        fb.rmtree(self.base)
        self.store, self.mnt = self.base / "store", self.base / "mnt"
        self.store.mkdir(parents=True)
        self.log_path = work / f"{name}.log"
        self.log_path.unlink(missing_ok=True)
        capacity = max(2 * blocks.n * blocks.size + GiB, 4 * GiB)
        cmd = [str(args.twfs), str(self.mnt), "--store", str(self.store),
               "--capacity", f"{math.ceil(capacity / GiB)}G", "--segment-size", fb.fmt_size(args.segment_size),
               "--dram", args.dram, "-f"] + shlex.split(args.twfs_args)
        self.daemon = Daemon(f"twfs ({name})", cmd, self.mnt, self.log_path, args.mount_timeout)
        self.ns = self.mnt / NS
        self.survivors: list[int] = []

    def path(self, i: int) -> str:
        return self.blocks.canonical(self.ns, i)

    def fill(self) -> dict:
        """Write every block, delete --dead of them evenly; returns the write figures and the store status."""
        os.sync()
        self.daemon.start()
        os.mkdir(self.ns)
        r = self.blocks.write(self.path, self.args.threads)
        fb.log(f"wrote {r.files} blocks, {r.mib_s:.0f} MiB/s")
        # Evenly: block i is deleted when its position in every run of 20 falls in the first dead*20.
        cut = round(self.args.dead * 20)
        for i in range(self.blocks.n):
            if (i * 7) % 20 < cut:
                os.unlink(self.path(i))
            else:
                self.survivors.append(i)
        time.sleep(0.5)
        st = twctl_json(self.args, "status", str(self.mnt))
        fb.log(f"{len(self.survivors)} survivors; dead_ratio {st.get('dead_ratio')}, {st.get('segments')} segments")
        return {"write_mib_s": round(r.mib_s, 1), "survivors": len(self.survivors),
                "dead_ratio_before": st.get("dead_ratio"), "segments_before": st.get("segments")}

    def compact(self, rate: str | None) -> tuple[dict, float]:
        cmd = ["compact", str(self.mnt), "--threshold", "0.3"] + (["--rate", rate] if rate is not None else [])
        t0 = time.perf_counter()
        rep = twctl_json(self.args, *cmd)
        return rep, time.perf_counter() - t0

    def close(self) -> None:
        self.daemon.stop()
        if not self.args.keep:
            fb.rmtree(self.base)


def throughput_phase(args, work: Path, blocks: fb.Blocks) -> dict:
    s = Store(args, work, "throughput", blocks)
    try:
        info = s.fill()
        info["page_cache_dropped"] = fb.drop_caches(1)
        with Watchdog(s.daemon, args.phase_timeout, "compaction --rate 0"):
            rep, wall = s.compact("0")
        secs = rep.get("seconds") or wall
        st = twctl_json(args, "status", str(s.mnt))
        info.update({"report": rep, "wall_s": round(wall, 3),
                     "mib_s": round(rep["bytes_moved"] / MiB / secs, 1) if secs else None,
                     "reclaimed_mib_s": round(rep["bytes_reclaimed"] / MiB / secs, 1) if secs else None,
                     "dead_ratio_after": st.get("dead_ratio"), "segments_after": st.get("segments"),
                     "command": f"twctl compact {s.mnt} --threshold 0.3 --rate 0 --json"})
        fb.log(f"compaction --rate 0: {info['mib_s']} MiB/s moved ({rep})")
        bad = check_blocks(s, s.survivors)
        if bad:
            raise BenchError(f"after compaction {len(bad)} blocks read wrong, first: {bad[:3]}")
        return info
    finally:
        s.close()


def check_blocks(s: Store, indices) -> list[str]:
    bad = []
    for i in indices:
        try:
            with open(s.path(i), "rb") as f:
                head = f.read(16)
                rest = len(f.read())
            if head != fb.block_header(i) or 16 + rest != s.blocks.size:
                bad.append(f"{i}: wrong content")
        except OSError as e:
            bad.append(f"{i}: {fb.errno_name(e.errno)}")
    return bad


class Reader:
    """One foreground reader: at `rate` reads per second (0: back to back), alternately a resident and a
    non-resident block; each read is open, drop the file's pages, read to EOF, close, timed end to end."""

    def __init__(self, s: Store, resident: list[int], cold: list[int], rate: float, seed: int):
        self.s, self.resident, self.rate = s, resident, rate
        self.cold = cold[:]
        random.Random(seed).shuffle(self.cold)
        self.rnd = random.Random(seed + 1)
        self.stop = threading.Event()
        self.lat = {"resident": [], "nonresident": []}
        self.errors: list[str] = []
        self.cold_repeats = 0
        self.buf = bytearray(MiB)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Reader":
        self.thread.start()
        return self

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join(timeout=60)
        out = {k: summary(v) for k, v in self.lat.items()}
        out["all"] = summary(self.lat["resident"] + self.lat["nonresident"])
        out["errors"] = self.errors[:20]
        out["error_count"] = len(self.errors)
        out["nonresident_repeats"] = self.cold_repeats
        return out

    def _pick(self, k: int) -> tuple[str, int]:
        if (k % 2 == 0 and self.resident) or not self.cold:
            return "resident", self.rnd.choice(self.resident)
        i = self.cold.pop()
        self.cold.insert(0, i)         # reused only after every other block (page cache: see README)
        if k // 2 >= len(self.cold):
            self.cold_repeats += 1
        return "nonresident", i

    def _run(self) -> None:
        mv = memoryview(self.buf)
        size = self.s.blocks.size
        k = 0
        t_next = time.perf_counter()
        while not self.stop.is_set():
            if self.rate > 0:
                t_next += 1.0 / self.rate
                delay = t_next - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            cls, i = self._pick(k)
            k += 1
            t0 = time.perf_counter()
            try:
                fd = os.open(self.s.path(i), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    got, first = 0, True
                    while True:
                        n = os.readv(fd, [mv])
                        if n == 0:
                            break
                        if first and bytes(self.buf[:16]) != fb.block_header(i):
                            self.errors.append(f"block {i}: wrong content")
                        first = False
                        got += n
                finally:
                    os.close(fd)
                if got != size:
                    self.errors.append(f"block {i}: read {got} of {size} bytes")
            except OSError as e:
                self.errors.append(f"block {i}: {fb.errno_name(e.errno)}")
                continue
            self.lat[cls].append((time.perf_counter() - t0) * 1e6)


def tier_of(path: str) -> str:
    try:
        return os.getxattr(path, "user.tw.tier").decode()
    except OSError as e:
        return fb.errno_name(e.errno)


def latency_phase(args, work: Path, blocks: fb.Blocks) -> dict:
    s = Store(args, work, "latency", blocks)
    try:
        info = s.fill()
        rnd = random.Random(args.seed)
        survivors = s.survivors[:]
        rnd.shuffle(survivors)
        n_res = min(int(len(survivors) * args.resident), int(fb.parse_size(args.dram) * 0.8) // blocks.size)
        resident, cold = survivors[:n_res], survivors[n_res:]
        for k in range(0, len(resident), 256):
            twctl_json(args, "prefetch", str(s.mnt), NS, *[blocks.names[i] for i in resident[k:k + 256]])
        deadline = time.monotonic() + args.resident_timeout
        pending = set(resident)
        while pending and time.monotonic() < deadline:
            pending = {i for i in pending if tier_of(s.path(i)) != "dram"}
            time.sleep(0.2)
        if pending:
            fb.log(f"warning: {len(pending)} of {len(resident)} hinted blocks not resident; counted as non-resident")
            resident = [i for i in resident if i not in pending]
            cold += sorted(pending)
        info.update({"resident_blocks": len(resident), "nonresident_blocks": len(cold),
                     "reads_per_second": args.reads_per_second})
        half = len(cold) // 2
        cold_idle, cold_during = cold[:half], cold[half:]

        info["page_cache_dropped"] = fb.drop_caches(1)
        with Watchdog(s.daemon, args.phase_timeout, "reads without compaction"):
            rd = Reader(s, resident, cold_idle, args.reads_per_second, args.seed).start()
            time.sleep(args.idle_seconds)
            info["idle"] = rd.finish()
        fb.log(f"reads without compaction: p99 {info['idle']['all']['p99_us']} us ({info['idle']['all']['count']} reads)")

        fb.drop_caches(1)
        rate = args.rate
        with Watchdog(s.daemon, args.phase_timeout, "reads during compaction"):
            rd = Reader(s, resident, cold_during, args.reads_per_second, args.seed + 7).start()
            time.sleep(0.2)
            rep, wall = s.compact(rate)
            info["during"] = rd.finish()
        info["compaction"] = {"report": rep, "wall_s": round(wall, 3), "rate": rate or "default",
                              "mib_s": round(rep["bytes_moved"] / MiB / rep["seconds"], 1) if rep.get("seconds") else None}
        fb.log(f"reads during compaction: p99 {info['during']['all']['p99_us']} us "
               f"({info['during']['all']['count']} reads); compaction {rep}")
        info["resident_at_end"] = sum(tier_of(s.path(i)) == "dram" for i in resident)
        for phase in ("idle", "during"):
            if info[phase]["error_count"]:
                raise BenchError(f"reader errors {phase}: {info[phase]['errors'][:3]}")
        return info
    finally:
        s.close()


# --------------------------------------------------------------------------------- report -----

def build_rows(res: dict) -> list[dict]:
    rows = []
    thr = res.get("compaction_unlimited")
    if thr and thr.get("mib_s"):
        fw, fr = res.get("fio_write", {}).get("mib_s"), res.get("fio_read", {}).get("mib_s")
        bases = [("fio direct seq write", fw), ("fio direct seq read", fr)]
        if fw and fr:
            bases.append(("copy bound 1/(1/read+1/write)", round(1 / (1 / fr + 1 / fw), 1)))
        for name, b in bases:
            rows.append({"measure": "compaction --rate 0, MiB/s moved", "value": thr["mib_s"], "baseline": name,
                         "baseline_value": b, "ratio": round(thr["mib_s"] / b, 3) if b else None})
    lat = res.get("latency")
    if lat and "during" in lat:
        rate = lat["compaction"]["rate"]
        for cls in ("all", "resident", "nonresident"):
            d, i = lat["during"][cls]["p99_us"], lat["idle"][cls]["p99_us"]
            rows.append({"measure": f"read p99 us, {cls}, during compaction (--rate {rate})", "value": d,
                         "baseline": "read p99 us, without compaction", "baseline_value": i,
                         "ratio": round(d / i, 3) if d and i else None})
    return rows


def render_table(rows: list[dict]) -> str:
    head = ["measure", "value", "baseline", "baseline value", "ratio"]
    cells = [[r["measure"], _fmt(r["value"]), r["baseline"], _fmt(r["baseline_value"]), _fmt(r["ratio"])]
             for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *cells)]
    line = lambda cs: " | ".join(str(c).ljust(w) if k in (0, 2) else str(c).rjust(w)  # noqa: E731
                                 for k, (c, w) in enumerate(zip(cs, widths)))
    return "\n".join([line(head), "-+-".join("-" * w for w in widths)] + [line(c) for c in cells])


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) and v < 10 else str(v))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twfs", type=Path, default=REPO / ".build" / "release" / "twfs")
    ap.add_argument("--twctl", type=Path, help="default: twctl beside --twfs")
    ap.add_argument("--twfs-args", default="", help="extra arguments for every twfs mount")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/tw-compact-bench"),
                    help="scratch directory on the disk under test (default /var/tmp/tw-compact-bench)")
    ap.add_argument("--data", type=fb.parse_size, help="bytes of blocks written per store (default 2G; --quick 256M)")
    ap.add_argument("--block-size", type=fb.parse_size, default=MiB, help="block size (default 1M)")
    ap.add_argument("--segment-size", type=fb.parse_size, help="twfs --segment-size (default 64M; --quick 16M)")
    ap.add_argument("--dead", type=float, default=0.4,
                    help="share of blocks deleted before compacting (default 0.4: below the daemon's own "
                         "background threshold, 0.5, so the segments wait for twctl)")
    ap.add_argument("--dram", default="512M", help="twfs --dram (default 512M)")
    ap.add_argument("--resident", type=float, default=0.25, help="share of survivors made resident (default 0.25)")
    ap.add_argument("--rate", help="--rate of the compaction during the latency phase (default: twctl's default)")
    ap.add_argument("--reads-per-second", type=float, default=200, help="foreground reader's rate, 0 = back to back")
    ap.add_argument("--idle-seconds", type=float, help="reading without compaction (default 5; --quick 2)")
    ap.add_argument("--fio-size", default=None, help="fio --size (default: --data)")
    ap.add_argument("--threads", type=int, default=4, help="writer threads filling the stores (default 4)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: fio,throughput,latency")
    fb.add_mount_options(ap, phase_timeout=900.0, resident_timeout=60.0)
    args = ap.parse_args()

    args.data = args.data or (256 * MiB if args.quick else 2 * GiB)
    args.segment_size = args.segment_size or (16 * MiB if args.quick else 64 * MiB)
    args.idle_seconds = args.idle_seconds if args.idle_seconds is not None else (2.0 if args.quick else 5.0)
    args.fio_size = args.fio_size or fb.fmt_size(args.data)
    args.twfs = Path(os.path.abspath(args.twfs))
    args.twctl = Path(os.path.abspath(args.twctl)) if args.twctl else args.twfs.parent / "twctl"
    args.dir = args.dir.resolve()
    if not 0 < args.dead < 1:
        ap.error("--dead must be between 0 and 1")
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    n = max(args.threads, args.data // args.block_size)

    command = shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv))
    print(f"command: {command}")
    print(f"data: {n} blocks x {fb.fmt_size(args.block_size)} per store, {args.dead:.0%} deleted, segments "
          f"{fb.fmt_size(args.segment_size)}, dir {args.dir} ({fb.disk_of(args.dir.parent)}), "
          f"kernel {platform.release()}, {os.cpu_count()} CPUs", flush=True)
    if os.geteuid() != 0:
        fb.log("warning: not root: mounting and drop_caches may fail")
    args.dir.mkdir(parents=True, exist_ok=True)
    blocks = fb.Blocks(n, args.block_size)
    results: dict = {}
    errors: list[str] = []
    t_start = time.time()

    def guarded(name: str, key: str | None, fn) -> None:
        try:
            if key is None:
                results.update(fn())
            else:
                results[key] = fn()
        except (BenchError, MountError, OSError, subprocess.SubprocessError, KeyError) as e:
            print(f"\nERROR in {name}: {e!r}\n", file=sys.stderr)
            errors.append(f"{name}: {e!r}")

    try:
        if "fio" not in skip:
            guarded("fio", None, lambda: fio_phase(args, args.dir))
        missing = [str(exe) for exe in (args.twfs, args.twctl) if not exe.exists()]
        if missing:
            errors.append(f"binaries not found: {missing} (swift build -c release, or --twfs/--twctl)")
        else:
            if "throughput" not in skip:
                guarded("compaction throughput", "compaction_unlimited",
                        lambda: throughput_phase(args, args.dir, blocks))
            if "latency" not in skip:
                guarded("read latency", "latency", lambda: latency_phase(args, args.dir, blocks))
    except KeyboardInterrupt:
        errors.append("interrupted")

    rows = build_rows(results)
    print()
    print(render_table(rows))
    lat = results.get("latency")
    if lat and "during" in lat:
        for phase in ("idle", "during"):
            p = lat[phase]
            print(f"{phase:>6}: " + ", ".join(
                f"{cls} n={p[cls]['count']} p50={p[cls]['p50_us']} p99={p[cls]['p99_us']} p99.9={p[cls]['p999_us']} us"
                for cls in ("resident", "nonresident")) + f"; non-resident repeats {p['nonresident_repeats']}")
        print(f"compaction during reads: {lat['compaction']}")
    if errors:
        print("errors:\n  " + "\n  ".join(errors))
    if args.json:
        doc = {"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_start)),
               "duration_s": round(time.time() - t_start, 1),
               "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"blocks": n},
               "results": results, "rows": rows, "errors": errors}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
