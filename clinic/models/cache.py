"""Features of frozen backbones, computed once per distinct input.

When an encoder's backbone is frozen (ImageNet EfficientNet for X-rays, MiniLM for reports) its
features for a given input never change, yet each epoch would pay for them again — on a CPU
that is most of the training time. The cache keys each row by a hash of its input bytes, so it
is correct whatever order or batch a case arrives in, and it is bypassed as soon as adapters
make the backbone trainable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import Tensor

Compute = Callable[..., Tensor]


class FrozenFeatureCache:
    """(modality, input hash) → feature vector on the CPU."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._features: dict[tuple[str, bytes], Tensor] = {}
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._features)

    def clear(self) -> None:
        self._features.clear()

    def features(self, modality: str, compute: Compute, *inputs: Tensor) -> Tensor:
        """``compute(*inputs)`` row by row, from the cache where possible: (B, F)."""
        keys = [(modality, _row_key(inputs, row)) for row in range(inputs[0].shape[0])]
        missing = [row for row, key in enumerate(keys) if key not in self._features]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            index = torch.tensor(missing, device=inputs[0].device)
            with torch.no_grad():
                computed = compute(*(tensor[index] for tensor in inputs)).float().cpu()
            if len(self._features) + len(missing) > self.max_entries:
                self._features.clear()
            for position, row in enumerate(missing):
                self._features[keys[row]] = computed[position]
        stacked = torch.stack([self._features[key] for key in keys])
        return stacked.to(inputs[0].device)


def _row_key(inputs: tuple[Tensor, ...], row: int) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for tensor in inputs:
        digest.update(tensor[row].detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()
