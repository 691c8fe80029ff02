#!/usr/bin/env bash
# The test command of the README: installs what the tests need on a fresh Debian machine, builds,
# runs the Swift unit tests, then the integration tests on real FUSE mounts (needs root and /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."
Tools/install-deps.sh
swift build -c release --product twfs
swift build -c release --product twctl
swift test
# libFuzzer on the record codec and the name parsers, 30 s each, with their ASan build (docs/reliability.md).
Tools/fuzz/run.sh 30
python3 -m pytest -q -p no:cacheprovider clients/python/tests
if [ -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then
  python3 -m pytest -q -p no:cacheprovider IntegrationTests/mount "$@"
  # The engines: their own file tiers (vLLM's fs offload tier, SGLang's HiCacheFile, LMCache's disk
  # backends) unmodified on a mount, then a real vLLM engine with our connector and SGLang's storage
  # interface with our backend (docs/engine.md, docs/compat.md). Their venv is built once (~4 min, 3.7 GB).
  VLLM_PY=$(Tools/vllm-venv.sh | tail -1)
  TWFS_BIN="$PWD/.build/release/twfs" TW_REQUIRE_VLLM=1 python3 -m pytest -q -p no:cacheprovider IntegrationTests/filetiers
  TWFS_BIN="$PWD/.build/release/twfs" TW_REQUIRE_VLLM=1 "$VLLM_PY" -m pytest -q -p no:cacheprovider IntegrationTests/engines
  # Two nodes sharing blocks through a throwaway single-host Ceph cluster (docs/cluster-tier.md).
  TWFS_BIN="$PWD/.build/release/twfs" Tools/ceph_test.sh
else
  echo "integration tests need root and /dev/fuse; skipped here (CI runs them as root)" >&2
  exit 1
fi
