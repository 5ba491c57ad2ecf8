"""The ingestion benchmark runs and prints the documented JSON shape (figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_ingest_benchmark_prints_its_json_shape() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--patients", "6", "--repeat", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    for name in ("dicom", "ecg"):
        assert set(figures[name]) >= {"files_per_s", "raw_files_per_s", "ratio"}
        assert figures[name]["ratio"] > 0
    assert figures["peak_rss_mb"] > 0
