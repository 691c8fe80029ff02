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
sys.path.insert(0, str(REPO / "tests" / "integration"))

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

    def __init__(self, base: Path, name: str, conf: Path, extra: list[str] | None = None):
        self.base = base / name
        self.mount = self.base / "mnt"
        self.store = self.base / "store"
        self.log = self.base / "twfs.log"
        self.mount.mkdir(parents=True)
        cmd = [twfs_binary(), str(self.mount), "--store", str(self.store), "--capacity", "256M", "--dram", "64M",
               "--dram-name", f"tw-ceph-test-{os.getpid()}-{name}", "--cluster", str(conf), "--pool", POOL,
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


def read_errno(path: str) -> tuple[int | None, bytes | None]:
    try:
        return None, read_block(path)
    except OSError as e:
        return e.errno, None


# ---------------------------------------------------------------------------------------------- tests

def test_block_written_on_a_is_read_on_b_then_served_from_b(cluster, nodes):
    a, b = nodes
    name, data = new_block("a-to-b", 3 << 20)
    objects_before = set(cluster.rados("-p", POOL, "ls").stdout.decode().split())
    publish_on(a, name, data)
    new_objects = set(cluster.rados("-p", POOL, "ls").stdout.decode().split()) - objects_before
    assert len(new_objects) == 1, f"expected one new object in the pool, found {new_objects}"

    assert read_block(canonical(b.mount / "kv", name)) == data
    rb = b.remote()
    assert rb["fetched"] == 1 and rb["corrupt"] == 0, rb
    assert b.status()["blocks"] == 1

    # Served from B's own tiers now: gone from the pool, still read byte for byte, nothing fetched.
    assert cluster.rados("-p", POOL, "rm", new_objects.pop()).returncode == 0
    assert read_block(canonical(b.mount / "kv", name)) == data
    assert b.remote()["fetched"] == 1
    # A name neither node nor the pool has is a miss on B, answered at once and then from the
    # negative cache.
    missing, _ = new_block("missing", 1)
    t0 = time.monotonic()
    assert read_errno(canonical(b.mount / "kv", missing))[0] == errno.ENOENT
    assert read_errno(canonical(b.mount / "kv", missing))[0] == errno.ENOENT
    assert time.monotonic() - t0 < 1.0
    assert b.remote()["misses"] >= 1 and b.remote()["negative_hits"] >= 1


@pytest.mark.parametrize("damage", ["flip-payload-byte", "flip-header-byte", "truncate"])
def test_corrupted_object_is_rejected(cluster, nodes, damage, tmp_path):
    a, b = nodes
    name, data = new_block("corrupt-" + damage, 1 << 20)
    objects_before = set(cluster.rados("-p", POOL, "ls").stdout.decode().split())
    publish_on(a, name, data)
    (obj,) = set(cluster.rados("-p", POOL, "ls").stdout.decode().split()) - objects_before
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
    wait_for(lambda: (lambda r: r["published"] == 3 and r["queue_depth"] == 0)(a.remote()), 10, "A's queue to drain")


def twctl(*args: str) -> subprocess.CompletedProcess:
    binary = os.environ.get("TWCTL_BIN") or str(Path(twfs_binary()).with_name("twctl"))
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_cluster_gc_removes_least_recently_used_and_status_shows_the_tier(cluster, nodes):
    a, b = nodes
    empty = twctl("cluster", "gc", str(a.mount), "--target", "0", "--json")
    assert empty.returncode == 0, empty.stderr
    assert cluster.rados("-p", POOL, "ls").stdout.split() == []
    objects = {}
    blocks = {}
    for tag in ("first", "second", "third"):
        before = set(cluster.rados("-p", POOL, "ls").stdout.decode().split())
        name, data = new_block("gc-" + tag, 1 << 20)
        publish_on(a, name, data)
        (objects[tag],) = set(cluster.rados("-p", POOL, "ls").stdout.decode().split()) - before
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
    left = set(cluster.rados("-p", POOL, "ls").stdout.decode().split())
    assert left == {objects["first"], objects["third"]}

    status = twctl("status", str(a.mount))
    assert status.returncode == 0, status.stderr
    line = next(l for l in status.stdout.splitlines() if l.startswith("remote"))
    assert "rados:tw connected" in line and "3 published" in line, line


def test_a_trace_split_across_two_nodes_reaches_the_single_node_hit_ratio(cluster, nodes, tmp_path):
    # The router sends alternate requests to A and B; blocks one node computed are found by the other
    # through the pool. The hit ratio must match one node that sees every request.
    a, b = nodes
    twctl = str(Path(twfs_binary()).parent / "twctl")
    trace = tmp_path / "chat.jsonl"
    trace.write_text(subprocess.run([twctl, "trace", "generate", "chat", "--requests", "200", "--seed", "11"],
                                    check=True, capture_output=True, text=True).stdout)
    common = ["--block-bytes", "16K", "--speed", "5", "--lead-ms", "5", "--hints", "on", "--json"]
    one = json.loads(subprocess.run([twctl, "replay", str(a.mount), str(trace), *common], check=True,
                                    capture_output=True, text=True, timeout=240).stdout)
    two = json.loads(subprocess.run([twctl, "replay", str(a.mount), str(trace), "--peer", str(b.mount), *common],
                                    check=True, capture_output=True, text=True, timeout=240).stdout)
    print(f"one node {one['prefix_hit_ratio']:.3f}, two nodes {two['prefix_hit_ratio']:.3f} "
          f"(ideal {one['ideal_hit_ratio']:.3f}); B fetched {b.remote()['fetched']}", file=sys.stderr)
    assert one["errors"] == 0 and two["errors"] == 0
    assert two["nodes"] == 2 and one["nodes"] == 1
    assert one["prefix_hit_ratio"] >= 0.99 * one["ideal_hit_ratio"]
    assert two["prefix_hit_ratio"] >= 0.99 * one["prefix_hit_ratio"], (one, two)
    assert b.remote()["fetched"] > 0


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
