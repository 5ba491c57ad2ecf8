"""Masked BCE ignores unknown (NaN) labels; positive weights balance rare findings."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional

from clinic.train.losses import masked_bce, positive_weights

NAN = math.nan


def test_masked_bce_is_the_mean_over_known_entries() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 4.0, -2.0]])
    labels = torch.tensor([[1.0, NAN, 0.0], [NAN, 1.0, NAN]])
    known = torch.isfinite(labels)
    expected = functional.binary_cross_entropy_with_logits(logits[known], labels[known])
    assert masked_bce(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_logits_at_unknown_labels_do_not_matter() -> None:
    labels = torch.tensor([[1.0, NAN], [0.0, NAN]])
    logits = torch.tensor([[0.2, 0.0], [-0.4, 0.0]], requires_grad=True)
    loss = masked_bce(logits, labels)
    loss.backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None
    assert logits.grad[:, 1].abs().sum() == 0.0
    assert logits.grad[:, 0].abs().sum() > 0.0
    moved = torch.tensor([[0.2, 50.0], [-0.4, -50.0]])
    assert masked_bce(moved, labels).item() == pytest.approx(loss.item())
    assert torch.isfinite(loss)


def test_all_unknown_gives_a_zero_loss_that_still_backpropagates() -> None:
    logits = torch.randn(3, 2, requires_grad=True)
    loss = masked_bce(logits, torch.full((3, 2), NAN))
    assert loss.item() == 0.0
    loss.backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None and not logits.grad.any()


def test_positive_weight_scales_positive_terms() -> None:
    logits = torch.zeros(2, 1)
    positive, negative = torch.tensor([[1.0], [NAN]]), torch.tensor([[0.0], [NAN]])
    weight = torch.tensor([3.0])
    assert masked_bce(logits, positive, weight).item() == pytest.approx(3.0 * math.log(2.0))
    assert masked_bce(logits, negative, weight).item() == pytest.approx(math.log(2.0))


def test_positive_weights_are_negative_to_positive_ratios() -> None:
    labels = torch.tensor(
        [[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, NAN, 0.0], [0.0, 0.0, NAN], [NAN, NAN, 0.0]]
    )
    weights = positive_weights(labels)
    # column 0: 3 negatives / 1 positive; column 1: 1 / 2 → floor 1; column 2: no positives.
    assert weights.tolist() == pytest.approx([3.0, 1.0, 4.0])


def test_positive_weights_are_capped() -> None:
    labels = torch.zeros(50, 2)
    labels[0] = 1.0
    assert positive_weights(labels).tolist() == [10.0, 10.0]
    assert positive_weights(labels, cap=20.0).tolist() == [20.0, 20.0]
    assert positive_weights(labels, cap=100.0).tolist() == [49.0, 49.0]
