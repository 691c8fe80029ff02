#!/usr/bin/env bash
# Builds the libFuzzer targets of Tools/fuzz with AddressSanitizer and runs each for SECONDS (default 30).
#   Tools/fuzz/run.sh [SECONDS]      CI runs 30; the longer documented run is `Tools/fuzz/run.sh 3600`.
# Seeds: Tools/fuzz/corpus/TARGET (committed; regenerate with `TARGET --write-seeds DIR`). What a run
# finds beyond them is kept in $TW_FUZZ_SCRATCH/corpus/TARGET (default .build-fuzz), so later runs
# start from it. A crash or failed invariant stops the run, leaves the input in
# $TW_FUZZ_SCRATCH/artifacts/ and fails the script; replay it with `BIN/TARGET FILE`.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-30}
scratch=${TW_FUZZ_SCRATCH:-.build-fuzz}
targets=(FuzzRecordDecoder FuzzBlockNames FuzzControlInput)
flags=(-c release -j 1 --scratch-path "$scratch" -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING)
# The Swift runtime's backtracer reads memory in ways ASan reports as an error of its own; libFuzzer
# prints the stack of a crash itself.
export SWIFT_BACKTRACE=enable=no

start=$(date +%s)
for target in "${targets[@]}"; do swift build "${flags[@]}" --product "$target"; done
bin=$(swift build "${flags[@]}" --show-bin-path)
echo "fuzz: built in $(( $(date +%s) - start )) s" >&2

mkdir -p "$scratch/artifacts"
for target in "${targets[@]}"; do
  mkdir -p "$scratch/corpus/$target"
  "$bin/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$scratch/artifacts/$target-" "$scratch/corpus/$target" "Tools/fuzz/corpus/$target" 2>&1 \
    | grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)' >&2
done
echo "fuzz: done in $(( $(date +%s) - start )) s" >&2
