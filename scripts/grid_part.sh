#!/bin/bash
# One part of the world-v4 quality grid (docs/results.md), one thread, so that two parts run
# side by side on two cores; `quality.py --merge` joins the parts into one results file.
#   scripts/grid_part.sh v4-grid-5pct-s1 --ratios 0.05 --seeds 1 --methods supervised CAP
# The protocol flags (quality.py's defaults, written out so that a part keeps its protocol if
# the defaults change) are run_pilot.sh's with reflected borders. Rows go to
# benchmarks/results/parts/NAME.json, the part's own docs to /tmp/grid/NAME, the output to
# /tmp/grid/NAME.log, and "NAME rc=..." to /tmp/grid/done.txt.
PART_ROWS=benchmarks/results/parts PART_LOGS=/tmp/grid PART_BORDER=reflect \
  exec "$(dirname "$0")/run_pilot.sh" "$@"
