"""End-to-end epochs: contrastive pre-training of the encoders and supervised fine-tuning.

Each epoch function runs one pass and returns its mean figures; the caller owns checkpoints,
progress and schedules. Everything runs under :func:`autocast_for`, so CUDA gets bf16.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from clinic.models.loss import MultiModalContrastiveLoss
from clinic.models.model import ClinicModel
from clinic.train.device import autocast_for, to_device
from clinic.train.losses import masked_bce

Batch = dict[str, Tensor]
Progress = Callable[[int], None]


@dataclass
class EpochResult:
    loss: float
    steps: int
    parts: dict[str, float] = field(default_factory=dict)


def pretrain_epoch(
    model: ClinicModel,
    batches: Iterable[Batch],
    optimiser: torch.optim.Optimizer,
    device: torch.device,
    loss_fn: MultiModalContrastiveLoss,
    progress: Progress | None = None,
) -> EpochResult:
    """One contrastive pass: InfoNCE over every modality pair present in each batch."""
    model.train()
    total, steps = 0.0, 0
    pairs: dict[str, float] = {}
    for batch in batches:
        moved = to_device(batch, device)
        with autocast_for(device):
            embeddings = model.embed(moved)
        present = model.present_masks(moved)
        result = loss_fn(
            {m: e.float() for m, e in embeddings.items()}, present, model.logit_scale()
        )
        if result.loss.requires_grad:
            optimiser.zero_grad()
            result.loss.backward()
            optimiser.step()
        total, steps = total + float(result.loss.detach()), steps + 1
        for name, value in result.pair_losses.items():
            pairs[name] = pairs.get(name, 0.0) + value
        if progress:
            progress(len(batch["labels"]))
    return EpochResult(total / max(steps, 1), steps, {k: v / steps for k, v in pairs.items()})


def finetune_epoch(
    model: ClinicModel,
    batches: Iterable[Batch],
    optimiser: torch.optim.Optimizer,
    device: torch.device,
    *,
    drop_probability: float,
    reconstruction_weight: float,
    pos_weight: Tensor | None = None,
    progress: Progress | None = None,
    hide: Sequence[str] = (),
) -> EpochResult:
    """One supervised pass: masked BCE on the head + the reconstruction of dropped modalities."""
    model.train()
    total, steps, reconstruction = 0.0, 0, 0.0
    weight = pos_weight.to(device) if pos_weight is not None else None
    for batch in batches:
        moved = to_device(batch, device)
        with autocast_for(device):
            output = model(moved, drop_probability=drop_probability, hide=hide)
        loss = masked_bce(output.logits, moved["labels"], weight)
        loss = loss + reconstruction_weight * output.reconstruction_loss.float()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total, steps = total + float(loss.detach()), steps + 1
        reconstruction += float(output.reconstruction_loss.detach())
        if progress:
            progress(len(batch["labels"]))
    return EpochResult(
        total / max(steps, 1), steps, {"reconstruction": reconstruction / max(steps, 1)}
    )
