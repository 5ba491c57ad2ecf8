"""What readers return and what the ingestion engine consumes.

Readers are pure functions: a file (or bytes) in, one of the ``Decoded*`` values out, or an
:class:`~clinic.ingest.errors.IngestError`. Importers and manifests produce :class:`IngestItem`
values; the engine decodes them in worker processes and writes each one atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)  # fmt: skip


class ItemKind(StrEnum):
    """The modality (or table) one ingestion item carries."""

    XRAY = "xray"
    ECG = "ecg"
    REPORT = "report"
    RECORD = "record"
    LABELS = "labels"


class ReportKind(StrEnum):
    RADIOLOGY = "radiology"
    ECG = "ecg"
    CLINICAL_NOTE = "clinical_note"


class LabelSource(StrEnum):
    GROUND_TRUTH = "ground_truth"
    REPORT_DERIVED = "report_derived"
    CLINICIAN = "clinician"


class LabelState(StrEnum):
    """CheXpert-style four states, kept as they arrive; policy is chosen at training time."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNCERTAIN = "uncertain"
    NOT_MENTIONED = "not_mentioned"


@dataclass(frozen=True)
class LabelIn:
    """One label attached to an encounter.

    ``value`` is 1.0/0.0 for binary findings (or a graded value), None when unknown;
    ``uncertainty`` in [0, 1] where the source gives one (PTB-XL: 1 - likelihood/100).
    """

    name: str
    value: float | None
    state: LabelState = LabelState.POSITIVE
    uncertainty: float | None = None
    source: LabelSource = LabelSource.GROUND_TRUTH
    vocabulary: str = "clinic"


@dataclass(frozen=True)
class IngestItem:
    """One unit of ingestion: a file or an inline row, linked to a patient and encounter.

    ``patient_key`` / ``encounter_key`` are *source* identifiers (PHI); the engine replaces them
    with keyed pseudonyms before anything is stored. When ``patient_key`` is None for a DICOM
    file the header's PatientID is used. ``source`` is a human-readable locator used in
    quarantine rows (a path, or ``file.csv#row=12``). ``fields`` carries per-kind extras:
    record fields, report kind, X-ray/ECG attribute overrides (e.g. ViewPosition), the split.
    """

    kind: ItemKind
    source: str
    path: Path | None = None
    text: str | None = None
    patient_key: str | None = None
    encounter_key: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    labels: tuple[LabelIn, ...] = ()
    split: str | None = None
    acquired_offset_days: float | None = None


@dataclass(frozen=True)
class SourceIdentity:
    """Identifiers read from a file header *before* de-identification, used only for linking."""

    patient_id: str | None = None
    study_uid: str | None = None
    study_date: str | None = None  # YYYYMMDD as in DICOM
    patient_sex: str | None = None
    patient_age_years: float | None = None


@dataclass(frozen=True)
class DecodedXray:
    """A radiograph ready for the store.

    ``pixels``: (H, W) float32 in [0, 1] as displayed (MONOCHROME1 inverted, window applied).
    ``raw_sha256``: sha256 of the raw stored pixel array bytes (before any LUT) — a content key for
    the image independent of header edits. ``attributes``: DICOM keywords kept as they are
    (Modality, ViewPosition, PhotometricInterpretation, BitsStored, PixelSpacing, Rows, Columns,
    TransferSyntaxUID, ...), JSON-serialisable values only. ``window``: (center, width) applied,
    None when the full range was used.
    """

    pixels: npt.NDArray[np.float32]
    raw_sha256: str
    source_format: str  # "dicom" | "png" | "jpeg"
    attributes: dict[str, Any]
    window: tuple[float, float] | None
    identity: SourceIdentity = field(default_factory=SourceIdentity)


@dataclass(frozen=True)
class DecodedEcg:
    """A standardised 12-lead ECG.

    ``signal``: (12, n) float32 in mV, leads in :data:`STANDARD_LEADS` order, at
    ``sampling_rate`` Hz, exactly ``duration_s`` long; masked leads are all zeros (never NaN).
    ``lead_mask``: (12,) bool, True where the lead is usable. ``quality_flags``: lead name →
    flags among "nan", "flat", "clipped". ``dropped_leads``: extra source leads not kept.
    """

    signal: npt.NDArray[np.float32]
    sampling_rate: int
    lead_mask: npt.NDArray[np.bool_]
    quality_flags: dict[str, list[str]]
    source_sampling_rate: float
    source_duration_s: float
    source_format: str  # "wfdb" | "dicom"
    source_leads: list[str]
    dropped_leads: list[str]
    identity: SourceIdentity = field(default_factory=SourceIdentity)

    @property
    def duration_s(self) -> float:
        return float(self.signal.shape[1]) / float(self.sampling_rate)
