"""The shared tier across nodes on a real (throwaway) Ceph cluster (issue 9, docs/cluster-tier.md).

One cluster per module (ceph_cluster.py: a monitor, a manager unless TW_CEPH_MGR=0, one OSD on a
sparse file, pool size 1); each test starts two twfs daemons with their own stores and DRAM-tier
files, as two nodes, and kills them by pid afterwards. Run with Tools/ceph_test.sh (root, /dev/fuse).

Environment: TWFS_BIN (default <repo>/.build/release/twfs), TW_CEPH_KEEP=1 keeps the directories.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "IntegrationTests" / "mount"))

from ceph_cluster import CephCluster  # noqa: E402
from twfs_util import block_hash, canonical, lazy_unmount, proc_mounts_types, read_block, write_block  # noqa: E402

POOL = "tw"
# Every cluster call of the daemons gives up after this many seconds (--cluster-timeout).
CLUSTER_TIMEOUT_S = 3
pytestmark = pytest.mark.timeout(300)


def twfs_binary() -> str:
    return os.environ.get("TWFS_BIN") or str(REPO / ".build" / "release" / "twfs")


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.fail("the cluster-tier tests need root and /dev/fuse")
    for tool in ("ceph-mon", "ceph-osd", "ceph", "rados"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run Tools/install-deps.sh")
    base = Path(tempfile.mkdtemp(prefix="tw-ceph-"))
    c = CephCluster(base)
    try:
        t0 = time.monotonic()
        c.start()
        c.create_pool(POOL)
        print(f"cluster ready in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        yield c
    finally:
        c.close()
        if os.environ.get("TW_CEPH_KEEP") != "1":
            shutil.rmtree(base, ignore_errors=True)


class Node:
    """One twfs daemon sharing through the cluster: its own store, DRAM-tier file and mount."""

    def __init__(self, base: Path, name: str, conf: Path, extra: list[str] | None = None, pool: str = POOL):
        self.base = base / name
        self.mount = self.base / "mnt"
        self.store = self.base / "store"
        self.log = self.base / "twfs.log"
        self.mount.mkdir(parents=True, exist_ok=True)  # exists when a node restarts on its store
        cmd = [twfs_binary(), str(self.mount), "--store", str(self.store), "--capacity", "256M", "--dram", "64M",
               "--cluster", str(conf), "--pool", pool,
               "--cluster-timeout", str(CLUSTER_TIMEOUT_S), "-f", *(extra or [])]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 20
        while "fuse.twfs" not in proc_mounts_types(self.mount):
            assert self.proc.poll() is None, f"twfs exited with {self.proc.returncode}:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"twfs did not mount:\n{self.log.read_text()}"
            time.sleep(0.05)
        wait_for(lambda: self.remote()["connected"], 20, f"{name} to connect to the cluster")

    def status(self) -> dict:
        with open(self.mount / ".tw" / "status", "rb") as f:
            return json.loads(f.read())

    def remote(self) -> dict:
        return self.status()["remote"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        lazy_unmount(self.mount)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


@pytest.fixture
def nodes(cluster, request):
    base = Path(tempfile.mkdtemp(prefix="tw-nodes-"))
    made = []
    try:
        a = Node(base, "a", cluster.conf)
        made.append(a)
        b = Node(base, "b", cluster.conf)
        made.append(b)
        for n in made:
            os.mkdir(n.mount / "kv", 0o755)
        yield a, b
    finally:
        for n in made:
            n.close()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for n in made:
                print(f"----- {n.log} -----\n{n.log.read_text(errors='replace')[-20000:]}", file=sys.stderr)
        if os.environ.get("TW_CEPH_KEEP") != "1":
            shutil.rmtree(base, ignore_errors=True)


def new_block(tag: str, size: int) -> tuple[str, bytes]:
    """A fresh canonical name (unique per run: the pool outlives nothing, but tests share it) and bytes."""
    name = block_hash(tag, os.getpid(), time.monotonic_ns(), length=32)
    return name, random.Random(name).randbytes(size)


def publish_on(node: Node, name: str, data: bytes) -> None:
    before = node.remote()["published"]
    write_block(canonical(node.mount / "kv", name), data)
    wait_for(lambda: node.remote()["published"] > before, 20, f"{name} to be published")


def block_objects(cluster, pool: str = POOL) -> set[str]:
    """The pool's block objects (namespace descriptors, twn.*, come and go with the nodes)."""
    return {o for o in cluster.rados("-p", pool, "ls").stdout.decode().split() if o.startswith("twb.")}


def read_errno(path: str) -> tuple[int | None, bytes | None]:
    try:
        return None, read_block(path)
    except OSError as e:
        return e.errno, None


# ---------------------------------------------------------------------------------------------- tests

def test_block_written_on_a_is_read_on_b_then_served_from_b(cluster, nodes):
    a, b = nodes
    name, data = new_block("a-to-b", 3 << 20)
    objects_before = block_objects(cluster)
    publish_on(a, name, data)
    new_objects = block_objects(cluster) - objects_before
    assert len(new_objects) == 1, f"expected one new object in the pool, found {new_objects}"

    assert read_block(canonical(b.mount / "kv", name)) == data
    rb = b.remote()
    assert rb["fetched"] == 1 and rb["corrupt"] == 0, rb
    assert b.status()["blocks"] == 1

    # Served from B's own tiers now: gone from the pool, still read byte for byte, nothing fetched.
    assert cluster.rados("-p", POOL, "rm", new_objects.pop()).returncode == 0
    assert read_block(canonical(b.mount / "kv", name)) == data
    assert b.remote()["fetched"] == 1
    # A name neither node nor the pool has is a miss on B, answered at once; the second read asks the
    # pool nothing: the kernel keeps the absence for as long as the tier keeps its miss (docs/fuse.md),
    # or, once that entry lapsed, the tier's own negative cache answers.
    missing, _ = new_block("missing", 1)
    misses_before = b.remote()["misses"]
    t0 = time.monotonic()
    assert read_errno(canonical(b.mount / "kv", missing))[0] == errno.ENOENT
    assert read_errno(canonical(b.mount / "kv", missing))[0] == errno.ENOENT
    assert time.monotonic() - t0 < 1.0
    rb = b.remote()
    assert rb["misses"] - misses_before == 1, rb


@pytest.mark.parametrize("damage", ["flip-payload-byte", "flip-header-byte", "truncate"])
def test_corrupted_object_is_rejected(cluster, nodes, damage, tmp_path):
    a, b = nodes
    name, data = new_block("corrupt-" + damage, 1 << 20)
    objects_before = block_objects(cluster)
    publish_on(a, name, data)
    (obj,) = block_objects(cluster) - objects_before
    local = tmp_path / "obj"
    assert cluster.rados("-p", POOL, "get", obj, str(local)).returncode == 0
    raw = bytearray(local.read_bytes())
    assert len(raw) == 4096 + len(data)
    if damage == "flip-payload-byte":
        raw[4096 + 12345] ^= 0x01
    elif damage == "flip-header-byte":
        raw[16] ^= 0x01  # the logical length
    else:
        del raw[-1:]
    local.write_bytes(bytes(raw))
    assert cluster.rados("-p", POOL, "put", obj, str(local)).returncode == 0

    code, got = read_errno(canonical(b.mount / "kv", name))
    assert got is None, "a damaged object was served"
    assert code in (errno.EIO, errno.ENOENT), f"expected EIO or ENOENT, got {code}"
    rb = b.remote()
    assert rb["corrupt"] == 1 and rb["fetched"] == 0, rb
    assert b.status()["blocks"] == 0
    # A still has its own copy, intact.
    assert read_block(canonical(a.mount / "kv", name)) == data


def test_without_osd_b_serves_local_blocks_and_misses_within_timeout_then_catches_up(cluster, nodes):
    a, b = nodes
    kv_a, kv_b = a.mount / "kv", b.mount / "kv"
    local_name, local_data = new_block("local", 2 << 20)
    remote_name, remote_data = new_block("remote", 2 << 20)
    publish_on(a, local_name, local_data)
    assert read_block(canonical(kv_b, local_name)) == local_data  # now local on B
    publish_on(a, remote_name, remote_data)                        # only in the pool for B
    sync_ns = f"sync-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    out = twctl("ns", "create", str(a.mount), sync_ns, "--share", "sync")
    assert out.returncode == 0, out.stderr

    cluster.stop_osd()
    try:
        t0 = time.monotonic()
        assert read_block(canonical(kv_b, local_name)) == local_data
        assert time.monotonic() - t0 < 0.5, "a local block waited for the cluster"
        t0 = time.monotonic()
        code, got = read_errno(canonical(kv_b, remote_name))
        waited = time.monotonic() - t0
        assert got is None and code in (errno.ENOENT, errno.EIO), f"got {code}"
        assert waited < CLUSTER_TIMEOUT_S + 1.5, f"a remote-only read took {waited:.1f} s"
        # Written on A meanwhile: committed locally at once, published when the cluster is back.
        late_name, late_data = new_block("late", 1 << 20)
        t0 = time.monotonic()
        write_block(canonical(kv_a, late_name), late_data)
        assert time.monotonic() - t0 < 1.0, "a commit waited for the cluster"
        assert read_block(canonical(kv_a, late_name)) == late_data
        wait_for(lambda: a.remote()["publish_failures"] >= 1, 3 * CLUSTER_TIMEOUT_S + 5, "A's publish to fail")
        assert a.remote()["published"] == 2
        # share=sync while publishing fails: queued at once, not a wait of the whole timeout per commit.
        sync_name, sync_data = new_block("sync", 256 * 1024)
        t0 = time.monotonic()
        write_block(canonical(a.mount / sync_ns, sync_name), sync_data)
        waited = time.monotonic() - t0
        assert waited < 1.0, f"a share=sync commit waited {waited:.1f} s for a cluster known to be away"
        assert a.remote()["sync_deferred"] >= 1, a.remote()
        assert b.proc.poll() is None and a.proc.poll() is None
    finally:
        cluster.start_osd()

    def catches_up():
        code_r, got_r = read_errno(canonical(kv_b, remote_name))
        code_l, got_l = read_errno(canonical(kv_b, late_name))
        return got_r == remote_data and got_l == late_data
    t0 = time.monotonic()
    wait_for(catches_up, 60, "B to read both blocks after the OSD returned", interval=0.5)
    print(f"caught up {time.monotonic() - t0:.1f} s after the OSD was back", file=sys.stderr)
    # A's publisher retried the block it could not publish and has nothing left queued.
    wait_for(lambda: (lambda r: r["published"] == 4 and r["queue_depth"] == 0)(a.remote()), 10, "A's queue to drain")
    assert read_block(canonical(b.mount / sync_ns, sync_name)) == sync_data


def twctl(*args: str) -> subprocess.CompletedProcess:
    binary = os.environ.get("TWCTL_BIN") or str(Path(twfs_binary()).with_name("twctl"))
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_cluster_gc_removes_least_recently_used_and_status_shows_the_tier(cluster, nodes):
    a, b = nodes
    empty = twctl("cluster", "gc", str(a.mount), "--target", "0", "--json")
    assert empty.returncode == 0, empty.stderr
    assert block_objects(cluster) == set()
    objects = {}
    blocks = {}
    for tag in ("first", "second", "third"):
        before = block_objects(cluster)
        name, data = new_block("gc-" + tag, 1 << 20)
        publish_on(a, name, data)
        (objects[tag],) = block_objects(cluster) - before
        blocks[tag] = (name, data)
        time.sleep(1.1)  # access times are in seconds
    # B reads the first: its access time is now the newest, so the second is the least recently used.
    assert read_block(canonical(b.mount / "kv", blocks["first"][0])) == blocks["first"][1]
    wait_for(lambda: b.remote()["touches"] >= 1, 10, "B to record the access")
    size = 4096 + (1 << 20)
    out = twctl("cluster", "gc", str(b.mount), "--target", str(2 * size), "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["objects"] == 3 and answer["removed_objects"] == 1 and answer["bytes_after"] == 2 * size, answer
    left = block_objects(cluster)
    assert left == {objects["first"], objects["third"]}

    status = twctl("status", str(a.mount))
    assert status.returncode == 0, status.stderr
    line = next(l for l in status.stdout.splitlines() if l.startswith("remote"))
    assert "rados:tw connected" in line and "3 published" in line, line


MOONCAKE = REPO.parent / "shared" / "traces" / "mooncake_synthetic_trace.jsonl"


@pytest.mark.timeout(900)
def test_mooncake_trace_split_across_two_nodes_reaches_the_single_node_hit_ratio(cluster, tmp_path):
    # The router sends alternate requests to A and B; blocks one node computed are found by the other
    # through the pool. The hit ratio must match one node that sees every request (node C, no cluster),
    # with requests overlapping as in serving (8 in flight, twice the benchmark's pace). A and B share
    # with share=sync, so a block is in the pool when its writer's close returns; with async, a request
    # on B that follows A's within the publish lag recomputes (docs/benchmarks.md measures both). Blocks
    # of 4 KiB keep the trace's 43,924 blocks within each node's store, so capacity is the same.
    twctl_bin = str(Path(twfs_binary()).parent / "twctl")
    trace = MOONCAKE
    if not trace.exists():
        # A checkout on its own: a synthetic trace of the same format and size stands in for it.
        trace = tmp_path / "chat-trace.jsonl"
        trace.write_text(subprocess.run([twctl_bin, "trace", "generate", "chat", "--requests", "3993", "--seed", "1"],
                                        check=True, capture_output=True, text=True, timeout=60).stdout)
        print(f"{MOONCAKE} is missing: replaying a synthetic chat trace instead", file=sys.stderr)
    base = tmp_path / "nodes"
    made = []
    try:
        sized = ["--capacity", "1G", "--dram", "64M"]
        a = Node(base, "ma", cluster.conf, sized + ["--share", "sync"])
        made.append(a)
        b = Node(base, "mb", cluster.conf, sized + ["--share", "sync"])
        made.append(b)
        c = Node(base, "mc", cluster.conf, sized + ["--share", "off"])  # one node alone: shares nothing
        made.append(c)
        # --keep: the nodes are thrown away whole, faster than unlinking 44k blocks on each.
        common = ["--block-bytes", "4K", "--speed", "20", "--concurrency", "8", "--lead-ms", "50", "--hints", "on",
                  "--keep", "--json"]
        two = json.loads(subprocess.run([twctl_bin, "replay", str(a.mount), str(trace), "--peer", str(b.mount), *common],
                                        check=True, capture_output=True, text=True, timeout=400).stdout)
        one = json.loads(subprocess.run([twctl_bin, "replay", str(c.mount), str(trace), *common],
                                        check=True, capture_output=True, text=True, timeout=400).stdout)
        ra, rb = a.remote(), b.remote()
        print(f"{trace.name} ({two['seconds']:.0f} s, {one['seconds']:.0f} s): one node {one['prefix_hit_ratio']:.4f}, two nodes {two['prefix_hit_ratio']:.4f} "
              f"({two['prefix_hit_ratio'] / one['prefix_hit_ratio']:.4f} of one; ideal {one['ideal_hit_ratio']:.4f}); "
              f"fetched A {ra['fetched']} B {rb['fetched']}, joined fetches {ra['joined_fetches'] + rb['joined_fetches']}, "
              f"dropped {ra['dropped'] + rb['dropped']}", file=sys.stderr)
        assert one["errors"] == 0 and two["errors"] == 0
        assert two["nodes"] == 2 and one["nodes"] == 1 and one["requests"] == two["requests"] == 3993
        assert one["prefix_hit_ratio"] >= 0.99 * one["ideal_hit_ratio"], one
        assert two["prefix_hit_ratio"] >= 0.995 * one["prefix_hit_ratio"], (one, two)
        assert ra["fetched"] > 0 and rb["fetched"] > 0
        assert ra["dropped"] == 0 and rb["dropped"] == 0
    finally:
        for n in made:
            n.close()


def test_namespace_made_on_a_is_created_on_b_from_the_pool(cluster, nodes, tmp_path):
    a, b = nodes
    ns = f"model-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    out = twctl("ns", "create", str(a.mount), ns, "--mode", "0750", "--ttl", "24h", "--quota", "1G", "--share", "sync", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["share"] == "sync"
    wait_for(lambda: f"twn.{ns}" in cluster.rados("-p", POOL, "ls").stdout.decode().split(), 20, "A to announce the namespace")
    name, data = new_block("ns", 256 * 1024)
    sync_before = a.remote()["sync_published"]
    write_block(canonical(a.mount / ns, name), data)
    assert a.remote()["sync_published"] == sync_before + 1, "share=sync did not publish before close returned"

    # B never heard of the namespace: its first lookup creates it from the pool, and the block follows.
    assert read_block(canonical(b.mount / ns, name)) == data
    listed = {n["name"]: n for n in json.loads(twctl("ns", "list", str(b.mount), "--json").stdout)["namespaces"]}
    got = listed[ns]
    assert (got["mode"], got["ttl_seconds"], got["share"], got["share_set"]) == ("750", 86400, "sync", "sync"), got
    assert got["quota_bytes"] == 0, "a quota sizes one node's disk; it is not copied"
    assert b.remote()["namespaces_imported"] == 1
    assert oct(os.stat(b.mount / ns).st_mode & 0o7777) == "0o750"

    # mkdir of a name another node announced makes it here (no EEXIST from the pool's copy).
    other = ns + "-mk"
    os.mkdir(a.mount / other, 0o755)
    wait_for(lambda: f"twn.{other}" in cluster.rados("-p", POOL, "ls").stdout.decode().split(), 20, "A to announce the second")
    os.mkdir(b.mount / other, 0o700)
    assert oct(os.stat(b.mount / other).st_mode & 0o7777) == "0o700"
    # A name nobody announced stays missing; a damaged descriptor is refused.
    assert not os.path.exists(b.mount / f"never-{ns}")
    bad = tmp_path / "descriptor"
    bad.write_text(f"twn1 bad-{ns} 0 0 755 off 0 default 1\n")  # checksum 1: wrong
    assert cluster.rados("-p", POOL, "put", f"twn.bad-{ns}", str(bad)).returncode == 0
    assert not os.path.exists(b.mount / f"bad-{ns}")
    assert b.remote()["namespaces_imported"] == 1


QUOTA_POOL = "twq"


def pool_full(cluster, pool: str) -> bool:
    dump = json.loads(cluster.ceph("osd", "dump", "--format", "json"))
    flags = next(p for p in dump["pools"] if p["pool_name"] == pool)["flags_names"]
    return "full_quota" in flags.split(",")


def test_pool_at_its_quota_refuses_publishes_and_gc_makes_room(cluster, tmp_path):
    # The pool's quota bounds the shared tier; past it publishes fail at once (EDQUOT, counted), local
    # blocks keep being served, and `twctl cluster gc` makes room again.
    if not cluster.with_manager:
        pytest.fail("pool quotas are enforced from the manager's statistics: run with the manager (TW_CEPH_MGR unset)")
    quota = 8 << 20
    cluster.create_pool(QUOTA_POOL, quota_bytes=quota)
    a = None
    try:
        a = Node(tmp_path, "qa", cluster.conf, pool=QUOTA_POOL)
        os.mkdir(a.mount / "kv", 0o755)
        blocks = {}
        for i in range(12):  # 12 MiB of objects, past the 8 MiB quota
            name, data = new_block(f"quota-{i}", 1 << 20)
            write_block(canonical(a.mount / "kv", name), data)
            blocks[name] = data
        wait_for(lambda: a.remote()["queue_depth"] == 0, 30, "A's queue to drain")
        # The monitor flags the pool from the OSD's statistics, some seconds after the bytes landed.
        wait_for(lambda: pool_full(cluster, QUOTA_POOL), 90, "the pool to be flagged full_quota", interval=1)
        before = a.remote()
        name, data = new_block("past-quota", 1 << 20)
        t0 = time.monotonic()
        write_block(canonical(a.mount / "kv", name), data)
        assert time.monotonic() - t0 < 1.0, "a commit waited for a full pool"
        blocks[name] = data
        wait_for(lambda: a.remote()["publish_failures"] > before["publish_failures"], 2 * CLUSTER_TIMEOUT_S + 5,
                 "the publish past the quota to fail")
        after = a.remote()
        assert after["published"] == before["published"]
        assert "quota" in (after["last_error"] or "").lower(), after["last_error"]
        for n, d in blocks.items():
            assert read_block(canonical(a.mount / "kv", n)) == d
        assert a.proc.poll() is None

        out = twctl("cluster", "gc", str(a.mount), "--target", str(quota // 2), "--json")
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["error"] is None and answer["removed_objects"] > 0 and answer["bytes_after"] <= quota // 2, answer
        wait_for(lambda: not pool_full(cluster, QUOTA_POOL), 90, "the full_quota flag to clear", interval=1)
        name, data = new_block("after-gc", 1 << 20)
        published = a.remote()["published"]
        publish_on(a, name, data)
        assert a.remote()["published"] == published + 1
    finally:
        if a is not None:
            a.close()
        # Later tests (and wait_clean's probe) write to every pool.
        cluster.ceph("osd", "pool", "set-quota", QUOTA_POOL, "max_bytes", "0")


def test_prefetch_hints_pull_blocks_from_the_pool(cluster, nodes):
    # B has never seen the block; a hint alone (no lookup) brings it from the pool into B's store and
    # DRAM tier, so the engine's later read is a local DRAM hit.
    a, b = nodes
    name, data = new_block("hint", 512 * 1024)
    publish_on(a, name, data)
    fetched = b.remote()["fetched"]
    with open(b.mount / ".tw" / "prefetch", "w") as f:
        f.write(f"kv {name}\n")
    wait_for(lambda: b.status()["prefetch"]["loaded_from_cluster"] >= 1, 20, "B to pull the hinted block")
    assert b.remote()["fetched"] == fetched + 1
    assert os.getxattr(canonical(b.mount / "kv", name), "user.tw.tier") == b"dram"
    assert read_block(canonical(b.mount / "kv", name)) == data


def test_a_read_while_a_hint_pulls_the_same_block_gets_the_block(cluster, nodes):
    # The engine's read often arrives while the prefetcher is still pulling the hinted block from the
    # pool; it must wait for that pull (single flight), not answer ENOENT because the store refuses a
    # second writer of a name in flight. Large blocks keep the pull in flight long enough to overlap.
    a, b = nodes
    blocks = [new_block(f"race-{i}", 8 << 20) for i in range(4)]
    for name, data in blocks:
        publish_on(a, name, data)
    with open(b.mount / ".tw" / "prefetch", "w") as f:
        f.write("".join(f"kv {name}\n" for name, _ in blocks))
    for name, data in blocks:
        assert read_block(canonical(b.mount / "kv", name)) == data
    r = b.remote()
    assert r["fetched"] == len(blocks) and r["misses"] == 0, r
    print(f"joined fetches: {r['joined_fetches']}", file=sys.stderr)


def test_large_block_is_fetched_in_ranges_and_its_copy_survives_kill_9(cluster, nodes):
    # 25 MiB and an odd tail: the first 4 MiB come with the object's size, the rest in 22 ranges, sixteen
    # in flight. B's copy is a replica, written through the page cache and not waited on: a kill -9 of
    # B loses nothing (the kernel keeps the page cache), so restarted on its store B serves the block
    # with the pool's object gone.
    a, b = nodes
    name, data = new_block("ranges", (25 << 20) + 4321)
    objects_before = block_objects(cluster)
    publish_on(a, name, data)
    (obj,) = block_objects(cluster) - objects_before
    assert read_block(canonical(b.mount / "kv", name)) == data
    r = b.remote()
    assert r["fetched"] == 1 and r["corrupt"] == 0, r
    assert all(r[k]["max"] > 0 for k in ("cluster_read_ms", "fetch_verify_ms", "fetch_store_ms", "fetch_tier_ms")), r
    assert cluster.rados("-p", POOL, "rm", obj).returncode == 0
    b.proc.kill()
    b.proc.wait(timeout=10)
    lazy_unmount(b.mount)
    restarted = Node(b.base.parent, "b", cluster.conf)
    try:
        assert read_block(canonical(restarted.mount / "kv", name)) == data
        assert restarted.remote()["fetched"] == 0
    finally:
        restarted.close()


def test_a_fetched_block_only_its_owner_may_read_stays_out_of_the_shared_tier(cluster, nodes):
    # B's DRAM tier is mapped by everyone who may search the namespace on B: the block the pool brings
    # is stored and served through the mount, but not put where they could read it.
    a, b = nodes
    name, data = new_block("private", 1 << 20)
    before = a.remote()["published"]
    fd = os.open(canonical(a.mount / "kv", name), os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, data)
    os.close(fd)
    wait_for(lambda: a.remote()["published"] > before, 20, f"{name} to be published")
    path = canonical(b.mount / "kv", name)
    assert read_block(path) == data
    assert b.remote()["fetched"] == 1
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.getxattr(path, "user.tw.tier") != b"dram"
