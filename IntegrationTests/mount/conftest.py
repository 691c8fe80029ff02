"""Fixtures for the twfs black-box integration tests.

Each test gets its own directories (mount point, store, log) and a time limit; the daemon is lazily
unmounted, SIGKILLed and reaped after the test, pass or fail, and its log is printed when a test fails.

Environment:
  TWFS_BIN              the daemon to test (default: <repo>/.build/release/twfs)
  TWFS_REQUIRE_BINARY=1 fail instead of skipping when the daemon binary is missing
  TWFS_KEEP=1           keep the temporary directories (store, log) after the tests
  TW_STRESS_SECONDS     length of the stress test (default 60)
  TWCTL_BIN             the twctl to test (default: twctl beside TWFS_BIN, else <repo>/.build/release/twctl)
  TW_REL_*              knobs of the reliability tests (test_reliability_*.py; see docs/reliability.md)
"""

from __future__ import annotations

import json
import os
import contextlib
import glob
import shutil
import signal
import subprocess
import sys
import importlib.util
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The Python client under test is this checkout's, not whatever copy is installed, with its C lookup built
# in place as pip install would build it (clients/python/tests/native_build.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
_native_spec = importlib.util.spec_from_file_location(
    "tw_native_build", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python",
                                    "tests", "native_build.py"))
_native_build = importlib.util.module_from_spec(_native_spec)
_native_spec.loader.exec_module(_native_build)
_native_error = _native_build.build_in_place()
if _native_error:   # for test_dram_tier's message (the client then reads the tier in Python)
    os.environ["TW_MAPCOPY_BUILD_ERROR"] = _native_error.splitlines()[0][:300]

from twfs_util import READY_TIMEOUT_S, lazy_unmount, mounts_at, proc_mounts_types  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 20.0
LOG_TAIL_CHARS = 30000


def twfs_binary() -> Path:
    env = os.environ.get("TWFS_BIN")
    return Path(env) if env else REPO / ".build" / "release" / "twfs"


def pytest_configure(config):
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): per-test time limit (needs pytest-timeout)")
    config.addinivalue_line("markers", "stress: long-running stress test (deselect with -k 'not stress')")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


# ------------------------------------------------------------------------------------------ warehouse

class Warehouse:
    """One twfs daemon under test: its mount point, store directory, log and process.

    .mount, .store (Path), .proc (Popen of the current daemon), .log_path.
    """

    def __init__(self, base: Path, capacity: str = "2G", sync: str = "batch", extra: list[str] | None = None):
        self.base = base
        self.mount = base / "mnt"
        self.store = base / "store"
        self.log_path = base / "twfs.log"
        self.capacity = capacity
        self.sync = sync
        self.extra = list(extra or [])
        self.proc: subprocess.Popen | None = None
        self.all_procs: list[subprocess.Popen] = []
        self.extra_mounts: list[Path] = []
        self.expect_running = False
        self.mount.mkdir(mode=0o755)
        self.store.mkdir(mode=0o700)

    # -- process control

    def command(self, mount: Path | None = None, store: Path | None = None) -> list[str]:
        return [os.fspath(twfs_binary()), os.fspath(mount or self.mount), "--store", os.fspath(store or self.store),
                "--capacity", self.capacity, "--sync", self.sync, "-f", *self.extra]

    def spawn(self, cmd: list[str], log_name: str | None = None) -> subprocess.Popen:
        """Start a daemon process with output appended to a log file (the main log by default)."""
        log_path = self.base / log_name if log_name else self.log_path
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.all_procs.append(proc)
        return proc

    def start(self, wait: bool = True, timeout: float = READY_TIMEOUT_S) -> "Warehouse":
        self.proc = self.spawn(self.command())
        self.expect_running = True
        if wait:
            self.wait_ready(timeout)
        return self

    def mounted_and_serving(self) -> bool:
        """A fuse.twfs mount answers at the mount point (not a dead mount, not the bare directory)."""
        if "fuse.twfs" not in proc_mounts_types(self.mount):
            return False
        try:
            # A dead daemon's mount answers ENOTCONN; the bare directory has its parent's device.
            if os.stat(self.mount).st_dev == os.stat(self.mount.parent).st_dev:
                return False
            os.statvfs(self.mount)
        except OSError:
            return False
        return True

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.expect_running = False
                raise AssertionError(f"twfs exited with {rc} before mounting; log:\n{self.log_tail()}")
            if self.mounted_and_serving():
                return
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"twfs did not mount {self.mount} (type fuse.twfs) within {timeout}s; "
                    f"mounts there: {mounts_at(self.mount)}; log:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Signal the daemon and wait for it to exit; return its exit code (-signal if killed)."""
        assert self.proc is not None
        self.expect_running = False
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"twfs did not exit within {timeout}s of signal {sig}; log:\n{self.log_tail()}")

    def kill(self, unmount: bool = True) -> None:
        """SIGKILL the daemon (a crash); optionally detach the now-dead mount."""
        self.stop(signal.SIGKILL, timeout=10)
        if unmount:
            lazy_unmount(self.mount)

    def restart(self, sync: str | None = None, kill: bool = False, extra: list[str] | None = None,
                capacity: str | None = None) -> "Warehouse":
        """Stop the daemon (SIGTERM, or SIGKILL + lazy unmount with kill=True) and start it on the same store."""
        if kill:
            self.kill(unmount=True)
        else:
            rc = self.stop(signal.SIGTERM)
            assert rc == 0, f"twfs exited with {rc} on SIGTERM; log:\n{self.log_tail()}"
            lazy_unmount(self.mount)  # no-op after a clean exit
        if sync is not None:
            self.sync = sync
        if extra is not None:
            self.extra = list(extra)
        if capacity is not None:
            self.capacity = capacity
        return self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- helpers for tests

    def namespace(self, name: str = "ns", mode: int = 0o755) -> Path:
        path = self.mount / name
        os.mkdir(path, mode)
        return path

    def status(self) -> dict:
        with open(self.mount / ".tw" / "status", "rb") as f:
            return json.loads(f.read())

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        chunks = []
        for p in sorted(self.base.glob("*.log")):
            try:
                text = p.read_text(errors="replace")
            except OSError as e:
                text = f"<cannot read: {e}>"
            chunks.append(f"----- {p.name} -----\n{text[-chars:]}")
        return "\n".join(chunks)

    def cleanup(self) -> list[str]:
        """Unmount, kill and reap every daemon this warehouse started; return problems found."""
        problems = []
        if self.expect_running and self.proc is not None and self.proc.poll() is not None:
            problems.append(f"twfs exited unexpectedly during the test with code {self.proc.returncode}")
        for mnt in [self.mount, *self.extra_mounts]:
            try:
                lazy_unmount(mnt)
            except Exception as e:  # keep going: the daemon must still be killed
                problems.append(f"unmount {mnt}: {e!r}")
        for p in self.all_procs:
            # Unmounted, the daemon flushes and exits on its own (removing its DRAM tier file); give it
            # a moment before the SIGKILL that guarantees it is gone.
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append(f"twfs pid {p.pid} did not die after SIGKILL")
        # A killed daemon leaves its runtime directory (and, as root, its private tmpfs mounted there):
        # the next daemon would clean it up; this test's go now.
        tag = os.fspath(self.mount).strip("/").replace("/", "-")
        for leftover in glob.glob(f"/run/tokenwarehouse/{tag}-*"):
            subprocess.run(["umount", "-l", os.path.join(leftover, "memory")], capture_output=True)
            shutil.rmtree(leftover, ignore_errors=True)
        return problems


def _test_failed(item) -> bool:
    return any(getattr(getattr(item, "rep_" + w, None), "failed", False) for w in ("setup", "call"))


@contextlib.contextmanager
def warehouse_pool(request, prefix: str = "twfs-it-", default_extra: tuple = ()):
    """Yields make(*extra_args, capacity='2G', sync='batch', start=True) -> Warehouse; every warehouse made
    is unmounted, killed and reaped when the block ends, pass or fail, and its log printed on failure.
    Shared by the mount, file-tier and engine tests (their conftests load this file)."""
    binary = twfs_binary()
    if os.geteuid() != 0:
        pytest.skip("twfs integration tests run as root")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing")
    if not os.access(binary, os.X_OK):
        msg = f"twfs binary not found at {binary} (build with `swift build -c release` or set TWFS_BIN)"
        if os.environ.get("TWFS_REQUIRE_BINARY") == "1":
            pytest.fail(msg)
        pytest.skip(msg)

    made: list[Warehouse] = []

    def make(*extra: str, capacity: str = "2G", sync: str = "batch", start: bool = True) -> Warehouse:
        base = Path(tempfile.mkdtemp(prefix=prefix))
        os.chmod(base, 0o755)  # other users must reach the mount point (permission tests)
        wh = Warehouse(base, capacity=capacity, sync=sync, extra=[*default_extra, *extra])
        made.append(wh)
        if start:
            wh.start()
        return wh

    try:
        yield make
    finally:
        problems = []
        for wh in made:
            problems += wh.cleanup()
        failed = _test_failed(request.node)
        if failed or problems:
            for wh in made:
                print(f"\n===== twfs log ({wh.base}) =====\n{wh.log_tail()}")
        for wh in made:
            if os.environ.get("TWFS_KEEP") == "1":
                print(f"kept {wh.base}")
            elif not mounts_at(wh.mount):
                shutil.rmtree(wh.base, ignore_errors=True)
        if problems and not failed:
            pytest.fail("; ".join(problems))


@pytest.fixture
def warehouse_factory(request):
    """Returns make(*extra_args, capacity='2G', sync='batch', start=True) -> Warehouse.

    Every warehouse made is unmounted, killed and reaped after the test, pass or fail.
    """
    with warehouse_pool(request) as make:
        yield make

@pytest.fixture
def warehouse(warehouse_factory) -> Warehouse:
    """A running twfs with --capacity 2G --sync batch on fresh directories."""
    return warehouse_factory()


@pytest.fixture
def ns(warehouse) -> Path:
    """A namespace `ns` (mode 0755) in a fresh warehouse."""
    return warehouse.namespace("ns")
