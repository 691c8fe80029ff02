"""A throwaway single-host Ceph cluster for the cluster-tier tests (issue 9).

One monitor, one manager (TW_CEPH_MGR=0 leaves it out) and one OSD on a sparse bluestore file, pool
size 1, authentication off, everything under one directory. Every daemon runs in the foreground as a
child of this process and is stopped by its pid (SIGTERM, then SIGKILL); nothing is left behind.

    cluster = CephCluster(Path("/tmp/x")); cluster.start(); cluster.create_pool("tw")
    ... cluster.conf ...
    cluster.stop_osd(); cluster.start_osd(); cluster.close()

Run by hand, it starts a cluster, prints its ceph.conf and waits for Ctrl-C:

    python3 IntegrationTests/ceph/ceph_cluster.py /tmp/tw-ceph
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

# The OSD's file: sparse, so it costs only what is written. Test data stays well under it (an OSD whose
# file fills up aborts, and then only the client timeouts stop the clients from hanging).
OSD_SIZE = 4 << 30
# Each cluster call of the tools below, and of the clients, gives up after this.
CLIENT_TIMEOUT_S = 5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CephCluster:
    def __init__(self, base: Path, with_manager: bool | None = None):
        self.base = Path(base)
        self.with_manager = os.environ.get("TW_CEPH_MGR", "1") != "0" if with_manager is None else with_manager
        self.conf = self.base / "ceph.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.osd_uuid = str(uuid.uuid4())
        self.port = free_port()

    # -- commands

    def env(self) -> dict:
        return dict(os.environ, CEPH_CONF=str(self.conf))

    def ceph(self, *args: str, timeout: float = 30) -> str:
        out = subprocess.run(["ceph", "--conf", str(self.conf), "--connect-timeout", str(CLIENT_TIMEOUT_S), *args],
                             capture_output=True, text=True, timeout=timeout, env=self.env())
        if out.returncode != 0:
            raise RuntimeError(f"ceph {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def rados(self, *args: str, input: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["rados", "--conf", str(self.conf), *args], input=input, capture_output=True,
                              timeout=timeout, env=self.env())

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.base / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=self.env(), start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _stop(self, name: str, timeout: float = 10) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    # -- life cycle

    def start(self, timeout: float = 60) -> "CephCluster":
        t0 = time.monotonic()
        b = self.base
        for d in ("mon", "osd0", "mgr", "run", "log"):
            (b / d).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        self.conf.write_text(f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{self.port}
ms bind msgr1 = false
ms bind ipv6 = false
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
run dir = {b}/run
log file = {b}/log/$name.log
log to stderr = false
err to stderr = true
keyring = {b}/keyring
mon data = {b}/mon
osd data = {b}/osd$id
mgr data = {b}/mgr
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
rados osd op timeout = {CLIENT_TIMEOUT_S}
rados mon op timeout = {CLIENT_TIMEOUT_S}
client mount timeout = {CLIENT_TIMEOUT_S}

[mon]
mon initial members = a
admin socket = {b}/run/$name.asok

[mgr]
admin socket = {b}/run/$name.asok

[osd]
admin socket = {b}/run/$name.asok
osd objectstore = bluestore
bluestore block create = true
bluestore block size = {OSD_SIZE}
bluestore fsck on mkfs = false
bluestore fsck on mount = false
osd memory target = 939524096
osd op num threads per shard = 1
osd op num shards = 1
""")
        keyring = b / "keyring"
        subprocess.run(["ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"],
                       check=True, capture_output=True)
        monmap = b / "monmap"
        subprocess.run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{self.port}]", str(monmap)],
                       check=True, capture_output=True)
        subprocess.run(["ceph-mon", "--conf", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(monmap), "--keyring", str(keyring)],
                       check=True, capture_output=True, env=self.env())
        self._spawn("mon.a", ["ceph-mon", "--conf", str(self.conf), "-f", "-i", "a"])
        self._wait(lambda: self.ceph("mon", "stat", timeout=10), timeout, "the monitor to answer")
        if self.with_manager:
            self._spawn("mgr.x", ["ceph-mgr", "--conf", str(self.conf), "-f", "-i", "x"])
        osd_id = self.ceph("osd", "new", self.osd_uuid).strip()
        assert osd_id == "0", f"expected osd id 0, got {osd_id!r}"
        subprocess.run(["ceph-osd", "--conf", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", self.osd_uuid],
                       check=True, capture_output=True, env=self.env())
        self.start_osd(wait=False)
        self._wait(lambda: "1 up" in self.ceph("osd", "stat", timeout=10) or None, timeout, "the OSD to come up")
        self.started_seconds = time.monotonic() - t0
        return self

    def create_pool(self, name: str, pg_num: int = 8, quota_bytes: int | None = None, timeout: float = 60) -> None:
        self.ceph("osd", "pool", "create", name, str(pg_num), str(pg_num))
        self.ceph("osd", "pool", "set", name, "size", "1", "--yes-i-really-mean-it")
        self.ceph("osd", "pool", "application", "enable", name, "twfs")
        if quota_bytes:
            self.ceph("osd", "pool", "set-quota", name, "max_bytes", str(quota_bytes))
        self.wait_clean(timeout)

    def wait_clean(self, timeout: float = 60) -> None:
        """Until every placement group is active+clean (with a manager), or a probe object goes in and
        out of the pool (without one: placement-group states are a manager's report)."""
        if self.with_manager:
            def clean():
                stat = self.ceph("pg", "stat", timeout=10)
                # "8 pgs: 8 active+clean; ..." once every group is clean.
                head = stat.split(";")[0]
                total = head.split(" pgs")[0].strip()
                return total.isdigit() and int(total) > 0 and f"{total} active+clean" in head or None
            self._wait(clean, timeout, "all placement groups to be active+clean")
        for pool in self.pools():
            self._wait(lambda: self.rados("-p", pool, "put", "tw-probe", "/dev/null", timeout=10).returncode == 0 or None,
                       timeout, f"pool {pool} to take writes")
            self.rados("-p", pool, "rm", "tw-probe")

    def pools(self) -> list[str]:
        return [p for p in self.ceph("osd", "pool", "ls").split() if p]

    def start_osd(self, wait: bool = True, timeout: float = 60) -> None:
        self._spawn("osd.0", ["ceph-osd", "--conf", str(self.conf), "-f", "-i", "0"])
        if wait:
            self._wait(lambda: "1 up" in self.ceph("osd", "stat", timeout=10) or None, timeout, "the OSD to come up")
            self.wait_clean(timeout)

    def stop_osd(self) -> None:
        """Stops the OSD (SIGKILL: as a crash) and tells the monitor, so clients see it down at once."""
        proc = self.procs.pop("osd.0", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self.ceph("osd", "down", "0")

    def close(self) -> None:
        for name in ["osd.0", "mgr.x", "mon.a"]:
            self._stop(name)

    def _wait(self, probe, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                value = probe()
                if value:
                    return value
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                last = e
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} while waiting for {what}; see {self.base}/log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout}s waiting for {what}: {last}; see {self.base}/log")
            time.sleep(0.2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    base = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tw-ceph")
    base.mkdir(parents=True, exist_ok=True)
    cluster = CephCluster(base)
    # Blocked, so sigwait takes them and the daemons are stopped below.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        cluster.start()
        cluster.create_pool("tw")
        print(f"cluster ready in {cluster.started_seconds:.1f} s; conf {cluster.conf}", flush=True)
        if "--wait" in sys.argv:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.close()
