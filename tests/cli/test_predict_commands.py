"""``clinic predict``, ``similar``, ``cohort score|report`` and ``export fhir`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from clinic.cli.main import app
from clinic.data.cases import load_cases
from clinic.settings import Settings
from clinic.store.store import Store
from tests.conftest import cli_env
from tests.modelkit import TINY_COHORT, TINY_MODEL


def invoke(settings: Settings, *args: str, user: str | None = None) -> Result:
    env = cli_env(settings)
    if user:
        env.update(CLINIC_USER=user, CLINIC_PASSWORD=f"{user}-password-1")
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def cli_store(trained_store: Store) -> tuple[Settings, str]:
    with trained_store.session() as session:
        cases = load_cases(session, cohort=TINY_COHORT)
    richest = max(cases, key=lambda case: len(case.present))
    return trained_store.settings, richest.case_id


def test_predict_json_has_the_documented_shape(cli_store: tuple[Settings, str]) -> None:
    settings, case_id = cli_store
    result = invoke(settings, "predict", case_id, "--model", TINY_MODEL, "--json")
    assert result.exit_code == 0, result.output
    prediction = json.loads(result.stdout)
    assert prediction["case_id"] == case_id
    assert {"findings", "lineage", "lineage_hash", "explanations", "subset"} <= set(prediction)
    human = invoke(settings, "predict", case_id)  # default model: the newest calibrated
    assert human.exit_code == 0 and "lineage" in human.stdout


def test_cohort_score_report_similar_and_fhir(
    cli_store: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, case_id = cli_store
    scored = invoke(settings, "cohort", "score", TINY_COHORT, "--json")
    assert scored.exit_code == 0, scored.output
    summary = json.loads(scored.stdout)
    assert summary["scored"] > 0 and summary["already_scored"] == 0

    report = invoke(settings, "cohort", "report", TINY_COHORT, "--out", str(tmp_path), "--json")
    assert report.exit_code == 0, report.output
    assert Path(json.loads(report.stdout)["html"]).is_file()

    similar = invoke(settings, "similar", case_id, "--k", "3", "--json")
    assert similar.exit_code == 0, similar.output
    hits = json.loads(similar.stdout)
    assert hits["query"] == case_id and len(hits["hits"]) == 3
    assert {"case_id", "score", "by_modality"} <= set(hits["hits"][0])

    filtered = invoke(settings, "similar", case_id, "--filter", "has=ecg", "--json")
    assert filtered.exit_code == 0, filtered.output

    bundle_file = tmp_path / "bundle.json"
    exported = invoke(settings, "export", "fhir", case_id, "--out", str(bundle_file))
    assert exported.exit_code == 0, exported.output
    bundle = json.loads(bundle_file.read_text())
    assert bundle["resourceType"] == "Bundle"
    kinds = {entry["resource"]["resourceType"] for entry in bundle["entry"]}
    assert {"DiagnosticReport", "Observation", "Device"} <= kinds


def test_errors_exit_with_clear_messages(cli_store: tuple[Settings, str]) -> None:
    settings, _ = cli_store
    missing = invoke(settings, "predict", "E-missing", "--model", TINY_MODEL)
    assert missing.exit_code == 2 and "no case with id" in missing.stderr
    bad_filter = invoke(settings, "similar", "E-x", "--filter", "colour=red")
    assert bad_filter.exit_code == 2 and "unknown filter" in bad_filter.stderr
    no_export = invoke(settings, "export", "fhir", "E-missing")
    assert no_export.exit_code == 2


def test_roles_are_enforced_through_the_cli(cli_store: tuple[Settings, str]) -> None:
    settings, case_id = cli_store
    for name, role in (("admin-user", "admin"), ("research-user", "researcher")):
        password = f"{name}-password-1"
        added = CliRunner().invoke(
            app, ["user", "add", name, "--role", role, "--password-stdin"],
            input=password + "\n", env=cli_env(settings),
        )  # fmt: skip
        assert added.exit_code == 0, added.output
    denied = invoke(settings, "export", "fhir", case_id, user="research-user")
    assert denied.exit_code == 3 and "denied" in denied.stderr
    allowed = invoke(settings, "predict", case_id, "--json", user="research-user")
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout)["explanations"] == {}
    env = {**cli_env(settings), "CLINIC_USER": "research-user", "CLINIC_PASSWORD": "wrong-pass"}
    wrong = CliRunner().invoke(app, ["predict", case_id], env=env)
    assert wrong.exit_code == 3
