"""``clinic train``, ``clinic evaluate`` and ``clinic run``: clear refusals with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from clinic.cli.main import app
from clinic.settings import Settings
from tests.conftest import cli_env, make_settings


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'clinic.db'}")


def invoke(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=cli_env(settings))


def test_training_on_an_unknown_cohort_exits_2_naming_it(sqlite_settings: Settings) -> None:
    result = invoke(sqlite_settings, "train", "pretrain", "--model", "x", "--cohort", "nope")
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and "nope" in result.stderr
    assert not (sqlite_settings.home / "models" / "x" / "weights.safetensors").exists()


def test_evaluating_a_missing_model_exits_2(sqlite_settings: Settings) -> None:
    result = invoke(sqlite_settings, "evaluate", "--model", "missing")
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and "no trained model" in result.stderr
    assert "missing" in result.stderr


def test_finetuning_a_missing_model_exits_2(sqlite_settings: Settings) -> None:
    result = invoke(sqlite_settings, "train", "finetune", "--model", "missing")
    assert result.exit_code == 2, result.output
    assert "no trained model" in result.stderr


def test_the_ptbxl_benchmark_refuses_a_folder_that_is_not_ptbxl(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "notes.txt").write_text("not PTB-XL")
    result = invoke(sqlite_settings, "run", "ptbxl-benchmark", "--train", str(folder),
                    "--test", str(folder))  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "is not a PTB-XL folder" in result.stderr and "ptbxl_database.csv" in result.stderr


def test_bad_fold_lists_are_a_usage_error(sqlite_settings: Settings) -> None:
    result = invoke(sqlite_settings, "train", "pretrain", "--model", "x", "--test-folds", "ten")
    assert result.exit_code == 2, result.output
    assert "comma-separated integers" in result.stderr
