"""Fixtures for the engine tests: real vLLM processes on real twfs mounts (docs/engine.md).

Run inside the venv that Tools/vllm-venv.sh builds (vLLM, torch's CPU wheel, SGLang's package):

    TWFS_BIN=.build/release/twfs "$(Tools/vllm-venv.sh | tail -1)" -m pytest -q IntegrationTests/engines

Each test gets its own warehouse (the mount tests' Warehouse: own directories, a time limit, unmount and
kill guaranteed). Engines run as separate processes (engine_run.py) with VLLM_ENABLE_V1_MULTIPROCESSING=0
and PYTHONPATH pointing at this checkout's client, so the code under test is the repository's.

Environment: TWFS_BIN (default <repo>/.build/release/twfs), TW_REQUIRE_VLLM=1 (fail instead of skipping
when vLLM is not importable), TWFS_KEEP=1 (keep the directories).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLIENT = REPO / "clients" / "python"
sys.path.insert(0, os.fspath(HERE))
sys.path.insert(0, os.fspath(CLIENT))

# The mount tests' harness (class Warehouse), loaded under its own name so the two conftests do not clash.
_spec = importlib.util.spec_from_file_location("tw_mount_harness", REPO / "IntegrationTests" / "mount" / "conftest.py")
mount_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mount_harness)
Warehouse = mount_harness.Warehouse
twfs_binary = mount_harness.twfs_binary

from engine_util import engine_env, run_engine_process  # noqa: E402


# The mount tests' hooks: the timeout marker, and each phase's report kept on the item for the fixtures.
pytest_configure = mount_harness.pytest_configure
pytest_runtest_makereport = mount_harness.pytest_runtest_makereport
_failed = mount_harness._test_failed


@pytest.fixture(scope="session")
def engine_model(tmp_path_factory) -> str:
    """A 4-layer Llama (hidden 256, 4 heads, 2 KV heads, vocabulary 1024), random weights, seed 1234."""
    out = tmp_path_factory.mktemp("model") / "tiny-llama"
    proc = subprocess.run([sys.executable, os.fspath(HERE / "tiny_model.py"), os.fspath(out)], env=engine_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "config.json").exists()
    return os.fspath(out)


@pytest.fixture
def run_engine(tmp_path):
    """run_engine(job: dict, timeout=300) -> dict: one engine process (engine_run.py), its JSON output."""
    return lambda job, timeout=300: run_engine_process(job, tmp_path, timeout)


@pytest.fixture
def warehouse_factory(request):
    """make(*extra_args, capacity='2G') -> a started Warehouse; unmounted and killed after the test."""
    with mount_harness.warehouse_pool(request, "twfs-engine-", ()) as make:
        yield make


@pytest.fixture
def warehouse(warehouse_factory):
    return warehouse_factory()
