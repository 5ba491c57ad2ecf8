"""Dependencies point one way: schemas ← store ← ingest; nothing imports cli or pipelines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(package: str) -> dict[str, set[str]]:
    """Module file → the absolute module names it imports."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{file} imports {name}"
        for file, names in imported_modules(package).items()
        for name in names
        if name.startswith(forbidden)
    ]


def test_schemas_import_neither_store_nor_frameworks() -> None:
    assert offenders("schemas", ("clinic", "sqlalchemy", "torch", "pipelines")) == []


def test_store_does_not_import_ingestion_or_interfaces() -> None:
    forbidden = ("clinic.ingest", "clinic.cli", "clinic.synth", "pipelines")
    assert offenders("clinic/store", forbidden) == []


def test_nothing_in_the_platform_imports_cli_or_pipelines() -> None:
    problems = [
        problem
        for problem in offenders("clinic", ("clinic.cli", "pipelines"))
        if not problem.startswith("clinic/cli/")
    ]
    assert problems == []


def test_data_and_models_do_not_import_training_or_benchmarks() -> None:
    forbidden = ("clinic.train", "clinic.benchmarks", "clinic.ingest.engine")
    assert offenders("clinic/data", forbidden) + offenders("clinic/models", forbidden) == []


def test_the_command_line_starts_without_the_model_stack() -> None:
    """Ingest and status commands must not pay for importing torch and transformers."""
    import subprocess
    import sys

    code = "import sys, clinic.cli.main; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
