"""``clinic run ptbxl-benchmark``: our ECG pathway against two baselines on PTB-XL folders.

Protocol (Strodthoff et al. 2020, 5 diagnostic superclasses, multi-label, macro AUROC):

* both folders are imported through the ``ptbxl`` importer into a private store; a patient in
  the test set is removed from training (patient-disjoint by construction, and checked);
* records without any superclass are left out of training and testing, as officially;
* **ours**: ECG + record + measured ECG features through the clinic model. The encoders are
  first pre-trained contrastively on ECG ↔ report ↔ record of the *training* records, then the
  model is fine-tuned on ECG + record. Test reports state the diagnosis: they are stripped from
  every test case before any model sees it;
* **resnet1d**: the supervised 1-D ResNet trunk alone (100 Hz, random 2.5 s crops,
  sliding-window averaging at test time);
* **features_gbm**: handcrafted ECG features + age + sex into gradient boosting.

Neural models run over several seeds; the figures are mean and standard deviation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clinic.benchmarks.common import Stopwatch, benchmark_store, ingest_items
from clinic.benchmarks.ptbxl_models import (
    PtbxlData,
    features_gbm_probabilities,
    train_ours,
    train_resnet1d,
)
from clinic.data.cases import Case, label_matrix, load_cases
from clinic.data.splits import SplitPlan, hashed_split, patients_of
from clinic.evaluation.guards import assert_patient_disjoint
from clinic.evaluation.metrics import auroc
from clinic.ingest.importers.ptbxl import SUPERCLASS_VOCABULARY, SUPERCLASSES, import_ptbxl
from clinic.store.store import Store
from clinic.train.runner import QuietReporter, Reporter

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PtbxlOptions:
    train_dir: Path
    test_dir: Path
    seeds: int = 3
    test_folds: frozenset[int] = frozenset()
    workers: int = 2
    home: Path | None = None
    config_name: str = "ecg-ptbxl"
    pretrain_epochs: int = 8
    finetune_epochs: int = 20
    baseline_epochs: int = 20
    device: str | None = None


@dataclass
class PtbxlSplit:
    train: list[Case]
    val: list[Case]
    test: list[Case]
    dropped_overlap: int
    dropped_no_superclass: int


def run_ptbxl_benchmark(options: PtbxlOptions, reporter: Reporter | None = None) -> dict[str, Any]:
    """Import, train every model over the seeds, score the test folder; one JSON object."""
    reporter = reporter or QuietReporter()
    watch = Stopwatch()
    with benchmark_store(options.home) as store:
        split = import_and_split(store, options, reporter)
        watch.lap("import")
        labels = superclass_matrix(split.test)
        result = _score_all(store, split, labels, options, reporter, watch)
    return {
        "n_train": len(split.train) + len(split.val),
        "n_test": len(split.test),
        "seeds": options.seeds,
        **result,
        "protocol": {
            "labels": list(SUPERCLASSES),
            "validation_cases": len(split.val),
            "left_out_without_superclass": split.dropped_no_superclass,
            "train_cases_dropped_for_patient_overlap": split.dropped_overlap,
            "test_input": "ECG and record only (reports stripped)",
        },
        "seconds": watch.report(),
    }


def _score_all(
    store: Store,
    split: PtbxlSplit,
    labels: FloatArray,
    options: PtbxlOptions,
    reporter: Reporter,
    watch: Stopwatch,
) -> dict[str, Any]:
    data = PtbxlData.build(store, split.train, split.val, split.test, options)
    watch.lap("prepare")
    ours, resnet = [], []
    for seed in range(options.seeds):
        reporter.note(f"seed {seed + 1}/{options.seeds}: ours")
        ours.append(train_ours(data, options, seed, reporter))
        watch.lap(f"ours_seed{seed}")
        reporter.note(f"seed {seed + 1}/{options.seeds}: resnet1d")
        resnet.append(train_resnet1d(data, options, seed, reporter))
        watch.lap(f"resnet1d_seed{seed}")
    gbm = features_gbm_probabilities(data)
    watch.lap("features_gbm")
    return {
        "ours": {
            **_summarise([run.combined for run in ours], labels),
            "parts": {
                "learned_gbm": _summarise([run.learned_gbm for run in ours], labels),
                "measured_gbm": _summarise([run.measured for run in ours], labels),
                "neural": _summarise([run.neural for run in ours], labels),
            },
        },
        "baselines": {
            "resnet1d": _summarise(resnet, labels),
            "features_gbm": _summarise([gbm], labels),
        },
    }


def _summarise(runs: Sequence[FloatArray], labels: FloatArray) -> dict[str, Any]:
    """Mean and std over runs of the macro AUROC; per-label means."""
    per_run = [_per_label(probabilities, labels) for probabilities in runs]
    macros = [float(np.mean(list(run.values()))) for run in per_run]
    return {
        "macro_auroc": float(np.mean(macros)),
        "macro_auroc_std": float(np.std(macros)),
        "macro_auroc_runs": macros,
        "per_label": {
            name: float(np.mean([run[name] for run in per_run])) for name in SUPERCLASSES
        },
    }


def _per_label(probabilities: FloatArray, labels: FloatArray) -> dict[str, float]:
    return {name: auroc(labels[:, k], probabilities[:, k]) for k, name in enumerate(SUPERCLASSES)}


def import_and_split(store: Store, options: PtbxlOptions, reporter: Reporter) -> PtbxlSplit:
    """Import the folders and build patient-disjoint train / validation / test case lists."""
    same = options.train_dir.resolve() == options.test_dir.resolve()
    if same and not options.test_folds:
        raise ValueError("train and test are the same folder: give --test-folds to split it")
    reporter.note(f"importing {options.train_dir}")
    ingest_items(store, list(import_ptbxl(options.train_dir)), "ptbxl-train", options.workers)
    if not same:
        reporter.note(f"importing {options.test_dir}")
        ingest_items(store, list(import_ptbxl(options.test_dir)), "ptbxl-test", options.workers)
    with store.session() as session:
        train = load_cases(session, cohort="ptbxl-train", label_vocabulary=SUPERCLASS_VOCABULARY)
        test = (
            [c for c in train if _fold(c) in options.test_folds]
            if same
            else load_cases(session, cohort="ptbxl-test", label_vocabulary=SUPERCLASS_VOCABULARY)
        )
    return _split(train, test)


def _fold(case: Case) -> int | None:
    return int(case.split) if case.split and case.split.isdigit() else None


def _split(train_all: list[Case], test_all: list[Case]) -> PtbxlSplit:
    test = [c for c in test_all if _usable(c)]
    test_patients, test_ids = patients_of(test), {c.case_id for c in test_all}
    candidates = [c for c in train_all if c.case_id not in test_ids and _usable(c)]
    kept = [c for c in candidates if c.patient_id not in test_patients]
    plan = SplitPlan(val_fraction=0.12, test_fraction=0.0, seed=17)
    train = [c for c in kept if hashed_split(c.patient_id, plan) == "train"]
    val = [c for c in kept if hashed_split(c.patient_id, plan) != "train"]
    assert_patient_disjoint(patients_of(train) | patients_of(val), test_patients)
    if not train or not test:
        raise ValueError(
            f"need training and test ECGs with a superclass: {len(train)} / {len(test)}"
        )
    # By id: with one folder split by folds, every test case is in ``train_all`` as well.
    dropped = len(
        {
            c.case_id
            for c in train_all + test_all
            if c.ecg_blob is not None and not _has_superclass(c)
        }
    )
    return PtbxlSplit(train, val, _without_reports(test), len(candidates) - len(kept), dropped)


def _usable(case: Case) -> bool:
    return case.ecg_blob is not None and _has_superclass(case)


def _has_superclass(case: Case) -> bool:
    return any(case.labels.get(name, 0.0) >= 0.5 for name in SUPERCLASSES)


def _without_reports(cases: Sequence[Case]) -> list[Case]:
    """Test cases as the models may see them: the report (which states the answer) removed."""
    return [dataclasses.replace(case, report=None) for case in cases]


def superclass_matrix(cases: Sequence[Case]) -> FloatArray:
    return label_matrix(cases, SUPERCLASSES).astype(np.float64)
