#!/usr/bin/env bash
# Runs a libFuzzer binary for a bounded time over a scratch copy of its committed seed corpus.
# New interesting inputs stay in build/; a crash fails the run and is saved under build/fuzz-crashes/
# (copy it into the corpus folder as a regression input once fixed).
# usage: run_fuzz.sh BINARY SEED_CORPUS SECONDS
set -euo pipefail
bin=$1; seeds=$2; secs=$3
name=$(basename "$bin")
work=build/fuzz-work/$name; crashes=build/fuzz-crashes/$name
mkdir -p "$work" "$crashes"
log=build/fuzz-work/$name.log
if "$bin" "$work" "$seeds" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
     -artifact_prefix="$crashes/" -print_final_stats=1 > "$log" 2>&1; then
  runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  echo "fuzz: $name ran ${runs:-?} inputs in ${secs}s, no crash (corpus $(ls "$work" | wc -l) + $(ls "$seeds" | wc -l) seeds)"
else
  tail -n 40 "$log"
  echo "fuzz: $name FAILED; reproducer in $crashes/"
  exit 1
fi
