"""Comparing what two stores hold, independent of row ids, run ids and timestamps."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select

from clinic.store.models import (
    ClinicalRecord,
    CohortMember,
    EcgRecord,
    Encounter,
    Label,
    Patient,
    Prediction,
    QuarantineItem,
    Report,
    SourceItem,
    XrayImage,
)
from clinic.store.store import Store
from clinic.synth import synthesize_cohort

STORED_TABLES = (
    Patient, Encounter, SourceItem, XrayImage, EcgRecord, ClinicalRecord, Report, Label,
    QuarantineItem, CohortMember,
)  # fmt: skip
VOLATILE = {"id", "created_at", "ingest_run_id", "cohort_id", "cohort_run_id"}


def stored_rows(store: Store) -> dict[str, list[str]]:
    """Every stored row per table as canonical JSON, sorted; foreign keys as pseudonyms."""
    with store.session() as session:
        patients = dict(session.execute(select(Patient.id, Patient.pseudonym)).all())
        encounters = dict(session.execute(select(Encounter.id, Encounter.pseudonym)).all())
        tables: dict[str, list[str]] = {}
        for model in STORED_TABLES:
            table: Any = model.__table__
            rows = []
            skip = VOLATILE
            for row in session.execute(select(table)).mappings():
                values = {k: v for k, v in row.items() if k not in skip}
                if "patient_id" in values:
                    values["patient_id"] = patients[values["patient_id"]]
                if "encounter_id" in values:
                    values["encounter_id"] = encounters[values["encounter_id"]]
                rows.append(json.dumps(values, sort_keys=True, default=str))
            tables[str(table.name)] = sorted(rows)
    return tables


def prediction_rows(store: Store) -> dict[str, dict[str, Any]]:
    """Predictions keyed by lineage hash: subset, model key and findings."""
    with store.session() as session:
        return {
            row.lineage_hash: {
                "subset": row.subset, "model_key": row.model_key, "findings": row.findings,
                "flagged": row.flagged,
            }
            for row in session.scalars(select(Prediction))
        }  # fmt: skip


def max_finding_difference(
    first: Mapping[str, Mapping[str, Any]], second: Mapping[str, Mapping[str, Any]]
) -> float:
    """Largest absolute difference of probability, uncertainty, interval or contribution
    between the same findings of the same predictions (NaN equals NaN)."""
    worst = 0.0
    for key, prediction in first.items():
        for a, b in zip(prediction["findings"], second[key]["findings"], strict=True):
            assert a["label"] == b["label"] and a["abstained"] == b["abstained"]
            pairs = [(a["probability"], b["probability"]), (a["uncertainty"], b["uncertainty"])]
            pairs += list(zip(a["interval"], b["interval"], strict=True))
            assert a["contributions"].keys() == b["contributions"].keys()
            pairs += [(a["contributions"][m], b["contributions"][m]) for m in a["contributions"]]
            for x, y in pairs:
                if not (math.isnan(x) and math.isnan(y)):
                    worst = max(worst, abs(x - y))
    return worst


def phantom_with_bad_inputs(root: Path, patients: int = 4) -> list[Path]:
    """A phantom cohort plus inputs that must be refused: a truncated DICOM, a non-DICOM file
    named .dcm and a WFDB header without its signal file."""
    synthesize_cohort(root / "cohort", patients=patients, seed=5, workers=1)
    bad = root / "bad"
    bad.mkdir()
    first = sorted((root / "cohort" / "xray").glob("*.dcm"))[0]
    (bad / "truncated.dcm").write_bytes(first.read_bytes()[:1500])
    (bad / "not-dicom.dcm").write_bytes(b"this is not a DICOM file at all\n" * 20)
    header = sorted((root / "cohort" / "ecg").glob("*.hea"))[0]
    (bad / "orphan.hea").write_text(header.read_text().replace(header.stem, "orphan"))
    return [root / "cohort", bad]
