"""``clinic run phantom-benchmark``: the whole evaluation on a fresh phantom cohort.

Synthesise N patients, ingest them, pre-train, fine-tune and calibrate a model, then evaluate
it on every modality subset beside the baselines, with the generator's latent evidence as an
oracle ceiling: a logistic model that sees the evidence the generator drew the files from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression

from clinic.benchmarks.common import Stopwatch, benchmark_store, ingest_items
from clinic.data.cases import Case, label_matrix
from clinic.evaluation.evaluate import EvaluationRequest, evaluate
from clinic.evaluation.subsets import EvaluationSettings
from clinic.ingest.discover import iter_items_from_paths
from clinic.ingest.pseudonym import Pseudonymizer
from clinic.store.store import Store
from clinic.synth import LABELS, synthesize_cohort
from clinic.train.runner import QuietReporter, Reporter, TrainRequest, calibrate, finetune, pretrain

FloatArray = npt.NDArray[np.float64]
COHORT = "phantom"


@dataclass(frozen=True)
class PhantomOptions:
    patients: int = 3000
    seed: int = 0
    workers: int = 2
    config_name: str = "cpu-small"
    pretrain_epochs: int = 4
    finetune_epochs: int = 8
    n_resamples: int = 1000
    home: Path | None = None
    device: str | None = None


def run_phantom_benchmark(
    options: PhantomOptions, reporter: Reporter | None = None
) -> dict[str, Any]:
    """Run every step and return the benchmark's JSON object."""
    reporter = reporter or QuietReporter()
    watch = Stopwatch()
    with benchmark_store(options.home) as store:
        cohort_dir = store.settings.home / "phantom-cohort"
        if not (cohort_dir / "latent.jsonl").is_file():
            reporter.note(f"synthesising {options.patients} phantom patients")
            synthesize_cohort(cohort_dir, patients=options.patients, seed=options.seed,
                              workers=options.workers)  # fmt: skip
        watch.lap("synthesise")
        summary = ingest_items(store, list(iter_items_from_paths([cohort_dir])), COHORT,
                               options.workers)  # fmt: skip
        watch.lap("ingest")
        request = TrainRequest(
            home=store.settings.home, model_name="phantom", cohort=COHORT,
            config_name=options.config_name, seed=options.seed, device=options.device,
            label_names=tuple(name for name in LABELS if name != "no_finding"),
        )  # fmt: skip
        result = _train_and_evaluate(store, request, options, cohort_dir, reporter, watch)
    result["ingest"] = {"ingested": summary.ingested, "quarantined": summary.quarantined}
    result["seconds"] = watch.report()
    return result


def _train_and_evaluate(
    store: Store,
    request: TrainRequest,
    options: PhantomOptions,
    cohort_dir: Path,
    reporter: Reporter,
    watch: Stopwatch,
) -> dict[str, Any]:
    pretrain(store, replace(request, epochs=options.pretrain_epochs), reporter)
    watch.lap("pretrain")
    finetune(store, replace(request, epochs=options.finetune_epochs), reporter)
    watch.lap("finetune")
    calibrate(store, request, reporter)
    watch.lap("calibrate")
    oracle = LatentOracle(cohort_dir / "latent.jsonl", Pseudonymizer(store.settings.pseudonym_key))
    evaluation = evaluate(
        store,
        EvaluationRequest(
            home=request.home, model_name=request.model_name, cohort=COHORT,
            out=request.home / "phantom-evaluation",
            settings=EvaluationSettings(n_resamples=options.n_resamples, seed=options.seed),
            device=options.device,
        ),
        oracle=oracle,
    )  # fmt: skip
    watch.lap("evaluate")
    return phantom_summary(evaluation, options)


def phantom_summary(evaluation: dict[str, Any], options: PhantomOptions) -> dict[str, Any]:
    """The benchmark's headline figures, with each target and whether it is met."""
    summary = evaluation["summary"]
    oracle = summary.get("oracle_macro_auroc")
    full = summary["full_macro_auroc"]
    best_single = summary["best_single_macro_auroc"]
    subsets = summary["subsets"]
    gaps = {
        name: (s["dedicated_macro_auroc"] - s["macro_auroc"])
        for name, s in subsets.items()
        if s["macro_auroc"] is not None and s["dedicated_macro_auroc"] is not None
    }
    eces = {name: s["ece"] for name, s in subsets.items() if s["ece"] is not None}
    return {
        "patients": options.patients,
        "label_names": evaluation["label_names"],
        "n": evaluation["n"],
        "oracle_macro_auroc": oracle,
        "full_macro_auroc": full,
        "best_single_macro_auroc": best_single,
        "best_single_modality": summary["best_single_modality"],
        "subsets": subsets,
        "zero_shot": evaluation["zero_shot"],
        "retrieval": evaluation["retrieval"],
        "targets": {
            "full_vs_oracle": {"ratio": _ratio(full, oracle), "target": 0.95},
            "worst_gap_to_dedicated": {"value": max(gaps.values(), default=None), "target": 0.02},
            "worst_ece": {"value": max(eces.values(), default=None), "target": 0.03},
            "fused_minus_best_single": {
                "value": None if full is None or best_single is None else full - best_single,
                "target": 0.03,
            },
        },
        "evaluation_dir": str(evaluation.get("out", "")),
    }


def _ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


class LatentOracle:
    """Logistic regression per label on the generator's latent evidence (all modalities)."""

    def __init__(self, latent_path: Path, pseudonymizer: Pseudonymizer) -> None:
        self.evidence: dict[str, FloatArray] = {}
        for line in latent_path.read_text().splitlines():
            row = json.loads(line)
            key = pseudonymizer.encounter(row["patient_id"], row["encounter_id"])
            self.evidence[key] = _evidence_vector(row)

    def __call__(
        self, train: Sequence[Case], test: Sequence[Case], label_names: Sequence[str]
    ) -> FloatArray:
        x_train, x_test = self._matrix(train), self._matrix(test)
        y_train = label_matrix(train, label_names)
        scores = np.full((len(test), len(label_names)), np.nan)
        for k in range(len(label_names)):
            known = np.isfinite(y_train[:, k])
            if len(np.unique(y_train[known, k])) < 2:
                continue
            model = LogisticRegression(max_iter=2000).fit(x_train[known], y_train[known, k])
            scores[:, k] = model.predict_proba(x_test)[:, 1]
        return scores

    def _matrix(self, cases: Sequence[Case]) -> FloatArray:
        width = len(next(iter(self.evidence.values())))
        return np.stack([self.evidence.get(c.case_id, np.zeros(width)) for c in cases])


def _evidence_vector(row: dict[str, Any]) -> FloatArray:
    """Every latent evidence value (sorted by modality and name) plus age."""
    values = [
        float(value)
        for modality in sorted(row["evidence"])
        for _name, value in sorted(row["evidence"][modality].items())
    ]
    return np.array([*values, float(row.get("age_years", 0.0)) / 100.0])
