"""Sliding-window prediction over a whole ECG, as in Strodthoff et al. (2020).

Models train on short random crops (2.5 s at 100 Hz); at test time the full 10 s recording is
cut into overlapping windows and the per-window probabilities are averaged, so no part of the
recording is ignored and the result does not depend on one crop's luck.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

FloatArray = npt.NDArray[np.float64]
BatchLogits = Callable[[dict[str, Tensor]], Tensor]  # windowed batch → (B·W, K) logits


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering ``length`` samples; the last window ends at the last sample."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


@torch.no_grad()
def windowed_probabilities(
    batch: Mapping[str, Tensor], logits_of: BatchLogits, window: int, stride: int
) -> FloatArray:
    """(B, K) mean of sigmoid probabilities over the windows of ``batch["ecg"]`` (B, 12, T).

    Every other input of the batch is repeated for each window, so the same function serves
    models that also read the record or measured features.
    """
    signal = batch["ecg"]
    starts = window_starts(signal.shape[-1], window, stride)
    crops = torch.stack([signal[..., s : s + window] for s in starts], dim=1)  # (B, W, 12, win)
    count = len(starts)
    repeated = {
        key: value.repeat_interleave(count, dim=0) for key, value in batch.items() if key != "ecg"
    }
    repeated["ecg"] = crops.reshape(-1, *crops.shape[2:])  # (B·W, 12, win)
    probabilities = torch.sigmoid(logits_of(repeated).float())  # (B·W, K)
    return probabilities.reshape(signal.shape[0], count, -1).mean(dim=1).double().numpy()
