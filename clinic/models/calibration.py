"""Calibration per subset of present modalities, and abstention when a subset is not enough.

A model fed an ECG alone is less sure than one fed all four modalities, and its raw scores are
miscalibrated in a different way; one temperature for all subsets would be wrong for most of
them. So Platt scaling (a slope and an intercept per label) is fitted separately for every subset
seen on validation data, with an L2 pull towards the identity so that small subsets stay close to
the raw model. The map also keeps, per subset and label, the validation AUROC, ECE and
reliability data, and abstains where the subset's AUROC for that label is below a threshold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from clinic.evaluation.metrics import auroc, expected_calibration_error, reliability_curve

FloatArray = npt.NDArray[np.float64]
MIN_KNOWN = 10


@dataclass
class SubsetCalibration:
    """Platt parameters and validation figures for one modality subset."""

    slope: list[float]
    intercept: list[float]
    auroc: list[float | None]
    ece: list[float | None]
    n: int
    reliability: dict[str, Any] = field(default_factory=dict)


@dataclass
class CalibrationMap:
    """Subset name → :class:`SubsetCalibration`; ``min_auroc`` decides abstention."""

    label_names: tuple[str, ...]
    subsets: dict[str, SubsetCalibration]
    min_auroc: float = 0.6

    def probabilities(self, logits: FloatArray, subset: str) -> FloatArray:
        """(N, K) calibrated probabilities; an unseen subset keeps the raw sigmoid."""
        fitted = self.subsets.get(subset)
        if fitted is None:
            return sigmoid(logits)
        return sigmoid(logits * np.asarray(fitted.slope) + np.asarray(fitted.intercept))

    def abstains(self, subset: str) -> list[bool]:
        """Per label: True when this subset's validation AUROC is below ``min_auroc`` or unknown."""
        fitted = self.subsets.get(subset)
        if fitted is None:
            return [True] * len(self.label_names)
        return [value is None or value < self.min_auroc for value in fitted.auroc]

    def to_json(self) -> dict[str, Any]:
        return {
            "label_names": list(self.label_names),
            "min_auroc": self.min_auroc,
            "subsets": {name: vars(fitted) for name, fitted in sorted(self.subsets.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CalibrationMap:
        subsets = {name: SubsetCalibration(**value) for name, value in data["subsets"].items()}
        return cls(tuple(data["label_names"]), subsets, float(data["min_auroc"]))

    def content_hash(self) -> str:
        encoded = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()


def fit_calibration(
    logits_by_subset: Mapping[str, FloatArray],
    labels_by_subset: Mapping[str, FloatArray],
    label_names: Sequence[str],
    *,
    min_auroc: float = 0.6,
    l2: float = 1e-2,
) -> CalibrationMap:
    """Fit one Platt map per subset from validation logits (N, K) and labels (N, K, NaN=unknown)."""
    subsets = {
        name: fit_subset(logits, labels_by_subset[name], l2=l2)
        for name, logits in logits_by_subset.items()
        if len(logits)
    }
    return CalibrationMap(tuple(label_names), subsets, min_auroc)


def fit_subset(logits: FloatArray, labels: FloatArray, *, l2: float = 1e-2) -> SubsetCalibration:
    slopes, intercepts, aurocs, eces = [], [], [], []
    reliability: dict[str, Any] = {}
    for k in range(logits.shape[1]):
        known = np.isfinite(labels[:, k])
        slope, intercept = fit_platt(logits[known, k], labels[known, k], l2=l2)
        slopes.append(slope)
        intercepts.append(intercept)
        calibrated = sigmoid(logits[known, k] * slope + intercept)
        aurocs.append(_none_if_nan(auroc(labels[known, k], logits[known, k])))
        eces.append(_none_if_nan(expected_calibration_error(labels[known, k], calibrated)))
        reliability[str(k)] = reliability_curve(labels[known, k], calibrated).to_json()
    return SubsetCalibration(slopes, intercepts, aurocs, eces, len(logits), reliability)


def fit_platt(scores: FloatArray, labels: FloatArray, *, l2: float = 1e-2) -> tuple[float, float]:
    """Slope and intercept minimising BCE + l2·((slope − 1)² + intercept²); identity if too few."""
    if len(scores) < MIN_KNOWN or len(np.unique(labels)) < 2:
        return 1.0, 0.0
    x = torch.as_tensor(scores, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64)
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([params], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = x * params[0] + params[1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        loss = loss + l2 * ((params[0] - 1.0) ** 2 + params[1] ** 2)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    slope, intercept = params.detach().tolist()
    return float(slope), float(intercept)


def sigmoid(values: FloatArray) -> FloatArray:
    """Logistic function, clipped so large logits neither overflow nor warn."""
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(values, -50, 50))), dtype=np.float64)


def _none_if_nan(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)
