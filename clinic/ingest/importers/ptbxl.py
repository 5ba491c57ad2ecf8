"""PTB-XL: ``ptbxl_database.csv`` + ``scp_statements.csv`` + WFDB records → ingestion items.

Per database row (one ECG) four items share ``patient_key = patient_id`` and
``encounter_key = "ecg" + ecg_id`` and ``split = str(strat_fold)``:

* ECG: the 500 Hz record (``filename_hr``) when its files are there, else the 100 Hz one
  (``filename_lr``). When neither record is present the item still points at the expected 500 Hz
  ``.hea`` path, so the engine quarantines the row as ``MANIFEST_FILE_MISSING`` instead of the ECG
  silently disappearing from the counts.
* RECORD: age (capped at 90, see :func:`~clinic.ingest.importers._common.cap_age`; PTB-XL stores
  ages over 89 as the sentinel 300), sex (0 = male, 1 = female), height, weight, heart axis and
  infarction stadia as extras. ``recording_date``, ``nurse``, ``site`` and ``validated_by`` are
  dropped: a date and staff/site identifiers are not needed for modelling and only add PHI risk.
* REPORT: the free-text report (mostly German, some English and Swedish), report kind "ecg".
* LABELS: one ``scp`` label per SCP-ECG statement, and the five diagnostic superclasses.

SCP likelihoods: PTB-XL gives 15/35/50/80/100 for diagnostic statements and 0 where no likelihood
was recorded (all rhythm and most form statements). A statement is present either way, so it is a
positive label; its ``uncertainty`` is ``1 - likelihood/100``, or None when the likelihood is 0
(unknown, *not* "certainly absent").
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from clinic.ingest.errors import ReasonCode
from clinic.ingest.importers._common import (
    Builder,
    RowError,
    age_fields,
    is_missing,
    items_per_row,
    layout_error,
    map_sex,
    parse_bool,
    parse_float,
    parse_id,
    read_rows,
    require_dir,
    require_table,
)
from clinic.ingest.types import (
    IngestItem,
    ItemKind,
    LabelIn,
    LabelSource,
    LabelState,
    ReportKind,
)
from schemas.labels import PTBXL_SUPERCLASSES

DATASET = "ptbxl"
SUPERCLASSES: tuple[str, ...] = PTBXL_SUPERCLASSES
SCP_VOCABULARY = "scp"
SUPERCLASS_VOCABULARY = "ptbxl_superclass"
_SEX = {"0": "male", "0.0": "male", "1": "female", "1.0": "female"}
_MAX_SCP_TEXT = 10_000
_ECG_NOTE_COLUMNS = (
    "baseline_drift",
    "static_noise",
    "burst_noise",
    "electrodes_problems",
    "extra_beats",
    "pacemaker",
)
_REQUIRED = ("ecg_id", "patient_id", "scp_codes", "strat_fold", "filename_lr", "filename_hr")


@dataclass(frozen=True)
class _Row:
    """One database row with its keys resolved (the parts every item needs)."""

    root: Path
    source: str
    values: Mapping[str, str]
    patient_key: str
    encounter_key: str
    split: str | None


def import_ptbxl(root: Path) -> Iterator[IngestItem]:
    """Items for every row of ``root/ptbxl_database.csv`` (layout checked before iterating)."""
    require_dir(root, DATASET)
    database = require_table(root, "ptbxl_database", DATASET)
    statements = require_table(root, "scp_statements", DATASET)
    superclass_of = load_superclass_map(statements)
    rows = read_rows(database, _REQUIRED, DATASET)
    return _iter_items(root, database, rows, superclass_of)


def load_superclass_map(statements: Path) -> dict[str, str]:
    """SCP code → diagnostic superclass, for statements flagged ``diagnostic == 1`` only.

    The code is the table's first (unnamed) column, as PTB-XL ships it.
    """
    mapping: dict[str, str] = {}
    for _, row in read_rows(statements, ("diagnostic", "diagnostic_class"), DATASET):
        code = next(iter(row.values()), "")
        try:
            diagnostic = parse_float(row["diagnostic"], "diagnostic")
        except RowError:
            raise layout_error(DATASET, "scp_statements has a non-numeric flag") from None
        superclass = row["diagnostic_class"]
        if code and diagnostic == 1.0 and not is_missing(superclass):
            mapping[code] = superclass
    return mapping


def _iter_items(
    root: Path,
    database: Path,
    rows: Iterator[tuple[int, dict[str, str]]],
    superclass_of: Mapping[str, str],
) -> Iterator[IngestItem]:
    """Four items per row; a row without usable ids yields one error item instead."""
    builders: list[Builder[_Row]] = [
        (ItemKind.ECG, ecg_item),
        (ItemKind.RECORD, record_item),
        (ItemKind.REPORT, report_item),
        (ItemKind.LABELS, partial(labels_item, superclass_of=superclass_of)),
    ]
    resolve = partial(_resolve_row, root)
    yield from items_per_row(database, rows, resolve, builders, _keys)


def _keys(row: _Row) -> tuple[str | None, str | None]:
    return row.patient_key, row.encounter_key


def _resolve_row(root: Path, source: str, values: Mapping[str, str]) -> _Row:
    """Keys and split of one row; a :class:`RowError` when an id is missing or malformed."""
    patient_key = parse_id(values["patient_id"], "patient_id")
    encounter_key = "ecg" + parse_id(values["ecg_id"], "ecg_id")
    fold = values["strat_fold"]
    split = None if is_missing(fold) else parse_id(fold, "strat_fold")
    return _Row(root, source, values, patient_key, encounter_key, split)


def choose_record(root: Path, filename_hr: str, filename_lr: str) -> tuple[Path, str]:
    """The ``.hea`` path to ingest and which record it is ("hr" or "lr").

    Prefer a complete record (header and data file), 500 Hz first; then any record whose header
    exists (the engine reports the missing data file precisely); else the expected 500 Hz header,
    which the engine quarantines as missing.
    """
    candidates = [(name, tag) for name, tag in ((filename_hr, "hr"), (filename_lr, "lr")) if name]
    for name, _ in candidates:
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise RowError(ReasonCode.IMPORT_ROW_INVALID, "record file name leaves the dataset")
    headers = [(root / f"{name}.hea", root / f"{name}.dat", tag) for name, tag in candidates]
    for header, data, tag in headers:
        if header.is_file() and data.is_file():
            return header, tag
    for header, _, tag in headers:
        if header.is_file():
            return header, tag
    if not headers:
        raise RowError(ReasonCode.IMPORT_ROW_INVALID, "row names no record file")
    return headers[0][0], headers[0][2]


def ecg_item(row: _Row) -> IngestItem:
    """The waveform item: record path plus non-identifying acquisition notes."""
    values = row.values
    header, tag = choose_record(row.root, values["filename_hr"], values["filename_lr"])
    fields: dict[str, object] = {"record_resolution": tag}
    if row.split is not None:
        fields["strat_fold"] = int(row.split)
    device = values.get("device", "")
    if not is_missing(device):
        fields["device"] = " ".join(device.split())
    for column in _ECG_NOTE_COLUMNS:
        note = values.get(column, "").strip(" ,")
        if note and not is_missing(note):
            fields[column] = note
    return IngestItem(
        kind=ItemKind.ECG,
        source=str(header),
        path=header,
        patient_key=row.patient_key,
        encounter_key=row.encounter_key,
        fields=fields,
        split=row.split,
    )


def record_item(row: _Row) -> IngestItem:
    """Demographics and body measures; extras for the cardiology annotations."""
    values = row.values
    fields: dict[str, object] = age_fields(values.get("age", ""), "age")
    fields["sex"] = map_sex(values.get("sex", ""), _SEX)
    fields["height_cm"] = parse_float(values.get("height", ""), "height")
    fields["weight_kg"] = parse_float(values.get("weight", ""), "weight")
    for column in ("heart_axis", "infarction_stadium1", "infarction_stadium2"):
        text = values.get(column, "")
        if not is_missing(text):
            fields[column] = text
    return IngestItem(
        kind=ItemKind.RECORD,
        source=row.source,
        patient_key=row.patient_key,
        encounter_key=row.encounter_key,
        fields=fields,
        split=row.split,
    )


def report_item(row: _Row) -> IngestItem:
    """The ECG report text, with a crude language tag and PTB-XL's validation flags."""
    values = row.values
    text = values.get("report", "")
    fields: dict[str, object] = {"report_kind": ReportKind.ECG.value}
    language = detect_language(text)
    if language is not None:
        fields["language"] = language
    for column in ("validated_by_human", "second_opinion", "initial_autogenerated_report"):
        flag = parse_bool(values.get(column, ""), column)
        if flag is not None:
            fields[column] = flag
    return IngestItem(
        kind=ItemKind.REPORT,
        source=row.source,
        text=text,
        patient_key=row.patient_key,
        encounter_key=row.encounter_key,
        fields=fields,
        split=row.split,
    )


def labels_item(row: _Row, superclass_of: Mapping[str, str]) -> IngestItem:
    """SCP statements as labels, plus a positive or negative row for each superclass."""
    codes = parse_scp_codes(row.values["scp_codes"])
    labels = scp_labels(codes) + superclass_labels(codes, superclass_of)
    return IngestItem(
        kind=ItemKind.LABELS,
        source=row.source,
        patient_key=row.patient_key,
        encounter_key=row.encounter_key,
        labels=labels,
        split=row.split,
    )


def parse_scp_codes(raw: str) -> dict[str, float]:
    """``"{'NORM': 100.0, 'SR': 0.0}"`` → ``{"NORM": 100.0, "SR": 0.0}``, safely.

    Only a dict literal of string keys to numbers in [0, 100] is accepted: the text is parsed as an
    expression and checked to be a dict node before :func:`ast.literal_eval` sees it.
    """
    invalid = RowError(ReasonCode.IMPORT_LABELS_INVALID, "scp_codes is not a code→likelihood dict")
    if is_missing(raw):
        return {}
    if len(raw) > _MAX_SCP_TEXT:
        raise invalid
    try:
        node = ast.parse(raw, mode="eval")
        if not isinstance(node.body, ast.Dict):
            raise invalid
        parsed = ast.literal_eval(node.body)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        raise invalid from None
    codes: dict[str, float] = {}
    for code, likelihood in parsed.items():
        if not isinstance(code, str) or isinstance(likelihood, bool):
            raise invalid
        if not isinstance(likelihood, int | float) or not 0.0 <= likelihood <= 100.0:
            raise invalid
        codes[code.strip()] = float(likelihood)
    return codes


def likelihood_uncertainty(likelihood: float) -> float | None:
    """``1 - likelihood/100``; None for PTB-XL's 0, which means "no likelihood recorded"."""
    if likelihood <= 0.0 or math.isnan(likelihood):
        return None
    return round(1.0 - likelihood / 100.0, 6)


def scp_labels(codes: Mapping[str, float]) -> tuple[LabelIn, ...]:
    """One positive ground-truth label per SCP statement present in the row."""
    return tuple(
        LabelIn(
            name=code,
            value=1.0,
            state=LabelState.POSITIVE,
            uncertainty=likelihood_uncertainty(likelihood),
            source=LabelSource.GROUND_TRUTH,
            vocabulary=SCP_VOCABULARY,
        )
        for code, likelihood in codes.items()
    )


def superclass_labels(
    codes: Mapping[str, float], superclass_of: Mapping[str, str]
) -> tuple[LabelIn, ...]:
    """The five superclasses: positive when any diagnostic code maps to it, else negative.

    As in the PTB-XL reference code every listed code counts, whatever its likelihood; the
    positive row's uncertainty is the smallest known uncertainty among its codes (None if none
    is known).
    """
    uncertainties: dict[str, list[float | None]] = {name: [] for name in SUPERCLASSES}
    for code, likelihood in codes.items():
        superclass = superclass_of.get(code)
        if superclass in uncertainties:
            uncertainties[superclass].append(likelihood_uncertainty(likelihood))
    labels: list[LabelIn] = []
    for name in SUPERCLASSES:
        found = uncertainties[name]
        known = [value for value in found if value is not None]
        labels.append(
            LabelIn(
                name=name,
                value=1.0 if found else 0.0,
                state=LabelState.POSITIVE if found else LabelState.NEGATIVE,
                uncertainty=min(known) if known else None,
                source=LabelSource.GROUND_TRUTH,
                vocabulary=SUPERCLASS_VOCABULARY,
            )
        )
    return tuple(labels)


_LANGUAGE_MARKERS: dict[str, tuple[str, ...]] = {
    "de": (
        "sinusrhythmus", "normales", "ekg", "lagetyp", "linkstyp", "steiltyp", "sonst", "und",
        "mit", "nicht", "periphere", "niederspannung", "befund", "verdacht", "vorhof*",
        "unvollst*", "*schenkelblock", "*hypertrophie", "*infarkt", "arrhythmie",
    ),
    "en": (
        "sinus rhythm", "normal ecg", "the", "and", "with", "of", "no", "definite", "possible",
        "probable", "abnormal", "consider", "left", "right", "wave", "waves", "ventricular",
        "trace", "only", "requested", "this", "is", "are", "may", "due", "sinus arrhythmia",
    ),
    "sv": (
        "sinusrytm", "normalt", "och", "med", "ej", "vänster", "höger", "förmak*", "kammar*",
        "avvikande", "*skänkelblock", "*hypertrofi", "ospecifik*", "*förändring",
    ),
}  # fmt: skip
_WORD = re.compile(r"[^\W\d_]+")


def _marker_hits(marker: str, lowered: str, words: list[str]) -> int:
    """Occurrences of one marker: a phrase (substring), a word, or a ``*``-wildcard stem."""
    if " " in marker:
        return lowered.count(marker)
    if marker.startswith("*"):
        return sum(word.endswith(marker[1:]) for word in words)
    if marker.endswith("*"):
        return sum(word.startswith(marker[:-1]) for word in words)
    return words.count(marker)


def detect_language(text: str) -> str | None:
    """A crude language tag ("de", "en", "sv") from marker words; None when nothing matches.

    PTB-XL reports are short and formulaic, so counting a few marker words per language is enough
    to route text to the right tokenizer and section splitter; it is not general identification.
    """
    lowered = text.lower()
    words = _WORD.findall(lowered)
    scores = {
        language: sum(_marker_hits(marker, lowered, words) for marker in markers)
        for language, markers in _LANGUAGE_MARKERS.items()
    }
    best = max(scores, key=lambda language: scores[language])
    return best if scores[best] > 0 else None
