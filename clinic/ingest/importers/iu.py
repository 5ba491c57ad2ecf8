"""Indiana University chest X-ray reports (Open-i): ``indiana_reports.csv`` (+ projections).

IU identifies a study (``uid``) and nothing about its patient, so each study is its own patient:
``patient_key = encounter_key = "iu" + uid``. Per report row:

* REPORT (kind "radiology", English): ``INDICATION/COMPARISON/FINDINGS/IMPRESSION`` lines built
  from the non-empty columns (the de-identification mask ``XXXX`` is kept as it is). The free-text
  exam description (``image``) and, from ``indiana_projections.csv`` when present, the image
  file names and their views are kept in ``fields``. A report whose four text columns are all
  empty is still yielded (with empty text) so the engine quarantines it as ``REPORT_EMPTY``.
* LABELS (source report-derived: MeSH terms were assigned by coders reading the report):
  ``iu_mesh`` labels named by the MeSH heading (the text before the first ``/``); the qualifiers
  (``Opacity/lung/apex/left``) are not label names (they would explode the vocabulary) but are kept
  in the item's ``fields["mesh_qualifiers"]`` per heading. ``iu_problems`` labels come from the
  ``Problems`` column. "normal" stays a label named "normal"; "No Indexing" means the report was
  not coded, so that study gets no labels and ``fields["indexed"] = False``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from clinic.ingest.importers._common import (
    Builder,
    RowError,
    find_table,
    items_per_row,
    parse_id,
    read_rows,
    require_dir,
    require_table,
)
from clinic.ingest.types import IngestItem, ItemKind, LabelIn, LabelSource, LabelState, ReportKind

DATASET = "iu"
MESH_VOCABULARY = "iu_mesh"
PROBLEMS_VOCABULARY = "iu_problems"
NOT_INDEXED = "no indexing"
SECTIONS: tuple[tuple[str, str], ...] = (
    ("INDICATION", "indication"),
    ("COMPARISON", "comparison"),
    ("FINDINGS", "findings"),
    ("IMPRESSION", "impression"),
)
_REQUIRED = ("uid", "MeSH", "Problems", "indication", "comparison", "findings", "impression")


@dataclass(frozen=True)
class _Views:
    """Image file names and their views (Frontal/Lateral) for one study."""

    files: list[str] = field(default_factory=list)
    projections: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Row:
    """One report row with its key resolved and its projections attached."""

    source: str
    values: Mapping[str, str]
    key: str
    views: _Views


def import_iu(root: Path) -> Iterator[IngestItem]:
    """REPORT and LABELS items for every row of ``root/indiana_reports.csv``."""
    require_dir(root, DATASET)
    reports = require_table(root, "indiana_reports", DATASET)
    projections = find_table(root, "indiana_projections")
    views = load_views(projections) if projections is not None else {}
    return _iter_items(reports, read_rows(reports, _REQUIRED, DATASET), views)


def load_views(path: Path) -> dict[str, _Views]:
    """uid → the study's image files and projections, in file order."""
    views: dict[str, _Views] = {}
    for _, row in read_rows(path, ("uid", "filename", "projection"), DATASET):
        try:
            uid = parse_id(row["uid"], "uid")
        except RowError:
            continue  # an unusable projection row only loses view metadata
        entry = views.setdefault(uid, _Views())
        entry.files.append(row["filename"])
        entry.projections.append(row["projection"])
    return views


def _iter_items(
    reports: Path, rows: Iterator[tuple[int, dict[str, str]]], views: Mapping[str, _Views]
) -> Iterator[IngestItem]:
    """A REPORT and a LABELS item per row; a row without uid yields one error item."""
    builders: list[Builder[_Row]] = [
        (ItemKind.REPORT, report_item),
        (ItemKind.LABELS, labels_item),
    ]

    def resolve(source: str, values: dict[str, str]) -> _Row:
        uid = parse_id(values["uid"], "uid")
        return _Row(source, values, "iu" + uid, views.get(uid, _Views()))

    yield from items_per_row(reports, rows, resolve, builders, _keys)


def _keys(row: _Row) -> tuple[str | None, str | None]:
    return row.key, row.key


def report_text(values: Mapping[str, str]) -> str:
    """``SECTION: text`` lines for the non-empty report columns, in reading order."""
    lines = [
        f"{title}: {values.get(column, '').strip()}"
        for title, column in SECTIONS
        if values.get(column, "").strip()
    ]
    return "\n".join(lines)


def report_item(row: _Row) -> IngestItem:
    """The radiology report with its exam description and image views."""
    fields: dict[str, object] = {"report_kind": ReportKind.RADIOLOGY.value, "language": "en"}
    examination = row.values.get("image", "")
    if examination:
        fields["examination"] = examination
    if row.views.files:
        fields["image_files"] = list(row.views.files)
        fields["views"] = list(row.views.projections)
    return IngestItem(
        kind=ItemKind.REPORT,
        source=row.source,
        text=report_text(row.values),
        patient_key=row.key,
        encounter_key=row.key,
        fields=fields,
    )


def split_terms(raw: str) -> list[str]:
    """``a;b/c;;d`` → ``["a", "b/c", "d"]`` (blank entries dropped, whitespace trimmed)."""
    return [term.strip() for term in raw.split(";") if term.strip()]


def mesh_headings(raw: str) -> dict[str, list[str]]:
    """MeSH heading → its qualifiers, in first-seen order (headings repeat with new qualifiers)."""
    headings: dict[str, list[str]] = {}
    for term in split_terms(raw):
        heading, *qualifiers = (part.strip() for part in term.split("/"))
        if heading and heading.lower() != NOT_INDEXED:
            kept = headings.setdefault(heading, [])
            qualifier = "/".join(part for part in qualifiers if part)
            if qualifier and qualifier not in kept:
                kept.append(qualifier)
    return headings


def _positive(name: str, vocabulary: str) -> LabelIn:
    """A coded finding: present, taken from the report by a human coder."""
    return LabelIn(
        name=name,
        value=1.0,
        state=LabelState.POSITIVE,
        source=LabelSource.REPORT_DERIVED,
        vocabulary=vocabulary,
    )


def labels_item(row: _Row) -> IngestItem:
    """MeSH headings and Problems as positive labels; nothing for unindexed reports."""
    mesh = mesh_headings(row.values["MeSH"])
    problems = dict.fromkeys(
        term for term in split_terms(row.values["Problems"]) if term.lower() != NOT_INDEXED
    )
    labels = tuple(_positive(name, MESH_VOCABULARY) for name in mesh) + tuple(
        _positive(name, PROBLEMS_VOCABULARY) for name in problems
    )
    fields: dict[str, object] = {"indexed": bool(mesh or problems)}
    qualifiers = {heading: kept for heading, kept in mesh.items() if kept}
    if qualifiers:
        fields["mesh_qualifiers"] = qualifiers
    return IngestItem(
        kind=ItemKind.LABELS,
        source=row.source,
        patient_key=row.key,
        encounter_key=row.key,
        fields=fields,
        labels=labels,
    )
