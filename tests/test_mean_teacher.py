"""``MeanTeacherTask`` and its loss table: CAP and supervised+EMA as its configurations, CSSA
on it, a term added by one row, and checkpoints of the layout before it."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cssa_lightning import CSSATask, MeanTeacherTask
from cssa_lightning.commands.cli import build_cli
from cssa_lightning.commands.trained import load_trained
from cssa_lightning.methods.loss_terms import LossTerm, option
from cssa_lightning.methods.mean_teacher import frozen_outputs, frozen_probs, prior_skill
from cssa_lightning.methods.neighbours import NeighbourVote
from cssa_lightning.methods.options import PseudoLabelOptions

from .conftest import CLASS_NAMES, fit_config
from .test_cli import RecordMetrics

MT = "cssa_lightning.MeanTeacherTask"
# The mean-teacher options of the tiny fits; CSSA adds its own.
FAST = {"warmup_epochs": 1, "rampup_epochs": 0.5}
CSSA_FAST = {**FAST, "context": {"num_contexts": 2}, "attention_heads": 4}
CAP_SWITCHES = {
    "label_specific": False,
    "alignment": {"enabled": False},
    "context": {"num_contexts": 2, "enabled": False},
}
OLD_LAYOUT = Path(__file__).parent / "data" / "old_layout"


class EntropyCAP(MeanTeacherTask):
    """CAP plus entropy minimisation on the strong views: one row, its option and method."""

    loss_terms = MeanTeacherTask.loss_terms + (
        LossTerm("ent_u", "unlabeled", "entropy_term", weight="entropy_weight", ramp="always"),
    )

    def __init__(self, class_names: list[str], entropy_weight: float = 0.5, **kwargs):
        super().__init__(class_names, **kwargs)

    def entropy_term(self, strong, probs, pseudo):
        p = torch.sigmoid(strong.logits.float()).clamp(1e-6, 1 - 1e-6)
        return -(p * p.log() + (1 - p) * (1 - p).log()).mean()


class EntropyCSSA(CSSATask):
    """The same row on CSSA (the notebook's example), with a constructor of its own."""

    loss_terms = CSSATask.loss_terms + EntropyCAP.loss_terms[-1:]
    entropy_term = EntropyCAP.entropy_term

    def __init__(self, class_names: list[str], entropy_weight: float = 0.5, **kwargs):
        super().__init__(class_names, **kwargs)


def with_trainer(task, epoch=1, batches=10):
    """``task`` as a trainer would show it at ``epoch`` (for the ramp)."""
    task._trainer = SimpleNamespace(num_training_batches=batches, current_epoch=epoch, world_size=1)
    return task


def fit(tmp_path, folders, clip_dir, task, options, name="run", data=None, extra=()):
    out = tmp_path / name
    out.mkdir()
    config = fit_config(out, folders, clip_dir, task, options, data=data)
    cli = build_cli(["fit", "--config", str(config), "--test_after_fit=false", *extra])
    return cli, dict(RecordMetrics.fit_metrics)


# -- the table ---------------------------------------------------------------------------------
def test_a_row_adds_a_term_to_names_weights_and_losses(tiny_clip_dir):
    task = EntropyCAP(
        CLASS_NAMES[:3],
        clip_checkpoint=str(tiny_clip_dir),
        unlabeled_weighting="per_image",
        **FAST,
    )
    assert task.loss_names() == ["sup", "cons", "ent_u"]
    assert task.hparams.entropy_weight == 0.5
    with_trainer(task)  # half-way through the 0.5-epoch ramp at batch 2 of 10
    weights = task.loss_weights(batch_idx=2, num_labeled=8, num_unlabeled=56)
    assert set(weights) == {"sup", "cons", "ent_u"}
    assert weights["ent_u"] == pytest.approx(0.5 * 0.4 * 7)
    assert weights["cons"] == pytest.approx(0.4 * 7)
    strong = task.encode(torch.randn(2, 3, 32, 32))
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.3, 0.7, 0.4]])
    losses = task.unlabeled_losses(strong, probs, task.pseudo_labels(probs))
    assert set(losses) == {"cons", "ent_u"}
    torch.testing.assert_close(losses["ent_u"], task.entropy_term(strong, probs, None))


@pytest.mark.parametrize("base", [MeanTeacherTask, CSSATask])
def test_a_subclass_of_either_task_adds_a_constant_weight_row(tiny_clip_dir, base):
    # Before the table, a CSSATask subclass with a new term had to override loss_weights too
    # (else a KeyError).
    extra = LossTerm("norm", "labeled", "feature_norm", weight=0.25)
    subclass = type(
        "WithNorm",
        (base,),
        {
            "loss_terms": base.loss_terms + (extra,),
            "feature_norm": lambda self, student, targets: student.global_feature.norm(
                dim=-1
            ).mean(),
        },
    )
    options = CSSA_FAST if base is CSSATask else FAST
    task = with_trainer(subclass(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), **options))
    assert task.loss_names()[-1] == "norm"
    assert task.loss_weights(0, 8, 56)["norm"] == 0.25
    losses = task.labeled_losses(task.encode(torch.randn(2, 3, 32, 32)), torch.ones(2, 3))
    assert list(losses)[-1] == "norm"  # after the warm-up every labeled term runs


def test_uses_unlabeled_derives_from_the_table(tiny_clip_dir):
    def task(cls, **options):
        return cls(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), **options)

    no_other = {"context": {"enabled": False}, "use_consistency": False, "attention_heads": 4}
    cases = [
        (task(MeanTeacherTask), ["sup", "cons"], True),
        (task(MeanTeacherTask, use_consistency=False), ["sup"], False),
        (task(EntropyCAP, use_consistency=False), ["sup", "ent_u"], True),
        # Alignment on labeled images only: nothing reads the unlabeled images (the switches
        # alone said otherwise before the table).
        (task(CSSATask, alignment={"unlabeled": "none"}, **no_other), ["sup", "align"], False),
        (
            task(CSSATask, alignment={"unlabeled": "all"}, **no_other),
            ["sup", "align", "align_u"],
            True,
        ),
        (task(CSSATask, **CAP_SWITCHES), ["sup", "cons"], True),
        (
            task(CSSATask, alignment={"absent_push_weight": 0.5}, attention_heads=4),
            ["sup", "cons", "align", "push", "ctx", "align_u", "push_u", "ctx_u"],
            True,
        ),
    ]
    for model, names, uses in cases:
        assert model.loss_names() == names
        assert model.uses_unlabeled is uses


def test_bad_tables_are_refused(tiny_clip_dir):
    def build(*rows, **options):
        cls = type("Bad", (MeanTeacherTask,), {"loss_terms": MeanTeacherTask.loss_terms + rows})
        return cls(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), **options)

    with pytest.raises(ValueError, match="declared twice"):
        build(LossTerm("cons", "unlabeled", "consistency_term"))
    with pytest.raises(ValueError, match="no method 'missing'"):
        build(LossTerm("x", "labeled", "missing"))
    with pytest.raises(ValueError, match="no option 'x_weight'"):
        build(LossTerm("x", "labeled", "supervised_term", weight="x_weight"))
    with pytest.raises(ValueError, match="after the warm-up"):
        LossTerm("x", "unlabeled", "consistency_term", warmup=True)
    with pytest.raises(ValueError, match="ramp"):
        LossTerm("x", "labeled", "supervised_term", ramp="sometimes")
    assert option("use_x")({}) and not option("use_x")({"use_x": False})


def test_fbeta_thresholds_ask_for_labeled_teacher_scores(tiny_clip_dir):
    for rule, wanted in (("fbeta", True), ("cat", False), ("fixed", False)):
        task = MeanTeacherTask(
            CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), pseudo={"threshold": rule}
        )
        assert task.pseudo_labeller.uses_labeled_scores is wanted


# -- fits --------------------------------------------------------------------------------------
def test_entropy_term_is_logged_in_a_fit(tmp_path, image_folders, tiny_clip_dir):
    task = "tests.test_mean_teacher.EntropyCAP"
    cli, metrics = fit(
        tmp_path, image_folders, tiny_clip_dir, task, {**FAST, "entropy_weight": 0.1}
    )
    assert cli.model.hparams.entropy_weight == 0.1
    for key in ("train/loss_sup", "train/loss_cons", "train/loss_ent_u"):
        assert torch.isfinite(metrics[key]) and metrics[key + "_epoch"] > 0, key


def test_cap_overlay_is_a_mean_teacher_task_that_trains_as_cssa_with_its_switches_off(
    tmp_path, image_folders, tiny_clip_dir
):
    # A CSSA config (with CSSA-only options) plus the cap overlay: a MeanTeacherTask.
    cssa = "cssa_lightning.CSSATask"
    cap, cap_metrics = fit(
        tmp_path, image_folders, tiny_clip_dir, cssa, CSSA_FAST, "cap", extra=["--config", "cap"]
    )
    model = cap.model
    assert type(model) is MeanTeacherTask
    assert model.net.cross_attention is None and model.net.context_head is None
    assert "context" not in model.hparams and not hasattr(model, "class_to_context")
    assert cap_metrics["train/loss_cons_epoch"] > 0
    assert not any(key.startswith(("train/loss_align", "train/loss_ctx")) for key in cap_metrics)
    # The former way to write CAP trains the same weights, bit for bit.
    options = {**CSSA_FAST, **CAP_SWITCHES}
    switches, switch_metrics = fit(
        tmp_path, image_folders, tiny_clip_dir, cssa, options, "switches"
    )
    assert type(switches.model) is CSSATask
    old, new = switches.model.state_dict(), model.state_dict()
    assert set(old) - set(new) == {"class_to_context"} and set(new) <= set(old)
    for name, value in new.items():
        assert torch.equal(value, old[name]), name
    assert switch_metrics.keys() == cap_metrics.keys()
    for key, value in cap_metrics.items():
        assert torch.equal(value, switch_metrics[key]), key
    # Saved and restored as a MeanTeacherTask, teacher and thresholds included.
    restored = MeanTeacherTask.load_from_checkpoint(next((tmp_path / "cap").rglob("*.ckpt")))
    for name, value in restored.state_dict().items():
        torch.testing.assert_close(value, new[name], msg=name)


def test_supervised_ema_overlay_trains_on_labeled_images_only(
    tmp_path, image_folders, tiny_clip_dir
):
    cli, metrics = fit(
        tmp_path, image_folders, tiny_clip_dir, MT, FAST, extra=["--config", "supervised_ema"]
    )
    assert type(cli.model) is MeanTeacherTask
    assert cli.model.hparams.use_consistency is False
    assert cli.datamodule.hparams.load_unlabeled is False
    assert cli.model.loss_names() == ["sup"] and not cli.model.uses_unlabeled
    assert not any(key.startswith(("train/loss_cons", "train/mask_ratio")) for key in metrics)
    assert torch.isfinite(metrics["val/mAP_teacher"])


# -- checkpoints of the layout before MeanTeacherTask --------------------------------------------
@pytest.mark.parametrize("name", ["cssa", "cap"])
def test_checkpoints_of_the_old_layout_load_as_cssa_tasks(tmp_path, tiny_clip_dir, name):
    # Written by CSSATask before the split (commit 828b8ff: CSSA, and CAP as CSSATask with its
    # switches off) after a warm-up epoch and a semi-supervised one, with the scores it gave
    # on three images; clip_checkpoint renamed (the tests' tiny CLIP is rebuilt per session).
    path = OLD_LAYOUT / f"{name}.ckpt"
    stored = torch.load(path, map_location="cpu", weights_only=False)
    assert stored["hyper_parameters"]["_class_path"] == "cssa_lightning.CSSATask"
    task = CSSATask.load_from_checkpoint(path, clip_checkpoint=str(tiny_clip_dir)).eval()
    assert type(task) is CSSATask
    state = task.state_dict()
    # The one buffer added since: the ring memory's cursor, 0 for a per-image memory.
    assert state.keys() == stored["state_dict"].keys() | {"pseudo_labeller.cursor"}
    assert int(state["pseudo_labeller.cursor"]) == 0
    for key, value in stored["state_dict"].items():
        assert torch.equal(state[key], value), key
    # Their flat options of 0.2 read into the groups of 0.3.
    from cssa_lightning.methods.options import FLAT_NAMES

    for key, value in stored["hyper_parameters"].items():
        if key in FLAT_NAMES:
            group, field = FLAT_NAMES[key]
            assert task.hparams[group][field] == value, key
        elif not key.startswith("_") and key != "clip_checkpoint":
            assert task.hparams[key] == value, key
    expected = stored["old_layout_expected"]
    with torch.no_grad():
        scores = task.evaluation_scores(expected["images"])
    assert scores.keys() == expected["scores"].keys()
    for key, value in expected["scores"].items():
        torch.testing.assert_close(scores[key], value, msg=key)
    assert set(task.loss_names()) == set(expected["loss_names"])
    assert task.uses_unlabeled == expected["uses_unlabeled"]
    assert bool(task.pseudo_labeller.ready)
    # And through load_trained (cssa predict, cssa export): the stored task class resolves.
    stored["hyper_parameters"]["clip_checkpoint"] = str(tiny_clip_dir)
    copy = tmp_path / path.name
    torch.save(stored, copy)
    trained, preprocessing = load_trained(copy)
    assert type(trained) is CSSATask and preprocessing.image_size == 32


def test_alignment_in_the_warmup_is_an_option_of_the_align_row(tiny_clip_dir):
    def task(**options):
        torch.manual_seed(0)
        return CSSATask(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), **CSSA_FAST, **options)

    student_images, targets = torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    default, early = task(), task(alignment={"in_warmup": True, "target": "text"})
    for model, in_warmup in ((default, False), (early, True)):
        with_trainer(model, epoch=0)  # the warm-up (warmup_epochs=1)
        losses = model.labeled_losses(model.encode(student_images), targets)
        assert ("align" in losses) is in_warmup and "sup" in losses
    # At full weight from the first step (no ramp), where the default waits for the ramp.
    assert early.loss_weights(0, 8, 0)["align"] == early.alignment_options.weight
    assert default.loss_weights(0, 8, 0)["align"] == 0.0
    with_trainer(early, epoch=1)  # after the warm-up the unlabeled rows still ramp
    weights = early.loss_weights(2, 8, 56)
    assert weights["align"] == early.alignment_options.weight
    assert weights["align_u"] == pytest.approx(early.alignment_options.weight * 0.4)


# -- the prior of pseudo.prior_weight ---------------------------------------------------------
def test_pseudo_label_probs_blend_the_teacher_with_the_frozen_prior(tiny_clip_dir):
    plain = MeanTeacherTask(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir))
    assert plain.prior is None and not any(k.startswith("prior.") for k in plain.state_dict())
    task = MeanTeacherTask(
        CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), pseudo={"prior_weight": 0.25}
    )
    with torch.no_grad():  # a teacher that has moved away from the start network
        for parameter in task.teacher.module.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    images = torch.randn(4, 3, 32, 32)
    teacher, prior = task.teacher_probs(images), torch.sigmoid(task.prior(images).logits)
    assert (teacher - prior).abs().max() > 1e-3
    torch.testing.assert_close(task.pseudo_label_probs(images), 0.75 * teacher + 0.25 * prior)
    # The evaluated teacher is never blended.
    torch.testing.assert_close(task.evaluation_scores(images)["_teacher"], teacher)
    with pytest.raises(ValueError, match="prior_weight"):
        MeanTeacherTask(
            CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), pseudo={"prior_weight": 2}
        )


def test_the_prior_is_the_calibrated_start_network_and_is_checkpointed(
    tmp_path, image_folders, tiny_clip_dir
):
    options = {**FAST, "pseudo": {"prior_weight": 0.8, "prior_weighting": "labeled_ap"}}
    cli, metrics = fit(tmp_path, image_folders, tiny_clip_dir, MT, options)
    model = cli.model
    # Per class: 0.8 times the prior's AP above chance on the labeled images.
    probs, targets = [], []
    for batch in cli.datamodule.labeled_eval_dataloader():
        probs.append(frozen_probs(model.prior, batch["image"]))
        targets.append(batch["target"])
    skill = prior_skill(torch.cat(probs), torch.cat(targets))
    torch.testing.assert_close(model.prior_class_weights, 0.8 * skill)
    assert 0 < float(model.prior_class_weights.max()) <= 0.8
    assert metrics["train/loss_cons_epoch"] > 0
    start = MeanTeacherTask(CLASS_NAMES, clip_checkpoint=str(tiny_clip_dir)).net.state_dict()
    prior, student = model.prior.state_dict(), model.net.state_dict()
    moved = [name for name in start if not torch.equal(student[name], start[name])]
    assert len(moved) > 10  # the student trained
    for name, value in start.items():
        if name == "alignment.bias":  # calibrated on the labeled images at fit start
            assert not torch.equal(prior[name], value)
        else:
            assert torch.equal(prior[name], value), name
    assert not any(p.requires_grad for p in model.prior.parameters())
    restored = MeanTeacherTask.load_from_checkpoint(next((tmp_path / "run").rglob("*.ckpt")))
    for name, value in restored.prior.state_dict().items():
        assert torch.equal(value, prior[name]), name
    assert torch.equal(restored.prior_class_weights, model.prior_class_weights)


def test_min_prior_skill_leaves_the_classes_pretraining_never_learnt_out_of_unlabeled_losses(
    tmp_path, image_folders, tiny_clip_dir
):
    task = MeanTeacherTask(
        CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), pseudo={"min_prior_skill": 0.2}
    )
    task.unlabeled_classes.copy_(torch.tensor([1.0, 0.0, 1.0]))
    task.pseudo_labeller.thresholds.fill_(0.5)
    pseudo = task.pseudo_labels(torch.tensor([[0.9, 0.9, 0.1], [0.1, 0.2, 0.8]]))
    assert pseudo.labels.tolist() == [[1, 1, 0], [0, 0, 1]]  # labels unchanged
    assert pseudo.mask.tolist() == [[1, 0, 1], [1, 0, 1]]  # the gated class is masked
    plain = MeanTeacherTask(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir))
    assert not hasattr(plain, "unlabeled_classes")  # no buffer, no checkpoint key by default
    with pytest.raises(ValueError, match="min_prior_skill"):
        MeanTeacherTask(
            CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), pseudo={"min_prior_skill": 2}
        )
    # In a fit: the classes whose start-network skill on the labeled images reaches the bar
    # (the prior is that network; its weights per class are 0.8 x skill).
    options = {
        **FAST,
        "pseudo": {"prior_weight": 0.8, "prior_weighting": "labeled_ap", "min_prior_skill": 0.1},
    }
    cli, _ = fit(tmp_path, image_folders, tiny_clip_dir, MT, options)
    model = cli.model
    skill = model.prior_class_weights / 0.8
    torch.testing.assert_close(model.unlabeled_classes, (skill >= 0.1 - 1e-6).float())
    restored = MeanTeacherTask.load_from_checkpoint(next((tmp_path / "run").rglob("*.ckpt")))
    assert torch.equal(restored.unlabeled_classes, model.unlabeled_classes)


def test_neighbour_votes_are_the_nearest_labeled_images_weighted_label_shares():
    voters = NeighbourVote(num_classes=2, neighbours=2, temperature=0.5)
    features = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # unit rows
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    voters.fit(3 * features, targets)  # stored normalised
    torch.testing.assert_close(voters.features, features)
    # The image (1, 0): its two nearest voters are rows 0 (cos 1) and 1 (cos 0.8).
    weights = torch.softmax(torch.tensor([1.0, 0.8]) / 0.5, dim=0)
    expected = weights[0] * targets[0] + weights[1] * targets[1]
    torch.testing.assert_close(voters(torch.tensor([[2.0, 0.0]])), expected.unsqueeze(0))
    # Leave-one-out: row 0 is voted by rows 1 (cos 0.8) and 2 (cos 0), never by itself.
    weights = torch.softmax(torch.tensor([0.8, 0.0]) / 0.5, dim=0)
    loo = voters.leave_one_out()
    torch.testing.assert_close(loo[0], weights[0] * targets[1] + weights[1] * targets[2])
    # More voters asked for than stored: all of them vote (one fewer when leaving one out).
    many = NeighbourVote(num_classes=2, neighbours=10, temperature=1e-3)
    many.fit(features, targets)
    torch.testing.assert_close(many(torch.tensor([[0.0, 1.0]])), targets[2:])
    assert many.leave_one_out().shape == (3, 2)
    with pytest.raises(RuntimeError, match="call fit"):
        NeighbourVote(num_classes=2)(features)
    with pytest.raises(ValueError, match="prior_weight"):
        PseudoLabelOptions(prior_source="neighbours")
    with pytest.raises(ValueError, match="neighbours"):
        PseudoLabelOptions(prior_weight=0.5, prior_source="best", neighbours=0)


@pytest.mark.parametrize("source", ["neighbours", "best"])
def test_the_prior_from_the_labeled_images_votes_is_fitted_weighted_and_checkpointed(
    tmp_path, image_folders, tiny_clip_dir, source
):
    options = {
        **FAST,
        "pseudo": {
            "prior_weight": 0.8,
            "prior_weighting": "labeled_ap",
            "min_prior_skill": 0.1,
            "prior_source": source,
            "neighbours": 5,
        },
    }
    cli, metrics = fit(tmp_path, image_folders, tiny_clip_dir, MT, options)
    model = cli.model
    # The voters are the labeled images seen by the frozen start network (the prior).
    images, targets = [], []
    for batch in cli.datamodule.labeled_eval_dataloader():
        images.append(batch["image"])
        targets.append(batch["target"])
    images, targets = torch.cat(images), torch.cat(targets)
    start_probs, start_features = frozen_outputs(model.prior, images)
    torch.testing.assert_close(model.prior_votes.targets, targets)
    torch.testing.assert_close(
        model.prior_votes.features, torch.nn.functional.normalize(start_features, dim=-1)
    )
    # Per class the source: every class voted, or the one more skilled on the labeled images
    # (the votes' leave-one-out AP against the start network's); weights and gate from it.
    start_skill = prior_skill(start_probs, targets)
    vote_skill = prior_skill(model.prior_votes.leave_one_out(), targets)
    voted = torch.ones(len(CLASS_NAMES)) if source == "neighbours" else (vote_skill > start_skill)
    torch.testing.assert_close(model.classes_voted, voted.float())
    skill = torch.where(voted.bool(), vote_skill, start_skill)
    torch.testing.assert_close(model.prior_class_weights, 0.8 * skill)
    torch.testing.assert_close(model.unlabeled_classes, (skill >= 0.1).float())
    # The pseudo-labels' probabilities: the teacher blended with that prior.
    probs = model.pseudo_label_probs(images[:4])
    prior = torch.where(voted.bool(), model.prior_votes(start_features[:4]), start_probs[:4])
    weight = model.prior_class_weights
    expected = (1 - weight) * model.teacher_probs(images[:4]) + weight * prior
    torch.testing.assert_close(probs, expected)
    assert metrics["train/loss_cons_epoch"] > 0
    restored = MeanTeacherTask.load_from_checkpoint(next((tmp_path / "run").rglob("*.ckpt")))
    for name in ("features", "targets"):
        assert torch.equal(getattr(restored.prior_votes, name), getattr(model.prior_votes, name))
    assert torch.equal(restored.classes_voted, model.classes_voted)
    torch.testing.assert_close(restored.pseudo_label_probs(images[:4]), probs)


def test_prior_skill_is_average_precision_above_chance():
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 1, 0]])
    probs = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.1, 0.3, 0.5], [0.3, 0.2, 0.5]])
    # Class 0 ranked perfectly: 1. Class 1 (frequency 1/2): positives ranked 1st and 3rd,
    # AP (1 + 2/3) / 2 = 5/6, above chance (5/6 - 1/2) / (1/2) = 2/3. Class 2: no positive.
    torch.testing.assert_close(prior_skill(probs, targets), torch.tensor([1.0, 2 / 3, 0.0]))
    # Scores that rank positives below chance give 0, not a negative weight.
    worst = prior_skill(torch.tensor([[0.1], [0.9], [0.8]]), torch.tensor([[1], [0], [0]]))
    assert float(worst) == 0.0


# -- grouped options -----------------------------------------------------------------------------
def test_an_option_group_refuses_a_value_outside_its_choices(tiny_clip_dir):
    from cssa_lightning.methods.options import AlignmentOptions, ContextOptions, options_of

    # Built in Python (a notebook, a checkpoint's hyperparameters), not only on the command line.
    with pytest.raises(ValueError, match="pseudo.threshold must be one of 'cat', 'fixed', 'fbeta'"):
        PseudoLabelOptions(threshold="CAT")
    with pytest.raises(ValueError, match="got 'texts'"):
        AlignmentOptions(target="texts")
    with pytest.raises(ValueError, match="context.reduction"):
        options_of(ContextOptions, {"reduction": "avg"}, "context")
    with pytest.raises(ValueError, match="pseudo.refresh"):
        MeanTeacherTask(
            CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), pseudo={"refresh": "epochs"}
        )
    assert PseudoLabelOptions(threshold="fbeta").threshold == "fbeta"


def test_grouped_options_are_stored_as_plain_dicts_and_the_flat_names_of_0_2_still_load(
    tiny_clip_dir,
):
    from cssa_lightning.methods.options import FLAT_NAMES, AlignmentOptions

    common = {"clip_checkpoint": str(tiny_clip_dir), "attention_heads": 4}
    grouped = CSSATask(
        CLASS_NAMES,
        pseudo={"threshold": "fixed", "memory": 7},
        alignment={"weight": 0.3},
        context={"num_contexts": 2},
        **common,
    )
    assert grouped.pseudo_labeller.rule == "fixed" and grouped.alignment_options.weight == 0.3
    assert grouped.alignment_options == AlignmentOptions(weight=0.3)
    for group in ("pseudo", "alignment", "context"):
        assert type(grouped.hparams[group]) is dict  # weights-only checkpoints take it
    with pytest.warns(DeprecationWarning, match="is now alignment.weight"):
        flat = CSSATask(
            CLASS_NAMES,
            pseudo_threshold="fixed",
            score_memory=7,
            alignment_weight=0.3,
            num_contexts=2,
            **common,
        )
    assert dict(flat.hparams) == dict(grouped.hparams)
    assert not set(FLAT_NAMES) & set(flat.hparams)
    # A subclass whose own frame passes a flat name on: still one record, grouped.
    entropy = EntropyCAP(CLASS_NAMES, clip_checkpoint=str(tiny_clip_dir), reliability_margin=0.1)
    assert entropy.hparams.pseudo["reliability_margin"] == 0.1
    assert "reliability_margin" not in entropy.hparams
    # A CSSATask subclass with a constructor of its own, given a partial group: the record is
    # the complete group (its constructor's frame held only what the caller passed).
    partial = EntropyCSSA(CLASS_NAMES, context={"num_contexts": 2}, **common)
    assert partial.hparams.context == dict(grouped.hparams.context)
    assert partial.hparams.entropy_weight == 0.5
    with pytest.raises(ValueError, match="alignment: no option 'wieght'; its options: enabled"):
        CSSATask(CLASS_NAMES, alignment={"wieght": 1.0}, **common)
