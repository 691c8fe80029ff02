#!/usr/bin/env bash
# The README's first command: build twfs, mount a warehouse with its embedded defaults, write a KV
# block through the mount, read it back, replay a synthetic agentic workload against it (prefix hits
# by tier, prefetch), and show what the warehouse reports. Unmounts at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
Tools/install-deps.sh
swift build -c release --product twfs
swift build -c release --product twctl
MNT=${TW_DEMO_MOUNT:-/tmp/tokenwarehouse-demo}
mkdir -p "$MNT"
cleanup() { fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; }
trap cleanup EXIT
echo "\$ twfs $MNT            # no --store: the per-user default store"
.build/release/twfs "$MNT"
NS=demo-llama-8b@tp0
mkdir -p "$MNT/$NS"
HASH=$(head -c 64 /dev/urandom | sha256sum | cut -c1-32)
PARENT=$(head -c 64 /dev/urandom | sha256sum | cut -c1-32)
BLOCK="$MNT/$NS/${HASH:0:2}/$HASH"
SRC=$(mktemp)
head -c $((2 * 1024 * 1024)) /dev/urandom > "$SRC"
echo "\$ write a 2 MiB KV block to $BLOCK (user.tw.parent=$PARENT)"
python3 - "$SRC" "$BLOCK" "$PARENT" <<'PY'
import os, sys
src, dst, parent = sys.argv[1:]
fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
os.setxattr(fd, "user.tw.parent", parent.encode())
os.write(fd, open(src, "rb").read())
os.close(fd)  # the block is committed atomically here
PY
echo "\$ cmp source block-file"; cmp "$SRC" "$BLOCK" && echo "read back: identical (2097152 bytes)"
echo "\$ stat"; stat -c '%n %s bytes mode %a' "$BLOCK"
echo "\$ xattrs"; getfattr -d -m 'user.tw' "$BLOCK" | sed 1d
echo "\$ writing it again with O_EXCL:"; python3 -c "import os,sys
try: os.open(sys.argv[1], os.O_CREAT|os.O_EXCL|os.O_WRONLY)
except FileExistsError: print('EEXIST: an engine can skip the duplicate upload')" "$BLOCK"
echo "\$ read it from the shared-memory DRAM tier with the Python client (no system call per block)"
python3 - "$MNT" "$NS" "$HASH" "$SRC" <<'PY'
import sys
from tokenwarehouse import Client
mount, ns, name, src = sys.argv[1:]
with Client(mount) as c:
    data = c.get(ns, name)
    print(f"Client.get: {len(data)} bytes, identical: {data == open(src, 'rb').read()}, stats: {c.stats}")
PY
echo "\$ twctl replay $MNT --synthetic agentic --requests 300   # an engine's traffic: hints, prefix reads, writes"
.build/release/twctl replay "$MNT" --synthetic agentic --requests 300 --block-bytes 64K --lead-ms 10
echo "\$ df -h $MNT"; df -h "$MNT"
echo "\$ twctl status $MNT"; .build/release/twctl status "$MNT"
rm -f "$SRC"
echo "\$ fusermount3 -u $MNT"
fusermount3 -u "$MNT"
trap - EXIT
echo "demo done: the block stays in the store and is there again on the next mount"
