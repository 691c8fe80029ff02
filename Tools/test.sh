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
  # Two nodes sharing blocks through a throwaway single-host Ceph cluster (issue 9, docs/cluster-tier.md).
  TWFS_BIN="$PWD/.build/release/twfs" Tools/ceph_test.sh
else
  echo "integration tests need root and /dev/fuse; skipped here (CI runs them as root)" >&2
  exit 1
fi
