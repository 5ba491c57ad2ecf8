"""Fusion over modality tokens: one prediction from whatever subset of modalities a case has.

Each present modality contributes one token (its shared-space embedding plus a learned
modality-type embedding); absent modalities are masked out of attention with a padding mask, so
the same weights serve every subset. Training drops whole modalities at random (3MAT-style) and
asks a small head to reconstruct a dropped modality's embedding from what is left
(ActionMAE-style), which pushes the fused representation to carry the missing evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from schemas.modalities import MODALITIES


@dataclass
class FusionOutput:
    logits: Tensor  # (B, K)
    fused: Tensor  # (B, D)
    reconstruction_loss: Tensor  # scalar; 0 when nothing was dropped


class ModalityFusion(nn.Module):
    """Transformer over [CLS] + one token per modality, with a multi-label head."""

    def __init__(
        self,
        embed_dim: int,
        num_labels: int,
        *,
        layers: int = 2,
        heads: int = 4,
        dim_feedforward: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.modalities = MODALITIES
        self.cls = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.type_embedding = nn.Parameter(torch.randn(len(MODALITIES), embed_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            embed_dim, heads, dim_feedforward, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_labels)
        self.reconstruct = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU(),
                              nn.Linear(embed_dim, embed_dim)) for m in MODALITIES}
        )  # fmt: skip
        self.input_scale = embed_dim**0.5

    def forward(
        self,
        embeddings: Mapping[str, Tensor],
        present: Mapping[str, Tensor],
        dropped: Mapping[str, Tensor] | None = None,
    ) -> FusionOutput:
        """``embeddings[m]``: (B, D) unit vectors (any value where absent); ``present[m]``: (B,)
        bool; ``dropped[m]``: (B,) bool rows whose modality was hidden for this step."""
        tokens, visible = self._tokens(embeddings, present)
        fused = self._encode(tokens, visible)
        loss = self._reconstruction_loss(fused, embeddings, dropped or {})
        return FusionOutput(self.head(fused), fused, loss)

    def _tokens(
        self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        any_embedding = next(iter(embeddings.values()))
        batch = any_embedding.shape[0]
        stacked, visible = [], []
        for index, modality in enumerate(self.modalities):
            mask = present.get(modality)
            if modality not in embeddings or mask is None:
                stacked.append(torch.zeros_like(any_embedding))
                visible.append(torch.zeros(batch, dtype=torch.bool, device=any_embedding.device))
                continue
            token = embeddings[modality] * self.input_scale + self.type_embedding[index]
            stacked.append(torch.where(mask[:, None], token, torch.zeros_like(token)))
            visible.append(mask)
        return torch.stack(stacked, dim=1), torch.stack(visible, dim=1)  # (B, M, D), (B, M)

    def _encode(self, tokens: Tensor, visible: Tensor) -> Tensor:
        batch = tokens.shape[0]
        cls = self.cls.expand(batch, -1, -1).to(tokens.dtype)
        sequence = torch.cat([cls, tokens], dim=1)  # (B, 1 + M, D)
        keep_cls = torch.ones(batch, 1, dtype=torch.bool, device=tokens.device)
        padding = ~torch.cat([keep_cls, visible], dim=1)  # True = ignore
        encoded = self.encoder(sequence, src_key_padding_mask=padding)
        fused: Tensor = self.norm(encoded[:, 0])
        return fused  # (B, D)

    def _reconstruction_loss(
        self, fused: Tensor, embeddings: Mapping[str, Tensor], dropped: Mapping[str, Tensor]
    ) -> Tensor:
        """1 − cosine between each dropped modality's true embedding and its reconstruction."""
        losses = []
        for modality, rows in dropped.items():
            if modality not in embeddings or not bool(rows.any()):
                continue
            predicted = self.reconstruct[modality](fused[rows])
            target = embeddings[modality][rows].detach()
            losses.append(
                1.0 - functional.cosine_similarity(predicted.float(), target.float()).mean()
            )
        if not losses:
            return fused.new_zeros(()).float()
        return torch.stack(losses).mean()


def drop_modalities(
    present: Mapping[str, Tensor], probability: float, generator: torch.Generator | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Hide each present modality with ``probability``, never all of a row's modalities.

    Returns (still_present, dropped) masks. A row that would lose everything keeps one of its
    modalities, chosen at random, so every row still has something to predict from.
    """
    names = [m for m in MODALITIES if m in present]
    mask = torch.stack([present[m] for m in names], dim=1)  # (B, M)
    if probability <= 0.0:
        return dict(present), {m: torch.zeros_like(present[m]) for m in names}
    noise = torch.rand(mask.shape, generator=generator, device="cpu").to(mask.device)
    drop = (noise < probability) & mask
    emptied = (mask & ~drop).sum(dim=1) == 0
    if bool(emptied.any()):
        scores = torch.rand(mask.shape, generator=generator, device="cpu").to(mask.device)
        scores = torch.where(mask, scores, torch.full_like(scores, -1.0))
        keep = functional.one_hot(scores.argmax(dim=1), len(names)).bool()
        drop = torch.where(emptied[:, None], drop & ~keep, drop)
    kept = mask & ~drop
    return (
        {m: kept[:, i] for i, m in enumerate(names)},
        {m: drop[:, i] for i, m in enumerate(names)},
    )
