"""Per-subset evaluation of fusion heads on embedding tables, and the baselines beside them.

Every figure for a modality subset S is computed on the test cases that *have* every modality
in S, with all other modalities hidden: so "xray+ecg" answers "how good is the model when only
an X-ray and an ECG exist", on real X-rays and ECGs. Baselines are trained in the same run on
the same embeddings and splits, so differences are the method, not the data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from clinic.evaluation.metrics import multilabel_metrics
from clinic.models.calibration import CalibrationMap, sigmoid
from clinic.models.config import FusionConfig
from clinic.models.fusion import ModalityFusion
from clinic.train.embeddings import EmbeddingTable, FusionRecipe, fusion_logits, train_fusion
from schemas.modalities import all_subsets, subset_name

FloatArray = npt.NDArray[np.float64]
Scorer = Callable[[tuple[str, ...]], FloatArray]  # subset → (N, K) probabilities/scores, NaN rows


@dataclass(frozen=True)
class EvaluationSettings:
    n_resamples: int = 1000
    seed: int = 0
    min_cases: int = 20
    recipe: FusionRecipe = field(default_factory=FusionRecipe)


def subsets_in(
    table: EmbeddingTable, modalities: Sequence[str], min_cases: int
) -> list[tuple[str, ...]]:
    """Subsets of ``modalities`` with at least ``min_cases`` test cases having all of them."""
    return [s for s in all_subsets(modalities) if int(table.having(s).sum()) >= min_cases]


def evaluate_scorer(
    scorer: Scorer,
    table: EmbeddingTable,
    subsets: Sequence[tuple[str, ...]],
    label_names: Sequence[str],
    groups: npt.NDArray[np.str_],
    settings: EvaluationSettings,
) -> dict[str, dict[str, object]]:
    """Metrics per subset name for one scorer, on the rows having the whole subset."""
    labels = table.labels.double().numpy()
    out: dict[str, dict[str, object]] = {}
    for subset in subsets:
        rows = table.having(subset).numpy()
        scores = scorer(subset)[rows]
        out[subset_name(subset)] = multilabel_metrics(
            labels[rows], scores, label_names, groups=groups[rows],
            n_resamples=settings.n_resamples, seed=settings.seed,
        )  # fmt: skip
    return out


def calibrated_scorer(
    fusion: ModalityFusion, table: EmbeddingTable, calibration: CalibrationMap | None
) -> Scorer:
    """The model as deployed: fusion logits for the subset, then that subset's calibration."""

    def score(subset: tuple[str, ...]) -> FloatArray:
        logits = fusion_logits(fusion, table, subset)
        if calibration is None:
            return sigmoid(logits)
        return calibration.probabilities(logits, subset_name(subset))

    return score


def fresh_fusion(embed_dim: int, num_labels: int, config: FusionConfig) -> ModalityFusion:
    return ModalityFusion(
        embed_dim, num_labels, layers=config.layers, heads=config.heads,
        dim_feedforward=config.dim_feedforward, dropout=config.dropout,
    )  # fmt: skip


@dataclass
class Baselines:
    """Heads trained on the same embeddings: per-modality, no-dropout fusion, per-subset."""

    single: dict[str, ModalityFusion]
    no_dropout: ModalityFusion
    dedicated: dict[str, ModalityFusion]


def train_baselines(
    train: EmbeddingTable,
    val: EmbeddingTable,
    subsets: Sequence[tuple[str, ...]],
    make: Callable[[], ModalityFusion],
    recipe: FusionRecipe,
) -> Baselines:
    """Train every baseline head (each with the same recipe, early-stopped on validation)."""
    plain = FusionRecipe(**{**vars(recipe), "drop_probability": 0.0})
    modalities = sorted({m for subset in subsets for m in subset})
    single = {m: train_fusion(make(), _having(train, (m,)), plain, modalities=(m,),
                              validation=_having(val, (m,))) for m in modalities}  # fmt: skip
    # Every modality the table holds: a model restricted to a few has no columns for the rest.
    no_dropout = train_fusion(make(), train, plain, modalities=tuple(train.present),
                              validation=val)  # fmt: skip
    dedicated = {
        subset_name(s): train_fusion(
            make(), _having(train, s), plain, modalities=s, validation=_having(val, s)
        )
        for s in subsets
        if len(s) > 1
    }
    dedicated.update({m: single[m] for m in modalities})
    return Baselines(single, no_dropout, dedicated)


def _having(table: EmbeddingTable, subset: Sequence[str]) -> EmbeddingTable:
    return table.rows(table.having(subset).nonzero(as_tuple=True)[0])


def baseline_scorers(baselines: Baselines, table: EmbeddingTable) -> dict[str, Scorer]:
    """Scorers for ``late_fusion`` (mean of single-modality logits), ``no_dropout`` and
    ``dedicated`` (the head trained on exactly that subset)."""

    def late(subset: tuple[str, ...]) -> FloatArray:
        logits = [fusion_logits(baselines.single[m], table, (m,)) for m in subset]
        return sigmoid(np.mean(np.stack(logits), axis=0))

    def no_dropout(subset: tuple[str, ...]) -> FloatArray:
        return sigmoid(fusion_logits(baselines.no_dropout, table, subset))

    def dedicated(subset: tuple[str, ...]) -> FloatArray:
        return sigmoid(fusion_logits(baselines.dedicated[subset_name(subset)], table, subset))

    return {"late_fusion": late, "no_dropout": no_dropout, "dedicated": dedicated}


def single_scorer(baselines: Baselines, table: EmbeddingTable, modality: str) -> Scorer:
    def score(_subset: tuple[str, ...]) -> FloatArray:
        return sigmoid(fusion_logits(baselines.single[modality], table, (modality,)))

    return score


def macro(results: Mapping[str, Mapping[str, object]], subset: str) -> float | None:
    value = results.get(subset, {}).get("macro_auroc")
    return float(value) if isinstance(value, int | float) else None
