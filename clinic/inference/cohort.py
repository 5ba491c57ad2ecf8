"""Batch scoring of a cohort: every case, resumable after a kill, audited per prediction.

Each batch of predictions commits in one transaction together with their embeddings and one
audit event per prediction. A killed run loses at most the batch in flight; running the command
again skips every case that already has a prediction with the same lineage (same model,
adapter, preprocessing, calibration, inputs and code) and scores the rest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any, Protocol

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from clinic.audit.chain import AuditKey, record
from clinic.auth.guard import guard
from clinic.auth.roles import Permission, Principal
from clinic.data.cases import Case, load_cases
from clinic.engines.options import Engine, EngineOptions
from clinic.inference.lineage import lineage_hash, prediction_lineage
from clinic.inference.loaded import LoadedModel
from clinic.inference.records import add_prediction, encounter_ids, upsert_embeddings
from clinic.inference.scoring import CaseScore, NoUsableInputError, ScoringOptions, score_cases
from clinic.inference.service import loaded_model
from clinic.store.models import Cohort, CohortRun, Prediction, utcnow
from clinic.store.store import Store


@dataclass(frozen=True)
class CohortScoreRequest:
    cohort: str
    model: str
    adapter: str | None = None
    workers: int = 0
    batch_size: int = 32
    mc_samples: int = 30
    device: str | None = None
    engine: Engine = Engine.LOCAL  # ray: decode tasks and model actors on Ray (clinic.engines)
    address: str | None = None  # an existing Ray cluster; None starts a private local Ray
    gpu: bool | None = None  # Ray: one GPU per model actor; None: when the cluster has GPUs

    @property
    def engine_options(self) -> EngineOptions:
        """On Ray, ``workers`` is the number of decode tasks and of model actors (at least 1);
        asking for the CPU device keeps the actors off the cluster's GPUs."""
        gpu = False if self.gpu is None and self.device == "cpu" else self.gpu
        return EngineOptions(self.engine, self.address, max(self.workers, 1), gpu)


@dataclass
class CohortScoreSummary:
    run_id: int
    cases: int
    scored: int = 0
    already_scored: int = 0
    no_usable_input: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Progress(Protocol):
    """Progress sink: the CLI draws a bar, tests ignore it."""

    def start(self, total: int) -> None: ...
    def advance(self, amount: int) -> None: ...


class _Silent:
    def start(self, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


def score_cohort(
    store: Store,
    principal: Principal,
    request: CohortScoreRequest,
    progress: Progress | None = None,
) -> CohortScoreSummary:
    """Score every case of ``request.cohort`` not yet scored with this model's lineage."""
    guard(store, principal, Permission.COHORT_SCORE, "cohort.score", "cohort", request.cohort)
    key = AuditKey.from_settings(store.settings)
    loaded = loaded_model(store.settings.home, request.model, request.adapter, request.device)
    with store.session() as session:
        cases = load_cases(session, cohort=request.cohort)
        ids = encounter_ids(session, [case.case_id for case in cases])
        todo = _unscored(session, loaded, cases, ids)
        run = _start_run(session, key, principal, loaded, request, len(cases))
    summary = CohortScoreSummary(run.id, len(cases), already_scored=len(cases) - len(todo))
    sink = progress or _Silent()
    sink.start(len(todo))
    results = _results(store, loaded, todo, request, sink)
    for chunk in _batched(results, request.batch_size):
        with store.session() as session:
            for result in chunk:
                _write(session, key, principal, loaded, run.id, ids, result, summary)
            session.commit()
    _finish_run(store, key, principal, run.id, summary)
    return summary


def _results(
    store: Store, loaded: LoadedModel, todo: list[Case], request: CohortScoreRequest, sink: Progress
) -> Iterator[CaseScore | NoUsableInputError]:
    """The scoring stage: a DataLoader here, or decode tasks and model actors on Ray."""
    options = ScoringOptions(request.batch_size, request.mc_samples, request.workers)
    if request.engine is Engine.RAY:
        from clinic.engines.ray_scoring import ray_score_cases

        ray_options = ScoringOptions(request.batch_size, request.mc_samples, workers=0)
        return ray_score_cases(
            loaded, todo, store, ray_options, request.engine_options, sink.advance
        )
    return score_cases(loaded, todo, store, options, sink.advance)


def _unscored(
    session: Session, loaded: LoadedModel, cases: Sequence[Case], ids: dict[str, tuple[int, str]]
) -> list[Case]:
    """Cases without a prediction of this exact lineage (the resume point of a killed run)."""
    wanted = {
        (ids[case.case_id][0], lineage_hash(prediction_lineage(loaded.lineage, case))): case
        for case in cases
    }
    done: set[tuple[int, str]] = set()
    pairs = list(wanted)
    for start in range(0, len(pairs), 500):
        chunk = pairs[start : start + 500]
        rows = session.execute(
            select(Prediction.encounter_id, Prediction.lineage_hash).where(
                tuple_(Prediction.encounter_id, Prediction.lineage_hash).in_(chunk)
            )
        ).all()
        done.update((int(a), str(b)) for a, b in rows)
    return [case for pair, case in wanted.items() if pair not in done]


def _start_run(
    session: Session,
    key: AuditKey,
    principal: Principal,
    loaded: LoadedModel,
    request: CohortScoreRequest,
    total: int,
) -> CohortRun:
    cohort_id = session.scalar(select(Cohort.id).where(Cohort.name == request.cohort))
    if cohort_id is None:
        raise LookupError(f"no cohort named {request.cohort!r}")
    run = CohortRun(
        cohort_id=cohort_id, model_name=loaded.name, adapter=loaded.adapter,
        model_key=loaded.lineage.model_key, counts={"cases": total},
        created_by=principal.username,
    )  # fmt: skip
    session.add(run)
    session.flush()
    record(session, key, principal, "cohort.score.start", "cohort_run", str(run.id),
           details={"cohort": request.cohort, "model": loaded.name, "cases": total})  # fmt: skip
    session.commit()
    return run


def _write(
    session: Session,
    key: AuditKey,
    principal: Principal,
    loaded: LoadedModel,
    run_id: int,
    ids: dict[str, tuple[int, str]],
    result: CaseScore | NoUsableInputError,
    summary: CohortScoreSummary,
) -> None:
    if isinstance(result, NoUsableInputError):
        summary.no_usable_input += 1
        summary.skipped.append(str(result))
        return
    encounter_id = ids[result.case.case_id][0]
    upsert_embeddings(session, encounter_id, loaded.lineage.model_key, result.embeddings)
    row = add_prediction(
        session, encounter_id, result, model_name=loaded.name, adapter=loaded.adapter,
        model_key=loaded.lineage.model_key, created_by=principal.username, cohort_run_id=run_id,
    )  # fmt: skip
    record(session, key, principal, "prediction.create", "prediction", str(row.id),
           details={"case_id": result.case.case_id, "model": loaded.name,
                    "lineage_hash": result.lineage_hash, "cohort_run": run_id})  # fmt: skip
    summary.scored += 1


def _finish_run(
    store: Store, key: AuditKey, principal: Principal, run_id: int, summary: CohortScoreSummary
) -> None:
    with store.session() as session:
        run = session.get(CohortRun, run_id)
        if run is not None:
            run.status, run.finished_at = "finished", utcnow()
            run.counts = {k: v for k, v in summary.to_json().items() if k != "skipped"}
        record(session, key, principal, "cohort.score", "cohort_run", str(run_id),
               details=run.counts if run else {})  # fmt: skip
        session.commit()


def _batched(results: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(islice(results, size)):
        yield chunk
