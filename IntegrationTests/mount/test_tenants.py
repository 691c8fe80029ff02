"""Tenants and hostile local users (issue 16, docs/security.md): nobody reads what is not theirs, nothing
crashes, nothing is written outside the store, and nobody makes the daemon hold unbounded memory.

Every test runs on its own warehouse (conftest.py: own directories, time limit, guaranteed unmount and
kill) and ends with the daemon alive, serving, and its private memory (VmRSS less the DRAM tier's shared
pages, /proc/PID/status) bounded.

Other users are bare numeric uids/gids (no passwd entry needed, as in test_reliability_permissions.py):
the test forks, the child drops to the user with setgroups/setgid/setuid and runs a Python function
that talks to the parent over pipes (`as_user`). A forked child keeps the modules pytest imported, so
it can use the checkout's `tokenwarehouse` client without reading anything under /root.

Covered elsewhere, not repeated here: test_dram_tier.py (a user maps only namespaces it could read;
group members map a 0750 group namespace; the broker's runtime directory), test_reliability_permissions.py
(0700/0750 namespaces; the control area and runtime files are not writable by others),
test_reliability_hostile.py (hostile names), test_twctl_ops.py (quota EDQUOT basics, a pinned namespace
survives eviction pressure, metrics basics), test_tools.py (killed writers), the Swift unit tests (crafted
superblocks, hit-counter sealing).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import random
import resource
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from twfs_util import (block_hash, canonical, errname, lazy_unmount, pattern, read_block, rss_kib, run_twctl,
                       wait_until, write_block)

try:
    import tokenwarehouse  # noqa: F401
except ImportError as e:   # most likely xxhash is missing
    if os.environ.get("TWFS_REQUIRE_BINARY") == "1":
        raise
    pytest.skip(f"the tokenwarehouse client cannot be imported ({e}); pip install xxhash", allow_module_level=True)

from tokenwarehouse import Client  # noqa: E402

CLIENT_PATH = os.path.dirname(os.path.dirname(os.path.abspath(tokenwarehouse.__file__)))

pytestmark = pytest.mark.timeout(120)

KiB, MiB = 1 << 10, 1 << 20
ALICE, BOB, CAROL = 4301, 4302, 4303                 # separate users, each its own group id
FILLERS = (4311, 4312, 4313, 4314)
B_BYTE = 0x42                                        # what Bob writes in the staging test


# ---------------------------------------------------------------------------------------- other users

class Child:
    """A forked child running as another user: it sends JSON lines, the parent may tell it to go on."""

    def __init__(self, pid: int, r_out: int, w_in: int, what: str):
        self.pid, self.r_out, self.w_in, self.what = pid, r_out, w_in, what
        self.buf = b""
        self.status: int | None = None

    def recv(self, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.what}: no answer within {timeout} s")
            ready, _, _ = select.select([self.r_out], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.r_out, 1 << 16)
            if not chunk:
                self.reap(5)
                raise AssertionError(f"{self.what}: the child ended without an answer (status {self.status})")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        msg = json.loads(line)
        if "error" in msg:
            raise AssertionError(f"{self.what} failed: {msg['error']}")
        return msg

    def go(self) -> None:
        os.write(self.w_in, b"g")

    def result(self, timeout: float = 60):
        msg = self.recv(timeout)
        self.reap(10)
        return msg.get("ok")

    def reap(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = st
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                _, self.status = os.waitpid(self.pid, 0)
                break
            time.sleep(0.01)

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, self.status = os.waitpid(self.pid, 0)
        for fd in (self.r_out, self.w_in):
            try:
                os.close(fd)
            except OSError:
                pass
        self.r_out = self.w_in = -1


class Chan:
    """The child's side: send(obj) a JSON line to the parent; wait() until the parent says go."""

    def __init__(self, w: int, r: int):
        self.w, self.r = w, r

    def send(self, obj) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            n = os.write(self.w, data)
            data = data[n:]

    def wait(self) -> None:
        if os.read(self.r, 1) != b"g":
            os._exit(0)          # the parent went away


_KIDS: list[Child] = []


def as_user(uid: int, gid: int, fn, *, groups: list[int] | None = None, nofile: int | None = None) -> Child:
    """fork; the child drops to uid/gid (and raises its descriptor limit to `nofile` first) and runs
    fn(chan); its return value (JSON-able) is its result (Child.result)."""
    r_out, w_out = os.pipe()
    r_in, w_in = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never return into pytest
        code = 255
        try:
            os.close(r_out)
            os.close(w_in)
            chan = Chan(w_out, r_in)
            try:
                if nofile:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
                os.setgroups(groups or [])
                os.setgid(gid)
                os.setuid(uid)
                out = {"ok": fn(chan)}
            except BaseException as e:  # noqa: BLE001
                out = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"}
            chan.send(out)
            code = 0
        finally:
            os._exit(code)
    os.close(w_out)
    os.close(r_in)
    child = Child(pid, r_out, w_in, f"child as uid {uid}")
    _KIDS.append(child)
    return child


def run_as(uid: int, gid: int, fn, **kw):
    """fn() as another user, to completion; returns its result."""
    return as_user(uid, gid, lambda chan: fn(), **kw).result()


@pytest.fixture
def kids(warehouse_factory):
    """Kills every child still running after the test (before the warehouses are torn down)."""
    _KIDS.clear()
    yield _KIDS
    for c in _KIDS:
        c.kill()
    _KIDS.clear()


def errno_name(fn, *args) -> str:
    try:
        fn(*args)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "ok"


# ---------------------------------------------------------------------------------------- the daemon

def held_kib(wh) -> int:
    """The daemon's private memory: VmRSS less the DRAM tier's shared pages (which --dram bounds)."""
    r = rss_kib(wh.proc.pid)
    return r["VmRSS"] - r.get("RssShmem", 0)


class MemoryWatch:
    """Samples the daemon's private memory every 20 ms in a thread; .peak is the highest seen (KiB)."""

    def __init__(self, wh):
        self.wh = wh
        self.base = held_kib(wh)
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, held_kib(self.wh))
            except (OSError, ValueError, KeyError):   # KeyError: the daemon is a zombie
                return
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._t.join(5)
        try:
            self.peak = max(self.peak, held_kib(self.wh))
        except (OSError, ValueError, KeyError):
            pass
        return self.growth_mib

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 1024


def healthy(wh, base_kib: int, limit_mib: float = 128, what: str = "") -> None:
    """The daemon is alive, answers, and holds at most limit_mib more private memory than at base_kib."""
    assert wh.alive(), f"twfs died {what}: exit {wh.proc.returncode}; log:\n{wh.log_tail(6000)}"
    assert wh.mounted_and_serving(), f"the mount does not answer {what}"
    wh.status()
    now = held_kib(wh)
    grown = (now - base_kib) / 1024
    assert grown < limit_mib, (f"the daemon holds {grown:.0f} MiB more than at the start {what} "
                               f"(VmRSS less shared tier pages: {base_kib // 1024} -> {now // 1024} MiB; "
                               f"bound {limit_mib} MiB): {rss_kib(wh.proc.pid)}")


def user_ns(wh, name: str, mode: int, uid: int = 0, gid: int | None = None) -> Path:
    """A namespace made by root and given to uid:gid with `mode` (chmod after mkdir: umask, sticky bit)."""
    path = wh.mount / name
    os.mkdir(path, 0o700)
    os.chown(path, uid, uid if gid is None else gid)
    os.chmod(path, mode)
    st = os.stat(path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, mode), (st.st_uid, oct(st.st_mode))
    return path


def read_status(mount) -> dict:
    with open(os.path.join(os.fspath(mount), ".tw", "status"), "rb") as f:
        return json.loads(f.read())


def tier_of(path) -> str:
    return os.getxattr(path, "user.tw.tier").decode()


def wait_resident(paths, timeout: float = 15.0) -> None:
    """Wait until every block's user.tw.tier says dram; a block not yet resident is read once (a miss
    through the mount loads it)."""
    paths = [os.fspath(p) for p in paths]
    if not wait_until(lambda: all(tier_of(p) == "dram" for p in paths), 1.0, 0.05):
        for p in paths:
            if tier_of(p) != "dram":
                read_block(p)
    assert wait_until(lambda: all(tier_of(p) == "dram" for p in paths), timeout, 0.05), \
        f"blocks not resident after {timeout} s: {[tier_of(p) for p in paths]}"


def read_uncached(path) -> bytes:
    """Read a whole block with its page-cache pages dropped first, so the read reaches the daemon."""
    return read_block(path, uncached=True)


def ctl(mount, request: bytes | str) -> dict:
    """One request through MOUNT/.tw/ctl (open read-write, write, read the answer)."""
    if isinstance(request, str):
        request = request.encode()
    fd = os.open(os.path.join(os.fspath(mount), ".tw", "ctl"), os.O_RDWR)
    try:
        try:
            os.write(fd, request)
        except OSError as e:
            return {"errno": errno.errorcode.get(e.errno, str(e.errno))}
        out = b""
        while True:                      # the answer is read from offset 0 (as twctl does)
            b = os.pread(fd, 1 << 16, len(out))
            if not b:
                break
            out += b
    finally:
        os.close(fd)
    try:
        return json.loads(out)
    except ValueError:
        return {"raw": out[:500].decode("utf-8", "replace")}


def foreign(data: bytes, allowed: bytes) -> int:
    """How many bytes of `data` are not one of `allowed`."""
    return len(data.translate(None, allowed))


# ---------------------------------------------------------------------------------- the DRAM tier

def tier_mappings(client) -> list:
    conn = client._conn
    assert conn is not None and conn.tiers, f"root mapped no tier: {client.tier_error}"
    return list(conn.tiers)


def found_in_tiers(tiers, samples: list[bytes]) -> list[tuple[str, int]]:
    """(tier name, offset) of each sample found in the data area of any of the mapped tiers."""
    hits = []
    for t in tiers:
        for s in samples:
            off = t.mm.find(s, t.data_lo, t.data_hi)
            if off >= 0:
                hits.append((t.name, off))
    return hits


def namespace_with_blocks(wh, name: str, label: str, sizes: list[int]) -> tuple[Path, dict[str, bytes]]:
    """A namespace `name` (mode 0755) holding one block of each size, written through the mount."""
    ns = wh.namespace(name, 0o755)
    blocks = {}
    for i, size in enumerate(sizes):
        h = block_hash(label, i)
        blocks[h] = pattern(h, size)
        write_block(canonical(ns, h), blocks[h])
    return ns, blocks


@pytest.mark.timeout(90)
def test_bytes_of_removed_blocks_are_cleared_from_the_tier(warehouse_factory):
    """Class 1: removed blocks' bytes are gone from the shared memory (unlink, evict), not just unlisted."""
    wh = warehouse_factory("--dram", "64M")
    base = held_kib(wh)
    ns, blocks = namespace_with_blocks(wh, "pub", "clear", [256 * KiB + 1000 * i for i in range(6)])
    wait_resident([canonical(ns, h) for h in blocks])

    def samples(data: bytes) -> list[bytes]:
        return [data[:64], data[100_000:100_064], data[-64:]]

    names = list(blocks)
    with Client(wh.mount) as c:
        tiers = tier_mappings(c)
        # The scan finds resident blocks (else it proves nothing).
        for h in names:
            assert found_in_tiers(tiers, samples(blocks[h])), "the bytes of a resident block are not in the tier"
        # unlink
        for h in names[:3]:
            os.unlink(canonical(ns, h))
        gone = names[:3]
        assert wait_until(lambda: not any(found_in_tiers(tiers, samples(blocks[h])) for h in gone), 5, 0.1), \
            (f"5 s after unlink, bytes of removed blocks are still in the shared tier memory: "
             f"{[(h[:12], found_in_tiers(tiers, samples(blocks[h]))) for h in gone]}")
        for h in names[3:]:
            assert found_in_tiers(tiers, samples(blocks[h])), "a block still stored lost its tier copy"
        # evict (a namespace's blocks removed by the owner's command)
        r = run_twctl("evict", os.fspath(wh.mount), "pub")
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: not any(found_in_tiers(tiers, samples(blocks[h])) for h in names), 10, 0.1), \
            (f"10 s after `twctl evict`, bytes of evicted blocks are still in the shared tier memory: "
             f"{[(h[:12], found_in_tiers(tiers, samples(blocks[h]))) for h in names]}")
        c.refresh()      # the tiers as handed out now (a new tier file would hold nothing of them either)
        now = list(c._conn.tiers) if c._conn is not None else []
        assert not any(found_in_tiers(now, samples(blocks[h])) for h in names)
    healthy(wh, base)


# ------------------------------------------------------------------------------------- hints, status

def _flat(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


def _oracle_view(status: dict) -> dict:
    """What a hint could change in the status that its sender reads: prefetch and tier counters, totals
    of gets. (Operation counts are left out: the sender's own status reads move them.)"""
    flat = _flat({k: status.get(k, {}) for k in ("prefetch", "dram_tier")})
    flat["gets"] = status.get("gets", 0)
    return flat


@pytest.mark.timeout(120)
def test_hints_for_an_unreadable_namespace_reveal_nothing_and_load_nothing(warehouse_factory, kids):
    """Class 2: Bob hints names of Alice's 0700 namespace. Hints for her stored blocks (resident or not),
    for names she never wrote and for a namespace that does not exist change Bob's view of the status
    identically; Bob's status shows no figure of her namespace; nothing of hers is loaded into the tier."""
    wh = warehouse_factory("--dram", "64M", "--dram-admit-writes", "off")
    base = held_kib(wh)
    secret = "alice-private"
    user_ns(wh, secret, 0o700, ALICE)
    ns = wh.mount / secret
    stored = [block_hash("oracle", i) for i in range(9)]
    missing = [block_hash("oracle-missing", i) for i in range(3)]
    nosuch = [block_hash("oracle-nosuch", i) for i in range(3)]

    def alice_writes():
        for h in stored:
            write_block(canonical(ns, h), pattern(h, 64 * KiB))
        # These three she reads: resident. Newest first, so the reads are no run through the log and
        # the prefetcher does not load the blocks written after them (log order): those stay cold.
        for h in reversed(stored[:3]):
            read_block(canonical(ns, h))
        return True
    run_as(ALICE, ALICE, alice_writes)
    resident, cold = stored[:3], stored[3:]
    wait_resident([canonical(ns, h) for h in resident])
    assert all(tier_of(canonical(ns, h)) == "nvme" for h in cold), [tier_of(canonical(ns, h)) for h in cold]
    time.sleep(0.5)

    mount = os.fspath(wh.mount)
    groups = {"resident": (secret, resident), "cold": (secret, cold[:3]), "missing": (secret, missing),
              "no-namespace": ("no-such-namespace", nosuch)}

    def bob(chan):
        def settled() -> dict:
            last = _oracle_view(read_status(mount))
            for _ in range(40):
                time.sleep(0.25)
                now = _oracle_view(read_status(mount))
                if now == last:
                    return now
                last = now
            return last
        deltas = {}
        before = settled()
        for kind, (nsname, names) in groups.items():
            fd = os.open(os.path.join(mount, ".tw", "prefetch"), os.O_WRONLY)
            try:
                os.write(fd, "".join(f"{nsname}\t{h}\n" for h in names).encode())
            finally:
                os.close(fd)
            after = settled()
            deltas[kind] = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
                            if after.get(k, 0) != before.get(k, 0)}
            before = after
        st = read_status(mount)
        return {"deltas": deltas, "usage": sorted(st.get("namespace_usage", {})),
                "text": json.dumps({k: v for k, v in st.items() if k != "namespaces"})}

    out = as_user(BOB, BOB, bob).result(90)
    deltas = out["deltas"]
    print(f"\nstatus changes seen by Bob after each kind of hint: {deltas}")
    first = deltas["missing"]
    differ = {k: d for k, d in deltas.items() if d != first}
    assert not differ, ("hints from Bob for Alice's stored blocks are told apart from hints for missing "
                        f"blocks by what Bob's status shows (changes after each kind of hint): {deltas}")
    assert secret not in out["usage"], f"Bob's status shows the figures of {secret}: {out['usage']}"
    assert f'"{secret}"' not in out["text"], f"Bob's status names {secret} outside the namespace list"
    # Nothing of Alice's was loaded for Bob.
    time.sleep(1.0)
    loaded = [h[:12] for h in cold if tier_of(canonical(ns, h)) != "nvme"]
    assert not loaded, f"Bob's hints loaded Alice's blocks into the tier: {loaded}"
    # Alice sees her figures; her own hint does load (the check above could have seen a load).
    mine = run_as(ALICE, ALICE, lambda: sorted(read_status(mount).get("namespace_usage", {})))
    assert secret in mine, f"Alice's status lacks her own namespace: {mine}"
    assert secret in read_status(mount)["namespace_usage"], "root's status lacks a namespace"

    def alice_hints():
        with open(os.path.join(mount, ".tw", "prefetch"), "w") as f:
            f.write(f"{secret}\t{cold[-1]}\n")
        return True
    run_as(ALICE, ALICE, alice_hints)
    assert wait_until(lambda: tier_of(canonical(ns, cold[-1])) == "dram", 10, 0.1), \
        "the owner's own hint did not load her block either (the prefetcher does not work here)"
    healthy(wh, base)


# ---------------------------------------------------------------------------------------- staging

@pytest.mark.timeout(150)
def test_pending_blocks_never_show_bytes_another_user_staged(warehouse_factory, kids):
    """Class 3: Alice writes and closes blocks over and over; Bob meanwhile creates blocks, writes at a
    high offset, reads the range he never wrote, and races pwrite against pread on his own pending file.
    Bob reads only zeros or his own bytes, in 30 rounds."""
    wh = warehouse_factory("--dram", "64M", capacity="4G")
    base = held_kib(wh)
    a_ns = user_ns(wh, "alice", 0o700, ALICE)
    b_ns = user_ns(wh, "bob", 0o700, BOB)
    rounds = 30
    span = 6 * MiB
    chunk = 64 * KiB

    def alice(chan):
        chan.wait()
        n = 0
        for r in range(rounds + 10):
            for k in range(4):
                h = block_hash("alice-staging", r, k)
                write_block(canonical(a_ns, h), pattern(h, 2 * MiB), chunk=256 * KiB)
                n += 1
            for k in range(4):
                os.unlink(canonical(a_ns, block_hash("alice-staging", r, k)))
        return n

    def bob(chan):
        chan.wait()
        rnd = random.Random(16)
        bad = []
        reads = 0
        mine = bytes([B_BYTE]) * chunk
        allowed = bytes([0, B_BYTE])
        for r in range(rounds):
            path = os.path.join(b_ns, f"bob-{r}.kv")
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
            try:
                os.pwrite(fd, bytes([B_BYTE]) * 4096, span)
                data = os.pread(fd, span, 0)
                reads += 1
                if len(data) != span or any(data):
                    bad.append(f"round {r}: never-written range [0, {span}): {len(data)} bytes, "
                               f"{len(data) - data.count(0)} not zero")
                order = list(range(span // chunk))
                rnd.shuffle(order)
                done = threading.Event()
                errors = []

                def writer():
                    try:
                        for i in order:
                            os.pwrite(fd, mine, i * chunk)
                    except OSError as e:
                        errors.append(f"pwrite: {e}")
                    finally:
                        done.set()

                def reader():
                    nonlocal reads
                    rr = random.Random(r)
                    while not done.is_set():
                        off = rr.randrange(0, span - chunk)
                        size = rr.choice((chunk, 3 * chunk + 17, MiB))
                        try:
                            d = os.pread(fd, size, off)
                        except OSError as e:
                            errors.append(f"pread: {e}")
                            return
                        reads += 1
                        n = foreign(d, allowed)
                        if n:
                            at = next(i for i, b in enumerate(d) if b not in allowed)
                            bad.append(f"round {r}: racing pread [{off}, +{size}) saw {n} bytes that are "
                                       f"neither zero nor Bob's (first at {off + at})")
                ts = [threading.Thread(target=writer), threading.Thread(target=reader),
                      threading.Thread(target=reader)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join(60)
                if errors:
                    bad.append(f"round {r}: {errors[:3]}")
                data = os.pread(fd, span + 4096, 0)
                if data != bytes([B_BYTE]) * (span + 4096):
                    bad.append(f"round {r}: after the writes the pending file holds {foreign(data, bytes([B_BYTE]))}"
                               f" bytes that are not Bob's ({len(data)} bytes)")
            finally:
                os.close(fd)
            data = read_block(path)
            if data != bytes([B_BYTE]) * (span + 4096):
                bad.append(f"round {r}: the committed block holds {foreign(data, bytes([B_BYTE]))} foreign bytes")
            os.unlink(path)
        return {"bad": bad[:20], "n_bad": len(bad), "reads": reads}

    a = as_user(ALICE, ALICE, alice)
    b = as_user(BOB, BOB, bob)
    a.go()
    time.sleep(0.3)     # Alice's first blocks are staged and committed before Bob starts
    b.go()
    out = b.result(130)
    a.kill()
    assert out["n_bad"] == 0, f"Bob read bytes he never wrote ({out['n_bad']} findings): {out['bad']}"
    assert out["reads"] > rounds * 5, out
    healthy(wh, base, 192)


# ---------------------------------------------------------------------------------- damaged copies

def daemon_tier_files(wh) -> list[str]:
    """/proc/PID/fd paths of the daemon's tier memory (a deleted file under .../memory/ or a memfd),
    hit-counter files left out, one per file."""
    pid = wh.proc.pid
    out, seen = [], set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        p = f"/proc/{pid}/fd/{fd}"
        try:
            link = os.readlink(p)
            st = os.stat(p)
        except OSError:
            continue
        if ".hits" in link or not ("/memory/" in link or link.startswith("/memfd:")):
            continue
        if (st.st_dev, st.st_ino) in seen or not stat.S_ISREG(st.st_mode):
            continue
        seen.add((st.st_dev, st.st_ino))
        out.append(p)
    return out


def flip_in_daemon_memory(wh, data: bytes, at: int) -> int:
    """Find `data`'s copy in the daemon's tier memory and flip the byte at offset `at` of it; returns
    how many copies were damaged."""
    probe = data[at - 32:at + 32]
    damaged = 0
    files = daemon_tier_files(wh)
    assert files, f"no tier memory among the daemon's descriptors: {os.listdir(f'/proc/{wh.proc.pid}/fd')}"
    for p in files:
        fd = os.open(p, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                continue
            with mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE) as m:
                off = m.find(probe)
                while off >= 0:
                    m[off + 32] ^= 0x5A
                    damaged += 1
                    off = m.find(probe, off + 1)
        finally:
            os.close(fd)
    return damaged


@pytest.mark.timeout(90)
def test_a_damaged_dram_copy_is_never_served(warehouse_factory):
    """Class 4: a byte of a resident block flipped in the tier's memory (as root, through the daemon's
    own descriptor): reads through the mount and `Client(verify=True)` return exactly the stored bytes,
    and the damaged copy is dropped (a client that does not verify then gets the right bytes too)."""
    wh = warehouse_factory("--dram", "64M")
    base = held_kib(wh)
    ns, blocks = namespace_with_blocks(wh, "pub", "damage", [512 * KiB + 333 * i for i in range(4)])
    x, y, z, w = list(blocks)
    # Resident without a read through the mount (writes enter the tier), so no page of them is cached
    # by the kernel: every read below reaches the daemon.
    for h in blocks:
        if tier_of(canonical(ns, h)) != "dram":
            with Client(wh.mount) as c:
                c.prefetch("pub", [h])
    wait_resident([canonical(ns, h) for h in blocks])
    with Client(wh.mount, verify=True) as c:
        for h, d in blocks.items():
            assert c.get("pub", h) == d
        assert c.stats["map_hits"] == len(blocks), f"blocks not read from the map before the damage: {c.stats}"

    for h in (x, y, z, w):
        assert flip_in_daemon_memory(wh, blocks[h], 300_000) >= 1, f"block {h[:12]} not found in the tier memory"

    # Through the mount (O_DIRECT for z: no kernel cache at all).
    got = read_uncached(canonical(ns, y))
    assert got == blocks[y], f"a read through the mount served the damaged DRAM copy: {_diff(got, blocks[y])}"
    fd = os.open(canonical(ns, z), os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 1 << 20)
        n = os.preadv(fd, [buf], 0)
        assert bytes(buf[:n]) == blocks[z], "an O_DIRECT read through the mount served the damaged DRAM copy"
    finally:
        os.close(fd)
    # The verifying client.
    with Client(wh.mount, verify=True) as c:
        got = c.get("pub", x)
        assert got == blocks[x], f"Client(verify=True) returned the damaged copy: {_diff(got, blocks[x])} {c.stats}"
        assert c.stats["map_hits"] == 0, f"the verifying client counted a map hit on a damaged copy: {c.stats}"
        buf = bytearray(len(blocks[w]))
        assert c.get_into("pub", w, buf) == len(buf) and bytes(buf) == blocks[w], \
            f"Client(verify=True).get_into returned the damaged copy: {c.stats}"
    # The mount found y and z damaged: those copies are gone (or replaced by good ones).
    with Client(wh.mount, verify=False) as c:
        for h in (y, z):
            got = c.get("pub", h)
            assert got == blocks[h], (f"after the mount read {h[:12]} and found its DRAM copy damaged, the copy "
                                      f"is still served from the map: {_diff(got, blocks[h])} {c.stats}")
    for h in (x, w):
        assert read_uncached(canonical(ns, h)) == blocks[h]
    assert wh.status()["blocks"] == len(blocks)
    healthy(wh, base)


def _diff(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        return f"{len(a)} bytes, expected {len(b)}"
    bad = [i for i in range(0, len(a)) if a[i] != b[i]][:4]
    return f"bytes differ at {bad}"


# ------------------------------------------------------------------------------------- hit counters

F_ADD_SEALS, F_GET_SEALS = 1033, 1034
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE, F_SEAL_FUTURE_WRITE = 1, 2, 4, 8, 16


def broker_tiers(mount) -> tuple[list[dict], int | None]:
    """Connect to the tier broker (docs/dram-tier.md "Access") and keep the raw descriptors it hands over."""
    with open(os.path.join(os.fspath(mount), ".tw", "dram")) as f:
        word, _, path = f.read().strip().partition(" ")
    assert word == "socket", word
    tiers, alive = [], None
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(5)
        s.connect(path)
        while True:
            msg, fds, _, _ = socket.recv_fds(s, 65536, 4)
            if not msg and not fds:
                break
            lines = msg.decode("utf-8", "replace").split("\n")
            head = lines[0].split(" ")
            if head[0] == "end":
                alive = fds[0] if fds else None
                for fd in fds[1:]:
                    os.close(fd)
                break
            if head[0] == "tier" and len(fds) == 2:
                tiers.append({"name": head[1], "data": fds[0], "hits": fds[1],
                              "namespaces": lines[1].split(" ")[1:] if len(lines) > 1 else []})
            else:
                for fd in fds:
                    os.close(fd)
    return tiers, alive


_READER_LOOP = r"""
import hashlib, json, sys
from tokenwarehouse import Client
c = Client(sys.argv[1], verify=True)
for line in sys.stdin:
    ns, name = line.split()
    try:
        d = c.get(ns, name)
        out = "%d %s" % (len(d), hashlib.sha256(d).hexdigest())
    except OSError as e:
        out = "error %s" % e
    sys.stdout.write(out + " " + json.dumps(c.stats) + "\n")
    sys.stdout.flush()
"""


class ReaderProcess:
    """Another client process (python, Client(verify=True)) reading blocks on request; a SIGBUS from a
    mapping truncated under it kills it, not pytest."""

    def __init__(self, mount):
        env = dict(os.environ)
        env["PYTHONPATH"] = CLIENT_PATH + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-c", _READER_LOOP, os.fspath(mount)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def get(self, ns, name) -> tuple[str, dict]:
        self.proc.stdin.write(f"{ns} {name}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait(10)
            raise AssertionError(f"the other client process died (exit {rc}"
                                 f"{', SIGBUS' if rc == -signal.SIGBUS else ''})")
        size, digest, stats = line.split(" ", 2)
        return f"{size} {digest}", json.loads(stats)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def _digest(d: bytes) -> str:
    return f"{len(d)} {hashlib.sha256(d).hexdigest()}"


@pytest.mark.timeout(120)
def test_hit_counters_and_tier_files_cannot_be_used_to_crash_others(warehouse_factory, kids):
    """Class 5: Bob, who gets a tier from the broker, cannot shrink or grow its hit counters (sealed:
    EPERM), cannot write the tier's data (read-only descriptor, no way to reopen it writable); what he
    may do, scribble over the counters, crashes neither another client process nor the daemon."""
    wh = warehouse_factory("--dram", "64M")
    base = held_kib(wh)
    ns = wh.namespace("pub", 0o755)
    blocks = {}
    for i in range(8):
        h = block_hash("hits", i)
        blocks[h] = pattern(h, 256 * KiB + i)
        write_block(canonical(ns, h), blocks[h])
    wait_resident([canonical(ns, h) for h in blocks])
    reader = ReaderProcess(wh.mount)
    try:
        for h, d in blocks.items():
            got, stats = reader.get("pub", h)
            assert got == _digest(d)
        assert stats["map_hits"] == len(blocks), stats
        mount = os.fspath(wh.mount)

        def bob():
            tiers, alive = broker_tiers(mount)
            out = {"tiers": len(tiers), "namespaces": [t["namespaces"] for t in tiers], "tries": []}
            for t in tiers:
                hits, data = t["hits"], t["data"]
                hsize, dsize = os.fstat(hits).st_size, os.fstat(data).st_size
                r = {"hits_size": hsize, "data_mode": oct(os.fstat(data).st_mode),
                     "seals": fcntl.fcntl(hits, F_GET_SEALS)}
                r["ftruncate hits 0"] = errno_name(os.ftruncate, hits, 0)
                r["ftruncate hits -4"] = errno_name(os.ftruncate, hits, max(0, hsize - 4))
                r["ftruncate hits +1M"] = errno_name(os.ftruncate, hits, hsize + MiB)
                r["fallocate hits +1M"] = errno_name(os.posix_fallocate, hits, hsize, MiB)
                r["write data"] = errno_name(os.pwrite, data, b"X", 8192)
                r["ftruncate data 0"] = errno_name(os.ftruncate, data, 0)
                r["fallocate data"] = errno_name(os.posix_fallocate, data, dsize, MiB)

                def reopen():
                    os.close(os.open(f"/proc/self/fd/{data}", os.O_RDWR))
                r["reopen data O_RDWR"] = errno_name(reopen)

                def map_writable():
                    mmap.mmap(data, dsize, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE).close()
                r["mmap data writable"] = errno_name(map_writable)
                # What he may do: write the counters, with garbage.
                m = mmap.mmap(hits, os.fstat(hits).st_size, flags=mmap.MAP_SHARED,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
                m[:] = b"\xff" * (len(m) // 2) + os.urandom(len(m) - len(m) // 2)
                m.close()
                r["add seal write"] = errno_name(fcntl.fcntl, hits, F_ADD_SEALS, F_SEAL_WRITE)
                r["add seal future write"] = errno_name(fcntl.fcntl, hits, F_ADD_SEALS, F_SEAL_FUTURE_WRITE)
                out["tries"].append(r)
                os.close(hits)
                os.close(data)
            if alive is not None:
                os.close(alive)
            return out

        out = run_as(BOB, BOB, bob)
        print(f"\nBob's tries on the tier files handed to him: {out}")
        assert out["tiers"] >= 1 and any("pub" in n for n in out["namespaces"]), out
        for r in out["tries"]:
            for k in ("ftruncate hits 0", "ftruncate hits -4", "ftruncate hits +1M", "fallocate hits +1M"):
                assert r[k] == "EPERM", f"{k} on the hit counters handed to Bob: {r[k]} (expected EPERM: sealed) {r}"
            for k in ("write data", "ftruncate data 0", "fallocate data", "reopen data O_RDWR", "mmap data writable"):
                assert r[k] != "ok", f"Bob could {k} of a tier file: {r}"

        # Another client keeps reading right; the daemon keeps going through eviction of the tier
        # (64 MiB of new blocks into a 64 MiB tier: the counters Bob scribbled on are consulted).
        for h, d in blocks.items():
            got, stats = reader.get("pub", h)
            assert got == _digest(d), f"another client read wrong bytes after Bob wrote the counters: {h[:12]}"
        more = {}
        for i in range(40):
            h = block_hash("hits-churn", i)
            more[h] = pattern(h, 2 * MiB)
            write_block(canonical(ns, h), more[h])
        for h in list(more)[::3]:
            read_block(canonical(ns, h))
        assert wh.alive(), f"the daemon died after Bob wrote the hit counters; log:\n{wh.log_tail(4000)}"
        for h, d in list(blocks.items()) + list(more.items())[-5:]:
            got, stats = reader.get("pub", h)
            assert got == _digest(d), f"another client read wrong bytes after the churn: {h[:12]}"
        fresh = ReaderProcess(wh.mount)
        try:
            for h, d in list(more.items())[-5:]:
                got, stats = fresh.get("pub", h)
                assert got == _digest(d)
        finally:
            fresh.close()
    finally:
        reader.close()
    assert reader.proc.returncode == 0, f"the client process ended with {reader.proc.returncode}"
    healthy(wh, base)


# ------------------------------------------------------------------------------------- hint floods

FLOOD_CAP_S = 40.0      # a flooder stops after this long (a daemon that refuses quickly needs a few seconds)


@pytest.mark.timeout(240)
def test_hint_floods_are_bounded_and_do_not_stall_other_users(warehouse_factory, kids):
    """Class 6: 1 GiB written to .tw/prefetch without a newline by one process, and 16 floods in
    parallel (over-long pieces, creeping partial lines, over-long lines, floods of valid hints): lines
    over 4 KiB fail with E2BIG, a descriptor never buffers more than one partial line, the daemon's memory
    grows by less than 64 MiB, and another user's create and open stay under 1 s."""
    wh = warehouse_factory("--dram", "64M", "--dram-admit-writes", "off")
    ns = wh.namespace("pub", 0o755)
    probe = block_hash("flood-probe")
    write_block(canonical(ns, probe), pattern(probe, 128 * KiB))
    user_ns(wh, "carol", 0o755, CAROL)
    mount = os.fspath(wh.mount)
    hint_file = os.path.join(mount, ".tw", "prefetch")

    def flood(mode: str, total: int):
        def run(chan):
            chan.wait()
            fd = os.open(hint_file, os.O_WRONLY)
            errs: dict[str, int] = {}
            accepted = 0
            streak = longest = 0
            sent = 0
            try:
                if mode == "big":
                    piece = b"a" * MiB
                elif mode == "medium":
                    piece = b"b" * (128 * KiB)
                elif mode == "creep":
                    piece = b"c" * 4096
                elif mode == "long":
                    piece = b"pub\t" + b"d" * 5000 + b"\n"
                else:  # valid hints for blocks that do not exist
                    piece = b"".join(b"pub\t%s\n" % block_hash("flood-missing", mode, i).encode()
                                     for i in range(1800))
                t0 = time.monotonic()
                while sent < total and time.monotonic() - t0 < FLOOD_CAP_S:
                    try:
                        n = os.write(fd, piece)
                        accepted += n
                        streak += 1
                        longest = max(longest, streak)
                    except OSError as e:
                        k = errno.errorcode.get(e.errno, str(e.errno))
                        errs[k] = errs.get(k, 0) + 1
                        streak = 0
                    sent += len(piece)
                t1 = time.monotonic()
            finally:
                os.close(fd)
            return {"mode": mode, "errors": errs, "accepted": accepted, "longest_run": longest, "sent": sent,
                    "total": total, "write_seconds": round(t1 - t0, 1),
                    "close_seconds": round(time.monotonic() - t1, 1)}
        return run

    def carol(chan):
        chan.wait()
        worst_create = worst_open = 0.0
        n = 0
        first = None
        stop = threading.Event()

        def watch():
            os.read(chan.r, 1)
            stop.set()
        threading.Thread(target=watch, daemon=True).start()
        while not stop.is_set():
            path = canonical(os.path.join(mount, "carol"), block_hash("carol", n))
            t0 = time.monotonic()
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            os.write(fd, b"c" * 4096)
            os.close(fd)
            t1 = time.monotonic()
            first = first or path
            with open(first, "rb") as f:
                f.read()
            with open(canonical(os.path.join(mount, "pub"), probe), "rb") as f:
                f.read(4096)
            t2 = time.monotonic()
            worst_create, worst_open = max(worst_create, t1 - t0), max(worst_open, t2 - t1)
            n += 1
            time.sleep(0.01)
        return {"worst_create": worst_create, "worst_open": worst_open, "rounds": n}

    c = as_user(CAROL, CAROL, carol)
    floods = [as_user(BOB, BOB, flood("big", 1 << 30))]
    plan = ["medium"] * 6 + ["creep"] * 4 + ["long"] * 4 + ["lines-a", "lines-b"]
    sizes = {"medium": 64 * MiB, "creep": 2 * MiB, "long": 2 * MiB, "lines-a": 16 * MiB, "lines-b": 16 * MiB}
    floods += [as_user(BOB, BOB, flood(m, sizes[m])) for m in plan]
    watch = MemoryWatch(wh)
    base = watch.base
    c.go()
    time.sleep(0.2)
    t0 = time.monotonic()
    for f in floods:
        f.go()
    results = [f.result(200) for f in floods]
    took = time.monotonic() - t0
    time.sleep(0.3)
    c.go()
    lat = c.result(30)
    grown = watch.stop()
    print(f"\nhint floods: {took:.1f} s, daemon memory +{grown:.1f} MiB, carol: {lat}, floods: {results}")

    after = (held_kib(wh) - base) / 1024
    assert grown < 64, (f"hint floods grew the daemon's memory by {grown:.0f} MiB at the peak, {after:.0f} MiB "
                        f"still held after they ended (bound 64 MiB); floods took {took:.1f} s: {results}")
    for r in results:
        assert r["sent"] >= r["total"], (f"a hint flood ({r['mode']}) sent only {r['sent'] >> 20} of "
                                         f"{r['total'] >> 20} MiB in {FLOOD_CAP_S} s: the daemon is slow to refuse")
        if r["mode"] in ("big", "medium", "long"):
            assert r["accepted"] == 0 and set(r["errors"]) == {"E2BIG"}, \
                f"writes of lines over 4 KiB to .tw/prefetch: expected E2BIG every time: {r}"
        elif r["mode"] == "creep":
            assert r["longest_run"] <= 1 and set(r["errors"]) == {"E2BIG"}, \
                f"4 KiB pieces without a newline: a descriptor buffered more than one partial line: {r}"
        else:
            assert not r["errors"], f"valid hint lines refused: {r}"
    assert lat["rounds"] > 0
    assert lat["worst_create"] < 1.0 and lat["worst_open"] < 1.0, \
        f"another user's create/open stalled during the floods: {lat}"
    # The prefetcher still takes real hints.
    assert tier_of(canonical(ns, probe)) in ("nvme", "dram")
    with open(hint_file, "w") as f:
        f.write(f"pub\t{probe}\n")
    assert wait_until(lambda: tier_of(canonical(ns, probe)) == "dram", 10, 0.1), \
        "after the floods, a valid hint no longer loads its block"
    healthy(wh, base, 64, "after the hint floods")


# ---------------------------------------------------------------------------------- pending writes

@pytest.mark.timeout(180)
def test_pending_writes_are_bounded_per_user_and_in_total(warehouse_factory, kids):
    """Class 7: with --max-staged 256M --max-staged-per-user 64M, Bob opens many blocks and writes one
    byte near 200 MiB and one near 8 MiB in each (+ a pread): his writes fail with EDQUOT once 64 MiB are
    staged (however the daemon counts a sparse write), his creates with EMFILE past 4096 pending blocks;
    meanwhile Carol still creates and writes. Four more users fill the total: staged bytes never pass
    256 MiB. The daemon's memory stays within what is staged; killed writers give everything back."""
    wh = warehouse_factory("--max-staged", "256M", "--max-staged-per-user", "64M", "--dram", "64M")
    base = held_kib(wh)
    pend = user_ns(wh, "pend", 0o1777)
    user_ns(wh, "carol", 0o755, CAROL)
    mount = os.fspath(wh.mount)
    far, near = 200 * MiB, 8 * MiB

    def hog(tag: str, open_until_refused: bool, max_files: int = 200):
        def run(chan):
            fds = []
            res = {"far_ok": 0, "near_ok": 0, "far_errors": {}, "near_errors": {}, "pread_errors": {}}

            def note(kind, e):
                k = errno.errorcode.get(e.errno, str(e.errno))
                res[kind][k] = res[kind].get(k, 0) + 1
            for i in range(max_files):
                fd = os.open(os.path.join(pend, f"{tag}-{i}.kv"), os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o644)
                fds.append(fd)
                try:
                    os.pwrite(fd, b"x", far - 1 - (i % 7) * 4096 * 37)
                    res["far_ok"] += 1
                except OSError as e:
                    note("far_errors", e)
                try:
                    os.pwrite(fd, b"y", near - 1 - (i % 5) * 4096)
                    res["near_ok"] += 1
                except OSError as e:
                    note("near_errors", e)
                    if sum(res["near_errors"].values()) >= 5:
                        break
                try:
                    os.pread(fd, 4096, near // 2)
                except OSError as e:
                    note("pread_errors", e)
            res["open"], res["open_error"] = len(fds), None
            if open_until_refused:
                i = len(fds)
                while i < 4200:
                    try:
                        fds.append(os.open(os.path.join(pend, f"{tag}-{i}.kv"),
                                           os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
                    except OSError as e:
                        res["open_error"] = errno.errorcode.get(e.errno, str(e.errno))
                        break
                    i += 1
                res["open"] = len(fds)
            chan.send(res)
            chan.wait()       # hold everything until killed
            return None
        return run

    def staged() -> int:
        return read_status(mount)["limits"]["staged_bytes"]

    watch = MemoryWatch(wh)
    bob = as_user(BOB, BOB, hog("bob", True), nofile=8192)
    b = bob.recv(120)
    st = read_status(mount)["limits"]
    print(f"\npending writes: Bob {b}; limits {st}")
    assert b["near_ok"] >= 1, f"Bob could not stage even one write near 8 MiB: {b}"
    errs = set(b["far_errors"]) | set(b["near_errors"])
    assert errs == {"EDQUOT"}, f"Bob past --max-staged-per-user 64M: expected EDQUOT: {b}"
    assert not b["pread_errors"], f"a pread of a pending block failed: {b}"
    assert b["open_error"] == "EMFILE" and b["open"] <= 4096, f"Bob's pending blocks: expected EMFILE at 4096: {b}"
    assert st["staged_bytes"] <= 64 * MiB, f"status says {st['staged_bytes']} bytes staged for one user: {st}"
    assert st["pending_blocks"] <= 4096, st

    def carol():
        h = block_hash("carol-after-bob")
        data = pattern(h, 3 * MiB)
        write_block(canonical(os.path.join(mount, "carol"), h), data)
        return read_block(canonical(os.path.join(mount, "carol"), h)) == data
    assert run_as(CAROL, CAROL, carol), "Carol could not create and write while Bob was at his bounds"

    peak = {"staged": 0}
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            try:
                peak["staged"] = max(peak["staged"], staged())
            except (OSError, ValueError, KeyError):
                pass
    t = threading.Thread(target=sampler, daemon=True)
    fillers = [as_user(u, u, hog(f"f{u}", False)) for u in FILLERS]
    t.start()
    try:
        got = [f.recv(120) for f in fillers]
    finally:
        stop.set()
        t.join(5)
    st = read_status(mount)["limits"]
    grown = watch.stop()
    print(f"fillers {got}; limits {st}; peak staged {peak['staged']}; daemon memory +{grown:.0f} MiB")
    for g in got:
        assert (set(g["far_errors"]) | set(g["near_errors"])) <= {"EDQUOT", "ENOSPC"} and g["near_errors"], g
    assert max(peak["staged"], st["staged_bytes"]) <= 256 * MiB, \
        f"staged bytes of five users reached {max(peak['staged'], st['staged_bytes'])} past --max-staged 256M"
    assert st["staged_bytes"] >= 192 * MiB, f"five users each asking for 64 MiB staged only {st['staged_bytes']}"
    assert grown < st["staged_bytes"] / MiB + 96, \
        f"the daemon's memory grew by {grown:.0f} MiB with {st['staged_bytes'] >> 20} MiB staged"

    for k in [bob] + fillers:
        k.kill()
    assert wait_until(lambda: read_status(mount)["limits"]["staged_bytes"] == 0
                      and read_status(mount)["limits"]["pending_blocks"] == 0, 15, 0.1), \
        f"killed writers' staged bytes or pending blocks were not given back: {read_status(mount)['limits']}"
    assert os.listdir(pend) == [], f"killed writers left blocks: {sorted(os.listdir(pend))[:5]}"
    assert run_as(CAROL, CAROL, lambda: (write_block(os.path.join(mount, "carol", "after.kv"), b"z" * MiB), True)[1])
    healthy(wh, base, 128)


# ---------------------------------------------------------------------------------- O_DIRECT readers

@pytest.mark.timeout(120)
def test_o_direct_readers_of_one_block_share_one_copy(warehouse_factory, kids):
    """Class 8: Bob's 16 O_DIRECT descriptors on a 128 MiB block that is not in DRAM, read at once by 16
    threads: the daemon's memory grows by less than twice the block (at its peak, sampled every 20 ms),
    and every byte is right."""
    size = 128 * MiB
    wh = warehouse_factory("--dram", "0", capacity="2G")
    ns = wh.namespace("pub", 0o755)
    h = block_hash("odirect")
    data = pattern(h, size)
    write_block(canonical(ns, h), data, chunk=4 * MiB)
    want = hashlib.sha256(data).hexdigest()
    del data
    time.sleep(0.5)
    path = canonical(ns, h)

    def bob(chan):
        fds = [os.open(path, os.O_RDONLY | os.O_DIRECT) for _ in range(16)]
        first = [None] * 16

        def first_read(k):
            buf = mmap.mmap(-1, 4 * MiB)
            n = os.preadv(fds[k], [buf], (k % 4) * 4 * MiB)
            first[k] = bytes(buf[:n]) == pattern(h, n, (k % 4) * 4 * MiB)
        ts = [threading.Thread(target=first_read, args=(k,)) for k in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        chan.send({"first_ok": all(first)})
        chan.wait()
        # Four descriptors read the whole block, the others read here and there meanwhile.
        buf = mmap.mmap(-1, 4 * MiB)
        digests = []
        for k, fd in enumerate(fds[:4]):
            hsh = hashlib.sha256()
            off = 0
            while off < size:
                n = os.preadv(fd, [buf], off)
                assert n > 0, f"short O_DIRECT read at {off}"
                hsh.update(buf[:n])
                off += n
                other = fds[(k + off // (4 * MiB)) % 16]
                os.preadv(other, [buf], (off * 7) % size & ~4095)
            digests.append(hsh.hexdigest())
        for fd in fds:
            os.close(fd)
        return digests

    watch = MemoryWatch(wh)
    b = as_user(BOB, BOB, bob)
    first = b.recv(60)
    assert first["first_ok"], "an O_DIRECT read of the block returned wrong bytes"
    time.sleep(0.3)
    opened_peak = watch.peak
    settled = held_kib(wh)
    b.go()
    digests = b.result(100)
    grown = watch.stop()
    msg = (f"16 O_DIRECT readers of a {size // MiB} MiB block: the daemon's memory grew by "
           f"{(opened_peak - watch.base) / 1024:.0f} MiB at the peak of their first reads and held "
           f"+{(settled - watch.base) / 1024:.0f} MiB after; +{grown:.0f} MiB at the peak of full reads "
           f"(bound {2 * size // MiB} MiB)")
    print("\n" + msg)
    assert digests == [want] * 4, "an O_DIRECT reader read wrong bytes"
    assert grown < 2 * size / MiB, msg
    healthy(wh, watch.base, 2 * size / MiB)


# ------------------------------------------------------------------------------------------ quotas

def _usage(mount, name) -> dict:
    return read_status(mount)["namespace_usage"][name]


def _stored(n: int) -> int:
    return 4096 + ((n + 4095) & ~4095)


@pytest.mark.timeout(150)
def test_quota_holds_under_32_concurrent_writers_and_counts_stored_bytes(warehouse_factory, kids):
    """Class 9: a namespace with a 1 MiB quota: 32 writers of 64 KiB blocks closing at once never take
    its stored bytes past the quota (sampled throughout), the others get EDQUOT; 1-byte blocks are
    charged 8 KiB each (exactly 128 fit)."""
    wh = warehouse_factory("--dram", "64M")
    base = held_kib(wh)
    mount = os.fspath(wh.mount)
    for name in ("race", "tiny"):
        r = run_twctl("ns", "create", mount, name, "--quota", "1M")
        assert r.returncode == 0, r.stderr
        os.chown(wh.mount / name, BOB, BOB)
    race = wh.mount / "race"
    bsize = 64 * KiB
    fit = MiB // _stored(bsize)          # 15

    peak = {"stored": 0, "reserved": 0}
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            try:
                u = _usage(mount, "race")
            except (OSError, ValueError, KeyError):
                continue
            peak["stored"] = max(peak["stored"], u["stored_bytes"])
            peak["reserved"] = max(peak["reserved"], u.get("reserved_bytes", 0))

    def bob_round(rnd: int):
        def run(chan):
            barrier = threading.Barrier(32)
            res = [None] * 32

            def writer(i):
                h = block_hash("race", rnd, i)
                data = pattern(h, bsize)
                werr = cerr = None
                fd = os.open(canonical(race, h), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
                try:
                    for off in range(0, bsize, 16 * KiB):
                        os.pwrite(fd, data[off:off + 16 * KiB], off)
                except OSError as e:
                    werr = errno.errorcode.get(e.errno, str(e.errno))
                try:
                    barrier.wait(30)
                except threading.BrokenBarrierError:
                    pass
                try:
                    os.close(fd)
                except OSError as e:
                    cerr = errno.errorcode.get(e.errno, str(e.errno))
                res[i] = {"name": h, "write": werr, "close": cerr}
            ts = [threading.Thread(target=writer, args=(i,)) for i in range(32)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
            return res
        return run

    t = threading.Thread(target=sampler, daemon=True)
    t.start()
    try:
        for rnd in range(3):
            res = as_user(BOB, BOB, bob_round(rnd)).result(90)
            ok = [r for r in res if r["write"] is None and r["close"] is None]
            failed = [r for r in res if r not in ok]
            errs = {r["write"] or r["close"] for r in failed}
            u = _usage(mount, "race")
            listed = [n for d in os.listdir(race) for n in os.listdir(race / d)]
            stored = sum(_stored(os.stat(canonical(race, n)).st_size) for n in listed)
            assert u["stored_bytes"] <= MiB, f"round {rnd}: 32 concurrent writers took the namespace past its " \
                                             f"1 MiB quota: {u}"
            assert 1 <= len(ok) <= fit, f"round {rnd}: {len(ok)} blocks of 64 KiB committed under a 1 MiB quota " \
                                        f"(at most {fit} fit: 4 KiB header + payload each)"
            assert errs == {"EDQUOT"}, f"round {rnd}: writers past the quota got {errs}, expected EDQUOT"
            assert u["stored_bytes"] == stored, f"round {rnd}: status charges {u['stored_bytes']} stored bytes, " \
                                                f"the {len(listed)} blocks listed take {stored}"
            assert u.get("reserved_bytes", 0) == 0, f"round {rnd}: reservations left after all closed: {u}"
            for r in ok:
                assert read_block(canonical(race, r["name"])) == pattern(r["name"], bsize)
            for n in listed:
                os.unlink(canonical(race, n))
    finally:
        stop.set()
        t.join(5)
    assert peak["stored"] <= MiB, f"the stored bytes of the namespace were seen at {peak['stored']} > 1 MiB quota"

    def tiny():
        n, err = 0, None
        while n < 1000:
            try:
                write_block(canonical(wh.mount / "tiny", block_hash("tiny", n)), b"\x01")
            except OSError as e:
                err = errno.errorcode.get(e.errno, str(e.errno))
                break
            n += 1
        return {"n": n, "error": err}
    out = run_as(BOB, BOB, tiny)
    u = _usage(mount, "tiny")
    assert out == {"n": 128, "error": "EDQUOT"}, \
        f"1-byte blocks under a 1 MiB quota: expected exactly 128 (8 KiB each: header page + payload page), got {out}"
    assert u["stored_bytes"] == 128 * 8192 and u["blocks"] == 128, u
    healthy(wh, base)


@pytest.mark.timeout(150)
def test_a_tenant_churning_its_quota_cannot_evict_a_pinned_namespace(warehouse_factory, kids):
    """Class 9 (eviction): Bob, with a 1 MiB quota, writes and unlinks blocks over and over (90 MiB of log
    in a 64 MiB store): eviction his writes cause never takes a block of the pinned namespace."""
    wh = warehouse_factory("--segment-size", "4M", "--dram", "0", capacity="64M")
    base = held_kib(wh)
    mount = os.fspath(wh.mount)
    assert run_twctl("ns", "create", mount, "gold", "--pin", "--quota", "20M").returncode == 0
    assert run_twctl("ns", "create", mount, "tenant", "--quota", "1M").returncode == 0
    os.chown(wh.mount / "tenant", BOB, BOB)
    gold = {}
    for i in range(64):                                   # 16 MiB pinned
        h = block_hash("gold", i)
        gold[h] = pattern(h, 256 * KiB)
        write_block(canonical(wh.mount / "gold", h), gold[h])
    tenant = wh.mount / "tenant"

    def churn():
        errs = {}
        for r in range(120):
            names = [block_hash("churn", r, k) for k in range(3)]
            for h in names:
                try:
                    write_block(canonical(tenant, h), pattern(h, 256 * KiB))
                except OSError as e:
                    errs[errno.errorcode.get(e.errno, "?")] = errs.get(errno.errorcode.get(e.errno, "?"), 0) + 1
            for h in names:
                try:
                    os.unlink(canonical(tenant, h))
                except FileNotFoundError:
                    pass
        return errs
    errs = run_as(BOB, BOB, churn)
    st = wh.status()
    lost = [h[:12] for h, d in gold.items() if _read_or_none(canonical(wh.mount / "gold", h)) != d]
    assert not lost, f"{len(lost)} of 64 pinned blocks lost to a quota tenant's churn " \
                     f"(evicted segments {st['evicted_segments']}, tenant errors {errs}): {lost[:5]}"
    assert _usage(mount, "gold")["blocks"] == 64
    assert _usage(mount, "tenant")["stored_bytes"] <= MiB
    healthy(wh, base)


def _read_or_none(path):
    try:
        return read_block(path)
    except OSError:
        return None


# ------------------------------------------------------------------------------- directory handles

_SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61}.get(os.uname().machine)


def getdents(fd: int, size: int) -> list[str]:
    """One getdents64 call on a directory descriptor with a `size`-byte buffer: the names it returned."""
    import ctypes
    if _SYS_GETDENTS64 is None:
        pytest.skip(f"getdents64's number on {os.uname().machine} is not known here")
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(size)
    n = libc.syscall(_SYS_GETDENTS64, fd, buf, size)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    raw, names, off = buf.raw[:n], [], 0
    while off < n:
        reclen = int.from_bytes(raw[off + 16:off + 18], "little")
        name = raw[off + 19:off + reclen].split(b"\0", 1)[0]
        names.append(os.fsdecode(name))
        off += reclen
    return names


@pytest.mark.timeout(180)
def test_open_directory_handles_are_bounded_and_listings_complete(warehouse_factory, kids):
    """Class 10: Bob holds 2000 directory handles, each after one getdents, on a namespace of 15,000
    blocks: the daemon's memory grows by less than 64 MiB, Carol's creates stay under 1 s meanwhile, and
    listings read to the end are complete and exact."""
    wh = warehouse_factory("--dram", "0")
    ns = wh.namespace("many", 0o755)
    user_ns(wh, "carol", 0o755, CAROL)
    count = 15_000
    names = {f"k-{i:05d}.kv" for i in range(count)}

    def writer(part):
        for i in range(part, count, 2):
            fd = os.open(os.path.join(ns, f"k-{i:05d}.kv"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            os.write(fd, b"k")
            os.close(fd)
    t_start = time.monotonic()
    ts = [threading.Thread(target=writer, args=(p,)) for p in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    t_written = time.monotonic()
    mount = os.fspath(wh.mount)

    def bob(chan):
        handles = []
        first: list[list[str]] = []
        for _ in range(2000):
            fd = os.open(ns, os.O_RDONLY | os.O_DIRECTORY)
            handles.append(fd)
            first.append(getdents(fd, 1024))          # one small getdents each: the daemon keeps the handle
        chan.send({"open": len(handles), "first": sum(len(f) for f in first)})
        chan.wait()
        full = []
        for k in (0, 999, 1999):
            seen = list(first[k])
            while True:
                batch = getdents(handles[k], 32 * KiB)
                if not batch:
                    break
                seen += batch
            full.append([n for n in seen if n not in (".", "..")])
        for fd in handles:
            os.close(fd)
        return {"complete": [len(s) == count and set(s) == names for s in full],
                "counts": [len(s) for s in full], "dupes": [len(s) - len(set(s)) for s in full]}

    def carol(chan):
        chan.wait()
        worst, n = 0.0, 0
        stop = threading.Event()
        threading.Thread(target=lambda: (os.read(chan.r, 1), stop.set()), daemon=True).start()
        while not stop.is_set():
            t0 = time.monotonic()
            write_block(os.path.join(mount, "carol", f"c-{n}.kv"), b"c" * 4096)
            worst = max(worst, time.monotonic() - t0)
            n += 1
            time.sleep(0.005)
        return {"worst": worst, "n": n}

    c = as_user(CAROL, CAROL, carol)
    watch = MemoryWatch(wh)
    base = watch.base
    c.go()
    b = as_user(BOB, BOB, bob, nofile=4096)
    opened = b.recv(120)
    t_opened = time.monotonic()
    assert opened["open"] == 2000 and opened["first"] > 0, opened
    time.sleep(0.5)
    held = watch.peak
    b.go()
    out = b.result(120)
    t_listed = time.monotonic()
    print(f"\n{count} blocks written in {t_written - t_start:.1f} s, 2000 handles opened in "
          f"{t_opened - t_written:.1f} s, 3 listings read to the end in {t_listed - t_opened - 0.5:.1f} s")
    c.go()
    lat = c.result(30)
    grown = watch.stop()
    print(f"\n2000 directory handles: +{(held - base) / 1024:.1f} MiB held, peak +{grown:.1f} MiB; carol {lat}")
    assert (held - base) / 1024 < 64, f"2000 open directory handles hold {(held - base) / 1024:.0f} MiB in the daemon"
    assert grown < 64, f"directory handles grew the daemon's memory by {grown:.0f} MiB"
    assert all(out["complete"]) and not any(out["dupes"]), f"listings read to the end are not exact: {out}"
    assert lat["n"] > 0 and lat["worst"] < 1.0, f"Carol's creates stalled while Bob opened directories: {lat}"
    assert set(os.listdir(ns)) == names
    healthy(wh, base, 64)


# ------------------------------------------------------------------------------------------ metrics

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, /proc/net/tcp{,6}) listening on `port`."""
    out = []
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(f).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr, _, p = parts[1].rpartition(":")
            if int(p, 16) == port and parts[3] == "0A":
                out.append(addr)
    return out


def _scrape_seconds(port: int, timeout: float = 15) -> float:
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        assert resp.status == 200
        body = resp.read()
    assert b"tw_" in body
    return time.monotonic() - t0


def _non_loopback_ipv4() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))        # no packet is sent
            ip = s.getsockname()[0]
            return None if ip.startswith("127.") else ip
    except OSError:
        return None


@pytest.mark.timeout(120)
def test_metrics_serve_scrapes_past_slow_clients_and_bind_loopback_by_default(warehouse_factory):
    """Class 11: slow clients (one byte every 4 s) do not hold scrapes back; a slow client is cut off at
    the 2 s deadline; `--metrics :PORT` listens on loopback only; `--metrics 0.0.0.0:PORT` warns."""
    port = _free_port()
    wh = warehouse_factory("--metrics", f":{port}", "--dram", "0")
    base = held_kib(wh)
    assert wait_until(lambda: _listeners(port), 10, 0.1), f"nothing listens on port {port}"
    assert _listeners(port) == ["0100007F"], f"--metrics :{port} listens on {_listeners(port)}, not 127.0.0.1 only"
    ip = _non_loopback_ipv4()
    if ip:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((ip, port)) != 0, f"--metrics :{port} answers on {ip}"
    _scrape_seconds(port)

    stop = threading.Event()
    cut = []

    def slowloris(k: int):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        t0 = time.monotonic()
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        sent = 0
        next_byte = t0
        try:
            s.settimeout(0.25)
            while not stop.is_set():
                if time.monotonic() >= next_byte and sent < len(request) - 1:   # never completes the request
                    try:
                        s.send(request[sent:sent + 1])
                        sent += 1
                    except OSError:
                        cut.append(time.monotonic() - t0)
                        return
                    next_byte += 4.0
                try:
                    if s.recv(1024) == b"":
                        cut.append(time.monotonic() - t0)
                        return
                except socket.timeout:
                    pass
                except OSError:
                    cut.append(time.monotonic() - t0)
                    return
        finally:
            s.close()

    def run_slow(n: int) -> list[threading.Thread]:
        ts = [threading.Thread(target=slowloris, args=(k,), daemon=True) for k in range(n)]
        for t in ts:
            t.start()
        time.sleep(0.3)
        return ts

    ts = run_slow(1)
    took = [_scrape_seconds(port) for _ in range(3)]
    assert max(took) < 2.0, f"scrapes beside one slow client took {took} s"
    ts += run_slow(3)
    took += [_scrape_seconds(port) for _ in range(3)]
    assert max(took) < 2.0, f"scrapes beside four slow clients took {took} s"
    assert wait_until(lambda: len(cut) >= 4, 6, 0.1), \
        f"slow clients were not cut off at the 2 s request deadline (cut after: {cut})"
    assert all(x < 4.0 for x in cut), f"slow clients were cut off only after {sorted(cut)} s"
    # Eight at once (twice the handlers): a scrape waits at most for deadlines, never for the clients.
    ts += run_slow(8)
    t8 = [_scrape_seconds(port) for _ in range(2)]
    assert max(t8) < 6.5, f"scrapes beside 8 slow clients took {t8} s (2 s deadline per request, 4 handlers)"
    stop.set()
    for t in ts:
        t.join(5)
    # Four scrapes at once are all answered.
    res = []
    ths = [threading.Thread(target=lambda: res.append(_scrape_seconds(port))) for _ in range(4)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(10)
    assert len(res) == 4 and max(res) < 2.0, res
    healthy(wh, base)

    # Every interface: it works and says so in the log.
    port2 = _free_port()
    wh2 = warehouse_factory("--metrics", f"0.0.0.0:{port2}", "--dram", "0")
    assert wait_until(lambda: _listeners(port2), 10, 0.1)
    log = wh2.log_path.read_text(errors="replace")
    warn = [ln for ln in log.splitlines() if "0.0.0.0" in ln and "warn" in ln.lower()]
    assert warn, f"--metrics 0.0.0.0:{port2} gave no warning in the log:\n{log[-2000:]}"
    _scrape_seconds(port2)


# ---------------------------------------------------------------------------------- store directory

SENTINEL = b"root:$6$not-a-real-hash$stand-in-for-etc-shadow:19000:0:99999:7:::\n"


def _sentinel(base: Path) -> Path:
    p = base / "sentinel-shadow"
    p.write_bytes(SENTINEL)
    os.chmod(p, 0o640)
    return p


def _sentinel_intact(p: Path) -> str | None:
    st = os.lstat(p)
    data = p.read_bytes()
    if data != SENTINEL or stat.S_IMODE(st.st_mode) != 0o640 or not stat.S_ISREG(st.st_mode):
        return f"{len(data)} bytes, mode {oct(st.st_mode)}: {data[:80]!r}"
    return None


def _start_attempt(wh, timeout: float = 20.0) -> tuple[str, int | None]:
    """Start twfs on the warehouse's store: ('mounted', None) or ('exited', code); never hangs."""
    mark = wh.log_path.stat().st_size if wh.log_path.exists() else 0
    wh.proc = wh.spawn(wh.command())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = wh.proc.poll()
        if rc is not None:
            return "exited", rc
        if wh.mounted_and_serving():
            wh.expect_running = True
            return "mounted", None
        time.sleep(0.05)
    wh.proc.kill()
    wh.proc.wait(10)
    tail = _log_since(wh, mark)[-800:]
    return f"hung (no mount, no exit in {timeout} s; log: {tail})", None


def _stop(wh) -> None:
    rc = wh.stop()
    assert rc == 0, f"twfs exited {rc} on SIGTERM; log:\n{wh.log_tail(3000)}"
    lazy_unmount(wh.mount)


def _log_since(wh, mark: int) -> str:
    return wh.log_path.read_bytes()[mark:].decode("utf-8", "replace")


@pytest.mark.timeout(150)
def test_the_store_directory_is_the_daemons_alone(warehouse_factory):
    """Class 12: twfs refuses a store writable by others, owned by another user or reached through a
    symlink, saying what to change; symlinks planted in the store (segments, LOCK, namespaces.tmp,
    directories file, namespaces) never make it write through them; a FIFO or /dev/zero as `namespaces`
    ends the start quickly with a message."""
    wh = warehouse_factory(start=False)
    store = wh.store

    def refused(what: str, *words: str):
        mark = wh.log_path.stat().st_size if wh.log_path.exists() else 0
        state, rc = _start_attempt(wh)
        text = _log_since(wh, mark)
        if state == "mounted":
            _stop(wh)
        assert state == "exited" and rc not in (None, 0) and rc > 0, \
            f"a store {what}: twfs did not refuse to start ({state}, exit {rc}); log:\n{text[-1500:]}"
        assert any(w in text for w in words), f"a store {what}: the message does not say what to change " \
                                              f"(expected one of {words}):\n{text[-1500:]}"

    os.chmod(store, 0o777)
    refused("of mode 0777", "chmod")
    os.chmod(store, 0o770)
    refused("of mode 0770", "chmod")
    os.chmod(store, 0o700)
    os.chown(store, ALICE, ALICE)
    refused("owned by uid 4301", "chown")
    os.chown(store, 0, 0)
    real = wh.base / "real-store"
    os.mkdir(real, 0o700)
    os.rename(store, wh.base / "store.orig")
    os.symlink(real, store)
    refused("that is a symlink", "symlink", "symbolic link")
    os.unlink(store)
    os.rename(wh.base / "store.orig", store)

    # A normal run: the store's files.
    assert _start_attempt(wh)[0] == "mounted"
    ns, blocks = namespace_with_blocks(wh, "ns", "store", [300 * KiB] * 3)
    _stop(wh)
    files = sorted(os.listdir(store))
    segs = sorted(f for f in files if f.startswith("segment-") and f.endswith(".twlog"))
    assert {"LOCK", "namespaces"} <= set(files) and segs, f"store files: {files}"
    last = int(segs[-1][len("segment-"):-len(".twlog")])
    width = len(segs[-1]) - len("segment-") - len(".twlog")
    seg_name = lambda n: f"segment-{n:0{width}d}.twlog"  # noqa: E731
    sentinel = _sentinel(wh.base)

    def check_run(what: str, plant: dict[str, str], work: bool = True):
        """Plant `plant` (name -> 'symlink'|'fifo'|'devzero'), try a run, then remove the plants."""
        for name, kind in plant.items():
            p = store / name
            if p.exists() or p.is_symlink():
                os.rename(p, store / (name + ".saved"))
            if kind == "symlink":
                os.symlink(sentinel, p)
            elif kind == "fifo":
                os.mkfifo(p, 0o600)
            elif kind == "devzero":
                os.symlink("/dev/zero", p)
        mark = wh.log_path.stat().st_size
        t0 = time.monotonic()
        state, rc = _start_attempt(wh)
        took = time.monotonic() - t0
        text = _log_since(wh, mark)
        try:
            assert not state.startswith("hung"), f"{what}: {state}"
            if state == "mounted":
                if work:
                    n = wh.namespace(f"made-{len(os.listdir(wh.mount))}", 0o755)
                    for i in range(8):               # several segments' worth with --segment-size 1M
                        h = block_hash(what, i)
                        write_block(canonical(n, h), pattern(h, 400 * KiB))
                    for h, d in blocks.items():
                        got = _read_or_none(canonical(ns, h))
                        assert got is None or got == d, f"{what}: a stored block reads wrong bytes"
                _stop(wh)
            else:
                assert rc is not None and rc > 0, f"{what}: twfs died with {rc} (a signal) instead of refusing"
                assert text.strip() and any(n in text for n in plant), \
                    f"{what}: twfs exited {rc} without naming the file:\n{text[-1500:]}"
            bad = _sentinel_intact(sentinel)
            assert bad is None, f"{what}: the file a planted symlink points to was changed: {bad}\nlog:\n{text[-1500:]}"
        finally:
            for name in plant:
                p = store / name
                if p.is_symlink() or p.exists():
                    os.unlink(p)
                if (store / (name + ".saved")).exists():
                    os.rename(store / (name + ".saved"), p)
        print(f"\n{what}: {state} (exit {rc}) after {took:.1f} s; last log line: "
              f"{text.strip().splitlines()[-1] if text.strip() else ''}")
        return state, took, text

    wh.extra = ["--segment-size", "1M", "--dram", "0"]
    check_run("namespaces.tmp as a symlink", {"namespaces.tmp": "symlink"})
    check_run("future segments as symlinks", {seg_name(last + k): "symlink" for k in range(1, 12)})
    check_run("the last segment as a symlink", {seg_name(last): "symlink"}, work=False)
    check_run("LOCK as a symlink", {"LOCK": "symlink"})
    if (store / "directories.twdir").exists():
        check_run("directories.twdir as a symlink", {"directories.twdir": "symlink"})
    check_run("namespaces as a symlink", {"namespaces": "symlink"}, work=False)
    # The index snapshot of the last clean stop: a planted one is not followed, and the start reads the
    # log instead.
    check_run("index.snapshot as a symlink", {"index.snapshot": "symlink", "index.snapshot.tmp": "symlink"})
    check_run("index.snapshot as a fifo", {"index.snapshot": "fifo"})
    # A clean stop's snapshot put back after the store changed: ignored, and the new block is found.
    assert _start_attempt(wh)[0] == "mounted"
    _stop(wh)
    saved = (store / "index.snapshot").read_bytes()
    assert _start_attempt(wh)[0] == "mounted"
    late = wh.namespace("after-the-snapshot", 0o755)
    late_hash = block_hash("after-the-snapshot", 0)
    write_block(canonical(late, late_hash), pattern(late_hash, 100 * KiB))
    _stop(wh)
    (store / "index.snapshot").write_bytes(saved)
    mark = wh.log_path.stat().st_size
    assert _start_attempt(wh)[0] == "mounted"
    text = _log_since(wh, mark)
    assert "index snapshot ignored: the store changed after it was written" in text, f"a stale snapshot:\n{text[-1500:]}"
    assert read_block(canonical(late, late_hash)) == pattern(late_hash, 100 * KiB)
    for h, d in blocks.items():
        assert read_block(canonical(ns, h)) == d
    _stop(wh)
    for kind in ("fifo", "devzero"):
        state, took, text = check_run(f"namespaces as a {kind}", {"namespaces": kind}, work=False)
        assert state == "exited" and took < 10, f"namespaces as a {kind}: {state} after {took:.1f} s"
    # Planted while the daemon runs: the next segments it will create, and namespaces.tmp.
    assert _start_attempt(wh)[0] == "mounted"
    segs = sorted(f for f in os.listdir(store) if f.startswith("segment-") and f.endswith(".twlog"))
    last = int(segs[-1][len("segment-"):-len(".twlog")])
    planted = [seg_name(last + k) for k in range(1, 12)] + ["namespaces.tmp"]
    for name in planted:
        if not os.path.lexists(store / name):
            os.symlink(sentinel, store / name)
    errs = {}
    n = wh.namespace("made-while-planted", 0o755)
    for i in range(12):                          # 4.8 MB with --segment-size 1M: new segments
        h = block_hash("planted-running", i)
        try:
            write_block(canonical(n, h), pattern(h, 400 * KiB))
        except OSError as e:
            errs[errname(e.errno)] = errs.get(errname(e.errno), 0) + 1
    print(f"writes with the next segments planted as symlinks: errors {errs}")
    assert wh.alive(), f"twfs died when its next segment was a symlink; log:\n{wh.log_tail(3000)}"
    assert _sentinel_intact(sentinel) is None, \
        f"the daemon wrote through a symlink planted as its next segment: {_sentinel_intact(sentinel)}"
    for h, d in blocks.items():
        assert read_block(canonical(ns, h)) == d
    _stop(wh)
    assert _sentinel_intact(sentinel) is None
    for name in planted:
        if os.path.islink(store / name):
            os.unlink(store / name)
    # With nothing planted, the store is whole.
    assert _start_attempt(wh)[0] == "mounted"
    for h, d in blocks.items():
        assert read_block(canonical(ns, h)) == d
    assert _sentinel_intact(sentinel) is None


# ------------------------------------------------------------------------------------ outside numbers

@pytest.mark.timeout(150)
def test_numbers_from_outside_are_refused_or_saturate(warehouse_factory):
    """Class 13: huge, negative and malformed numbers through twctl, the raw control file, xattrs and
    twfs's options are refused with a message or saturate; the daemon never dies, also after a restart
    with whatever was accepted stored in its namespaces table."""
    wh = warehouse_factory("--dram", "64M")
    base = held_kib(wh)
    mount = os.fspath(wh.mount)
    ns, blocks = namespace_with_blocks(wh, "n", "numbers", [50 * KiB] * 4)

    def intact(what: str):
        assert wh.alive(), f"twfs died after {what}; log:\n{wh.log_tail(4000)}"
        for h, d in blocks.items():
            got = _read_or_none(canonical(ns, h))
            assert got == d, f"after {what}: block {h[:12]} reads {'nothing' if got is None else 'wrong bytes'}"
        h = block_hash("numbers-after", what)
        write_block(canonical(ns, h), b"after " + what.encode())
        blocks[h] = b"after " + what.encode()

    def twctl(*args):
        r = run_twctl(*args, timeout=60)
        assert r.returncode == 0 or r.stderr.strip(), f"twctl {args} failed without a message: {r}"
        assert r.returncode >= 0, f"twctl {args} died with signal {-r.returncode}"
        return r

    for v in ("60000d", "18446744073709551615", "18446744073709551615d", "99999999999999999999999s", "1e30",
              "-1d", "0x7fffffffffffffff", "nan"):
        r = twctl("evict", mount, "n", "--older-than", v)
        if r.returncode == 0:
            time.sleep(0.3)
        intact(f"twctl evict --older-than {v} (exit {r.returncode})")
    for opt, v in (("--ttl", "18446744073709551615"), ("--ttl", "18446744073709551615d"), ("--ttl", "1e30"),
                   ("--ttl", "99999999999d"), ("--ttl", "-1"), ("--quota", "1e30"),
                   ("--quota", "18446744073709551615"), ("--quota", "99999999999999999999T"), ("--quota", "-1"),
                   ("--quota", "16E")):
        r = twctl("ns", "set", mount, "n", opt, v)
        intact(f"twctl ns set {opt} {v} (exit {r.returncode})")
        if opt == "--quota" and r.returncode == 0:
            assert run_twctl("ns", "set", mount, "n", "--quota", "none").returncode == 0

    # The raw control protocol (what any user can write to .tw/ctl).
    U64 = 18446744073709551615
    raw = [
        {"command": "evict", "ns": "n", "older_than": U64},
        {"command": "evict", "ns": "n", "older_than": 1e300},
        {"command": "evict", "ns": "n", "older_than": -1},
        {"command": "evict", "ns": "n", "older_than": U64 + 1},
        {"command": "ns-set", "ns": "n", "ttl": U64},
        {"command": "ns-set", "ns": "n", "ttl": 3162240000},
        {"command": "ns-set", "ns": "n", "quota": U64},
        {"command": "ns-set", "ns": "n", "quota": 1e30},
        {"command": "compact", "threshold": 1e308, "max_bytes": U64, "rate": U64},
        {"command": "compact", "threshold": -0.0, "rate": 0},
        {"command": "job", "job": U64},
        {"command": "job", "job": -9223372036854775808},
        {"command": "cluster-gc", "target": U64},
    ]
    answers = []
    for req in raw:
        a = ctl(mount, json.dumps(req))
        answers.append((req, a))
        time.sleep(0.05)
        intact(f".tw/ctl {json.dumps(req)}")
    for line in ("evict ns=n older_than=18446744073709551616", "ns-set ns=n ttl=-5", "ns-set ns=n quota=1e30",
                 "job job=99999999999999999999", "evict ns=n older_than=" + "9" * 5000):
        answers.append((line[:60], ctl(mount, line)))
        intact(f".tw/ctl {line[:60]}")
    # Bob's control requests on root's namespace: refused, daemon alive.
    def bob():
        return [ctl(mount, json.dumps({"command": "ns-set", "ns": "n", "ttl": U64})),
                ctl(mount, json.dumps({"command": "evict", "ns": "n", "older_than": U64})),
                ctl(mount, json.dumps({"command": "compact", "threshold": 1e308})),
                ctl(mount, json.dumps({"command": "ns-set", "ns": "n", "ttl": 60})),
                ctl(mount, json.dumps({"command": "ns-set", "ns": "n", "quota": 4096})),
                ctl(mount, json.dumps({"command": "evict", "ns": "n"})),
                ctl(mount, json.dumps({"command": "compact"}))]
    bob_answers = run_as(BOB, BOB, bob)
    print(f"\nroot's raw control requests and answers: {answers}\nBob's: {bob_answers}")
    assert all("error" in a or "errno" in a for a in bob_answers), \
        f"Bob's control requests were not refused: {bob_answers}"
    intact("Bob's control requests")
    policy = _usage(mount, "n")
    ttl = policy["ttl_seconds"]
    assert ttl == 0 or ttl <= 3162240000, f"a time to live past 100 years was stored: {policy}"

    # xattrs on a pending block.
    fd = os.open(canonical(ns, block_hash("numbers-xattr")), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"xattr")
        results = {}
        for v in (b"18446744073709551616", b"-1", b"1e30", b"9" * 4000, b"\xff\xfe", b""):
            results[v[:20]] = errno_name(os.setxattr, fd, "user.tw.tokens", v)
        for v in (b"ab" * 100, b"xyz", b"0" * 15, b"A" * 32):
            results[b"parent " + v[:20]] = errno_name(os.setxattr, fd, "user.tw.parent", v)
    finally:
        os.close(fd)
    for k, v in results.items():
        if k.startswith(b"parent"):
            assert v in ("EINVAL", "ERANGE"), f"user.tw.parent = {k!r}: {v} (expected EINVAL)"
    intact("xattrs with hostile numbers")

    # After a restart (the namespaces table holds whatever was accepted).
    wh.restart()
    intact("a restart")
    healthy(wh, base)
    # twfs's own options: refused with a message, or accepted and serving.
    _stop(wh)
    tries = []
    for opt, v in (("--capacity", "1e30"), ("--capacity", "99999999999999999999"), ("--capacity", "16E"),
                   ("--dram", "1e30"), ("--dram", "99999999999999999999T"), ("--max-staged", "1e30"),
                   ("--max-staged-per-user", "18446744073709551615"), ("--segment-size", "1e30"),
                   ("--max-block", "99999999999999999999"), ("--prefetch-bandwidth", "1e30"),
                   ("--sync-interval", "1e309"), ("--threads", "99999999999999999999"),
                   ("--prefetch-depth", "-1")):
        saved = (wh.capacity, list(wh.extra))
        if opt == "--capacity":
            wh.capacity = v
        else:
            wh.extra = ["--dram", "64M", opt, v] if opt != "--dram" else [opt, v]
        mark = wh.log_path.stat().st_size
        state, rc = _start_attempt(wh)
        text = _log_since(wh, mark)
        wh.capacity, wh.extra = saved
        tries.append((opt, v, state, rc, text.strip().splitlines()[-1:] if text.strip() else ""))
        assert not state.startswith("hung"), f"twfs {opt} {v}: {state}"
        if state == "mounted":
            assert wh.alive()
            intact(f"twfs {opt} {v}")
            _stop(wh)
        else:
            assert rc is not None and rc > 0, f"twfs {opt} {v}: died with {rc} (a signal) instead of refusing"
            assert opt in text or v in text or "error" in text.lower(), \
                f"twfs {opt} {v} exited {rc} without saying why:\n{text[-800:]}"
    print(f"twfs option tries: {tries}")
    wh.start()
    intact("the option tries")
    healthy(wh, held_kib(wh))


# ------------------------------------------------------------------------------------ shared namespaces

@pytest.mark.timeout(120)
def test_shared_namespaces_record_creators_and_honour_the_sticky_bit(warehouse_factory, kids):
    """Class 14: in a 1777 namespace blocks show their creator; a writer unlinks (and renames) its own
    blocks, not another's; without the sticky bit any writer may unlink any block, as on any file system;
    a writer who does not own the namespace sets user.tw.parent and other user.* attributes on its own
    pending block, not on another's committed one. Creators survive a restart."""
    wh = warehouse_factory("--dram", "64M")
    base = held_kib(wh)
    sticky = user_ns(wh, "sticky", 0o1777)
    open_ns = user_ns(wh, "open", 0o777)
    ha, hb = block_hash("shared", "alice"), block_hash("shared", "bob")
    parent = block_hash("shared", "parent")

    def alice():
        out = {}
        for d in (sticky, open_ns):
            write_block(canonical(d, ha), b"alice" * 1000)
            write_block(os.path.join(d, "alice.kv"), b"alice compat")
        out["own_stat"] = os.stat(canonical(sticky, ha)).st_uid
        return out
    run_as(ALICE, ALICE, alice)

    def bob():
        out = {}
        # Bob's own block, with attributes set on the pending file (by descriptor and by path).
        path = canonical(sticky, hb)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"bob" * 1000)
            out["fsetxattr parent"] = errno_name(os.setxattr, fd, "user.tw.parent", parent.encode())
            out["fsetxattr tokens"] = errno_name(os.setxattr, fd, "user.tw.tokens", b"512")
            out["setxattr engine"] = errno_name(os.setxattr, path, "user.engine.checksum", b"sha256:abc")
        finally:
            os.close(fd)
        fd = os.open(os.path.join(sticky, "bob.kv"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"bob compat")
            out["compat parent"] = errno_name(os.setxattr, fd, "user.tw.parent", parent.encode())
        finally:
            os.close(fd)
        out["xattrs"] = {k: os.getxattr(path, k).decode() for k in ("user.tw.parent", "user.tw.tokens",
                                                                     "user.engine.checksum")
                         if k in os.listxattr(path)}
        # Alice's blocks in the sticky namespace: not Bob's to remove, rename or tag.
        out["unlink alice sticky"] = errno_name(os.unlink, canonical(sticky, ha))
        out["unlink alice compat sticky"] = errno_name(os.unlink, os.path.join(sticky, "alice.kv"))
        out["rename alice sticky"] = errno_name(os.rename, os.path.join(sticky, "alice.kv"),
                                                os.path.join(sticky, "stolen.kv"))
        out["xattr on alice's"] = errno_name(os.setxattr, canonical(sticky, ha), "user.engine.checksum", b"x")
        out["rewrite alice's"] = errno_name(write_block, canonical(sticky, ha), b"bob's bytes")
        # Without the sticky bit: any writer may unlink any block, and store other bytes under the name.
        out["unlink alice open"] = errno_name(os.unlink, canonical(open_ns, ha))
        out["store under alice's name"] = errno_name(write_block, canonical(open_ns, ha), b"bob's bytes")
        # Bob's own in the sticky namespace: his to unlink.
        write_block(os.path.join(sticky, "bob-temp.kv"), b"temp")
        out["unlink own sticky"] = errno_name(os.unlink, os.path.join(sticky, "bob-temp.kv"))
        return out
    b = run_as(BOB, BOB, bob)

    for k in ("fsetxattr parent", "fsetxattr tokens", "setxattr engine", "compat parent"):
        assert b[k] == "ok", f"Bob (not the namespace's owner) on his own pending block: {k}: {b[k]}"
    assert b["xattrs"] == {"user.tw.parent": parent, "user.tw.tokens": "512",
                           "user.engine.checksum": "sha256:abc"}, b["xattrs"]
    for k in ("unlink alice sticky", "unlink alice compat sticky", "rename alice sticky", "xattr on alice's"):
        assert b[k] in ("EACCES", "EPERM"), f"sticky namespace: Bob could {k}: {b[k]}"
    assert b["unlink own sticky"] == "ok", f"sticky namespace: Bob could not unlink his own block: {b}"
    assert b["unlink alice open"] == "ok" and b["store under alice's name"] == "ok", \
        f"0777 namespace without sticky bit: unlink/store as on any file system: {b}"
    assert read_block(canonical(sticky, ha)) == b"alice" * 1000, "Alice's block in the sticky namespace changed"
    assert read_block(os.path.join(sticky, "alice.kv")) == b"alice compat"
    assert read_block(canonical(open_ns, ha)) == b"bob's bytes"

    def owners():
        return {"alice": (os.stat(canonical(sticky, ha)).st_uid, os.stat(canonical(sticky, ha)).st_gid),
                "alice compat": os.stat(os.path.join(sticky, "alice.kv")).st_uid,
                "bob": (os.stat(canonical(sticky, hb)).st_uid, os.stat(canonical(sticky, hb)).st_gid),
                "bob in open": os.stat(canonical(open_ns, ha)).st_uid}
    want = {"alice": (ALICE, ALICE), "alice compat": ALICE, "bob": (BOB, BOB), "bob in open": BOB}
    assert owners() == want, f"blocks do not show their creators: {owners()}"
    wh.restart()
    assert owners() == want, f"after a restart, blocks do not show their creators: {owners()}"
    assert os.getxattr(canonical(sticky, hb), "user.tw.parent").decode() == parent

    def alice_cleans():
        return {"own": errno_name(os.unlink, canonical(sticky, ha)),
                "own compat": errno_name(os.unlink, os.path.join(sticky, "alice.kv")),
                "bob's": errno_name(os.unlink, canonical(sticky, hb))}
    a = run_as(ALICE, ALICE, alice_cleans)
    assert a["own"] == "ok" and a["own compat"] == "ok", f"Alice could not unlink her own blocks: {a}"
    assert a["bob's"] in ("EACCES", "EPERM"), f"Alice could unlink Bob's block in the sticky namespace: {a}"
    os.unlink(canonical(sticky, hb))          # the namespace's owner (root) may
    healthy(wh, base)
