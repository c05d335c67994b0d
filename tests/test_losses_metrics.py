import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from cssa_lightning.methods.losses import asymmetric_loss, binary_cross_entropy
from cssa_lightning.methods.metrics import MultiLabelMetrics


def naive_asl(logits, targets, gamma_neg, gamma_pos, clip, mask=None):
    total = 0.0
    for b in range(logits.shape[0]):
        for k in range(logits.shape[1]):
            if mask is not None and mask[b, k] == 0:
                continue
            p = 1 / (1 + math.exp(-float(logits[b, k])))
            y = float(targets[b, k])
            p_m = max(p - clip, 0.0)
            pos = y * (1 - p) ** gamma_pos * math.log(max(p, 1e-8))
            neg = (1 - y) * p_m**gamma_neg * math.log(max(1 - p_m, 1e-8))
            total -= pos + neg
    return total / logits.shape[0]


@pytest.mark.parametrize("gammas", [(4.0, 0.0, 0.05), (2.0, 1.0, 0.0), (0.0, 0.0, 0.0)])
def test_asl_matches_naive_loop(gammas):
    torch.manual_seed(0)
    logits = torch.randn(5, 7, dtype=torch.float64) * 3
    targets = (torch.rand(5, 7) > 0.6).float()
    mask = (torch.rand(5, 7) > 0.3).float()
    for m in (None, mask):
        ours = asymmetric_loss(logits, targets, *gammas, mask=m)
        assert ours.item() == pytest.approx(naive_asl(logits, targets, *gammas, mask=m), rel=1e-5)


def test_asl_without_focusing_is_bce():
    torch.manual_seed(1)
    logits, targets = torch.randn(4, 3), (torch.rand(4, 3) > 0.5).float()
    assert asymmetric_loss(logits, targets, 0.0, 0.0, 0.0).item() == pytest.approx(
        binary_cross_entropy(logits, targets).item(), rel=1e-5
    )


def test_asl_gradient_is_finite_for_extreme_logits():
    logits = torch.tensor([[-100.0, 100.0, 0.0]], requires_grad=True)
    loss = asymmetric_loss(logits, torch.tensor([[1.0, 0.0, 1.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    target = (rng.random((200, 9)) < 0.3).astype(int)
    probs = np.clip(target * 0.3 + rng.random((200, 9)) * 0.7, 0, 1)
    metrics = MultiLabelMetrics(9)
    # Two updates, as from two batches.
    metrics.update(torch.tensor(probs[:120]), torch.tensor(target[:120]))
    metrics.update(torch.tensor(probs[120:]), torch.tensor(target[120:]))
    values = metrics.compute()
    assert values["mAP"].item() == pytest.approx(
        100 * average_precision_score(target, probs, average="macro"), abs=1e-4
    )
    predicted = (probs >= 0.5).astype(int)
    cp = precision_score(target, predicted, average="macro", zero_division=0)
    cr = recall_score(target, predicted, average="macro", zero_division=0)
    assert values["CF1"].item() == pytest.approx(100 * 2 * cp * cr / (cp + cr), abs=1e-4)
    assert values["OF1"].item() == pytest.approx(
        100 * f1_score(target, predicted, average="micro"), abs=1e-4
    )


def test_asl_detached_focus_same_value_gradient_of_the_log_terms_only():
    torch.manual_seed(2)
    logits = (torch.randn(6, 5, dtype=torch.float64) * 2).requires_grad_()
    targets = (torch.rand(6, 5) > 0.5).double()
    plain = asymmetric_loss(logits, targets, 4.0, 1.0, 0.05)
    detached = asymmetric_loss(logits, targets, 4.0, 1.0, 0.05, detach_focus=True)
    assert detached.item() == pytest.approx(plain.item(), rel=1e-12)
    (grad_plain,) = torch.autograd.grad(plain, logits)
    (grad_detached,) = torch.autograd.grad(detached, logits)
    # Reference: the focusing weights as constants, only the log terms differentiated.
    p = torch.sigmoid(logits.detach()).requires_grad_()
    p_m = (p - 0.05).clamp(min=0)
    w_pos, w_neg = (1 - p.detach()) ** 1.0, p_m.detach() ** 4.0
    ref = -(targets * w_pos * p.log() + (1 - targets) * w_neg * (1 - p_m).log()).sum() / 6
    (grad_p,) = torch.autograd.grad(ref, p)
    expected = grad_p * p.detach() * (1 - p.detach())  # chain rule through the sigmoid
    torch.testing.assert_close(grad_detached, expected)
    assert not torch.allclose(grad_plain, grad_detached)
