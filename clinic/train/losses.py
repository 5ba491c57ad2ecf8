"""Supervised losses for multi-label heads with unknown labels."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional


def masked_bce(logits: Tensor, labels: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Mean binary cross-entropy over the known (non-NaN) entries of (B, K) ``labels``."""
    known = torch.isfinite(labels)
    if not bool(known.any()):
        return logits.sum() * 0.0
    targets = torch.where(known, labels, torch.zeros_like(labels))
    losses = functional.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="none", pos_weight=pos_weight
    )
    return (losses * known).sum() / known.sum()


def positive_weights(labels: Tensor, cap: float = 10.0) -> Tensor:
    """Per-label negative/positive ratio (capped) so rare findings are not ignored."""
    known = torch.isfinite(labels)
    positives = ((labels > 0.5) & known).sum(dim=0).float()
    negatives = ((labels <= 0.5) & known).sum(dim=0).float()
    return torch.clamp(negatives / positives.clamp(min=1.0), min=1.0, max=cap)
