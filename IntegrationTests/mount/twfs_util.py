"""Helpers shared by the twfs integration tests: deterministic block contents, names, errno checks.

Block contents are derived from the block's name so that a test (or a reader thread, or a check after a
crash) can recompute what any block must hold without keeping its bytes in memory.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import subprocess
import sys
import time

READY_TIMEOUT_S = 20.0   # the contract: the daemon mounts within 20 s

# A prime period longer than LZ4's 64 KiB window: a page moved by any multiple of 4 KiB (or 64 KiB)
# changes the bytes, and the contents do not compress to nothing.
PATTERN_PERIOD = 65537


@functools.lru_cache(maxsize=4096)
def _unit(name: str) -> bytes:
    return hashlib.shake_256(b"twfs-pattern\0" + name.encode("utf-8", "surrogateescape")).digest(
        PATTERN_PERIOD
    )


def pattern(name: str, size: int, offset: int = 0) -> bytes:
    """Bytes [offset, offset+size) of the deterministic content of the block named `name`."""
    if size <= 0:
        return b""
    unit = _unit(name)
    start = offset % PATTERN_PERIOD
    head = unit[start:]
    if size <= len(head):
        return head[:size]
    reps = (size - len(head)) // PATTERN_PERIOD + 1
    return (head + unit * reps)[:size]


def size_for(name: str, lo: int, hi: int) -> int:
    """A size in [lo, hi] derived from the name (so it can be recomputed)."""
    h = int.from_bytes(hashlib.sha256(b"twfs-size\0" + name.encode()).digest()[:8], "little")
    return lo + h % (hi - lo + 1)


def block_hash(*parts: object, length: int = 64) -> str:
    """A lowercase hex prefix hash (`length` hex chars, 16..128) derived from `parts`."""
    data = "\0".join(str(p) for p in parts).encode()
    return hashlib.shake_256(data).hexdigest((length + 1) // 2)[:length]


def canonical(ns_dir: os.PathLike | str, hash_hex: str) -> str:
    """MOUNT/NS/hh/HASH for a hex hash."""
    return os.path.join(os.fspath(ns_dir), hash_hex[:2], hash_hex)


def write_block(path: str, data: bytes, flags: int = os.O_CREAT | os.O_WRONLY | os.O_TRUNC,
                chunk: int = 1 << 20) -> None:
    """Create a block with raw syscalls (no Python buffering): open, write in chunks, close."""
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        off = 0
        while off < len(view):
            n = os.write(fd, view[off:off + chunk])
            assert n > 0, f"short write of 0 bytes at {off} to {path}"
            off += n
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    os.close(fd)


def read_block(path: str, chunk: int = 1 << 20, uncached: bool = False) -> bytes:
    """A whole block; with `uncached`, its page-cache pages are dropped first, so the read reaches the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if uncached:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        parts = []
        while True:
            b = os.read(fd, chunk)
            if not b:
                break
            parts.append(b)
        return b"".join(parts)
    finally:
        os.close(fd)


def first_difference(a: bytes, b: bytes) -> str:
    """A short description of where two byte strings differ (for assertion messages)."""
    if a == b:
        return "equal"
    n = min(len(a), len(b))
    for i in range(0, n, 4096):
        if a[i:i + 4096] != b[i:i + 4096]:
            for j in range(i, min(i + 4096, n)):
                if a[j] != b[j]:
                    return f"first difference at byte {j} (len {len(a)} vs {len(b)})"
    return f"lengths differ: {len(a)} vs {len(b)} (common prefix equal)"


def errno_of(fn, *args, **kwargs) -> int | None:
    """Run fn; return the errno of the OSError it raised, or None if it succeeded."""
    try:
        fn(*args, **kwargs)
    except OSError as e:
        return e.errno
    return None


def errname(code: int | None) -> str:
    if code is None:
        return "success"
    return errno.errorcode.get(code, str(code))


def assert_errno(expected, fn, *args, **kwargs) -> None:
    """Assert that fn(*args) raises OSError with an errno in `expected` (an int or a collection)."""
    allowed = {expected} if isinstance(expected, int) else set(expected)
    got = errno_of(fn, *args, **kwargs)
    assert got in allowed, (
        f"{getattr(fn, '__name__', fn)}{args!r}: expected "
        f"{' or '.join(sorted(errname(e) for e in allowed))}, got {errname(got)}"
    )


_PROBER_LOOP = r"""
import errno, hashlib, os, sys
def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))
for line in sys.stdin:
    cmd, path = line.rstrip("\n").split(" ", 1)
    if cmd == "probe":
        res = []
        for what, fn in (("stat", lambda: os.stat(path)), ("open", lambda: os.close(os.open(path, os.O_RDONLY)))):
            try:
                fn()
                res.append(what + "=ok")
            except OSError as e:
                res.append(what + "=" + name(e))
        out = " ".join(res)
    else:
        try:
            with open(path, "rb") as f:
                data = f.read()
            out = "%d %s" % (len(data), hashlib.sha256(data).hexdigest())
        except OSError as e:
            out = "error " + name(e)
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
"""


class LineProcess:
    """A Python child driven line by line over a pipe (one request line, one answer line): another
    process, so what it does (or a crash of it) is its own."""

    def __init__(self, code: str, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, close_fds=True, env=env)

    def send(self, line: str) -> str:
        """The answer line, or "" when the child died."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class Prober(LineProcess):
    """A helper process that stats, opens and reads paths on request: "another process" for visibility checks.

    Start it before opening the file under test: a process started later (fork + exec) would inherit the
    writer's descriptor, and closing it at exec sends the daemon a FUSE_FLUSH for that file.
    """

    def __init__(self):
        super().__init__(_PROBER_LOOP)

    def _ask(self, cmd: str, path) -> str:
        line = self.send(f"{cmd} {os.fspath(path)}")
        assert line, "prober process died"
        return line.strip()

    def probe(self, path) -> dict:
        """{"stat": "ok"|ERRNO, "open": "ok"|ERRNO} as seen from the helper process."""
        return dict(item.split("=") for item in self._ask("probe", path).split())

    def read(self, path) -> tuple[int, str]:
        """(size, sha256 hex) of the file as read by the helper process; raises AssertionError on errors."""
        out = self._ask("read", path)
        assert not out.startswith("error"), f"another process reading {path}: {out}"
        size, digest = out.split()
        return int(size), digest

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sha(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def file_sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def wait_until(pred, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def in_threads(worker, count: int, timeout: float = 60) -> list:
    """Runs `worker(i)` for i in 0..count-1, each on its own thread, all at once; waits for them (up to
    `timeout` seconds each) and returns what they raised or returned as failures: an exception, or any
    value a worker returned other than None (e.g. the (offset, length) of a wrong read)."""
    import threading
    failures: list = []

    def run(i):
        try:
            failures.extend(worker(i) or [])
        except BaseException as e:  # noqa: BLE001 - reported to the test's assertion
            failures.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    hung = sum(t.is_alive() for t in threads)
    if hung:
        failures.append(f"{hung} of {count} threads still running after {timeout} s")
    return failures


def run_as_user(uid: int, gid: int, fn, groups: list[int] | None = None):
    """fn() in a forked child that dropped to uid/gid; returns its JSON-able result (or raises)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 255
        try:
            os.close(r)
            os.setgroups(groups or [])
            os.setgid(gid)
            os.setuid(uid)
            try:
                out = {"ok": fn()}
            except BaseException as e:  # noqa: BLE001
                out = {"error": f"{type(e).__name__}: {e}"}
            os.write(w, json.dumps(out).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and raw, f"child as {uid}:{gid} failed (status {status})"
    out = json.loads(raw)
    assert "error" not in out, f"child as {uid}:{gid}: {out['error']}"
    return out["ok"]


def errno_as_user(uid: int, gid: int, fn, *args) -> int | None:
    """Run fn(*args) in a forked child that dropped to uid/gid; return its errno (None on success)."""
    def attempt():
        try:
            fn(*args)
            return None
        except OSError as e:
            return e.errno
    return run_as_user(uid, gid, attempt)


# --------------------------------------------------------------------------------------------- mounts

def _unescape_mount_path(s: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mounts_at(path: os.PathLike | str) -> list[dict]:
    """Mount entries (id, fstype, options) whose mount point is `path`, from /proc/self/mountinfo."""
    target = os.path.realpath(os.fspath(path))
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            fields = left.split(" ")
            rfields = right.split(" ")
            if len(fields) < 6 or len(rfields) < 3:
                continue
            if _unescape_mount_path(fields[4]) != target:
                continue
            found.append({
                "id": int(fields[0]),
                "fstype": rfields[0],
                "source": rfields[1],
                "options": set(fields[5].split(",")) | set(rfields[2].split(",")),
            })
    return found


def proc_mounts_types(path: os.PathLike | str) -> list[str]:
    """Filesystem types listed for `path` in /proc/mounts (the contract's readiness signal)."""
    target = os.path.realpath(os.fspath(path))
    types = []
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and _unescape_mount_path(parts[1]) == target:
                types.append(parts[2])
    return types


def lazy_unmount(path: os.PathLike | str) -> None:
    """Detach every mount stacked at `path` (fusermount3 -u -z, falling back to umount -l)."""
    for _ in range(8):
        if not mounts_at(path):
            return
        r = subprocess.run(["fusermount3", "-u", "-z", os.fspath(path)], capture_output=True, timeout=30)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", os.fspath(path)], capture_output=True, timeout=30)


# ------------------------------------------------------------------------------- reliability helpers

def twctl_binary() -> str:
    """The twctl to test: $TWCTL_BIN, else twctl beside $TWFS_BIN, else <repo>/.build/release/twctl."""
    env = os.environ.get("TWCTL_BIN")
    if env:
        return env
    twfs = os.environ.get("TWFS_BIN")
    if twfs and os.access(os.path.join(os.path.dirname(twfs), "twctl"), os.X_OK):
        return os.path.join(os.path.dirname(twfs), "twctl")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".build", "release", "twctl")


def run_twctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run twctl with arguments; returns the completed process (text stdout/stderr)."""
    return subprocess.run([twctl_binary(), *args], capture_output=True, text=True, timeout=timeout)


def rss_kib(pid: int) -> dict:
    """VmRSS, RssAnon, RssFile, RssShmem and VmHWM (KiB) of a process, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


SEGMENT_HEADER_SIZE = 4096
RECORD_MAGIC = b"TWR1"
RECORD_FIXED_HEADER = 64


def _align4k(n: int) -> int:
    return (n + 4095) & ~4095


def segment_records(path: os.PathLike | str) -> list[dict]:
    """The records of a segment file as docs/format.md lays them out, without checking checksums.

    Each: offset, size (whole record), type (1 block, 2 tombstone), namespace, key, header_area,
    stored (payload length), and the byte ranges a checksum covers: `checked` = [(start, end), ...]
    (fixed header, namespace, key, metadata, stored payload). Zero pages are skipped; a page that does
    not start with the record magic ends the walk (callers parse undamaged files).
    """
    with open(path, "rb") as f:
        data = f.read()
    records, off = [], SEGMENT_HEADER_SIZE
    while off + RECORD_FIXED_HEADER <= len(data):
        head = data[off:off + RECORD_FIXED_HEADER]
        if head[:4] != RECORD_MAGIC:
            if data[off:off + 4096].count(0) == len(data[off:off + 4096]):
                off += 4096
                continue
            break
        kind, ns_len = head[4], head[6]
        key_len = int.from_bytes(head[8:10], "little")
        meta_len = int.from_bytes(head[10:12], "little")
        stored = int.from_bytes(head[12:16], "little")
        var_end = off + RECORD_FIXED_HEADER + ns_len + key_len + meta_len
        area = _align4k(RECORD_FIXED_HEADER + ns_len + key_len + meta_len)
        size = area + _align4k(stored)
        records.append({
            "offset": off, "size": size, "type": kind, "header_area": area, "stored": stored,
            "namespace": data[off + 64:off + 64 + ns_len].decode("utf-8", "surrogateescape"),
            "key": data[off + 64 + ns_len:off + 64 + ns_len + key_len].decode("utf-8", "surrogateescape"),
            "checked": [(off, var_end)] + ([(off + area, off + area + stored)] if stored else []),
        })
        off += size
    return records
