from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clinic.evaluation.metrics import reliability_curve
from clinic.evaluation.plots import plot_heatmap, plot_reliability, plot_roc_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    content = path.read_bytes()
    assert content.startswith(PNG_SIGNATURE)
    assert len(content) > 5_000


def _labels_and_probabilities() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random((80, 3)) < 0.4).astype(np.float64)
    p = np.clip(0.4 * y + 0.6 * rng.random((80, 3)), 0.0, 1.0)
    y[::7, 0] = np.nan
    y[:, 2] = 0.0  # one class only: no curve, "n/a" in the legend
    return y, p


def test_roc_curves_png(tmp_path: Path) -> None:
    y, p = _labels_and_probabilities()
    written = plot_roc_curves(y, p, ["a", "b", "c"], tmp_path / "sub" / "roc.png", "ROC")
    assert written == tmp_path / "sub" / "roc.png"
    _assert_png(written)


def test_reliability_png(tmp_path: Path) -> None:
    y, p = _labels_and_probabilities()
    curves = {name: reliability_curve(y[:, k], p[:, k], n_bins=10) for k, name in enumerate("ab")}
    curves["empty"] = reliability_curve([], [], n_bins=10)
    _assert_png(plot_reliability(curves, tmp_path / "reliability.png", "Calibration"))


def test_heatmap_png_with_nan_cells(tmp_path: Path) -> None:
    values = np.array([[0.81, np.nan, 0.7], [0.9, 0.65, np.nan]])
    path = plot_heatmap(values, ["xray", "xray+ecg"], ["a", "b", "c"], tmp_path / "h.png", "AUROC")
    _assert_png(path)
    all_nan = np.full((1, 2), np.nan)
    _assert_png(plot_heatmap(all_nan, ["ecg"], ["a", "b"], tmp_path / "nan.png", "none"))


def test_heatmap_rejects_mismatched_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not match"):
        plot_heatmap(np.zeros((2, 2)), ["r"], ["a", "b"], tmp_path / "x.png", "t")
