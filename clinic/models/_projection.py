"""The projection head and normalisation every encoder ends with, so all four agree on both."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional


class ProjectionHead(nn.Module):
    """Linear → GELU → Linear into the shared space; a hidden layer lets each modality bend its
    features into the shared geometry instead of being forced through one linear map."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden_features)
        self.activation = nn.GELU()
        self.out = nn.Linear(hidden_features, out_features)

    def forward(self, features: Tensor) -> Tensor:
        # (B, in_features) -> (B, out_features)
        out: Tensor = self.out(self.activation(self.hidden(features)))
        return out


def l2_normalise(embeddings: Tensor) -> Tensor:
    """Unit-norm float32 rows: (B, D) -> (B, D). Done in float32 even under bf16 autocast, since
    contrastive losses compare these vectors through dot products that bf16 would blur."""
    return functional.normalize(embeddings.to(torch.float32), dim=-1)
