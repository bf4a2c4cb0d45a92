#!/usr/bin/env bash
# Runs one fuzz target: fuzz/run.sh TARGET [SECONDS] [extra libFuzzer flags...]
# New inputs go to fuzz/corpus/TARGET (not committed); fuzz/seeds/TARGET is read only.
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept the -Z flags cargo fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: fuzz/run.sh TARGET [SECONDS] [libFuzzer flags...]}
secs=${2:-600}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "fuzz/corpus/$target"
dict=()
[ -f "fuzz/dicts/$target.dict" ] && dict=("-dict=fuzz/dicts/$target.dict")
exec env RUSTC_BOOTSTRAP=1 nice -n 10 cargo fuzz run "$target" \
  "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
  -max_total_time="$secs" -print_final_stats=1 "${dict[@]}" "$@"
