from __future__ import annotations

from pathlib import Path

from clinic.settings import Settings
from pipelines.ingest import run_ingestion
from tests.ingest.helpers import copy_ptbxl_records


def test_run_ingestion_is_the_engine_behind_a_plain_function(
    settings: Settings, shared_data: Path, tmp_path: Path
) -> None:
    headers = copy_ptbxl_records(shared_data, tmp_path / "ecg", 2)
    first = run_ingestion(settings, [tmp_path / "ecg"])
    assert first.as_json() == {"seen": 2, "ingested": 2, "already_stored": 0, "quarantined": 0}
    again = run_ingestion(settings, headers)
    assert again.already_stored == 2
