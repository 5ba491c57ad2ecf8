"""SQLAlchemy 2 typed models of the clinic store.

The database holds de-identified metadata, hashes and labels; bytes (de-identified DICOM, decoded
arrays, raw WFDB files) live in the content-addressed blob store and are referenced by sha256.
Every source item ingested is recorded once in ``source_items`` by the sha256 of its content, which
is what makes ingestion idempotent and safe against two concurrent ingesters.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from clinic.store.vector import VectorColumn

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SHA256 = String(64)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Timestamped:
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class Patient(Timestamped, Base):
    """A patient known only by a keyed pseudonym."""

    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(32), unique=True)
    encounters: Mapped[list[Encounter]] = relationship(back_populates="patient")


class Encounter(Timestamped, Base):
    """A visit or study: the unit a case is built from (one X-ray, ECG, record, report…)."""

    __tablename__ = "encounters"
    id: Mapped[int] = mapped_column(primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(32), unique=True)
    patient_id: Mapped[int] = mapped_column(
        ForeignKey("patients.id", ondelete="CASCADE"), index=True
    )
    split: Mapped[str | None] = mapped_column(String(32))
    study_date_shifted: Mapped[dt.date | None]
    patient: Mapped[Patient] = relationship(back_populates="encounters")


class SourceItem(Timestamped, Base):
    """One ingested input, by the sha256 of its content: the idempotency key."""

    __tablename__ = "source_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(SHA256, unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    encounter_id: Mapped[int] = mapped_column(
        ForeignKey("encounters.id", ondelete="CASCADE"), index=True
    )
    ingest_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("ingest_runs.id", ondelete="SET NULL"), index=True
    )


class _FromSource:
    """Columns shared by rows that come from one source item."""

    source_sha256: Mapped[str] = mapped_column(SHA256, unique=True)


class XrayImage(Timestamped, _FromSource, Base):
    """A radiograph: de-identified file + decoded [0, 1] array, DICOM keywords kept as they are."""

    __tablename__ = "xray_images"
    id: Mapped[int] = mapped_column(primary_key=True)
    encounter_id: Mapped[int] = mapped_column(
        ForeignKey("encounters.id", ondelete="CASCADE"), index=True
    )
    file_blob: Mapped[str] = mapped_column(SHA256)
    pixels_blob: Mapped[str] = mapped_column(SHA256)
    raw_pixel_sha256: Mapped[str] = mapped_column(SHA256, index=True)
    source_format: Mapped[str] = mapped_column(String(16))
    Modality: Mapped[str | None] = mapped_column(String(16))
    ViewPosition: Mapped[str | None] = mapped_column(String(16))
    PhotometricInterpretation: Mapped[str | None] = mapped_column(String(16))
    BitsStored: Mapped[int | None]
    Rows: Mapped[int]
    Columns: Mapped[int]
    PixelSpacing: Mapped[list[Any] | None]
    TransferSyntaxUID: Mapped[str | None] = mapped_column(String(64))
    window_center: Mapped[float | None]
    window_width: Mapped[float | None]
    attributes: Mapped[dict[str, Any]]


class EcgRecord(Timestamped, _FromSource, Base):
    """A 12-lead ECG resampled to a common rate and length, with per-lead quality."""

    __tablename__ = "ecg_records"
    id: Mapped[int] = mapped_column(primary_key=True)
    encounter_id: Mapped[int] = mapped_column(
        ForeignKey("encounters.id", ondelete="CASCADE"), index=True
    )
    signal_blob: Mapped[str] = mapped_column(SHA256)
    source_blobs: Mapped[list[Any]]
    source_format: Mapped[str] = mapped_column(String(16))
    sampling_rate: Mapped[int]
    source_sampling_rate: Mapped[float]
    duration_s: Mapped[float]
    source_duration_s: Mapped[float]
    leads_present: Mapped[list[Any]]
    dropped_leads: Mapped[list[Any]]
    quality_flags: Mapped[dict[str, Any]]
    has_quality_issue: Mapped[bool] = mapped_column(Boolean, default=False)


class ClinicalRecord(Timestamped, _FromSource, Base):
    """Demographics, vitals and labs: one typed column per core schema field, the rest in extras."""

    __tablename__ = "clinical_records"
    id: Mapped[int] = mapped_column(primary_key=True)
    encounter_id: Mapped[int] = mapped_column(
        ForeignKey("encounters.id", ondelete="CASCADE"), index=True
    )
    schema_name: Mapped[str] = mapped_column(String(64))
    age_years: Mapped[float | None]
    sex: Mapped[str | None] = mapped_column(String(16))
    height_cm: Mapped[float | None]
    weight_kg: Mapped[float | None]
    heart_rate_bpm: Mapped[float | None]
    systolic_bp_mmhg: Mapped[float | None]
    diastolic_bp_mmhg: Mapped[float | None]
    respiratory_rate_per_min: Mapped[float | None]
    temperature_c: Mapped[float | None]
    spo2_percent: Mapped[float | None]
    bnp_pg_ml: Mapped[float | None]
    troponin_ng_l: Mapped[float | None]
    wbc_10e9_l: Mapped[float | None]
    crp_mg_l: Mapped[float | None]
    extras: Mapped[dict[str, Any]]
    warnings: Mapped[list[Any]]


class Report(Timestamped, _FromSource, Base):
    """Free text, scrubbed of known identifiers, split into sections."""

    __tablename__ = "reports"
    id: Mapped[int] = mapped_column(primary_key=True)
    encounter_id: Mapped[int] = mapped_column(
        ForeignKey("encounters.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    sections: Mapped[dict[str, Any]]
    encoding: Mapped[str] = mapped_column(String(32))
    language: Mapped[str | None] = mapped_column(String(8))
    scrubbed_count: Mapped[int] = mapped_column(Integer, default=0)


class Label(Timestamped, Base):
    """A finding label: ground truth, report-derived or clinician; all four CheXpert states kept."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    encounter_id: Mapped[int] = mapped_column(
        ForeignKey("encounters.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128), index=True)
    value: Mapped[float | None] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))
    uncertainty: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16))
    vocabulary: Mapped[str] = mapped_column(String(32))
    source_sha256: Mapped[str | None] = mapped_column(SHA256, index=True)
    created_by: Mapped[str | None] = mapped_column(String(128))


class Cohort(Timestamped, Base):
    """A named set of cases (encounters)."""

    __tablename__ = "cohorts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str | None] = mapped_column(Text)


class CohortMember(Base):
    __tablename__ = "cohort_members"
    __table_args__ = (UniqueConstraint("cohort_id", "encounter_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    cohort_id: Mapped[int] = mapped_column(ForeignKey("cohorts.id", ondelete="CASCADE"), index=True)
    encounter_id: Mapped[int] = mapped_column(
        ForeignKey("encounters.id", ondelete="CASCADE"), index=True
    )


class IngestRun(Base):
    """One invocation of ingestion: what it was asked to do and what it did."""

    __tablename__ = "ingest_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")
    command: Mapped[str] = mapped_column(String(64))
    sources: Mapped[list[Any]]
    counts: Mapped[dict[str, Any]]
    code_version: Mapped[str] = mapped_column(String(64))


class QuarantineItem(Timestamped, Base):
    """An input refused with a specific reason; one row per (content, reason)."""

    __tablename__ = "quarantine_items"
    __table_args__ = (UniqueConstraint("sha256", "reason"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ingest_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("ingest_runs.id", ondelete="SET NULL"), index=True
    )
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(SHA256)
    kind: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64), index=True)
    message: Mapped[str] = mapped_column(Text)


class AuditEvent(Base):
    """Who did what, when, with which outcome; chained by a keyed hash (see ``clinic.audit``).

    ``chain_hash`` is an HMAC (key outside the database) over the event's canonical encoding and
    ``prev_hash``, so editing, deleting, inserting or reordering rows breaks the chain even for
    someone who can write to the database. Rows are append-only: triggers refuse UPDATE and DELETE.
    """

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    sequence: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64), index=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(128), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict[str, Any]]
    prev_hash: Mapped[str | None] = mapped_column(SHA256)
    chain_hash: Mapped[str | None] = mapped_column(SHA256)
    key_id: Mapped[str | None] = mapped_column(String(16))


class AuditChainHead(Base):
    """The chain's last sequence number and hash: one row, locked by every appender.

    Updating this row first serialises appenders on both backends (a row lock on PostgreSQL, the
    write lock on SQLite), so two writers can never fork the chain.
    """

    __tablename__ = "audit_chain_head"
    id: Mapped[int] = mapped_column(primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    chain_hash: Mapped[str] = mapped_column(SHA256)
    legacy_max_id: Mapped[int] = mapped_column(BigInteger, default=0)


class User(Timestamped, Base):
    """A person who signs in: clinician, researcher or admin; the password only as a hash."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str | None] = mapped_column(String(128))
    last_login_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class CohortRun(Base):
    """One ``clinic cohort score`` run: what it scored with, how far it got."""

    __tablename__ = "cohort_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    cohort_id: Mapped[int] = mapped_column(ForeignKey("cohorts.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    adapter: Mapped[str | None] = mapped_column(String(128))
    model_key: Mapped[str] = mapped_column(SHA256)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")
    counts: Mapped[dict[str, Any]]
    created_by: Mapped[str] = mapped_column(String(128))


class Prediction(Timestamped, Base):
    """Calibrated findings for one case by one model version, with full lineage.

    ``lineage_hash`` covers the base weights, adapter, preprocessing, calibration, every input
    blob and the code version: the same case scored by the same everything is the same row.
    """

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("encounter_id", "lineage_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    encounter_id: Mapped[int] = mapped_column(
        ForeignKey("encounters.id", ondelete="CASCADE"), index=True
    )
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    adapter: Mapped[str | None] = mapped_column(String(128))
    model_key: Mapped[str] = mapped_column(SHA256, index=True)
    lineage_hash: Mapped[str] = mapped_column(SHA256)
    lineage: Mapped[dict[str, Any]]
    subset: Mapped[str] = mapped_column(String(64))
    findings: Mapped[list[Any]]
    explanations: Mapped[dict[str, Any]]
    created_by: Mapped[str] = mapped_column(String(128))
    cohort_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("cohort_runs.id", ondelete="SET NULL"), index=True
    )
    # Denormalised from ``findings`` so the worklist can filter and sort 10k cases in SQL:
    # the highest non-abstained calibrated probability, and the labels at or above 0.5.
    max_risk: Mapped[float | None] = mapped_column(Float, index=True)
    flagged: Mapped[list[Any]] = mapped_column(default=list)


class Review(Timestamped, Base):
    """A clinician's decision on one finding of one prediction: accept, reject or correct.

    Reviews are append-only history: a later review of the same (case, label) supersedes an
    earlier one without erasing it. ``prediction_id`` survives the prediction being deleted
    (SET NULL) because the decision itself is part of the clinical record.
    """

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    encounter_id: Mapped[int] = mapped_column(
        ForeignKey("encounters.id", ondelete="CASCADE"), index=True
    )
    prediction_id: Mapped[int | None] = mapped_column(
        ForeignKey("predictions.id", ondelete="SET NULL"), index=True
    )
    label: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(16))
    corrected_probability: Mapped[float | None] = mapped_column(Float)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128))


class Embedding(Timestamped, Base):
    """One case's unit embedding in one space (a model version × a modality, or fused)."""

    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("encounter_id", "space"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    encounter_id: Mapped[int] = mapped_column(
        ForeignKey("encounters.id", ondelete="CASCADE"), index=True
    )
    space: Mapped[str] = mapped_column(String(96), index=True)
    model_key: Mapped[str] = mapped_column(SHA256)
    modality: Mapped[str] = mapped_column(String(16))
    dim: Mapped[int]
    vector: Mapped[npt.NDArray[np.float32]] = mapped_column(VectorColumn())
