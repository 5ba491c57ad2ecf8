"""Cohort report: one self-contained HTML page, the prediction table and the numbers as JSON.

A cohort run scores every case with a multi-label model; researchers need to see, on one page
they can mail or archive, how well it ranked (ROC, precision–recall), how honest its
probabilities were (reliability, ECE), and where it is weaker: per modality subset, per sex,
per age band. The page must stand alone years later, so plots are embedded as base64 PNG data
URIs, the style sheet is inline and nothing refers to an external URL or runs a script. Every
string that came from the data (labels, subsets, title, model fields) is HTML-escaped: a label
name is data, never markup.

Metric policy (also printed in the report): ranking and calibration metrics use *every* case
with a known label, abstained or not, because leaving abstentions out would flatter the model
exactly where it declined to answer. Abstention is reported beside them: the rate per label and
the AUROC on the non-abstained cases only, so a reader sees both what the model knows and what
it claims to know.

Undefined numbers stay undefined: a slice with fewer than ``min_cases`` known labels, or a
single class, gets "n/a" with the reason in the page and ``null`` plus the reason in
summary.json (written with ``allow_nan=False``), never a number that looks like a result.
Confidence intervals are percentile bootstraps over *patients*, since one patient's cases are
correlated (:func:`clinic.evaluation.metrics.multilabel_metrics`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeGuard

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clinic.evaluation.metrics import (
    BoolArray,
    FloatArray,
    ReliabilityData,
    auroc,
    multilabel_metrics,
    reliability_curve,
    to_jsonable,
)
from schemas.modalities import all_subsets

StrArray: TypeAlias = npt.NDArray[np.str_]
Stats: TypeAlias = dict[str, Any]

BASE_COLUMNS: Final[tuple[str, ...]] = ("case_id", "patient_id", "subset", "sex", "age_years")
LABEL_PREFIXES: Final[tuple[str, ...]] = ("p", "abstain", "y")
AGE_BANDS: Final[tuple[str, ...]] = ("<40", "40–59", "60–79", "≥80", "unknown")
UNKNOWN: Final = "unknown"
POSITIVE_THRESHOLD: Final = 0.5
ALPHA: Final = 0.05

METRIC_POLICY: Final = (
    "AUROC, AUPRC and ECE use every case whose label is known, abstained or not, so the "
    "figures are not flattered by the cases the model declined. The abstention rate is shown "
    "separately, with the AUROC on non-abstained cases only. Intervals are 95% percentile "
    "bootstraps resampling whole patients. A metric is n/a (with the reason) when a slice has "
    "fewer than {min_cases} known labels or only one class. Ages fall in bands by whole years "
    "(40–59 means 40 ≤ age < 60). Mean predicted probabilities beside a prevalence are taken "
    "over the same known-label cases; the prevalence-vs-predicted table also shows them over "
    "every scored case."
)

_DPI = 80
_MAX_CURVE_POINTS = 400

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: right; vertical-align: top; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.scroll { overflow-x: auto; } .na { color: #999; } .why { color: #999; font-size: 0.85em; }
.policy { background: #f8f8f0; border-left: 4px solid #cc9; padding: 0.5em 1em; }
img { max-width: 100%; display: block; margin: 0.4em 0 1.2em 0; }
"""


@dataclass(frozen=True)
class CohortReportFiles:
    """Where :func:`write_cohort_report` wrote each output."""

    html: Path
    csv: Path
    parquet: Path
    summary: Path


@dataclass(frozen=True)
class ReportSettings:
    """Knobs of the statistics; the defaults keep a 10k-case cohort to seconds."""

    n_resamples: int = 200
    min_cases: int = 10
    n_bins: int = 10
    seed: int = 0


@dataclass(frozen=True)
class _Cohort:
    """The frame as arrays: one row per case, one column per label."""

    labels: tuple[str, ...]
    y: FloatArray  # (N, K) 1.0 / 0.0 / NaN unknown
    p: FloatArray  # (N, K) calibrated probability, NaN when not scored
    abstain: BoolArray  # (N, K)
    patients: StrArray  # (N,)
    subsets: StrArray  # (N,)
    sex: StrArray  # (N,)
    age_band: StrArray  # (N,)


# --------------------------------------------------------------------------- public API


def write_cohort_report(
    frame: pd.DataFrame,
    label_names: Sequence[str],
    out_dir: Path,
    *,
    title: str,
    model: Mapping[str, Any],
    settings: ReportSettings | None = None,
    generated_at: datetime | None = None,
) -> CohortReportFiles:
    """Write report.html, predictions.csv, predictions.parquet and summary.json to ``out_dir``.

    ``frame`` has one row per scored case with the columns of :data:`BASE_COLUMNS` and, per
    label L, ``p:L``, ``abstain:L`` and ``y:L``. ``generated_at`` defaults to now (UTC); pass
    it to make the page reproducible.
    """
    settings = settings or ReportSettings()
    cohort = _read_cohort(frame, label_names)
    stamp = (generated_at or datetime.now(UTC)).astimezone(UTC)
    summary = _summary(cohort, title, model, settings, stamp)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = CohortReportFiles(
        html=out_dir / "report.html",
        csv=out_dir / "predictions.csv",
        parquet=out_dir / "predictions.parquet",
        summary=out_dir / "summary.json",
    )
    table = frame[_ordered_columns(frame, cohort.labels)]
    table.to_csv(files.csv, index=False)
    table.to_parquet(files.parquet, index=False)
    text = json.dumps(to_jsonable(summary), allow_nan=False, indent=2, ensure_ascii=False)
    files.summary.write_text(text + "\n", encoding="utf-8")
    figures = [_png_data_uri(_label_figure(cohort, k, summary)) for k in range(len(label_names))]
    files.html.write_text(_render_html(summary, figures), encoding="utf-8")
    return files


# --------------------------------------------------------------------------- reading the frame


def _label_column(prefix: str, label: str) -> str:
    return f"{prefix}:{label}"


def _ordered_columns(frame: pd.DataFrame, labels: Sequence[str]) -> list[str]:
    """Base columns, then p/abstain/y per label in label order, then any others by name.

    The order depends on the labels only, never on how the caller happened to build the frame,
    so two exports of the same cohort are column-for-column comparable.
    """
    first = [*BASE_COLUMNS]
    first += [_label_column(prefix, label) for label in labels for prefix in LABEL_PREFIXES]
    known = set(first)
    return first + sorted((str(c) for c in frame.columns if c not in known), key=str)


def _check_columns(frame: pd.DataFrame, labels: Sequence[str]) -> None:
    if not labels:
        raise ValueError("at least one label is needed")
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate label names in {list(labels)}")
    missing = [c for c in _ordered_columns(frame, labels) if c not in frame.columns]
    if missing:
        raise ValueError(f"the cohort frame lacks columns {missing}")
    for column in ("case_id", "patient_id"):
        if frame[column].isna().any():
            raise ValueError(f"{column} must be set on every row")


def _label_matrix(frame: pd.DataFrame, prefix: str, labels: Sequence[str]) -> FloatArray:
    columns = [_label_column(prefix, label) for label in labels]
    values = frame[columns].apply(pd.to_numeric, errors="raise")
    return np.asarray(values.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)


def _check_values(y: FloatArray, p: FloatArray, labels: Sequence[str]) -> None:
    for k, label in enumerate(labels):
        known_y = y[~np.isnan(y[:, k]), k]
        if not np.isin(known_y, (0.0, 1.0)).all():
            raise ValueError(f"y:{label} must hold 1.0, 0.0 or NaN")
        known_p = p[~np.isnan(p[:, k]), k]
        if ((known_p < 0.0) | (known_p > 1.0)).any():
            raise ValueError(f"p:{label} must hold probabilities in [0, 1]")


def _group_names(series: pd.Series[Any]) -> StrArray:
    """Text of each value; missing or blank values become "unknown"."""
    names = [
        str(v).strip() if isinstance(v, str) and str(v).strip() else UNKNOWN
        for v in series.tolist()
    ]
    return np.asarray(names, dtype=np.str_)


def age_bands(ages: Iterable[object]) -> StrArray:
    """Band per age in years: <40, 40–59, 60–79, ≥80 (lower bound included); NaN → unknown."""
    years = np.asarray(pd.to_numeric(pd.Series(list(ages)), errors="coerce"), dtype=np.float64)
    unknown = np.isnan(years)
    safe = np.where(unknown, 0.0, years)
    bands = np.select(
        [unknown, safe < 40.0, safe < 60.0, safe < 80.0],
        [UNKNOWN, AGE_BANDS[0], AGE_BANDS[1], AGE_BANDS[2]],
        AGE_BANDS[3],
    )
    return np.asarray(bands, dtype=np.str_)


def _read_cohort(frame: pd.DataFrame, label_names: Sequence[str]) -> _Cohort:
    labels = tuple(str(label) for label in label_names)
    _check_columns(frame, labels)
    y = _label_matrix(frame, "y", labels)
    p = _label_matrix(frame, "p", labels)
    _check_values(y, p, labels)
    abstain_columns = [frame[_label_column("abstain", label)] for label in labels]
    abstain = np.column_stack(
        [c.to_numpy(dtype=bool, na_value=False) for c in abstain_columns]
    ).reshape(len(frame), len(labels))
    return _Cohort(
        labels=labels,
        y=y,
        p=p,
        abstain=abstain,
        patients=frame["patient_id"].astype(str).to_numpy(dtype=np.str_),
        subsets=_group_names(frame["subset"]),
        sex=_group_names(frame["sex"].map(lambda v: v.lower() if isinstance(v, str) else v)),
        age_band=age_bands(frame["age_years"]),
    )


# --------------------------------------------------------------------------- statistics


def _known(y: FloatArray, p: FloatArray) -> BoolArray:
    known: BoolArray = ~np.isnan(y) & ~np.isnan(p)
    return known


def _mean(values: npt.NDArray[Any]) -> float:
    return float(np.mean(values, dtype=np.float64)) if values.size else math.nan


def _too_few(n: int, min_cases: int) -> str:
    if n == 0:
        return "no known labels"
    return f"only {n} known labels, fewer than {min_cases}"


def _ranking_na_reason(y_known: FloatArray, min_cases: int) -> str | None:
    """Why AUROC/AUPRC cannot be given on these known labels; None when they can."""
    n, positives = y_known.size, int(y_known.sum())
    if n < min_cases:
        return _too_few(n, min_cases)
    if positives == 0:
        return f"one class only: all {n} known labels negative"
    if positives == n:
        return f"one class only: all {n} known labels positive"
    return None


def _slice_stats(y: FloatArray, p: FloatArray, settings: ReportSettings) -> Stats:
    """Counts, prevalence, mean prediction, AUROC and ECE of one label on a slice of cases.

    The mean prediction is over the same known-label cases as the prevalence, so the two are
    directly comparable (calibration in the large).
    """
    known = _known(y, p)
    y_known, p_known = y[known], p[known]
    reasons: dict[str, str] = {}
    rank_reason = _ranking_na_reason(y_known, settings.min_cases)
    if rank_reason is not None:
        reasons["auroc"] = reasons["auprc"] = rank_reason
    if y_known.size < settings.min_cases:
        reasons["ece"] = _too_few(y_known.size, settings.min_cases)
    return {
        "n_known": int(y_known.size),
        "n_positive": int(y_known.sum()),
        "prevalence": _mean(y_known),
        "mean_predicted": _mean(p_known),
        "auroc": auroc(y_known, p_known) if rank_reason is None else math.nan,
        "ece": (
            reliability_curve(y_known, p_known, settings.n_bins).ece
            if "ece" not in reasons
            else math.nan
        ),
        "na_reason": reasons,
    }


def _finite(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _macro(labels: Mapping[str, Stats]) -> Stats:
    """Unweighted means over the labels whose metric is defined, and how many they were."""
    aurocs = [s["auroc"] for s in labels.values() if _finite(s["auroc"])]
    eces = [s["ece"] for s in labels.values() if _finite(s["ece"])]
    reasons: dict[str, str] = {}
    if not aurocs:
        reasons["macro_auroc"] = "no label with a defined AUROC"
    if not eces:
        reasons["macro_ece"] = "no label with enough known cases"
    return {
        "macro_auroc": float(np.mean(aurocs)) if aurocs else math.nan,
        "macro_ece": float(np.mean(eces)) if eces else math.nan,
        "n_labels_averaged": len(aurocs),
        "na_reason": reasons,
    }


def _group_rows(
    cohort: _Cohort, keys: StrArray, order: Sequence[str], settings: ReportSettings
) -> list[Stats]:
    """One row per group (in ``order``): size, patients, per-label statistics and macros."""
    rows: list[Stats] = []
    for group in order:
        members = keys == group
        labels = {
            name: _slice_stats(cohort.y[members, k], cohort.p[members, k], settings)
            for k, name in enumerate(cohort.labels)
        }
        rows.append(
            {
                "group": group,
                "n": int(members.sum()),
                "n_patients": int(np.unique(cohort.patients[members]).size),
                "labels": labels,
                **_macro(labels),
            }
        )
    return rows


def _subset_order(present: Iterable[str]) -> list[str]:
    """Canonical subset order (fewest modalities first), unknown names after, alphabetically."""
    canonical = ["+".join(subset) for subset in all_subsets()]
    seen = set(present)
    return [s for s in canonical if s in seen] + sorted(seen - set(canonical))


def _sex_order(present: Iterable[str]) -> list[str]:
    """female and male always (an empty group is itself a finding), others, unknown last."""
    fixed = ["female", "male"]
    others = sorted(set(present) - {*fixed, UNKNOWN})
    return [*fixed, *others, UNKNOWN]


def _overall_label(cohort: _Cohort, k: int, settings: ReportSettings) -> Stats:
    """All-case statistics of label ``k`` plus abstention and predicted-rate figures."""
    y, p, abstain = cohort.y[:, k], cohort.p[:, k], cohort.abstain[:, k]
    stats = _slice_stats(y, p, settings)
    kept = _slice_stats(y[~abstain], p[~abstain], settings)
    scored, known = ~np.isnan(p), _known(y, p)
    reasons = dict(stats["na_reason"])
    if "auroc" in kept["na_reason"]:
        reasons["auroc_non_abstained"] = kept["na_reason"]["auroc"]
    return {
        **stats,
        "auroc_ci": [math.nan, math.nan],
        "auprc": math.nan,
        "auprc_ci": [math.nan, math.nan],
        "n_cases": len(y),
        "n_scored": int(scored.sum()),
        "n_abstained": int(abstain.sum()),
        "abstention_rate": _mean(abstain),
        "n_known_non_abstained": kept["n_known"],
        "auroc_non_abstained": kept["auroc"],
        "predicted_positive_rate": _mean(p[known] >= POSITIVE_THRESHOLD),
        "mean_predicted_all": _mean(p[scored]),
        "predicted_positive_rate_all": _mean(p[scored] >= POSITIVE_THRESHOLD),
        "na_reason": reasons,
    }


def _with_bootstrap(
    cohort: _Cohort, per_label: dict[str, Stats], settings: ReportSettings
) -> tuple[dict[str, Stats], Stats]:
    """Per-label AUPRC and patient-bootstrap CIs, plus the macro row, for the rankable labels.

    Only labels with a defined AUROC go into :func:`multilabel_metrics`, so its macro values
    average exactly the labels the table shows a number for.
    """
    ranked = [name for name in cohort.labels if "auroc" not in per_label[name]["na_reason"]]
    if not ranked:
        reason = "no label with a defined AUROC"
        macro = {"macro_auroc": None, "macro_auroc_ci": [None, None], "macro_auprc": None}
        return per_label, {
            **macro,
            "macro_ece": None,
            "n_labels_averaged": 0,
            "na_reason": {"macro_auroc": reason, "macro_auprc": reason, "macro_ece": reason},
        }
    columns = [cohort.labels.index(name) for name in ranked]
    result = multilabel_metrics(
        cohort.y[:, columns], cohort.p[:, columns], ranked,
        groups=cohort.patients, n_resamples=settings.n_resamples, alpha=ALPHA,
        seed=settings.seed, n_bins=settings.n_bins,
    )  # fmt: skip
    merged = dict(per_label)
    for name in ranked:
        got = result["labels"][name]
        merged[name] = {
            **per_label[name],
            "auroc_ci": got["auroc_ci"],
            "auprc": got["auprc"],
            "auprc_ci": got["auprc_ci"],
        }
    return merged, {
        "macro_auroc": result["macro_auroc"],
        "macro_auroc_ci": result["macro_auroc_ci"],
        "macro_auprc": result["macro_auprc"],
        "macro_ece": result["ece"],
        "n_labels_averaged": result["n_labels_averaged"],
        "na_reason": {},
    }


def _json_safe(value: object) -> Any:
    """Model metadata as plain JSON: mappings and sequences kept, anything else as text."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if value is None or isinstance(value, str | int | float | np.integer | np.floating):
        return value
    return str(value)


def _summary(
    cohort: _Cohort,
    title: str,
    model: Mapping[str, Any],
    settings: ReportSettings,
    generated_at: datetime,
) -> Stats:
    """Every number the page shows, as one JSON-able tree (NaN still NaN here)."""
    per_label = {name: _overall_label(cohort, k, settings) for k, name in enumerate(cohort.labels)}
    per_label, macro = _with_bootstrap(cohort, per_label, settings)
    return {
        "title": title,
        "generated_at": generated_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "n_cases": len(cohort.patients),
        "n_patients": int(np.unique(cohort.patients).size),
        "model": _json_safe(model),
        "settings": {
            "n_resamples": settings.n_resamples,
            "min_cases": settings.min_cases,
            "n_bins": settings.n_bins,
            "seed": settings.seed,
            "alpha": ALPHA,
            "positive_threshold": POSITIVE_THRESHOLD,
        },
        "metric_policy": METRIC_POLICY.format(min_cases=settings.min_cases),
        "label_names": list(cohort.labels),
        "labels": per_label,
        "macro": macro,
        "subsets": _group_rows(cohort, cohort.subsets, _subset_order(cohort.subsets), settings),
        "subgroups": {
            "sex": _group_rows(cohort, cohort.sex, _sex_order(cohort.sex), settings),
            "age_band": _group_rows(cohort, cohort.age_band, AGE_BANDS, settings),
        },
    }


# --------------------------------------------------------------------------- figures


def _plot_text(text: str) -> str:
    """Data text safe for matplotlib: a "$" would otherwise start mathtext and may not parse."""
    return text.replace("$", r"\$")


def _thin(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """At most a few hundred points of a curve: the picture is the same, the PNG much faster."""
    if len(x) <= _MAX_CURVE_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, _MAX_CURVE_POINTS).round().astype(np.intp))
    return x[keep], y[keep]


def _with_ci(value: object, interval: object) -> str:
    if not _finite(value):
        return "n/a"
    text = f"{value:.3f}"
    if isinstance(interval, list | tuple) and all(_finite(bound) for bound in interval):
        text += f" ({interval[0]:.3f}–{interval[1]:.3f})"
    return text


def _square_axes(axes: Axes, xlabel: str, ylabel: str) -> None:
    """Unit square with three ticks per axis: fewer tick labels keep rendering fast."""
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_xticks([0.0, 0.5, 1.0])
    axes.set_yticks([0.0, 0.5, 1.0])
    axes.set_xlabel(xlabel, fontsize="small")
    axes.set_ylabel(ylabel, fontsize="small")
    axes.tick_params(labelsize="x-small")


def _cumulative_counts(y: FloatArray, p: FloatArray) -> tuple[FloatArray, FloatArray]:
    """True and false positives flagged at each distinct threshold, highest score first.

    Tied scores form one threshold, so the curves do not depend on row order.
    """
    order = np.argsort(-p, kind="stable")
    y_sorted, p_sorted = y[order], p[order]
    last_of_run = np.append(p_sorted[1:] != p_sorted[:-1], True)
    true_pos = np.cumsum(y_sorted)[last_of_run]
    false_pos = np.cumsum(1.0 - y_sorted)[last_of_run]
    return true_pos, false_pos


def roc_points(y: FloatArray, p: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(false positive rate, true positive rate) from (0, 0) to (1, 1); needs both classes."""
    true_pos, false_pos = _cumulative_counts(y, p)
    return (
        np.concatenate([[0.0], false_pos / false_pos[-1]]),
        np.concatenate([[0.0], true_pos / true_pos[-1]]),
    )


def precision_recall_points(y: FloatArray, p: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(recall, precision) per threshold, starting at recall 0 with precision 1."""
    true_pos, false_pos = _cumulative_counts(y, p)
    return (
        np.concatenate([[0.0], true_pos / true_pos[-1]]),
        np.concatenate([[1.0], true_pos / (true_pos + false_pos)]),
    )


def _draw_roc(axes: Axes, y: FloatArray, p: FloatArray, stats: Stats) -> None:
    axes.plot(*_thin(*roc_points(y, p)), linewidth=1.2)
    axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", linewidth=0.8)
    _square_axes(axes, "false positive rate", "true positive rate")
    axes.set_title(f"AUROC {_with_ci(stats['auroc'], stats['auroc_ci'])}", fontsize="small")


def _draw_pr(axes: Axes, y: FloatArray, p: FloatArray, stats: Stats) -> None:
    axes.step(*_thin(*precision_recall_points(y, p)), where="pre", linewidth=1.2)
    axes.axhline(stats["prevalence"], linestyle="--", color="grey", linewidth=0.8)
    _square_axes(axes, "recall", "precision")
    axes.set_title(f"AUPRC {_with_ci(stats['auprc'], stats['auprc_ci'])}", fontsize="small")


def _draw_reliability(axes: Axes, data: ReliabilityData, ece: float) -> None:
    predicted = np.asarray(data.mean_predicted, dtype=np.float64)  # (n_bins,)
    observed = np.asarray(data.observed_frequency, dtype=np.float64)  # (n_bins,)
    filled = np.asarray(data.counts) > 0
    axes.plot(predicted[filled], observed[filled], marker="o", markersize=3, linewidth=1.2)
    axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", linewidth=0.8)
    _square_axes(axes, "mean predicted probability", "observed frequency")
    axes.set_title(f"reliability: ECE {ece:.3f}", fontsize="small")


def _draw_na(axes: Axes, what: str, reason: str) -> None:
    axes.set_axis_off()
    axes.text(
        0.5, 0.5, _plot_text(f"{what}: n/a\n({reason})"),
        ha="center", va="center", wrap=True, fontsize="small", color="dimgrey",
    )  # fmt: skip


def _label_figure(cohort: _Cohort, k: int, summary: Stats) -> Figure:
    """ROC, precision–recall and reliability of one label, side by side, on known labels."""
    name = cohort.labels[k]
    stats = summary["labels"][name]
    known = _known(cohort.y[:, k], cohort.p[:, k])
    y, p = cohort.y[known, k], cohort.p[known, k]
    figure = Figure(figsize=(11.0, 3.4))
    roc_axes, pr_axes, reliability_axes = figure.subplots(1, 3)
    rank_reason = stats["na_reason"].get("auroc")
    if rank_reason is None:
        _draw_roc(roc_axes, y, p, stats)
        _draw_pr(pr_axes, y, p, stats)
    else:
        _draw_na(roc_axes, "ROC", rank_reason)
        _draw_na(pr_axes, "precision–recall", rank_reason)
    ece_reason = stats["na_reason"].get("ece")
    if ece_reason is None:
        n_bins = summary["settings"]["n_bins"]
        _draw_reliability(reliability_axes, reliability_curve(y, p, n_bins), stats["ece"])
    else:
        _draw_na(reliability_axes, "reliability", ece_reason)
    figure.suptitle(_plot_text(f"{name}  (known labels: {y.size})"), fontsize="medium")
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.16, top=0.82, wspace=0.32)
    return figure


def _png_data_uri(figure: Figure) -> str:
    """The figure as an inline ``data:`` URI, rendered on an Agg canvas (no pyplot state)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- HTML


@dataclass(frozen=True)
class _Markup:
    """HTML built here from escaped parts; every other table cell is escaped when rendered."""

    text: str


Cell: TypeAlias = _Markup | str | int | float | None


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _na(reason: str | None) -> _Markup:
    why = f' <span class="why">({_esc(reason)})</span>' if reason else ""
    return _Markup(f'<span class="na">n/a</span>{why}')


def _cell(value: Cell) -> str:
    if isinstance(value, _Markup):
        return value.text
    if isinstance(value, float) or value is None:
        return f"{value:.3f}" if _finite(value) else _na(None).text
    return _esc(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    head = "".join(f"<th>{_esc(name)}</th>" for name in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(cell)}</td>" for cell in row) + "</tr>\n" for row in rows
    )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>\n{body}</tbody></table></div>"
    )


def _metric(stats: Mapping[str, Any], key: str, ci_key: str | None = None) -> Cell:
    """A metric to 3 decimals (with its CI), or n/a with the reason it is undefined."""
    value = stats.get(key)
    if not _finite(value):
        return _na(stats["na_reason"].get(key) or "undefined")
    return _with_ci(value, stats.get(ci_key)) if ci_key else float(value)


def _percent(value: object) -> Cell:
    return f"{100.0 * value:.1f}%" if _finite(value) else _na("no cases")


def _flatten(value: object, prefix: str = "") -> list[tuple[str, object]]:
    """Nested model metadata as (dotted key, leaf) rows for the header table."""
    if isinstance(value, Mapping):
        rows: list[tuple[str, object]] = []
        for key, item in value.items():
            rows.extend(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    return [(prefix, "—" if value is None else value)]


def _header_section(summary: Stats) -> str:
    rows: list[tuple[str, object]] = [
        ("cohort", summary["title"]),
        ("cases", summary["n_cases"]),
        ("patients", summary["n_patients"]),
        ("generated (UTC)", summary["generated_at"]),
        ("bootstrap resamples (by patient)", summary["settings"]["n_resamples"]),
        ("minimum known labels per metric", summary["settings"]["min_cases"]),
        ("reliability bins", summary["settings"]["n_bins"]),
    ]
    rows += [(f"model {key}", value) for key, value in _flatten(summary["model"])]
    table = _table(["field", "value"], [(key, str(value)) for key, value in rows])
    policy = f'<p class="policy"><b>Metric policy.</b> {_esc(summary["metric_policy"])}</p>'
    return f"<h1>{_esc(summary['title'])}</h1>\n{table}\n{policy}"


def _label_row(name: str, s: Stats) -> list[Cell]:
    return [
        name,
        s["n_known"],
        s["n_positive"],
        _metric(s, "auroc", "auroc_ci"),
        _metric(s, "auprc", "auprc_ci"),
        _metric(s, "ece"),
        _metric(s, "auroc_non_abstained"),
        _percent(s["abstention_rate"]),
    ]


def _macro_row(macro: Stats) -> list[Cell]:
    return [
        f"macro ({macro['n_labels_averaged']} labels)",
        "",
        "",
        _metric(macro, "macro_auroc", "macro_auroc_ci"),
        _metric(macro, "macro_auprc"),
        _metric(macro, "macro_ece"),
        "",
        "",
    ]


def _labels_section(summary: Stats) -> str:
    header = [
        "label",
        "known",
        "positive",
        "AUROC (95% CI)",
        "AUPRC (95% CI)",
        "ECE",
        "AUROC non-abstained",
        "abstained",
    ]
    rows = [_label_row(name, s) for name, s in summary["labels"].items()]
    rows.append(_macro_row(summary["macro"]))
    return "<h2>Per-label discrimination and calibration</h2>\n" + _table(header, rows)


def _figures_section(summary: Stats, figures: Sequence[str]) -> str:
    images = "\n".join(
        f'<img alt="ROC, precision–recall and reliability of {_esc(name)}" src="{uri}">'
        for name, uri in zip(summary["label_names"], figures, strict=True)
    )
    return "<h2>ROC, precision–recall and reliability per label</h2>\n" + images


def _group_cells(row: Stats) -> list[Cell]:
    return [row["group"], row["n"], row["n_patients"]]


def _macro_cells(row: Stats) -> list[Cell]:
    return [_metric(row, "macro_auroc"), _metric(row, "macro_ece")]


def _subset_section(summary: Stats) -> str:
    names = summary["label_names"]
    header = [
        "modality subset",
        "cases",
        "patients",
        *(f"AUROC {name}" for name in names),
        "macro AUROC",
        "mean ECE",
    ]
    rows = [
        [
            *_group_cells(row),
            *(_metric(row["labels"][name], "auroc") for name in names),
            *_macro_cells(row),
        ]
        for row in summary["subsets"]
    ]
    return "<h2>Per modality subset</h2>\n" + _table(header, rows)


def _subgroup_detail(group: str, name: str, s: Stats) -> list[Cell]:
    return [
        group,
        name,
        s["n_known"],
        _metric(s, "prevalence"),
        _metric(s, "mean_predicted"),
        _metric(s, "auroc"),
    ]


def _subgroup_section(rows: Sequence[Stats], label_names: Sequence[str], caption: str) -> str:
    """Macro table per group, then group × label details in a (script-free) disclosure."""
    overview = _table(
        [caption, "cases", "patients", "macro AUROC", "mean ECE"],
        [[*_group_cells(row), *_macro_cells(row)] for row in rows],
    )
    details = _table(
        [caption, "label", "known", "prevalence", "mean predicted", "AUROC"],
        [
            _subgroup_detail(row["group"], name, row["labels"][name])
            for row in rows
            for name in label_names
        ],
    )
    return (
        f"<h2>By {_esc(caption)}</h2>\n{overview}\n"
        f"<details><summary>per label</summary>\n{details}\n</details>"
    )


def _prevalence_section(summary: Stats) -> str:
    header = [
        "label",
        "known",
        "observed prevalence",
        "mean predicted (known)",
        "predicted ≥ 0.5 (known)",
        "scored",
        "mean predicted (all)",
        "predicted ≥ 0.5 (all)",
    ]
    rows = [
        [
            name,
            s["n_known"],
            _metric(s, "prevalence"),
            _metric(s, "mean_predicted"),
            _percent(s["predicted_positive_rate"]),
            s["n_scored"],
            _metric(s, "mean_predicted_all"),
            _percent(s["predicted_positive_rate_all"]),
        ]
        for name, s in summary["labels"].items()
    ]
    return "<h2>Prevalence vs predicted rate</h2>\n" + _table(header, rows)


def _abstention_section(summary: Stats) -> str:
    header = [
        "label",
        "cases",
        "abstained",
        "abstention rate",
        "AUROC (all known)",
        "known, non-abstained",
        "AUROC (non-abstained)",
    ]
    rows = [
        [
            name,
            s["n_cases"],
            s["n_abstained"],
            _percent(s["abstention_rate"]),
            _metric(s, "auroc"),
            s["n_known_non_abstained"],
            _metric(s, "auroc_non_abstained"),
        ]
        for name, s in summary["labels"].items()
    ]
    return "<h2>Abstention</h2>\n" + _table(header, rows)


def _render_html(summary: Stats, figures: Sequence[str]) -> str:
    names = summary["label_names"]
    sections = [
        _header_section(summary),
        _labels_section(summary),
        _figures_section(summary, figures),
        _subset_section(summary),
        _subgroup_section(summary["subgroups"]["sex"], names, "sex"),
        _subgroup_section(summary["subgroups"]["age_band"], names, "age band"),
        _prevalence_section(summary),
        _abstention_section(summary),
    ]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(summary['title'])}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
