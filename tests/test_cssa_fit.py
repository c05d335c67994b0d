"""CSSA and the CAP baseline trained through the real CLI on tiny data."""

import contextlib
import json
import shutil

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback

from cssa_lightning.commands.cli import build_cli
from cssa_lightning.data.records import split_labeled
from cssa_lightning.methods.cssa import CSSATask

from .conftest import fit_config
from .test_cli import RecordMetrics

FAST = {
    "warmup_epochs": 1,
    "rampup_epochs": 0.5,
    "context": {"num_contexts": 2},
    "attention_heads": 4,
}
WEIGHTED = {"unlabeled": "weighted"}  # every pseudo-positive aligned: never 0 here
LOSS_KEYS = [
    "train/loss_sup",
    "train/loss_align",
    "train/loss_align_u",
    "train/loss_cons",
    "train/loss_ctx",
    "train/loss_ctx_u",
]
CAP_LOSS_KEYS = ["train/loss_sup", "train/loss_cons"]


class ThresholdTrace(Callback):
    """The thresholds after each training batch."""

    trace: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ThresholdTrace.trace.append((trainer.current_epoch, pl_module.thresholds.clone()))


def run_fit(tmp_path, folders, clip_dir, model_args, name="run", extra=()):
    out = tmp_path / name
    out.mkdir()
    config = fit_config(out, folders, clip_dir, "cssa_lightning.CSSATask", model_args)
    cli = build_cli(["fit", "--config", str(config), "--test_after_fit=false", *extra])
    return cli, dict(RecordMetrics.fit_metrics)


def test_cssa_fit_logs_every_term(tmp_path, image_folders, tiny_clip_dir):
    # "weighted": every pseudo-positive aligns, so the unlabeled alignment term is never 0 here
    # (the default, "confident", may keep none on this tiny data).
    options = {**FAST, "alignment": WEIGHTED}
    cli, metrics = run_fit(tmp_path, image_folders, tiny_clip_dir, options)
    model = cli.model
    assert isinstance(model, CSSATask)
    for key in [
        *LOSS_KEYS,
        "train/mask_ratio",
        "val/mAP",
        "val/mAP_teacher",
        "val/CF1",
        "val/OF1",
        "pseudo/precision",
        "pseudo/recall",
        "pseudo/F1",
        "pseudo/threshold_mean",
        "pseudo/threshold_min",
        "pseudo/threshold_max",
    ]:
        assert key in metrics and torch.isfinite(metrics[key]), key
    # After warm-up every term is active.
    for key in LOSS_KEYS:
        assert metrics[key + "_epoch"] > 0, key
    assert bool(model.pseudo_labeller.ready) and torch.isfinite(model.thresholds).any()
    assert set(model.class_to_context.tolist()) <= {0, 1}
    # The teacher moved away from the student but is saved and restored with the checkpoint.
    checkpoint = next((tmp_path / "run").rglob("*.ckpt"))
    restored = CSSATask.load_from_checkpoint(checkpoint)
    for (name, a), (_, b) in zip(
        model.teacher.state_dict().items(), restored.teacher.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    torch.testing.assert_close(restored.thresholds, model.thresholds)
    torch.testing.assert_close(restored.class_to_context, model.class_to_context)
    assert not torch.equal(model.teacher.module.alignment.bias, model.net.alignment.bias), (
        "the EMA teacher should lag the student"
    )


def test_cap_baseline_fit(tmp_path, image_folders, tiny_clip_dir):
    cap = {
        **FAST,
        "label_specific": False,
        "alignment": {"enabled": False},
        "context": {"enabled": False},
    }
    cli, metrics = run_fit(tmp_path, image_folders, tiny_clip_dir, cap)
    assert cli.model.net.cross_attention is None and cli.model.net.context_head is None
    assert metrics["train/loss_cons_epoch"] > 0
    # CAP has no alignment or context term: none is logged.
    assert not any(key.startswith(("train/loss_align", "train/loss_ctx")) for key in metrics)
    for key in CAP_LOSS_KEYS:
        assert torch.isfinite(metrics[key])


@pytest.mark.parametrize(
    "options",
    [
        {
            "pseudo": {"threshold": "fbeta", "reliability_margin": 0.05},
            "context": {"num_contexts": 2, "target": "single", "input": "label_mean"},
        },
        {
            "pseudo": {"threshold": "fixed", "refresh": "step"},
            "loss": "bce",
            "warmup_epochs": 0,
        },
        {"context": {"num_contexts": 2, "inform_queries": True}, "label_query_block": "decoder"},
    ],
)
def test_cssa_options_run(tmp_path, image_folders, tiny_clip_dir, options):
    _, metrics = run_fit(tmp_path, image_folders, tiny_clip_dir, {**FAST, **options})
    for key in LOSS_KEYS:
        assert torch.isfinite(metrics[key]), key


def test_label_specific_features_only_where_the_start_network_knows_little(
    tmp_path, image_folders, tiny_clip_dir
):
    # The prior weighed by its labeled AP (prior_weight 1) records the start skill per class.
    options = {
        **FAST,
        "alignment": WEIGHTED,
        "label_specific_max_skill": 0.5,
        "pseudo": {"prior_weight": 1.0, "prior_weighting": "labeled_ap"},
    }
    cli, metrics = run_fit(tmp_path, image_folders, tiny_clip_dir, options)
    model = cli.model
    skill = model.prior_class_weights
    expected = (skill < 0.5).float()
    assert 0 < expected.sum() < len(expected)  # both kinds of class on this data
    torch.testing.assert_close(model.net.label_specific_classes, expected)
    # The teacher (an EMA of the student's buffers too) and the prior hold the same subset.
    torch.testing.assert_close(model.teacher.module.label_specific_classes, expected)
    assert torch.isfinite(metrics["train/loss_align_epoch"])
    # Only the subset's pairs are aligned.
    weights = torch.ones(2, len(expected))
    torch.testing.assert_close(model.aligned_pairs(weights), weights * expected)
    restored = CSSATask.load_from_checkpoint(next((tmp_path / "run").rglob("*.ckpt")))
    torch.testing.assert_close(restored.net.label_specific_classes, expected)
    plain = CSSATask(model.class_names, clip_checkpoint=str(tiny_clip_dir), attention_heads=4)
    assert plain.net.label_specific_mask is None and torch.equal(
        plain.aligned_pairs(weights), weights
    )
    with pytest.raises(ValueError, match="label_specific_max_skill"):
        CSSATask(model.class_names, clip_checkpoint=str(tiny_clip_dir), label_specific_max_skill=2)


def test_soft_consistency_with_a_reliability_margin_fit(tmp_path, image_folders, tiny_clip_dir):
    # From the CLI to the loss: a margin masks entries out (a mask ratio below 1, which is
    # exactly 1 without a margin or negative_keep), soft targets train the consistency term.
    # (The tiny model's teacher scores lie within about 0.1 of their thresholds: a wider
    # margin masks every entry.)
    cap = {
        **FAST,
        "label_specific": False,
        "alignment": {"enabled": False},
        "context": {"enabled": False},
    }
    options = {**cap, "pseudo": {"reliability_margin": 0.05}, "consistency_target": "soft"}
    cli, metrics = run_fit(tmp_path, image_folders, tiny_clip_dir, options)
    assert cli.model.hparams.consistency_target == "soft"
    assert cli.model.pseudo_labeller.reliability_margin == 0.05
    assert 0 < metrics["train/mask_ratio_epoch"] < 1
    assert torch.isfinite(metrics["train/loss_cons_epoch"])
    assert metrics["train/loss_cons_epoch"] > 0


def permuted_unlabeled_copy(source, destination, labeled_ratio=0.25, seed=1):
    """The same images and labeled part, the unlabeled images' labels shuffled among them."""
    shutil.copytree(source, destination)
    lines = (source / "metadata.jsonl").read_text().splitlines()
    _, unlabeled = split_labeled(len(lines), labeled_ratio, seed)
    items = [json.loads(line) for line in lines]
    labels = [items[i]["labels"] for i in unlabeled]
    order = np.random.default_rng(0).permutation(len(labels))
    for i, j in zip(unlabeled, order, strict=True):
        items[i]["labels"] = labels[j]
    (destination / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in items) + "\n")
    return destination


def test_no_leakage_of_unlabeled_ground_truth(tmp_path, image_folders, tiny_clip_dir):
    permuted = dict(image_folders)
    permuted["train"] = permuted_unlabeled_copy(image_folders["train"], tmp_path / "permuted-data")
    assert (permuted["train"] / "metadata.jsonl").read_text() != (
        image_folders["train"] / "metadata.jsonl"
    ).read_text()
    first, first_metrics = run_fit(tmp_path, image_folders, tiny_clip_dir, FAST, "original")
    second, second_metrics = run_fit(tmp_path, permuted, tiny_clip_dir, FAST, "permuted")
    for key in [*LOSS_KEYS, "train/loss", "val/mAP", "val/mAP_teacher"]:
        torch.testing.assert_close(first_metrics[key], second_metrics[key], msg=key)
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    # Only the monitoring of pseudo-labels against the hidden labels may differ (precision or
    # recall: on this tiny data either one alone can come out equal by chance).
    monitored = {
        key: (first_metrics[key], second_metrics[key])
        for key in ("pseudo/precision", "pseudo/recall")
    }
    assert any(not torch.equal(*pair) for pair in monitored.values()), monitored


def test_thresholds_follow_the_first_epoch_then_refresh_per_epoch(
    tmp_path, image_folders, tiny_clip_dir
):
    ThresholdTrace.trace = []
    options = {**FAST, "warmup_epochs": 0, "pseudo": {"refresh": "epoch"}}
    trace_callback = "--trainer.callbacks+=tests.test_cssa_fit.ThresholdTrace"
    run_fit(tmp_path, image_folders, tiny_clip_dir, options, extra=[trace_callback])
    first = [t for epoch, t in ThresholdTrace.trace if epoch == 0]
    second = [t for epoch, t in ThresholdTrace.trace if epoch == 1]
    assert len(first) == len(second) == 3
    # Provisional thresholds move with the scores seen so far during the first epoch...
    assert not torch.equal(first[0], first[-1])
    # ...then stay fixed within an epoch once an epoch-end refresh has happened.
    assert all(torch.equal(second[0], t) for t in second)


class TeacherAtEpochStart(Callback):
    """Whether teacher and student agree at the first batch of each epoch."""

    equal: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            pairs = zip(
                pl_module.net.state_dict().values(),
                pl_module.teacher.module.state_dict().values(),
                strict=True,
            )
            TeacherAtEpochStart.equal[trainer.current_epoch] = all(
                torch.equal(a, b) for a, b in pairs
            )


@pytest.mark.parametrize("restart", [True, False])
def test_teacher_restarts_from_the_student_when_warmup_ends(
    tmp_path, image_folders, tiny_clip_dir, restart
):
    TeacherAtEpochStart.equal = {}
    callback = "--trainer.callbacks+=tests.test_cssa_fit.TeacherAtEpochStart"
    options = {**FAST, "teacher_restart": restart}
    run_fit(tmp_path, image_folders, tiny_clip_dir, options, extra=[callback])
    # Epoch 0 starts from the student either way; epoch 1 (the first after the warm-up) only
    # with the restart: without it the teacher is an average lagging the student.
    assert TeacherAtEpochStart.equal == {0: True, 1: restart}


@pytest.mark.parametrize("target", ["prototype", "both"])
@pytest.mark.parametrize("ramp", [True, False])
def test_alignment_target_and_auxiliary_ramp_run(
    tmp_path, image_folders, tiny_clip_dir, target, ramp
):
    options = {**FAST, "alignment": {**WEIGHTED, "target": target}, "ramp_auxiliary": ramp}
    _, metrics = run_fit(tmp_path, image_folders, tiny_clip_dir, options)
    for key in LOSS_KEYS:
        assert torch.isfinite(metrics[key]) and metrics[key + "_epoch"] > 0, key


@contextlib.contextmanager
def no_host_reads():
    """Fail on every Python-level read of a tensor's value (each one makes the host wait for
    the device on a GPU)."""
    names = ["__bool__", "item", "tolist", "__float__", "__int__"]
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} read on the host inside the training step")

        return method

    for name in names:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


class NoHostReadCSSA(CSSATask):
    def training_step(self, batch, batch_idx):
        with no_host_reads():
            return super().training_step(batch, batch_idx)


def test_the_training_step_never_waits_for_the_device(tmp_path, image_folders, tiny_clip_dir):
    # Every unlabeled term, thresholds refreshed at every step, the negative mask: the whole
    # step runs without reading a tensor's value on the host.
    options = {
        **FAST,
        "pseudo": {"refresh": "step", "negative_keep": 0.99},
        "alignment": {**WEIGHTED, "absent_push_weight": 0.5},
    }
    out = tmp_path / "run"
    out.mkdir()
    config = fit_config(
        out, image_folders, tiny_clip_dir, "tests.test_cssa_fit.NoHostReadCSSA", options
    )
    build_cli(["fit", "--config", str(config), "--test_after_fit=false"])
    with pytest.raises(AssertionError, match="read on the host"), no_host_reads():
        bool(torch.ones(1))  # the check itself works


def test_compile_network_compiles_student_and_teacher_in_place(
    tmp_path, image_folders, tiny_clip_dir, monkeypatch
):
    compiled = []
    original = torch.nn.Module.compile

    def compile_eagerly(module, *args, **kwargs):
        # Dynamo's "eager" backend: the same graph capture without the slow code generation.
        compiled.append(module)
        original(module, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    cli, metrics = run_fit(
        tmp_path, image_folders, tiny_clip_dir, {**FAST, "compile_network": True}
    )
    model = cli.model
    assert compiled == [model.net, model.teacher.module]
    assert all(module._compiled_call_impl is not None for module in compiled)
    # Compiled in place: the parameter names (and so the checkpoints) are unchanged.
    assert not any("_orig_mod" in name for name in model.state_dict())
    assert torch.isfinite(metrics["val/mAP_teacher"])


def test_bf16_mixed_precision_fit(tmp_path, image_folders, tiny_clip_dir):
    # The shipped configs train in bf16-mixed: every loss term under autocast, finite.
    options = {**FAST, "alignment": {**WEIGHTED, "absent_push_weight": 0.5}}
    cli, metrics = run_fit(
        tmp_path, image_folders, tiny_clip_dir, options, extra=["--trainer.precision=bf16-mixed"]
    )
    assert cli.trainer.precision == "bf16-mixed"
    for key in [*LOSS_KEYS, "train/loss_push", "train/loss_push_u", "val/mAP_teacher"]:
        assert torch.isfinite(metrics[key]), key
