"""The ``clinic`` command as scripts use it: JSON shapes, kills, concurrent ingesters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from clinic.settings import Settings
from clinic.store.models import EcgRecord, Encounter, SourceItem
from clinic.store.store import Store
from tests.conftest import cli_env, make_settings
from tests.ingest.helpers import copy_ptbxl_records, modality_counts, referenced_blobs

CLINIC = [sys.executable, "-m", "clinic.cli"]


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLINIC, *args], env=cli_env(settings), capture_output=True, text=True, timeout=600
    )


def test_ingest_status_and_quarantine_print_the_documented_json(
    settings: Settings, shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    copy_ptbxl_records(shared_data, folder, 2)
    (folder / "broken.dcm").write_text("not DICOM")
    result = run_cli(settings, "ingest", str(folder), "--json", "--cohort", "c1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "seen": 3,
        "ingested": 2,
        "already_stored": 0,
        "quarantined": 1,
    }
    status = json.loads(run_cli(settings, "status", "--json").stdout)
    assert status["counts"] == {
        "patients": 2,
        "xray_images": 0,
        "ecg_records": 2,
        "clinical_records": 0,
        "reports": 0,
        "labels": 0,
    }
    assert status["quarantined"] == {"dicom_not_dicom": 1}
    listed = json.loads(run_cli(settings, "quarantine", "list", "--json").stdout)
    assert len(listed) == 1
    assert set(listed[0]) == {"path", "sha256", "reason", "message"}
    assert listed[0]["reason"] == "dicom_not_dicom" and listed[0]["path"].endswith("broken.dcm")
    again = json.loads(run_cli(settings, "ingest", str(folder), "--json").stdout)
    assert again == {"seen": 3, "ingested": 0, "already_stored": 2, "quarantined": 1}


@pytest.mark.parametrize(
    "command", [["ingest", ".", "--json"], ["status", "--json"], ["quarantine", "list"]]
)
def test_production_mode_refuses_to_start_without_a_key(tmp_path: Path, command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINIC_")}
    env["CLINIC_HOME"] = str(tmp_path)
    result = subprocess.run(
        [*CLINIC, *command], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "CLINIC_PSEUDONYM_KEY is not set" in result.stderr
    assert not (tmp_path / "clinic.db").exists()


def test_help_explains_every_command() -> None:
    result = subprocess.run([*CLINIC, "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("ingest", "import", "status", "quarantine", "synth", "demo", "cohort"):
        assert command in result.stdout
    imports = subprocess.run([*CLINIC, "import", "--help"], capture_output=True, text=True)
    for name in ("ptbxl", "hannover", "iu", "heart-disease", "mimic-cxr", "chexpert"):
        assert name in imports.stdout


def _source_item_count(store: Store) -> int:
    with store.session() as session:
        return int(session.scalar(select(func.count()).select_from(SourceItem)) or 0)


def start_ingest_and_wait_for_commits(
    settings: Settings, store: Store, folder: Path, committed: int, **popen: Any
) -> subprocess.Popen[str]:
    """Start a 2-worker ingest in small batches; return once ``committed`` items are stored."""
    process = subprocess.Popen(
        [*CLINIC, "ingest", str(folder), "--workers", "2", "--batch-size", "4", "--json"],
        env=cli_env(settings),
        stdout=subprocess.DEVNULL,
        text=True,
        **popen,
    )
    deadline = time.monotonic() + 300
    while _source_item_count(store) < committed and time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail("the ingest finished before it could be stopped; give it more work")
        time.sleep(0.05)
    return process


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_a_clean_run(
    settings: Settings, shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    copy_ptbxl_records(shared_data, folder, 120)
    store = Store.open(settings)
    process = start_ingest_and_wait_for_commits(
        settings, store, folder, 10, stderr=subprocess.DEVNULL, start_new_session=True
    )
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = _source_item_count(store)
    assert 10 <= killed_at < 120
    rerun = run_cli(settings, "ingest", str(folder), "--workers", "2", "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["already_stored"] == killed_at

    clean = Store.open(make_settings(tmp_path / "clean", f"sqlite:///{tmp_path / 'clean.db'}"))
    clean_run = run_cli(clean.settings, "ingest", str(folder), "--json")
    assert json.loads(clean_run.stdout)["ingested"] == 120
    assert modality_counts(store) == modality_counts(clean)
    assert _source_item_count(store) == 120
    referenced = referenced_blobs(store)
    assert all(store.blobs.exists(blob) for blob in referenced)
    assert set(store.blobs.iter_hashes()) == referenced  # nothing orphaned either
    with store.session() as session:
        orphan_ecgs = session.scalar(
            select(func.count())
            .select_from(EcgRecord)
            .outerjoin(Encounter, Encounter.id == EcgRecord.encounter_id)
            .where(Encounter.id.is_(None))
        )
    assert orphan_ecgs == 0
    store.close()
    clean.close()


@pytest.mark.slow
def test_two_concurrent_ingesters_never_duplicate(
    settings: Settings, shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    copy_ptbxl_records(shared_data, folder, 40)
    Store.open(settings).close()
    processes = [
        subprocess.Popen(
            [*CLINIC, "ingest", str(folder), "--json"],
            env=cli_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    results = [json.loads(out) for out, _ in outputs]
    assert all(p.returncode == 0 for p in processes), [err for _, err in outputs]
    assert sum(r["ingested"] for r in results) == 40
    assert all(r["ingested"] + r["already_stored"] == 40 for r in results)
    store = Store.open(settings)
    assert modality_counts(store)["ecg_records"] == 40
    store.close()


def test_a_missing_path_is_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    result = run_cli(settings, "ingest", str(tmp_path / "nowhere"), "--json")
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigterm_records_the_run_as_interrupted_and_keeps_committed_batches(
    settings: Settings, shared_data: Path, tmp_path: Path
) -> None:
    from clinic.store.models import IngestRun

    folder = tmp_path / "in"
    copy_ptbxl_records(shared_data, folder, 120)
    store = Store.open(settings)
    process = start_ingest_and_wait_for_commits(settings, store, folder, 8, stderr=subprocess.PIPE)
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    with store.session() as session:
        run = session.scalars(select(IngestRun).order_by(IngestRun.id.desc())).first()
    assert run is not None and run.status == "interrupted"
    assert 8 <= run.counts["ingested"] == _source_item_count(store) < 120
    store.close()
