"""Soak benchmark: a long ``cssa fit`` must stay flat in memory and open files.

    python benchmarks/soak.py                        # 2,000 steps of the demo, ~10 min on 2 cores
    python benchmarks/soak.py --steps 300 --every 50  # a quick look

Runs the real command (``cssa fit --config demo`` with the tiny CLIP on world v2, CSSA, an
offline W&B run with the RunReport tables and figures) for ``--steps`` optimizer steps with a
checkpoint every ``--every`` steps (plus ``last.ckpt`` and the best by validation mAP), a
validation every epoch, loader workers restarted every epoch. Small batches keep the steps
fast: this measures the loop, not the model.

From outside, every second, it samples the resident memory (RSS) and the open file
descriptors of the training process and of its children (the loader workers), and writes:

- the **baseline** (the largest sample in the minute after the first checkpoint, when every
  code path has run once) and the **end** (the largest in the last minute) of each, their
  difference, and the largest sample over the run;
- ``benchmarks/results/soak.json`` (with the command) and the soak section of
  ``docs/speed.md``.

The stated bound: RSS at the end within 10 % + 64 MiB of the baseline, open files within 8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "soak.json"
DOC = ROOT / "docs" / "speed.md"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
RSS_BOUND = (0.10, 64 * 2**20)  # relative, absolute
FD_BOUND = 8
WINDOW_S = 60.0


def overlay(every: int) -> str:
    """The demo with a step-wise checkpoint and without the after-fit test."""
    return f"""
test_after_fit: false
trainer:
  max_epochs: -1
  limit_val_batches: 2
  log_every_n_steps: 10
  callbacks:
    - class_path: cssa_lightning.reporting.callbacks.RunReport
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        monitor: val/mAP_teacher
        mode: max
        save_last: true
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        every_n_train_steps: {every}
        save_top_k: 1
        filename: "step-{{step}}"
data:
  init_args:
    labeled_batch_size: 8
    unlabeled_batch_size: 8
    eval_batch_size: 128
"""


def sample(process: psutil.Process) -> tuple[int, int, int] | None:
    """RSS bytes, open file descriptors and process count of ``process`` and its children."""
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    rss = fds = 0
    for member in family:
        try:
            rss += member.memory_info().rss
            fds += member.num_fds()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return rss, fds, len(family)


def soak(steps: int, every: int, threads: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="cssa-soak-"))
    (folder / "soak.yaml").write_text(overlay(every))
    command = [
        sys.executable,
        "-m",
        "cssa_lightning",
        "fit",
        "--config",
        "demo",
        "--config",
        str(folder / "soak.yaml"),
        f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={folder / 'out'}",
        f"--trainer.logger.init_args.save_dir={folder / 'out'}",
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": str(threads),
    }
    start = time.monotonic()
    child = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "log", "w")
    )
    process = psutil.Process(child.pid)
    samples: list[tuple[float, int, int, int]] = []
    first_checkpoint = None
    while child.poll() is None:
        values = sample(process)
        now = time.monotonic() - start
        if values is not None:
            samples.append((now, *values))
        if first_checkpoint is None and any((folder / "out").rglob("*.ckpt")):
            first_checkpoint = now
        time.sleep(1.0)
    wall = time.monotonic() - start
    if child.returncode != 0:
        tail = (folder / "log").read_text()[-3000:]
        raise SystemExit(f"cssa fit failed (exit {child.returncode}):\n{tail}")
    if first_checkpoint is None or not samples:
        raise SystemExit("no checkpoint was written: run more --steps")
    # A minute each, or a third of what follows the first checkpoint in a short run.
    window = min(WINDOW_S, (samples[-1][0] - first_checkpoint) / 3)
    base = [s for s in samples if first_checkpoint <= s[0] <= first_checkpoint + window]
    end = [s for s in samples if s[0] >= samples[-1][0] - window]
    if not base or not end:
        raise SystemExit("too few samples after the first checkpoint: run more --steps")

    def peak(rows: list, column: int) -> int:
        return max(row[column] for row in rows)

    rss_base, rss_end, rss_max = peak(base, 1), peak(end, 1), peak(samples, 1)
    fd_base, fd_end, fd_max = peak(base, 2), peak(end, 2), peak(samples, 2)
    rss_allowed = rss_base * RSS_BOUND[0] + RSS_BOUND[1]
    return {
        "command": "python benchmarks/soak.py "
        + f"--steps {steps} --every {every} --threads {threads}",
        "fit_command": "cssa " + " ".join(command[3:]).replace(str(folder), "$SOAK_DIR"),
        "steps": steps,
        "checkpoint_every": every,
        "wall_s": round(wall, 1),
        "first_checkpoint_s": round(first_checkpoint, 1),
        "samples": len(samples),
        "window_s": round(window, 1),
        "rss_mib": {
            "baseline": round(rss_base / 2**20, 1),
            "end": round(rss_end / 2**20, 1),
            "growth": round((rss_end - rss_base) / 2**20, 1),
            "max": round(rss_max / 2**20, 1),
            "allowed_growth": round(rss_allowed / 2**20, 1),
        },
        "open_files": {
            "baseline": fd_base,
            "end": fd_end,
            "growth": fd_end - fd_base,
            "max": fd_max,
        },
        "flat": (rss_end - rss_base) <= rss_allowed and (fd_end - fd_base) <= FD_BOUND,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def markdown(result: dict) -> str:
    r, f = result["rss_mib"], result["open_files"]
    verdict = "flat" if result["flat"] else "**grows beyond the bound**"
    return "\n".join(
        [
            BEGIN,
            "## Soak: a long fit stays flat",
            "",
            f"`{result['command']}` ({result['date']}, {result['machine']}): "
            f"`{result['fit_command']}` — {result['steps']} steps, a checkpoint every "
            f"{result['checkpoint_every']} steps, validation every epoch, in "
            f"{result['wall_s']:.0f} s. Training process and loader workers together; baseline "
            f"= the largest sample in the {result['window_s']:.0f} s after the first checkpoint, "
            f"end = the largest in the last {result['window_s']:.0f} s.",
            "",
            "| | baseline | end | growth | largest | bound on growth |",
            "|---|---|---|---|---|---|",
            f"| RSS (MiB) | {r['baseline']} | {r['end']} | {r['growth']:+} | {r['max']} | "
            f"{r['allowed_growth']} (10 % + 64 MiB) |",
            f"| open files | {f['baseline']} | {f['end']} | {f['growth']:+} | {f['max']} | "
            f"{FD_BOUND} |",
            "",
            f"Verdict: {verdict}.",
            END,
        ]
    )


def write_doc(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else ""
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END) :]
    else:
        doc = doc.rstrip() + "\n\n" + text + "\n"
    DOC.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    parser.add_argument("--every", type=int, default=200, help="checkpoint every N steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the fit")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"default {RESULTS}")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/speed.md")
    options = parser.parse_args()
    result = soak(options.steps, options.every, options.threads)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    if not options.no_doc:
        write_doc(text)
    print(text)


if __name__ == "__main__":
    main()
