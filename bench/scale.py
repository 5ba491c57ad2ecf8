"""Scale-out: ingestion and cohort scoring on the local engine and on Ray with 1 and 2 workers.

One phantom cohort is synthesised once; each configuration ingests it into a fresh store and
scores it (an untrained ``cpu-small`` model with an identity calibration, as in
``bench.inference``; speed does not depend on the weights) from scratch, with the frozen-feature
cache emptied first. Configurations:

- ``local``: the local engine with one decoding process (ingestion) / decoding in-process
  (scoring): the baseline;
- ``local_2``: the local engine with two decoding processes (ingestion only);
- ``ray_1`` / ``ray_2``: a private local Ray with 1 / 2 CPUs; ``--workers`` decode tasks (and,
  for scoring, model actors). Each Ray configuration runs once cold (workers starting and
  importing torch, MONAI and the readers: ``cold_seconds``) and then once more, timed
  (``seconds``); ``start_seconds`` is ``ray.init``. Model actors are created per run, so the
  timed scoring run still includes loading the model in each actor.

``decode`` is ingestion's decode stage alone (items to ``Prepared``/``Refused`` outcomes, blobs
written, no rows): the decode-bound part that Ray spreads over workers. End-to-end ingestion also
pays the driver's serial share (hashing every input, writing rows), which no engine parallelises.

Ratios are speed-ups (reference seconds / seconds): ``vs_local`` against ``local``, and
``ray_2_vs_ray_1``, which for the decode-bound stage on two cores should be at least 1.7. Run it
with ``OMP_NUM_THREADS=1`` so every worker uses one thread. ``--gpu`` adds bf16 batch-scoring
throughput (the model stage on decoded batches) when CUDA is present, and says why not otherwise.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.scale [--patients 120] [--ray-workers 1,2]
        [--gpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import delete

from clinic.auth.roles import Principal, Role
from clinic.engines.options import Engine, EngineOptions
from clinic.inference.cohort import CohortScoreRequest, score_cohort
from clinic.ingest.discover import iter_items_from_paths
from clinic.ingest.engine import IngestOptions, ingest
from clinic.ingest.types import IngestItem
from clinic.settings import RunMode, Settings
from clinic.store.models import CohortRun, Embedding, Prediction
from clinic.store.store import Store
from clinic.synth import synthesize_cohort
from clinic.train.runner import feature_cache_dir

SCORING_COHORT = "bench-inference"
SCORING_MODEL = "bench"
PRINCIPAL = Principal("bench", Role.SYSTEM)
Figures = dict[str, Any]


def fresh_store(root: Path) -> Store:
    settings = Settings(
        home=root, database_url=f"sqlite:///{root / 'clinic.db'}",
        raw_pseudonym_key="bench-scale-key-0123456789", mode=RunMode.TEST,
    )  # fmt: skip
    return Store.open(settings)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def ingest_seconds(items: list[IngestItem], options: IngestOptions, root: Path) -> float:
    """Wall time to ingest ``items`` into a fresh store (schema created beforehand)."""
    store = fresh_store(root)
    try:
        summary_holder: list[Any] = []
        seconds = timed(lambda: summary_holder.append(ingest(store, items, options)))
        if summary_holder[0].ingested + summary_holder[0].quarantined != len(items):
            raise RuntimeError(f"benchmark ingestion incomplete: {summary_holder[0]}")
        return seconds
    finally:
        store.close()
        shutil.rmtree(root)


def decode_seconds(items: list[IngestItem], engine: EngineOptions, root: Path) -> float:
    """Wall time of the decode stage alone on ``engine`` (one local process, or Ray tasks)."""
    from clinic.ingest.engine import _local_outcomes
    from clinic.ingest.prepare import content_sha256

    store = fresh_store(root)
    try:
        pending = [(item, content_sha256(item)) for item in items]
        if engine.is_ray:
            from clinic.engines.ray_ingest import ray_outcomes

            return timed(lambda: list(ray_outcomes(store, pending, engine)))
        return timed(lambda: list(_local_outcomes(store, pending, engine.workers)))
    finally:
        store.close()
        shutil.rmtree(root)


def score_seconds(store: Store, request: CohortScoreRequest) -> float:
    """Wall time to score the cohort from scratch (no predictions, no cached features)."""
    with store.session() as session:
        for table in (Prediction, Embedding, CohortRun):
            session.execute(delete(table))
        session.commit()
    shutil.rmtree(feature_cache_dir(store.settings.home), ignore_errors=True)
    from clinic.inference.service import loaded_model
    from clinic.models.cache import FrozenFeatureCache

    loaded = loaded_model(store.settings.home, SCORING_MODEL, None, "cpu")
    loaded.model.feature_cache = FrozenFeatureCache()  # the in-process model of the local runs
    summary_holder: list[Any] = []
    seconds = timed(lambda: summary_holder.append(score_cohort(store, PRINCIPAL, request)))
    if summary_holder[0].scored == 0:
        raise RuntimeError("benchmark scoring scored nothing")
    return seconds


def scoring_request(engine: Engine, workers: int) -> CohortScoreRequest:
    return CohortScoreRequest(
        SCORING_COHORT, SCORING_MODEL, batch_size=16, device="cpu", engine=engine, workers=workers
    )


@contextmanager
def ray_with(workers: int) -> Iterator[float]:
    """A private local Ray with ``workers`` CPUs for one configuration; yields its start time."""
    from clinic.engines.ray_runtime import ray_connection

    start = time.perf_counter()
    with ray_connection(EngineOptions(Engine.RAY, workers=workers)) as connection:
        if not connection.started_here:
            raise RuntimeError("Ray was already running: the benchmark needs its own")
        yield time.perf_counter() - start


def local_figures(items: list[IngestItem], scoring: Store, work: Path) -> dict[str, Figures]:
    one = ingest_seconds(items, IngestOptions(workers=1), work / "local-1")
    two = ingest_seconds(items, IngestOptions(workers=2), work / "local-2")
    decode = decode_seconds(items, EngineOptions(workers=1), work / "decode-local")
    score_seconds(scoring, scoring_request(Engine.LOCAL, 0))  # warm-up: model load, page cache
    scored = score_seconds(scoring, scoring_request(Engine.LOCAL, 0))
    return {
        "ingest": {"local": {"seconds": one}, "local_2": {"seconds": two}},
        "decode": {"local": {"seconds": decode}},
        "scoring": {"local": {"seconds": scored}},
    }


def ray_figures(
    items: list[IngestItem], scoring: Store, work: Path, workers: int
) -> dict[str, Figures]:
    options = IngestOptions(workers=workers, engine=Engine.RAY)
    request = scoring_request(Engine.RAY, workers)
    engine = EngineOptions(Engine.RAY, workers=workers)
    with ray_with(workers) as started:
        ingest_cold = ingest_seconds(items, options, work / f"ray-{workers}-cold")
        ingest_warm = ingest_seconds(items, options, work / f"ray-{workers}")
        decode = decode_seconds(items, engine, work / f"decode-ray-{workers}")
        score_cold = score_seconds(scoring, request)
        score_warm = score_seconds(scoring, request)
    name = f"ray_{workers}"
    return {
        "ingest": {name: {"seconds": ingest_warm, "cold_seconds": ingest_cold,
                          "start_seconds": started}},
        "decode": {name: {"seconds": decode}},
        "scoring": {name: {"seconds": score_warm, "cold_seconds": score_cold,
                           "start_seconds": started}},
    }  # fmt: skip


def with_ratios(stage: Figures) -> Figures:
    """Round the seconds and add speed-ups against ``local`` and of 2 Ray workers over 1."""
    base = stage["local"]["seconds"]
    for figures in stage.values():
        figures["vs_local"] = round(base / figures["seconds"], 2)
    if "ray_1" in stage and "ray_2" in stage:
        stage["ray_2_vs_ray_1"] = round(stage["ray_1"]["seconds"] / stage["ray_2"]["seconds"], 2)
    for figures in stage.values():
        if isinstance(figures, dict):
            for key in ("seconds", "cold_seconds", "start_seconds"):
                if key in figures:
                    figures[key] = round(figures[key], 2)
    return stage


def gpu_figures(scoring: Store, batch_sizes: Sequence[int], repeat: int = 3) -> Figures:
    """bf16 throughput of the model stage (``score_batch``: encoders, fusion, calibration, MC
    dropout, contributions) on the cohort's decoded batches, on the CUDA device."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    from clinic.data.cases import load_cases
    from clinic.data.dataset import make_collate
    from clinic.inference.scoring import ScoringOptions, score_batch
    from clinic.inference.service import loaded_model
    from clinic.models.cache import FrozenFeatureCache
    from clinic.train.data import make_dataset

    loaded = loaded_model(scoring.settings.home, SCORING_MODEL, None, "cuda")
    with scoring.session() as session:
        cases = load_cases(session, cohort=SCORING_COHORT)
    dataset = make_dataset(cases, scoring, loaded.model, train=False)
    collate = make_collate(dataset.preprocess)
    items = [dataset[i] for i in range(len(dataset))]
    rows: list[Figures] = []
    for size in batch_sizes:
        batches = [
            (cases[start : start + size], collate(items[start : start + size]))
            for start in range(0, len(items), size)
        ]
        options = ScoringOptions(batch_size=size)
        best = float("inf")
        for _ in range(repeat + 1):  # the first pass warms up kernels and the allocator
            loaded.model.feature_cache = FrozenFeatureCache()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for chunk, batch in batches:
                score_batch(loaded, chunk, batch, options)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        rows.append({"batch_size": size, "cases_per_s": round(len(cases) / best, 1)})
    return {"device": torch.cuda.get_device_name(0), "dtype": "bfloat16", "batches": rows}


def measure(
    patients: int, gpu: bool, home: Path | None, ray_workers: Sequence[int] = (1, 2)
) -> Figures:
    from bench.inference import prepare

    with tempfile.TemporaryDirectory(prefix="clinic-scale-") as scratch:
        work = (home or Path(scratch)).resolve()
        cohort = work / "scoring" / "cohort"  # where bench.inference.prepare looks for it
        if not (cohort / "manifest.csv").is_file():
            synthesize_cohort(cohort, patients=patients, seed=1, workers=1)
        items = list(iter_items_from_paths([cohort]))
        scoring = fresh_store(work / "scoring")
        try:
            cases = prepare(scoring, patients)
            results = local_figures(items, scoring, work)
            for workers in ray_workers:
                for stage, stage_figures in ray_figures(items, scoring, work, workers).items():
                    results[stage].update(stage_figures)
            extra = gpu_figures(scoring, (64, 256)) if gpu else None
        finally:
            scoring.close()
    figures: Figures = {
        "patients": patients, "items": len(items), "cases": cases,
        "torch_threads": torch.get_num_threads(),
        **{stage: with_ratios(results[stage]) for stage in ("ingest", "decode", "scoring")},
    }  # fmt: skip
    if extra is not None:
        figures["gpu"] = extra
    return figures


def print_table(figures: Figures) -> None:
    print(
        f"{figures['patients']} phantom patients: {figures['items']} items to ingest, "
        f"{figures['cases']} cases to score; torch threads {figures['torch_threads']}"
    )
    print(f"{'stage':8} {'engine':8} {'seconds':>8} {'cold s':>7} {'vs local':>9}")
    for stage in ("ingest", "decode", "scoring"):
        for name, row in figures[stage].items():
            if not isinstance(row, dict):
                continue
            cold = f"{row['cold_seconds']:7.1f}" if "cold_seconds" in row else f"{'':7}"
            print(f"{stage:8} {name:8} {row['seconds']:8.1f} {cold} {row['vs_local']:8.2f}x")
        if "ray_2_vs_ray_1" in figures[stage]:
            print(f"{stage:8} 2 Ray workers vs 1: {figures[stage]['ray_2_vs_ray_1']:.2f}x")
    gpu = figures.get("gpu")
    if gpu and "skipped" in gpu:
        print(f"gpu: skipped ({gpu['skipped']})")
    elif gpu:
        for row in gpu["batches"]:
            print(f"gpu {gpu['device']} bf16 batch {row['batch_size']}: "
                  f"{row['cases_per_s']} cases/s")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--gpu", action="store_true", help="Add bf16 batch-scoring throughput.")
    parser.add_argument("--home", type=Path, default=None, help="Work here (kept afterwards).")
    parser.add_argument(
        "--ray-workers", default="1,2", help="Ray configurations to run (worker counts)."
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    ray_workers = [int(count) for count in args.ray_workers.split(",")]
    figures = measure(args.patients, args.gpu, args.home, ray_workers)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_table(figures)
    return figures


if __name__ == "__main__":
    main()
