"""The pgvector tuning benchmark runs end to end at a tiny size on the test PostgreSQL server."""

from __future__ import annotations

import json

import pytest

from bench import pgvector


@pytest.mark.postgres
def test_pgvector_benchmark_reports_recall_and_latency_per_setting(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--per-space", "400", "--spaces", "2", "--dim", "16", "--builds", "4:16,8:32",
            "--ef", "10,40", "--queries", "15", "--url", postgres_url, "--json"]  # fmt: skip
    pgvector.main(argv)
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == 800 and printed["exact"]["recall"] == 1.0  # the truth is exact
    assert [(b["m"], b["ef_construction"]) for b in printed["builds"]] == [(4, 16), (8, 32)]
    for build in printed["builds"]:
        assert build["build_s"] >= 0 and [r["ef_search"] for r in build["by_ef_search"]] == [10, 40]
        for row in build["by_ef_search"]:
            for kind in ("all", "filtered"):
                assert 0.5 <= row[kind]["recall"] <= 1.0 and row[kind]["p50_ms"] > 0
