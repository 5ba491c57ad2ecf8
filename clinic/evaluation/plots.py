"""Evaluation figures written straight to PNG files.

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas, never through
pyplot, so plotting holds no global state, needs no display and is safe in worker processes.
Undefined values stay visibly undefined: a label with one known class gets "AUROC n/a" in the
ROC legend, and a NaN heatmap cell is grey with "n/a" instead of a colour on the scale.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from clinic.evaluation.metrics import FloatArray, ReliabilityData, auroc

_DPI = 120


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Render with the Agg canvas to ``path`` (parents created) and return it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(target, format="png", dpi=_DPI)
    return target


def _label_matrices(
    y: npt.ArrayLike, p: npt.ArrayLike, label_names: Sequence[str]
) -> tuple[FloatArray, FloatArray]:
    y_mat = np.asarray(y, dtype=np.float64)
    p_mat = np.asarray(p, dtype=np.float64)
    if y_mat.ndim != 2 or y_mat.shape != p_mat.shape or y_mat.shape[1] != len(label_names):
        raise ValueError(
            f"y {y_mat.shape} and p {p_mat.shape} must be (N, K) with K = {len(label_names)}"
        )
    return y_mat, p_mat


def _chance_diagonal(axes: Axes) -> None:
    axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", linewidth=0.8)
    axes.set_xlim(-0.01, 1.01)  # a hair of margin keeps points on 0 and 1 visible
    axes.set_ylim(-0.01, 1.01)


def plot_roc_curves(
    y: npt.ArrayLike,
    p: npt.ArrayLike,
    label_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str,
) -> Path:
    """One ROC curve per label (known entries only) with its AUROC in the legend."""
    y_mat, p_mat = _label_matrices(y, p, label_names)
    figure = Figure(figsize=(5.0, 5.0))
    axes = figure.add_subplot()
    for k, name in enumerate(label_names):
        known = ~np.isnan(y_mat[:, k]) & ~np.isnan(p_mat[:, k])
        area = auroc(y_mat[known, k], p_mat[known, k])
        if math.isnan(area):
            axes.plot([], [], label=f"{name}: AUROC n/a (one class)")
            continue
        false_pos, true_pos, _ = roc_curve(y_mat[known, k], p_mat[known, k])
        axes.plot(false_pos, true_pos, linewidth=1.2, label=f"{name}: AUROC {area:.3f}")
    _chance_diagonal(axes)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


def plot_reliability(
    reliabilities: Mapping[str, ReliabilityData], path: str | os.PathLike[str], title: str
) -> Path:
    """Reliability diagram per label (ECE in the legend) above the per-bin case counts."""
    figure = Figure(figsize=(5.0, 6.0))
    curve_axes, count_axes = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for name, data in reliabilities.items():
        predicted = np.asarray(data.mean_predicted, dtype=np.float64)  # (n_bins,)
        observed = np.asarray(data.observed_frequency, dtype=np.float64)  # (n_bins,)
        filled = np.asarray(data.counts) > 0
        ece = "n/a" if math.isnan(data.ece) else f"{data.ece:.3f}"
        curve_axes.plot(
            predicted[filled],
            observed[filled],
            marker="o",
            markersize=3,
            label=f"{name}: ECE {ece}",
        )
        count_axes.stairs(data.counts, data.bin_edges, label=name)
    _chance_diagonal(curve_axes)
    curve_axes.set_ylabel("observed frequency")
    curve_axes.set_title(title)
    curve_axes.legend(loc="upper left", fontsize="small")
    count_axes.set_xlabel("mean predicted probability")
    count_axes.set_ylabel("cases")
    figure.tight_layout()
    return _save(figure, path)


def plot_heatmap(
    values: npt.ArrayLike,
    row_names: Sequence[str],
    col_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str,
    fmt: str = "{:.2f}",
) -> Path:
    """Annotated heatmap of values (R, C), e.g. modality subset × label AUROC; NaN → grey "n/a"."""
    grid = np.asarray(values, dtype=np.float64)
    if grid.shape != (len(row_names), len(col_names)):
        raise ValueError(f"values {grid.shape} do not match {len(row_names)}×{len(col_names)}")
    width = 2.5 + 0.8 * len(col_names)
    height = 1.5 + 0.45 * len(row_names)
    figure = Figure(figsize=(width, height))
    axes = figure.add_subplot()
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = axes.imshow(np.ma.masked_invalid(grid), cmap=colours, aspect="auto")
    _annotate_cells(axes, grid, fmt)
    axes.set_xticks(range(len(col_names)), list(col_names), rotation=45, ha="right")
    axes.set_yticks(range(len(row_names)), list(row_names))
    axes.set_title(title)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    return _save(figure, path)


def _annotate_cells(axes: Axes, grid: FloatArray, fmt: str) -> None:
    """Write each cell's value (or "n/a") in a colour readable on viridis."""
    finite = grid[np.isfinite(grid)]
    middle = float((finite.min() + finite.max()) / 2.0) if finite.size else 0.0
    for (row, col), value in np.ndenumerate(grid):
        if math.isfinite(value):
            text, colour = fmt.format(value), ("black" if value > middle else "white")
        else:
            text, colour = "n/a", "dimgrey"
        axes.text(col, row, text, ha="center", va="center", fontsize="small", color=colour)
