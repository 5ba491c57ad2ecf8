"""The importer registry: CLI names, and a clear error for unknown ones."""

from __future__ import annotations

import pytest

from clinic.ingest.importers import IMPORTERS, UnknownImporterError, get_importer

CLI_NAMES = {"ptbxl", "hannover", "iu", "heart-disease", "mimic-cxr", "chexpert"}


def test_registry_has_every_cli_name() -> None:
    assert set(IMPORTERS) == CLI_NAMES
    assert all(callable(importer) for importer in IMPORTERS.values())
    assert get_importer("PTBXL") is IMPORTERS["ptbxl"]


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownImporterError) as raised:
        get_importer("mimic")
    message = str(raised.value)
    assert "mimic" in message and all(name in message for name in CLI_NAMES)
    with pytest.raises(KeyError):
        IMPORTERS["nope"]
