#!/usr/bin/env bash
# Runs pjdfstest, the POSIX file system test suite, inside a namespace of a fresh twfs mount and compares
# the test files that fail with Tools/pjdfstest-expected-failures.txt (docs/compat.md).
#
#   Tools/pjdfstest.sh PJDFSTEST_CHECKOUT [TEST_DIR...]
#
# PJDFSTEST_CHECKOUT is a checkout of github.com/pjd/pjdfstest (packaged neither in Debian nor in PyPI, so
# it is not part of Tools/test.sh); its `pjdfstest` binary is built there first if missing (autoreconf,
# configure, make: needs autoconf, automake, gcc). TEST_DIR limits the run to some of its tests/
# subdirectories (e.g. `chmod rename`); the comparison then covers only those.
#
# Environment: TWFS_BIN (default <repo>/.build/release/twfs), PJD_TIMEOUT (seconds per test file,
# default 600), PJDFSTEST_KEEP=1 (keep the work directory with the prove log and the daemon's log),
# PJDFSTEST_LOG=FILE (copy prove's verbose log there).
# Needs root and /dev/fuse. Exit status: 0 when exactly the expected test files fail, 1 on any unexpected
# failure or unexpected pass, 2 on a setup error.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
EXPECTED=$REPO/Tools/pjdfstest-expected-failures.txt
TWFS=${TWFS_BIN:-$REPO/.build/release/twfs}
PER_FILE_TIMEOUT=${PJD_TIMEOUT:-600}

die() { echo "pjdfstest.sh: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: $0 PJDFSTEST_CHECKOUT [TEST_DIR...]"
CHECKOUT=$(cd "$1" && pwd) || die "no such directory: $1"
shift
[ -d "$CHECKOUT/tests" ] || die "$CHECKOUT has no tests/ directory (not a pjdfstest checkout)"
[ -x "$TWFS" ] || die "twfs binary not found at $TWFS (build it or set TWFS_BIN)"
[ "$(id -u)" = 0 ] || die "pjdfstest needs root (it switches uids to test permissions)"
[ -e /dev/fuse ] || die "/dev/fuse is missing"
command -v prove >/dev/null || die "prove (perl) is missing"
[ -f "$EXPECTED" ] || die "missing $EXPECTED"

if [ ! -x "$CHECKOUT/pjdfstest" ]; then
  echo "building pjdfstest in $CHECKOUT" >&2
  (cd "$CHECKOUT" && autoreconf -ifs && ./configure && make pjdfstest) >"$CHECKOUT/build.log" 2>&1 ||
    die "build failed; see $CHECKOUT/build.log"
fi

WORK=$(mktemp -d /tmp/twfs-pjdfstest-XXXXXX)
chmod 0755 "$WORK"
MNT=$WORK/mnt
STORE=$WORK/store
mkdir -m 0755 "$MNT"
mkdir -m 0700 "$STORE"
DAEMON=""

cleanup() {
  local rc=$?
  cd /
  if mountpoint -q "$MNT" 2>/dev/null; then
    fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  fi
  if [ -n "$DAEMON" ]; then
    for _ in $(seq 50); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DAEMON" 2>/dev/null || true
    wait "$DAEMON" 2>/dev/null || true
  fi
  if [ "${PJDFSTEST_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
    echo "work directory kept: $WORK (prove.log, twfs.log)" >&2
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$TWFS" "$MNT" --store "$STORE" --capacity 2G --dram 64M -f >"$WORK/twfs.log" 2>&1 &
DAEMON=$!
for _ in $(seq 200); do
  mountpoint -q "$MNT" && break
  kill -0 "$DAEMON" 2>/dev/null || { cat "$WORK/twfs.log" >&2; die "twfs exited before mounting"; }
  sleep 0.1
done
mountpoint -q "$MNT" || die "twfs did not mount $MNT within 20 s"
mkdir "$MNT/pjdfstest"

# The test files to run: all of tests/, or the named subdirectories.
targets=()
if [ $# -eq 0 ]; then
  targets=("$CHECKOUT/tests")
else
  for d in "$@"; do
    [ -d "$CHECKOUT/tests/$d" ] || die "no test directory tests/$d"
    targets+=("$CHECKOUT/tests/$d")
  done
fi

echo "pjdfstest $(git -C "$CHECKOUT" rev-parse --short HEAD 2>/dev/null || echo '(no git)') on $("$TWFS" --version 2>/dev/null || echo twfs) at $MNT/pjdfstest" >&2
start=$(date +%s)
set +e
(cd "$MNT/pjdfstest" && prove -r -v --timer --exec "timeout -k 10 $PER_FILE_TIMEOUT /bin/sh" "${targets[@]}") \
  >"$WORK/prove.log" 2>&1
set -e
elapsed=$(( $(date +%s) - start ))
kill -0 "$DAEMON" 2>/dev/null || { tail -50 "$WORK/twfs.log" >&2; echo "twfs died during the run" >&2; exit 1; }

# Failing files from prove's "Test Summary Report" (paths relative to tests/), and every file that ran.
failed=$(sed -n '/^Test Summary Report/,$p' "$WORK/prove.log" |
  sed -n 's#^\(/[^ ]*\.t\) .*#\1#p' | sed "s#^$CHECKOUT/tests/##" | sort -u)
ran=$( { grep -oE "$CHECKOUT/tests/[^ ]+\.t" "$WORK/prove.log" || true; } | sed "s#^$CHECKOUT/tests/##" | sort -u)
expected=$( { grep -vE '^\s*(#|$)' "$EXPECTED" || true; } | awk '{print $1}' | sort -u)

unexpected_fail=$(comm -23 <(echo "$failed") <(echo "$expected") | sed '/^$/d')
# An expected failure that ran and did not fail is an unexpected pass (files not run are not judged).
unexpected_pass=$(comm -12 <(echo "$expected") <(echo "$ran") | comm -23 - <(echo "$failed") | sed '/^$/d')

summary=$(grep -E '^(Files=|Result:)' "$WORK/prove.log" || true)
n_ran=$(echo "$ran" | sed '/^$/d' | wc -l)
n_failed=$(echo "$failed" | sed '/^$/d' | wc -l)
echo "----- pjdfstest summary ($elapsed s) -----"
echo "$summary"
echo "test files: $n_ran run, $((n_ran - n_failed)) passed, $n_failed failed (all expected: $([ -z "$unexpected_fail" ] && echo yes || echo no))"
cp "$WORK/prove.log" "${PJDFSTEST_LOG:-/dev/null}" 2>/dev/null || true
status=0
if [ -n "$unexpected_fail" ]; then
  echo "UNEXPECTED FAILURES (not in $(basename "$EXPECTED")):"
  for f in $unexpected_fail; do
    echo "  $f"
    # The first few failing assertions of that file, from a second run of it.
    (cd "$MNT/pjdfstest" && timeout -k 10 "$PER_FILE_TIMEOUT" /bin/sh "$CHECKOUT/tests/$f" 2>&1 | grep -E '^(not ok|Bail out|Could not)' | head -5 | sed 's/^/      /') || true
  done
  status=1
fi
if [ -n "$unexpected_pass" ]; then
  echo "UNEXPECTED PASSES (listed as expected failures; remove them from the list):"
  echo "$unexpected_pass" | sed 's/^/  /'
  status=1
fi
[ $status -eq 0 ] && echo "pjdfstest: every failing test file is an expected one ($n_failed of $n_ran)"
exit $status
