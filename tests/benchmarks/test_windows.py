"""Sliding windows over a whole ECG: offsets that cover it, probabilities averaged per case."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import Tensor

from clinic.benchmarks.windows import window_starts, windowed_probabilities


@pytest.mark.parametrize(
    ("length", "window", "stride"),
    [(1000, 250, 125), (1001, 250, 125), (999, 250, 250), (260, 250, 100), (500, 250, 250)],
)
def test_windows_cover_the_signal_to_its_last_sample(length: int, window: int, stride: int) -> None:
    starts = window_starts(length, window, stride)
    assert starts[0] == 0 and starts[-1] == length - window
    assert starts == sorted(set(starts))
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        covered[start : start + window] = True
    assert covered.all()


def test_a_regular_signal_gets_regular_windows() -> None:
    assert window_starts(1000, 250, 125) == [0, 125, 250, 375, 500, 625, 750]
    assert window_starts(1001, 250, 125)[-2:] == [750, 751]


@pytest.mark.parametrize("length", [100, 250])
def test_a_signal_no_longer_than_the_window_has_one_window(length: int) -> None:
    assert window_starts(length, 250, 125) == [0]


def test_probabilities_are_the_mean_sigmoid_over_windows() -> None:
    generator = torch.Generator().manual_seed(0)
    batch = {
        "ecg": torch.randn(3, 12, 40, generator=generator),  # (B, 12, T)
        "record": torch.tensor([[0.0], [1.0], [-2.0]]),  # (B, 1), one value per case
    }
    seen: list[tuple[int, ...]] = []

    def logits_of(windowed: dict[str, Tensor]) -> Tensor:
        seen.append(tuple(windowed["ecg"].shape))
        level = windowed["ecg"].mean(dim=(1, 2))  # (B·W,)
        return torch.stack([level + windowed["record"][:, 0], -level], dim=1)  # (B·W, 2)

    probabilities = windowed_probabilities(batch, logits_of, window=16, stride=8)
    starts = window_starts(40, 16, 8)
    assert seen == [(3 * len(starts), 12, 16)]
    assert probabilities.shape == (3, 2) and probabilities.dtype == np.float64
    for case in range(3):
        crops = [batch["ecg"][case, :, s : s + 16].mean() for s in starts]
        first = np.mean([torch.sigmoid(c + batch["record"][case, 0]).item() for c in crops])
        second = np.mean([torch.sigmoid(-c).item() for c in crops])
        np.testing.assert_allclose(probabilities[case], [first, second], rtol=1e-5)


def test_a_short_signal_is_scored_once() -> None:
    batch = {"ecg": torch.full((2, 12, 10), 0.5)}
    probabilities = windowed_probabilities(
        batch, lambda b: b["ecg"].mean(dim=(1, 2))[:, None], window=16, stride=8
    )
    np.testing.assert_allclose(probabilities, np.full((2, 1), 1 / (1 + np.exp(-0.5))), rtol=1e-6)
