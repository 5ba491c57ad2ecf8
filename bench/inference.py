"""Batch-scoring throughput against the encoder-only cost of the same batches, in one run.

Encoder-only = what any model must pay: ``model.embed`` on batches already decoded, preprocessed
and collated (tensors in memory), with the frozen-feature cache emptied before each run. Pipeline
= ``clinic cohort score`` as users run it: reading cases from the store, decoding blobs, ECG
measurements, collation, encoders, fusion, calibration, Monte-Carlo dropout (30 passes),
leave-one-modality-out contributions, and writing predictions, embeddings and audit events.
Overhead = pipeline time / encoder-only time − 1. Each figure is the best of ``--repeat`` runs,
after one warm-up run. The pipeline runs with decoding in this process (``--workers 0``) and in
one decoding worker process (``--workers 1``, which overlaps decoding with the model).

The model is the ``cpu-small`` configuration with untrained weights and an identity calibration
(speed does not depend on what the weights are).

    .venv/bin/python -m bench.inference [--patients 60] [--batch-sizes 8,32] [--repeat 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import delete

from clinic.auth.roles import Principal, Role
from clinic.benchmarks.common import benchmark_store, ingest_items
from clinic.data.cases import load_cases
from clinic.data.dataset import make_collate
from clinic.inference.cohort import CohortScoreRequest, score_cohort
from clinic.inference.service import loaded_model
from clinic.ingest.discover import iter_items_from_paths
from clinic.models.cache import FrozenFeatureCache
from clinic.models.calibration import CalibrationMap
from clinic.models.config import load_model_config
from clinic.models.model import ClinicModel
from clinic.store.models import CohortRun, Embedding, Prediction
from clinic.store.store import Store
from clinic.synth import LABELS, synthesize_cohort
from clinic.train.artifacts import model_dir, save_calibration, save_model
from clinic.train.data import fit_measurements, fit_preprocess, make_dataset

COHORT = "bench-inference"
MODEL = "bench"


def best_time(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def prepare(store: Store, patients: int) -> int:
    """Synthesise, ingest and save an untrained, identity-calibrated cpu-small model."""
    cohort_dir = store.settings.home / "cohort"
    if not (cohort_dir / "manifest.csv").is_file():
        synthesize_cohort(cohort_dir, patients=patients, seed=11, workers=1)
    ingest_items(store, list(iter_items_from_paths([cohort_dir])), COHORT, workers=1)
    with store.session() as session:
        cases = load_cases(session, cohort=COHORT)
    config = load_model_config("cpu-small")
    preprocess = fit_measurements(fit_preprocess(config, cases), cases, store)
    labels = tuple(name for name in LABELS if name != "no_finding")
    torch.manual_seed(0)
    model = ClinicModel(config, preprocess, labels)
    directory = model_dir(store.settings.home, MODEL)
    save_model(model, directory)
    save_calibration(directory, CalibrationMap(labels, {}, 0.0))
    return len(cases)


def encoder_only(store: Store, batch_size: int, repeat: int) -> float:
    loaded = loaded_model(store.settings.home, MODEL, None, "cpu")
    with store.session() as session:
        cases = load_cases(session, cohort=COHORT)
    dataset = make_dataset(cases, store, loaded.model, train=False)
    collate = make_collate(dataset.preprocess)
    batches = [
        collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        for start in range(0, len(dataset), batch_size)
    ]

    def run() -> None:
        loaded.model.feature_cache = FrozenFeatureCache()
        with torch.no_grad():
            for batch in batches:
                loaded.model.embed(batch)

    return best_time(run, repeat)


def pipeline(store: Store, batch_size: int, repeat: int, workers: int = 0) -> float:
    principal = Principal("bench", Role.SYSTEM)
    loaded = loaded_model(store.settings.home, MODEL, None, "cpu")

    def run() -> None:
        with store.session() as session:  # score from scratch each time
            for table in (Prediction, Embedding, CohortRun):
                session.execute(delete(table))
            session.commit()
        loaded.model.feature_cache = FrozenFeatureCache()
        request = CohortScoreRequest(
            COHORT, MODEL, batch_size=batch_size, device="cpu", workers=workers
        )
        score_cohort(store, principal, request)

    return best_time(run, repeat)


def measure(
    patients: int, batch_sizes: Sequence[int], repeat: int, home: Path | None
) -> dict[str, Any]:
    with benchmark_store(home) as store:
        cases = prepare(store, patients)
        pipeline(store, batch_sizes[0], 1)  # warm-up: lazy initialisation, page cache
        rows = []
        for size in batch_sizes:
            encoders = encoder_only(store, size, repeat)
            for workers in (0, 1):
                full = pipeline(store, size, repeat, workers)
                rows.append({
                    "batch_size": size,
                    "workers": workers,
                    "pipeline_cases_per_s": round(cases / full, 2),
                    "encoder_cases_per_s": round(cases / encoders, 2),
                    "overhead": round(full / encoders - 1.0, 3),
                })  # fmt: skip
        return {"cases": cases, "threads": torch.get_num_threads(), "batches": rows}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--home", type=Path, default=None, help="Keep the store here.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s]
    result = measure(args.patients, sizes, args.repeat, args.home)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['cases']} cases, {result['threads']} torch threads")
        print(f"{'batch':>6} {'workers':>8} {'pipeline/s':>11} {'encoders/s':>11} {'overhead':>9}")
        for row in result["batches"]:
            print(f"{row['batch_size']:>6} {row['workers']:>8} {row['pipeline_cases_per_s']:>11} "
                  f"{row['encoder_cases_per_s']:>11} {row['overhead']:>8.1%}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
