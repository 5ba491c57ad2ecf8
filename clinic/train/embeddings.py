"""Frozen-encoder training: embed every case once, then train fusion heads on the table.

With the encoders frozen (after contrastive pre-training, or when only the head is adapted), the
expensive part — images and signals through their networks — is done once; fusion models,
ablations and per-subset baselines then train in seconds on (N, D) tables. This is also how the
evaluation trains its dedicated-subset baselines fairly: same embeddings, same recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from clinic.data.dataset import CaseDataset, make_collate
from clinic.models.fusion import ModalityFusion, drop_modalities
from clinic.models.model import ClinicModel
from clinic.train.device import autocast_for, seed_everything, to_device
from clinic.train.losses import masked_bce, positive_weights
from schemas.modalities import MODALITIES

Progress = Callable[[int], None]


@dataclass
class EmbeddingTable:
    """Per-case unit embeddings per modality, presence masks and labels (all CPU tensors)."""

    embeddings: dict[str, Tensor]  # modality → (N, D)
    present: dict[str, Tensor]  # modality → (N,) bool
    labels: Tensor  # (N, K), NaN unknown

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def rows(self, index: Tensor) -> EmbeddingTable:
        return EmbeddingTable(
            {m: e[index] for m, e in self.embeddings.items()},
            {m: p[index] for m, p in self.present.items()},
            self.labels[index],
        )

    def with_subset(self, modalities: Sequence[str]) -> EmbeddingTable:
        """Same rows, with every modality outside ``modalities`` marked absent."""
        present = {m: p & (m in modalities) for m, p in self.present.items()}
        return EmbeddingTable(self.embeddings, present, self.labels)

    def having(self, modalities: Sequence[str]) -> Tensor:
        """(N,) bool: rows that have every modality in ``modalities``."""
        mask = torch.ones(len(self), dtype=torch.bool)
        for modality in modalities:
            mask &= self.present.get(modality, torch.zeros_like(mask))
        return mask


@torch.no_grad()
def embed_dataset(
    model: ClinicModel,
    dataset: CaseDataset,
    device: torch.device,
    *,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> EmbeddingTable:
    """Run every encoder of ``model`` over ``dataset`` once (eval mode, deterministic)."""
    model.eval()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=make_collate(dataset.preprocess)
    )
    parts: dict[str, list[Tensor]] = {m: [] for m in model.modalities}
    present: dict[str, list[Tensor]] = {m: [] for m in model.modalities}
    labels: list[Tensor] = []
    for batch in loader:
        moved = to_device(batch, device)
        with autocast_for(device):
            embedded = model.embed(moved)
        for modality in model.modalities:
            parts[modality].append(embedded[modality].float().cpu())
            present[modality].append(batch[f"present_{modality}"].bool())
        labels.append(batch["labels"])
        if progress:
            progress(len(batch["labels"]))
    return EmbeddingTable(
        {m: torch.cat(v) for m, v in parts.items()},
        {m: torch.cat(v) for m, v in present.items()},
        torch.cat(labels),
    )


@dataclass(frozen=True)
class FusionRecipe:
    """How a fusion head is trained on an embedding table."""

    epochs: int = 60
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-2
    drop_probability: float = 0.3
    reconstruction_weight: float = 0.5
    seed: int = 0


def train_fusion(
    fusion: ModalityFusion,
    table: EmbeddingTable,
    recipe: FusionRecipe,
    *,
    modalities: Sequence[str] = MODALITIES,
    validation: EmbeddingTable | None = None,
) -> ModalityFusion:
    """Train ``fusion`` on the rows of ``table`` that have any of ``modalities``.

    With a ``validation`` table the weights of the epoch with the lowest validation loss are
    kept (early stopping without losing the best epoch).
    """
    generator = seed_everything(recipe.seed)
    train = table.with_subset(modalities)
    usable = torch.zeros(len(train), dtype=torch.bool)
    for modality in modalities:
        usable |= train.present.get(modality, torch.zeros_like(usable))
    train = train.rows(usable.nonzero(as_tuple=True)[0])
    weights = positive_weights(train.labels)
    optimiser = torch.optim.AdamW(
        fusion.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    best: tuple[float, dict[str, Tensor]] | None = None
    for _epoch in range(recipe.epochs):
        fusion.train()
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), recipe.batch_size):
            chunk = train.rows(order[start : start + recipe.batch_size])
            loss = _fusion_step_loss(fusion, chunk, recipe, weights, generator)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        if validation is not None:
            score = validation_loss(fusion, validation.with_subset(modalities))
            if best is None or score < best[0]:
                best = (score, {k: v.detach().clone() for k, v in fusion.state_dict().items()})
    if best is not None:
        fusion.load_state_dict(best[1])
    fusion.eval()
    return fusion


def _fusion_step_loss(
    fusion: ModalityFusion,
    chunk: EmbeddingTable,
    recipe: FusionRecipe,
    weights: Tensor,
    generator: torch.Generator,
) -> Tensor:
    kept, dropped = drop_modalities(chunk.present, recipe.drop_probability, generator)
    output = fusion(chunk.embeddings, kept, dropped)
    loss = masked_bce(output.logits, chunk.labels, weights)
    total: Tensor = loss + recipe.reconstruction_weight * output.reconstruction_loss
    return total


@torch.no_grad()
def validation_loss(fusion: ModalityFusion, table: EmbeddingTable) -> float:
    fusion.eval()
    usable = torch.zeros(len(table), dtype=torch.bool)
    for mask in table.present.values():
        usable |= mask
    rows = table.rows(usable.nonzero(as_tuple=True)[0])
    if len(rows) == 0:
        return float("inf")
    return float(masked_bce(fusion(rows.embeddings, rows.present).logits, rows.labels))


@torch.no_grad()
def fusion_logits(
    fusion: ModalityFusion, table: EmbeddingTable, modalities: Sequence[str] = MODALITIES
) -> npt.NDArray[np.float64]:
    """(N, K) logits using only ``modalities`` (others hidden); rows with none of them: NaN."""
    fusion.eval()
    view = table.with_subset(modalities)
    usable = torch.zeros(len(view), dtype=torch.bool)
    for modality in modalities:
        usable |= view.present.get(modality, torch.zeros_like(usable))
    out = np.full(tuple(view.labels.shape), np.nan)
    if bool(usable.any()):
        rows = view.rows(usable.nonzero(as_tuple=True)[0])
        logits = fusion(rows.embeddings, rows.present).logits.double().numpy()
        out[usable.numpy()] = logits
    return np.asarray(out, dtype=np.float64)
