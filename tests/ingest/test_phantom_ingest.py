"""The phantom cohort goes through ingestion whole, and none of its identifiers come out."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from clinic.ingest.discover import iter_items_from_paths
from clinic.ingest.engine import IngestOptions, ingest
from clinic.store.models import ClinicalRecord, Label, Report, XrayImage
from clinic.store.store import Store
from clinic.synth import synthesize_cohort
from clinic.synth.identity import FAMILY_NAMES
from tests.ingest.helpers import modality_counts


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    synthesize_cohort(out, patients=24, seed=3, workers=1)
    return out


def test_phantom_cohort_ingests_without_refusals(store: Store, phantom: Path) -> None:
    summary = ingest(store, list(iter_items_from_paths([phantom])), IngestOptions(workers=2))
    assert summary.quarantined == 0 and summary.ingested == summary.seen
    manifest = list(csv.DictReader((phantom / "manifest.csv").open()))
    kinds = [row["kind"] for row in manifest]
    counts = modality_counts(store)
    assert counts["xray_images"] == kinds.count("xray")
    assert counts["ecg_records"] == kinds.count("ecg")
    assert counts["reports"] == kinds.count("report")
    with (phantom / "records.csv").open() as handle:
        assert counts["clinical_records"] == sum(1 for _ in csv.DictReader(handle))
    with store.session() as session:
        texts = list(session.scalars(select(Report.text)))
        attributes = [str(a) for a in session.scalars(select(XrayImage.attributes))]
        extras = [str(e) for e in session.scalars(select(ClinicalRecord.extras))]
        label_names = set(session.scalars(select(Label.name)))
    stored = "\n".join([*texts, *attributes, *extras])
    assert not re.search(r"MRN\d{5,}", stored)
    leaked = [name for name in FAMILY_NAMES if re.search(rf"\b{re.escape(name)}\b", stored)]
    assert leaked == []
    assert "heart_failure" in label_names
    for row in manifest:
        if row["kind"] == "xray":
            data = (phantom / row["path"]).read_bytes()
            assert row["patient_id"].encode() in data  # the source really carried identifiers
