"""End-to-end epochs: contrastive pre-training of the encoders and supervised fine-tuning.

Each epoch function runs one pass and returns its mean figures; the caller owns checkpoints,
progress and schedules. Everything runs under :func:`autocast_for`, so CUDA gets bf16.

Forward passes and the reduction of figures go through a :class:`Replica`: :class:`LocalReplica`
is the plain single-process run; ``clinic.train.distributed`` supplies one that runs them under
DDP, so one loop serves both and a single process stays exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from clinic.models.loss import MultiModalContrastiveLoss
from clinic.models.model import ClinicModel, ModelOutput
from clinic.train.device import autocast_for, to_device
from clinic.train.losses import masked_bce

Batch = dict[str, Tensor]
Progress = Callable[[int], None]


class Replica(Protocol):
    """How an epoch runs its forward passes and combines its figures across processes."""

    def embed(self, batch: Batch) -> tuple[dict[str, Tensor], Tensor]:
        """Embeddings per modality (B, D) and the contrastive logit scale ()."""
        ...

    def forward(self, batch: Batch, *, drop_probability: float, hide: Sequence[str]) -> ModelOutput:
        """The model's full forward (encoders, modality dropout, fusion)."""
        ...

    def supervised_loss(self, logits: Tensor, labels: Tensor, weight: Tensor | None) -> Tensor:
        """The masked BCE this process backpropagates (its share of the global batch's loss)."""
        ...

    def rows(self, batch: Batch) -> int:
        """Cases a step consumed, for progress."""
        ...

    def mean(self, value: float) -> float:
        """A per-process figure made global (identity in one process)."""
        ...


class LocalReplica:
    """The single-process run: the model's own forward, the plain loss, figures as they are."""

    def __init__(self, model: ClinicModel) -> None:
        self.model = model

    def embed(self, batch: Batch) -> tuple[dict[str, Tensor], Tensor]:
        return self.model.embed(batch), self.model.logit_scale()

    def forward(self, batch: Batch, *, drop_probability: float, hide: Sequence[str]) -> ModelOutput:
        output: ModelOutput = self.model(batch, drop_probability=drop_probability, hide=hide)
        return output

    def supervised_loss(self, logits: Tensor, labels: Tensor, weight: Tensor | None) -> Tensor:
        return masked_bce(logits, labels, weight)

    def rows(self, batch: Batch) -> int:
        return len(batch["labels"])

    def mean(self, value: float) -> float:
        return value


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
    *,
    replica: Replica | None = None,
) -> EpochResult:
    """One contrastive pass: InfoNCE over every modality pair present in each batch."""
    replica = replica or LocalReplica(model)
    model.train()
    total, steps = 0.0, 0
    pairs: dict[str, float] = {}
    for batch in batches:
        moved = to_device(batch, device)
        with autocast_for(device):
            embeddings, scale = replica.embed(moved)
        present = model.present_masks(moved)
        result = loss_fn({m: e.float() for m, e in embeddings.items()}, present, scale)
        if result.loss.requires_grad:
            optimiser.zero_grad()
            result.loss.backward()
            optimiser.step()
        total, steps = total + float(result.loss.detach()), steps + 1
        for name, value in result.pair_losses.items():
            pairs[name] = pairs.get(name, 0.0) + value
        if progress:
            progress(replica.rows(batch))
    mean_loss = replica.mean(total / max(steps, 1))
    return EpochResult(mean_loss, steps, {k: v / steps for k, v in pairs.items()})


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
    replica: Replica | None = None,
) -> EpochResult:
    """One supervised pass: masked BCE on the head + the reconstruction of dropped modalities."""
    replica = replica or LocalReplica(model)
    model.train()
    total, steps, reconstruction = 0.0, 0, 0.0
    weight = pos_weight.to(device) if pos_weight is not None else None
    for batch in batches:
        moved = to_device(batch, device)
        with autocast_for(device):
            output = replica.forward(moved, drop_probability=drop_probability, hide=hide)
        loss = replica.supervised_loss(output.logits, moved["labels"], weight)
        loss = loss + reconstruction_weight * output.reconstruction_loss.float()
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        total, steps = total + float(loss.detach()), steps + 1
        reconstruction += float(output.reconstruction_loss.detach())
        if progress:
            progress(replica.rows(batch))
    return EpochResult(
        replica.mean(total / max(steps, 1)),
        steps,
        {"reconstruction": replica.mean(reconstruction / max(steps, 1))},
    )
