#!/usr/bin/env bash
# Runs a libFuzzer binary for a bounded time over its committed seed corpus plus the inputs earlier
# runs found (kept in build/fuzz-work/<name>/), and prints one line: executions, the corpus size
# libFuzzer ended with, and the seeds it started from. A crash, a sanitizer report or a leak fails
# the run: the log's tail is printed and the reproducer is saved under build/fuzz-crashes/<name>/
# (fix the bug, then copy it into the seed folder as regress-<what>; docs/testing.md).
# usage: run_fuzz.sh BINARY SEED_CORPUS SECONDS [LIBFUZZER_FLAG...]   e.g. -dict=FILE
set -euo pipefail
bin=$1; seeds=$2; secs=$3; shift 3
name=$(basename "$bin")
work=build/fuzz-work/$name; crashes=build/fuzz-crashes/$name
mkdir -p "$work" "$crashes"
log=build/fuzz-work/$name.log
if "$bin" "$work" "$seeds" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
     -artifact_prefix="$crashes/" -print_final_stats=1 "$@" > "$log" 2>&1; then
  runs=$(grep -aE '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  # "#N DONE cov: .. ft: .. corp: UNITS/BYTES ..": the corpus in memory at the end.
  corpus=$(grep -aE '^#[0-9]+[[:space:]]+DONE' "$log" | sed -E 's/.* corp: ([0-9]+)\/([^ ]+).*/\1 inputs, \2/' | tail -n 1)
  echo "fuzz: $name ran ${runs:-?} inputs in ${secs}s, no crash; corpus ${corpus:-?} ($(ls "$seeds" | wc -l) committed seeds)"
else
  tail -n 60 "$log"
  echo "fuzz: $name FAILED; reproducer in $crashes/ (log: $log)"
  exit 1
fi
