"""The shared-memory DRAM tier and its clients (docs/design.md "DRAM tier", docs/dram-tier.md,
include/tokenwarehouse.h), against the real daemon.

- a C reader built on include/tokenwarehouse.h and libxxhash finds the blocks the daemon holds and
  copies exactly their bytes (its XXH3-64 equals Python's of the expected bytes);
- 4 reader processes using the Python client (verify=True) while the daemon evicts and refills a 64M tier
  as fast as it can: never a wrong byte, some map hits and some fallbacks;
- a process outside the tier file's group cannot open it, and still reads through the files;
  a member of --dram-group maps it;
- a running client survives a daemon restart (clean and crash): correct bytes, and it maps the new tier;
- --dram 0 disables the tier; the tier file's name, modes and superblock; prefetch hints.

Environment: TW_DRAM_STRESS_SECONDS (default 60), and those of conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from twfs_util import LineProcess, block_hash, run_as_user, canonical, pattern, read_block, size_for, wait_until, write_block

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "clients" / "python"

# The Python client: this checkout's copy (conftest.py puts it first on sys.path).
try:
    import tokenwarehouse  # noqa: F401
except ImportError as e:   # most likely xxhash is missing
    if os.environ.get("TWFS_REQUIRE_BINARY") == "1":
        raise
    pytest.skip(f"the tokenwarehouse client cannot be imported ({e}); pip install xxhash",
                allow_module_level=True)

import xxhash  # noqa: E402  (a dependency of the client)
from tokenwarehouse import Client  # noqa: E402
from tokenwarehouse.layout import MAGIC, SUPERBLOCK, VERSION  # noqa: E402

# Subprocesses import the same copy of the package as this module.
CLIENT_PATH = os.path.dirname(os.path.dirname(os.path.abspath(tokenwarehouse.__file__)))
STRESS_SECONDS = float(os.environ.get("TW_DRAM_STRESS_SECONDS", "60"))
NOBODY, NOGROUP = 65534, 65534
KiB, MiB = 1 << 10, 1 << 20

pytestmark = pytest.mark.timeout(120)


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = CLIENT_PATH + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------------------------------- helpers

def dram_control(wh) -> str:
    with open(wh.mount / ".tw" / "dram", "rb") as f:
        return f.read().decode()


def broker_socket(wh) -> str:
    """docs/dram-tier.md "Access": MOUNT/.tw/dram reads as one line, `socket PATH`."""
    text = dram_control(wh)
    assert text.endswith("\n") and text.count("\n") == 1, f"MOUNT/.tw/dram should be one line, got {text!r}"
    word, _, path = text.strip().partition(" ")
    assert word == "socket" and path, f"MOUNT/.tw/dram should say 'socket PATH', got {text!r}"
    return path


def tier_of_namespace(client, ns: str):
    """The mapped tier that holds namespace `ns` in this client (the test looks at its superblock)."""
    conn = client._conn
    assert conn is not None and ns in conn.by_namespace, f"no tier for {ns}: {client.tier_error} {client.tiers}"
    return conn.by_namespace[ns]


def superblock_of(tier) -> dict:
    names = ("magic", "version", "superblock_size", "generation", "file_size", "table_offset", "table_capacity",
             "entry_size", "max_probe", "data_offset", "data_size")
    return dict(zip(names, SUPERBLOCK.unpack_from(tier.mm, 0)))


def make_blocks(ns: Path, tag: str, count: int, lo: int, hi: int) -> dict[str, bytes]:
    """Write `count` blocks of lo..hi bytes at canonical paths; returns name -> bytes."""
    blocks = {}
    for i in range(count):
        h = block_hash(tag, i)
        data = pattern(h, size_for(h, lo, hi))
        write_block(canonical(ns, h), data)
        blocks[h] = data
    return blocks


def tier_of(path) -> str:
    return os.getxattr(path, "user.tw.tier").decode()


def make_resident(ns: Path, names, timeout: float = 15.0) -> None:
    """Read each block once through the mount (the miss loads it into the tier) and wait until
    user.tw.tier says dram for all of them."""
    for h in names:
        read_block(canonical(ns, h))
    pending = set(names)

    def done():
        for h in list(pending):
            if tier_of(canonical(ns, h)) == "dram":
                pending.discard(h)
        return not pending
    assert wait_until(done, timeout, 0.1), \
        f"{len(pending)} of {len(names)} blocks read through the mount are not resident after {timeout}s " \
        f"(user.tw.tier: {sorted({tier_of(canonical(ns, h)) for h in pending})})"


def sha(data) -> str:
    return hashlib.sha256(data).hexdigest()


# A Client in another process, driven line by line: a SIGBUS from a mapping the daemon truncated kills
# that process, not pytest.
_CLIENT_LOOP = r"""
import errno, hashlib, json, sys
from tokenwarehouse import Client
c = Client(sys.argv[1], verify=True)
for line in sys.stdin:
    cmd, _, arg = line.rstrip("\n").partition(" ")
    if cmd == "get":
        ns, name = arg.split(" ", 1)
        try:
            d = c.get(ns, name)
            out = "%d %s" % (len(d), hashlib.sha256(d).hexdigest())
        except OSError as e:
            out = "error " + errno.errorcode.get(e.errno, str(e.errno))
    elif cmd == "watch":            # keep the tier of namespace ARG as mapped now, to read its generation later
        watched = c._conn.by_namespace[arg]
        out = "ok"
    elif cmd == "watched-generation":
        out = str(int.from_bytes(watched.mm[16:24], "little"))
    elif cmd == "stats":
        out = json.dumps(dict(c.stats, mapped=c.mapped, generation=c.generation, tier_socket=c.tier_socket,
                              tiers=c.tiers, tier_error=c.tier_error))
    else:
        out = "unknown command"
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
"""


class ClientProcess(LineProcess):
    def __init__(self, mount: Path):
        super().__init__(_CLIENT_LOOP, os.fspath(mount), env=child_env())

    def _ask(self, line: str) -> str:
        out = self.send(line)
        if not out:
            rc = self.proc.wait(timeout=10)
            raise AssertionError(f"client process died (exit {rc}"
                                 f"{', SIGBUS: its mapping was truncated under it' if rc == -signal.SIGBUS else ''})")
        return out.rstrip("\n")

    def get(self, ns: str, name: str) -> tuple[int, str]:
        out = self._ask(f"get {ns} {name}")
        assert not out.startswith("error"), f"client get {ns}/{name}: {out}"
        size, digest = out.split()
        return int(size), digest

    def stats(self) -> dict:
        return json.loads(self._ask("stats"))

    def watch(self, ns: str) -> None:
        assert self._ask(f"watch {ns}") == "ok"

    def watched_generation(self) -> int:
        return int(self._ask("watched-generation"))


# ---------------------------------------------------------------------------------- name, modes, layout

def test_the_dram_file_names_a_private_broker_and_tiers_live_in_sealed_memory(warehouse_factory):
    wh = warehouse_factory("--dram", "256M")
    ns = wh.namespace("ns")
    path = broker_socket(wh)
    # The broker's socket is in a directory of the daemon's own that nobody else can write to.
    run_dir = os.path.dirname(path)
    st = os.stat(run_dir)
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o022 == 0, oct(st.st_mode)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    mine = os.fspath(wh.mount).strip("/").replace("/", "-")
    assert not any(mine in n for n in os.listdir("/dev/shm")), \
        "tiers are memory files handed over a socket, not names in /dev/shm anyone can open"
    with Client(wh.mount) as c:
        assert c.mapped and set(c.tiers) == {"ns"}, (c.tier_error, c.tiers)
        tier = tier_of_namespace(c, "ns")
        sb = superblock_of(tier)
        assert sb["magic"] == MAGIC and sb["version"] == VERSION, sb
        assert sb["superblock_size"] == 4096 and sb["entry_size"] == 64 and sb["table_offset"] == 4096, sb
        assert sb["generation"] != 0 and sb["file_size"] == tier.size, sb
        cap = sb["table_capacity"]
        assert cap > 0 and cap & (cap - 1) == 0 and sb["max_probe"] > 0, sb
        assert sb["data_offset"] % 4096 == 0 and sb["data_offset"] >= 4096 + 64 * cap, sb
        assert 0 < sb["data_size"] and sb["data_offset"] + sb["data_size"] <= sb["file_size"], sb
        assert sb["file_size"] <= 256 * MiB + 64 * cap + 8192, f"a tier of --dram 256M is {sb['file_size']} bytes"
        assert tier.hits is not None and len(tier.hits) >= cap
        with pytest.raises(TypeError):
            tier.mm[0:1] = b"X"                 # mapped read-only: the descriptor is O_RDONLY
    # The control area is hidden.
    assert ".tw" not in os.listdir(wh.mount)
    assert os.path.isdir(ns)


def test_two_mounts_have_their_own_brokers_and_tiers(warehouse_factory):
    """Every name the daemon derives is its own: two daemons never share a socket or a tier."""
    one = warehouse_factory("--dram", "64M")
    two = warehouse_factory("--dram", "64M")
    assert broker_socket(one) != broker_socket(two)
    h = block_hash("two-mounts")
    for wh, data in ((one, b"one" * 1000), (two, b"two" * 1000)):
        ns = wh.namespace("ns")
        write_block(canonical(ns, h), data)
        make_resident(ns, [h])
    with Client(one.mount) as a, Client(two.mount) as b:
        assert a.get("ns", h) == b"one" * 1000 and b.get("ns", h) == b"two" * 1000
        assert a.stats["map_hits"] == 1 and b.stats["map_hits"] == 1
        assert tier_of_namespace(a, "ns").gen != tier_of_namespace(b, "ns").gen


# ------------------------------------------------------------------------------------- a. C reader

C_READER = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include "tokenwarehouse.h"

/* usage: reader MOUNT NS NS/KEY... ; prints "gen G" then per key "hit LEN XXH3_64" | "miss" | "retry" */
int main(int argc, char **argv) {
    static tw_broker_tier got[16];
    int alive = -1;
    int n = tw_broker_connect(argv[1], got, 16, &alive), found = -1;
    if (n < 0) { perror("tw_broker_connect"); return 2; }
    for (int i = 0; i < n; i++) if (found < 0 && tw_list_contains(got[i].namespaces, argv[2])) found = i;
    if (found < 0) { puts("no tier"); return 3; }
    struct stat st;
    if (fstat(got[found].data_fd, &st) != 0) { perror("fstat"); return 2; }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, got[found].data_fd, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 2; }
    tw_tier tier;
    if (tw_tier_open(map, (uint64_t)st.st_size, &tier) != 0) { puts("invalid"); return 3; }
    void *page = alive >= 0 ? mmap(NULL, 4096, PROT_READ, MAP_SHARED, alive, 0) : MAP_FAILED;
    if (page == MAP_FAILED || tw_tier_watch_daemon(&tier, page) != 0) { puts("no liveness page"); return 3; }
    for (int i = 0; i < n; i++) { close(got[i].data_fd); close(got[i].hits_fd); }
    printf("gen %llx\n", (unsigned long long)tier.generation);
    uint64_t cap = 64u << 20;
    char *buf = malloc(cap);
    for (int i = 3; i < argc; i++) {
        XXH128_hash_t h = XXH3_128bits(argv[i], strlen(argv[i]));
        int r = TW_RETRY;
        uint64_t len = 0, index = 0;
        for (int tries = 0; tries < 1000 && r == TW_RETRY; tries++) {
            len = cap;
            r = tw_lookup_copy(&tier, h.low64, h.high64, buf, &len, &index);
        }
        if (r == TW_HIT)
            printf("hit %llu %016llx\n", (unsigned long long)len, (unsigned long long)XXH3_64bits(buf, len));
        else
            puts(r == TW_MISS ? "miss" : r == TW_RETRY ? "retry" : "too-small");
    }
    return 0;
}
"""


def build_c_reader(tmp: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp / "tw_reader.c"
    src.write_text(C_READER)
    exe = tmp / "tw_reader"
    r = subprocess.run([cc, "-O2", "-std=c11", "-Wall", "-Werror", f"-I{REPO / 'include'}", os.fspath(src), "-o",
                        os.fspath(exe), "-lxxhash"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"building the C reader against include/tokenwarehouse.h failed:\n{r.stderr}"
    return exe


def test_c_reader_finds_resident_blocks(warehouse_factory, tmp_path):
    exe = build_c_reader(tmp_path)
    wh = warehouse_factory("--dram", "256M")
    ns = wh.namespace("ns")
    blocks = make_blocks(ns, "c-reader", 16, 4 * KiB, 768 * KiB)
    compat = {"layer.0.kv": pattern("compat-0", 300 * KiB), "k@1.pt": pattern("compat-1", 5000),
              "model/layer1/kv.bin": pattern("nested", 70 * KiB)}
    for name, data in compat.items():
        os.makedirs(os.path.dirname(ns / name), exist_ok=True)
        write_block(os.fspath(ns / name), data)
    make_resident(ns, list(blocks))
    for name in compat:
        read_block(os.fspath(ns / name))
    assert wait_until(lambda: all(tier_of(ns / n) == "dram" for n in compat), 15, 0.1), \
        "compatibility-named blocks read through the mount are not resident"
    blocks.update(compat)
    names = list(blocks)

    r = subprocess.run([os.fspath(exe), os.fspath(wh.mount), "ns"] + [f"ns/{n}" for n in names]
                       + ["ns/" + block_hash("absent"), "other/" + names[0]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    gen = int(lines[0].split()[1], 16)
    assert gen != 0
    for name, line in zip(names, lines[1:]):
        want = f"hit {len(blocks[name])} {xxhash.xxh3_64_intdigest(blocks[name]):016x}"
        assert line == want, f"C reader on ns/{name}: {line!r}, expected {want!r}"
    assert lines[-2:] == ["miss", "miss"], lines[-2:]   # an absent block; a name of another namespace

    # The Python client both ways: its lookup in C (tokenwarehouse._mapcopy, built by pip install; CI must
    # have it) and in Python.
    for native in (True, False):
        with Client(wh.mount, verify=True, native=native) as c:
            if native and os.environ.get("CI") == "true":
                assert c.native, f"the client's C lookup did not build: {os.environ.get('TW_MAPCOPY_BUILD_ERROR')}"
            assert c.mapped and c.generation == gen, c.tier_error
            assert tier_of_namespace(c, "ns").hits is not None, "the broker handed no hit counters"
            for name in names:
                assert c.get("ns", name) == blocks[name]
                buf = bytearray(len(blocks[name]))
                assert c.get_into("ns", name, buf) == len(buf) and buf == blocks[name]
                assert c.exists("ns", name) and c.tier("ns", name) == "dram"
            assert c.stats["map_hits"] >= len(names), c.stats   # (a block evicted meanwhile: a fallback)
            assert c.stats["checksum_errors"] == 0, c.stats


# ------------------------------------------------------------------------------------- b. stress

_STRESS_READER = r"""
import errno, hashlib, json, random, sys, time
from tokenwarehouse import Client
mount, ns, seconds, seed, manifest = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
with open(manifest) as f:
    m = json.load(f)
expected, hot = m["blocks"], m["hot"]
names = sorted(expected)
rnd = random.Random(seed)
buf = bytearray(max(size for size, _ in expected.values()))
wrong, errors, reads, nbytes = [], [], 0, 0
with Client(mount, verify=True) as c:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        name = rnd.choice(hot) if rnd.random() < 0.7 else rnd.choice(names)
        size, digest = expected[name]
        try:
            if rnd.random() < 0.25:
                n = c.get_into(ns, name, buf)
                data = memoryview(buf)[:n]
            else:
                data = c.get(ns, name)
                n = len(data)
        except OSError as e:
            errors.append("%s: %s" % (name, errno.errorcode.get(e.errno, e.errno)))
            continue
        reads += 1
        nbytes += n
        if n != size or hashlib.sha256(data).hexdigest() != digest:
            wrong.append("%s: %d bytes of %d" % (name, n, size))
    stats = dict(c.stats, mapped=c.mapped, tier_error=c.tier_error)
print(json.dumps({"reads": reads, "bytes": nbytes, "wrong": wrong[:20], "n_wrong": len(wrong),
                  "errors": errors[:20], "n_errors": len(errors), "stats": stats}))
"""

_STRESS_CHURN = r"""
import errno, hashlib, json, os, random, sys, time
from tokenwarehouse import Client
mount, ns, seconds, manifest = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
with open(manifest) as f:
    m = json.load(f)
expected = m["blocks"]
cold = sorted(set(expected) - set(m["hot"]))
rnd = random.Random(99)
reads = hints = wrong = errs = 0
msgs = []
with Client(mount) as c:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = rnd.sample(cold, min(8, len(cold)))
        if c.prefetch(ns, batch):       # load these into the tier: evicts others
            hints += len(batch)
        for name in rnd.sample(cold, min(2, len(cold))):   # misses through the mount load blocks too
            path = c.path(ns, name)
            try:
                with open(path, "rb", buffering=0) as f:
                    data = f.readall()
            except OSError as e:
                errs += 1
                msgs.append("%s: %s" % (name, errno.errorcode.get(e.errno, e.errno)))
                continue
            reads += 1
            size, digest = expected[name]
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                wrong += 1
                msgs.append("%s: wrong bytes through the mount" % name)
print(json.dumps({"reads": reads, "hints": hints, "wrong": wrong, "errors": errs, "msgs": msgs[:20]}))
"""


@pytest.mark.stress
@pytest.mark.timeout(int(STRESS_SECONDS) + 600)
def test_stress_map_readers_while_the_tier_churns(warehouse_factory, tmp_path):
    wh = warehouse_factory("--dram", "64M", capacity="4G")
    ns = wh.namespace("stress")
    rnd = random.Random(7)
    expected = {}
    for i in range(200):
        h = block_hash("dram-stress", i)
        data = pattern(h, rnd.randint(1 * MiB, 2 * MiB))
        write_block(canonical(ns, h), data)
        expected[h] = [len(data), sha(data)]
    names = sorted(expected)
    hot = names[:16]                       # ~24 MiB read 70% of the time: stays resident, mostly
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"blocks": expected, "hot": hot}))
    for h in hot:
        read_block(canonical(ns, h))

    mount = os.fspath(wh.mount)
    env = child_env()
    procs = [subprocess.Popen([sys.executable, "-c", _STRESS_READER, mount, "stress", str(STRESS_SECONDS), str(r),
                               os.fspath(manifest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for r in range(4)]
    churn = subprocess.Popen([sys.executable, "-c", _STRESS_CHURN, mount, "stress", str(STRESS_SECONDS),
                              os.fspath(manifest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    results = []
    for p in procs + [churn]:
        out, err = p.communicate(timeout=STRESS_SECONDS + 300)
        assert p.returncode == 0, f"stress process exited {p.returncode}:\n{err[-3000:]}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    readers, churned = results[:4], results[4]

    total = {k: sum(r["stats"][k] for r in readers) for k in
             ("map_hits", "map_misses", "map_retries", "file_reads", "remaps", "checksum_errors")}
    reads = sum(r["reads"] for r in readers)
    gib = sum(r["bytes"] for r in readers) / (1 << 30)
    try:
        status = wh.status()
    except (OSError, ValueError) as e:
        status = f"<{e}>"
    print(f"\ndram stress {STRESS_SECONDS:.0f}s: {reads} reads ({gib:.2f} GiB) by 4 map readers: {total}; "
          f"churn: {churned}; daemon status: {status}")
    for r in readers:
        assert r["n_wrong"] == 0, f"WRONG BYTES from the client: {r['wrong']}"
        assert r["n_errors"] == 0, f"reader errors: {r['errors']}"
        assert r["stats"]["mapped"], f"a reader ended without the tier mapped: {r['stats']['tier_error']}"
    assert churned["wrong"] == 0 and churned["errors"] == 0, churned["msgs"]
    assert total["checksum_errors"] == 0, f"map copies whose XXH3-64 did not match the entry: {total}"
    assert reads > 0 and churned["reads"] > 0 and churned["hints"] > 0
    assert total["map_hits"] > 0, f"no reads were served by the map: {total}"
    assert total["map_misses"] + total["map_retries"] > 0 and total["file_reads"] > 0, \
        f"no fallbacks: the tier did not churn: {total}"
    assert wh.alive()


# ------------------------------------------------------------------------------------- c. permissions

def test_a_user_maps_only_the_namespaces_it_could_read(warehouse_factory):
    """docs/security.md: a process gets from the broker the tiers of the security domains it could read
    through the mount. A 0700 namespace of another user is not among them; a 0755 one is."""
    wh = warehouse_factory("--dram", "64M")
    open_ns = wh.namespace("open", 0o755)
    private = wh.namespace("private", 0o700)
    shared = make_blocks(open_ns, "perm-open", 3, 64 * KiB, 256 * KiB)
    secret = make_blocks(private, "perm-private", 3, 64 * KiB, 256 * KiB)
    make_resident(open_ns, list(shared))
    make_resident(private, list(secret))
    mount = os.fspath(wh.mount)

    def as_nobody():
        with Client(mount, verify=True) as c:
            ok = {h: sha(c.get("open", h)) for h in shared}
            denied = {}
            for h in secret:
                try:
                    c.get("private", h)
                    denied[h] = "read"
                except PermissionError:
                    denied[h] = "EACCES"
            return {"ok": ok, "denied": denied, "tiers": c.tiers, "stats": c.stats}

    out = run_as_user(NOBODY, NOGROUP, as_nobody)
    assert set(out["tiers"]) == {"open"}, out["tiers"]
    assert out["ok"] == {h: sha(d) for h, d in shared.items()}
    assert set(out["denied"].values()) == {"EACCES"}, out["denied"]
    assert out["stats"]["map_hits"] == len(shared), out["stats"]
    # Root (the daemon's user) gets both, in separate tiers.
    with Client(mount) as c:
        assert set(c.tiers) == {"open", "private"} and c.tiers["open"] != c.tiers["private"], c.tiers


def test_group_members_map_a_group_readable_namespace(warehouse_factory):
    wh = warehouse_factory("--dram", "64M")
    ns = wh.namespace("team", 0o750)
    os.chown(ns, 0, NOGROUP)
    blocks = make_blocks(ns, "group", 4, 64 * KiB, 256 * KiB)
    make_resident(ns, list(blocks))
    mount = os.fspath(wh.mount)

    def as_member():
        with Client(mount, verify=True) as c:
            ok = {h: sha(c.get("team", h)) for h in blocks}
            t = c._conn.by_namespace.get("team") if c._conn else None
            return {"ok": ok, "tiers": c.tiers, "stats": c.stats, "hits": t is not None and t.hits is not None}

    out = run_as_user(NOBODY, NOGROUP, as_member, groups=[NOGROUP])
    assert out["tiers"] == {"team": out["tiers"].get("team")} and out["hits"], out
    assert out["ok"] == {h: sha(d) for h, d in blocks.items()}
    assert out["stats"]["map_hits"] > 0, out

    def as_outsider():
        with Client(mount) as c:
            return {"tiers": c.tiers}
    assert run_as_user(NOBODY + 1 if NOBODY < 65534 else 65533, 65533, as_outsider)["tiers"] == {}


def test_setpriv_outsider_reads_through_files(warehouse_factory):
    """The same from a separate process started with setpriv (no shared state with pytest)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv missing")
    wh = warehouse_factory("--dram", "64M")
    ns = wh.namespace("ns", 0o755)
    blocks = make_blocks(ns, "setpriv", 2, 64 * KiB, 128 * KiB)
    make_resident(ns, list(blocks))
    # The child must be able to import the client: copy it where nobody can read it.
    tmp = Path(tempfile.mkdtemp(prefix="tw-client-"))
    try:
        os.chmod(tmp, 0o755)
        shutil.copytree(os.path.join(CLIENT_PATH, "tokenwarehouse"), tmp / "tokenwarehouse")
        for root, dirs, files in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        code = ("import hashlib, json, sys; from tokenwarehouse import Client\n"
                "c = Client(sys.argv[1])\n"
                "print(json.dumps({'mapped': c.mapped, 'error': c.tier_error,"
                " 'sha': {n: hashlib.sha256(c.get('ns', n)).hexdigest() for n in sys.argv[2:]}}))")
        env = dict(os.environ, PYTHONPATH=os.fspath(tmp))
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code,
                            os.fspath(wh.mount), *blocks], capture_output=True, text=True, env=env, timeout=60)
        if r.returncode != 0 and ("No module named" in r.stderr or "Permission denied" in r.stderr):
            pytest.skip(f"nobody cannot import the client's dependencies here: {r.stderr[-300:]}")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["mapped"] and out["sha"] == {h: sha(d) for h, d in blocks.items()}, out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------- d. restart

@pytest.mark.timeout(180)
@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
def test_client_survives_daemon_restart(warehouse_factory, crash):
    wh = warehouse_factory("--dram", "128M")
    ns = wh.namespace("ns")
    blocks = make_blocks(ns, f"restart-{crash}", 8, 64 * KiB, 512 * KiB)
    make_resident(ns, list(blocks))
    client = ClientProcess(wh.mount)
    try:
        client.watch("ns")    # the old tier, as a client that mapped it sees it after the restart
        gen1 = client.stats()["generation"]
        for h, d in blocks.items():
            assert client.get("ns", h) == (len(d), sha(d))
        s = client.stats()
        assert s["mapped"] and s["generation"] == gen1 and s["map_hits"] > 0, s

        wh.restart(kill=crash)
        old_gen = client.watched_generation()
        if not crash:
            assert old_gen == 0, "the stopped daemon left its tier's generation non-zero"

        with Client(wh.mount) as fresh:
            gen2 = fresh.generation
        assert gen2 not in (0, gen1), (gen1, gen2)
        # Right after the restart: correct bytes, from the new map or from the files.
        for h, d in blocks.items():
            assert client.get("ns", h) == (len(d), sha(d))
        make_resident(ns, list(blocks))

        def remapped():
            for h, d in blocks.items():
                assert client.get("ns", h) == (len(d), sha(d))
            st = client.stats()
            return st if st["mapped"] and st["generation"] == gen2 and st["remaps"] >= 1 else None
        st = wait_until(remapped, 10, 0.2)
        assert st, (
            f"the client did not map the new tier (gen {gen2:#x}; the old tier it mapped now has "
            f"generation {client.watched_generation():#x}): {client.stats()}")
        hits_before = st["map_hits"]
        for h, d in blocks.items():
            assert client.get("ns", h) == (len(d), sha(d))
        assert client.stats()["map_hits"] > hits_before
    finally:
        client.close()


# ------------------------------------------------------------------------------------- e. --dram 0

def test_dram_zero_disables_the_tier(warehouse_factory):
    wh = warehouse_factory("--dram", "0")
    assert dram_control(wh).strip() == "", dram_control(wh)
    ns = wh.namespace("ns")
    blocks = make_blocks(ns, "nodram", 3, 4 * KiB, 64 * KiB)
    with Client(wh.mount, verify=True) as c:
        assert not c.mapped
        for h, d in blocks.items():
            assert c.get("ns", h) == d
            assert c.tier("ns", h) == "nvme"
        assert c.put("ns", block_hash("nodram-put"), b"x" * 5000, parent=next(iter(blocks)), tokens=16)
        assert c.get("ns", block_hash("nodram-put")) == b"x" * 5000
        assert c.stats["file_reads"] == 4 and c.stats["map_hits"] == 0, c.stats


# ------------------------------------------------------------------------------ client writes, prefetch

def test_client_put_and_get_through_the_daemon(warehouse_factory):
    wh = warehouse_factory("--dram", "64M")
    with Client(wh.mount, verify=True) as c:
        assert not c.mapped and c.tier_error == "the daemon handed this process no tier"   # no namespace yet
        with pytest.raises(FileNotFoundError):
            c.put("model-x", block_hash("p0"), b"data")
        c.ensure_namespace("model-x")
        c.refresh()
        assert c.mapped and set(c.tiers) == {"model-x"}, c.tier_error
        parent = None
        for i in range(4):
            h = block_hash("chain", i)
            data = pattern(h, 100 * KiB + i)
            assert c.put("model-x", h, data, parent=parent, tokens=512) is True
            assert c.put("model-x", h, b"other bytes") is False
            assert c.get("model-x", h) == data
            p = canonical(wh.mount / "model-x", h)
            if parent is not None:
                assert os.getxattr(p, "user.tw.parent") == parent.encode()
            assert os.getxattr(p, "user.tw.tokens") == b"512"
            assert c.exists("model-x", h)
            parent = h
        assert not c.exists("model-x", block_hash("nope"))
        assert c.put("model-x", "compat.kv", b"abc") and c.get("model-x", "compat.kv") == b"abc"


@pytest.mark.timeout(180)
def test_prefetch_hint_loads_blocks_into_the_tier(warehouse_factory):
    wh = warehouse_factory("--dram", "64M")
    ns = wh.namespace("ns")
    # Twice the tier's size, written but never read: most of these are not resident.
    blocks = make_blocks(ns, "prefetch", 64, 2 * MiB, 2 * MiB)
    cold = [h for h in blocks if tier_of(canonical(ns, h)) != "dram"]
    assert len(cold) >= 5, "128 MiB of blocks written into a 64 MiB tier are all resident?"
    want = cold[:5]
    with Client(wh.mount, verify=True) as c:
        assert c.prefetch("ns", want) is True, "MOUNT/.tw/prefetch is missing"
        ok = wait_until(lambda: all(tier_of(canonical(ns, h)) == "dram" for h in want), 15, 0.1)
        assert ok, f"hinted blocks not loaded: {[tier_of(canonical(ns, h)) for h in want]}"
        for h in want:
            assert c.get("ns", h) == blocks[h]
        assert c.stats["map_hits"] >= 1, c.stats


@pytest.mark.timeout(120)
def test_a_hint_from_its_owner_does_not_put_a_private_block_into_the_shared_tier(warehouse_factory):
    """Everyone who may search the namespace maps its tier: a block only its owner may read stays out,
    even when the owner (who may read it) hints it."""
    wh = warehouse_factory("--dram", "64M")
    ns = wh.namespace("ns", 0o755)
    private, public = block_hash("hinted-private"), block_hash("hinted-public")
    data = {h: pattern(h, 64 * KiB) for h in (private, public)}
    for h, mode in ((private, 0o600), (public, 0o644)):
        fd = os.open(canonical(ns, h), os.O_CREAT | os.O_WRONLY, mode)
        os.write(fd, data[h])
        os.close(fd)
    wh.restart()  # an empty tier: what a hint loads is all that is there
    assert tier_of(canonical(ns, private)) != "dram" and tier_of(canonical(ns, public)) != "dram"
    with Client(wh.mount, verify=True) as c:
        assert c.prefetch("ns", [private, public]) is True
    assert wait_until(lambda: tier_of(canonical(ns, public)) == "dram", 15, 0.1), "the readable block was not loaded"
    assert wait_until(lambda: wh.status()["prefetch"]["not_admitted"] >= 1, 15, 0.1), wh.status()["prefetch"]
    assert tier_of(canonical(ns, private)) != "dram", "a block only its owner may read entered the shared tier"
    assert read_block(canonical(ns, private)) == data[private]
    assert tier_of(canonical(ns, private)) != "dram"


@pytest.mark.timeout(120)
def test_a_directory_closed_to_others_takes_the_blocks_below_it_out_of_the_shared_tier(warehouse_factory):
    """chmod 0700 of a directory: those who map the namespace's tier may no longer read the blocks below
    it through the mount, so the tier lets them go, nested ones included, and does not take them back."""
    wh = warehouse_factory("--dram", "64M")
    ns = wh.namespace("ns", 0o755)
    os.mkdir(ns / "sub", 0o755)
    os.mkdir(ns / "sub" / "inner", 0o755)
    os.mkdir(ns / "other", 0o755)
    paths = {p: pattern(p, 64 * KiB) for p in (str(ns / "sub" / "a"), str(ns / "sub" / "inner" / "b"), str(ns / "other" / "c"))}
    for p, data in paths.items():
        write_block(p, data)
        read_block(p)
    assert wait_until(lambda: all(tier_of(p) == "dram" for p in paths), 15, 0.1), [tier_of(p) for p in paths]
    os.chmod(ns / "sub", 0o700)
    below = [str(ns / "sub" / "a"), str(ns / "sub" / "inner" / "b")]
    assert [tier_of(p) for p in below] == ["nvme", "nvme"], [tier_of(p) for p in below]
    assert tier_of(str(ns / "other" / "c")) == "dram"
    for p in below:
        assert read_block(p) == paths[p]
    assert all(tier_of(p) != "dram" for p in below), "a read put a block others may not read back into the tier"


@pytest.mark.timeout(180)
def test_blocks_read_in_write_order_after_a_restart_are_read_ahead_along_the_log(warehouse_factory):
    """After a restart nothing is learned yet; the log still holds the write order, and a process that
    reads blocks in that order gets the blocks after them loaded ahead, except one the tier may not hold."""
    wh = warehouse_factory()
    ns = wh.namespace("ns")
    names = [block_hash("log-order", i) for i in range(24)]
    blocks = {}
    for i, h in enumerate(names):
        data = pattern(h, 256 * KiB + i)
        if i == 10:
            # Readable by its owner alone: readers who map the tier could not read it through the mount.
            fd = os.open(canonical(ns, h), os.O_CREAT | os.O_WRONLY, 0o600)
            os.write(fd, data)
            os.close(fd)
        else:
            write_block(canonical(ns, h), data)
        blocks[h] = data
    wh.restart()
    assert all(tier_of(canonical(ns, h)) != "dram" for h in names), "the tier is empty after a restart"
    for h in names[:8]:
        assert read_block(canonical(ns, h), uncached=True) == blocks[h]
    ahead = names[8:10] + names[11:16]
    ok = wait_until(lambda: all(tier_of(canonical(ns, h)) == "dram" for h in ahead), 15, 0.1)
    assert ok, f"blocks after the run not loaded: {[tier_of(canonical(ns, h)) for h in ahead]}"
    assert wh.status()["prefetch"]["loaded_log_order"] >= len(ahead)
    assert tier_of(canonical(ns, names[10])) != "dram", "a block only its owner may read entered the shared tier"
    for h in names[8:]:
        assert read_block(canonical(ns, h), uncached=True) == blocks[h]
    # The hit ratio is where the readers' blocks came from: the read-ahead's own loads from NVMe are not
    # reads a reader waited for.
    ratios = wh.status()["hit_ratios"]
    assert ratios["dram"] > 0.6, ratios


def test_a_process_that_maps_the_tier_gets_loads_ahead_even_when_the_page_cache_served_it(warehouse_factory):
    """After a block's readers were served by the kernel's page cache, a plain reader of it starts no
    loads of its chain successors (they would only take bandwidth from page-cache readers); a process
    that took the tiers from the broker does (it looks in the map first, docs/design.md "Prefetcher")."""
    wh = warehouse_factory("--dram", "64M", "--prefetch-depth", "4", "--dram-admit-writes", "off")
    ns = wh.namespace("pc")
    names = [block_hash("page-cache", i) for i in range(6)]
    size = 128 * KiB
    write_block(canonical(ns, names[0]), pattern(names[0], size))
    # Read directly twice; the re-read block is then put into the page cache by the daemon, and the third
    # read is served from there: no READ reaches the daemon.
    pushed = lambda: wh.status()["operations"]["counts"]["page_cache_push"]
    for _ in range(2):
        assert read_block(canonical(ns, names[0])) == pattern(names[0], size)
    assert wait_until(lambda: pushed() >= 1, 10, 0.02), wh.status()["operations"]["counts"]
    assert read_block(canonical(ns, names[0])) == pattern(names[0], size)
    for i in range(1, len(names)):
        h = names[i]
        fd = os.open(canonical(ns, h), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        try:
            os.write(fd, pattern(h, size))
            os.setxattr(canonical(ns, h), "user.tw.parent", names[i - 1].encode())
        finally:
            os.close(fd)
    successors = [canonical(ns, h) for h in names[1:5]]
    assert all(tier_of(p) == "nvme" for p in successors)
    first = canonical(ns, names[0])
    plain = f"open({os.fspath(first)!r}, 'rb').read()"
    subprocess.run([sys.executable, "-c", plain], check=True, timeout=30)
    time.sleep(1.0)
    assert all(tier_of(p) == "nvme" for p in successors), [tier_of(p) for p in successors]
    assert wh.status()["prefetch"]["loaded_chain"] == 0, wh.status()["prefetch"]
    mapped = (f"from tokenwarehouse import Client\n"
              f"with Client({os.fspath(wh.mount)!r}) as c:\n"
              f"    assert c.mapped, c.tier_error\n"
              f"    open({os.fspath(first)!r}, 'rb').read()\n")
    subprocess.run([sys.executable, "-c", mapped], check=True, timeout=30, env=child_env())
    assert wait_until(lambda: all(tier_of(p) == "dram" for p in successors), 10, 0.1), \
        [tier_of(p) for p in successors]
    assert wh.status()["prefetch"]["loaded_chain"] >= 4, wh.status()["prefetch"]
