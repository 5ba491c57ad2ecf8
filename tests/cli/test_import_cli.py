"""``clinic import`` on every real dataset in ../shared/data and on MIMIC-CXR / CheXpert layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from clinic.settings import Settings
from clinic.store.models import Cohort, CohortMember, Encounter, Label, XrayImage
from clinic.store.store import Store
from tests.cli.test_ingest_cli import run_cli
from tests.ingest.importers.fixtures import build_chexpert_fixture, build_mimic_cxr_fixture

# Only these refusals are expected on the real data (blank reports exist in PTB-XL and IU).
EXPECTED_REASONS = {"report_empty"}


def import_json(settings: Settings, name: str, root: Path, *extra: str) -> dict[str, int]:
    result = run_cli(settings, "import", name, str(root), "--json", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    counts: dict[str, int] = json.loads(result.stdout)
    assert counts["seen"] == counts["ingested"] + counts["already_stored"] + counts["quarantined"]
    return counts


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("ptbxl", "ptbxl"),
        ("hannover", "hannover-cxr"),
        ("iu", "iu-reports"),
        ("heart-disease", "heart-disease-uci"),
    ],
)
def test_every_real_dataset_imports_whole_and_idempotently(
    settings: Settings, shared_data: Path, name: str, folder: str
) -> None:
    first = import_json(settings, name, shared_data / folder, "--workers", "2", "--cohort", name)
    assert first["ingested"] > 0
    status = json.loads(run_cli(settings, "status", "--json").stdout)
    assert set(status["quarantined"]) <= EXPECTED_REASONS
    assert first["quarantined"] <= first["seen"] // 50
    again = import_json(settings, name, shared_data / folder)
    assert again == {**again, "ingested": 0, "already_stored": first["ingested"]}
    store = Store.open(settings)
    with store.session() as session:
        cohort_size = session.scalar(
            select(func.count())
            .select_from(CohortMember)
            .join(Cohort, Cohort.id == CohortMember.cohort_id)
            .where(Cohort.name == name)
        )
        encounters = session.scalar(select(func.count()).select_from(Encounter))
    assert cohort_size == encounters
    store.close()


def test_ptbxl_keeps_folds_labels_and_superclasses(settings: Settings, shared_data: Path) -> None:
    import_json(settings, "ptbxl", shared_data / "ptbxl", "--workers", "2")
    store = Store.open(settings)
    with store.session() as session:
        folds = set(session.scalars(select(Encounter.split).distinct()))
        vocabularies = set(session.scalars(select(Label.vocabulary).distinct()))
        superclasses = set(
            session.scalars(select(Label.name).where(Label.vocabulary == "ptbxl_superclass"))
        )
    store.close()
    assert folds <= {str(f) for f in range(1, 11)} and len(folds) >= 2
    assert {"scp", "ptbxl_superclass"} <= vocabularies
    assert superclasses == {"NORM", "MI", "STTC", "CD", "HYP"}


@pytest.mark.parametrize(
    ("name", "builder"),
    [("mimic-cxr", build_mimic_cxr_fixture), ("chexpert", build_chexpert_fixture)],
)
def test_chest_xray_layouts_keep_views_splits_and_four_label_states(
    settings: Settings, tmp_path: Path, name: str, builder: object
) -> None:
    assert callable(builder)
    root = builder(tmp_path / "dataset", 6)
    counts = import_json(settings, name, root)
    assert counts["ingested"] > 0
    status = json.loads(run_cli(settings, "status", "--json").stdout)
    assert status["quarantined"] == {"manifest_file_missing": 1}  # the fixture's missing image
    store = Store.open(settings)
    with store.session() as session:
        views = set(session.scalars(select(XrayImage.ViewPosition)))
        states = set(session.scalars(select(Label.state).where(Label.vocabulary == "chexpert")))
        splits = set(session.scalars(select(Encounter.split)))
    store.close()
    assert views & {"PA", "AP"}
    assert states == {"positive", "negative", "uncertain", "not_mentioned"}
    assert splits - {None}


@pytest.mark.parametrize(("name", "folder"), [("ptbxl", "missing"), ("hannover", "ptbxl")])
def test_a_wrong_layout_is_a_clear_error(
    settings: Settings, shared_data: Path, name: str, folder: str
) -> None:
    result = run_cli(settings, "import", name, str(shared_data / folder), "--json")
    assert result.returncode == 2
    assert "import_layout_invalid" in result.stderr and "Traceback" not in result.stderr
