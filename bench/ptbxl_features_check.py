"""Handcrafted ECG features + gradient boosting on the PTB-XL subset: the baseline's AUROC.

Five diagnostic superclasses (NORM, MI, STTC, CD, HYP), multi-label; a superclass is positive when
any of the record's diagnostic SCP codes maps to it (whatever the likelihood); records with none
are left out. Features: :func:`clinic.data.ecg_features.ecg_features` plus age and sex.
Hyper-parameters are chosen by leave-one-fold-out over folds 1–6 (macro AUROC of the pooled
out-of-fold predictions; the default unless another wins by a clear margin); the winner is
trained on folds 1–6 and tested on folds 7–8 (patient-disjoint). Prints one JSON object.

    .venv/bin/python -m bench.ptbxl_features_check [--root PATH] [--rate 500|100] [--workers N]
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import wfdb
from sklearn.metrics import roc_auc_score

from clinic.data.ecg_features import ecg_feature_matrix
from clinic.evaluation.features_gbm import FeaturesGbm, GbmParams

SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptbxl"
TRAIN_FOLDS = (1, 2, 3, 4, 5, 6)
TEST_FOLDS = (7, 8)
CLEAR_MARGIN = 0.005  # out-of-fold macro AUROC a candidate must gain over the default
Matrix = npt.NDArray[np.float64]


def candidate_params() -> dict[str, GbmParams]:
    """The few small-data settings compared on folds 1–6."""
    base = GbmParams()
    return {
        "default": base,
        "leaf10_features50": replace(base, min_samples_leaf=10, max_features=0.5),
        "leaves8": replace(base, max_leaf_nodes=8),
        "l2_3": replace(base, l2_regularization=3.0),
        "lr0.1_iter150": replace(base, learning_rate=0.1, max_iter=150),
    }


def superclass_labels(root: Path) -> pd.DataFrame:
    """Records with their five 0/1 superclass labels; records without any superclass dropped."""
    database = pd.read_csv(root / "ptbxl_database.csv")
    statements = pd.read_csv(root / "scp_statements.csv", index_col=0)
    diagnostic = statements.loc[statements["diagnostic"] == 1, "diagnostic_class"].to_dict()
    for name in SUPERCLASSES:
        database[name] = [
            float(any(diagnostic.get(code) == name for code in ast.literal_eval(codes)))
            for codes in database["scp_codes"]
        ]
    return database[database[list(SUPERCLASSES)].sum(axis=1) > 0].reset_index(drop=True)


def read_signals(root: Path, records: pd.DataFrame, rate: int) -> list[npt.NDArray[np.float32]]:
    """(12, T) mV signals in standard lead order (PTB-XL's own order)."""
    column = "filename_hr" if rate == 500 else "filename_lr"
    return [wfdb.rdsamp(str(root / name))[0].T.astype(np.float32) for name in records[column]]


def design_matrix(features: npt.NDArray[np.float32], records: pd.DataFrame) -> Matrix:
    """ECG features + age (PTB-XL codes >89 as 300, mapped to 90) + sex (0 male, 1 female)."""
    age = records["age"].to_numpy(np.float64)
    age = np.where(age >= 300, 90.0, age)
    return np.column_stack([features, age, records["sex"].to_numpy(np.float64)])


def macro_auroc(Y: Matrix, P: Matrix) -> tuple[float, dict[str, float]]:
    per_class = {
        name: float(roc_auc_score(Y[:, k], P[:, k])) for k, name in enumerate(SUPERCLASSES)
    }
    return float(np.mean(list(per_class.values()))), per_class


def out_of_fold_auroc(
    X: Matrix, Y: Matrix, folds: npt.NDArray[np.int64], params: GbmParams
) -> float:
    """Leave-one-fold-out over the given rows; AUROC of the pooled out-of-fold predictions."""
    predictions = np.zeros_like(Y)
    for fold in np.unique(folds):
        held_out = folds == fold
        predictions[held_out] = fit_predict(X[~held_out], Y[~held_out], X[held_out], params)
    return macro_auroc(Y, predictions)[0]


def choose(cv: dict[str, float]) -> str:
    """The best cross-validated candidate, but the default unless it wins by a clear margin.

    Refitting with other seeds moves a candidate's out-of-fold macro AUROC by about ±0.003, so
    smaller differences are noise and the default (chosen a priori for small data) stands.
    """
    best = max(cv, key=lambda name: cv[name])
    return best if cv[best] - cv["default"] > CLEAR_MARGIN else "default"


def fit_predict(X_train: Matrix, Y_train: Matrix, X_test: Matrix, params: GbmParams) -> Matrix:
    model = FeaturesGbm(params).fit(X_train, Y_train, SUPERCLASSES, seed=0)
    return model.predict_proba(X_test)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--rate", type=int, choices=(500, 100), default=500)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)

    records = superclass_labels(args.root)
    signals = read_signals(args.root, records, args.rate)
    start = time.perf_counter()
    features = ecg_feature_matrix(signals, float(args.rate), workers=args.workers)
    extraction_s = time.perf_counter() - start
    X, Y = design_matrix(features, records), records[list(SUPERCLASSES)].to_numpy(np.float64)
    folds = records["strat_fold"].to_numpy(np.int64)
    train, test = np.isin(folds, TRAIN_FOLDS), np.isin(folds, TEST_FOLDS)

    cv = {
        name: out_of_fold_auroc(X[train], Y[train], folds[train], params)
        for name, params in candidate_params().items()
    }
    best = choose(cv)
    test_scores = {
        name: macro_auroc(Y[test], fit_predict(X[train], Y[train], X[test], params))
        for name, params in candidate_params().items()
    }
    test_macro, test_per_class = test_scores[best]
    report = {
        "records": {"train": int(train.sum()), "test": int(test.sum())},
        "sampling_rate_hz": args.rate,
        "features": int(X.shape[1]),
        "extraction_ms_per_ecg": round(1000.0 * extraction_s / len(signals), 2),
        "nan_fraction": round(float(np.isnan(features).mean()), 4),
        "cv_macro_auroc_folds_1_6": {name: round(value, 4) for name, value in cv.items()},
        "chosen": best,
        "chosen_params": asdict(candidate_params()[best]),
        "test_macro_auroc_folds_7_8": round(test_macro, 4),
        "test_auroc_per_class": {name: round(value, 4) for name, value in test_per_class.items()},
        # For the record only (the choice above never sees folds 7–8): how far apart the
        # candidates land on 88 test ECGs, i.e. the noise on the chosen figure.
        "test_macro_auroc_every_candidate": {
            name: round(score[0], 4) for name, score in test_scores.items()
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
