#!/usr/bin/env bash
# `stmap bench` of two builds of stmap, interleaved in the same minutes (before, after,
# before, …), so that their ratio is measured in one run on one machine.
#   usage: BEFORE=/path/to/old/venv/bin/stmap AFTER=/path/to/new/venv/bin/stmap \
#          benchmarks/spine_before_after.sh OUTDIR [ROUNDS] [SIZE]
# Writes OUTDIR/{before,after}.N.json (stmap bench --json); results/spine_bench.md
# gives the medians of such a run.
set -euo pipefail
out=${1:?usage: BEFORE=... AFTER=... $0 OUTDIR [ROUNDS] [SIZE]}
rounds=${2:-8}
size=${3:-2048}
mkdir -p "$out"
for round in $(seq "$rounds"); do
  for side in before after; do
    if [ "$side" = before ]; then exe=${BEFORE:?}; else exe=${AFTER:?}; fi
    (cd "$out" && "$exe" bench --size "$size" --json > "$side.$round.json")
    echo "$side $round done"
  done
done
