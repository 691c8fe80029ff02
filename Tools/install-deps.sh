#!/usr/bin/env bash
# Installs the system and Python packages the project builds and tests with (Debian 12). Idempotent.
set -euo pipefail
need=()
# rsync, tar, perl and a C compiler: the tests run them on the mount (IntegrationTests/mount/test_tools.py).
for p in libfuse3-dev fuse3 liblz4-dev libxxhash-dev pkg-config fio attr rsync tar perl gcc util-linux; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
# The cluster tier (Sources/RadosTier) links librados; IntegrationTests/ceph starts a throwaway cluster with the daemons
# (Ceph 16.2.15 here: about 55 MB, 25 s). Without recommends: they would pull a whole Ceph install.
ceph=()
for p in librados-dev ceph-mon ceph-osd ceph-mgr ceph-common; do
  dpkg -s "$p" >/dev/null 2>&1 || ceph+=("$p")
done
if [ ${#ceph[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${ceph[@]}"
fi
python3 - <<'PY' || python3 -m pip install -q --disable-pip-version-check pytest pytest-timeout numpy safetensors xxhash
import importlib, sys
for m in ("pytest", "pytest_timeout", "numpy", "safetensors", "xxhash"):
    importlib.import_module(m)
PY
# The engine demo and its tests (Tools/engine_demo.py, IntegrationTests/mount/test_engine.py): PyTorch (its
# PyPI wheel brings CUDA libraries, ~2.5 GB, and runs on CPU), transformers, matplotlib for the plot.
python3 -c "import torch, transformers, matplotlib" 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check torch transformers matplotlib
# The Python client (clients/python), installed from this checkout.
python3 -m pip install -q --disable-pip-version-check --no-deps --force-reinstall ./clients/python
