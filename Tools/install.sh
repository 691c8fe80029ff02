#!/usr/bin/env bash
# Builds and installs twfs, twctl, the mount helper and the systemd unit (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
Tools/install-deps.sh
swift build -c release --product twfs
swift build -c release --product twctl
install -m 0755 .build/release/twfs .build/release/twctl /usr/local/bin/
install -m 0755 Mount/mount.twfs /sbin/mount.twfs
ln -sf mount.twfs /sbin/mount.fuse.twfs
install -m 0644 Mount/tokenwarehouse.service /etc/systemd/system/tokenwarehouse.service
[ -e /etc/default/tokenwarehouse ] || install -m 0644 Mount/tokenwarehouse.default /etc/default/tokenwarehouse
install -d /usr/local/share/doc/tokenwarehouse
install -m 0644 README.md docs/*.md /usr/local/share/doc/tokenwarehouse/
command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
echo "installed: /usr/local/bin/twfs, /usr/local/bin/twctl, /sbin/mount.twfs, tokenwarehouse.service"
