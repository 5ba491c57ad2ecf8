"""Nearest-neighbour search over stored embeddings, on SQLite (embedded index) and PostgreSQL
(pgvector HNSW): agreement with exact search, filters that never starve, incremental updates."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import select, text

from clinic.inference.records import embedding_space, upsert_embeddings
from clinic.retrieval.backends import hnsw_index_name, pgvector_search_sql, search_space
from clinic.retrieval.filters import CaseFilter, allowed_encounters, parse_filter
from clinic.store.models import ClinicalRecord, Encounter, Label, Patient
from clinic.store.store import Store
from tests.conftest import make_settings

MODEL_KEY = "ab" * 32
SPACE = embedding_space(MODEL_KEY, "fused")
N, DIM = 600, 32


def unit(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.asarray(rows / norms, dtype=np.float32)


def populate(store: Store, vectors: npt.NDArray[np.float32], start: int = 0) -> list[int]:
    """One patient + encounter per vector; every 20th is MI-positive; ages 20..99."""
    ids = []
    with store.session() as session:
        for offset, vector in enumerate(vectors):
            number = start + offset
            patient = Patient(pseudonym=f"P{number:05d}")
            session.add(patient)
            session.flush()
            encounter = Encounter(pseudonym=f"E{number:05d}", patient_id=patient.id)
            session.add(encounter)
            session.flush()
            session.add(ClinicalRecord(
                encounter_id=encounter.id, source_sha256=f"{number:064d}", schema_name="t",
                age_years=20 + number % 80, sex="female" if number % 2 else "male",
                extras={}, warnings=[],
            ))  # fmt: skip
            if number % 20 == 0:
                session.add(Label(encounter_id=encounter.id, name="MI", value=1.0, state="positive",
                                  source="ground_truth", vocabulary="t"))  # fmt: skip
            upsert_embeddings(session, encounter.id, MODEL_KEY, {"fused": vector})
            ids.append(encounter.id)
        session.commit()
    return ids


@pytest.fixture
def filled(store: Store) -> tuple[Store, list[int], npt.NDArray[np.float32]]:
    vectors = unit(np.random.default_rng(0).normal(size=(N, DIM)))
    return store, populate(store, vectors), vectors


def exact_top(vectors: npt.NDArray[np.float32], ids: list[int], query: npt.NDArray[np.float32],
              k: int, allowed: set[int] | None = None) -> list[int]:  # fmt: skip
    scores = vectors @ query
    order = [ids[i] for i in np.argsort(-scores)]
    return [i for i in order if allowed is None or i in allowed][:k]


def test_search_agrees_with_exact_search(
    filled: tuple[Store, list[int], npt.NDArray[np.float32]],
) -> None:
    store, ids, vectors = filled
    queries = unit(np.random.default_rng(1).normal(size=(20, DIM)))
    recalls = []
    for query in queries:
        hits = search_space(store, SPACE, query, 10)
        assert len(hits) == 10
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        found = {h.encounter_id for h in hits}
        recalls.append(len(found & set(exact_top(vectors, ids, query, 10))) / 10)
    assert float(np.mean(recalls)) >= 0.95
    best = search_space(store, SPACE, vectors[7], 1)[0]
    assert best.encounter_id == ids[7] and best.score == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("plan", ["exact", "graph"])
def test_a_selective_filter_still_returns_k_hits(
    filled: tuple[Store, list[int], npt.NDArray[np.float32]],
    plan: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL scores a few allowed cases exactly and walks the graph for larger sets; both
    plans must give k hits inside the filter (the embedded index has its own policy)."""
    from clinic.retrieval import backends

    monkeypatch.setattr(backends, "EXACT_FILTER_MAX", 10**9 if plan == "exact" else 0)
    store, ids, vectors = filled
    with store.session() as session:
        allowed = set(session.scalars(allowed_encounters(parse_filter("label=MI"))).all())
    assert len(allowed) == N // 20
    query = unit(np.random.default_rng(2).normal(size=(1, DIM)))[0]
    hits = search_space(store, SPACE, query, 10, allowed_encounters(parse_filter("label=MI")))
    assert len(hits) == 10 and {h.encounter_id for h in hits} <= allowed
    assert [h.encounter_id for h in hits] == exact_top(vectors, ids, query, 10, allowed)
    everything = search_space(
        store, SPACE, query, 100, allowed_encounters(parse_filter("label=MI"))
    )
    assert len(everything) == len(allowed)  # k > matches: all matches, no more


def test_combined_filters(filled: tuple[Store, list[int], npt.NDArray[np.float32]]) -> None:
    store, _, _ = filled
    case_filter = parse_filter("age=60-80,sex=female")
    with store.session() as session:
        allowed = set(session.scalars(allowed_encounters(case_filter)).all())
        rows = session.execute(
            select(ClinicalRecord.encounter_id, ClinicalRecord.age_years, ClinicalRecord.sex)
        ).all()
    expected = {
        e for e, age, sex in rows if age is not None and 60 <= age <= 80 and sex == "female"
    }
    assert allowed == expected and allowed
    query = unit(np.random.default_rng(3).normal(size=(1, DIM)))[0]
    hits = search_space(store, SPACE, query, 5, allowed_encounters(case_filter))
    assert len(hits) == 5 and {h.encounter_id for h in hits} <= allowed


def test_new_embeddings_are_found_incrementally(
    filled: tuple[Store, list[int], npt.NDArray[np.float32]],
) -> None:
    store, _, _ = filled
    search_space(store, SPACE, unit(np.ones((1, DIM)))[0], 3)  # builds / syncs the index
    fresh = unit(np.random.default_rng(4).normal(size=(3, DIM)))
    new_ids = populate(store, fresh, start=N)
    for vector, encounter_id in zip(fresh, new_ids, strict=True):
        assert search_space(store, SPACE, vector, 1)[0].encounter_id == encounter_id
    replaced = unit(np.random.default_rng(5).normal(size=(1, DIM)))[0]
    with store.session() as session:
        upsert_embeddings(session, new_ids[0], MODEL_KEY, {"fused": replaced})
        session.commit()
    top = search_space(store, SPACE, replaced, 1)[0]
    assert top.encounter_id == new_ids[0] and top.score == pytest.approx(1.0, abs=1e-4)


@pytest.mark.postgres
def test_postgres_searches_through_the_hnsw_index_of_the_dimension(
    postgres_url: str, tmp_path: Path
) -> None:
    store = Store.open(make_settings(tmp_path / "home", postgres_url))
    try:
        with store.engine.connect() as connection:
            migrated = set(connection.execute(text(
                "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_embeddings_hnsw_%'"
            )).scalars())  # fmt: skip
        assert migrated == {hnsw_index_name(128), hnsw_index_name(256)}  # by migration 0004
        vectors = unit(np.random.default_rng(0).normal(size=(50, DIM)))
        populate(store, vectors)
        assert search_space(store, SPACE, vectors[0], 5)[0].encounter_id is not None
        with store.engine.connect() as connection:
            definition = connection.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"),
                {"n": hnsw_index_name(DIM)},
            ).scalar_one()  # another dimension: created on first search
            connection.execute(text("SET enable_seqscan = off"))  # 50 rows: force the choice
            literal = "[" + ",".join("0.1" for _ in range(DIM)) + "]"
            plan = "\n".join(connection.execute(
                text("EXPLAIN " + pgvector_search_sql(SPACE, DIM, "SELECT 1").text),
                {"q": literal, "k": 5},
            ).scalars())  # fmt: skip
        assert "hnsw" in definition and f"vector_dims(vector) = {DIM}" in definition
        assert hnsw_index_name(DIM) in plan  # the planner can use it for the search's query
    finally:
        store.close()


def test_filter_parsing_errors_are_specific() -> None:
    from clinic.retrieval.filters import FilterError

    assert parse_filter(None) == CaseFilter()
    assert parse_filter("label=MI, age=60-80 ,has=ecg").age == (60.0, 80.0)
    for bad, message in [("age=80-60", "lower bound"), ("colour=red", "unknown filter"),
                         ("sex=x", "female or male"), ("has=mri", "has filter"),
                         ("label", "NAME=VALUE")]:  # fmt: skip
        with pytest.raises(FilterError, match=message):
            parse_filter(bad)


def test_concurrent_searches_sync_the_index_without_failing(
    filled: tuple[Store, list[int], npt.NDArray[np.float32]],
) -> None:
    store, _, _ = filled
    fresh = unit(np.random.default_rng(6).normal(size=(4, DIM)))
    new_ids = populate(store, fresh, start=2 * N)  # not yet in the index: every search syncs
    with ThreadPoolExecutor(max_workers=4) as pool:
        tops = list(pool.map(lambda v: search_space(store, SPACE, v, 1)[0].encounter_id, fresh))
    assert tops == new_ids


def test_searches_reuse_one_loaded_index_until_another_writer_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded index (SQLite stores) stays loaded between searches."""
    store = Store.open(make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'c.db'}"))
    vectors = unit(np.random.default_rng(0).normal(size=(50, DIM)))
    populate(store, vectors)
    from clinic.retrieval import backends
    from clinic.retrieval.index import EmbeddedIndex

    opened: list[Path] = []
    real_open = EmbeddedIndex.open.__func__  # type: ignore[attr-defined]

    def counting_open(cls: type[EmbeddedIndex], directory: Path, dim: int) -> EmbeddedIndex:
        opened.append(directory)
        return real_open(cls, directory, dim)  # type: ignore[no-any-return]

    monkeypatch.setattr(EmbeddedIndex, "open", classmethod(counting_open))
    backends._OPEN_INDEXES.clear()
    for vector in vectors[:5]:
        search_space(store, SPACE, vector, 3)
    assert len(opened) == 1  # loaded once, synced in place afterwards
    fresh = unit(np.random.default_rng(7).normal(size=(1, DIM)))
    new_id = populate(store, fresh, start=3 * N)[0]
    assert search_space(store, SPACE, fresh[0], 1)[0].encounter_id == new_id
    assert len(opened) == 1
    other = EmbeddedIndex.open(backends.index_dir(store, SPACE), DIM)  # another process's writer
    with other:
        other.remove(np.array([new_id], dtype=np.int64))
        other.save()
    opened.clear()
    hits = search_space(store, SPACE, fresh[0], 1)
    assert len(opened) == 1  # the other writer's save was noticed: reloaded from disk
    assert hits[0].encounter_id != new_id  # and its change is visible
    store.close()
