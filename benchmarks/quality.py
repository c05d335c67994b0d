"""Quality benchmark on the embedded world: every method, labeled ratio and seed, one budget.

    python benchmarks/quality.py            # the full grid (3 ratios x 3 seeds x 10 methods)
    python benchmarks/quality.py --quick    # a smaller grid for a smoke run

Every method uses the same backbone (the shipped tiny CLIP), the same epochs and the same
number of optimisation steps (the unlabeled stream defines the epoch; labeled-only baselines
skip loading unlabeled images but keep that epoch length; the fully supervised bound sees
labeled batches of the same total size). Each run goes through the real ``cssa`` CLI.
Writes ``benchmarks/results/quality.json`` (one row per run), ``docs/results.md`` (mean ± std
table) and ``docs/quality.png`` (mAP against labeled ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import yaml

from cssa_lightning.callbacks import FitSummary
from cssa_lightning.cli import build_cli
from cssa_lightning.clip import TINY_CLIP

ROOT = Path(__file__).resolve().parent.parent
CSSA = "cssa_lightning.CSSATask"
SUPERVISED = "cssa_lightning.MultiLabelTask"
CAP_SWITCHES = {"label_specific": False, "use_alignment": False, "use_context": False}

# method -> (task class, model options, data options); "zero-shot" is tested untrained.
METHODS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "zero-shot": (SUPERVISED, {}, {}),
    "supervised": (SUPERVISED, {}, {"load_unlabeled": False}),
    "CAP": (CSSA, CAP_SWITCHES, {}),
    "CSSA": (CSSA, {}, {}),
    "CSSA w/o label-specific": (CSSA, {"label_specific": False}, {}),
    "CSSA w/o alignment": (CSSA, {"use_alignment": False}, {}),
    "CSSA w/o context": (CSSA, {"use_context": False}, {}),
    "CSSA w/o consistency": (CSSA, {"use_consistency": False}, {}),
    "fully supervised": (SUPERVISED, {}, {}),
}


# Methods whose result does not depend on the labeled ratio: run once per seed (zero-shot once
# in all), stored at this ratio, and shown in every ratio column.
RATIO_FREE = {"zero-shot": 0.0, "fully supervised": 1.0}


def run_config(args: argparse.Namespace, method: str, ratio: float, seed: int, workdir: Path):
    task, model_options, data_options = METHODS[method]
    unlabeled_batch = args.unlabeled_batch_size
    labeled_batch = args.labeled_batch_size
    # Zero-shot trains nothing, so its split is irrelevant: keep the column's ratio there.
    ratio = RATIO_FREE.get(method) or ratio
    data = {
        "root": args.world_root,
        "num_train": args.num_train,
        "num_test": args.num_test,
        "labeled_ratio": ratio,
        "split_seed": seed,
        "image_size": 64,
        "clip_processor": TINY_CLIP,
        "labeled_batch_size": labeled_batch,
        "unlabeled_batch_size": unlabeled_batch,
        "eval_batch_size": 256,
        "num_workers": 1,
        **data_options,
    }
    if ratio == 1.0:
        data["labeled_batch_size"] = labeled_batch + unlabeled_batch
    model = {
        "clip_checkpoint": TINY_CLIP,
        "lr": args.lr,
        "head_lr": args.head_lr,
        "trainable_vision_layers": args.trainable_vision_layers,
        **model_options,
    }
    if task == CSSA:
        model.update(
            warmup_epochs=args.warmup_epochs,
            num_contexts=6,
            ema_decay=args.ema_decay,
            alignment_weight=0.5,
            context_weight=0.5,
        )
    return {
        "seed_everything": seed,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": args.epochs,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "check_val_every_n_epoch": args.epochs,
            "default_root_dir": str(workdir),
        },
        "model": {"class_path": task, "init_args": model},
        "data": {"class_path": "cssa_lightning.WorldDataModule", "init_args": data},
    }


def run_one(args, method: str, ratio: float, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        config = run_config(args, method, ratio, seed, Path(workdir))
        config["trainer"]["callbacks"] = [{"class_path": "cssa_lightning.callbacks.FitSummary"}]
        path = Path(workdir) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        if method == "zero-shot":
            cli = build_cli(["test", "--config", str(path)])
        else:
            cli = build_cli(["fit", "--config", str(path), "--test_after_fit=true"])
    summary = next(c for c in cli.trainer.callbacks if isinstance(c, FitSummary))
    test = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    # Mean-teacher methods deploy the EMA teacher; the student's mAP is kept beside it.
    suffix = "_teacher" if "test/mAP_teacher" in test else ""
    return {
        "method": method,
        "labeled_ratio": RATIO_FREE.get(method, ratio),
        "seed": seed,
        "test_mAP": test[f"test/mAP{suffix}"],
        "test_CF1": test[f"test/CF1{suffix}"],
        "test_OF1": test[f"test/OF1{suffix}"],
        "test_mAP_student": test["test/mAP"],
        "pseudo_precision": summary.metrics.get("pseudo/precision"),
        "pseudo_recall": summary.metrics.get("pseudo/recall"),
        "train_seconds": None if summary.train_seconds is None else round(summary.train_seconds, 1),
    }


def summarise(rows: list[dict[str, Any]], out_md: Path, out_png: Path) -> str:
    ratios = sorted({r["labeled_ratio"] for r in rows if r["method"] not in RATIO_FREE})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]

    def cell(method: str, ratio: float, key: str = "test_mAP") -> str:
        values = [r[key] for r in rows if r["method"] == method and _in_column(r, ratio)]
        values = [v for v in values if v is not None]
        if not values:
            return "–"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {spread:.2f}"

    header = "| method | " + " | ".join(f"{r:.0%} labels" for r in ratios) + " |"
    lines = [header, "|---" * (len(ratios) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(cell(m, r) for r in ratios) + " |" for m in methods]
    table = "\n".join(lines)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    seeds = sorted({r["seed"] for r in rows})
    seconds = {
        m: statistics.mean([r["train_seconds"] for r in rows if r["method"] == m])
        for m in methods
        if any(r["method"] == m and r["train_seconds"] is not None for r in rows)
    }
    timing = ", ".join(f"{m} {s:.0f} s" for m, s in seconds.items())
    out_md.write_text(
        "# Quality on the embedded world\n\n"
        f"Test mAP (x100, mean ± std over seeds {seeds}; EMA teacher for mean-teacher methods) "
        "from `python benchmarks/quality.py`; rows in `benchmarks/results/quality.json`.\n\n"
        f"{table}\n\nMean training wall time per run (2 CPU cores, noisy): {timing}.\n\n"
        "![mAP against labeled ratio](quality.png)\n"
    )
    _plot(rows, methods, ratios, out_png)
    return table


def _plot(rows, methods, ratios, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.5, 4.5))
    for method in methods:
        means = []
        for ratio in ratios:
            values = [r["test_mAP"] for r in rows if r["method"] == method and _in_column(r, ratio)]
            means.append(statistics.mean(values) if values else float("nan"))
        style = "--" if method in ("zero-shot", "fully supervised") else "-"
        axis.plot([100 * r for r in ratios], means, style, marker="o", label=method)
    axis.set_xlabel("labeled images (%)")
    axis.set_ylabel("test mAP")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)


def _in_column(row: dict[str, Any], ratio: float) -> bool:
    return row["method"] in RATIO_FREE or row["labeled_ratio"] == ratio


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--labeled-batch-size", type=int, default=8)
    parser.add_argument("--unlabeled-batch-size", type=int, default=56)
    parser.add_argument("--lr", type=float, default=5.0e-4)
    parser.add_argument("--head-lr", type=float, default=5.0e-3)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--trainable-vision-layers", type=int, default=None)
    parser.add_argument("--world-root", default="~/.cache/cssa_lightning/world")
    parser.add_argument("--quick", action="store_true", help="1 seed, ratio 10 %%, fewer images")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json"
    )
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument(
        "--summarise-only", action="store_true", help="rewrite the docs from --out, train nothing"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.ratios, args.seeds, args.num_train, args.epochs = [0.1], [1], 1000, 3
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.summarise_only:
        print(
            summarise(
                json.loads(args.out.read_text()),
                args.docs / "results.md",
                args.docs / "quality.png",
            )
        )
        return
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    done: set[tuple[str, int]] = set()
    for ratio in args.ratios:
        for seed in args.seeds:
            for method in args.methods:
                key = (method, 0 if method == "zero-shot" else seed)
                if method in RATIO_FREE and key in done:
                    continue
                done.add(key)
                row = run_one(args, method, ratio, seed)
                rows.append(row)
                print(json.dumps(row), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=1) + "\n")
    table = summarise(rows, args.docs / "results.md", args.docs / "quality.png")
    print(table)
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
