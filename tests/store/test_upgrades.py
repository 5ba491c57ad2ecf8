"""Upgrading a store that holds data, from every released schema version to head, on both backends.

Each released version is seeded the way that release wrote it (plain inserts into the tables as
they were then: the models describe head, not the past), upgraded with the migrations, and then
used through today's code: the cases load with their labels, the legacy audit events are counted
by the chain verifier, predictions get their worklist columns, stored embeddings are searchable
(pgvector through migration 0004's HNSW index), users still sign in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection, MetaData, func, select, text

from clinic.audit.chain import AuditKey
from clinic.audit.verify import verify_chain
from clinic.auth.users import authenticate, hash_password
from clinic.data.cases import load_cases
from clinic.inference.records import embedding_space
from clinic.retrieval.backends import search_space
from clinic.store.db import make_engine, upgrade_schema
from clinic.store.store import Store
from tests.conftest import make_settings

RELEASED = ("0001", "0002", "0003")  # every schema version a release shipped before head
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
MODEL_KEY = "cd" * 32
DIM = 128  # cpu-small's embedding size: covered by migration 0004's index
PASSWORD = "an-old-release-password"
Seed = Callable[[Connection, MetaData], None]


def seed_0001(connection: Connection, tables: MetaData) -> None:
    """Two patients with records, reports and labels in cohort "legacy"; a quarantined file; an
    ingest run; two audit events from before the audit chain existed."""
    t = tables.tables
    connection.execute(
        t["ingest_runs"].insert(),
        [
            {
                "id": 1,
                "started_at": NOW,
                "finished_at": NOW,
                "status": "finished",
                "command": "ingest",
                "sources": ["/in"],
                "counts": {"seen": 3},
                "code_version": "0.0.9",
            }
        ],
    )
    connection.execute(t["cohorts"].insert(), [{"id": 1, "name": "legacy"}])
    for number in (1, 2):
        connection.execute(t["patients"].insert(), [{"id": number, "pseudonym": f"P{number:04d}"}])
        connection.execute(
            t["encounters"].insert(),
            [{"id": number, "pseudonym": f"E{number:04d}", "patient_id": number, "split": "train"}],
        )
        sha = f"{number:064x}"
        connection.execute(
            t["source_items"].insert(),
            [{"sha256": sha, "kind": "record", "encounter_id": number, "ingest_run_id": 1}],
        )
        connection.execute(
            t["clinical_records"].insert(),
            [
                {
                    "encounter_id": number,
                    "schema_name": "clinical_record_v1",
                    "age_years": 60.0 + number,
                    "sex": "female",
                    "heart_rate_bpm": 70.0 + number,
                    "extras": {},
                    "warnings": [],
                    "source_sha256": sha,
                }
            ],
        )
        connection.execute(
            t["reports"].insert(),
            [
                {
                    "encounter_id": number,
                    "kind": "radiology",
                    "text": f"Findings {number}: no effusion.",
                    "sections": {},
                    "encoding": "utf-8",
                    "language": "en",
                    "scrubbed_count": 0,
                    "source_sha256": sha,
                }
            ],
        )
        connection.execute(
            t["labels"].insert(),
            [
                {
                    "encounter_id": number,
                    "name": "effusion",
                    "value": float(number == 2),
                    "state": "positive" if number == 2 else "negative",
                    "source": "ground_truth",
                    "vocabulary": "chexpert",
                }
            ],
        )
        connection.execute(t["cohort_members"].insert(), [{"cohort_id": 1, "encounter_id": number}])
    connection.execute(
        t["quarantine_items"].insert(),
        [
            {
                "ingest_run_id": 1,
                "path": "/in/bad.dcm",
                "sha256": "f" * 64,
                "kind": "xray",
                "reason": "dicom_truncated",
                "message": "the DICOM file ends early",
            }
        ],
    )
    connection.execute(
        t["audit_events"].insert(),
        [
            {
                "occurred_at": NOW,
                "actor": "ingest",
                "role": "system",
                "action": action,
                "resource_type": "ingest_run",
                "resource_id": "1",
                "outcome": "ok",
                "details": {},
            }
            for action in ("ingest.start", "ingest")
        ],
    )


def seed_0002(connection: Connection, tables: MetaData) -> None:
    """A user, a cohort run, a prediction and the fused embeddings of both cases."""
    t = tables.tables
    connection.execute(
        t["users"].insert(),
        [
            {
                "username": "old-clinician",
                "role": "clinician",
                "password_hash": hash_password(PASSWORD),
                "active": True,
            }
        ],
    )
    connection.execute(
        t["cohort_runs"].insert(),
        [
            {
                "id": 1,
                "cohort_id": 1,
                "model_name": "m",
                "model_key": MODEL_KEY,
                "started_at": NOW,
                "status": "finished",
                "counts": {"cases": 2},
                "created_by": "old-clinician",
            }
        ],
    )
    findings = [
        {"label": "effusion", "probability": 0.81, "abstained": False},
        {"label": "cardiomegaly", "probability": 0.95, "abstained": True},
    ]
    connection.execute(
        t["predictions"].insert(),
        [
            {
                "encounter_id": 2,
                "model_name": "m",
                "model_key": MODEL_KEY,
                "lineage_hash": "a" * 64,
                "lineage": {},
                "subset": "record+report",
                "findings": findings,
                "explanations": {},
                "created_by": "old-clinician",
                "cohort_run_id": 1,
            }
        ],
    )
    vectors = unit_vectors()
    for number, vector in zip((1, 2), vectors, strict=True):
        connection.execute(
            t["embeddings"].insert(),
            [
                {
                    "encounter_id": number,
                    "space": embedding_space(MODEL_KEY, "fused"),
                    "model_key": MODEL_KEY,
                    "modality": "fused",
                    "dim": DIM,
                    "vector": stored_vector(connection, vector),
                }
            ],
        )


def seed_0003(connection: Connection, tables: MetaData) -> None:
    """A clinician's review of the prediction."""
    connection.execute(
        tables.tables["reviews"].insert(),
        [
            {
                "encounter_id": 2,
                "prediction_id": 1,
                "label": "effusion",
                "decision": "accept",
                "comment": "agree",
                "created_by": "old-clinician",
            }
        ],
    )


SEEDS: dict[str, Seed] = {"0001": seed_0001, "0002": seed_0002, "0003": seed_0003}


def unit_vectors() -> np.ndarray:
    rows = np.random.default_rng(11).normal(size=(2, DIM))
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), dtype=np.float32)


def stored_vector(connection: Connection, vector: np.ndarray) -> object:
    """How 0002 stored a vector: a pgvector ``vector`` on PostgreSQL (the reflected column
    type encodes it), float32 bytes on SQLite."""
    if connection.dialect.name == "postgresql":
        return vector
    return np.asarray(vector, dtype="<f4").tobytes()


def row_counts(connection: Connection, tables: MetaData) -> dict[str, int]:
    return {
        name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
        for name, table in tables.tables.items()
        if name != "alembic_version"
    }


@pytest.mark.parametrize("released", RELEASED)
def test_a_store_with_data_upgrades_to_head(
    released: str, database_url: str, tmp_path: Path
) -> None:
    """A store that lived through the releases up to ``released`` (each one writing its data),
    then upgrades to head in one go."""
    for revision in RELEASED[: RELEASED.index(released) + 1]:
        upgrade_schema(database_url, revision)
        engine = make_engine(database_url)
        tables = MetaData()
        tables.reflect(engine)
        with engine.begin() as connection:
            SEEDS[revision](connection, tables)
            before = row_counts(connection, tables)
        engine.dispose()

    store = Store.open(make_settings(tmp_path / "home", database_url))  # migrates to head
    try:
        with store.engine.connect() as connection:
            after = row_counts(connection, tables)
            head = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert head != released and after == before  # nothing lost, nothing invented
        check_cases_and_audit(store)
        if released >= "0002":
            check_predictions_embeddings_and_users(store)
    finally:
        store.close()


def check_cases_and_audit(store: Store) -> None:
    with store.session() as session:
        cases = load_cases(session, cohort="legacy")
        assert [case.case_id for case in cases] == ["E0001", "E0002"]
        assert cases[1].labels == {"effusion": 1.0} and cases[0].record is not None
        assert cases[1].report == "Findings 2: no effusion."
        result = verify_chain(session, AuditKey.from_settings(store.settings))
    assert result.ok and result.legacy == 2  # pre-chain events counted, not "tampered"


def check_predictions_embeddings_and_users(store: Store) -> None:
    with store.engine.connect() as connection:
        max_risk, flagged = connection.execute(
            text("SELECT max_risk, flagged FROM predictions")
        ).one()  # 0003's backfill: the highest non-abstained probability
    assert max_risk == pytest.approx(0.81) and "effusion" in str(flagged)
    query = unit_vectors()[1]
    hits = search_space(store, embedding_space(MODEL_KEY, "fused"), query, 2)
    assert next(hit.score for hit in hits) == pytest.approx(1.0, abs=1e-4) and len(hits) == 2
    with store.session() as session:
        principal = authenticate(
            session, AuditKey.from_settings(store.settings), "old-clinician", PASSWORD
        )
    assert principal.username == "old-clinician"
