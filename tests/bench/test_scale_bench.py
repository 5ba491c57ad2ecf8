"""The scale benchmark runs at a tiny size and prints the documented JSON (figures not asserted:
two cores shared with other work say nothing about speed-ups). One Ray configuration keeps it
short; the 2-vs-1 ratio is computed when both run (``--ray-workers 1,2``, the default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_scale_benchmark_prints_its_json_shape() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--patients", "3", "--ray-workers", "2",
         "--gpu", "--json"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["items"] > 0 and figures["cases"] > 0
    assert set(figures["ingest"]) == {"local", "local_2", "ray_2"}
    assert set(figures["scoring"]) == {"local", "ray_2"}
    assert set(figures["decode"]) == {"local", "ray_2"}
    for stage in ("ingest", "scoring"):
        row = figures[stage]["ray_2"]
        assert row["seconds"] > 0 and row["cold_seconds"] > 0 and row["vs_local"] > 0
    gpu = figures["gpu"]
    assert "skipped" in gpu or all(row["cases_per_s"] > 0 for row in gpu["batches"])
