"""Quality benchmark on the synthetic world: every method, labeled ratio and seed, one budget.

    python benchmarks/quality.py                     # main grid: 10 methods x 2 ratios x 5 seeds
    python benchmarks/quality.py --ablations         # ... plus the 5 ablations at 10 %, 3 seeds
    python benchmarks/quality.py --no-main --ablations --noise-floor
    python benchmarks/quality.py --quick             # smoke run (1 seed, 10 %, small world)
    python benchmarks/quality.py --summarise-only    # rewrite the docs from the JSON

The main grid: zero-shot; three labeled-only controls, "supervised" (the student alone, no EMA
teacher), "supervised+EMA" (with a teacher) and "supervised+EMA+label-specific" (CSSA's
label-specific architecture with no unlabeled image and no unlabeled loss); CAP and CSSA as the
papers state them and each with the shipped pseudo-label options (``configs/prior_known_classes.yaml``:
the zero-shot prior where it knows the class, no unlabeled loss where it does not); D2L; and the
fully supervised bound. Every method uses the same backbone (the protocol's ``clip``, the
shipped ``tiny-clip-v4`` by default), the same epochs and the same number of optimisation steps (the
unlabeled stream defines the epoch; labeled-only methods skip loading unlabeled images but keep
that epoch length; the fully supervised bound sees labeled batches of the same total size).
Every method but zero-shot and "supervised" is a mean-teacher task (``MeanTeacherTask`` for
supervised+EMA, CAP and fully supervised, ``CSSATask`` for CSSA and its controls and
ablations) with an EMA teacher, which is what is evaluated (the student is kept beside it); "supervised" has no teacher, so its headline
value is its student's. Each run goes through the real ``cssa`` CLI in-process, in its own
temporary directory; by default (``test_weights="best"``) it validates every epoch on the val
split and tests after ``fit`` the weights of the selected epoch (the best teacher val mAP).

Each row records that ``selected_epoch`` (0-based) and whether it lies inside the warm-up
(``in_warmup``); the summary flags every entry selected inside the warm-up and checks the
synthetic world's calibration targets (:func:`calibration_checks`).

Writes ``benchmarks/results/quality.json`` (``{"protocol": {...}, "rows": [...]}``, rewritten
after every run), ``docs/results.md``, ``docs/quality.png``, ``docs/curves.png`` (validation
mAP per epoch) and ``docs/pseudo_labels.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

ROOT = Path(__file__).resolve().parent.parent


# -- protocol: every default in one place, chosen on the val split (docs/protocol.md) ----------
@dataclass(frozen=True)
class Protocol:
    """Everything a run depends on besides (method, labeled ratio, seed). One CLI flag each.

    The defaults are docs/protocol.md's V4-P0-long protocol with reflected borders: world v4
    with ``tiny-clip-v4`` (half of the classes never named in pre-training), ten epochs, two
    of them warm-up, a colour-preserving strong view with small cutouts and mirrored borders.
    Results files written before (world v2, six epochs) record their own protocol."""

    epochs: int = 10
    warmup_epochs: int = 2
    rampup_epochs: float = 1.0
    lr: float = 1.0e-4
    head_lr: float = 1.0e-3
    ema_decay: float = 0.99
    teacher_restart: bool | None = None  # None: CSSATask's own default (option not passed)
    labeled_batch_size: int = 8
    unlabeled_batch_size: int = 56
    num_train: int = 4000
    num_val: int = 1000
    num_test: int = 2000
    num_contexts: int = 8
    consistency_weight: float = 1.0
    alignment_weight: float = 0.5
    context_weight: float = 0.5
    # CSSA's reading choices (docs/method.md); None: CSSATask's own default (option not passed).
    alignment_unlabeled: str | None = "confident"
    alignment_target: str | None = "prototype"
    ramp_auxiliary: bool | None = True
    asl_detach_focus: bool | None = None
    # Mean-teacher details shared by CAP and CSSA (docs/method.md); None: CSSATask's default.
    negative_keep: float | None = None
    threshold_refresh: str | None = None
    pseudo_label_scores: str | None = None
    schedule_restart: bool | None = None
    unlabeled_weighting: str | None = None
    # CSSA-only choices (no effect on CAP, which has no alignment or cross-attention).
    absent_push_weight: float | None = None
    absent_push_margin: float | None = None
    cross_attention_lr: float | None = None
    alignment_in_warmup: bool | None = None
    label_query_block: str | None = None
    label_query_depth: int | None = None
    context_unlabeled_targets: str | None = None
    context_reduction: str | None = None
    context_inform_queries: bool | None = None
    label_specific_max_skill: float | None = None
    alignment_temperature: float | None = None
    alignment_loss: str | None = None
    alignment_detach_targets: bool | None = None
    alignment_detach_features: bool | None = None
    labeled_view: str = "weak"
    cutout_max: float = 0.15
    trainable_vision_layers: int | None = None  # None: the whole vision tower trains
    # MultiLabelTask options of every trained method; None: the task's own default.
    layer_lr_decay: float | None = None
    pct_start: float | None = None
    # Mean-teacher consistency options (CAP's and CSSA's); None: the task's own default.
    consistency_target: str | None = None
    reliability_margin: float | None = None
    teacher_prior_weight: float | None = None
    teacher_prior_weighting: str | None = None
    min_prior_skill: float | None = None
    prior_source: str | None = None
    neighbours: int | None = None
    neighbour_temperature: float | None = None
    # The CLIP checkpoint of the model and the image processor of the data module.
    clip: str = "tiny-clip-v4"
    world_version: str = "v4"
    # Strong-view augmentation options of the data module; None: its own default.
    strong_ops: str | None = "colour_preserving"
    strong_num_ops: int | None = None
    strong_magnitude: float | None = None
    strong_translate: float | None = None
    strong_op_names: str | None = None  # comma-separated ops of the pool, e.g. "rotate"
    strong_border: str | None = "reflect"
    threads: int = 1  # torch.set_num_threads before every run (two grids run side by side)
    accelerator: str = "cpu"
    precision: str = "32-true"
    num_workers: int = 1
    image_size: int = 64
    world_image_size: int = 64
    world_seed: int = 0
    eval_batch_size: int = 256
    val_every: int | None = 1  # validate every this many epochs; None: at the last only
    # Weights tested: "final", or "best": the epoch with the best validation mAP (teacher where
    # there is one), validating every epoch; the same model selection for every method.
    test_weights: str = "best"


# Protocol fields passed to every mean-teacher run (MeanTeacherTask and CSSATask) when set
# (None: the task's own default).
OPTIONAL_MEAN_TEACHER_OPTIONS = (
    "teacher_restart",
    "ramp_auxiliary",
    "negative_keep",
    "threshold_refresh",
    "pseudo_label_scores",
    "schedule_restart",
    "unlabeled_weighting",
    "consistency_target",
    "reliability_margin",
    "teacher_prior_weight",
    "teacher_prior_weighting",
    "min_prior_skill",
    "prior_source",
    "neighbours",
    "neighbour_temperature",
)
# Protocol fields of group options that have no flat name of 0.2 (FLAT_NAMES maps those).
PROTOCOL_GROUP_NAMES = {
    "teacher_prior_weight": ("pseudo", "prior_weight"),
    "teacher_prior_weighting": ("pseudo", "prior_weighting"),
    "min_prior_skill": ("pseudo", "min_prior_skill"),
    "prior_source": ("pseudo", "prior_source"),
    "neighbours": ("pseudo", "neighbours"),
    "neighbour_temperature": ("pseudo", "neighbour_temperature"),
    "context_inform_queries": ("context", "inform_queries"),
    "alignment_loss": ("alignment", "loss"),
    "alignment_detach_targets": ("alignment", "detach_targets"),
    "alignment_detach_features": ("alignment", "detach_features"),
}
# Protocol fields passed to every CSSATask run when set.
OPTIONAL_CSSA_OPTIONS = (
    "alignment_unlabeled",
    "alignment_target",
    "absent_push_weight",
    "absent_push_margin",
    "cross_attention_lr",
    "alignment_in_warmup",
    "label_query_block",
    "label_query_depth",
    "context_unlabeled_targets",
    "context_reduction",
    "context_inform_queries",
    "label_specific_max_skill",
    "alignment_temperature",
    "alignment_loss",
    "alignment_detach_targets",
    "alignment_detach_features",
)
# Protocol fields passed to every trained method's task when set (None: the task's default).
OPTIONAL_MODEL_OPTIONS = ("layer_lr_decay", "pct_start")
# Protocol fields passed to the data module when set (None: the data module's default).
OPTIONAL_DATA_OPTIONS = (
    "strong_ops",
    "strong_num_ops",
    "strong_magnitude",
    "strong_translate",
    "strong_border",
)

# --quick: overrides of the protocol (explicit flags still win) and of the grid.
QUICK_PROTOCOL = {"num_train": 600, "num_val": 300, "num_test": 300, "epochs": 3, "threads": 2}
SUPERVISED_CONTROLS = ["supervised", "supervised+EMA", "supervised+EMA+label-specific"]
QUICK_METHODS = ["zero-shot", *SUPERVISED_CONTROLS, "CAP", "CSSA"]

# CAP and CSSA with the shipped pseudo-label options (PRIOR_KNOWN_CLASSES below), and with the
# labeled images' votes as the prior where they know a class better (PRIOR_AND_VOTES).
CAP_PRIOR = "CAP + prior, known classes"
CSSA_PRIOR = "CSSA + prior, known classes"
CAP_VOTES = "CAP + prior and votes"
CSSA_VOTES = "CSSA + prior and votes"
MAIN_METHODS = [
    "zero-shot",
    *SUPERVISED_CONTROLS,
    "CAP",
    CAP_PRIOR,
    "CSSA",
    CSSA_PRIOR,
    "D2L",
    "fully supervised",
]
MAIN_RATIOS = [0.05, 0.1]
MAIN_SEEDS = [1, 2, 3, 4, 5]
# The ablations of a CSSA method: each switches one thing off on that method's options, named
# "<method> <switch>". "w/o label-specific" is the global feature with the alignment off; the
# "many-to-one" row keeps the alignment, which with one feature for every label pulls the
# global feature towards every positive's target at once (rows written before the split are of
# that kind).
ABLATION_SWITCHES: dict[str, dict[str, Any]] = {
    "w/o label-specific": {"label_specific": False, "use_alignment": False},
    "w/o label-specific, many-to-one alignment": {"label_specific": False},
    "w/o alignment": {"use_alignment": False},
    "w/o context": {"use_context": False},
    "w/o consistency": {"use_consistency": False},
}
ABLATED = ("CSSA", CSSA_PRIOR, CSSA_VOTES)  # the methods with ablations


def ablations_of(method: str) -> list[str]:
    """The ablation methods of ``method`` (one of ``ABLATED``), in ``ABLATION_SWITCHES`` order."""
    return [f"{method} {switch}" for switch in ABLATION_SWITCHES]


ABLATIONS = ablations_of("CSSA")
MANY_TO_ONE = "CSSA w/o label-specific, many-to-one alignment"
ABLATION_RATIO = 0.1  # the default of --ablation-ratio
ABLATION_SEEDS = [1, 2, 3]
# CAP rerun with another torch thread count (1 if the protocol uses more, else 2), nothing else
# changed: the run-to-run noise floor.
NOISE_METHOD = "CAP (other thread count)"
NOISE_RATIO = 0.1
NOISE_SEEDS = [1, 2, 3]

# -- methods -----------------------------------------------------------------------------------
DATA_MODULE = "cssa_lightning.synthetic.WorldDataModule"
CSSA = "cssa_lightning.CSSATask"
MEAN_TEACHER = "cssa_lightning.MeanTeacherTask"
MULTILABEL = "cssa_lightning.MultiLabelTask"
D2L = "cssa_lightning.D2LTask"
# A diagnostic (benchmarks/oracle.py, importable beside this script): CAP on hidden labels.
HIDDEN_LABELS_CAP = "oracle.HiddenLabelsCAP"
MEAN_TEACHER_TASKS = (MEAN_TEACHER, CSSA, D2L, HIDDEN_LABELS_CAP)
# D2L's own schedule choices (configs/d2l.yaml): teacher and learning-rate schedule restarted
# after the warm-up, no ramp, unlabeled images weighed per image.
D2L_OPTIONS = {
    "teacher_restart": True,
    "schedule_restart": True,
    "rampup_epochs": 0.0,
    "unlabeled_weighting": "per_image",
}
NO_UNLABELED_LOSSES = {"use_alignment": False, "use_context": False, "use_consistency": False}
NO_CONSISTENCY = {"use_consistency": False}
LABELED_ONLY = {"load_unlabeled": False}
# CAP's pseudo-labels blended with the zero-shot prior where it knows the class, and no
# unlabeled loss on the classes it does not (docs/protocol.md: "No unlabeled loss where the
# start network knows nothing").
PRIOR_KNOWN_CLASSES = {
    "teacher_prior_weight": 1.0,
    "teacher_prior_weighting": "labeled_ap",
    "min_prior_skill": 0.15,
}
# The same, with the prior of each class from the labeled images' votes where they rank the
# labeled images better than the zero-shot scores (docs/protocol.md: "A prior for every class").
PRIOR_AND_VOTES = {**PRIOR_KNOWN_CLASSES, "prior_source": "best"}

# method -> (task class, model options, data options); "zero-shot" is tested untrained.
METHODS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "zero-shot": (MULTILABEL, {}, {}),
    # The labeled-only controls: the student alone (no teacher), then with an EMA teacher, then
    # with CSSA's label-specific features too (CSSA's architecture, no unlabeled image).
    "supervised": (MULTILABEL, {}, LABELED_ONLY),
    "supervised+EMA": (MEAN_TEACHER, NO_CONSISTENCY, LABELED_ONLY),
    "supervised+EMA+label-specific": (
        CSSA,
        {"label_specific": True, **NO_UNLABELED_LOSSES},
        LABELED_ONLY,
    ),
    "CAP": (MEAN_TEACHER, {}, {}),
    CAP_PRIOR: (MEAN_TEACHER, PRIOR_KNOWN_CLASSES, {}),
    "CSSA": (CSSA, {}, {}),
    CSSA_PRIOR: (CSSA, PRIOR_KNOWN_CLASSES, {}),
    CAP_VOTES: (MEAN_TEACHER, PRIOR_AND_VOTES, {}),
    CSSA_VOTES: (CSSA, PRIOR_AND_VOTES, {}),
    "D2L": (D2L, D2L_OPTIONS, {}),
    # D2L with its decoupled heads and MAT but no local (patch-token) branch.
    "D2L w/o local branch": (D2L, {**D2L_OPTIONS, "local_branch": False}, {}),
    "fully supervised": (MEAN_TEACHER, NO_CONSISTENCY, {}),
    NOISE_METHOD: (MEAN_TEACHER, {}, {}),
    # Not a method: CAP with the hidden labels as pseudo-labels, its ceiling under this protocol.
    "CAP, hidden labels as pseudo-labels (oracle)": (HIDDEN_LABELS_CAP, {}, {}),
    # The same with 20 % / 45 % of the hidden labels wrong (precision ≈ recall ≈ 80 % / 55 %).
    "CAP, hidden labels 80 % right (oracle)": (HIDDEN_LABELS_CAP, {"wrong_fraction": 0.2}, {}),
    "CAP, hidden labels 55 % right (oracle)": (HIDDEN_LABELS_CAP, {"wrong_fraction": 0.45}, {}),
}
for _base in ABLATED:
    _task, _options, _data = METHODS[_base]
    for _switch, _off in ABLATION_SWITCHES.items():
        METHODS[f"{_base} {_switch}"] = (_task, {**_options, **_off}, _data)
assert MANY_TO_ONE in METHODS and set(ABLATIONS) <= METHODS.keys()
UNTRAINED = {"zero-shot"}
# No EMA teacher: the headline ("teacher") value of these is the model's own (the student's).
NO_TEACHER = {"zero-shot", "supervised"}

# Methods whose result does not depend on the labeled ratio: stored at this ratio and shown in
# every ratio column; zero-shot runs once in all (stored with seed 0 and paired with any seed),
# fully supervised once per seed.
RATIO_FREE = {"zero-shot": 0.0, "fully supervised": 1.0}
SEED_FREE = {"zero-shot"}


def stored_key(method: str, ratio: float, seed: int) -> tuple[str, float, int]:
    """The (method, labeled_ratio, seed) under which a run's row is stored."""
    return (
        method,
        RATIO_FREE.get(method, ratio),
        0 if method in SEED_FREE else seed,
    )


def row_key(row: dict[str, Any]) -> tuple[str, float, int]:
    return (row["method"], row["labeled_ratio"], row["seed"])


# -- one run -----------------------------------------------------------------------------------
def run_config(
    protocol: Protocol, method: str, ratio: float, seed: int, workdir: Path, world_root: str
) -> dict[str, Any]:
    """The ``cssa`` config of one run."""
    p = protocol
    task, model_options, data_options = METHODS[method]
    ratio = RATIO_FREE.get(method, ratio) or ratio  # zero-shot trains nothing: any split
    data = {
        "root": world_root,
        "num_train": p.num_train,
        "num_val": p.num_val,
        "num_test": p.num_test,
        "world_image_size": p.world_image_size,
        "world_seed": p.world_seed,
        "world_version": p.world_version,
        "labeled_ratio": ratio,
        "split_seed": seed,
        "image_size": p.image_size,
        "clip_processor": p.clip,
        "labeled_batch_size": p.labeled_batch_size,
        "unlabeled_batch_size": p.unlabeled_batch_size,
        "eval_batch_size": p.eval_batch_size,
        "num_workers": p.num_workers,
        "labeled_view": p.labeled_view,
        "cutout_max": p.cutout_max,
        **_set_options(p, OPTIONAL_DATA_OPTIONS),
        **data_options,
    }
    if p.strong_op_names is not None:
        data["strong_op_names"] = p.strong_op_names.split(",")
    if ratio == 1.0:  # same images per step as the semi-supervised methods
        data["labeled_batch_size"] = p.labeled_batch_size + p.unlabeled_batch_size
    model: dict[str, Any] = {
        "clip_checkpoint": p.clip,
        "lr": p.lr,
        "head_lr": p.head_lr,
        "trainable_vision_layers": p.trainable_vision_layers,
    }
    if method not in UNTRAINED:
        model.update(_set_options(p, OPTIONAL_MODEL_OPTIONS))
    if task in MEAN_TEACHER_TASKS:
        model.update(
            warmup_epochs=p.warmup_epochs,
            rampup_epochs=p.rampup_epochs,
            ema_decay=p.ema_decay,
            consistency_weight=p.consistency_weight,
        )
        model.update(_set_options(p, OPTIONAL_MEAN_TEACHER_OPTIONS))
    if task == CSSA:
        model.update(
            num_contexts=p.num_contexts,
            alignment_weight=p.alignment_weight,
            context_weight=p.context_weight,
        )
        model.update(_set_options(p, OPTIONAL_CSSA_OPTIONS))
    model.update(_set_options(p, ("asl_detach_focus",)))
    model.update(model_options)
    model = grouped_options(model)
    if p.test_weights not in ("final", "best"):
        raise ValueError(f"test_weights must be 'final' or 'best', got {p.test_weights!r}")
    best = p.test_weights == "best" and method not in UNTRAINED
    return {
        "seed_everything": seed,
        "trainer": {
            "accelerator": p.accelerator,
            "devices": 1,
            "precision": p.precision,
            "max_epochs": p.epochs,
            "logger": False,
            "enable_checkpointing": best,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "check_val_every_n_epoch": 1 if best else (p.val_every or p.epochs),
            "default_root_dir": str(workdir),
            "callbacks": [
                {"class_path": "cssa_lightning.reporting.callbacks.FitSummary"},
                {"class_path": "cssa_lightning.reporting.callbacks.EpochHistory"},
                {"class_path": "cssa_lightning.reporting.callbacks.PerClassTestAP"},
                {"class_path": "cssa_lightning.reporting.callbacks.ContextAgreement"},
                *([_best_checkpoint(task, workdir)] if best else []),
            ],
        },
        "model": {"class_path": task, "init_args": model},
        "data": {"class_path": DATA_MODULE, "init_args": data},
    }


def grouped_options(model: dict[str, Any]) -> dict[str, Any]:
    """The task options of a run with the benchmark's flat names (the protocol's and the
    methods' vocabulary, as recorded in every results file) put into the tasks' option groups
    (``alignment_weight`` -> ``alignment: {weight: ...}``)."""
    from cssa_lightning.methods.options import FLAT_NAMES

    names = {**FLAT_NAMES, **PROTOCOL_GROUP_NAMES}
    grouped: dict[str, Any] = {}
    for name, value in model.items():
        if name in names:
            group, field = names[name]
            grouped.setdefault(group, {})[field] = value
        else:
            grouped[name] = value
    return grouped


def _set_options(protocol: Protocol, names: Iterable[str]) -> dict[str, Any]:
    """``{name: value}`` of the protocol fields among ``names`` that are set (not ``None``)."""
    return {name: getattr(protocol, name) for name in names if getattr(protocol, name) is not None}


def _best_checkpoint(task: str, workdir: Path) -> dict[str, Any]:
    """Keeps the epoch with the best validation mAP (the teacher's for mean-teacher tasks)."""
    return {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": str(workdir / "checkpoints"),
            "monitor": "val/mAP_teacher" if task in MEAN_TEACHER_TASKS else "val/mAP",
            "mode": "max",
            "save_top_k": 1,
            "save_weights_only": True,
        },
    }


def run_one(
    protocol: Protocol, method: str, ratio: float, seed: int, world_root: str, threads: int
) -> dict[str, Any]:
    """Train and evaluate one (method, ratio, seed) through the CLI; returns its row."""
    import torch
    import yaml

    from cssa_lightning.commands.cli import build_cli
    from cssa_lightning.reporting.callbacks import (
        ContextAgreement,
        EpochHistory,
        FitSummary,
        PerClassTestAP,
    )

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as workdir:
        config = run_config(protocol, method, ratio, seed, Path(workdir), world_root)
        path = Path(workdir) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        if method == "zero-shot":
            cli = build_cli(["validate", "--config", str(path)])
            fit_metrics = _floats(cli.trainer.callback_metrics)
            cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
            summary = history = None
        else:
            cli = build_cli(
                [
                    "fit",
                    "--config",
                    str(path),
                    "--test_after_fit=true",
                    f"--test_weights={protocol.test_weights}",
                ]
            )
            summary = _callback(cli.trainer, FitSummary)
            history = _callback(cli.trainer, EpochHistory).history
            fit_metrics = summary.metrics
        test = _floats(cli.trainer.callback_metrics)
        per_class_ap = _callback(cli.trainer, PerClassTestAP).per_class_ap
        contexts_ari = _callback(cli.trainer, ContextAgreement).ari
    return make_row(
        protocol,
        method,
        ratio,
        seed,
        test=test,
        fit_metrics=fit_metrics,
        history=history,
        train_seconds=None if summary is None else summary.train_seconds,
        threads=torch.get_num_threads(),
        per_class_ap=per_class_ap,
        contexts_ari=contexts_ari,
    )


def make_row(
    protocol: Protocol,
    method: str,
    ratio: float,
    seed: int,
    *,
    test: dict[str, float],
    fit_metrics: dict[str, Any],
    history: list[dict[str, Any]] | None,
    train_seconds: float | None,
    threads: int,
    per_class_ap: dict[str, dict[str, float | None]] | None = None,
    contexts_ari: float | None = None,
) -> dict[str, Any]:
    """The row of one run from its test metrics, fit metrics and per-epoch history (``None``
    for zero-shot, which trains nothing)."""
    # Mean-teacher methods deploy the EMA teacher; the student's scores are kept beside it.
    suffix = "_teacher" if "test/mAP_teacher" in test else ""
    method_key, stored_ratio, stored_seed = stored_key(method, ratio, seed)
    val = {key: fit_metrics.get(key) for key in {f"val/mAP{suffix}", "val/mAP"}}
    selected_epoch = None if history is None else protocol.epochs - 1
    if protocol.test_weights == "best" and history:
        # The validation values of the epoch the test loaded, not of the last one.
        chosen = max(history, key=lambda e: e.get(f"val/mAP{suffix}", float("-inf")))
        selected_epoch = chosen["epoch"]
        val = {k: chosen.get(k) for k in val}
    return {
        "method": method_key,
        # What the method changes on its task's defaults and the protocol (model options).
        "method_options": METHODS[method][1] if method in METHODS else None,
        "labeled_ratio": stored_ratio,
        "seed": stored_seed,
        "test_mAP": test[f"test/mAP{suffix}"],
        "test_mAP_student": test["test/mAP"],
        "test_CF1": test[f"test/CF1{suffix}"],
        "test_OF1": test[f"test/OF1{suffix}"],
        "val_mAP": val["val/mAP" + suffix],
        "val_mAP_student": val["val/mAP"],
        "selected_epoch": selected_epoch,
        "in_warmup": in_warmup(selected_epoch, protocol.warmup_epochs),
        "pseudo_precision": fit_metrics.get("pseudo/precision"),
        "pseudo_recall": fit_metrics.get("pseudo/recall"),
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
        "threads": threads,
        "history": history,
        # Test AP of each class for the headline scores (teacher for mean-teacher methods).
        "test_AP_per_class": (per_class_ap or {}).get(suffix),
        # Adjusted Rand index of CSSA's identified contexts against the world's true ones.
        "contexts_ARI": None if contexts_ari is None else round(contexts_ari, 4),
    }


def in_warmup(selected_epoch: int | None, warmup_epochs: int | None) -> bool | None:
    """Whether the tested weights come from a warm-up epoch (0-based ``selected_epoch`` before
    ``warmup_epochs``): supervised-only training for the mean-teacher methods; the same epochs
    for every trained method. ``None`` when either is unknown (zero-shot trains nothing)."""
    if selected_epoch is None or warmup_epochs is None:
        return None
    return selected_epoch < warmup_epochs


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def _callback(trainer, kind: type):
    return next(c for c in trainer.callbacks if isinstance(c, kind))


# -- grid --------------------------------------------------------------------------------------
def plan(args: argparse.Namespace) -> list[tuple[str, float, int, int]]:
    """(method, ratio, seed, threads) of every run to do, in order, without duplicate keys."""
    runs: list[tuple[str, float, int]] = []
    if args.main:
        for seed in args.seeds:
            for ratio in args.ratios:
                runs += [(m, ratio, seed) for m in args.methods]
    if args.ablations:  # the ablated method at the same seeds is every ablation's reference
        base = args.ablation_of
        for seed in ABLATION_SEEDS:
            runs += [(m, args.ablation_ratio, seed) for m in [base, *ablations_of(base)]]
    if args.noise_floor:  # CAP at the same seeds, then again with one thread
        for seed in NOISE_SEEDS:
            runs += [("CAP", NOISE_RATIO, seed), (NOISE_METHOD, NOISE_RATIO, seed)]
    unique: dict[tuple[str, float, int], tuple[str, float, int, int]] = {}
    for method, ratio, seed in runs:
        threads = args.protocol.threads
        if method == NOISE_METHOD:
            threads = 1 if threads > 1 else 2
        unique.setdefault(stored_key(method, ratio, seed), (method, ratio, seed, threads))
    return list(unique.values())


def load_results(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(protocol record, rows)`` of a results file (a bare list of rows is accepted)."""
    data = json.loads(path.read_text())
    protocol, rows = (
        ({}, data) if isinstance(data, list) else (data.get("protocol", {}), data["rows"])
    )
    return protocol, [upgrade_row(r, protocol.get("warmup_epochs")) for r in rows]


def upgrade_row(row: dict[str, Any], warmup_epochs: int | None) -> dict[str, Any]:
    """A row of an older file in today's form: its ``tested_epoch`` renamed ``selected_epoch``
    and ``in_warmup`` added from it (rows with neither are returned unchanged); a "CSSA w/o
    label-specific" row without ``method_options`` kept the alignment: it is the many-to-one
    row."""
    if row.get("method") == "CSSA w/o label-specific" and "method_options" not in row:
        row = {**row, "method": MANY_TO_ONE}
    if "tested_epoch" in row and "selected_epoch" not in row:
        row = {("selected_epoch" if k == "tested_epoch" else k): v for k, v in row.items()}
    if "selected_epoch" in row and "in_warmup" not in row:
        row = {**row, "in_warmup": in_warmup(row["selected_epoch"], warmup_epochs)}
    return row


def save_results(path: Path, protocol: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=1) + "\n")
    tmp.replace(path)


def protocol_record(protocol: Protocol, command: str, world_root: str) -> dict[str, Any]:
    import torch

    return {
        **dataclasses.asdict(protocol),
        "data_module": DATA_MODULE,
        "world_root": world_root,
        "commands": [command],
        "torch": torch.__version__,
    }


def merge_protocol(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The record of a resumed file: the protocol must not have changed; commands accumulate.
    A field a record lacks was added to ``Protocol`` after it was written, when the code did
    what the field's default does: it counts as the default."""
    defaults = dataclasses.asdict(Protocol())
    changed = {
        k: (old.get(k, default), new.get(k, default))
        for k, default in defaults.items()
        if old.get(k, default) != new.get(k, default)
    }
    if changed:
        raise SystemExit(f"--resume with a different protocol than the file's: {changed}")
    return {**new, "commands": [*old.get("commands", []), *new["commands"]]}


def merge_results(paths: Sequence[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One protocol record and the rows of several result files; a (method, ratio, seed)
    present in two files, or a protocol that differs, is an error."""
    protocol: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, float, int], Path] = {}
    for path in paths:
        file_protocol, file_rows = load_results(path)
        protocol = merge_protocol(protocol, file_protocol) if protocol else file_protocol
        for row in file_rows:
            key = row_key(row)
            if key in seen:
                raise SystemExit(f"{path}: run {key} is also in {seen[key]}")
            seen[key] = path
            rows.append(row)
    return protocol, rows


# -- summary: pure functions of the rows -------------------------------------------------------
def in_column(row: dict[str, Any], ratio: float) -> bool:
    """Whether a row counts in the column of ``ratio`` (ratio-free methods count in all)."""
    return row["method"] in RATIO_FREE or math.isclose(row["labeled_ratio"], ratio)


def values_by_seed(
    rows: Iterable[dict[str, Any]], method: str, ratio: float, key: str = "test_mAP"
) -> dict[int, float]:
    """``{seed: value}`` of one method in one ratio column (missing values left out)."""
    return {
        r["seed"]: r[key]
        for r in rows
        if r["method"] == method and in_column(r, ratio) and r.get(key) is not None
    }


def mean_std(values: Sequence[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value); ``None`` for no values."""
    if not values:
        return None
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), spread


def paired_differences(
    rows: Sequence[dict[str, Any]], a: str, b: str, ratio: float, key: str = "test_mAP"
) -> dict[int, float]:
    """``{seed: a - b}`` over the seeds both have; a seed-free method pairs with every seed."""
    va, vb = values_by_seed(rows, a, ratio, key), values_by_seed(rows, b, ratio, key)
    if a in SEED_FREE and va:
        va = dict.fromkeys(vb or va, next(iter(va.values())))
    if b in SEED_FREE and vb:
        vb = dict.fromkeys(va or vb, next(iter(vb.values())))
    return {s: va[s] - vb[s] for s in sorted(va.keys() & vb.keys())}


@dataclass(frozen=True)
class Difference:
    mean: float
    std: float
    positive: int
    n: int

    def __str__(self) -> str:
        return f"{self.mean:+.2f} ± {self.std:.2f} ({self.positive}/{self.n} seeds > 0)"


def summarise_difference(differences: dict[int, float]) -> Difference | None:
    stats = mean_std(list(differences.values()))
    if stats is None:
        return None
    positive = sum(d > 0 for d in differences.values())
    return Difference(stats[0], stats[1], positive, len(differences))


def comparisons(ratios: Sequence[float]) -> list[tuple[str, str, list[float]]]:
    """(a, b, ratios) of table B: a - b at each of those ratios."""
    main = [
        ("CAP", "supervised"),
        ("CAP", "supervised+EMA"),
        ("CSSA", "supervised+EMA"),
        ("CSSA", "CAP"),
        ("CSSA", "supervised+EMA+label-specific"),
        ("D2L", "supervised+EMA"),
        ("D2L", "CAP"),
        (CAP_PRIOR, "supervised"),
        (CAP_PRIOR, "supervised+EMA"),
        (CAP_PRIOR, "CAP"),
        (CSSA_PRIOR, "supervised+EMA"),
        (CSSA_PRIOR, CAP_PRIOR),
        (CSSA_PRIOR, "supervised+EMA+label-specific"),
        (CSSA_PRIOR, "CSSA"),
        ("supervised+EMA+label-specific", "supervised+EMA"),
        ("fully supervised", "supervised+EMA"),
        ("supervised+EMA", "zero-shot"),
    ]
    main += [(ablation, base) for base in ABLATED for ablation in ablations_of(base)]
    return [(a, b, list(ratios)) for a, b in main]


# -- tested weights selected inside the warm-up ------------------------------------------------
WARMUP_MARK = "†"


def warmup_seeds(rows: Iterable[dict[str, Any]], method: str, ratio: float) -> set[int]:
    """Seeds whose row of ``method`` in the ``ratio`` column tested weights selected inside the
    warm-up."""
    return {
        r["seed"]
        for r in rows
        if r["method"] == method and in_column(r, ratio) and r.get("in_warmup")
    }


def warmup_flag(flagged: int, total: int) -> str:
    """`` †k/n`` after an entry that k of its n seeds selected inside the warm-up, else ``""``."""
    return f" {WARMUP_MARK}{flagged}/{total}" if flagged else ""


def difference_entry(rows: Sequence[dict[str, Any]], a: str, b: str, ratio: float) -> str:
    """``a - b`` paired over seeds at ``ratio``, flagged with the seeds where either side was
    selected inside the warm-up; ``–`` without pairs."""
    differences = paired_differences(rows, a, b, ratio)
    d = summarise_difference(differences)
    if d is None:
        return "–"
    flagged = (warmup_seeds(rows, a, ratio) | warmup_seeds(rows, b, ratio)) & differences.keys()
    return str(d) + warmup_flag(len(flagged), d.n)


# -- calibration targets of the synthetic world ------------------------------------------------
@dataclass(frozen=True)
class Check:
    target: str
    value: str
    met: bool | None  # None: not enough rows


def _all(conditions: Iterable[bool | None]) -> bool | None:
    """Three-valued AND: ``False`` if any is, else ``None`` if any is unknown, else ``True``."""
    values = list(conditions)
    if False in values:
        return False
    return None if None in values else True


def difference_check(
    rows: Sequence[dict[str, Any]],
    a: str,
    b: str,
    ratio: float,
    minimum: float,
    *,
    every_seed: bool = False,
    target: str | None = None,
) -> Check:
    """Target ``a - b >= minimum`` on the paired mean at ``ratio`` (and ``> 0`` on every seed with
    ``every_seed``)."""
    if target is None:
        target = f"{_name(a)} − {_name(b)} at {ratio:.0%} ≥ {minimum:+.1f}"
        target += ", > 0 on every seed" if every_seed else ""
    d = summarise_difference(paired_differences(rows, a, b, ratio))
    if d is None:
        return Check(target, "–", None)
    met = d.mean >= minimum and (not every_seed or d.positive == d.n)
    return Check(target, difference_entry(rows, a, b, ratio), met)


def selected_after_warmup_check(
    rows: Sequence[dict[str, Any]], method: str, ratio: float, seeds: Iterable[int]
) -> Check:
    """Target: ``method``'s selected epoch after the warm-up on every one of ``seeds``
    (a seed without its row or with an unknown epoch: not enough rows)."""
    selected = rows_by_seed(rows, method, ratio)
    seeds = sorted(seeds)
    target = f"{_name(method)}'s selected epoch after the warm-up on every seed"
    if not seeds:
        return Check(target, "–", None)
    value = f"{_name(method)} selected epochs " + ", ".join(
        _epoch_entry(selected.get(s, {})) for s in seeds
    )
    flags = [selected.get(s, {}).get("in_warmup") for s in seeds]
    return Check(target, value, _all(None if f is None else not f for f in flags))


def joint_check(*checks: Check) -> Check:
    """One target made of several: met when every part is (three-valued)."""
    return Check(
        ", and ".join(c.target for c in checks),
        "; ".join(c.value for c in checks),
        _all(c.met for c in checks),
    )


def calibration_checks(rows: Sequence[dict[str, Any]]) -> list[Check]:
    """The calibration targets of the synthetic world on teacher test mAP ("supervised": its
    student; paired seeds), met, missed or without enough rows, with their numbers."""
    checks = [
        difference_check(rows, "fully supervised", "supervised+EMA", 0.1, 8.0),
        difference_check(
            rows,
            "fully supervised",
            "zero-shot",
            0.1,
            12.0,
            target="zero-shot ≤ fully supervised − 12 (fully supervised − zero-shot ≥ +12.0)",
        ),
    ]
    # The CAP targets, for CAP and (where it ran) for the CAP variant the benchmark ships.
    caps = ["CAP"]
    if any(r["method"] == CAP_PRIOR for r in rows):
        caps.append(CAP_PRIOR)
    for cap in caps:
        checks += [difference_check(rows, cap, "supervised", r, 3.0) for r in (0.05, 0.1)]
        for ratio, minimum in ((0.05, 1.5), (0.1, 1.0)):
            seeds = paired_differences(rows, cap, "supervised+EMA", ratio).keys()
            checks.append(
                joint_check(
                    difference_check(rows, cap, "supervised+EMA", ratio, minimum, every_seed=True),
                    selected_after_warmup_check(rows, cap, ratio, seeds),
                )
            )
    return checks


# -- CSSA's goals (CSSA against CAP and against its own architecture without unlabeled images) --
# (CAP-like, CSSA-like) methods compared with each other: plain, and both with the shipped
# pseudo-label options (the prior where the start network knows the class, no unlabeled loss
# where it does not).
CSSA_PAIRS = (("CAP", "CSSA"), (CAP_PRIOR, CSSA_PRIOR))
CSSA_MIN_GAIN = 1.5  # teacher test mAP, paired, every seed
PSEUDO_MIN_GAIN = 2.0  # precision points at CAP's recall


def cssa_checks(rows: Sequence[dict[str, Any]]) -> list[Check]:
    """CSSA's goals for every (CAP-like, CSSA-like) pair with rows of the CSSA side, at every
    ratio of the rows: CSSA − CAP and CSSA − supervised+EMA+label-specific ≥ +1.5 on every seed,
    and CSSA's pseudo-labels ≥ +2 points more precise than CAP's at CAP's recall (at the epoch
    CSSA's tested weights come from)."""
    checks = []
    present = {r["method"] for r in rows}
    for cap, cssa in CSSA_PAIRS:
        if cssa not in present:
            continue
        for ratio in ratios_in(rows):
            checks.append(difference_check(rows, cssa, cap, ratio, CSSA_MIN_GAIN, every_seed=True))
            checks.append(
                difference_check(
                    rows,
                    cssa,
                    "supervised+EMA+label-specific",
                    ratio,
                    CSSA_MIN_GAIN,
                    every_seed=True,
                )
            )
            checks.append(pseudo_precision_check(rows, cap, cssa, ratio))
    return checks


def pseudo_precision_check(
    rows: Sequence[dict[str, Any]], cap: str, cssa: str, ratio: float
) -> Check:
    target = (
        f"{cssa}'s pseudo-label precision − {cap}'s at {cap}'s recall, at the selected epoch, "
        f"{ratio:.0%} ≥ {PSEUDO_MIN_GAIN:+.1f}"
    )
    d = summarise_difference(pseudo_gain_at_selected_epoch(rows, cap, cssa, ratio))
    if d is None:
        return Check(target, "–", None)
    return Check(target, str(d), d.mean >= PSEUDO_MIN_GAIN)


def pseudo_gain_at_selected_epoch(
    rows: Sequence[dict[str, Any]], cap: str, cssa: str, ratio: float
) -> dict[int, float]:
    """``{seed: precision(cssa) − precision(cap)}`` at cap's recall, in the epoch whose weights
    were tested for ``cssa`` in that seed."""
    at_recall = pseudo_at_cap_recall(rows, cssa, ratio, reference=cap)
    gains = {}
    for seed, row in rows_by_seed(rows, cssa, ratio).items():
        pair = at_recall.get(row.get("selected_epoch"), {}).get(seed)
        if pair is not None:
            cap_precision, cssa_precision = pair
            gains[seed] = cssa_precision - cap_precision
    return gains


def noise_floor(rows: Sequence[dict[str, Any]]) -> dict[int, tuple[float, float, float]]:
    """``{seed: (CAP, CAP with the other thread count, |difference|)}`` of teacher test mAP at 10 %."""
    two = values_by_seed(rows, "CAP", NOISE_RATIO)
    one = values_by_seed(rows, NOISE_METHOD, NOISE_RATIO)
    return {s: (two[s], one[s], abs(two[s] - one[s])) for s in sorted(two.keys() & one.keys())}


def epoch_curves(
    rows: Sequence[dict[str, Any]], method: str, ratio: float, keys: Sequence[str]
) -> dict[int, dict[str, tuple[float, float]]]:
    """``{epoch: {key: (mean, std) over seeds}}`` from the rows' per-epoch histories."""
    by_epoch: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        if row["method"] != method or not in_column(row, ratio):
            continue
        for entry in row.get("history") or []:
            for key in keys:
                if entry.get(key) is not None:
                    by_epoch.setdefault(entry["epoch"], {}).setdefault(key, []).append(entry[key])
    return {
        epoch: {key: mean_std(v) for key, v in values.items()}
        for epoch, values in sorted(by_epoch.items())
    }


def validation_key(method: str) -> str:
    """The history key of a method's headline val mAP: the teacher's, where it has one."""
    return "val/mAP" if method in NO_TEACHER else "val/mAP_teacher"


def validation_curves(
    rows: Sequence[dict[str, Any]], ratio: float
) -> dict[str, dict[int, tuple[float, float]]]:
    """``{method: {epoch: (mean, std) over seeds}}`` of the headline val mAP of every trained
    method with histories in the ``ratio`` column."""
    curves = {}
    for method in methods_in(rows):
        key = validation_key(method)
        by_epoch = epoch_curves(rows, method, ratio, [key])
        if method not in UNTRAINED and by_epoch:
            curves[method] = {epoch: values[key] for epoch, values in by_epoch.items()}
    return curves


def seed_curve(row: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of ``key`` in one row's history."""
    entries = [e for e in row.get("history") or [] if e.get(key) is not None]
    return [e["epoch"] for e in entries], [e[key] for e in entries]


def methods_in(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Methods present, in the order of ``METHODS`` (unknown ones last)."""
    present = {r["method"] for r in rows}
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))


def ratios_in(rows: Sequence[dict[str, Any]]) -> list[float]:
    return sorted({r["labeled_ratio"] for r in rows if r["method"] not in RATIO_FREE})


def _name(method: str) -> str:
    """A method as tables name it: a trained method without a teacher says that its values are
    its student's."""
    return f"{method} (student)" if method in NO_TEACHER - UNTRAINED else method


def _epoch_entry(row: dict[str, Any]) -> str:
    """A row's selected epoch, marked when inside the warm-up (``?`` when unknown)."""
    epoch = row.get("selected_epoch")
    return "?" if epoch is None else f"{epoch}{WARMUP_MARK if row.get('in_warmup') else ''}"


def _warmup_entry(rows: Sequence[dict[str, Any]], method: str, ratio: float, key: str) -> str:
    """The warm-up flag of a mean over the seeds that have ``key``."""
    seeds = values_by_seed(rows, method, ratio, key).keys()
    return warmup_flag(len(warmup_seeds(rows, method, ratio) & seeds), len(seeds))


def _fmt(stats: tuple[float, float] | None) -> str:
    return "–" if stats is None else f"{stats[0]:.2f} ± {stats[1]:.2f}"


def _cell(rows, method: str, ratio: float, key: str) -> str:
    return _fmt(mean_std(list(values_by_seed(rows, method, ratio, key).values())))


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


def table_map(rows: Sequence[dict[str, Any]]) -> str:
    """Table A: test mAP teacher / student and val mAP (teacher) per method and ratio."""
    ratios = ratios_in(rows)
    header = ["method"]
    for ratio in ratios:
        header += [f"test mAP {ratio:.0%}: teacher / student", f"val mAP {ratio:.0%}"]
    body = []
    for method in methods_in(rows):
        line = [_name(method)]
        for ratio in ratios:
            teacher = _cell(rows, method, ratio, "test_mAP")
            student = (
                "(no teacher)"
                if method in NO_TEACHER
                else _cell(rows, method, ratio, "test_mAP_student")
            )
            flag = _warmup_entry(rows, method, ratio, "test_mAP")
            line += [f"{teacher} / {student}{flag}", _cell(rows, method, ratio, "val_mAP")]
        body.append(line)
    return _table(header, body)


def table_differences(rows: Sequence[dict[str, Any]]) -> str:
    """Table B: paired (same seed) differences of teacher test mAP."""
    ratios = ratios_in(rows)
    body = []
    for a, b, at in comparisons(ratios):
        cells = [difference_entry(rows, a, b, r) if r in at else "–" for r in ratios]
        if any(c != "–" for c in cells):
            body.append([f"{_name(a)} − {_name(b)}", *cells])
    return _table(["difference", *(f"{r:.0%} labels" for r in ratios)], body)


VERDICTS = {True: "met", False: "**missed**", None: "not enough rows"}


def checks_table(checks: Sequence[Check], first_column: str = "target") -> str:
    """Checks as a markdown table: target (or goal), value and verdict."""
    return _table(
        [first_column, "value", "verdict"], [[c.target, c.value, VERDICTS[c.met]] for c in checks]
    )


def table_checks(rows: Sequence[dict[str, Any]]) -> str:
    return checks_table(calibration_checks(rows))


def rows_by_seed(
    rows: Iterable[dict[str, Any]], method: str, ratio: float
) -> dict[int, dict[str, Any]]:
    """``{seed: row}`` of one method in one ratio column, in seed order."""
    chosen = [r for r in rows if r["method"] == method and in_column(r, ratio)]
    return {r["seed"]: r for r in sorted(chosen, key=lambda r: r["seed"])}


def table_selected_epochs(rows: Sequence[dict[str, Any]]) -> str | None:
    """The epoch whose weights were tested, per method, ratio and seed (seed order)."""
    ratios = ratios_in(rows)
    body = []
    for method in methods_in(rows):
        if method in UNTRAINED:
            continue
        by_ratio = [rows_by_seed(rows, method, r) for r in ratios]
        if any(by_ratio):
            body.append(
                [
                    _name(method),
                    *(", ".join(map(_epoch_entry, seeds.values())) or "–" for seeds in by_ratio),
                ]
            )
    if not body:
        return None
    return _table(["method", *(f"{r:.0%} labels, per seed" for r in ratios)], body)


def table_curves(rows: Sequence[dict[str, Any]]) -> str | None:
    """Headline val mAP per epoch, one line per (method, ratio, seed): the numbers behind
    ``curves.png``, as the pilot log quotes them. ``None`` without histories."""
    body = []
    for ratio in ratios_in(rows):
        for method in methods_in(rows):
            if method in UNTRAINED:
                continue
            for row in rows_by_seed(rows, method, ratio).values():
                epochs, values = seed_curve(row, validation_key(method))
                if values:
                    body.append((epochs, [_name(method), f"{ratio:.0%}", str(row["seed"])], values))
    if not body:
        return None
    last = max(e for epochs, _, _ in body for e in epochs)
    header = ["method", "ratio", "seed", *(str(e) for e in range(last + 1))]
    lines = []
    for epochs, key, values in body:
        cells = dict(zip(epochs, values, strict=True))
        lines.append([*key, *(f"{cells[e]:.2f}" if e in cells else "" for e in range(last + 1))])
    return _table(header, lines)


def table_noise(rows: Sequence[dict[str, Any]]) -> str | None:
    floor = noise_floor(rows)
    if not floor:
        return None
    marked = {m: warmup_seeds(rows, m, NOISE_RATIO) for m in ("CAP", NOISE_METHOD)}

    def entry(method: str, seed: int, value: float) -> str:
        return f"{value:.2f}{WARMUP_MARK if seed in marked[method] else ''}"

    body = [
        [str(s), entry("CAP", s, a), entry(NOISE_METHOD, s, b), f"{d:.2f}"]
        for s, (a, b, d) in floor.items()
    ]
    diffs = [d for _, _, d in floor.values()]
    body.append(["mean", "", "", f"{statistics.mean(diffs):.2f} (max {max(diffs):.2f})"])
    return _table(["seed", "CAP", NOISE_METHOD, "|difference|"], body)


PSEUDO_KEYS = ("pseudo/precision", "pseudo/recall")
PSEUDO_METHODS = ("CAP", "CSSA", CAP_PRIOR, CSSA_PRIOR)


def pseudo_ratio(rows: Sequence[dict[str, Any]]) -> float:
    """The labeled ratio whose pseudo-labels the summary shows: 10 % where rows have them there
    (the ablations' ratio), else the first ratio that has them."""
    with_curves = [
        r
        for r in [0.1, *ratios_in(rows)]
        if any(epoch_curves(rows, m, r, PSEUDO_KEYS) for m in PSEUDO_METHODS)
    ]
    return with_curves[0] if with_curves else 0.1


def table_pseudo(rows: Sequence[dict[str, Any]], ratio: float = 0.1) -> str | None:
    methods = [m for m in PSEUDO_METHODS if epoch_curves(rows, m, ratio, PSEUDO_KEYS)]
    if not methods:
        return None
    curves = {m: epoch_curves(rows, m, ratio, PSEUDO_KEYS) for m in methods}
    epochs = sorted({e for c in curves.values() for e in c})
    header = ["epoch"] + [f"{m} {k.split('/')[1]}" for m in methods for k in PSEUDO_KEYS]
    body = [
        [str(e)] + [_fmt(curves[m].get(e, {}).get(k)) for m in methods for k in PSEUDO_KEYS]
        for e in epochs
    ]
    return _table(header, body)


RECALL_LEVELS = (40, 50, 60, 70, 80)  # cssa_lightning.methods.monitoring.MONITORED_RECALLS, in %


def precision_at_recall(entry: dict[str, Any], recall: float) -> float | None:
    """Precision (%) of an epoch's remembered teacher scores at ``recall`` (%), interpolated
    linearly between the logged ``pseudo/precision@R`` levels (clamped at the ends)."""
    points = [(r, entry.get(f"pseudo/precision@{r}")) for r in RECALL_LEVELS]
    points = [(r, v) for r, v in points if v is not None]
    if not points:
        return None
    if recall <= points[0][0]:
        return points[0][1]
    for (r0, v0), (r1, v1) in zip(points, points[1:], strict=False):
        if recall <= r1:
            return v0 + (v1 - v0) * (recall - r0) / (r1 - r0)
    return points[-1][1]


def pseudo_at_cap_recall(
    rows: Sequence[dict[str, Any]], method: str, ratio: float, reference: str = "CAP"
) -> dict[int, dict[int, tuple[float, float]]]:
    """``{epoch: {seed: (reference, method)}}`` precision of the remembered teacher scores at
    the recall the reference's (CAP's) pseudo-labels reached in that epoch and seed: both
    teachers compared at the same recall, whatever their thresholds."""
    histories = {
        (r["method"], r["seed"]): {e["epoch"]: e for e in r.get("history") or []}
        for r in rows
        if r["method"] in (reference, method) and in_column(r, ratio)
    }
    out: dict[int, dict[int, tuple[float, float]]] = {}
    for (name, seed), cap in histories.items():
        other = histories.get((method, seed))
        if name != reference or other is None:
            continue
        for epoch, entry in cap.items():
            recall = entry.get("pseudo/recall")
            if recall is None or epoch not in other:
                continue
            a = precision_at_recall(entry, recall)
            b = precision_at_recall(other[epoch], recall)
            if a is not None and b is not None:
                out.setdefault(epoch, {})[seed] = (a, b)
    return dict(sorted(out.items()))


def table_pseudo_at_cap_recall(
    rows: Sequence[dict[str, Any]], ratio: float = 0.1, cap: str = "CAP", cssa: str = "CSSA"
) -> str | None:
    values = pseudo_at_cap_recall(rows, cssa, ratio, reference=cap)
    if not values:
        return None
    body = []
    for epoch, seeds in values.items():
        differences = {s: b - a for s, (a, b) in seeds.items()}
        body.append(
            [
                str(epoch),
                _fmt(mean_std([a for a, _ in seeds.values()])),
                _fmt(mean_std([b for _, b in seeds.values()])),
                str(summarise_difference(differences)),
            ]
        )
    return _table(["epoch", cap, cssa, f"{cssa} − {cap} (paired)"], body)


def table_f1(rows: Sequence[dict[str, Any]]) -> str:
    ratios = ratios_in(rows)
    body = [
        [_name(m)]
        + [
            f"{_cell(rows, m, r, 'test_CF1')} / {_cell(rows, m, r, 'test_OF1')}"
            + _warmup_entry(rows, m, r, "test_CF1")
            for r in ratios
        ]
        for m in methods_in(rows)
    ]
    return _table(["method", *(f"CF1 / OF1 {r:.0%}" for r in ratios)], body)


def _tested(protocol: dict[str, Any]) -> str:
    if protocol.get("test_weights") == "best":
        return (
            "the epoch with the best validation mAP of the teacher, validated every epoch: the "
            "same model selection on the val split for every method; the test split selects "
            "nothing"
        )
    return "the last epoch"


def table_caption_classes(rows: Sequence[dict[str, Any]], world: str) -> str | None:
    """Mean test AP (teacher) over the classes the world's captions never or rarely name
    (zero-shot CLIP knows them little or not at all) and over the others, per method and
    ratio; ``None`` for a world without such classes or rows without per-class AP."""
    from cssa_lightning.synthetic.world import WORLD_VERSIONS

    version = WORLD_VERSIONS.get(world)
    rare = set(version.captions.rare_classes) if version else set()
    if not rare or not any(r.get("test_AP_per_class") for r in rows):
        return None

    def split_means(row: dict[str, Any]) -> tuple[float, float] | None:
        ap = row.get("test_AP_per_class") or {}
        unnamed = [v for k, v in ap.items() if k in rare]
        named = [v for k, v in ap.items() if k not in rare]
        if not unnamed or not named:
            return None
        return statistics.mean(unnamed), statistics.mean(named)

    ratios = ratios_in(rows)
    body = []
    for method in methods_in(rows):
        cells = []
        for ratio in ratios:
            means = [m for r in rows_by_seed(rows, method, ratio).values() if (m := split_means(r))]
            cells.append(
                f"{_fmt(mean_std([u for u, _ in means]))} / {_fmt(mean_std([n for _, n in means]))}"
                if means
                else "–"
            )
        if any(c != "–" for c in cells):
            body.append([_name(method), *cells])
    if not body:
        return None
    header = ["method", *(f"{r:.0%}: never named / named" for r in ratios)]
    return _table(header, body)


def table_cssa_checks(rows: Sequence[dict[str, Any]]) -> str | None:
    checks = cssa_checks(rows)
    return checks_table(checks, "goal") if checks else None


DEFAULT_RESULTS = "benchmarks/results/quality.json"


def render_markdown(
    protocol: dict[str, Any], rows: Sequence[dict[str, Any]], results: str = DEFAULT_RESULTS
) -> str:
    """``docs/results.md`` from the protocol record and the rows."""
    commands = protocol.get("commands") or ["(not recorded)"]
    fields = [f.name for f in dataclasses.fields(Protocol)]
    settings = ", ".join(f"`{k}={protocol[k]}`" for k in fields if k in protocol)
    extra = ", ".join(f"`{k}={protocol[k]}`" for k in ("data_module", "torch") if k in protocol)
    seeds = sorted({r["seed"] for r in rows if r["method"] not in SEED_FREE})
    seconds = {
        m: statistics.mean(v)
        for m in methods_in(rows)
        if (v := [r["train_seconds"] for r in rows if r["method"] == m and r["train_seconds"]])
    }
    timing = ", ".join(f"{m} {s:.0f} s" for m, s in seconds.items())
    threads = sorted({r.get("threads") for r in rows if r.get("threads") is not None})
    warmup = protocol.get("warmup_epochs", "?")
    warmup_note = (
        f"{WARMUP_MARK}k/n: k of the n seeds behind the entry tested weights selected inside "
        f"the warm-up (selected epoch < `warmup_epochs={warmup}`; 0-based epochs), where the "
        "mean-teacher methods have trained on labeled images only: such an entry compares "
        "warm-up models, not the semi-supervised phase. A single value or epoch marked "
        f"{WARMUP_MARK} was selected inside the warm-up."
    )
    # Records written before the world_version / clip fields existed ran world v2 and tiny-clip.
    world = protocol.get("world_version", "v2")
    clip = protocol.get("clip", "tiny-clip")
    parts = [
        f"# Quality on the synthetic world {world} ({clip})",
        "## Command and protocol\n\n"
        + "\n".join(f"    {c}" for c in commands)
        + "\n\nProtocol (every field as these runs had it; the defaults of later code may differ, "
        + f"so a rerun passes them as flags): {settings}.\n\n{extra}. Seeds {seeds} (split seed = run seed); "
        f"threads per run {threads}. Rows: `{results}`.",
        "## A. Test mAP (x100, mean ± std over seeds)\n\n"
        "EMA teacher / student for every method with a teacher; zero-shot and "
        '"supervised" have none: "supervised (student)" is the labeled-only student alone (no '
        "EMA), and its value in every teacher column, here and below, is that student's. Val "
        f"mAP is the teacher's, on the val split, at the selected epoch ({_tested(protocol)}). "
        "Zero-shot and fully supervised do not depend on the ratio and repeat in every column. "
        f"{warmup_note}\n\n{table_map(rows)}",
        "## B. Paired differences of teacher test mAP\n\n"
        "Same seed (so the same split) on both sides; mean ± std over seeds and how many seeds "
        "are positive. Zero-shot is one run, paired with every seed. "
        f"{WARMUP_MARK}k/n: k of the n pairs have a side selected inside the warm-up.\n\n"
        f"{table_differences(rows)}",
        "## Calibration targets\n\n"
        "The synthetic world's targets, on teacher test mAP with paired seeds.\n\n"
        f"{table_checks(rows)}",
    ]
    goals = table_cssa_checks(rows)
    if goals:
        parts.append(
            "## CSSA's goals\n\n"
            "CSSA against CAP and against its own architecture trained without unlabeled images "
            "(supervised+EMA+label-specific), teacher test mAP with paired seeds; and its "
            "pseudo-labels against CAP's at CAP's recall, in the epoch CSSA's tested weights "
            "come from. For each pair of a CAP-like and a CSSA-like method with rows.\n\n"
            f"{goals}"
        )
    classes = table_caption_classes(rows, world)
    if classes:
        parts.append(
            "## Classes the captions never name\n\n"
            f"Mean teacher test AP over the classes world {world}'s captions (and so the tiny "
            "CLIP's pre-training) never or rarely name, where zero-shot CLIP is near chance and "
            "only labels teach, and over the named classes; mean ± std over seeds.\n\n"
            f"{classes}"
        )
    selected = table_selected_epochs(rows)
    if selected:
        parts.append(
            "## Selected epochs\n\n"
            "The 0-based epoch whose weights were tested, per seed in seed order "
            f"({_tested(protocol)}); {WARMUP_MARK}: inside the warm-up (epochs 0 to "
            f"`warmup_epochs` − 1).\n\n{selected}"
        )
    if any(validation_curves(rows, ratio) for ratio in ratios_in(rows)):
        parts.append(
            "## Validation mAP per epoch\n\n"
            "Teacher val mAP (the student's for supervised) per epoch, mean ± std over seeds and "
            "each seed as a thin line; the dotted line is the end of the warm-up.\n\n"
            "![validation mAP per epoch](curves.png)\n\n"
            f"Per seed (0-based epochs):\n\n{table_curves(rows)}"
        )
    noise = table_noise(rows)
    if noise:
        parts.append(
            "## Noise floor\n\n"
            f"CAP at {NOISE_RATIO:.0%} rerun with another thread count than {protocol.get('threads')} "
            "(same seeds, all else equal): the run-to-run change of teacher test mAP with nothing "
            f"but the thread count changed.\n\n{noise}"
        )
    shown = pseudo_ratio(rows)
    pseudo = table_pseudo(rows, shown)
    if pseudo:
        parts.append(
            f"## Pseudo-label precision / recall per epoch ({shown:.0%}, mean ± std over seeds)"
            "\n\nTeacher pseudo-labels on the unlabeled stream against the hidden labels "
            f"(monitoring only).\n\n{pseudo}\n\n![pseudo-labels](pseudo_labels.png)"
        )
    for (cap, cssa), ratio in itertools.product(CSSA_PAIRS, ratios_in(rows)):
        at_recall = table_pseudo_at_cap_recall(rows, ratio, cap, cssa)
        if not at_recall:
            continue
        parts.append(
            f"## Pseudo-label precision of {cssa} at {cap}'s recall ({ratio:.0%})\n\n"
            "Precision (%) of each teacher's remembered scores on the unlabeled images at the "
            "recall CAP's pseudo-labels reached in the same epoch and seed (interpolated "
            "between the logged `pseudo/precision@R` levels): the two teachers compared at equal "
            "recall, whatever their thresholds. The paper's claim is that CSSA's pseudo-labels "
            f"are better; a positive difference supports it.\n\n{at_recall}"
        )
    parts.append(f"## Test CF1 / OF1 (teacher, threshold 0.5)\n\n{table_f1(rows)}")
    parts.append(
        f"Mean training wall time per run: {timing or '–'}.\n\n"
        "![teacher test mAP against labeled ratio](quality.png)"
    )
    return "\n\n".join(parts) + "\n"


# -- plots -------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, out_png: Path) -> None:
    figure.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)
    _pyplot().close(figure)


def _colors(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """One colour per method, the same in every figure of the same rows."""
    return {method: f"C{index % 10}" for index, method in enumerate(methods_in(rows))}


def _plot_mean_band(axis, curve: dict[int, tuple[float, float]], **style) -> None:
    """A ``{epoch: (mean, std)}`` curve: the mean with markers, a band of one std around it."""
    epochs = list(curve)
    means = [curve[e][0] for e in epochs]
    stds = [curve[e][1] for e in epochs]
    (line,) = axis.plot(epochs, means, marker="o", **style)
    axis.fill_between(
        epochs,
        [m - s for m, s in zip(means, stds, strict=True)],
        [m + s for m, s in zip(means, stds, strict=True)],
        color=line.get_color(),
        alpha=0.2,
    )


def _epoch_axis(axis) -> None:
    axis.set_xlabel("epoch")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.grid(alpha=0.3)


def plot_quality(rows: Sequence[dict[str, Any]], out_png: Path) -> None:
    plt = _pyplot()
    ratios = ratios_in(rows)
    colors = _colors(rows)
    figure, axis = plt.subplots(figsize=(8.5, 4.5))
    for method in methods_in(rows):
        color = colors[method]
        if method in RATIO_FREE:
            stats = mean_std(
                list(values_by_seed(rows, method, ratios[0] if ratios else 0).values())
            )
            if stats:
                axis.axhline(stats[0], linestyle="--", color=color, label=method)
            continue
        points = [
            (100 * r, s)
            for r in ratios
            if (s := mean_std(list(values_by_seed(rows, method, r).values())))
        ]
        if points:
            xs = [x for x, _ in points]
            axis.errorbar(
                xs,
                [s[0] for _, s in points],
                yerr=[s[1] for _, s in points],
                marker="o",
                capsize=3,
                color=color,
                label=method,
            )
    axis.set_xticks([100 * r for r in ratios])
    axis.set_xlabel("labeled images (%)")
    axis.set_ylabel("teacher test mAP")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(figure, out_png)


def plot_pseudo(rows: Sequence[dict[str, Any]], out_png: Path, ratio: float = 0.1) -> bool:
    curves = {m: epoch_curves(rows, m, ratio, PSEUDO_KEYS) for m in PSEUDO_METHODS}
    curves = {m: c for m, c in curves.items() if c}
    if not curves:
        return False
    figure, axes = _pyplot().subplots(1, 2, figsize=(9, 3.5), sharex=True)
    for axis, key in zip(axes, PSEUDO_KEYS, strict=True):
        for method, curve in curves.items():
            _plot_mean_band(axis, {e: v[key] for e, v in curve.items() if key in v}, label=method)
        axis.set_title(f"{key} ({ratio:.0%} labels)")
        _epoch_axis(axis)
        axis.legend(fontsize=8)
    _save(figure, out_png)
    return True


def plot_curves(rows: Sequence[dict[str, Any]], out_png: Path, warmup_epochs: int | None) -> bool:
    """Validation mAP per epoch (teacher where there is one), one panel per labeled ratio:
    the mean over seeds with a band of one std, each seed as a thin line, and the end of the
    warm-up as a vertical line. ``False`` (nothing written) without any history."""
    ratios = ratios_in(rows)
    curves = {ratio: validation_curves(rows, ratio) for ratio in ratios}
    if not any(curves.values()):
        return False
    colors = _colors(rows)
    figure, axes = _pyplot().subplots(
        1, len(ratios), figsize=(2.5 + 4 * len(ratios), 4), sharey=True, squeeze=False
    )
    for axis, ratio in zip(axes[0], ratios, strict=True):
        for method, curve in curves[ratio].items():
            for row in rows_by_seed(rows, method, ratio).values():
                epochs, values = seed_curve(row, validation_key(method))
                axis.plot(epochs, values, color=colors[method], alpha=0.3, linewidth=0.7)
            _plot_mean_band(axis, curve, color=colors[method], label=method)
        if warmup_epochs:
            axis.axvline(warmup_epochs - 0.5, color="black", linestyle=":", label="end of warm-up")
        axis.set_title(f"{ratio:.0%} labels")
        _epoch_axis(axis)
    axes[0][0].set_ylabel("val mAP (teacher; supervised: student)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(figure, out_png)
    return True


def summarise(
    protocol: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    docs: Path,
    results: str = DEFAULT_RESULTS,
) -> str:
    """Write ``results.md``, ``quality.png``, ``curves.png`` and ``pseudo_labels.png`` under
    ``docs`` (the last two when the rows have per-epoch histories); ``results`` is the rows'
    file as the markdown names it."""
    markdown = render_markdown(protocol, rows, results)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "results.md").write_text(markdown)
    plot_quality(rows, docs / "quality.png")
    plot_curves(rows, docs / "curves.png", protocol.get("warmup_epochs"))
    plot_pseudo(rows, docs / "pseudo_labels.png", pseudo_ratio(rows))
    return markdown


# -- command line ------------------------------------------------------------------------------
def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# Protocol fields for which "none" is one of the option's values, not "leave it to the task":
# their flag takes "default" for that (every other optional flag takes "none" or "default").
NONE_IS_A_VALUE = {"alignment_unlabeled"}


def _optional(kind, none_is_a_value: bool = False):
    def parse(text: str):
        unset = ("default",) if none_is_a_value else ("none", "default")
        return None if text.lower() in unset else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_protocol_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``Protocol`` field; absent flags stay absent (so --quick can fill them)."""
    group = parser.add_argument_group("protocol (defaults: the Protocol dataclass)")
    for field in dataclasses.fields(Protocol):
        default = field.default
        name = str(field.type)
        kind = {"int": int, "float": float, "str": str, "bool": _bool}[name.split(" ")[0]]
        if "None" in name:
            kind = _optional(kind, field.name in NONE_IS_A_VALUE)
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=kind,
            default=argparse.SUPPRESS,
            help=f"default {default}",
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=None,
        help=f"main-grid methods (default {MAIN_METHODS})",
    )
    parser.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=None,
        help=f"main-grid labeled ratios (default {MAIN_RATIOS})",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help=f"main-grid seeds (default {MAIN_SEEDS})"
    )
    parser.add_argument(
        "--main", action=argparse.BooleanOptionalAction, default=True, help="run the main grid"
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help=f"add the ablations of --ablation-of at --ablation-ratio, seeds {ABLATION_SEEDS}",
    )
    parser.add_argument(
        "--ablation-of",
        choices=ABLATED,
        default="CSSA",
        help="the method whose switches the ablations turn off, one each (default CSSA)",
    )
    parser.add_argument(
        "--ablation-ratio",
        type=float,
        default=ABLATION_RATIO,
        help=f"the labeled ratio of the ablations (default {ABLATION_RATIO})",
    )
    parser.add_argument(
        "--noise-floor",
        action="store_true",
        help=f"add CAP at ratio {NOISE_RATIO} with another thread count, seeds {NOISE_SEEDS}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"1 seed, 10 %%, methods {QUICK_METHODS}, {QUICK_PROTOCOL}",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of --out and skip their (method, ratio, seed)",
    )
    parser.add_argument("--world-root", default="~/.cache/cssa_lightning/world")
    parser.add_argument("--out", type=Path, default=ROOT / DEFAULT_RESULTS)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument(
        "--summarise-only", action="store_true", help="rewrite the docs from --out, train nothing"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="combine the rows of these result files (same protocol; e.g. seeds run in parallel "
        "processes) into --out and rewrite the docs, train nothing",
    )
    add_protocol_flags(parser)
    args = parser.parse_args(argv)
    names = {f.name for f in dataclasses.fields(Protocol)}
    explicit = {k: v for k, v in vars(args).items() if k in names}
    base = QUICK_PROTOCOL if args.quick else {}
    args.protocol = dataclasses.replace(Protocol(), **{**base, **explicit})
    args.methods = args.methods or (QUICK_METHODS if args.quick else MAIN_METHODS)
    args.ratios = args.ratios or ([0.1] if args.quick else MAIN_RATIOS)
    args.seeds = args.seeds or ([1] if args.quick else MAIN_SEEDS)
    return args


def _shown_path(path: Path) -> str:
    """A results file as the markdown names it: relative to the repository where it lies in it."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else path)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.merge:
        protocol, rows = merge_results(args.merge)
        save_results(args.out, protocol, rows)
        print(summarise(protocol, rows, args.docs, _shown_path(args.out)))
        return
    if args.summarise_only:
        protocol, rows = load_results(args.out)
        print(summarise(protocol, rows, args.docs, _shown_path(args.out)))
        return
    command = " ".join(
        [
            "python",
            "benchmarks/quality.py",
            *map(shlex.quote, sys.argv[1:] if argv is None else argv),
        ]
    )
    protocol = protocol_record(args.protocol, command, args.world_root)
    rows: list[dict[str, Any]] = []
    if args.resume and args.out.exists():
        old_protocol, rows = load_results(args.out)
        protocol = merge_protocol(old_protocol, protocol)
    done = {row_key(r) for r in rows}
    todo = [run for run in plan(args) if stored_key(*run[:3]) not in done]
    print(f"{len(todo)} runs to do, {len(done)} rows kept", file=sys.stderr, flush=True)
    start = time.perf_counter()
    for index, (method, ratio, seed, threads) in enumerate(todo, 1):
        print(
            f"[{index}/{len(todo)}] {method} ratio={ratio} seed={seed} threads={threads}",
            file=sys.stderr,
            flush=True,
        )
        row = run_one(args.protocol, method, ratio, seed, args.world_root, threads)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
        save_results(args.out, protocol, rows)
    save_results(args.out, protocol, rows)
    print(summarise(protocol, rows, args.docs, _shown_path(args.out)))
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
