"""Classical multi-label baseline: one histogram gradient-boosting classifier per label.

Why histogram gradient boosting: it takes NaN features natively (a missing lead, an absent P
wave are information, not something to impute), needs no scaling, and with strong
regularisation it is a fair classical opponent for the neural model on a few hundred ECGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class GbmParams:
    """Small-data hyper-parameters, compared on PTB-XL folds 1–6 (bench/ptbxl_features_check).

    Slow learning, at most 15 leaves, L2 on leaf values, a random 30% of the features per split
    (with ~260 training ECGs and ~180 correlated features, variance is the enemy); leaves of at
    least 5 rows, since rare classes have only ~20 positives.
    """

    learning_rate: float = 0.05
    max_iter: int = 250
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 5
    l2_regularization: float = 1.0
    max_features: float = 0.3


class FeaturesGbm:
    """Per-label ``HistGradientBoostingClassifier``; rows whose label is unknown are skipped.

    ``threads`` caps OpenMP while fitting and predicting (1 by default): on a few hundred rows
    the per-iteration thread synchronisation costs more than it saves, and on a shared, busy
    machine it made one fit 20× slower than single-threaded.
    """

    def __init__(self, params: GbmParams | None = None, threads: int = 1) -> None:
        self.params = params or GbmParams()
        self.threads = threads
        self.label_names: tuple[str, ...] = ()
        self._fitted = False
        # Per label: a fitted model, or the known prevalence when only one class was seen.
        self._models: list[HistGradientBoostingClassifier | float] = []

    def fit(
        self,
        X: npt.ArrayLike,
        Y: npt.ArrayLike,
        label_names: Sequence[str],
        seed: int = 0,
    ) -> FeaturesGbm:
        """Fit on features X (N, F) (NaN allowed) and labels Y (N, K) in {0, 1, NaN}."""
        features, labels = _as_matrix(X), _as_matrix(Y)
        if labels.shape != (features.shape[0], len(label_names)):
            raise ValueError(
                f"Y has shape {labels.shape}; expected ({features.shape[0]}, {len(label_names)})"
            )
        self.label_names = tuple(label_names)
        with threadpool_limits(limits=self.threads, user_api="openmp"):
            self._models = [
                self._fit_label(features, labels[:, k], seed + k) for k in range(labels.shape[1])
            ]
        self._fitted = True
        return self

    def predict_proba(self, X: npt.ArrayLike) -> FloatArray:
        """Probability of each label being present: (N, F) → (N, K)."""
        if not self._fitted:
            raise RuntimeError("FeaturesGbm.predict_proba called before fit")
        features = _as_matrix(X)
        with threadpool_limits(limits=self.threads, user_api="openmp"):
            columns = [
                model.predict_proba(features)[:, 1]
                if isinstance(model, HistGradientBoostingClassifier)
                else np.full(features.shape[0], model)
                for model in self._models
            ]
        return np.stack(columns, axis=1) if columns else np.zeros((features.shape[0], 0))

    def _fit_label(
        self, features: FloatArray, label: FloatArray, seed: int
    ) -> HistGradientBoostingClassifier | float:
        known = np.isfinite(label)
        targets = label[known].astype(np.int64)
        if len(np.unique(targets)) < 2:
            return float(targets.mean()) if len(targets) else 0.5
        model = HistGradientBoostingClassifier(
            **asdict(self.params), early_stopping=False, random_state=seed
        )
        return model.fit(features[known], targets)


def _as_matrix(values: npt.ArrayLike) -> FloatArray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {matrix.shape}")
    return matrix
