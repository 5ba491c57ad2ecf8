"""``build_indexes`` on Ray builds the same embedded index as the local engine (SQLite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clinic.engines.index import Space, build_indexes, model_spaces, space_dims
from clinic.engines.options import Engine, EngineOptions
from clinic.inference.records import embedding_space, upsert_embeddings
from clinic.retrieval.backends import sync_embedded_index
from clinic.store.models import Encounter, Patient
from clinic.store.store import Store
from tests.conftest import make_settings

MODEL_KEY = "ab" * 32
DIM = 8


def store_with_vectors(root: Path, cases: int = 40) -> Store:
    """A SQLite store whose ``cases`` encounters have random vectors in two spaces."""
    store = Store.open(make_settings(root / "home", f"sqlite:///{root / 'home' / 'clinic.db'}"))
    generator = np.random.default_rng(7)
    with store.session() as session:
        for number in range(cases):
            patient = Patient(pseudonym=f"P{number:05d}")
            session.add(patient)
            session.flush()
            encounter = Encounter(pseudonym=f"E{number:05d}", patient_id=patient.id)
            session.add(encounter)
            session.flush()
            vectors = {m: generator.normal(size=DIM).astype(np.float32) for m in ("ecg", "fused")}
            upsert_embeddings(session, encounter.id, MODEL_KEY, vectors)
        session.commit()
    return store


def test_ray_and_local_builds_give_the_same_index(ray_local: EngineOptions, tmp_path: Path) -> None:
    local, on_ray = store_with_vectors(tmp_path / "local"), store_with_vectors(tmp_path / "ray")
    try:
        spaces = model_spaces(local, MODEL_KEY)
        assert spaces == [Space(embedding_space(MODEL_KEY, m), DIM) for m in ("ecg", "fused")]
        here = build_indexes(local, spaces, EngineOptions())
        remote = build_indexes(on_ray, spaces, EngineOptions(Engine.RAY, workers=2))
        assert [(b.space, b.vectors, b.ran_on) for b in here] == [
            (s.name, 40, "local") for s in spaces
        ]
        assert [(b.space, b.vectors, b.ran_on) for b in remote] == [
            (s.name, 40, "ray") for s in spaces
        ]
        query = np.ones(DIM, dtype=np.float32)
        for space in spaces:
            built_here = sync_embedded_index(local, space.name, DIM).search(query, 5)
            built_there = sync_embedded_index(on_ray, space.name, DIM).search(query, 5)
            assert [(h.key, round(h.score, 6)) for h in built_there] == [
                (h.key, round(h.score, 6)) for h in built_here
            ]
    finally:
        local.close()
        on_ray.close()


def test_naming_a_space_without_vectors_is_an_error(tmp_path: Path) -> None:
    store = store_with_vectors(tmp_path, cases=2)
    try:
        assert space_dims(store, [embedding_space(MODEL_KEY, "ecg")])[0].dim == DIM
        with pytest.raises(LookupError, match="xray"):
            space_dims(store, [embedding_space(MODEL_KEY, "xray")])
    finally:
        store.close()
