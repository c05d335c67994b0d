"""The pseudo-labeller module, the named loss terms and CSSA's new training options."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback

from cssa_lightning.methods.cssa import CSSATask
from cssa_lightning.methods.losses import absent_push_loss
from cssa_lightning.methods.multilabel import one_cycle_factor
from cssa_lightning.methods.pseudo_labels import (
    PseudoLabeller,
    cat_thresholds,
    negative_thresholds,
)

from .conftest import CLASS_NAMES
from .test_benchmark import quiet_trainer
from .test_datamodule import make_datamodule

FAST = dict(warmup_epochs=1, rampup_epochs=0.5, context={"num_contexts": 2}, attention_heads=4)


# -- PseudoLabeller ------------------------------------------------------------------------------
def test_negative_mask_drops_the_negatives_just_under_the_threshold():
    # Class 0: 10 images, prior 0.2 -> threshold at the 2nd score (0.9); 8 negatives.
    scores = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]).unsqueeze(1)
    thresholds = cat_thresholds(scores, torch.tensor([0.2]))
    assert thresholds.item() == pytest.approx(0.9)
    # Keep the lowest 75 % of the 8 negatives (6): 0.1 ... 0.6; drop 0.7 and 0.8.
    cuts = negative_thresholds(scores, thresholds, 0.75)
    assert cuts.item() == pytest.approx(0.6)
    labeller = PseudoLabeller(1, negative_keep=0.75)
    labeller.allocate(10)
    labeller.record(torch.arange(10), scores)
    assert labeller.refresh(torch.tensor([0.2]))
    labels, mask = labeller(scores)
    assert labels.squeeze(1).tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert mask.squeeze(1).tolist() == [1, 1, 0, 0, 1, 1, 1, 1, 1, 1]
    # keep = 1 (the default) uses every entry.
    assert negative_thresholds(scores, thresholds, 1.0).isinf().all()


def test_memory_is_saved_and_restored_at_its_size():
    labeller = PseudoLabeller(3)
    labeller.allocate(5)
    labeller.record(torch.tensor([1, 3]), torch.rand(2, 3))
    labeller.refresh(torch.tensor([0.5, 0.5, 0.5]))
    restored = PseudoLabeller(3)  # memory of size 0, as in __init__
    restored.load_state_dict(labeller.state_dict())
    torch.testing.assert_close(restored.scores, labeller.scores)
    assert restored.seen.tolist() == [False, True, False, True, False]
    torch.testing.assert_close(restored.thresholds, labeller.thresholds)
    restored.allocate(5)  # on_fit_start after a restore keeps the memory
    assert restored.seen.sum() == 2 and not restored.provisional


def test_every_process_records_every_process_scores():
    scores = torch.rand(6, 2)
    priors = torch.tensor([0.5, 0.34])
    one = PseudoLabeller(2)
    one.allocate(6)
    one.record(torch.arange(6), scores)
    one.refresh(priors)
    # Two processes; at each of three steps each scores one image (rank r: images r, r+2, r+4).
    ranks = [PseudoLabeller(2), PseudoLabeller(2)]
    for labeller in ranks:
        labeller.allocate(6)
    for step in range(3):
        index = [torch.tensor([2 * step + rank]) for rank in range(2)]
        for rank, labeller in enumerate(ranks):
            # What all_gather returns on either process: (world, ...) in rank order.
            calls = iter([torch.stack(index), torch.stack([scores[i] for i in index])])
            labeller.record(
                index[rank], scores[index[rank]], lambda tensor, calls=calls: next(calls)
            )
    for labeller in ranks:
        torch.testing.assert_close(labeller.scores, one.scores)
        assert labeller.seen.all()
        labeller.refresh(priors)
        torch.testing.assert_close(labeller.thresholds, one.thresholds)


def test_provisional_thresholds_follow_steps_until_the_epoch_end():
    labeller = PseudoLabeller(1)
    labeller.allocate(4)
    priors = torch.tensor([0.5])
    labeller.record(torch.tensor([0, 1]), torch.tensor([[0.9], [0.1]]))
    labeller.step_refresh(priors)
    assert labeller.thresholds.item() == pytest.approx(0.9)
    labeller.end_epoch(priors)
    labeller.record(torch.tensor([2, 3]), torch.tensor([[0.8], [0.7]]))
    labeller.step_refresh(priors)  # no longer provisional: kept until the next epoch end
    assert labeller.thresholds.item() == pytest.approx(0.9)
    labeller.end_epoch(priors)
    assert labeller.thresholds.item() == pytest.approx(0.8)


def test_fbeta_does_not_combine_with_a_teacher_pass():
    with pytest.raises(ValueError, match="refresh='pass'"):
        PseudoLabeller(2, rule="fbeta", refresh="pass")


# -- loss terms --------------------------------------------------------------------------------
def test_absent_push_loss_matches_a_loop():
    torch.manual_seed(0)
    features, targets = torch.randn(2, 3, 8), torch.randn(3, 8)
    negatives = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    total, count = 0.0, 0
    for b in range(2):
        for k in range(3):
            if negatives[b, k]:
                cos = torch.nn.functional.cosine_similarity(features[b, k], targets[k], dim=0)
                total += max(cos.item() - 0.1, 0.0)
                count += 1
    got = absent_push_loss(features, targets, negatives, margin=0.1)
    assert got.item() == pytest.approx(total / count, abs=1e-6)
    assert absent_push_loss(features, targets, torch.zeros(2, 3)).item() == 0.0


@pytest.fixture(scope="module")
def task(tiny_clip_dir):
    return CSSATask(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), **FAST)


class SoftConsistency(CSSATask):
    def consistency_targets(self, probs, pseudo):
        return probs, torch.ones_like(probs)


def test_consistency_targets_hook_changes_only_the_consistency_term(tiny_clip_dir):
    plain = CSSATask(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), **FAST)
    soft = SoftConsistency(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), **FAST)
    soft.load_state_dict(plain.state_dict())
    for task in (plain, soft):
        task.class_to_context.copy_(torch.tensor([0, 1, 1]))
        task.thresholds.copy_(torch.tensor([0.5, 0.5, 0.5]))
    torch.manual_seed(0)
    strong = plain.encode(torch.randn(2, 3, 32, 32))
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.3, 0.7, 0.4]])
    pseudo = plain.pseudo_labels(probs)
    a = plain.unlabeled_losses(strong, probs, pseudo)
    b = soft.unlabeled_losses(strong, probs, pseudo)
    assert set(a) == set(b) == {"cons", "align_u", "ctx_u"}
    torch.testing.assert_close(a["ctx_u"], b["ctx_u"])  # context still from hard labels
    torch.testing.assert_close(a["align_u"], b["align_u"])
    torch.testing.assert_close(b["cons"], soft.supervised_loss(strong.logits, probs))
    assert not torch.allclose(a["cons"], b["cons"])


def test_loss_weights_ramp_and_weigh_unlabeled_images(task):
    task._trainer = SimpleNamespace(num_training_batches=10, current_epoch=0)
    hp = task.hparams
    old = dict(hp)
    try:
        hp.update(
            alignment={**hp.alignment, "weight": 0.5, "absent_push_weight": 2.0},
            context={**hp.context, "weight": 0.25},
            consistency_weight=1.0,
            ramp_auxiliary=True,
            unlabeled_weighting="per_image",
        )
        task._trainer.current_epoch = 1  # warm-up over, half-way through the 0.5-epoch ramp
        weights = task.loss_weights(batch_idx=2, num_labeled=8, num_unlabeled=56)
        ramp = 0.4
        assert weights["sup"] == 1.0
        assert weights["align"] == pytest.approx(0.5 * ramp)
        assert weights["align_u"] == pytest.approx(0.5 * ramp * 7)
        assert weights["ctx_u"] == pytest.approx(0.25 * ramp * 7)
        assert weights["push"] == pytest.approx(2.0 * ramp)
        assert weights["cons"] == pytest.approx(ramp * 7)
        hp.update(ramp_auxiliary=False, unlabeled_weighting="batch_mean")
        weights = task.loss_weights(batch_idx=2, num_labeled=8, num_unlabeled=56)
        assert weights["align_u"] == 0.5 and weights["cons"] == pytest.approx(ramp)
    finally:
        hp.update(old)
        task._trainer = None


def test_cross_attention_learning_rate(tiny_clip_dir):
    task = CSSATask(
        CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), cross_attention_lr=3e-4, **FAST
    )
    task._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=2)
    optimizer = task.configure_optimizers()["optimizer"]
    task._trainer = None
    lr_of = {id(p): g["max_lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, parameter in task.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("net.cross_attention."):
            want = 3e-4
        elif name.startswith("net.clip."):
            want = task.hparams.lr
        else:
            want = task.hparams.head_lr
        assert lr_of[id(parameter)] == want, name


def test_schedule_restart_starts_a_second_cycle_when_the_warmup_ends(tiny_clip_dir):
    task = CSSATask(
        CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), schedule_restart=True, **FAST
    )
    task._trainer = SimpleNamespace(estimated_stepping_batches=40, max_epochs=4)
    config = task.configure_optimizers()
    task._trainer = None
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    peak = optimizer.param_groups[0]["initial_lr"]
    trace = []
    for _ in range(40):
        trace.append(optimizer.param_groups[0]["lr"] / peak)
        optimizer.step()
        scheduler.step()
    # Warm-up: 1 of 4 epochs = 10 steps, its own cycle; then a fresh one over 30 steps.
    for step in range(40):
        want = (
            one_cycle_factor(step, 10, 0.2) if step < 10 else one_cycle_factor(step - 10, 30, 0.2)
        )
        assert trace[step] == pytest.approx(want), step
    assert trace[10] == pytest.approx(1 / 25) and trace[9] < 0.01


def test_one_cycle_factor_is_onecycle():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2.0, total_steps=37, pct_start=0.3
    )
    for step in range(37):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(
            2.0 * one_cycle_factor(step, 37, 0.3)
        )
        optimizer.step()
        if step < 36:
            scheduler.step()


def test_old_checkpoint_thresholds_are_mapped(task):
    state = {"thresholds": torch.tensor([0.1, 0.2, 0.3]), "thresholds_ready": torch.tensor(True)}
    checkpoint = {"state_dict": dict(state)}
    task.on_load_checkpoint(checkpoint)
    assert "thresholds" not in checkpoint["state_dict"]
    torch.testing.assert_close(
        checkpoint["state_dict"]["pseudo_labeller.thresholds"], state["thresholds"]
    )
    assert bool(checkpoint["state_dict"]["pseudo_labeller.ready"])


# -- in a fit ----------------------------------------------------------------------------------
class TeacherWatch(Callback):
    """Checks, at every batch end, that the teacher already holds this step's update, and at
    the first batch of each semi-supervised epoch that the thresholds come from a pass of the
    teacher over every unlabeled image."""

    def __init__(self):
        self.updates, self.passes, self.within_epoch = [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.expected = None
        if trainer.current_epoch >= pl_module.hparams.warmup_epochs:
            # Callbacks run before the module's hook: score what the pass will score.
            probs = []
            with torch.no_grad():
                for batch in trainer.datamodule.unlabeled_eval_dataloader():
                    probs.append(pl_module.teacher_probs(batch["image"]))
            self.expected = cat_thresholds(torch.cat(probs), pl_module.class_priors)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.updates.append(int(pl_module.teacher.n_averaged) - trainer.global_step)
        if self.expected is not None:
            self.passes.append(torch.allclose(pl_module.thresholds, self.expected))


def test_fixed_teacher_pass_and_teacher_updated_at_the_optimizer_step(image_folders, tiny_clip_dir):
    torch.manual_seed(0)
    data = make_datamodule(image_folders)
    model = CSSATask(
        data.class_names,
        clip_checkpoint=str(tiny_clip_dir),
        pseudo={"refresh": "pass", "scores": "pass", "negative_keep": 0.998},
        alignment={"absent_push_weight": 0.5},
        **FAST,
    )
    watch = TeacherWatch()
    trainer = quiet_trainer(max_epochs=3, limit_val_batches=0, callbacks=[watch])
    trainer.fit(model, datamodule=data)
    # One teacher update per optimizer step, already made when callbacks see the batch end (an
    # update in the module's on_train_batch_end would lag one step: -1).
    assert set(watch.updates) == {0}
    assert watch.passes and all(watch.passes)
    metrics = trainer.callback_metrics
    for key in ["train/loss_push", "train/loss_push_u", "pseudo/precision@50"]:
        assert torch.isfinite(metrics.get(key, torch.tensor(float("nan")))), key


def test_pseudo_label_scores_pass_needs_a_pass(tiny_clip_dir):
    with pytest.raises(ValueError, match="pseudo.refresh='pass'"):
        CSSATask(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), pseudo={"scores": "pass"})


def test_precision_at_recall():
    from cssa_lightning.methods.monitoring import MONITORED_RECALLS, precision_at_recalls

    scores = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.7, 0.2], [0.3, 0.6, 0.4], [0.05, 0.15, 0.25]])
    hidden = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # Ranked: 0.9 (+) 0.8 (-) 0.7 (+) 0.6 (-) 0.5 (+) 0.4 (-) 0.3 (+); 4 positives.
    values = precision_at_recalls(scores, hidden, MONITORED_RECALLS)
    assert values["pseudo/precision@50"].item() == pytest.approx(100 * 2 / 3)
    assert values["pseudo/precision@80"].item() == pytest.approx(100 * 4 / 7)
    assert values["pseudo/precision@40"].item() == pytest.approx(100 * 2 / 3)


def test_monitor_counts_every_batch_once_and_logs_micro_precision_and_recall(task):
    from types import SimpleNamespace

    from cssa_lightning.methods.monitoring import PseudoLabelMonitor

    monitor = PseudoLabelMonitor()
    task.pseudo_labeller.allocate(6)
    monitor.on_train_start(SimpleNamespace(), task)
    trainer = SimpleNamespace(world_size=1)
    batches = [
        (
            torch.tensor([0, 1, 2]),
            [[1, 0, 1], [0, 1, 0], [1, 1, 0]],
            [[1, 0, 0], [0, 1, 1], [1, 0, 0]],
        ),
        (
            torch.tensor([3, 4, 5]),
            [[0, 0, 0], [1, 0, 0], [0, 0, 1]],
            [[0, 0, 1], [1, 0, 0], [0, 0, 1]],
        ),
    ]
    for index, labels, hidden in batches:
        outputs = {"pseudo_labels": torch.tensor(labels, dtype=torch.float)}
        batch = {"unlabeled": {"index": index, "target": torch.tensor(hidden)}}
        monitor.on_train_batch_end(trainer, task, outputs, batch, 0)
        task.pseudo_labeller.record(index, torch.rand(3, 3))
    logged = {}
    task.log_dict = lambda values: logged.update(values)
    monitor.on_train_epoch_end(trainer, task)
    # 5 of 7 pseudo-positives are hidden positives; 7 hidden positives in all.
    assert logged["pseudo/precision"].item() == pytest.approx(100 * 5 / 7)
    assert logged["pseudo/recall"].item() == pytest.approx(100 * 5 / 7)
    assert "pseudo/precision@50" in logged
    positives, predicted, correct, images = monitor.per_class
    assert positives.tolist() == [3, 1, 3] and predicted.tolist() == [3, 2, 2]
    assert correct.tolist() == [3, 1, 1] and images.tolist() == [6, 6, 6]
    logged.clear()
    monitor.on_train_epoch_end(trainer, task)  # no batch since: nothing logged again
    assert logged == {}


def test_cssa_checkpoint_with_other_class_order_is_refused(task):
    checkpoint = {"hyper_parameters": {"class_names": task.class_names[::-1]}, "state_dict": {}}
    with pytest.raises(ValueError):
        task.on_load_checkpoint(checkpoint)


def test_thresholds_from_a_masked_memory_equal_those_from_the_seen_rows():
    # The pseudo-labeller refreshes from the whole memory with a ``seen`` mask (fixed shapes,
    # no wait for the device); that must give what the seen rows alone give.
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 4, generator=generator)
    seen = torch.rand(50, generator=generator) < 0.4
    priors = torch.tensor([0.0, 0.1, 0.3, 1.0])
    masked = cat_thresholds(scores, priors, seen)
    torch.testing.assert_close(masked, cat_thresholds(scores[seen], priors))
    torch.testing.assert_close(
        negative_thresholds(scores, masked, 0.8, seen),
        negative_thresholds(scores[seen], masked, 0.8),
    )
    # Nothing seen: no threshold, and the labeller keeps the ones it had.
    assert torch.isinf(cat_thresholds(scores, priors, torch.zeros(50, dtype=torch.bool))).all()
    labeller = PseudoLabeller(4)
    labeller.allocate(50)
    labeller.record(torch.nonzero(seen).flatten(), scores[seen])
    assert labeller.refresh(priors)
    before = labeller.thresholds.clone()
    labeller.seen.zero_()
    assert not labeller.refresh(priors)
    torch.testing.assert_close(labeller.thresholds, before)
    assert labeller.ready


# -- a memory of the latest rows (pseudo.memory) ------------------------------------------------
def test_a_ring_memory_holds_the_latest_rows_and_resumes_where_it_left():
    torch.manual_seed(0)
    steps = [torch.rand(3, 2) for _ in range(5)]  # a pool of 15 images, a ring of 4 rows
    ring = PseudoLabeller(2, memory_size=4)
    ring.allocate(15)
    assert ring.scores.shape == (4, 2)
    for step, probs in enumerate(steps):
        ring.record(torch.arange(3 * step, 3 * step + 3), probs)
        if step == 2:  # a checkpoint mid-run, restored into a fresh labeller
            state = {k: v.clone() for k, v in ring.state_dict().items()}
            resumed = PseudoLabeller(2, memory_size=4)
            resumed.load_state_dict(state)
            resumed.allocate(15)  # a restored memory of that size is kept
    for probs in steps[3:]:
        resumed.record(torch.zeros(3, dtype=torch.long), probs)
    latest = torch.cat(steps)[-4:]
    for labeller in (ring, resumed):
        assert labeller.seen.all() and int(labeller.cursor) == 15 % 4
        # The rows are the four latest, whatever their place in the ring.
        held = sorted(map(tuple, labeller.scores.tolist()))
        assert held == sorted(map(tuple, latest.tolist()))
        priors = torch.tensor([0.25, 0.5])
        labeller.refresh(priors)
        torch.testing.assert_close(labeller.thresholds, cat_thresholds(latest, priors))
    torch.testing.assert_close(resumed.scores, ring.scores)
    # More rows in one record than the ring holds: the latest ones.
    ring.record(torch.arange(6), torch.arange(12.0).reshape(6, 2))
    assert sorted(ring.scores[:, 0].tolist()) == [4.0, 6.0, 8.0, 10.0]
    assert len(ring.last_rows) == 4
    with pytest.raises(RuntimeError, match="no row per image"):
        ring.recorded(torch.tensor([0]))
    with pytest.raises(ValueError, match="memory_size must be None"):
        PseudoLabeller(2, refresh="pass", memory_size=4)


def test_a_fit_with_a_ring_smaller_than_the_pool(image_folders, tiny_clip_dir):
    from cssa_lightning.methods.mean_teacher import MeanTeacherTask

    torch.manual_seed(0)
    data = make_datamodule(image_folders)
    model = MeanTeacherTask(
        data.class_names,
        clip_checkpoint=str(tiny_clip_dir),
        warmup_epochs=1,
        rampup_epochs=0.5,
        pseudo={"memory": 5, "refresh": "step"},
    )
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    pool = len(data.unlabeled_indices)
    assert pool > 2 * 5  # several times the ring
    labeller = model.pseudo_labeller
    assert labeller.scores.shape == (5, len(CLASS_NAMES)) and labeller.seen.all()
    assert torch.isfinite(labeller.thresholds).any()
    metrics = trainer.callback_metrics
    for key in ("pseudo/precision", "pseudo/precision@50", "train/loss_cons"):
        assert torch.isfinite(metrics[key]), key
    with pytest.raises(ValueError, match="pseudo.memory keeps the latest rows only"):
        MeanTeacherTask(
            data.class_names,
            clip_checkpoint=str(tiny_clip_dir),
            pseudo={"memory": 5, "refresh": "pass"},
        )


def test_the_test_after_fit_attaches_the_task_callbacks_once_and_quietly(
    image_folders, tiny_clip_dir, caplog
):
    import logging

    from cssa_lightning.methods.mean_teacher import MeanTeacherTask
    from cssa_lightning.methods.monitoring import PseudoLabelMonitor

    data = make_datamodule(image_folders)
    model = MeanTeacherTask(data.class_names, clip_checkpoint=str(tiny_clip_dir), warmup_epochs=1)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0, limit_test_batches=1)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, datamodule=data)
        monitor = next(c for c in trainer.callbacks if isinstance(c, PseudoLabelMonitor))
        trainer.test(model, datamodule=data, verbose=False)
    assert "will override existing callbacks" not in caplog.text
    monitors = [c for c in trainer.callbacks if isinstance(c, PseudoLabelMonitor)]
    assert monitors == [monitor]  # the fit's own, kept
