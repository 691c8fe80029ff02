#!/usr/bin/env python3
"""Filesystem benchmark for TokenWarehouse's mount (twfs), against fio, ext4 and an in-memory C FUSE server.

One run measures, each with fresh directories under --dir:
  a. fio direct sequential write and read of the disk under --dir (the "disk" baselines);
  b. block writes through twfs with --sync batch / always / none, and one-file-per-block on ext4
     with and without fsync (same block names, sizes and threads);
  c. uncached reads through twfs (unmount, drop the page cache, remount the same store);
  d. cached reads through twfs (the same blocks again) and through memfs (Tools/bench/memfs.c, an
     in-memory FUSE server on libfuse3's low-level API) holding the same blocks, in its default mode
     (every open re-reads through FUSE), with --keep-cache and with --direct-io.
It prints a table of ratios against the targets in docs/design.md ("Performance targets") and writes all
figures as JSON to --json. Python 3.11 standard library only, plus fio, a C compiler and libfuse3-dev
(for memfs), and root (mounting, drop_caches). See Tools/bench/README.md.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import hashlib
import json
import math
import mmap
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
READ_CHUNK = 1 * MiB
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


class BenchError(Exception):
    pass


class MountError(BenchError):
    pass


# --------------------------------------------------------------------------------- helpers ----

def parse_size(text: str) -> int:
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if s.endswith(suffix):
            s, mult = s[:-1], m
            break
    try:
        value = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 2M, 512K, 1G, 65536)")
    n = int(value * mult)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return n


def fmt_size(n: int) -> str:
    for unit, m in (("G", GiB), ("M", MiB), ("K", 1024)):
        if n % m == 0:
            return f"{n // m}{unit}"
    return str(n)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def block_hash(i: int) -> str:
    """Canonical block name: 32 lowercase hex characters."""
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).hexdigest()


def block_header(i: int) -> bytes:
    """First 16 bytes of block i: makes every block distinct and lets readers check what they got."""
    return b"TWBENCH\0" + i.to_bytes(8, "little")


def unescape_mount_field(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def is_mounted(path: Path) -> bool:
    target = str(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and unescape_mount_field(parts[1]) == target:
                    return True
    except OSError:
        pass
    return False


def drop_caches(level: int = 3) -> bool:
    """sync, then echo LEVEL > /proc/sys/vm/drop_caches (1: page cache only; 3: also dentries and inodes)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write(f"{level}\n")
        return True
    except OSError as e:
        log(f"warning: cannot drop the page cache ({e}); 'uncached' reads may hit it")
        return False


def rmtree(path: Path) -> None:
    """Remove a scratch tree, never descending into something mounted."""
    if not path.exists():
        return
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            p = Path(root) / d
            if is_mounted(p):
                force_unmount(p)
    shutil.rmtree(path, ignore_errors=True)


def force_unmount(mnt: Path) -> None:
    for cmd in (["fusermount3", "-u", "-z", str(mnt)], ["umount", "-l", str(mnt)]):
        if not is_mounted(mnt):
            return
        if shutil.which(cmd[0]):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --------------------------------------------------------------------------------- daemons ----

class Daemon:
    """A FUSE daemon started in the foreground, its output in a log file; always stopped by stop()."""

    def __init__(self, name: str, cmd: list[str], mnt: Path, log_path: Path, mount_timeout: float):
        self.name, self.cmd, self.mnt, self.log_path = name, cmd, mnt, log_path
        self.mount_timeout = mount_timeout
        self.proc: subprocess.Popen | None = None

    def log_text(self, limit: int = 20000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text if len(text) <= limit else "...\n" + text[-limit:]

    def start(self) -> None:
        if is_mounted(self.mnt):
            force_unmount(self.mnt)
        self.mnt.mkdir(parents=True, exist_ok=True)
        log(f"start {self.name}: {shlex.join(self.cmd)}")
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== {time.strftime('%H:%M:%S')} {shlex.join(self.cmd)}\n".encode())
            logf.flush()
            try:
                self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                raise MountError(f"{self.name}: cannot start {self.cmd[0]}: {e}") from e
        deadline = time.monotonic() + self.mount_timeout
        while time.monotonic() < deadline:
            if is_mounted(self.mnt):
                return
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                raise MountError(f"{self.name} exited with status {rc} before mounting {self.mnt}\n"
                                 f"--- {self.log_path} ---\n{self.log_text()}")
            time.sleep(0.05)
        self.stop()
        raise MountError(f"{self.name} did not mount {self.mnt} within {self.mount_timeout:.0f} s\n"
                         f"--- {self.log_path} ---\n{self.log_text()}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """Unmount (the daemon then exits by itself), else SIGTERM, else SIGKILL. Returns its status."""
        proc, self.proc = self.proc, None
        unmounted = False
        if is_mounted(self.mnt):
            for cmd in (["fusermount3", "-u", str(self.mnt)], ["umount", str(self.mnt)]):
                if shutil.which(cmd[0]):
                    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    if r.returncode == 0:
                        unmounted = True
                        break
                    log(f"{shlex.join(cmd)}: {r.stderr.strip()}")
        rc = None
        if proc is not None:
            try:
                # After a clean unmount the daemon finishes its own shutdown (flushing the store).
                rc = proc.wait(timeout=timeout if unmounted else 0.5)
            except subprocess.TimeoutExpired:
                if unmounted:
                    log(f"{self.name} still running {timeout:.0f} s after unmount: SIGTERM")
                self._signal(proc, signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    log(f"{self.name} ignores SIGTERM: SIGKILL")
                    self._signal(proc, signal.SIGKILL)
                    rc = proc.wait()
            self._signal(proc, signal.SIGKILL, quiet=True)  # leftovers in its process group
        if is_mounted(self.mnt):
            force_unmount(self.mnt)
        return rc

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int, quiet: bool = False) -> None:
        try:
            os.killpg(proc.pid, sig)  # started with start_new_session: its group id is its pid
        except ProcessLookupError:
            pass
        except OSError as e:
            if not quiet:
                log(f"killpg {proc.pid}: {e}")

    def kill(self) -> None:
        """Used by the watchdog: makes every pending FUSE call fail instead of hanging."""
        proc = self.proc
        if proc is not None:
            self._signal(proc, signal.SIGKILL, quiet=True)
        force_unmount(self.mnt)


class Watchdog:
    """Kills the daemon if a phase runs longer than its limit, so a hung mount cannot hang the run."""

    def __init__(self, daemon: Daemon | None, seconds: float, what: str):
        self.daemon, self.seconds, self.what = daemon, seconds, what
        self.fired = False
        self.timer: threading.Timer | None = None

    def _fire(self) -> None:
        self.fired = True
        log(f"watchdog: {self.what} exceeded {self.seconds:.0f} s; killing {self.daemon.name}")
        self.daemon.kill()

    def __enter__(self):
        if self.daemon is not None and self.seconds > 0:
            self.timer = threading.Timer(self.seconds, self._fire)
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc):
        if self.timer:
            self.timer.cancel()
        if self.fired:
            raise BenchError(f"{self.what}: timed out after {self.seconds:.0f} s; daemon killed") from exc[1]
        return False


# --------------------------------------------------------------------------------- workload ---

@dataclass
class Result:
    bytes: int
    seconds: float
    files: int
    extra: dict = field(default_factory=dict)

    @property
    def mib_s(self) -> float:
        return self.bytes / MiB / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = {"mib_s": round(self.mib_s, 1), "bytes": self.bytes, "seconds": round(self.seconds, 4),
             "files": self.files}
        d.update(self.extra)
        return d


def loadavg() -> str:
    """The load averages (1, 5, 15 minutes) as /proc/loadavg gives them, or "?"."""
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def parse_threads(text: str) -> list[int]:
    """argparse type for a comma list of thread counts ("1,8")."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of thread counts: {text!r}")
    if not out or any(t <= 0 for t in out):
        raise argparse.ArgumentTypeError(f"thread counts must be positive: {text!r}")
    return out


def terminate_on_signal(signum, _frame):
    """SIGTERM/SIGHUP handler: unwinds like Ctrl-C, so every daemon a benchmark started is stopped."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_threads(n_items: int, threads: int, fn) -> float:
    """Runs fn(thread_index, indices) on `threads` threads over a strided split. Returns the seconds from
    the first thread's start to the last thread's end, read by the workers themselves after a common
    barrier: with more threads than CPUs the main thread may run late after the barrier, and its own
    clock would then miss the start of the work. Shared by the other benchmarks."""
    errors: list[BaseException] = []
    starts = [0.0] * threads
    ends = [0.0] * threads
    barrier = threading.Barrier(threads)

    def body(t: int) -> None:
        try:
            barrier.wait()
            starts[t] = time.perf_counter()
            fn(t, range(t, n_items, threads))
            ends[t] = time.perf_counter()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    workers = [threading.Thread(target=body, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise BenchError(f"{len(errors)} worker(s) failed; first: {errors[0]!r}")
    return max(ends) - min(starts)


class Blocks:
    """The N benchmark blocks: names, contents (distinct per block) and where they live."""

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size
        self.names = [block_hash(i) for i in range(n)]
        self.base = os.urandom(size)  # incompressible, like fp16/bf16 KV data

    def canonical(self, root: Path, i: int) -> str:
        h = self.names[i]
        return f"{root}/{h[:2]}/{h}"

    def flat(self, root: Path, i: int) -> str:
        return f"{root}/{self.names[i]}"

    def write(self, path_of, threads: int, *, fsync: bool = False) -> Result:
        size = self.size

        def worker(t: int, indices) -> None:
            buf = bytearray(self.base)  # per-thread copy; only the 16-byte header changes per block
            mv = memoryview(buf)
            for i in indices:
                buf[0:16] = block_header(i)
                write_new_file(path_of(i), mv, fsync=fsync)

        secs = run_threads(self.n, threads, worker)
        return Result(self.n * size, secs, self.n)

    def read(self, path_of, threads: int) -> Result:
        size = self.size
        total = [0] * threads

        def worker(t: int, indices) -> None:
            buf = bytearray(READ_CHUNK)
            mv = memoryview(buf)
            got_total = 0
            for i in indices:
                fd = os.open(path_of(i), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    got = 0
                    first = True
                    while True:
                        n = os.readv(fd, [mv])
                        if n == 0:
                            break
                        if first:
                            if n >= 16 and buf[0:16] != block_header(i):
                                raise BenchError(f"{path_of(i)}: wrong content (header {bytes(buf[0:16])!r})")
                            first = False
                        got += n
                finally:
                    os.close(fd)
                if got != size:
                    raise BenchError(f"{path_of(i)}: read {got} bytes, expected {size}")
                got_total += got
            total[t] = got_total

        secs = run_threads(self.n, threads, worker)
        return Result(sum(total), secs, self.n)


# --------------------------------------------------------------------------------- open mode --

_libc = None


def _resident_fraction(fd: int, size: int) -> float | str:
    """Share of the file's pages in the page cache (mmap + mincore), or the mmap error's name."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_long]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        return errno_name(ctypes.get_errno())
    try:
        page = mmap.PAGESIZE
        vec = ctypes.create_string_buffer((size + page - 1) // page)
        if _libc.mincore(addr, size, vec) != 0:
            return errno_name(ctypes.get_errno())
        return sum(b & 1 for b in vec.raw) / len(vec.raw)
    finally:
        _libc.munmap(addr, size)


def add_mount_options(ap, *, phase_timeout: float, resident_timeout: float | None = None) -> None:
    """The options every mount benchmark takes: where the JSON goes, its time limits, and --keep."""
    ap.add_argument("--json", type=Path, help="write every figure as JSON here")
    ap.add_argument("--mount-timeout", type=float, default=30.0, help="seconds to wait for a mount (default 30)")
    if resident_timeout is not None:
        ap.add_argument("--resident-timeout", type=float, default=resident_timeout,
                        help=f"seconds to wait for prefetched blocks to load (default {resident_timeout:.0f})")
    ap.add_argument("--phase-timeout", type=float, default=phase_timeout,
                    help=f"seconds before a hung phase's daemon is killed (default {phase_timeout:.0f})")
    ap.add_argument("--keep", action="store_true", help="keep the twfs stores under DIR")


def write_new_file(path: str, data: memoryview, *, fsync: bool = False) -> None:
    """Creates `path` (it must not exist), writes all of `data` (a short write is continued) and closes it,
    with an fsync before the close when asked: one block as an engine writes it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        off = 0
        while off < len(data):
            off += os.write(fd, data[off:])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def cached_fraction(path: str) -> float:
    """Share of the file's pages in the page cache; raises BenchError when mincore cannot tell."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        r = _resident_fraction(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    if isinstance(r, str):
        raise BenchError(f"mincore on {path}: {r}")
    return r


def errno_name(e: int) -> str:
    return errno.errorcode.get(e, str(e))


def probe_open_mode(path: str) -> dict:
    """How a FUSE server opens this file, seen from the kernel's page cache:
    direct_io  - reads bypass the page cache (or MAP_SHARED is refused: ENODEV);
    keep_cache - pages read stay cached across close and a new open;
    default    - pages are cached while open but dropped by the next open."""
    try:
        size = os.stat(path).st_size
        buf = bytearray(READ_CHUNK)
        fd = os.open(path, os.O_RDONLY)
        try:
            while os.readv(fd, [buf]):
                pass
            after_read = _resident_fraction(fd, size)
        finally:
            os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        try:
            after_reopen = _resident_fraction(fd, size)
        finally:
            os.close(fd)
    except OSError as e:
        return {"mode": None, "error": repr(e)}
    if isinstance(after_read, str) or after_read < 0.5:
        mode = "direct_io"
    elif isinstance(after_reopen, float) and after_reopen >= 0.5:
        mode = "keep_cache"
    else:
        mode = "default"
    return {"mode": mode, "resident_after_read": after_read, "resident_after_reopen": after_reopen}


# --------------------------------------------------------------------------------- phases -----

def fio_phase(args, blocks: Blocks, work: Path) -> dict[str, Result]:
    fio = shutil.which("fio")
    if not fio:
        raise BenchError("fio not found (apt-get install -y fio)")
    d = work / "fio"
    rmtree(d)
    d.mkdir(parents=True)
    per_job = max(blocks.size, (blocks.n * blocks.size // args.threads) // blocks.size * blocks.size)
    out: dict[str, Result] = {}
    try:
        for rw in ("write", "read"):
            cmd = [fio, f"--name=seq{rw}", f"--directory={d}", "--direct=1", f"--rw={rw}",
                   f"--bs={blocks.size}", f"--size={per_job}", f"--numjobs={args.threads}",
                   "--group_reporting", "--output-format=json"]
            if args.fio_iodepth:
                # The disk's own parallelism from one job: what one engine thread's prefix load competes with.
                cmd[-2:-2] = ["--ioengine=libaio", f"--iodepth={args.fio_iodepth}"]
            os.sync()
            log(f"fio {rw}: {shlex.join(cmd)}")
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.phase_timeout)
            if r.returncode != 0:
                raise BenchError(f"fio {rw} failed ({r.returncode}):\n{r.stderr}\n{r.stdout}")
            text = r.stdout[r.stdout.index("{"):]  # fio may print notes before the JSON
            job = json.loads(text)["jobs"][0][rw]
            secs = job["runtime"] / 1000.0
            out[f"fio_{rw}"] = Result(job["io_bytes"], secs, args.threads,
                                      {"fio_bw_mib_s": round(job["bw_bytes"] / MiB, 1),
                                       "iops": round(job["iops"], 1), "command": shlex.join(cmd)})
            # Use fio's own bandwidth figure: it is what "fio direct sequential ..." means.
            out[f"fio_{rw}"].seconds = job["io_bytes"] / job["bw_bytes"] if job["bw_bytes"] else secs
    finally:
        rmtree(d)
    return out


def ext4_phase(args, blocks: Blocks, work: Path, fsync: bool) -> Result:
    d = work / ("ext4-fsync" if fsync else "ext4-nofsync")
    rmtree(d)
    d.mkdir(parents=True)
    for i in range(256):
        (d / f"{i:02x}").mkdir()
    os.sync()
    try:
        r = blocks.write(lambda i: blocks.canonical(d, i), args.threads, fsync=fsync)
        t0 = time.perf_counter()
        os.sync()  # not timed: keeps later phases clear of this one's writeback
        r.extra["sync_after_s"] = round(time.perf_counter() - t0, 3)
        r.extra["fsync_per_file"] = fsync
        return r
    finally:
        rmtree(d)
        os.sync()


def twfs_cmd(args, mnt: Path, store: Path, sync: str, capacity: int) -> list[str]:
    cmd = [str(args.twfs), str(mnt), "--store", str(store), "--capacity", fmt_capacity(capacity),
           "--sync", sync, "-f"]
    if args.twfs_args:
        cmd += shlex.split(args.twfs_args)
    return cmd


def fmt_capacity(n: int) -> str:
    return f"{max(1, math.ceil(n / GiB))}G"


def twfs_phase(args, blocks: Blocks, work: Path, sync: str, results: dict, errors: list) -> None:
    """Write through twfs with --sync SYNC; for `batch`, also the uncached and cached read passes."""
    base = work / f"twfs-{sync}"
    rmtree(base)
    store, mnt = base / "store", base / "mnt"
    store.mkdir(parents=True)
    capacity = 2 * blocks.n * blocks.size + GiB
    logp = work / f"twfs-{sync}.log"
    logp.unlink(missing_ok=True)
    daemon = Daemon(f"twfs --sync {sync}", twfs_cmd(args, mnt, store, sync, capacity), mnt, logp,
                    args.mount_timeout)
    ns = mnt / "bench"
    try:
        os.sync()
        daemon.start()
        with Watchdog(daemon, args.phase_timeout, f"twfs write --sync {sync}"):
            try:
                os.mkdir(ns)  # creates the namespace
            except FileExistsError:
                pass
            r = blocks.write(lambda i: blocks.canonical(ns, i), args.threads)
        results[f"twfs_write_{sync}"] = r
        log(f"twfs write --sync {sync}: {r.mib_s:.0f} MiB/s")
        if sync != "batch":
            return
        rc = daemon.stop()
        if rc not in (0, None):
            log(f"note: twfs exited with status {rc} after unmount")
        dropped = drop_caches()
        daemon.start()
        with Watchdog(daemon, args.phase_timeout, "twfs uncached read"):
            r = blocks.read(lambda i: blocks.canonical(ns, i), args.threads)
        r.extra["page_cache_dropped"] = dropped
        results["twfs_read_uncached"] = r
        log(f"twfs uncached read: {r.mib_s:.0f} MiB/s")
        passes = []
        with Watchdog(daemon, args.phase_timeout, "twfs cached read"):
            for _ in range(args.repeat):
                passes.append(blocks.read(lambda i: blocks.canonical(ns, i), args.threads))
        best = max(passes, key=lambda p: p.mib_s)
        best.extra["passes_mib_s"] = [round(p.mib_s, 1) for p in passes]
        results["twfs_read_cached"] = best
        log(f"twfs cached read: {best.mib_s:.0f} MiB/s (passes {best.extra['passes_mib_s']})")
        with Watchdog(daemon, args.phase_timeout, "twfs open-mode probe"):
            best.extra["open_mode"] = probe_open_mode(blocks.canonical(ns, 0))
        log(f"twfs open mode: {best.extra['open_mode']}")
    except MountError as e:
        print(f"\nERROR: {e}\n", file=sys.stderr)
        errors.append(f"twfs --sync {sync}: mount failed: {str(e).splitlines()[0]}")
        raise
    except (BenchError, OSError) as e:
        print(f"\nERROR: twfs --sync {sync}: {e!r}\n--- {logp} ---\n{daemon.log_text()}\n", file=sys.stderr)
        errors.append(f"twfs --sync {sync}: {e!r}")
    finally:
        daemon.stop()
        if not args.keep:
            rmtree(base)
        os.sync()


def build_memfs(args, work: Path) -> Path:
    if args.memfs:
        return Path(args.memfs)
    src = HERE / "memfs.c"
    out = work / "bin" / "memfs"
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True)
    if flags.returncode != 0:
        raise BenchError(f"pkg-config fuse3 failed (apt-get install -y libfuse3-dev): {flags.stderr}")
    cmd = [cc, "-O2", "-o", str(out), str(src), *flags.stdout.split(), "-lpthread"]
    log(f"build memfs: {shlex.join(cmd)}")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"memfs build failed:\n{r.stderr}")
    return out


MEMFS_MODES = {"default": [], "keep_cache": ["--keep-cache"], "direct_io": ["--direct-io"]}


def memfs_phase(args, blocks: Blocks, work: Path, memfs: Path, mode: str) -> Result:
    base = work / f"memfs-{mode}"
    rmtree(base)
    mnt = base / "mnt"
    mnt.mkdir(parents=True)
    logp = work / f"memfs-{mode}.log"
    logp.unlink(missing_ok=True)
    daemon = Daemon(f"memfs {mode}", [str(memfs), str(mnt), "-f", *MEMFS_MODES[mode]], mnt, logp,
                    args.mount_timeout)
    try:
        daemon.start()
        with Watchdog(daemon, args.phase_timeout, f"memfs {mode}"):
            w = blocks.write(lambda i: blocks.flat(mnt, i), args.threads)
            first = blocks.read(lambda i: blocks.flat(mnt, i), args.threads)  # same history as twfs
            passes = [blocks.read(lambda i: blocks.flat(mnt, i), args.threads) for _ in range(args.repeat)]
            probe = probe_open_mode(blocks.flat(mnt, 0))
        best = max(passes, key=lambda p: p.mib_s)
        best.extra.update({"passes_mib_s": [round(p.mib_s, 1) for p in passes],
                           "first_pass_mib_s": round(first.mib_s, 1),
                           "populate_mib_s": round(w.mib_s, 1), "flags": MEMFS_MODES[mode],
                           "open_mode": probe})
        if probe.get("mode") != mode:
            log(f"warning: memfs {mode}: open-mode probe says {probe}")
        log(f"memfs {mode}: populate {w.mib_s:.0f} MiB/s, first read {first.mib_s:.0f} MiB/s, "
            f"read {best.mib_s:.0f} MiB/s (passes {best.extra['passes_mib_s']})")
        return best
    finally:
        daemon.stop()
        rmtree(base)


# --------------------------------------------------------------------------------- report -----

# (row label, result key, baseline label, baseline key, target ratio or None, target text)
ROWS = [
    ("write via twfs --sync batch", "twfs_write_batch", "fio direct seq write", "fio_write", 0.90, ">= 0.90"),
    ("write via twfs --sync always", "twfs_write_always", "ext4 file/block + fsync", "ext4_write_fsync",
     1.00, "> 1.00"),
    ("write via twfs --sync none", "twfs_write_none", "ext4 file/block, no fsync", "ext4_write_nofsync",
     1.00, "> 1.00"),
    ("write via twfs --sync always", "twfs_write_always", "fio direct seq write", "fio_write", None, "info"),
    ("read via twfs, uncached (NVMe)", "twfs_read_uncached", "fio direct seq read", "fio_read", 0.90, ">= 0.90"),
    ("read via twfs, cached (DRAM)", "twfs_read_cached", "memfs, same open mode", "memfs_read_SAME", 0.80,
     ">= 0.80"),
    ("read via twfs, cached (DRAM)", "twfs_read_cached", "memfs (default)", "memfs_read_default", None, "info"),
    ("read via twfs, cached (DRAM)", "twfs_read_cached", "memfs --keep-cache", "memfs_read_keep_cache",
     None, "info"),
    ("read via twfs, cached (DRAM)", "twfs_read_cached", "memfs --direct-io", "memfs_read_direct_io",
     None, "info"),
]


def build_rows(results: dict[str, Result]) -> list[dict]:
    rows = []
    cached = results.get("twfs_read_cached")
    same = (cached.extra.get("open_mode") or {}).get("mode") if cached else None
    for label, key, blabel, bkey, target, ttext in ROWS:
        if bkey == "memfs_read_SAME":
            mode = same or "default"
            bkey = f"memfs_read_{mode}"
            flag = MEMFS_MODES[mode][0] if MEMFS_MODES[mode] else "(default)"
            blabel = f"memfs {flag}, twfs's open mode" if same else f"memfs {flag}"
        r, b = results.get(key), results.get(bkey)
        ratio = r.mib_s / b.mib_s if r and b and b.mib_s > 0 else None
        met = None
        if ratio is not None and target is not None:
            met = ratio >= target if ttext.startswith(">=") else ratio > target
        rows.append({"path": label, "key": key, "mib_s": round(r.mib_s, 1) if r else None,
                     "baseline": blabel, "baseline_key": bkey,
                     "baseline_mib_s": round(b.mib_s, 1) if b else None,
                     "ratio": round(ratio, 3) if ratio is not None else None,
                     "target": ttext, "target_ratio": target, "met": met})
    return rows


def render_table(rows: list[dict]) -> str:
    head = ["path", "MiB/s", "baseline", "baseline MiB/s", "ratio", "target"]
    body = []
    for r in rows:
        target = r["target"]
        if r["met"] is not None:
            target += " ok" if r["met"] else " MISS"
        body.append([r["path"], "-" if r["mib_s"] is None else f"{r['mib_s']:.0f}", r["baseline"],
                     "-" if r["baseline_mib_s"] is None else f"{r['baseline_mib_s']:.0f}",
                     "-" if r["ratio"] is None else f"{r['ratio']:.2f}", target])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    right = {1, 3, 4}

    def line(cells):
        return " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([line(head), sep] + [line(b) for b in body])


def print_notes_and_errors(notes: list[str], errors: list) -> bool:
    """The end of a benchmark's report: its notes, then its errors. True when there were errors."""
    if notes:
        print()
        print("\n".join(notes))
    if errors:
        print("\nerrors:")
        for e in errors:
            print(f"  - {e}")
    return bool(errors)


def run_record(command: str, t_start: float) -> dict:
    """The head of a benchmark's JSON: the command that ran, when it started and how long it took."""
    return {"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
            "duration_s": round(time.time() - t_start, 1)}


def write_json(path: Path, doc: dict) -> None:
    """Writes a benchmark's figures as JSON (shared by the other benchmarks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nJSON: {path}")


def disk_of(path: Path) -> str:
    try:
        r = subprocess.run(["df", "--output=source,fstype", str(path)], capture_output=True, text=True)
        return " ".join(r.stdout.split()[2:]) if r.returncode == 0 else "?"
    except OSError:
        return "?"


# --------------------------------------------------------------------------------- main -------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twfs", type=Path, default=REPO / ".build" / "release" / "twfs",
                    help="twfs binary (default .build/release/twfs)")
    ap.add_argument("--twfs-args", default="", help="extra arguments for every twfs mount, e.g. '--dram 4G'")
    ap.add_argument("--no-twfs", action="store_true", help="only the baselines (fio, ext4, memfs)")
    ap.add_argument("--memfs", help="prebuilt memfs binary (default: build Tools/bench/memfs.c into DIR/bin)")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/tw-bench"),
                    help="scratch directory on the disk under test (default /var/tmp/tw-bench)")
    ap.add_argument("--block-size", type=parse_size, default=2 * MiB, help="block size (default 2M)")
    ap.add_argument("--blocks", type=int, help="number of blocks (default: ~2 GiB of data; --quick: ~128 MiB)")
    ap.add_argument("--threads", type=int, default=4, help="reader/writer concurrency (default 4)")
    ap.add_argument("--fio-iodepth", type=int, default=0,
                    help="fio with libaio at this queue depth per job (default: psync, depth 1); "
                         "'--threads 1 --fio-iodepth 16' compares one reader or writer with the disk's parallelism")
    ap.add_argument("--repeat", type=int, default=3, help="cached-read passes, best counts (default 3)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    add_mount_options(ap, phase_timeout=900.0)
    ap.add_argument("--skip", default="", help="comma list of phases to skip: fio,ext4,twfs,memfs")
    args = ap.parse_args()

    if args.blocks is None:
        target_bytes = 128 * MiB if args.quick else 2 * GiB
        args.blocks = max(args.threads, math.ceil(target_bytes / args.block_size))
    if args.blocks <= 0 or args.threads <= 0 or args.repeat <= 0:
        ap.error("--blocks, --threads and --repeat must be positive")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.no_twfs:
        skip.add("twfs")
    args.dir = args.dir.resolve()
    args.twfs = Path(os.path.abspath(args.twfs))  # keep .build/release as given (a symlink)

    command = shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv))
    total = args.blocks * args.block_size
    print(f"command: {command}")
    print(f"data: {args.blocks} blocks x {fmt_size(args.block_size)} = {total / MiB:.0f} MiB, "
          f"threads {args.threads}, dir {args.dir} ({disk_of(args.dir.parent if not args.dir.exists() else args.dir)}), "
          f"kernel {platform.release()}, {os.cpu_count()} CPUs", flush=True)
    if os.geteuid() != 0:
        log("warning: not root: mounting and drop_caches may fail")

    work = args.dir
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Result] = {}
    errors: list[str] = []
    blocks = Blocks(args.blocks, args.block_size)
    t_start = time.time()
    exit_code = 0

    def guarded(name: str, fn) -> None:
        try:
            fn()
        except MountError:
            raise
        except (BenchError, OSError, subprocess.SubprocessError) as e:
            print(f"\nERROR in {name}: {e}\n", file=sys.stderr)
            errors.append(f"{name}: {e}")

    try:
        if "fio" not in skip:
            guarded("fio", lambda: results.update(fio_phase(args, blocks, work)))
        if "ext4" not in skip:
            guarded("ext4 fsync", lambda: results.__setitem__("ext4_write_fsync", ext4_phase(args, blocks, work, True)))
            guarded("ext4 nofsync",
                    lambda: results.__setitem__("ext4_write_nofsync", ext4_phase(args, blocks, work, False)))
        if "twfs" not in skip:
            if not args.twfs.exists():
                print(f"\nERROR: twfs binary not found at {args.twfs} (build it with `swift build -c release`, "
                      f"or pass --twfs PATH, or --no-twfs for the baselines only)\n", file=sys.stderr)
                errors.append(f"twfs binary not found: {args.twfs}")
            else:
                try:
                    for sync in ("batch", "always", "none"):
                        twfs_phase(args, blocks, work, sync, results, errors)
                except MountError:
                    pass  # printed with its log; the remaining twfs phases are skipped
        if "memfs" not in skip:
            memfs = None
            try:
                memfs = build_memfs(args, work)
            except BenchError as e:
                print(f"\nERROR: {e}\n", file=sys.stderr)
                errors.append(str(e))
            if memfs:
                for mode in MEMFS_MODES:
                    try:
                        guarded(f"memfs {mode}",
                                lambda: results.__setitem__(f"memfs_read_{mode}",
                                                            memfs_phase(args, blocks, work, memfs, mode)))
                    except MountError as e:
                        print(f"\nERROR: {e}\n", file=sys.stderr)
                        errors.append(f"memfs {mode}: mount failed")
    except KeyboardInterrupt:
        errors.append("interrupted")
        exit_code = 130

    rows = build_rows(results)
    print()
    print(render_table(rows))
    extra = []
    for key in ("memfs_read_default", "memfs_read_keep_cache", "memfs_read_direct_io"):
        if key in results:
            e = results[key].extra
            extra.append(f"{key}: first pass {e['first_pass_mib_s']:.0f} MiB/s, populate {e['populate_mib_s']:.0f} MiB/s")
    for key in ("ext4_write_fsync", "ext4_write_nofsync"):
        if key in results:
            extra.append(f"{key}: untimed sync afterwards took {results[key].extra['sync_after_s']} s")
    if print_notes_and_errors(extra, errors):
        exit_code = exit_code or 1

    if args.json:
        doc = {
            **run_record(command, t_start),
            "config": {"dir": str(args.dir), "disk": disk_of(args.dir), "block_size": args.block_size,
                       "blocks": args.blocks, "bytes": total, "threads": args.threads, "repeat": args.repeat,
                       "quick": args.quick, "twfs": str(args.twfs), "twfs_args": args.twfs_args,
                       "kernel": platform.release(), "cpus": os.cpu_count(), "read_chunk": READ_CHUNK},
            "results": {k: v.as_dict() for k, v in results.items()},
            "rows": rows,
            "errors": errors,
        }
        write_json(args.json, doc)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
