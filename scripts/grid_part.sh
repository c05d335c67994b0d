#!/bin/bash
# One part of the world-v4 quality grid (docs/results.md), one thread, so that two parts run
# side by side on two cores; `quality.py --merge` joins the parts into one results file.
#   scripts/grid_part.sh v4-grid-5pct-s1 --ratios 0.05 --seeds 1 --methods supervised CAP
# The protocol flags are quality.py's defaults, written out so that the part keeps its protocol
# if the defaults change. Rows go to benchmarks/results/parts/NAME.json, the part's own docs to
# /tmp/grid/NAME, the output to /tmp/grid/NAME.log, and "NAME rc=..." to /tmp/grid/done.txt.
cd "$(dirname "$0")/.."
name=${1:?usage: grid_part.sh NAME ARGS}
shift
mkdir -p /tmp/grid
python benchmarks/quality.py --threads 1 --val-every 1 --world-version v4 --clip tiny-clip-v4 \
  --epochs 10 --strong-ops colour_preserving --cutout-max 0.15 --strong-border reflect "$@" \
  --out "benchmarks/results/parts/$name.json" --docs "/tmp/grid/$name" > "/tmp/grid/$name.log" 2>&1
echo "$name rc=$? $(date +%T)" >> /tmp/grid/done.txt
