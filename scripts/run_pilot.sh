#!/bin/bash
# One world-v4 pilot of docs/protocol.md (the V4-P0-long protocol, one thread), as the
# protocol log writes it: `/tmp/run_pilot.sh NAME ARGS` there is `scripts/run_pilot.sh NAME ARGS`.
#   scripts/run_pilot.sh v4-p0-long-supema-s4 --seeds 4 --ratios 0.05 --methods supervised+EMA
# Rows go to benchmarks/results/pilots/NAME.json, the per-run docs to /tmp/pilots/NAME, the
# output to /tmp/pilots/NAME.log, and a line "NAME rc=..." to /tmp/pilots/done.txt.
# The fixed flags are the log's protocol whatever quality.py's defaults (the defaults became
# this protocol with reflected borders later, so black borders are pinned here: a logged
# command without --strong-border ran with black ones). scripts/grid_part.sh sets the three
# variables below for the grid's parts.
cd "$(dirname "$0")/.."
name=${1:?usage: $(basename "$0") NAME ARGS}
shift
rows=${PART_ROWS:-benchmarks/results/pilots}
logs=${PART_LOGS:-/tmp/pilots}
mkdir -p "$logs"
python benchmarks/quality.py --threads 1 --val-every 1 --world-version v4 --clip tiny-clip-v4 \
  --epochs 10 --strong-ops colour_preserving --cutout-max 0.15 \
  --strong-border "${PART_BORDER:-none}" "$@" \
  --out "$rows/$name.json" --docs "$logs/$name" > "$logs/$name.log" 2>&1
echo "$name rc=$? $(date +%T)" >> "$logs/done.txt"
