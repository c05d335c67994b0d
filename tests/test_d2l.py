"""``D2LTask``: D2L as a sibling of CAP on ``MeanTeacherTask`` (decoupled pseudo-label heads,
a global and a local branch, MAT thresholds), its overlay, and its checkpoints and exports."""

from __future__ import annotations

import math

import torch

from cssa_lightning import D2LTask, MeanTeacherTask
from cssa_lightning.commands.export import export, load_exported
from cssa_lightning.commands.trained import load_trained
from cssa_lightning.methods.pseudo_labels import PseudoLabels
from cssa_lightning.networks.heads import softmax_pool

from .conftest import CLASS_NAMES
from .test_mean_teacher import FAST, fit, with_trainer


def small_task(tiny_clip_dir, **options) -> D2LTask:
    torch.manual_seed(0)
    return D2LTask(CLASS_NAMES, clip_checkpoint=str(tiny_clip_dir), **FAST, **options)


def test_softmax_pool_lies_between_mean_and_max():
    scores = torch.tensor([[[1.0, -2.0], [3.0, -2.0], [0.0, -2.0]]])  # (B=1, N=3, C=2)
    pooled = softmax_pool(scores)
    assert scores.mean(1)[0, 0] < pooled[0, 0] < scores.max(1).values[0, 0]
    torch.testing.assert_close(pooled[0, 1], torch.tensor(-2.0))  # equal tokens: their value


def test_the_label_score_is_the_mean_of_the_global_and_local_branch(tiny_clip_dir):
    task = small_task(tiny_clip_dir).eval()
    images = torch.randn(2, 3, 32, 32)
    encoded = task.encode(images)
    net = task.net
    features = net.clip.encode_image(images)
    torch.testing.assert_close(encoded.global_logits, net.alignment(features.global_feature))
    local = softmax_pool(net.local_alignment.token_scores(features.patch_tokens))
    torch.testing.assert_close(encoded.local_logits, local)
    torch.testing.assert_close(encoded.logits, (encoded.global_logits + local) / 2)
    # Without the local branch the network is the CAP one.
    plain = small_task(tiny_clip_dir, local_branch=False).eval()
    assert plain.net.local_alignment is None and plain.encode(images).global_logits is None


def test_the_loss_table_and_mat_defaults(tiny_clip_dir):
    task = small_task(tiny_clip_dir)
    assert task.loss_names() == ["sup", "sup_local", "cons", "cons_local"]
    assert task.pseudo_labeller.rule == "fbeta" and task.hparams.pseudo["fbeta"] == 0.5
    assert task.pseudo_labeller.uses_labeled_scores  # MAT reads the labeled teacher scores
    assert small_task(tiny_clip_dir, local_branch=False).loss_names() == ["sup", "cons"]
    assert small_task(tiny_clip_dir, use_consistency=False).loss_names() == ["sup", "sup_local"]
    weights = with_trainer(task, epoch=3).loss_weights(0, num_labeled=8, num_unlabeled=56)
    assert weights["cons_local"] == weights["cons"] == task.hparams.consistency_weight


def test_pseudo_labels_train_the_pseudo_heads_and_never_the_scoring_heads(tiny_clip_dir):
    task = small_task(tiny_clip_dir)
    strong = task.encode(torch.randn(3, 3, 32, 32))
    probs = torch.rand(3, len(CLASS_NAMES))
    pseudo = PseudoLabels((probs > 0.5).float(), torch.ones_like(probs))
    losses = task.unlabeled_losses(strong, probs, pseudo)
    assert set(losses) == {"cons", "cons_local"}
    sum(losses.values()).backward()
    pseudo_grads = [p.grad for p in task.pseudo_heads.parameters() if p.requires_grad]
    assert pseudo_grads and all(g is not None and g.abs().sum() > 0 for g in pseudo_grads)
    for head in (task.net.alignment, task.net.local_alignment):
        assert all(p.grad is None for p in head.parameters())
    # The pseudo-label loss still reaches the shared image encoder.
    vision = [p.grad for p in task.net.clip.model.vision_model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in vision)
    # Coupled (CAP-like): the same loss trains the scoring heads.
    coupled = small_task(tiny_clip_dir, decoupled_heads=False)
    assert coupled.pseudo_heads is None
    strong = coupled.encode(torch.randn(3, 3, 32, 32))
    sum(coupled.unlabeled_losses(strong, probs, pseudo).values()).backward()
    assert coupled.net.alignment.bias.grad.abs().sum() > 0


def test_a_fit_copies_the_heads_when_the_warmup_ends_and_loads_back(
    tmp_path, image_folders, tiny_clip_dir
):
    cli, metrics = fit(
        tmp_path,
        image_folders,
        tiny_clip_dir,
        "cssa_lightning.D2LTask",
        {**FAST, "teacher_restart": True, "schedule_restart": True},
        extra=["--trainer.logger=false"],
    )
    task = cli.model
    for name in ("sup", "sup_local", "cons", "cons_local"):
        assert math.isfinite(float(metrics[f"train/loss_{name}"])), name
    assert metrics["train/loss_cons_local"] > 0  # the second epoch is semi-supervised
    # Copied from the labeled heads at the start of epoch 1, then trained apart from them.
    assert not torch.equal(task.pseudo_heads["global"].bias, task.net.alignment.bias)
    # MAT thresholds were set from the labeled teacher scores.
    assert bool(task.pseudo_labeller.ready)
    checkpoint = next((tmp_path / "run").rglob("*.ckpt"))
    loaded, _ = load_trained(checkpoint)
    assert isinstance(loaded, D2LTask) and isinstance(loaded, MeanTeacherTask)
    images = torch.randn(2, 3, 32, 32)
    task.eval()
    torch.testing.assert_close(loaded(images), task(images))
    # An export keeps the local branch: the same probabilities from the exported directory.
    out = tmp_path / "exported"
    export(str(checkpoint), str(out), onnx=False)
    exported = load_exported(out)
    assert exported.net.local_alignment is not None
    torch.testing.assert_close(
        exported.net(images).logits, loaded.teacher.module(images).logits, rtol=1e-5, atol=1e-5
    )
