"""The CSSA components, each checked without a Trainer."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cssa_lightning.methods.contexts import cluster_contexts, context_targets, cooccurrence_affinity
from cssa_lightning.methods.cssa import CSSATask
from cssa_lightning.methods.losses import (
    cosine_alignment_loss,
    pair_normalizer,
    semantic_alignment_loss,
)
from cssa_lightning.methods.pseudo_labels import (
    PseudoLabels,
    cat_thresholds,
    fbeta_thresholds,
    fixed_thresholds,
    pseudo_labels,
)
from cssa_lightning.networks.clip import CLIPBackbone, zero_shot_scores
from cssa_lightning.networks.heads import AlignmentHead, LabelQueryCrossAttention, LabelQueryDecoder
from cssa_lightning.networks.network import MultiLabelCLIPNet

from .conftest import CLASS_NAMES


def make_net(clip_dir, **kwargs):
    torch.manual_seed(0)
    clip = CLIPBackbone(str(clip_dir))
    return MultiLabelCLIPNet(clip, CLASS_NAMES, ["a photo of a {}."], logit_scale=10.0, **kwargs)


def test_zero_init_cross_attention_scores_equal_zero_shot(tiny_clip_dir):
    net = make_net(tiny_clip_dir, label_specific=True, attention_heads=4).eval()
    images = torch.randn(4, 3, 32, 32)
    out = net(images)
    assert out.label_features.shape == (4, 6, 32)
    zero_shot = zero_shot_scores(net.clip, images, net.text_features)
    torch.testing.assert_close(
        net.alignment.cosine(out.label_features), zero_shot, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(out.logits, 10.0 * zero_shot, atol=1e-4, rtol=0)
    # The attention does contribute once W_o is non-zero.
    torch.nn.init.normal_(net.cross_attention.attention.out_proj.weight)
    assert not torch.allclose(net(images).label_features[:, 0], out.global_feature)


@pytest.mark.parametrize("depth", [1, 2])
def test_decoder_block_starts_at_zero_shot_then_learns_per_label(tiny_clip_dir, depth):
    net = make_net(
        tiny_clip_dir,
        label_specific=True,
        attention_heads=4,
        label_query_block="decoder",
        label_query_depth=depth,
    ).eval()
    assert isinstance(net.cross_attention, LabelQueryDecoder)
    assert len(net.cross_attention.blocks) == depth
    images = torch.randn(4, 3, 32, 32)
    out = net(images)
    zero_shot = zero_shot_scores(net.clip, images, net.text_features)
    torch.testing.assert_close(out.logits, 10.0 * zero_shot, atol=1e-4, rtol=0)
    # The labels' gradient reaches every block (not only the zero-initialised output).
    out.logits.sum().backward()
    assert net.cross_attention.out.weight.grad.abs().sum() > 0
    torch.nn.init.normal_(net.cross_attention.out.weight, std=0.1)
    features = net(images).label_features
    assert not torch.allclose(features[:, 0], features[:, 1])
    with pytest.raises(ValueError, match="depth"):
        LabelQueryDecoder(dim=8, num_heads=2, depth=0)


def test_label_specific_subset_scores_the_other_classes_from_the_global_feature(tiny_clip_dir):
    options = {"label_specific": True, "attention_heads": 4}
    plain = make_net(tiny_clip_dir, **options).eval()
    subset = make_net(tiny_clip_dir, label_specific_subset=True, **options).eval()
    assert "label_specific_classes" not in plain.state_dict()  # other checkpoints unchanged
    subset.load_state_dict(plain.state_dict(), strict=False)
    assert subset.label_specific_mask.tolist() == [1.0] * 6  # every class until a task sets it
    with torch.no_grad():
        plain.cross_attention.attention.out_proj.weight.normal_()
        subset.cross_attention.attention.out_proj.weight.copy_(
            plain.cross_attention.attention.out_proj.weight
        )
        subset.label_specific_classes.copy_(torch.tensor([1.0, 0, 1, 0, 0, 1]))
    images = torch.randn(4, 3, 32, 32)
    out, reference = subset(images), plain(images)
    global_scores = subset.alignment(out.global_feature)
    kept, gated = [0, 2, 5], [1, 3, 4]
    torch.testing.assert_close(out.logits[:, kept], reference.logits[:, kept])
    torch.testing.assert_close(out.logits[:, gated], global_scores[:, gated])
    assert not torch.allclose(reference.logits[:, gated], global_scores[:, gated])
    with pytest.raises(ValueError, match="label-specific"):
        make_net(tiny_clip_dir, label_specific_subset=True)


@pytest.mark.parametrize("block", ["attention", "decoder"])
def test_context_informed_queries_start_unchanged_then_follow_the_contexts(tiny_clip_dir, block):
    options = {"label_specific": True, "attention_heads": 4, "label_query_block": block}
    plain = make_net(tiny_clip_dir, num_contexts=3, **options).eval()
    informed = make_net(tiny_clip_dir, num_contexts=3, context_queries=True, **options).eval()
    informed.load_state_dict(plain.state_dict(), strict=False)  # all but the embedding
    assert informed.context_embedding.shape == (3, 32) and not informed.context_embedding.any()
    images = torch.randn(4, 3, 32, 32)
    before = informed(images)
    torch.testing.assert_close(before.logits, plain(images).logits)  # step 0 unchanged
    torch.testing.assert_close(before.context_logits, plain(images).context_logits)
    # Once the block's zero-initialised output has moved, the label scores train the
    # embedding; only the context task trains the context head.
    with torch.no_grad():
        if block == "attention":
            informed.cross_attention.attention.out_proj.weight.normal_()
        else:
            informed.cross_attention.out.weight.normal_(std=0.1)
    informed(images).logits.sum().backward()
    assert informed.context_embedding.grad.abs().sum() > 0
    assert all(p.grad is None for p in informed.context_head.parameters())
    # Once the embedding is not zero, an image's queries depend on its predicted contexts.
    with torch.no_grad():
        informed.context_embedding.normal_()
        changed = informed(images).label_features
        informed.context_head.mlp[-1].bias.add_(5.0)  # other contexts predicted
        moved = informed(images).label_features
    assert not torch.allclose(changed, moved)
    with pytest.raises(ValueError, match="context_queries"):
        make_net(tiny_clip_dir, num_contexts=3, context_queries=True, attention_heads=4)


def test_cross_attention_is_per_label():
    layer = LabelQueryCrossAttention(dim=8, num_heads=2)
    torch.nn.init.normal_(layer.attention.out_proj.weight)
    text, patches, glob = torch.randn(3, 8), torch.randn(2, 5, 8), torch.randn(2, 8)
    out = layer(text, patches, glob)
    assert out.shape == (2, 3, 8)
    # Different label queries attend differently: features differ across labels.
    assert not torch.allclose(out[:, 0], out[:, 1])
    with pytest.raises(ValueError, match="must divide"):
        LabelQueryCrossAttention(dim=8, num_heads=3)


def test_alignment_head_scores():
    text = F.normalize(torch.randn(3, 4), dim=-1)
    head = AlignmentHead(text, logit_scale=5.0, learnable_prototypes=False)
    head.bias.data = torch.tensor([0.1, -0.2, 0.3])
    features = torch.randn(2, 3, 4)
    expected = torch.stack(
        [
            torch.stack(
                [
                    5.0 * F.cosine_similarity(features[b, k], text[k], dim=0) + head.bias[k]
                    for k in range(3)
                ]
            )
            for b in range(2)
        ]
    )
    torch.testing.assert_close(head(features), expected, atol=1e-5, rtol=0)
    assert "prototypes" not in dict(head.named_parameters())
    assert "prototypes" in dict(AlignmentHead(text, 5.0).named_parameters())


def test_alignment_loss_matches_naive_loop():
    torch.manual_seed(0)
    features, text = torch.randn(3, 4, 6), torch.randn(4, 6)
    positives = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.float32)
    tau = 0.1
    total, count = 0.0, 0
    for b in range(3):
        for k in range(4):
            if positives[b, k]:
                sims = (
                    torch.stack(
                        [F.cosine_similarity(features[b, k], text[j], dim=0) for j in range(4)]
                    )
                    / tau
                )
                total += -(sims[k] - torch.logsumexp(sims, 0))
                count += 1
    ours = semantic_alignment_loss(features, text, positives, tau)
    assert ours.item() == pytest.approx((total / count).item(), rel=1e-5)
    assert semantic_alignment_loss(features, text, torch.zeros(3, 4)).item() == 0.0


def test_split_batches_average_to_the_whole_batch_alignment_loss():
    # Two processes with uneven positives: the average of their losses (what DDP's gradient
    # averaging sees) must equal the loss of the batch as a whole.
    torch.manual_seed(0)
    features, text = torch.randn(4, 3, 5), torch.randn(3, 5)
    positives = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.float32)
    whole = semantic_alignment_loss(features, text, positives)
    halves = (slice(0, 2), slice(2, 4))
    total = sum(positives[h].sum() for h in halves)
    split = [
        semantic_alignment_loss(
            features[h],
            text,
            positives[h],
            normalizer=pair_normalizer(positives[h], world_size=2, all_reduce=lambda _: total),
        )
        for h in halves
    ]
    torch.testing.assert_close((split[0] + split[1]) / 2, whole)
    # Each process dividing by its own count instead would not.
    own = [semantic_alignment_loss(features[h], text, positives[h]) for h in halves]
    assert abs(((own[0] + own[1]) / 2 - whole).item()) > 1e-3


def test_cat_positive_rate_equals_prior():
    torch.manual_seed(0)
    scores = torch.rand(997, 5)
    priors = torch.tensor([0.0, 0.013, 0.1, 0.377, 1.0])
    thresholds = cat_thresholds(scores, priors)
    labels, mask = pseudo_labels(scores, thresholds)
    counts = labels.sum(0)
    expected = priors * len(scores)
    assert torch.all((counts - expected).abs() <= 1), (counts, expected)
    assert counts[0] == 0 and torch.isinf(thresholds[0])
    assert torch.all(mask == 1)


def test_reliability_mask_and_fixed_thresholds():
    probs = torch.tensor([[0.9, 0.52, 0.1]])
    labels, mask = pseudo_labels(probs, fixed_thresholds(3, 0.5), margin=0.1)
    assert labels.tolist() == [[1, 1, 0]]
    assert mask.tolist() == [[1, 0, 1]]


def test_fbeta_thresholds_maximise_f1():
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6], [0.2]])
    targets = torch.tensor([[1], [1], [0], [1], [0]])
    # Cuts: 0.9 -> F1 0.5, 0.8 -> 0.8, 0.7 -> 0.667, 0.6 -> 0.857, 0.2 -> 0.75.
    assert fbeta_thresholds(scores, targets).item() == pytest.approx(0.6)
    # Recall-heavy beta moves the cut down, precision-heavy keeps it high.
    assert fbeta_thresholds(scores, targets, beta=0.3).item() == pytest.approx(0.8)


def test_spectral_clustering_recovers_planted_blocks():
    rng = np.random.default_rng(0)
    blocks = [[0, 3, 6], [1, 4, 7, 9], [2, 5, 8]]
    rows = []
    for _ in range(400):
        block = blocks[rng.integers(3)]
        y = np.zeros(10)
        y[rng.choice(block, size=rng.integers(1, len(block) + 1), replace=False)] = 1
        rows.append(y)
    affinity = cooccurrence_affinity(np.stack(rows))
    assert np.allclose(affinity, affinity.T) and np.all(np.diag(affinity) == 0)
    contexts = cluster_contexts(affinity, 3, seed=0)
    found = {frozenset(np.flatnonzero(contexts == c).tolist()) for c in range(3)}
    assert found == {frozenset(b) for b in blocks}


def test_cooccurrence_on_hand_made_example():
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    affinity = cooccurrence_affinity(y)
    # P(1|0) = 1/2, P(0|1) = 1: W_01 = 0.75; class 2 never seen -> zero row.
    assert affinity[0, 1] == pytest.approx(0.75) and affinity[1, 0] == pytest.approx(0.75)
    assert np.all(affinity[2] == 0)


def test_context_targets_hand_made():
    class_to_context = torch.tensor([0, 1, 1, 2])
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    multi = context_targets(labels, class_to_context, 3)
    assert multi.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]
    single = context_targets(labels, class_to_context, 3, single_label=True)
    assert single.tolist() == [0, 1, -100]


def test_context_loss_reduction_sums_over_contexts():
    from cssa_lightning.methods.losses import context_loss

    logits, targets = torch.randn(4, 5), (torch.rand(4, 5) > 0.5).float()
    mean = context_loss(logits, targets)
    torch.testing.assert_close(context_loss(logits, targets, reduction="sum"), 5 * mean)


def test_unlabeled_context_targets_can_keep_only_trusted_pseudo_labels(tiny_clip_dir):
    from cssa_lightning.methods.pseudo_labels import PseudoLabels

    def task(**options):
        torch.manual_seed(0)
        return CSSATask(
            CLASS_NAMES[:4],
            clip_checkpoint=str(tiny_clip_dir),
            attention_heads=4,
            **options,
        )

    trusted = task(context={"num_contexts": 2, "unlabeled_targets": "trusted"})
    every = task(context={"num_contexts": 2})
    for t in (trusted, every):
        t.class_to_context.copy_(torch.tensor([0, 0, 1, 1]))
    strong = every.encode(torch.randn(2, 3, 32, 32))
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, 0]])
    mask = torch.tensor([[1.0, 1, 0, 1], [1, 1, 0, 1]])  # the context-1 positives are masked
    pseudo = PseudoLabels(labels, mask)
    got = trusted.unlabeled_context_term(strong, labels, pseudo)
    torch.testing.assert_close(got, every.context_loss(strong, labels * mask))
    assert not torch.allclose(got, every.unlabeled_context_term(strong, labels, pseudo))


def test_ema_teacher_follows_decay_and_has_no_gradients(tiny_clip_dir):
    student = make_net(tiny_clip_dir, label_specific=True, attention_heads=4)
    teacher = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    teacher.requires_grad_(False)
    teacher.update_parameters(student)  # first update copies the student
    before = teacher.module.alignment.bias.clone()
    with torch.no_grad():
        student.alignment.bias.add_(1.0)
    teacher.update_parameters(student)
    torch.testing.assert_close(
        teacher.module.alignment.bias, 0.9 * before + 0.1 * student.alignment.bias
    )
    assert not any(p.requires_grad for p in teacher.parameters())
    out = teacher(torch.randn(2, 3, 32, 32))
    assert not out.logits.requires_grad


@pytest.fixture(scope="module")
def cssa_task(tiny_clip_dir):
    return CSSATask(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), attention_heads=4)


def test_alignment_positives_on_unlabeled_images(cssa_task):
    task = cssa_task
    task.thresholds.copy_(torch.tensor([0.5, 0.5, 0.5]))
    probs = torch.tensor([[0.9, 0.6, 0.2], [0.55, 0.8, 0.75]])
    labels = (probs >= task.thresholds).float()
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    expected = {
        "all": labels * mask,
        "confident": torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
        "weighted": torch.tensor([[0.9, 0.6, 0.0], [0.55, 0.0, 0.75]]),
        "none": torch.zeros(2, 3),
    }
    for choice, want in expected.items():
        task.alignment_options = replace(task.alignment_options, unlabeled=choice)
        got = task.alignment_positives(probs, PseudoLabels(labels, mask))
        torch.testing.assert_close(got.float(), want, msg=choice)


def test_alignment_target_prototype_follows_the_classifier(cssa_task):
    task = cssa_task
    features = torch.randn(2, 3, task.net.text_features.shape[1])
    encoded = task.encode(torch.randn(2, 3, 32, 32))._replace(label_features=features)
    positives = torch.ones(2, 3)
    with torch.no_grad():
        task.net.alignment.prototypes.copy_(torch.randn_like(task.net.alignment.prototypes))
    losses = {}
    for target in ("text", "prototype", "both"):
        task.alignment_options = replace(task.alignment_options, target=target)
        losses[target] = task.alignment_loss(encoded, positives)
    text = semantic_alignment_loss(features, task.net.text_features, positives, 0.07)
    proto = semantic_alignment_loss(features, task.net.alignment.prototypes, positives, 0.07)
    torch.testing.assert_close(losses["text"], text)
    torch.testing.assert_close(losses["prototype"], proto)
    torch.testing.assert_close(losses["both"], (text + proto) / 2)
    assert not torch.allclose(text, proto)


def test_cosine_alignment_loss_is_the_pull_alone():
    torch.manual_seed(0)
    features, targets = torch.randn(3, 4, 6), torch.randn(4, 6)
    positives = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.float32)
    pairs = [(b, k) for b in range(3) for k in range(4) if positives[b, k]]
    want = sum(1 - F.cosine_similarity(features[b, k], targets[k], dim=0) for b, k in pairs)
    got = cosine_alignment_loss(features, targets, positives)
    assert got.item() == pytest.approx((want / len(pairs)).item(), rel=1e-5)
    assert cosine_alignment_loss(features, targets, torch.zeros(3, 4)).item() == 0.0
    # No push: the targets of classes without a positive do not enter it (the contrast's do).
    moved = targets.clone()
    moved[0] = torch.randn(6)
    only_class_2 = torch.zeros(3, 4)
    only_class_2[:, 2] = 1
    torch.testing.assert_close(
        cosine_alignment_loss(features, moved, only_class_2),
        cosine_alignment_loss(features, targets, only_class_2),
    )
    assert not torch.allclose(
        semantic_alignment_loss(features, moved, only_class_2),
        semantic_alignment_loss(features, targets, only_class_2),
    )


def test_alignment_loss_options_pull_only_and_detached_targets(cssa_task):
    task = cssa_task
    saved = task.alignment_options
    prototypes = task.net.alignment.prototypes
    positives = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    try:
        task.alignment_options = replace(saved, target="prototype", loss="cosine")
        features = torch.randn(2, 3, task.net.text_features.shape[1], requires_grad=True)
        encoded = task.encode(torch.randn(2, 3, 32, 32))._replace(label_features=features)
        torch.testing.assert_close(
            task.alignment_loss(encoded, positives),
            cosine_alignment_loss(features, prototypes, positives),
        )

        def moved(tensor):
            return tensor.grad is not None and bool(tensor.grad.abs().sum() > 0)

        for targets, label_features in ((False, False), (True, False), (False, True)):
            task.alignment_options = replace(
                saved,
                target="prototype",
                detach_targets=targets,
                detach_features=label_features,
            )
            prototypes.grad = None
            features.grad = None
            loss = task.alignment_loss(encoded, positives)
            loss = loss + task.absent_push_loss(encoded, 1 - positives)
            loss.backward()
            # What is detached is left alone by the alignment and the push; the other moves.
            assert moved(features) != label_features, (targets, label_features)
            assert moved(prototypes) != targets, (targets, label_features)
            # The value itself does not change, only where its gradient goes.
            torch.testing.assert_close(
                loss.detach(),
                semantic_alignment_loss(features, prototypes, positives, saved.temperature).detach()
                + task.absent_push_loss(encoded, 1 - positives).detach(),
            )
    finally:
        task.alignment_options = saved
        prototypes.grad = None
    with pytest.raises(ValueError, match="detach_features"):
        replace(saved, target="prototype", detach_targets=True, detach_features=True)
    with pytest.raises(ValueError, match="detach_features"):
        replace(saved, target="text", detach_features=True)


def _consistency(task, probs):
    """The ``cons`` term of ``task.unlabeled_losses`` on ``probs`` and the gradient it gives
    the strong-view logits (a leaf standing in for the student's)."""
    torch.manual_seed(0)
    logits = torch.randn_like(probs, requires_grad=True)
    strong = task.encode(torch.randn(len(probs), 3, 32, 32))._replace(logits=logits)
    losses = task.unlabeled_losses(strong, probs, task.pseudo_labels(probs))
    assert set(losses) == {"cons"}
    losses["cons"].backward()
    return losses["cons"].detach(), logits.grad


@pytest.fixture(scope="module")
def consistency_tasks(tiny_clip_dir):
    """CAP-like tasks (consistency only) with fixed thresholds of 0.5, by
    ``(pseudo.reliability_margin, consistency_target)``."""
    tasks = {}
    for margin in (0.0, 0.1):
        for target in ("hard", "soft"):
            task = CSSATask(
                CLASS_NAMES[:3],
                clip_checkpoint=str(tiny_clip_dir),
                label_specific=False,
                alignment={"enabled": False},
                context={"enabled": False},
                pseudo={"threshold": "fixed", "fixed_threshold": 0.5, "reliability_margin": margin},
                consistency_target=target,
            )
            task.pseudo_labeller.refresh(torch.full((3,), 0.3))  # the fixed thresholds
            tasks[margin, target] = task
    return tasks


PROBS = torch.tensor([[0.9, 0.55, 0.1], [0.45, 0.8, 0.52], [0.2, 0.05, 0.7]])
NEAR = (PROBS - 0.5).abs() < 0.1  # within the margin of the threshold


def test_reliability_margin_masks_entries_near_the_threshold_out_of_the_consistency_loss(
    consistency_tasks,
):
    assert consistency_tasks[0.1, "hard"].pseudo_labeller.reliability_margin == 0.1
    assert NEAR.any() and not NEAR.all()
    for target in ("hard", "soft"):
        loss, grad = _consistency(consistency_tasks[0.1, target], PROBS)
        assert torch.all(grad[NEAR] == 0), target
        assert torch.all(grad[~NEAR] != 0), target
        unmasked_loss, unmasked = _consistency(consistency_tasks[0.0, target], PROBS)
        assert torch.all(unmasked != 0), target
        assert unmasked_loss > loss  # the masked entries' terms are gone
        # Away from the thresholds the two runs' gradients agree.
        torch.testing.assert_close(grad[~NEAR], unmasked[~NEAR])


def test_soft_consistency_targets_are_the_teacher_probabilities(consistency_tasks):
    from cssa_lightning.methods.losses import asymmetric_loss

    hard, _ = _consistency(consistency_tasks[0.1, "hard"], PROBS)
    soft, _ = _consistency(consistency_tasks[0.1, "soft"], PROBS)
    assert not torch.isclose(hard, soft)
    torch.manual_seed(0)
    logits = torch.randn_like(PROBS)
    mask = (~NEAR).float()
    torch.testing.assert_close(soft, asymmetric_loss(logits, PROBS, mask=mask))
    torch.testing.assert_close(hard, asymmetric_loss(logits, (PROBS >= 0.5).float(), mask=mask))
    # The targets that reach the loss; the pseudo-labels themselves stay hard.
    task = consistency_tasks[0.1, "soft"]
    pseudo = task.pseudo_labels(PROBS)
    targets, target_mask = task.consistency_targets(PROBS, pseudo)
    torch.testing.assert_close(targets, PROBS)
    torch.testing.assert_close(target_mask, mask)
    assert set(pseudo.labels.unique().tolist()) == {0.0, 1.0}


def test_bad_consistency_target(tiny_clip_dir):
    with pytest.raises(ValueError, match="consistency_target"):
        CSSATask(CLASS_NAMES[:3], clip_checkpoint=str(tiny_clip_dir), consistency_target="x")
