#!/usr/bin/env bash
# The cluster-tier tests (issue 9, docs/cluster-tier.md): builds twfs, starts a throwaway single-host Ceph
# cluster (IntegrationTests/ceph/ceph_cluster.py: one monitor, one manager, one OSD on a sparse file, pool size 1) and
# runs IntegrationTests/ceph against two twfs daemons as two nodes. Needs root, /dev/fuse and the Ceph packages
# (Tools/install-deps.sh). 11 tests, about 3.5 min here after the build, most of it the Mooncake trace
# replayed on two nodes and on one (the pool-quota test needs the manager: keep TW_CEPH_MGR unset).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TWFS_BIN:-}" ]; then
  swift build -c release --product twfs
  export TWFS_BIN="$PWD/.build/release/twfs"
fi
exec python3 -m pytest -q -p no:cacheprovider IntegrationTests/ceph "$@"
