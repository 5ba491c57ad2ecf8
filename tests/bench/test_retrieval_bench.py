"""The retrieval benchmark runs end to end at a tiny size and prints its documented shapes."""

from __future__ import annotations

import json

import pytest

import clinic.retrieval.index as index_module
from bench import retrieval

BACKENDS = retrieval.BACKENDS
FIGURES = {"build_s", "p50_ms", "p99_ms", "p50_cpu_ms", "recall_at_10"}


def test_retrieval_benchmark_json_covers_every_backend_and_size(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(index_module, "GRAPH_MIN_ROWS", 1_000)  # so the graph path runs too
    monkeypatch.setattr(index_module, "GRAPH_DROP_ROWS", 500)
    monkeypatch.setattr(index_module, "GRAPH_COST_PER_DISTANCE", 0.0)
    argv = ["--sizes", "300,1500", "--dim", "16", "--queries", "20", "--threads", "1", "--json"]
    returned = retrieval.main(argv)
    printed = json.loads(capsys.readouterr().out)
    assert printed == returned
    assert [size["n"] for size in printed["sizes"]] == [300, 1500]
    for size in printed["sizes"]:
        for backend in BACKENDS:
            assert set(size[backend]) >= FIGURES
            assert 0.0 <= size[backend]["recall_at_10"] <= 1.0
            assert size[backend]["p99_ms"] >= size[backend]["p50_ms"] > 0
        assert size["exact"]["recall_at_10"] == 1.0
        assert 0 < size["faiss_hnsw"]["ef_search"] <= retrieval.MAX_EF
        assert size["faiss_hnsw"]["recall_at_10"] >= 0.95  # tuned to the default --target
    small, large = printed["sizes"]
    assert (small["ours"]["backend"], large["ours"]["backend"]) == ("exact", "hnsw")
    assert small["ours"]["recall_at_10"] == 1.0
    assert large["ours"]["recall_at_10"] >= 0.9


def test_retrieval_benchmark_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    retrieval.main(["--sizes", "200", "--dim", "8", "--queries", "10", "--data", "clustered"])
    lines = capsys.readouterr().out.splitlines()
    assert "clustered" in lines[0]
    assert [line.split()[1] for line in lines[2:]] == list(BACKENDS)


def test_retrieval_benchmark_runs_a_chosen_subset_of_backends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--sizes", "100", "--dim", "8", "--queries", "5", "--backends", "exact", "--json"]
    (size,) = retrieval.main(argv)["sizes"]
    assert set(size) == {"n", "exact"}
