"""The embedded vector index: exactness, upserts, persistence, filters, locking, recall."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import clinic.retrieval.index as index_module
from clinic.retrieval.index import (
    EmbeddedIndex,
    Hit,
    IndexLockedError,
    StaleIndexError,
)

FloatArray = npt.NDArray[np.float32]
KeyArray = npt.NDArray[np.int64]


def unit_rows(n: int, dim: int, seed: int) -> FloatArray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    normalised: FloatArray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


def database_keys(n: int, seed: int) -> KeyArray:
    """Distinct arbitrary int64 keys, negative ones and huge ones included."""
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(-(2**62), 2**62, size=2 * n, dtype=np.int64))
    return rng.permutation(keys)[:n]


def exact_top(
    keys: KeyArray, vectors: FloatArray, query: FloatArray, k: int, allowed: KeyArray | None = None
) -> list[int]:
    """Brute-force reference, independent of the index code."""
    if allowed is not None:
        keep = np.isin(keys, allowed)
        keys, vectors = keys[keep], vectors[keep]
    scores = vectors @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    return [int(key) for key in keys[order]]


def hit_keys(hits: list[Hit]) -> list[int]:
    return [hit.key for hit in hits]


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def graph_from_1000_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the graph from 1,000 rows and let it answer whenever it can (graph work priced at
    zero), so graph paths are testable in seconds."""
    monkeypatch.setattr(index_module, "GRAPH_MIN_ROWS", 1_000)
    monkeypatch.setattr(index_module, "GRAPH_DROP_ROWS", 500)
    monkeypatch.setattr(index_module, "GRAPH_COST_PER_DISTANCE", 0.0)


@pytest.fixture
def small_graph_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    graph_from_1000_rows(monkeypatch)


@pytest.fixture
def graph_index(tmp_path: Path, small_graph_threshold: None) -> tuple[EmbeddedIndex, KeyArray]:
    keys = database_keys(4_000, seed=3)
    index = EmbeddedIndex.open(tmp_path / "graph", dim=32)
    index.add(keys, unit_rows(4_000, 32, seed=4))
    assert index.uses_graph
    return index, keys


# --------------------------------------------------------------------------- exactness


def test_exact_backend_matches_brute_force(tmp_path: Path) -> None:
    keys, vectors = database_keys(2_000, 0), unit_rows(2_000, 24, 1)
    index = EmbeddedIndex.open(tmp_path / "i", dim=24)
    index.add(keys, vectors * 3.0)  # not normalised on purpose
    assert len(index) == 2_000 and not index.uses_graph
    for query in unit_rows(20, 24, 2):
        hits = index.search(query, 10)
        assert hit_keys(hits) == exact_top(keys, vectors, query, 10)
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True)
        best = vectors[np.flatnonzero(keys == hits[0].key)[0]]
        assert hits[0].score == pytest.approx(float(best @ query), abs=1e-5)


def test_graph_backend_agrees_with_brute_force(graph_index: tuple[EmbeddedIndex, KeyArray]) -> None:
    index, keys = graph_index
    vectors = np.stack([index.vector(int(key)) for key in keys])
    queries = unit_rows(50, 32, 5)
    found = [hit_keys(index.search(query, 10)) for query in queries]
    truth = [exact_top(keys, vectors, query, 10) for query in queries]
    assert recall(found, truth) >= 0.95


def test_search_many_equals_one_query_at_a_time(
    graph_index: tuple[EmbeddedIndex, KeyArray], tmp_path: Path
) -> None:
    index, keys = graph_index
    exact = EmbeddedIndex.open(tmp_path / "exact", dim=32)
    exact.add(keys[:300], unit_rows(300, 32, 7))
    queries = unit_rows(8, 32, 6)
    for backend in (index, exact):
        batched = backend.search_many(queries, 7)
        single = [backend.search(query, 7) for query in queries]
        assert [hit_keys(hits) for hits in batched] == [hit_keys(hits) for hits in single]
        for many, one in zip(batched, single, strict=True):  # GEMM vs GEMV rounding only
            np.testing.assert_allclose([h.score for h in many], [h.score for h in one], atol=1e-5)


def test_vectors_are_stored_normalised_and_missing_keys_raise(tmp_path: Path) -> None:
    index = EmbeddedIndex.open(tmp_path / "i", dim=3)
    index.add(np.array([7], np.int64), np.array([[3.0, 0.0, 4.0]], np.float32))
    np.testing.assert_allclose(index.vector(7), [0.6, 0.0, 0.8], rtol=1e-6)
    assert 7 in index and 8 not in index
    with pytest.raises(KeyError):
        index.vector(8)


def test_small_index_and_empty_index_return_what_they_have(tmp_path: Path) -> None:
    index = EmbeddedIndex.open(tmp_path / "i", dim=4)
    assert index.search(np.ones(4, np.float32), 5) == []
    index.add(np.array([1, 2], np.int64), unit_rows(2, 4, 0))
    assert sorted(hit_keys(index.search(np.ones(4, np.float32), 5))) == [1, 2]


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    index = EmbeddedIndex.open(tmp_path / "i", dim=4)
    with pytest.raises(ValueError, match="non-zero"):
        index.add(np.array([1], np.int64), np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="dimension 4"):
        index.add(np.array([1], np.int64), np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match="keys"):
        index.add(np.array([1, 2], np.int64), np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.ones(4, np.float32), 0)
    with pytest.raises(ValueError, match="1-D query"):
        index.search(np.ones((2, 4), np.float32), 3)


def test_the_graph_answers_only_where_its_measured_work_beats_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same size, same dimension: structured vectors need a shallow walk, random ones do not."""
    monkeypatch.setattr(index_module, "GRAPH_MIN_ROWS", 1_000)
    rng = np.random.default_rng(40)
    centres = rng.standard_normal((20, 256))
    clustered = centres[rng.integers(0, 20, 2_000)] + 0.35 * rng.standard_normal((2_000, 256))
    answers = {}
    for name, rows in (("random", unit_rows(2_000, 256, 41)), ("clustered", clustered)):
        index = EmbeddedIndex.open(tmp_path / name, dim=256)
        index.add(np.arange(2_000, dtype=np.int64), rows.astype(np.float32))
        assert index.has_graph
        answers[name] = index.uses_graph
        query = rows[0].astype(np.float32)
        assert index.search(query, 1)[0].key == 0  # either way, the answer is right
    assert answers == {"random": False, "clustered": True}


# --------------------------------------------------------------------------- mutations


@pytest.mark.parametrize("use_graph", [False, True])
def test_upsert_replaces_the_vector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_graph: bool
) -> None:
    if use_graph:
        graph_from_1000_rows(monkeypatch)
    keys, vectors = database_keys(1_500, 8), unit_rows(1_500, 16, 9)
    index = EmbeddedIndex.open(tmp_path / "i", dim=16)
    index.add(keys, vectors)
    assert index.uses_graph is use_graph
    target, old, new = int(keys[10]), vectors[10], unit_rows(1, 16, 10)[0]
    index.add(np.array([target], np.int64), new[None, :])
    assert len(index) == 1_500
    np.testing.assert_allclose(index.vector(target), new, rtol=1e-6)
    best = index.search(new, 1)[0]
    assert best.key == target and best.score == pytest.approx(1.0, abs=1e-5)
    assert index.search(old, 1)[0].score < 0.99  # the old vector is gone, graph node included


def test_duplicate_keys_in_one_batch_keep_the_last_vector(tmp_path: Path) -> None:
    index = EmbeddedIndex.open(tmp_path / "i", dim=2)
    rows = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    index.add(np.array([5, 5], np.int64), rows)
    assert len(index) == 1
    np.testing.assert_allclose(index.vector(5), [0.0, 1.0])


def test_remove_forgets_keys_and_ignores_unknown_ones(
    graph_index: tuple[EmbeddedIndex, KeyArray],
) -> None:
    index, keys = graph_index
    gone = keys[:100]
    index.remove(np.concatenate([gone, np.array([123456789], np.int64)]))
    assert len(index) == 3_900
    assert all(int(key) not in index for key in gone)
    for key in gone[:10]:
        with pytest.raises(KeyError):
            index.vector(int(key))
    removed = set(gone.tolist())
    for query in unit_rows(20, 32, 11):
        hits = index.search(query, 10)
        assert len(hits) == 10 and not removed & set(hit_keys(hits))
    allowed = np.concatenate([gone, keys[100:2_000]])  # a filter naming removed keys too
    hits = index.search(unit_rows(1, 32, 12)[0], 10, allowed=allowed)
    assert len(hits) == 10 and not removed & set(hit_keys(hits))
    assert len(index.search(unit_rows(1, 32, 13)[0], 10, allowed=gone)) == 0


def test_many_tombstones_compact_and_small_indexes_drop_the_graph(
    graph_index: tuple[EmbeddedIndex, KeyArray],
) -> None:
    index, keys = graph_index
    index.remove(keys[:2_000])  # half dead: compacted and the graph rebuilt
    assert len(index) == 2_000 and index.uses_graph
    index.remove(keys[2_000:3_700])  # 300 left, under GRAPH_DROP_ROWS: exact again
    assert len(index) == 300 and not index.uses_graph
    vectors = np.stack([index.vector(int(key)) for key in keys[3_700:]])
    query = unit_rows(1, 32, 12)[0]
    assert hit_keys(index.search(query, 10)) == exact_top(keys[3_700:], vectors, query, 10)


# --------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("use_graph", [False, True])
def test_save_reopen_gives_identical_results_and_accepts_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_graph: bool
) -> None:
    if use_graph:
        graph_from_1000_rows(monkeypatch)
    keys, vectors = database_keys(2_500, 13), unit_rows(2_500, 16, 14)
    folder = tmp_path / "i"
    with EmbeddedIndex.open(folder, dim=16) as index:
        index.add(keys[:2_000], vectors[:2_000])
        index.remove(keys[:50])
        index.save()
        queries = unit_rows(10, 16, 15)
        before = index.search_many(queries, 10)
    with EmbeddedIndex.open(folder, dim=16) as reopened:
        assert reopened.uses_graph is use_graph and len(reopened) == 1_950
        assert reopened.ef_search == index.ef_search  # the calibrated ef is persisted
        assert reopened.search_many(queries, 10) == before
        reopened.add(keys[2_000:], vectors[2_000:])  # incremental, on the loaded graph
        reopened.save()
    with EmbeddedIndex.open(folder, dim=16) as again:
        assert len(again) == 2_450
        for key, vector in zip(keys[2_000:2_010], vectors[2_000:2_010], strict=True):
            assert again.search(vector, 1)[0].key == key


def test_reopening_with_another_dimension_is_a_clear_error(tmp_path: Path) -> None:
    EmbeddedIndex.open(tmp_path / "i", dim=8).close()
    with pytest.raises(ValueError, match=r"holds 8-dimensional vectors.*dim=16"):
        EmbeddedIndex.open(tmp_path / "i", dim=16)


def test_a_save_killed_midway_leaves_the_previous_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "i"
    index = EmbeddedIndex.open(folder, dim=4)
    index.add(np.array([1, 2], np.int64), unit_rows(2, 4, 16))
    index.save()
    index.add(np.array([3], np.int64), unit_rows(1, 4, 17))

    def killed(*_: object) -> None:
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(index_module, "_point_current", killed)
    with pytest.raises(KeyboardInterrupt):
        index.save()
    index.close()
    monkeypatch.undo()
    (folder / ".tmp-gen-000009-1").mkdir()  # what a writer killed inside the folder leaves
    with EmbeddedIndex.open(folder, dim=4) as survivor:
        assert len(survivor) == 2 and 3 not in survivor
        survivor.add(np.array([4], np.int64), unit_rows(1, 4, 18))
        survivor.save()
    leftovers = sorted(entry.name for entry in folder.iterdir())
    assert not [name for name in leftovers if name.startswith(".tmp-")]
    assert EmbeddedIndex.open(folder, dim=4).search(unit_rows(1, 4, 18)[0], 1)[0].key == 4


# --------------------------------------------------------------------------- writers


def test_a_second_writer_gets_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "i"
    first = EmbeddedIndex.open(folder, dim=4)
    second = EmbeddedIndex.open(folder, dim=4)  # reading needs no lock
    first.add(np.array([1], np.int64), unit_rows(1, 4, 19))
    with pytest.raises(IndexLockedError, match="one writer at a time"):
        second.add(np.array([2], np.int64), unit_rows(1, 4, 20))
    assert second.is_current()
    first.save()
    first.close()
    assert first.is_current() and not second.is_current()
    with pytest.raises(StaleIndexError, match="reopen"):
        second.add(np.array([2], np.int64), unit_rows(1, 4, 20))
    with EmbeddedIndex.open(folder, dim=4) as third:
        third.add(np.array([2], np.int64), unit_rows(1, 4, 20))
        third.save()
        assert len(third) == 2


# --------------------------------------------------------------------------- filters


def test_filter_with_unstored_keys_returns_min_k_and_intersection(tmp_path: Path) -> None:
    keys, vectors = database_keys(1_000, 21), unit_rows(1_000, 8, 22)
    index = EmbeddedIndex.open(tmp_path / "i", dim=8)
    index.add(keys, vectors)
    stored = keys[:4]
    allowed = np.concatenate([stored, np.array([1, 2, 3], np.int64)])
    assert set(allowed.tolist()).isdisjoint(set(keys[4:].tolist()))
    query = unit_rows(1, 8, 23)[0]
    hits = index.search(query, 10, allowed=allowed)
    assert hit_keys(hits) == exact_top(keys, vectors, query, 10, allowed=stored)
    assert len(index.search(query, 2, allowed=allowed)) == 2
    assert index.search(query, 10, allowed=np.array([1, 2], np.int64)) == []
    assert index.search(query, 10, allowed=np.array([], np.int64)) == []


@pytest.mark.parametrize("fraction", [0.5, 0.15, 0.01])
def test_filtered_graph_search_keeps_recall(
    graph_index: tuple[EmbeddedIndex, KeyArray], fraction: float
) -> None:
    """Large filters walk the graph with the filter applied; small ones are exact; none starve."""
    index, keys = graph_index
    vectors = np.stack([index.vector(int(key)) for key in keys])
    rng = np.random.default_rng(24)
    allowed = rng.choice(keys, size=int(fraction * len(keys)), replace=False)
    allowed_set = set(allowed.tolist())
    found, truth = [], []
    for query in unit_rows(30, 32, 25):
        hits = index.search(query, 10, allowed=allowed)
        assert len(hits) == 10 and set(hit_keys(hits)) <= allowed_set
        found.append(hit_keys(hits))
        truth.append(exact_top(keys, vectors, query, 10, allowed=allowed))
    assert recall(found, truth) >= 0.95


def test_very_selective_filter_on_a_large_graph_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 allowed of 50,000 (graph on): exactly those 3, best first."""
    monkeypatch.setattr(index_module, "HNSW_M", 8)  # a cheap graph: this tests the filter policy
    monkeypatch.setattr(index_module, "HNSW_EF_CONSTRUCTION", 16)
    keys, vectors = database_keys(50_000, 26), unit_rows(50_000, 16, 27)
    index = EmbeddedIndex.open(tmp_path / "i", dim=16)
    index.add(keys, vectors)
    assert index.has_graph
    allowed = keys[[17, 23_456, 49_999]]
    query = unit_rows(1, 16, 28)[0]
    hits = index.search(query, 10, allowed=allowed)
    assert hit_keys(hits) == exact_top(keys, vectors, query, 10, allowed=allowed)


# --------------------------------------------------------------------------- recall at scale


@pytest.mark.slow
def test_recall_at_10_on_100k_random_vectors_of_dim_256(tmp_path: Path) -> None:
    """The hard case the HNSW parameters were chosen for: random unit vectors (no structure)."""
    n, dim = 100_000, 256
    keys, vectors = database_keys(n, 29), unit_rows(n, dim, 30)
    index = EmbeddedIndex.open(tmp_path / "i", dim=dim)
    start = time.perf_counter()
    index.add(keys, vectors)
    build_s = time.perf_counter() - start
    assert index.uses_graph
    queries = unit_rows(200, dim, 31)
    found = [hit_keys(hits) for hits in index.search_many(queries, 10)]
    scores = queries @ vectors.T
    truth = [[int(k) for k in keys[np.argsort(-row)[:10]]] for row in scores]
    value = recall(found, truth)
    print(f"recall@10 {value:.3f}, ef {index.ef_search}, build {build_s:.0f} s")
    assert value >= 0.95
