"""Features of frozen backbones, computed once per distinct input.

When an encoder's backbone is frozen (ImageNet EfficientNet for X-rays, MiniLM for reports) its
features for a given input never change, yet each epoch — and each training stage, and the
evaluation after it — would pay for them again; on a CPU that is most of the time. The cache keys
each row by a hash of its input, so it is correct whatever order or batch a case arrives in, and
the model bypasses it as soon as adapters make a backbone trainable. With a ``directory`` the
features also persist on disk under the backbone's weight hash, so later stages reuse them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

Compute = Callable[..., Tensor]


class FrozenFeatureCache:
    """(modality, input hash) → feature vector; in memory, and on disk when bound."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._features: dict[tuple[str, bytes], Tensor] = {}
        self.max_entries = max_entries
        self.directory: Path | None = None
        self.namespaces: dict[str, str] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._features)

    def clear(self) -> None:
        self._features.clear()

    def bind(self, directory: Path, namespaces: dict[str, str]) -> None:
        """Persist under ``directory/<modality>-<namespace>/``; the namespace (the frozen
        backbone's weight hash) keeps features of different weights apart."""
        self.directory, self.namespaces = directory, dict(namespaces)

    def features(
        self, modality: str, compute: Compute, *inputs: Tensor, keys: Sequence[bytes] | None = None
    ) -> Tensor:
        """``compute(*inputs)`` row by row, from the cache where possible: (B, F)."""
        row_keys = (
            list(keys) if keys is not None else [row_key(inputs, r) for r in range(len(inputs[0]))]
        )
        entries = [(modality, key) for key in row_keys]
        missing = [row for row, entry in enumerate(entries) if not self._lookup(entry)]
        self.hits += len(entries) - len(missing)
        self.misses += len(missing)
        if missing:
            self._compute(entries, missing, compute, inputs)
        stacked = torch.stack([self._features[entry] for entry in entries])
        return stacked.to(inputs[0].device)

    def _compute(
        self,
        entries: list[tuple[str, bytes]],
        missing: list[int],
        compute: Compute,
        inputs: tuple[Tensor, ...],
    ) -> None:
        index = torch.tensor(missing, device=inputs[0].device)
        with torch.no_grad():
            computed = compute(*(tensor[index] for tensor in inputs)).float().cpu()
        if len(self._features) + len(missing) > self.max_entries:
            self._features.clear()
        for position, row in enumerate(missing):
            self._features[entries[row]] = computed[position]
            self._store(entries[row], computed[position])

    def _lookup(self, entry: tuple[str, bytes]) -> bool:
        if entry in self._features:
            return True
        path = self._path(entry)
        if path is None or not path.is_file():
            return False
        try:
            self._features[entry] = torch.from_numpy(np.load(path))
        except (OSError, ValueError):
            return False  # a damaged file is recomputed and rewritten
        return True

    def _store(self, entry: tuple[str, bytes], value: Tensor) -> None:
        path = self._path(entry)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(temporary, value.numpy())
        temporary.replace(path)

    def _path(self, entry: tuple[str, bytes]) -> Path | None:
        modality, key = entry
        namespace = self.namespaces.get(modality)
        if self.directory is None or namespace is None:
            return None
        return self.directory / f"{modality}-{namespace[:16]}" / f"{key.hex()}.npy"


def row_key(inputs: Sequence[Tensor], row: int) -> bytes:
    """Hash of one row of every input tensor."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in inputs:
        digest.update(tensor[row].detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


def token_keys(input_ids: Tensor, attention_mask: Tensor) -> list[bytes]:
    """Per-row hash of the attended tokens only: independent of how far a batch was padded."""
    lengths = attention_mask.sum(dim=1).tolist()
    ids = input_ids.detach().cpu()
    return [
        hashlib.blake2b(ids[row, : int(length)].numpy().tobytes(), digest_size=16).digest()
        for row, length in enumerate(lengths)
    ]
