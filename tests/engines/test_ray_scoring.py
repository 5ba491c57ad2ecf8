"""Cohort scoring and index building on Ray (local Ray, 2 CPUs) equal the local engine's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import func, select

import clinic.engines.ray_scoring as ray_scoring
from clinic.auth.roles import Principal, Role
from clinic.engines.index import build_indexes, model_spaces
from clinic.engines.options import Engine, EngineOptions
from clinic.inference.cohort import CohortScoreRequest, CohortScoreSummary, score_cohort
from clinic.inference.service import loaded_model
from clinic.retrieval.backends import index_dir
from clinic.settings import Settings
from clinic.store.models import AuditEvent, Embedding, Prediction
from clinic.store.store import Store
from tests.engines.helpers import max_finding_difference, prediction_rows
from tests.modelkit import TINY_COHORT, TINY_MODEL, copy_store

RESEARCHER = Principal("researcher-test", Role.RESEARCHER)
TOLERANCE = 1e-6


def request_for(engine: Engine, workers: int = 2) -> CohortScoreRequest:
    return CohortScoreRequest(
        TINY_COHORT, TINY_MODEL, batch_size=8, mc_samples=4, device="cpu", engine=engine,
        workers=workers if engine is Engine.RAY else 0,
    )  # fmt: skip


def scored_copy(
    tiny_trained: Settings, root: Path, engine: Engine
) -> tuple[Store, CohortScoreSummary]:
    store = Store.open(copy_store(tiny_trained, root))
    return store, score_cohort(store, RESEARCHER, request_for(engine))


def count(store: Store, query: Any) -> int:
    with store.session() as session:
        return int(session.scalar(query) or 0)


@pytest.mark.slow
def test_ray_scoring_equals_local_scoring_and_resumes(
    ray_local: EngineOptions, tiny_trained: Settings, tmp_path: Path
) -> None:
    local, by_local = scored_copy(tiny_trained, tmp_path / "local", Engine.LOCAL)
    on_ray, by_ray = scored_copy(tiny_trained, tmp_path / "ray", Engine.RAY)
    try:
        assert (by_ray.cases, by_ray.scored, by_ray.no_usable_input) == (
            by_local.cases, by_local.scored, by_local.no_usable_input,
        )  # fmt: skip
        assert by_local.scored > 0
        expected, got = prediction_rows(local), prediction_rows(on_ray)
        assert got.keys() == expected.keys()  # the same lineage hashes
        assert {k: v["subset"] for k, v in got.items()} == {
            k: v["subset"] for k, v in expected.items()
        }
        assert max_finding_difference(expected, got) < TOLERANCE
        assert _vectors(on_ray).keys() == _vectors(local).keys()
        for key, vector in _vectors(local).items():
            np.testing.assert_allclose(_vectors(on_ray)[key], vector, atol=TOLERANCE)
        created = select(func.count()).where(AuditEvent.action == "prediction.create")
        assert count(on_ray, created) == by_ray.scored

        resumed = score_cohort(on_ray, RESEARCHER, request_for(Engine.RAY))
        assert resumed.scored == 0 and resumed.already_scored == by_ray.scored
        total = select(func.count()).select_from(Prediction)
        assert count(on_ray, total) == by_ray.scored
        _check_index_builds(local, on_ray)
    finally:
        local.close()
        on_ray.close()


def _vectors(store: Store) -> dict[tuple[str, int], npt.NDArray[np.float32]]:
    with store.session() as session:
        return {
            (row.space, row.encounter_id): np.asarray(row.vector, dtype=np.float32)
            for row in session.scalars(select(Embedding))
        }


def _check_index_builds(local: Store, on_ray: Store) -> None:
    """Every space of the model gets the same index on both engines, built where it says."""
    key = loaded_model(local.settings.home, TINY_MODEL, None, "cpu").lineage.model_key
    spaces = model_spaces(local, key)
    assert {space.name.split(":")[1] for space in spaces} >= {"fused"}
    here = build_indexes(local, spaces)
    remote = build_indexes(on_ray, spaces, EngineOptions(Engine.RAY, workers=2))
    sqlite = local.settings.is_sqlite  # PostgreSQL: the server builds pgvector's graph
    assert [b.ran_on for b in here] == ["local" if sqlite else "database"] * len(spaces)
    assert [b.ran_on for b in remote] == ["ray" if sqlite else "database"] * len(spaces)
    assert [(b.space, b.vectors) for b in remote] == [(b.space, b.vectors) for b in here]
    assert all(b.vectors > 0 for b in here)
    for space in spaces if sqlite else []:
        assert (index_dir(on_ray, space.name) / "sync.json").is_file()
    again = build_indexes(on_ray, spaces, EngineOptions(Engine.RAY, workers=2))
    assert [b.vectors for b in again] == [b.vectors for b in remote]  # idempotent


class DiesOnceScorer(ray_scoring.CaseScorer):
    """A model actor that kills its process the first time it meets the marked case."""

    marker: Path
    target: str

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.target in {pickle_case_id(p) for p in batch[ray_scoring.CASE_COLUMN]}:
            if not self.marker.exists():
                self.marker.write_text(str(os.getpid()))
                os._exit(1)
            self.marker.with_suffix(".retried").write_text(str(os.getpid()))
        return super().__call__(batch)


def pickle_case_id(payload: bytes) -> str:
    import pickle

    return str(pickle.loads(payload).case_id)


@pytest.mark.slow
def test_a_model_actor_killed_mid_run_loses_and_duplicates_nothing(
    ray_local: EngineOptions,
    tiny_trained: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = Store.open(copy_store(tiny_trained, tmp_path / "ray"))
    try:
        from clinic.data.cases import load_cases

        with store.session() as session:
            cases = load_cases(session, cohort=TINY_COHORT)
        # A class made here travels by value, with its marker and target, to the actor.
        dying = type(
            "DiesOnTarget", (DiesOnceScorer,),
            {"marker": tmp_path / "killed", "target": cases[len(cases) // 2].case_id},
        )  # fmt: skip
        monkeypatch.setattr(ray_scoring, "SCORER", dying)
        summary = score_cohort(store, RESEARCHER, request_for(Engine.RAY, workers=1))
        assert (tmp_path / "killed").exists() and (tmp_path / "killed.retried").exists()
        assert summary.scored + summary.no_usable_input == len(cases)
        total = select(func.count()).select_from(Prediction)
        assert count(store, total) == summary.scored
        created = select(func.count()).where(AuditEvent.action == "prediction.create")
        assert count(store, created) == summary.scored
    finally:
        store.close()
