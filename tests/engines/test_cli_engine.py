"""``--engine ray`` on the batch commands: ingest, cohort score and index build end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from clinic.cli.main import app
from clinic.engines.options import EngineOptions
from clinic.settings import Settings
from clinic.store.store import Store
from tests.conftest import cli_env, make_settings
from tests.engines.helpers import phantom_with_bad_inputs
from tests.modelkit import TINY_COHORT, TINY_MODEL


def invoke(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=cli_env(settings))


def test_ingest_with_the_ray_engine(ray_local: EngineOptions, tmp_path: Path) -> None:
    paths = phantom_with_bad_inputs(tmp_path / "inputs", patients=2)
    settings = make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'clinic.db'}")
    args = ["ingest", *map(str, paths), "--engine", "ray", "--workers", "2", "--json"]
    first = invoke(settings, *args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["ingested"] > 0 and summary["quarantined"] == 3
    again = json.loads(invoke(settings, *args).stdout)
    assert again["already_stored"] == summary["ingested"] and again["ingested"] == 0


def test_an_unknown_engine_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'clinic.db'}")
    result = invoke(settings, "ingest", str(tmp_path), "--engine", "spark")
    assert result.exit_code == 2 and "spark" in result.output


@pytest.mark.slow
def test_cohort_score_and_index_build_with_the_ray_engine(
    ray_local: EngineOptions, trained_store: Store
) -> None:
    settings = trained_store.settings
    scored = invoke(settings, "cohort", "score", TINY_COHORT, "--model", TINY_MODEL,
                    "--engine", "ray", "--workers", "1", "--json")  # fmt: skip
    assert scored.exit_code == 0, scored.output
    summary = json.loads(scored.stdout)
    assert summary["scored"] > 0 and summary["already_scored"] == 0

    built = invoke(settings, "index", "build", "--model", TINY_MODEL, "--engine", "ray", "--json")
    assert built.exit_code == 0, built.output
    builds = json.loads(built.stdout)
    assert {build["space"].split(":")[1] for build in builds} >= {"fused"}
    where = "ray" if settings.is_sqlite else "database"
    assert all(b["vectors"] > 0 and b["ran_on"] == where for b in builds)

    rescored = invoke(settings, "cohort", "score", TINY_COHORT, "--engine", "ray", "--json")
    assert json.loads(rescored.stdout)["already_scored"] == summary["scored"]
