"""Honest multi-label metrics: per-label AUROC / AUPRC / calibration with bootstrap intervals.

Labels are often unknown for a case (a report that never mentions effusion says nothing about
it), so every metric is computed per label on the known entries only. A label whose known
entries hold a single class has no AUROC: it is reported as NaN (``None`` in JSON), never as a
flattering 0.5, and it is left out of the macro averages, which say how many labels they
averaged.

Bootstrap intervals resample whole patients when patient ids are given, because one patient's
cases are correlated and resampling them separately makes intervals too narrow. AUROC and AUPRC
are bootstrapped without re-sorting: the known cases are sorted by score once, and a resample
only changes how often each case counts (a weight), so a thousand resamples are a few
vectorised cumulative sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.intp]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
Metric: TypeAlias = Callable[[FloatArray, FloatArray], float]
ResampleEvaluator: TypeAlias = Callable[[FloatArray], FloatArray]

_CELLS_PER_CHUNK = 2_000_000  # resamples × rows of weights held at once (16 MB of float64)


# --------------------------------------------------------------------------- input checks


def _as_vector(values: npt.ArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _known_mask(y: FloatArray, s: FloatArray) -> BoolArray:
    """Entries where both the label and the score are known; known labels must be 0 or 1."""
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    mask = ~np.isnan(y) & ~np.isnan(s)
    if not np.isin(y[mask], (0.0, 1.0)).all():
        raise ValueError("known labels must be 0 or 1 (NaN marks an unknown label)")
    return mask


# --------------------------------------------------------------------------- AUROC / AUPRC


@dataclass(frozen=True)
class _SortedCases:
    """One label's known cases sorted by score once, so every resample only re-weights them."""

    rows: IntArray  # (n,) indices into the original rows, by ascending score
    positive: FloatArray  # (n,) 1.0 for a positive case, 0.0 for a negative, in that order
    tie_starts: IntArray  # (G,) position where each run of equal scores begins


def _sort_known(y: FloatArray, s: FloatArray) -> _SortedCases:
    rows = np.flatnonzero(_known_mask(y, s))
    rows = rows[np.argsort(s[rows], kind="stable")]
    scores = s[rows]  # (n,) ascending
    starts_run = np.ones(len(rows), dtype=bool)
    starts_run[1:] = scores[1:] != scores[:-1]
    return _SortedCases(rows=rows, positive=y[rows], tie_starts=np.flatnonzero(starts_run))


def _class_weight_per_tie(cases: _SortedCases, weights: FloatArray) -> tuple[FloatArray, ...]:
    """Positive and negative weight in each run of tied scores, ascending: two (B, G) arrays.

    Tied scores must be handled as one threshold, or the metric would depend on row order.
    """
    n_resamples = weights.shape[0]
    if len(cases.rows) == 0:
        empty = np.zeros((n_resamples, 0))
        return empty, empty
    case_weights = weights[:, cases.rows]  # (B, n)
    positive = np.add.reduceat(case_weights * cases.positive, cases.tie_starts, axis=1)
    negative = np.add.reduceat(case_weights * (1.0 - cases.positive), cases.tie_starts, axis=1)
    return positive, negative


def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    """Elementwise ratio that is NaN, not an error or a silent 0, where the denominator is 0."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _auroc_from_ties(positive: FloatArray, negative: FloatArray) -> FloatArray:
    """(B,) probability that a positive outscores a negative (ties count one half)."""
    negatives_below = np.cumsum(negative, axis=1) - negative  # (B, G)
    wins = (positive * (negatives_below + 0.5 * negative)).sum(axis=1)
    return _ratio(wins, positive.sum(axis=1) * negative.sum(axis=1))


def _auprc_from_ties(positive: FloatArray, negative: FloatArray) -> FloatArray:
    """(B,) average precision, the step-wise sum sklearn's ``average_precision_score`` uses.

    NaN, not 1.0 or 0.0, when either class is absent: such a label says nothing about ranking.
    """
    positive, negative = positive[:, ::-1], negative[:, ::-1]  # (B, G) by descending score
    true_pos = np.cumsum(positive, axis=1)
    flagged = true_pos + np.cumsum(negative, axis=1)
    precision = np.zeros_like(true_pos)
    np.divide(true_pos, flagged, out=precision, where=flagged > 0)
    average_precision = _ratio((positive * precision).sum(axis=1), positive.sum(axis=1))
    average_precision[negative.sum(axis=1) == 0] = np.nan
    return average_precision


def auroc(y: npt.ArrayLike, s: npt.ArrayLike) -> float:
    """Area under the ROC curve on the known entries; NaN when they hold a single class."""
    y_vec, s_vec = _as_vector(y, "y"), _as_vector(s, "s")
    ties = _class_weight_per_tie(_sort_known(y_vec, s_vec), np.ones((1, len(y_vec))))
    return float(_auroc_from_ties(*ties)[0])


def auprc(y: npt.ArrayLike, s: npt.ArrayLike) -> float:
    """Average precision on the known entries; NaN when they hold a single class."""
    y_vec, s_vec = _as_vector(y, "y"), _as_vector(s, "s")
    ties = _class_weight_per_tie(_sort_known(y_vec, s_vec), np.ones((1, len(y_vec))))
    return float(_auprc_from_ties(*ties)[0])


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class ReliabilityData:
    """Equal-width reliability diagram: per bin, the mean prediction and how often it came true."""

    bin_edges: tuple[float, ...]  # (n_bins + 1,) from 0 to 1
    mean_predicted: tuple[float, ...]  # (n_bins,) NaN for an empty bin
    observed_frequency: tuple[float, ...]  # (n_bins,) NaN for an empty bin
    counts: tuple[int, ...]  # (n_bins,)

    @property
    def n(self) -> int:
        return sum(self.counts)

    @property
    def ece(self) -> float:
        """Count-weighted mean gap between predicted and observed frequency; NaN with no data."""
        if self.n == 0:
            return math.nan
        gaps = (
            count * abs(predicted - observed)
            for count, predicted, observed in zip(
                self.counts, self.mean_predicted, self.observed_frequency, strict=True
            )
            if count > 0
        )
        return float(sum(gaps) / self.n)

    def to_json(self) -> dict[str, object]:
        """Plain JSON-able dict (empty bins' NaN become ``None``)."""
        jsonable: dict[str, object] = to_jsonable(asdict(self))
        return jsonable


def reliability_curve(y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 15) -> ReliabilityData:
    """Bin the known entries by predicted probability into ``n_bins`` equal-width bins."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y_vec, p_vec = _as_vector(y, "y"), _as_vector(p, "p")
    mask = _known_mask(y_vec, p_vec)
    y_vec, p_vec = y_vec[mask], p_vec[mask]
    if ((p_vec < 0.0) | (p_vec > 1.0)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], p_vec, side="right")  # (n,) last bin includes 1.0
    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)
    predicted_sum = np.bincount(bins, weights=p_vec, minlength=n_bins).astype(np.float64)
    positive_sum = np.bincount(bins, weights=y_vec, minlength=n_bins).astype(np.float64)
    mean_predicted = _ratio(predicted_sum, counts)  # (n_bins,)
    observed = _ratio(positive_sum, counts)  # (n_bins,)
    return ReliabilityData(
        bin_edges=tuple(float(edge) for edge in edges),
        mean_predicted=tuple(float(value) for value in mean_predicted),
        observed_frequency=tuple(float(value) for value in observed),
        counts=tuple(int(count) for count in counts),
    )


def expected_calibration_error(y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 15) -> float:
    """ECE over equal-width bins, weighted by count, on the known entries; NaN with none."""
    return reliability_curve(y, p, n_bins).ece


# --------------------------------------------------------------------------- bootstrap


def _group_codes(groups: npt.ArrayLike | None, n_rows: int) -> tuple[IntArray, int]:
    """(N,) group index per row and the number of groups; each row is its own group by default."""
    if groups is None:
        return np.arange(n_rows), n_rows
    array = np.asarray(groups)
    if array.shape != (n_rows,):
        raise ValueError(f"groups must have shape ({n_rows},), got {array.shape}")
    _, codes = np.unique(array, return_inverse=True)
    return codes.reshape(-1).astype(np.intp), int(codes.max()) + 1 if n_rows else 0


def _resample_weights(
    codes: IntArray, n_groups: int, n_resamples: int, seed: int
) -> Iterator[FloatArray]:
    """Chunks (b, N) of how often each row is drawn; a group's rows are drawn together."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS_PER_CHUNK // max(len(codes), n_groups, 1))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draws = rng.integers(0, n_groups, size=(size, n_groups))  # (b, G) group indices
        offsets = n_groups * np.arange(size)[:, None]
        times_drawn = np.bincount((draws + offsets).ravel(), minlength=size * n_groups)
        yield times_drawn.reshape(size, n_groups)[:, codes].astype(np.float64)


def _per_resample_evaluator(metric: Metric, y: FloatArray, s: FloatArray) -> ResampleEvaluator:
    """Turns (b, N) resample weights into (b,) metric values; vectorised for AUROC and AUPRC."""
    if metric is auroc or metric is auprc:
        cases = _sort_known(y, s)
        from_ties = _auroc_from_ties if metric is auroc else _auprc_from_ties
        return lambda weights: from_ties(*_class_weight_per_tie(cases, weights))

    rows = np.arange(len(y))

    def evaluate(weights: FloatArray) -> FloatArray:
        picks = (np.repeat(rows, times.astype(np.intp)) for times in weights)
        return np.array([metric(y[idx], s[idx]) for idx in picks], dtype=np.float64)

    return evaluate


def _percentile_interval(values: FloatArray, alpha: float) -> tuple[float, float]:
    """Percentile interval of the resamples where the metric is defined; NaN if none is."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _check_bootstrap_args(n_resamples: int, alpha: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def bootstrap_ci(
    metric: Metric,
    y: npt.ArrayLike,
    s: npt.ArrayLike,
    *,
    groups: npt.ArrayLike | None = None,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile ``1 - alpha`` interval of ``metric(y, s)``, deterministic for a seed.

    With ``groups`` (e.g. patient ids) whole groups are resampled, so one patient's cases move
    together. Rows with unknown labels are resampled too (the metric ignores them), so the same
    seed gives the same resamples for every label of a case table. Resamples where the metric
    is NaN (e.g. only one class drawn) are skipped. A resample hands ``metric`` each drawn row
    repeated as often as it was drawn, in original row order, so the metric must not depend on
    row order (no bootstrap metric should).
    """
    _check_bootstrap_args(n_resamples, alpha)
    y_vec, s_vec = _as_vector(y, "y"), _as_vector(s, "s")
    if y_vec.shape != s_vec.shape:
        raise ValueError(f"labels {y_vec.shape} and scores {s_vec.shape} differ in shape")
    codes, n_groups = _group_codes(groups, len(y_vec))
    if n_groups == 0:
        return math.nan, math.nan
    evaluate = _per_resample_evaluator(metric, y_vec, s_vec)
    chunks = _resample_weights(codes, n_groups, n_resamples, seed)
    return _percentile_interval(np.concatenate([evaluate(w) for w in chunks]), alpha)


# --------------------------------------------------------------------------- multi-label report


def _as_label_matrices(
    y: npt.ArrayLike, p: npt.ArrayLike, label_names: Sequence[str]
) -> tuple[FloatArray, FloatArray]:
    y_mat = np.asarray(y, dtype=np.float64)
    p_mat = np.asarray(p, dtype=np.float64)
    if y_mat.ndim != 2 or y_mat.shape != p_mat.shape:
        raise ValueError(f"y {y_mat.shape} and p {p_mat.shape} must be equal (N, K) matrices")
    if y_mat.shape[1] != len(label_names):
        raise ValueError(f"{y_mat.shape[1]} label columns but {len(label_names)} label names")
    if not label_names:
        raise ValueError("at least one label is needed")
    if len(set(label_names)) != len(label_names):
        raise ValueError(f"duplicate label names in {list(label_names)}")
    return y_mat, p_mat


def _bootstrap_label_metrics(
    cases: Sequence[_SortedCases],
    n_rows: int,
    groups: npt.ArrayLike | None,
    n_resamples: int,
    seed: int,
) -> tuple[FloatArray, FloatArray]:
    """(B, K) AUROC and (B, K) AUPRC, every label evaluated on the same resamples."""
    codes, n_groups = _group_codes(groups, n_rows)
    if n_groups == 0:
        empty = np.full((n_resamples, len(cases)), np.nan)
        return empty, empty
    aurocs: list[FloatArray] = []
    auprcs: list[FloatArray] = []
    for weights in _resample_weights(codes, n_groups, n_resamples, seed):
        ties = [_class_weight_per_tie(label_cases, weights) for label_cases in cases]
        aurocs.append(np.stack([_auroc_from_ties(*t) for t in ties], axis=1))  # (b, K)
        auprcs.append(np.stack([_auprc_from_ties(*t) for t in ties], axis=1))  # (b, K)
    return np.concatenate(aurocs), np.concatenate(auprcs)


def _mean_or_nan(values: FloatArray) -> float:
    return float(values.mean()) if values.size else math.nan


def multilabel_metrics(
    y: npt.ArrayLike,
    p: npt.ArrayLike,
    label_names: Sequence[str],
    *,
    groups: npt.ArrayLike | None = None,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    n_bins: int = 15,
) -> dict[str, Any]:
    """Per-label and macro metrics for y (N, K) in {0, 1, NaN} and probabilities p (N, K).

    Returns a JSON-able dict (NaN → ``None``)::

        {"labels": {name: {"auroc", "auroc_ci", "auprc", "auprc_ci", "ece", "n", "n_positive"}},
         "macro_auroc", "macro_auroc_ci", "macro_auprc", "ece", "n_labels_averaged"}

    Macro values (and the mean ECE) average only labels with both classes among their known
    entries; ``n_labels_averaged`` says how many. The macro AUROC interval bootstraps the macro
    itself: each resample draws the same cases (or patients) for all labels, and resamples where
    an averaged label loses a class are skipped.
    """
    _check_bootstrap_args(n_resamples, alpha)
    y_mat, p_mat = _as_label_matrices(y, p, label_names)
    n_rows, n_labels = y_mat.shape
    cases = [_sort_known(y_mat[:, k], p_mat[:, k]) for k in range(n_labels)]
    ties = [_class_weight_per_tie(label_cases, np.ones((1, n_rows))) for label_cases in cases]
    point_auroc = np.array([_auroc_from_ties(*t)[0] for t in ties], dtype=np.float64)  # (K,)
    point_auprc = np.array([_auprc_from_ties(*t)[0] for t in ties], dtype=np.float64)  # (K,)
    eces = np.array(
        [expected_calibration_error(y_mat[:, k], p_mat[:, k], n_bins) for k in range(n_labels)]
    )
    boot_auroc, boot_auprc = _bootstrap_label_metrics(cases, n_rows, groups, n_resamples, seed)
    averaged = np.isfinite(point_auroc)  # (K,) labels with both classes known
    macro_ci = (
        _percentile_interval(boot_auroc[:, averaged].mean(axis=1), alpha)
        if averaged.any()
        else (math.nan, math.nan)
    )
    labels = {
        name: {
            "auroc": point_auroc[k],
            "auroc_ci": list(_percentile_interval(boot_auroc[:, k], alpha)),
            "auprc": point_auprc[k],
            "auprc_ci": list(_percentile_interval(boot_auprc[:, k], alpha)),
            "ece": eces[k],
            "n": len(cases[k].rows),
            "n_positive": int(cases[k].positive.sum()),
        }
        for k, name in enumerate(label_names)
    }
    report = {
        "labels": labels,
        "macro_auroc": _mean_or_nan(point_auroc[averaged]),
        "macro_auroc_ci": list(macro_ci),
        "macro_auprc": _mean_or_nan(point_auprc[averaged]),
        "ece": _mean_or_nan(eces[averaged]),
        "n_labels_averaged": int(averaged.sum()),
    }
    jsonable: dict[str, Any] = to_jsonable(report)
    return jsonable


# --------------------------------------------------------------------------- JSON


def to_jsonable(value: object) -> Any:
    """Plain JSON types, recursively: NaN/inf → ``None``, numpy scalars/arrays → Python values.

    Reports are written with ``allow_nan=False`` so an undefined metric can never be mistaken
    for a number downstream.
    """
    if value is None or isinstance(value, str | bool | np.bool_):
        return bool(value) if isinstance(value, np.bool_) else value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return [to_jsonable(item) for item in value.tolist()]
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    raise TypeError(f"cannot convert {type(value).__name__} to JSON")
