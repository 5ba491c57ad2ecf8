"""Small builders for ingestion tests: real files copied into a folder, store inspection."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import func, select

from clinic.store.models import (
    ClinicalRecord,
    EcgRecord,
    Report,
    XrayImage,
)
from clinic.store.store import Store


def copy_ptbxl_records(shared_data: Path, target: Path, count: int) -> list[Path]:
    """Copy the first ``count`` 500 Hz PTB-XL records (header + data); return the headers."""
    headers = sorted((shared_data / "ptbxl" / "records500").rglob("*.hea"))[:count]
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for header in headers:
        for file in header.parent.glob(header.stem + ".*"):
            shutil.copy(file, target / file.name)
        copied.append(target / header.name)
    return copied


def referenced_blobs(store: Store) -> set[str]:
    """Every blob hash a row points at."""
    with store.session() as session:
        hashes: set[str] = set()
        for file_blob, pixels_blob in session.execute(
            select(XrayImage.file_blob, XrayImage.pixels_blob)
        ):
            hashes.update((file_blob, pixels_blob))
        for signal_blob, source_blobs in session.execute(
            select(EcgRecord.signal_blob, EcgRecord.source_blobs)
        ):
            hashes.add(signal_blob)
            hashes.update(source_blobs)
    return hashes


def modality_counts(store: Store) -> dict[str, int]:
    with store.session() as session:
        return {
            model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (XrayImage, EcgRecord, ClinicalRecord, Report)
        }
