#!/usr/bin/env python3
"""Small-file benchmark for TokenWarehouse's mount (twfs): operations per second on 16-256 KiB blocks, each
against baselines measured in the same run on the same disk (issue 18, item 3).

Per block size (--sizes, default 16K,64K,256K) and thread count (--threads, default 1,8):
  create+write+close   one open(O_CREAT|O_EXCL|O_WRONLY), one write of the block, close:
                       twfs --sync batch (the default) and --sync always; ext4 one file per block on the disk
                       under --dir, without fsync and with fsync before each close (the durability of
                       `always`); memfs (Tools/bench/memfs.c, an in-memory C FUSE server) in each open mode,
                       the fastest counting as the baseline;
  open+read+close      of whole blocks: twfs with the blocks resident in its DRAM tier and the files' pages
                       dropped before each pass (every read reaches the daemon); twfs remounted with --dram 0
                       and the page cache dropped (every read reaches the disk); memfs --keep-cache after a
                       first pass (page-cache speed: its fastest mode), memfs --keep-cache with pages dropped,
                       memfs default (each open re-reads through FUSE) and --direct-io; ext4 with the page
                       cache dropped and kept;
  stat / exists        os.stat of present names and os.path.exists of absent names, twfs vs memfs vs ext4
                       (warm dentry caches; plus one pass after `echo 2 > drop_caches`, as information).
And once, the per-operation ceiling FUSE imposes here: stat through memfs with its one-day entry/attribute
timeouts (no request) and through a memfs built with timeouts 0 (LOOKUP and GETATTR per stat), and one
GETATTR round trip forced with statx(AT_STATX_FORCE_SYNC).

Targets (issue 18): each twfs operation >= 0.8 of memfs's; twfs --sync always faster than ext4 with fsync.
twfs runs with its default settings apart from --store, --capacity, --sync always and --dram 0 where named.
Prints the command, a table of ratios, and writes every figure as JSON (--json). Needs root, a C compiler
and libfuse3-dev (memfs). Python 3.11 standard library only. See Tools/bench/README.md, "Small files".
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import fs_bench as fb  # noqa: E402  (daemons, watchdog, block names, memfs build, helpers)
from fs_bench import BenchError, Daemon, MountError, Watchdog  # noqa: E402

MiB = fb.MiB
GiB = fb.GiB
READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC
MEMFS_TIMEOUT_LINE = "#define TIMEOUT_S (86400.0)"
AT_FDCWD = -100
AT_STATX_FORCE_SYNC = 0x2000
STATX_BASIC_STATS = 0x7FF


def log(msg: str) -> None:
    fb.log(msg)


# --------------------------------------------------------------------------------- helpers ----

def parse_sizes(text: str) -> list[int]:
    out = [fb.parse_size(x) for x in text.split(",") if x.strip()]
    if not out:
        raise argparse.ArgumentTypeError(f"no sizes in {text!r}")
    return out


def fmt_ops(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100_000:
        return f"{x / 1000:.0f}k"
    if x >= 10_000:
        return f"{x / 1000:.1f}k"
    return f"{x:.0f}"


def absent_name(i: int) -> str:
    """A canonical name that no block has, in the same hh/ directory as block i."""
    h = fb.block_hash(i)
    return h[:2] + fb.block_hash(i + (1 << 40))[2:]


run_threads = fb.run_threads
loadavg = fb.loadavg
cpu_model = fb.cpu_model
parse_threads = fb.parse_threads
_terminate = fb.terminate_on_signal
disk_of = fb.disk_of


def figure(passes: list[tuple[int, float]], **extra) -> dict:
    """A measurement made of passes (ops, seconds): the best pass counts, all are kept."""
    rates = [ops / s if s > 0 else 0.0 for ops, s in passes]
    best = max(range(len(rates)), key=lambda k: rates[k])
    d = {"ops_s": round(rates[best], 1), "passes_ops_s": [round(r, 1) for r in rates],
         "ops_per_pass": passes[best][0], "best_seconds": round(passes[best][1], 6),
         "us_per_op_per_thread": None}
    d.update(extra)
    t = d.get("threads")
    if t and rates[best] > 0:
        d["us_per_op_per_thread"] = round(t * 1e6 / rates[best], 2)
    return d


# --------------------------------------------------------------------------------- operations --

class BlockSet:
    """n blocks of `size` bytes (fs_bench's contents: random bytes, a 16-byte header with the index) at paths
    given by a function of the index; absent paths are names no block has, in the same directories."""

    def __init__(self, n: int, size: int, base: bytes, path_of, absent_of):
        self.n, self.size, self.base = n, size, base
        self.paths = [path_of(i) for i in range(n)]
        self.absent = [absent_of(i) for i in range(n)]
        self.headers = [fb.block_header(i) for i in range(n)]

    def write(self, threads: int, *, fsync: bool = False) -> float:
        paths, headers = self.paths, self.headers

        def worker(t: int, indices) -> None:
            buf = bytearray(self.base)
            mv = memoryview(buf)
            for i in indices:
                buf[0:16] = headers[i]
                fb.write_new_file(paths[i], mv, fsync=fsync)

        return run_threads(self.n, threads, worker)

    def read(self, threads: int) -> float:
        size, paths, headers = self.size, self.paths, self.headers

        def worker(t: int, indices) -> None:
            buf = bytearray(size)
            mv = memoryview(buf)
            for i in indices:
                fd = os.open(paths[i], READ_FLAGS)
                try:
                    got = os.readv(fd, [mv])
                    while 0 < got < size:
                        n = os.readv(fd, [mv[got:]])
                        if n == 0:
                            break
                        got += n
                finally:
                    os.close(fd)
                if got != size:
                    raise BenchError(f"{paths[i]}: read {got} bytes, expected {size}")
                if buf[0:16] != headers[i]:
                    raise BenchError(f"{paths[i]}: wrong content (header {bytes(buf[0:16])!r})")

        return run_threads(self.n, threads, worker)

    def stat_present(self, threads: int, loops: int) -> float:
        size, paths = self.size, self.paths

        def worker(t: int, indices) -> None:
            for _ in range(loops):
                for i in indices:
                    if os.stat(paths[i]).st_size != size:
                        raise BenchError(f"{paths[i]}: st_size {os.stat(paths[i]).st_size}, expected {size}")

        return run_threads(self.n, threads, worker)

    def exists_absent(self, threads: int, loops: int) -> float:
        absent = self.absent
        exists = os.path.exists

        def worker(t: int, indices) -> None:
            for _ in range(loops):
                for i in indices:
                    if exists(absent[i]):
                        raise BenchError(f"{absent[i]}: exists, but no block has that name")

        return run_threads(self.n, threads, worker)

    def open_close(self, threads: int, loops: int) -> float:
        """open and close without reading: the per-file requests an open+read+close pays besides the data."""
        paths = self.paths

        def worker(t: int, indices) -> None:
            for _ in range(loops):
                for i in indices:
                    os.close(os.open(paths[i], READ_FLAGS))

        return run_threads(self.n, threads, worker)

    def statx_forced(self, threads: int, loops: int) -> float:
        """statx(AT_STATX_FORCE_SYNC): the kernel sends GETATTR even with cached attributes (one FUSE round
        trip per call, no LOOKUP while the dentry is valid)."""
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fn = libc.statx
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        bpaths = [os.fsencode(p) for p in self.paths]

        def worker(t: int, indices) -> None:
            buf = ctypes.create_string_buffer(256)  # struct statx
            for _ in range(loops):
                for i in indices:
                    if fn(AT_FDCWD, bpaths[i], AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, buf) != 0:
                        e = ctypes.get_errno()
                        raise OSError(e, os.strerror(e), self.paths[i])

        return run_threads(self.n, threads, worker)


def drop_file_pages(paths: list[str], how: str = "fadvise") -> str:
    """Drops the page cache of these files: posix_fadvise(DONTNEED) on each ("fadvise") or `echo 1 >
    drop_caches` ("global", which also drops the pages of a store's segment files). Checks a sample with
    mincore and falls back to drop_caches when pages stayed. Returns the method that worked."""
    if how == "fadvise":
        for p in paths:
            fd = os.open(p, READ_FLAGS)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    else:
        fb.drop_caches(level=1)
    sample = paths[:: max(1, len(paths) // 8)]
    if all(fb.cached_fraction(p) == 0.0 for p in sample):
        return how
    if how != "global" and fb.drop_caches(level=1) and all(fb.cached_fraction(p) == 0.0 for p in sample):
        return "global"
    raise BenchError(f"cannot drop the page cache of {sample[0]} (fadvise and drop_caches both left pages)")


# --------------------------------------------------------------------------------- twfs status --

def read_status(mnt: Path) -> dict:
    try:
        with open(mnt / ".tw" / "status", "rb", buffering=0) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return {}


def op_counts(mnt: Path) -> dict:
    ops = read_status(mnt).get("operations", {})
    out = {f"req_{k}": v for k, v in ops.get("counts", {}).items()}
    out.update({f"read_bytes_{k}": v for k, v in ops.get("read_bytes", {}).items()})
    return out


def per_op(before: dict, after: dict, ops: int) -> dict:
    """The daemon's request counters over a measurement, per operation (lookups, reads, ... per op)."""
    if not before or not after or ops <= 0:
        return {}
    out = {}
    for k, v in after.items():
        d = v - before.get(k, 0)
        if k.startswith("req_"):
            out[k[4:] + "_per_op"] = round(d / ops, 3)
        else:
            out[k] = d
    return out


def tiers(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        try:
            out.append(os.fsdecode(os.getxattr(p, "user.tw.tier")))
        except OSError as e:
            out.append(f"error:{fb.errno_name(e.errno)}")
    return out


def make_resident(mnt: Path, ns: str, names: list[str], paths: list[str], timeout: float) -> dict:
    """Blocks written through the mount enter the DRAM tier's small ring (--dram-admit-writes on, the
    default). Those that are not resident (the ring was full) get a prefetch hint (to the main ring), and the
    run waits for the hint loader. Returns what happened; 'resident' counts the blocks in the tier."""
    t = tiers(paths)
    missing = [i for i, x in enumerate(t) if x != "dram"]
    info = {"resident_after_write": len(paths) - len(missing)}
    if missing:
        before = read_status(mnt).get("prefetch", {})
        done_keys = ("loaded", "already_resident", "missing", "dropped", "failed")
        data = "".join(f"{ns}\t{names[i]}\n" for i in missing).encode()
        fd = os.open(mnt / ".tw" / "prefetch", os.O_WRONLY | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                # whole lines per write, below the daemon's 4 KiB line limit
                cut = len(view) if len(view) <= 65536 else bytes(view[:65536]).rindex(b"\n") + 1
                k = os.write(fd, view[:cut])
                view = view[k:]
        finally:
            os.close(fd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = read_status(mnt).get("prefetch", {})
            if sum(p.get(k, 0) - before.get(k, 0) for k in done_keys) >= len(missing):
                break
            time.sleep(0.05)
        p = read_status(mnt).get("prefetch", {})
        info["prefetch"] = {k: p.get(k, 0) - before.get(k, 0) for k in ("hinted",) + done_keys}
        t = tiers(paths)
    info["resident"] = sum(x == "dram" for x in t)
    info["dram_tier"] = read_status(mnt).get("dram_tier", {})
    return info


# --------------------------------------------------------------------------------- the run -----

class Run:
    def __init__(self, args):
        self.args = args
        self.work: Path = args.dir
        self.results: dict[str, dict] = {}
        self.info: dict = {}
        self.errors: list[str] = []
        self.temps: list[Path] = []
        self.memfs: Path | None = None
        self.memfs0: Path | None = None
        self.twfs_ok = True

    # --- bookkeeping
    def tempdir(self, tag: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=self.work))
        self.temps.append(d)
        return d

    def cleanup(self, d: Path) -> None:
        fb.rmtree(d)
        if d in self.temps:
            self.temps.remove(d)

    def logpath(self, name: str) -> Path:
        p = self.work / "logs" / f"{name}.log"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.unlink(missing_ok=True)
        return p

    def put(self, key: str, d: dict) -> dict:
        self.results[key] = d
        log(f"{key}: {fmt_ops(d['ops_s'])} ops/s" + (f" (passes {[fmt_ops(x) for x in d['passes_ops_s']]})"
                                                     if len(d["passes_ops_s"]) > 1 else ""))
        return d

    def error(self, what: str, e: BaseException | str) -> None:
        text = str(e) if isinstance(e, (str, BenchError)) else repr(e)
        print(f"\nERROR in {what}: {text}\n", file=sys.stderr)
        self.errors.append(f"{what}: {text.splitlines()[0] if text else ''}")

    def stat_loops(self, n: int) -> int:
        return max(1, round(self.args.stat_ops / self.args.repeat / n))

    # --- measurements shared by every mount
    def m_write(self, key: str, bs: BlockSet, t: int, daemon: Daemon | None, *, fsync: bool = False,
                mnt: Path | None = None, **extra) -> dict:
        before = op_counts(mnt) if mnt else {}
        with Watchdog(daemon, self.args.phase_timeout, key):
            secs = bs.write(t, fsync=fsync)
        after = op_counts(mnt) if mnt else {}
        return self.put(key, figure([(bs.n, secs)], threads=t, **extra, **per_op(before, after, bs.n)))

    def m_read(self, key: str, bs: BlockSet, t: int, daemon: Daemon | None, drop: str | None,
               mnt: Path | None = None, **extra) -> dict:
        """R passes of open+read+close of every block; drop: None (as the kernel serves them), "fadvise" or
        "global" (the files' pages, or the whole page cache, dropped before each pass)."""
        passes, methods = [], set()
        before = op_counts(mnt) if mnt else {}
        with Watchdog(daemon, self.args.phase_timeout, key):
            for _ in range(self.args.repeat):
                if drop:
                    methods.add(drop_file_pages(bs.paths, drop))
                passes.append((bs.n, bs.read(t)))
        after = op_counts(mnt) if mnt else {}
        if drop:
            extra["page_cache_drop"] = sorted(methods)
        return self.put(key, figure(passes, threads=t, **extra,
                                    **per_op(before, after, bs.n * self.args.repeat)))

    def m_stat(self, key: str, bs: BlockSet, t: int, daemon: Daemon | None, what: str,
               mnt: Path | None = None, **extra) -> dict:
        loops = self.stat_loops(bs.n)
        fn = {"present": bs.stat_present, "absent": bs.exists_absent, "forced": bs.statx_forced,
              "openclose": bs.open_close}[what]
        passes = []
        before = op_counts(mnt) if mnt else {}
        with Watchdog(daemon, self.args.phase_timeout, key):
            fn(t, 1)  # warm: every name looked up once
            for _ in range(self.args.repeat):
                passes.append((bs.n * loops, fn(t, loops)))
        after = op_counts(mnt) if mnt else {}
        return self.put(key, figure(passes, threads=t, **extra,
                                    **per_op(before, after, bs.n * (loops * self.args.repeat + 1))))

    def m_stat_cold(self, key: str, bs: BlockSet, t: int, daemon: Daemon | None, what: str,
                    mnt: Path | None = None) -> dict:
        """One pass right after `echo 2 > drop_caches` (dentries and inodes forgotten): every name is looked
        up again (FUSE: a LOOKUP per name)."""
        fn = bs.stat_present if what == "present" else bs.exists_absent
        dropped = fb.drop_caches(level=2)
        before = op_counts(mnt) if mnt else {}
        with Watchdog(daemon, self.args.phase_timeout, key):
            secs = fn(t, 1)
        after = op_counts(mnt) if mnt else {}
        return self.put(key, figure([(bs.n, secs)], threads=t, dentries_dropped=dropped,
                                    **per_op(before, after, bs.n)))

    def stats(self, prefix: str, bs: BlockSet, daemon: Daemon | None, mnt: Path | None = None) -> None:
        for t in self.args.threads:
            self.m_stat(f"{prefix}/t{t}/stat_present", bs, t, daemon, "present", mnt)
            self.m_stat(f"{prefix}/t{t}/exists_absent", bs, t, daemon, "absent", mnt)
        for t in self.args.threads:
            self.m_stat_cold(f"{prefix}/t{t}/stat_present_cold", bs, t, daemon, "present", mnt)
            self.m_stat_cold(f"{prefix}/t{t}/exists_absent_cold", bs, t, daemon, "absent", mnt)

    # --- memfs
    def memfs_daemon(self, binary: Path, flags: list[str], tag: str) -> tuple[Daemon, Path, Path]:
        base = self.tempdir(tag)
        mnt = base / "mnt"
        mnt.mkdir()
        return Daemon(tag, [str(binary), str(mnt), "-f", *flags], mnt, self.logpath(tag),
                      self.args.mount_timeout), mnt, base

    def build_memfs(self) -> None:
        self.memfs = fb.build_memfs(self.args, self.work)
        src = (HERE / "memfs.c").read_text()
        if MEMFS_TIMEOUT_LINE not in src:
            raise BenchError(f"memfs.c has no line {MEMFS_TIMEOUT_LINE!r} to change for the timeouts-0 build")
        out = self.work / "bin" / "memfs-timeout0"
        csrc = self.work / "bin" / "memfs-timeout0.c"
        if not out.exists() or out.stat().st_mtime < (HERE / "memfs.c").stat().st_mtime:
            csrc.write_text(src.replace(MEMFS_TIMEOUT_LINE, "#define TIMEOUT_S (0.0) /* smallfile_bench */"))
            flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True)
            if flags.returncode != 0:
                raise BenchError(f"pkg-config fuse3 failed (apt-get install -y libfuse3-dev): {flags.stderr}")
            cmd = [os.environ.get("CC", "cc"), "-O2", "-o", str(out), str(csrc), *flags.stdout.split(), "-lpthread"]
            log(f"build memfs with timeouts 0: {shlex.join(cmd)}")
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchError(f"memfs (timeouts 0) build failed:\n{r.stderr}")
        self.memfs0 = out

    def ceiling_phase(self, base_bytes: bytes) -> None:
        """What one FUSE round trip costs here, with memfs (nothing in it but a hash lookup)."""
        n = self.args.ceiling_files
        for binary, flags, tag in ((self.memfs, ["--keep-cache"], "cached"), (self.memfs0, [], "timeout0")):
            daemon, mnt, base = self.memfs_daemon(binary, flags, f"memfs-ceiling-{tag}")
            try:
                daemon.start()
                bs = BlockSet(n, 4096, base_bytes[:4096], lambda i: f"{mnt}/{fb.block_hash(i)}",
                              lambda i: f"{mnt}/{absent_name(i)}")
                with Watchdog(daemon, self.args.phase_timeout, f"ceiling {tag} populate"):
                    bs.write(1)
                for t in self.args.threads:
                    self.m_stat(f"ceiling/t{t}/memfs_{tag}_stat_present", bs, t, daemon, "present")
                    self.m_stat(f"ceiling/t{t}/memfs_{tag}_exists_absent", bs, t, daemon, "absent")
                    if tag == "cached":
                        self.m_stat(f"ceiling/t{t}/memfs_getattr_forced", bs, t, daemon, "forced")
            finally:
                daemon.stop()
                self.cleanup(base)

    def memfs_phase(self, lbl: str, n: int, size: int, base_bytes: bytes) -> None:
        for mode, flags in fb.MEMFS_MODES.items():
            daemon, mnt, base = self.memfs_daemon(self.memfs, flags, f"memfs-{mode}-{lbl}")
            try:
                daemon.start()
                sets = {}
                for t in self.args.threads:
                    bs = BlockSet(n, size, base_bytes, lambda i, t=t: f"{mnt}/w{t}-{fb.block_hash(i)}",
                                  lambda i, t=t: f"{mnt}/w{t}-{absent_name(i)}")
                    sets[t] = bs
                    self.m_write(f"{lbl}/t{t}/write/memfs_{mode}", bs, t, daemon, flags=flags)
                bs = sets[self.args.threads[-1]]
                with Watchdog(daemon, self.args.phase_timeout, f"memfs {mode} probe"):
                    probe = fb.probe_open_mode(bs.paths[0])
                self.info[f"{lbl}/memfs_{mode}_open_mode"] = probe
                if probe.get("mode") != mode:
                    log(f"warning: memfs {mode}: open-mode probe says {probe}")
                for t in self.args.threads:
                    if mode == "keep_cache":
                        with Watchdog(daemon, self.args.phase_timeout, "memfs first pass"):
                            drop_file_pages(bs.paths)
                            first = bs.read(t)  # fills the page cache by reads
                        self.m_read(f"{lbl}/t{t}/read/memfs_keep_cache", bs, t, daemon, None,
                                    first_pass_ops_s=round(n / first, 1))
                        self.m_read(f"{lbl}/t{t}/read/memfs_keep_cache_dropped", bs, t, daemon, "fadvise")
                        self.m_stat(f"{lbl}/t{t}/read/memfs_keep_cache_openclose", bs, t, daemon, "openclose")
                    else:
                        self.m_read(f"{lbl}/t{t}/read/memfs_{mode}", bs, t, daemon, None)
                if mode == "keep_cache":
                    self.stats(f"{lbl}/memfs", bs, daemon)
            finally:
                daemon.stop()
                self.cleanup(base)

    # --- ext4 (or whatever --dir is on)
    def ext4_phase(self, lbl: str, n: int, size: int, base_bytes: bytes) -> None:
        base = self.tempdir(f"ext4-{lbl}")
        try:
            sets = {}
            for fsync in (False, True):
                for t in self.args.threads:
                    d = base / f"{'fsync' if fsync else 'nofsync'}-t{t}"
                    d.mkdir()
                    for i in range(256):
                        (d / f"{i:02x}").mkdir()
                    bs = BlockSet(n, size, base_bytes, lambda i, d=d: f"{d}/{fb.block_hash(i)[:2]}/{fb.block_hash(i)}",
                                  lambda i, d=d: f"{d}/{absent_name(i)[:2]}/{absent_name(i)}")
                    os.sync()
                    r = self.m_write(f"{lbl}/t{t}/write/ext4_{'fsync' if fsync else 'nofsync'}", bs, t, None,
                                     fsync=fsync)
                    t0 = time.perf_counter()
                    os.sync()  # not timed: keeps the next measurement clear of this one's writeback
                    r["sync_after_s"] = round(time.perf_counter() - t0, 3)
                    if not fsync:
                        sets[t] = bs
            bs = sets[self.args.threads[-1]]
            for t in self.args.threads:
                self.m_read(f"{lbl}/t{t}/read/ext4_dropped", bs, t, None, "fadvise")
                self.m_read(f"{lbl}/t{t}/read/ext4_cached", bs, t, None, None)
            self.stats(f"{lbl}/ext4", bs, None)
        finally:
            self.cleanup(base)
            os.sync()

    # --- twfs
    def twfs_cmd(self, mnt: Path, store: Path, capacity: int, extra: list[str]) -> list[str]:
        # --twfs-args first: the variations under test (--sync always, --dram 0) come last and win.
        return [str(self.args.twfs), str(mnt), "--store", str(store), "--capacity", fb.fmt_capacity(capacity),
                *shlex.split(self.args.twfs_args), *extra, "-f"]

    def twfs_sets(self, mnt: Path, n: int, size: int, base_bytes: bytes) -> dict[int, BlockSet]:
        sets = {}
        for t in self.args.threads:
            ns = mnt / f"w{t}"
            sets[t] = BlockSet(n, size, base_bytes,
                               lambda i, ns=ns: f"{ns}/{fb.block_hash(i)[:2]}/{fb.block_hash(i)}",
                               lambda i, ns=ns: f"{ns}/{absent_name(i)[:2]}/{absent_name(i)}")
        return sets

    def twfs_setup(self, sync: str, lbl: str, n: int, size: int, extra: list[str]):
        """A fresh store and mount point for one twfs phase, and its (not yet started) daemon."""
        base = self.tempdir(f"twfs-{sync}-{lbl}")
        store, mnt = base / "store", base / "mnt"
        store.mkdir()
        capacity = 2 * len(self.args.threads) * n * size + GiB
        logp = self.logpath(f"twfs-{sync}-{lbl}")
        daemon = Daemon(f"twfs {sync} {lbl}", self.twfs_cmd(mnt, store, capacity, extra), mnt, logp,
                        self.args.mount_timeout)
        return base, store, mnt, capacity, logp, daemon

    @contextlib.contextmanager
    def twfs_phase(self, what: str, base: Path, logp: Path, daemons: list[Daemon]):
        """Runs the body of a twfs phase: a failure is recorded under `what` (with the daemon's log), and
        whatever happens every daemon in `daemons` (the body may add one) is stopped and `base` removed."""
        try:
            yield
        except MountError as e:
            self.twfs_ok = False
            self.error(what, e)
        except (BenchError, OSError) as e:
            self.error(what, f"{e!r}\n--- {logp} ---\n{daemons[-1].log_text(4000)}")
        finally:
            for daemon in daemons:
                rc = daemon.stop()
                if rc not in (0, None):
                    self.errors.append(f"{daemon.name}: exited with status {rc}")
            if not self.args.keep:
                self.cleanup(base)
            os.sync()

    def twfs_batch_phase(self, lbl: str, n: int, size: int, base_bytes: bytes) -> None:
        base, store, mnt, capacity, logp, daemon = self.twfs_setup("batch", lbl, n, size, [])
        daemons = [daemon]
        last = self.args.threads[-1]
        with self.twfs_phase(f"twfs batch {lbl}", base, logp, daemons):
            os.sync()
            daemon.start()
            sets = self.twfs_sets(mnt, n, size, base_bytes)
            for t in self.args.threads:
                os.mkdir(mnt / f"w{t}")  # the namespace
                self.m_write(f"{lbl}/t{t}/write/twfs_batch", sets[t], t, daemon, mnt=mnt)
            bs = sets[last]  # the newest blocks: still in the DRAM tier's small ring
            with Watchdog(daemon, self.args.phase_timeout, "twfs residency"):
                res = make_resident(mnt, f"w{last}", [fb.block_hash(i) for i in range(n)], bs.paths,
                                    self.args.resident_timeout)
                self.info[f"{lbl}/twfs_residency"] = res
                self.info[f"{lbl}/twfs_open_mode"] = fb.probe_open_mode(bs.paths[0])
            log(f"twfs {lbl}: {res['resident']}/{n} blocks resident in the DRAM tier "
                f"({res['resident_after_write']} after the writes; prefetch {res.get('prefetch')})")
            if res["resident"] != n:
                self.errors.append(f"twfs {lbl}: only {res['resident']} of {n} blocks resident in the DRAM tier "
                                   f"(dram_tier {res['dram_tier']}); the DRAM read rows count anyway")
            for t in self.args.threads:
                r = self.m_read(f"{lbl}/t{t}/read/twfs_dram_dropped", bs, t, daemon, "fadvise", mnt)
                if r.get("read_bytes_nvme"):
                    self.errors.append(f"twfs {lbl} DRAM reads, {t}T: {r['read_bytes_nvme']} bytes came from NVMe")
                with Watchdog(daemon, self.args.phase_timeout, "twfs warm"):
                    bs.read(t)
                self.m_read(f"{lbl}/t{t}/read/twfs_page_cache", bs, t, daemon, None, mnt)
                self.m_stat(f"{lbl}/t{t}/read/twfs_openclose", bs, t, daemon, "openclose", mnt)
            self.stats(f"{lbl}/twfs", bs, daemon, mnt)
            end = tiers(bs.paths)
            self.info[f"{lbl}/twfs_resident_at_end"] = sum(x == "dram" for x in end)
            rc = daemon.stop()
            if rc not in (0, None):
                self.errors.append(f"twfs batch {lbl}: exited with status {rc} after unmount")
            # NVMe only: the same store without a DRAM tier, the page cache dropped before every pass.
            fb.drop_caches(3)
            daemon = Daemon(f"twfs --dram 0 {lbl}", self.twfs_cmd(mnt, store, capacity, ["--dram", "0"]), mnt,
                            logp, self.args.mount_timeout)
            daemons.append(daemon)
            daemon.start()
            bs = self.twfs_sets(mnt, n, size, base_bytes)[last]
            for t in self.args.threads:
                r = self.m_read(f"{lbl}/t{t}/read/twfs_nvme", bs, t, daemon, "global", mnt)
                if r.get("read_bytes_dram"):
                    self.errors.append(f"twfs {lbl} --dram 0 reads, {t}T: {r['read_bytes_dram']} bytes from DRAM")

    def twfs_always_phase(self, lbl: str, n: int, size: int, base_bytes: bytes) -> None:
        base, _, mnt, _, logp, daemon = self.twfs_setup("always", lbl, n, size, ["--sync", "always"])
        with self.twfs_phase(f"twfs always {lbl}", base, logp, [daemon]):
            os.sync()
            daemon.start()
            sets = self.twfs_sets(mnt, n, size, base_bytes)
            for t in self.args.threads:
                os.mkdir(mnt / f"w{t}")
                self.m_write(f"{lbl}/t{t}/write/twfs_always", sets[t], t, daemon, mnt=mnt)


# --------------------------------------------------------------------------------- report -----

def blocks_for(args, size: int) -> int:
    if args.blocks_given:
        return args.blocks
    return max(max(args.threads), min(args.blocks, args.max_data // size))


MEMFS_LABELS = {
    "write/memfs_default": "memfs (default)", "write/memfs_keep_cache": "memfs --keep-cache",
    "write/memfs_direct_io": "memfs --direct-io", "read/memfs_keep_cache": "memfs --keep-cache, page cache",
    "read/memfs_default": "memfs (default)", "read/memfs_direct_io": "memfs --direct-io",
}


def build_rows(args, results: dict) -> list[dict]:
    spec = []  # (op, label, key, baseline label, baseline keys (the fastest counts), target ratio, strict)
    for size in args.sizes:
        lbl = fb.fmt_size(size)
        for t in args.threads:
            p = f"{lbl}/t{t}"
            mem_w = [f"{p}/write/memfs_{m}" for m in fb.MEMFS_MODES]
            mem_r = [f"{p}/read/memfs_{m}" for m in ("keep_cache", "default", "direct_io")]
            spec += [
                ("create", "twfs --sync batch", f"{p}/write/twfs_batch", "", mem_w, 0.80, False),
                ("create", "twfs --sync batch", f"{p}/write/twfs_batch", "ext4, no fsync", [f"{p}/write/ext4_nofsync"],
                 None, False),
                ("create", "twfs --sync always", f"{p}/write/twfs_always", "ext4, fsync per file",
                 [f"{p}/write/ext4_fsync"], 1.00, True),
                ("create", "twfs --sync always", f"{p}/write/twfs_always", "", mem_w, None, False),
                ("read", "twfs DRAM, pages dropped", f"{p}/read/twfs_dram_dropped", "", mem_r, 0.80, False),
                ("read", "twfs DRAM, pages dropped", f"{p}/read/twfs_dram_dropped", "memfs --keep-cache, pages dropped",
                 [f"{p}/read/memfs_keep_cache_dropped"], None, False),
                ("read", "twfs DRAM, pages dropped", f"{p}/read/twfs_dram_dropped", "memfs (default)",
                 [f"{p}/read/memfs_default"], None, False),
                ("read", "twfs DRAM, pages dropped", f"{p}/read/twfs_dram_dropped", "memfs --keep-cache, page cache",
                 [f"{p}/read/memfs_keep_cache"], None, False),
                ("read", "twfs DRAM, pages dropped", f"{p}/read/twfs_dram_dropped", "memfs --direct-io",
                 [f"{p}/read/memfs_direct_io"], None, False),
                ("read", "twfs NVMe (--dram 0), dropped", f"{p}/read/twfs_nvme", "", mem_r, 0.80, False),
                ("read", "twfs NVMe (--dram 0), dropped", f"{p}/read/twfs_nvme", "ext4, page cache dropped",
                 [f"{p}/read/ext4_dropped"], None, False),
                ("read", "twfs, page cache (repeat)", f"{p}/read/twfs_page_cache", "memfs --keep-cache, page cache",
                 [f"{p}/read/memfs_keep_cache"], None, False),
                ("read", "twfs, page cache (repeat)", f"{p}/read/twfs_page_cache", "ext4, page cache",
                 [f"{p}/read/ext4_cached"], None, False),
                ("read", "twfs open+close, no read", f"{p}/read/twfs_openclose", "memfs --keep-cache open+close",
                 [f"{p}/read/memfs_keep_cache_openclose"], None, False),
                ("stat", "twfs stat, present", f"{lbl}/twfs/t{t}/stat_present", "memfs",
                 [f"{lbl}/memfs/t{t}/stat_present"], 0.80, False),
                ("stat", "twfs stat, present", f"{lbl}/twfs/t{t}/stat_present", "ext4",
                 [f"{lbl}/ext4/t{t}/stat_present"], None, False),
                ("stat", "twfs exists, absent", f"{lbl}/twfs/t{t}/exists_absent", "memfs",
                 [f"{lbl}/memfs/t{t}/exists_absent"], 0.80, False),
                ("stat", "twfs exists, absent", f"{lbl}/twfs/t{t}/exists_absent", "ext4",
                 [f"{lbl}/ext4/t{t}/exists_absent"], None, False),
                ("stat", "twfs stat, present, cold", f"{lbl}/twfs/t{t}/stat_present_cold", "memfs, cold",
                 [f"{lbl}/memfs/t{t}/stat_present_cold"], None, False),
                ("stat", "twfs exists, absent, cold", f"{lbl}/twfs/t{t}/exists_absent_cold", "memfs, cold",
                 [f"{lbl}/memfs/t{t}/exists_absent_cold"], None, False),
            ]
    rows = []
    for op, label, key, blabel, bkeys, target, strict in spec:
        parts = key.split("/")
        size_lbl = parts[0]
        t = next((int(x[1:]) for x in parts if x.startswith("t") and x[1:].isdigit()), None)
        r = results.get(key)
        present = [k for k in bkeys if k in results]
        bkey = max(present, key=lambda k: results[k]["ops_s"]) if present else bkeys[0]
        b = results.get(bkey)
        if not blabel:  # the fastest of several memfs modes
            short = "/".join(bkey.split("/")[-2:])
            blabel = f"{MEMFS_LABELS.get(short, short)} (fastest memfs)" if b else "memfs, fastest mode"
        ratio = r["ops_s"] / b["ops_s"] if r and b and b["ops_s"] > 0 else None
        met = None
        if ratio is not None and target is not None:
            met = ratio > target if strict else ratio >= target
        rows.append({"op": op, "size": size_lbl, "threads": t, "path": label, "key": key,
                     "ops_s": r["ops_s"] if r else None, "baseline": blabel, "baseline_key": bkey,
                     "baseline_candidates": bkeys if len(bkeys) > 1 else None,
                     "baseline_ops_s": b["ops_s"] if b else None,
                     "ratio": round(ratio, 3) if ratio is not None else None,
                     "target": (f"> {target:.2f}" if strict else f">= {target:.2f}") if target is not None else "info",
                     "target_ratio": target, "met": met})
    return rows


def render(head: list[str], body: list[list[str]], right: set[int]) -> str:
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]

    def line(cells):
        return " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), "-+-".join("-" * w for w in widths)] + [line(b) for b in body])


def render_rows(rows: list[dict]) -> str:
    head = ["op", "size", "T", "path", "ops/s", "baseline", "baseline ops/s", "ratio", "target"]
    body = []
    for r in rows:
        target = r["target"] + ("" if r["met"] is None else (" ok" if r["met"] else " MISS"))
        body.append([r["op"], r["size"], str(r["threads"]), r["path"], fmt_ops(r["ops_s"]), r["baseline"],
                     fmt_ops(r["baseline_ops_s"]), "-" if r["ratio"] is None else f"{r['ratio']:.2f}", target])
    return render(head, body, {2, 4, 6, 7})


CEILING = [
    ("memfs_cached_stat_present", "stat, present; memfs one-day timeouts", "0 (dcache)"),
    ("memfs_cached_exists_absent", "exists, absent; memfs one-day timeouts", "0 (negative dentry)"),
    ("memfs_getattr_forced", "statx FORCE_SYNC, present; memfs", "1 (GETATTR)"),
    ("memfs_timeout0_stat_present", "stat, present; memfs timeouts 0", "3 (GETATTR root, LOOKUP, GETATTR)"),
    ("memfs_timeout0_exists_absent", "exists, absent; memfs timeouts 0", "2 (GETATTR root, LOOKUP)"),
]


def ceiling_table(args, results: dict) -> tuple[str, list[dict]]:
    head = ["FUSE ceiling (4 KiB files)", "T", "ops/s", "us/op per thread", "FUSE requests per op"]
    body, out = [], []
    for t in args.threads:
        for key, label, trips in CEILING:
            r = results.get(f"ceiling/t{t}/{key}")
            body.append([label, str(t), fmt_ops(r["ops_s"]) if r else "-",
                         f"{r['us_per_op_per_thread']:.1f}" if r and r["us_per_op_per_thread"] else "-", trips])
            out.append({"measure": label, "key": f"ceiling/t{t}/{key}", "threads": t,
                        "ops_s": r["ops_s"] if r else None,
                        "us_per_op_per_thread": r["us_per_op_per_thread"] if r else None, "fuse_requests": trips})
    return render(head, body, {1, 2, 3}), out


def notes(args, results: dict, info: dict) -> list[str]:
    out = []
    for size in args.sizes:
        lbl = fb.fmt_size(size)
        res = info.get(f"{lbl}/twfs_residency")
        if res:
            hinted = f", then prefetch hints: {res['prefetch']}" if res.get("prefetch") else ", no hints needed"
            out.append(f"{lbl}: twfs DRAM residency {res['resident']}/{res.get('n', '?')} "
                       f"({res['resident_after_write']} after the writes{hinted}); "
                       f"{info.get(f'{lbl}/twfs_resident_at_end', '?')} at the end; open mode "
                       f"{(info.get(f'{lbl}/twfs_open_mode') or {}).get('mode')}")
        per = []
        for t in args.threads:
            for k, what in (("write/twfs_batch", "create"), ("write/twfs_always", "create always"),
                            ("read/twfs_dram_dropped", "read DRAM"), ("read/twfs_nvme", "read NVMe")):
                r = results.get(f"{lbl}/t{t}/{k}")
                if r and "lookup_per_op" in r:
                    per.append(f"{what} {t}T: " + ", ".join(f"{x[:-7]} {r[x]:g}" for x in
                                                            ("lookup_per_op", "read_per_op", "write_per_op",
                                                             "commit_per_op") if x in r))
            for k in ("stat_present", "exists_absent", "stat_present_cold", "exists_absent_cold"):
                r = results.get(f"{lbl}/twfs/t{t}/{k}")
                if r and "lookup_per_op" in r:
                    per.append(f"{k} {t}T: lookup {r['lookup_per_op']:g}")
        if per:
            out.append(f"{lbl}: twfs requests per op (its counters): " + "; ".join(per))
        fs = [f"{t}T {results[f'{lbl}/t{t}/write/ext4_fsync']['sync_after_s']} s"
              for t in args.threads if f"{lbl}/t{t}/write/ext4_fsync" in results]
        if fs:
            out.append(f"{lbl}: ext4 untimed sync after the fsync writes: {', '.join(fs)}")
    return out


# --------------------------------------------------------------------------------- main -------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twfs", type=Path, default=REPO / ".build" / "release" / "twfs",
                    help="twfs binary (default .build/release/twfs)")
    ap.add_argument("--twfs-args", default="",
                    help="extra twfs arguments for every mount (the targets are for the defaults: leave empty)")
    ap.add_argument("--memfs", help="prebuilt memfs binary (default: build Tools/bench/memfs.c into DIR/bin)")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/tw-smallfile"),
                    help="scratch directory on the disk under test (default /var/tmp/tw-smallfile)")
    ap.add_argument("--sizes", type=parse_sizes, default=[16 << 10, 64 << 10, 256 << 10],
                    help="block sizes (default 16K,64K,256K)")
    ap.add_argument("--threads", type=parse_threads, default=[1, 8], help="thread counts (default 1,8)")
    ap.add_argument("--blocks", type=int,
                    help="blocks per size and thread count (default 8192, at most --max-data per size; --quick 200)")
    ap.add_argument("--max-data", type=fb.parse_size, help="cap on blocks x size when --blocks is not given "
                    "(default 192M: the read set stays in the default 1G DRAM tier's small ring; --quick 16M)")
    ap.add_argument("--repeat", type=int, help="passes per read/stat measurement, the best counts (default 5; --quick 2)")
    ap.add_argument("--stat-ops", type=int, help="stat calls per stat measurement, all passes (default 200000; --quick 4000)")
    ap.add_argument("--ceiling-files", type=int, help="files in the FUSE-ceiling memfs mounts (default 4096; --quick 200)")
    ap.add_argument("--quick", action="store_true", help="smoke run: few blocks, 2 passes")
    ap.add_argument("--skip", default="", help="comma list of phases to leave out: ceiling,memfs,ext4,twfs,always")
    ap.add_argument("--writer-fds", type=int, default=0,
                    help="extra descriptors (of /dev/null) the benchmark process holds throughout, as an engine "
                         "holds its GPU devices, sockets and memory files: twfs checks the writer's descriptors "
                         "at each close (default 0)")
    fb.add_mount_options(ap, phase_timeout=900.0, resident_timeout=120.0)
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("smallfile_bench.py needs root (mounting, drop_caches); run it with sudo", file=sys.stderr)
        return 2
    args.blocks_given = args.blocks is not None
    if args.blocks is None:
        args.blocks = 200 if args.quick else 8192
    if args.max_data is None:
        args.max_data = 16 * MiB if args.quick else 192 * MiB
    if args.repeat is None:
        args.repeat = 2 if args.quick else 5
    if args.stat_ops is None:
        args.stat_ops = 4000 if args.quick else 200_000
    if args.ceiling_files is None:
        args.ceiling_files = 200 if args.quick else 4096
    if min(args.blocks, args.repeat, args.stat_ops, args.ceiling_files) <= 0:
        ap.error("--blocks, --repeat, --stat-ops and --ceiling-files must be positive")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {"ceiling", "memfs", "ext4", "twfs", "always"}
    if unknown:
        ap.error(f"unknown phases in --skip: {', '.join(sorted(unknown))}")
    args.dir = args.dir.resolve()
    args.twfs = Path(os.path.abspath(args.twfs))

    held = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(max(0, args.writer_fds))]
    signal.signal(signal.SIGTERM, _terminate)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv))
    print(f"command: {command}")
    args.dir.mkdir(parents=True, exist_ok=True)
    counts = {fb.fmt_size(s): blocks_for(args, s) for s in args.sizes}
    load_start = loadavg()
    print(f"blocks: {', '.join(f'{k} x {v}' for k, v in counts.items())} per thread count; threads "
          f"{','.join(map(str, args.threads))}; {args.repeat} passes per read/stat (best counts); dir {args.dir} "
          f"({disk_of(args.dir)}); {cpu_model()}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
          f"load average {load_start}", flush=True)
    if args.twfs_args:
        log(f"note: --twfs-args {args.twfs_args!r}: twfs does not run at its defaults")

    run = Run(args)
    base_bytes = os.urandom(max(args.sizes))
    t_start = time.time()
    exit_code = 0
    try:
        if not ({"ceiling", "memfs"} <= skip):
            try:
                run.build_memfs()
            except BenchError as e:
                run.error("memfs build", e)
        if "ceiling" not in skip and run.memfs0:
            try:
                run.ceiling_phase(base_bytes)
            except (BenchError, OSError) as e:
                run.error("FUSE ceiling", e)
        if "twfs" not in skip and not args.twfs.exists():
            run.error("twfs", f"binary not found at {args.twfs} (swift build -c release, or --twfs PATH)")
            skip.add("twfs")
        for size in args.sizes:
            lbl, n = fb.fmt_size(size), counts[fb.fmt_size(size)]
            data = base_bytes[:size]
            log(f"--- {lbl}: {n} blocks per thread count")
            if "memfs" not in skip and run.memfs:
                try:
                    run.memfs_phase(lbl, n, size, data)
                except (BenchError, OSError) as e:
                    run.error(f"memfs {lbl}", e)
            if "ext4" not in skip:
                try:
                    run.ext4_phase(lbl, n, size, data)
                except (BenchError, OSError) as e:
                    run.error(f"ext4 {lbl}", e)
            if "twfs" not in skip and run.twfs_ok:
                run.twfs_batch_phase(lbl, n, size, data)
                if lbl + "/twfs_residency" in run.info:
                    run.info[lbl + "/twfs_residency"]["n"] = n
            if "twfs" not in skip and "always" not in skip and run.twfs_ok:
                run.twfs_always_phase(lbl, n, size, data)
    except KeyboardInterrupt as e:
        run.errors.append(f"interrupted ({e})" if str(e) else "interrupted")
        exit_code = 130
    finally:
        for d in list(run.temps):
            run.cleanup(d)

    rows = build_rows(args, run.results)
    print()
    print(render_rows(rows))
    ctext, crows = ceiling_table(args, run.results)
    if any(r["ops_s"] for r in crows):
        print()
        print(ctext)
        rt = run.results.get(f"ceiling/t{args.threads[0]}/memfs_getattr_forced")
        if rt:
            print(f"one FUSE round trip (GETATTR to memfs, {args.threads[0]}T): {rt['us_per_op_per_thread']:.1f} us, "
                  f"i.e. at most {fmt_ops(rt['ops_s'])} requests/s per thread; an operation that needs k round trips "
                  f"is capped near 1/k of that")
    extra = notes(args, run.results, run.info)
    extra.append(f"load average: {load_start} at the start, {loadavg()} at the end (other work on the machine skews "
                 f"every figure; compare ratios within one run)")
    if fb.print_notes_and_errors(extra, run.errors):
        exit_code = exit_code or 1
    if args.json:
        doc = {**fb.run_record(command, t_start),
               "config": {"dir": str(args.dir), "disk": disk_of(args.dir), "sizes": args.sizes,
                          "blocks": counts, "threads": args.threads, "repeat": args.repeat,
                          "stat_ops": args.stat_ops, "ceiling_files": args.ceiling_files, "quick": args.quick,
                          "twfs": str(args.twfs), "twfs_args": args.twfs_args, "kernel": platform.release(),
                          "cpus": os.cpu_count(), "cpu": cpu_model(), "load_average_start": load_start,
                          "load_average_end": loadavg()},
               "results": run.results, "info": run.info, "rows": rows, "ceiling": crows, "errors": run.errors}
        fb.write_json(args.json, doc)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
