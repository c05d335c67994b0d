"""How long every ``cssa`` subcommand takes to answer ``--help`` and a mistake, against ``cssa
--help``, measured side by side in one run (ratios, not seconds: timings here are noisy).

    python benchmarks/cli_latency.py [--repeats 3]

Prints a Markdown table: median wall seconds of each command (a fresh interpreter each time)
and its ratio to ``cssa --help``. The package's own subcommands parse their arguments before
importing torch, so their help and argument errors should stay near 1x; the Lightning
subcommands (fit, validate, test) build the LightningCLI parser and take seconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = [
    ["--help"],
    ["--version"],
    ["fitt"],
    ["predict", "--help"],
    ["predict", "--ckpt_path"],
    ["export", "--help"],
    ["report", "--help"],
    ["convert", "--help"],
    ["prepare", "--help"],
    ["fit", "--help"],
]


def seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cssa_lightning", *args], capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    medians = {}
    for _ in range(options.repeats):  # interleaved, so drifts in machine load hit all alike
        for args in COMMANDS:
            medians.setdefault(" ".join(args), []).append(seconds(args))
    base = statistics.median(medians["--help"])
    print("| command | median s | x cssa --help |\n|---|---|---|")
    for command, values in medians.items():
        median = statistics.median(values)
        print(f"| `cssa {command}` | {median:.2f} | {median / base:.1f} |")


if __name__ == "__main__":
    main()
