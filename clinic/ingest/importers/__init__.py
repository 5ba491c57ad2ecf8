"""Importers: public dataset layouts → :class:`~clinic.ingest.types.IngestItem` streams.

An importer is ``(root: Path) -> Iterator[IngestItem]``: it checks the layout at once (raising
:class:`~clinic.ingest.errors.IngestError` with ``IMPORT_LAYOUT_INVALID`` when the root is not that
source) and then yields one item per file or table row, lazily. It never decodes files: a file
that a row names but that is absent is still yielded with its expected path, so the engine
records it (``MANIFEST_FILE_MISSING``) instead of the row silently vanishing. A row that cannot be
turned into an item is yielded as an *error item* flagged with the engine's refusal field, which
the engine quarantines under the reason it carries (:func:`import_error_of` reads it back).

:data:`IMPORTERS` maps the CLI names to importers; :func:`get_importer` (or indexing
:data:`IMPORTERS` with an unknown name) raises :class:`UnknownImporterError` listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from clinic.ingest.importers._common import import_error_of
from clinic.ingest.importers.chexpert import import_chexpert
from clinic.ingest.importers.hannover import import_hannover
from clinic.ingest.importers.heart_disease import import_heart_disease
from clinic.ingest.importers.iu import import_iu
from clinic.ingest.importers.mimic_cxr import import_mimic_cxr
from clinic.ingest.importers.ptbxl import import_ptbxl
from clinic.ingest.types import IngestItem

Importer = Callable[[Path], Iterator[IngestItem]]


class UnknownImporterError(KeyError):
    """An importer name that is not registered; the message lists the registered ones."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown importer {self.name!r}; known importers: {', '.join(self.known)}"


class _Registry(dict[str, Importer]):
    """A name → importer mapping whose missing-key error says which names exist."""

    def __missing__(self, name: str) -> Importer:
        raise UnknownImporterError(name, sorted(self))


IMPORTERS: dict[str, Importer] = _Registry(
    {
        "ptbxl": import_ptbxl,
        "hannover": import_hannover,
        "iu": import_iu,
        "heart-disease": import_heart_disease,
        "mimic-cxr": import_mimic_cxr,
        "chexpert": import_chexpert,
    }
)


def get_importer(name: str) -> Importer:
    """The importer registered under ``name`` (CLI spelling), or :class:`UnknownImporterError`."""
    return IMPORTERS[name.strip().lower()]


__all__ = [
    "IMPORTERS",
    "Importer",
    "UnknownImporterError",
    "get_importer",
    "import_chexpert",
    "import_error_of",
    "import_hannover",
    "import_heart_disease",
    "import_iu",
    "import_mimic_cxr",
    "import_ptbxl",
]
