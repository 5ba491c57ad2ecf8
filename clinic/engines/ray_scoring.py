"""Cohort scoring on Ray Data: a CPU decode stage, then the model as an actor pool.

What runs where:

- the driver (``clinic cohort score``) loads the model once to know each case's lineage, skips
  cases already scored with it (the resume point), and writes every result itself: same batches,
  embeddings, audit events and run row as the local engine;
- decode tasks (CPU) read each case's blobs and turn them into model inputs exactly as the local
  ``DataLoader`` does (the same ``CaseDataset`` and collate, built from the model's own
  preprocessing), returning batches as plain dicts of numpy arrays;
- model actors (``ActorPoolStrategy``) load the model once each, through the same
  ``loaded_model`` as the local engine, on one GPU each when the cluster has GPUs (else on the
  CPU), and score batches with the same ``score_batch``. Monte-Carlo dropout is seeded per case
  from its lineage, so results equal the local engine's whatever batch a case lands in.

A decode task that dies is run again (``TASK_RETRIES``); an actor that dies is restarted and its
batches run again (``ACTOR_RESTARTS``); the driver keeps the first result of each case, so a case
is neither lost nor written twice. Workers read blobs and the model from ``CLINIC_HOME``: on a
multi-node cluster it must be on a filesystem every node mounts.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import ray.data
import torch

from clinic.data.cases import Case
from clinic.data.dataset import CaseDataset, MeasureEcg, PreprocessConfig, Tokenize, make_collate
from clinic.engines.options import EngineOptions
from clinic.engines.ray_runtime import (
    ACTOR_RESTARTS,
    TASK_RETRIES,
    ray_connection,
    remote_args_accepted,
)
from clinic.inference.loaded import LoadedModel
from clinic.inference.scoring import CaseScore, NoUsableInputError, ScoringOptions, score_batch
from clinic.store.blobs import BlobStore
from clinic.store.store import Store
from clinic.train.data import make_dataset

Batch = dict[str, npt.NDArray[Any]]
Result = CaseScore | NoUsableInputError
Progress = Callable[[int], None]
CASE_COLUMN = "case"


@dataclass(frozen=True)
class CaseInputs:
    """What a decode task needs to turn cases into model inputs: the model's preprocessing,
    tokenizer and ECG measurement, taken from the same ``make_dataset`` the local engine uses."""

    blob_root: Path
    preprocess: PreprocessConfig
    label_names: tuple[str, ...]
    tokenize: Tokenize | None
    measure_ecg: MeasureEcg | None

    @classmethod
    def of(cls, loaded: LoadedModel, store: Store) -> CaseInputs:
        template = make_dataset([], store, loaded.model, train=False)
        return cls(
            store.blobs.root, template.preprocess, template.label_names,
            template.tokenize, template.measure_ecg,
        )  # fmt: skip

    def dataset(self, cases: Sequence[Case]) -> CaseDataset:
        return CaseDataset(
            cases, BlobStore(self.blob_root), self.preprocess, label_names=self.label_names,
            tokenize=self.tokenize, measure_ecg=self.measure_ecg, train=False,
        )  # fmt: skip


def decode_cases(batch: Batch, *, inputs: CaseInputs) -> Batch:
    """Decode task: pickled cases to collated model inputs (numpy), the cases carried along."""
    cases = [pickle.loads(payload) for payload in batch[CASE_COLUMN]]
    dataset = inputs.dataset(cases)
    collated = make_collate(inputs.preprocess)([dataset[i] for i in range(len(dataset))])
    arrays: Batch = {key: value.numpy() for key, value in collated.items() if key != "index"}
    arrays[CASE_COLUMN] = batch[CASE_COLUMN]
    return arrays


@dataclass(frozen=True)
class ModelSpec:
    """Which model an actor loads, and how it scores."""

    home: Path
    name: str
    adapter: str | None
    device: str
    options: ScoringOptions


class CaseScorer:
    """Model actor: the model is loaded once, in ``__init__``, and scores batch after batch."""

    def __init__(self, spec: ModelSpec) -> None:
        from clinic.inference.service import loaded_model

        self.spec = spec
        self.loaded = loaded_model(spec.home, spec.name, spec.adapter, spec.device)

    def __call__(self, batch: Batch) -> Batch:
        cases: list[Case] = [pickle.loads(payload) for payload in batch[CASE_COLUMN]]
        tensors = {
            key: torch.from_numpy(np.array(value))  # a writable copy of Ray's read-only view
            for key, value in batch.items()
            if key != CASE_COLUMN
        }
        results = score_batch(self.loaded, cases, tensors, self.spec.options)
        return {
            "case_id": np.array([case.case_id for case in cases], dtype=object),
            "result": np.array([pickle.dumps(result) for result in results], dtype=object),
        }


SCORER: type[CaseScorer] = CaseScorer
"""The model actor's class (a seam the fault-injection test replaces)."""


def ray_score_cases(
    loaded: LoadedModel,
    cases: Sequence[Case],
    store: Store,
    options: ScoringOptions,
    engine: EngineOptions,
    progress: Progress | None = None,
) -> Iterator[Result]:
    """Score ``cases`` on Ray; yield one result per case, in completion order."""
    if not cases:
        return
    inputs = CaseInputs.of(loaded, store)
    with ray_connection(engine) as cluster:
        use_gpu = engine.gpu if engine.gpu is not None else cluster.gpus >= 1
        spec = ModelSpec(
            store.settings.home, loaded.name, loaded.adapter,
            "cuda" if use_gpu else "cpu", options,
        )  # fmt: skip
        dataset = _scoring_dataset(cases, inputs, spec, engine.workers, use_gpu)
        yield from _first_results(dataset, progress)


def stage_cpus(use_gpu: bool) -> tuple[float, float]:
    """CPUs asked for by one decode task and one model actor.

    With GPUs the actor's CPU only feeds its GPU. On CPUs alone a worker's core is shared by
    its decode task and its model actor (half each), so ``workers`` workers ask for ``workers``
    cores and neither stage can starve the other of all of them.
    """
    return (1.0, 1.0) if use_gpu else (0.5, 0.5)


def _scoring_dataset(
    cases: Sequence[Case], inputs: CaseInputs, spec: ModelSpec, workers: int, use_gpu: bool
) -> Any:
    batch_size = spec.options.batch_size
    rows = [{CASE_COLUMN: pickle.dumps(case)} for case in cases]
    blocks = max(1, math.ceil(len(rows) / batch_size))
    decode_cpus, model_cpus = stage_cpus(use_gpu)
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    with remote_args_accepted():
        decoded = dataset.map_batches(
            partial(decode_cases, inputs=inputs),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=min(workers, blocks)),
            num_cpus=decode_cpus,
            max_retries=TASK_RETRIES,
        )
        return decoded.map_batches(
            SCORER,
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_kwargs={"spec": spec},
            compute=ray.data.ActorPoolStrategy(size=min(workers, blocks)),
            num_cpus=model_cpus,
            num_gpus=1 if use_gpu else 0,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=TASK_RETRIES,
        )


def _first_results(dataset: Any, progress: Progress | None) -> Iterator[Result]:
    """Stream results back block by block, keeping the first result of each case."""
    seen: set[str] = set()
    for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        fresh = 0
        for case_id, payload in zip(block["case_id"], block["result"], strict=True):
            if case_id in seen:
                continue
            seen.add(str(case_id))
            fresh += 1
            yield pickle.loads(payload)
        if progress and fresh:
            progress(fresh)
