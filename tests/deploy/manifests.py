"""Reading deploy/: YAML documents, env files, Dockerfiles, and the settings the code reads.

Why parse rather than run: no Docker engine, compose plugin or Kubernetes API is available where
the tests run, so the manifests are checked as data. These readers are deliberately small and
strict (a document that is not a mapping, a Dockerfile line that is not an instruction, is an
error), so a broken file fails loudly instead of being skipped.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = (DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.cuda")
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "settings.production.env.example"
# Everything that runs and may read a setting: the package, the batch entry points and Alembic.
CODE_DIRS = ("clinic", "pipelines", "migrations")

# A setting is read through a string literal naming it (``env.get("CLINIC_HOME")``,
# ``USER_VARIABLE = "CLINIC_USER"``). Names end in a letter, which leaves out non-settings such
# as the DICOM implementation version ``"CLINIC_DEID_1"``.
_SETTING_LITERAL = re.compile(r"""["'](CLINIC_[A-Z][A-Z0-9_]*[A-Z])["']""")
_SETTING_NAME = re.compile(r"\bCLINIC_[A-Z][A-Z0-9_]*[A-Z]\b")
_ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
Document = dict[str, Any]


def settings_read_by_code(root: Path = REPO) -> frozenset[str]:
    """Every ``CLINIC_*`` name the code under ``root`` reads (string literals in ``.py`` files)."""
    names: set[str] = set()
    for folder in CODE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            names.update(_SETTING_LITERAL.findall(path.read_text(encoding="utf-8")))
    return frozenset(names)


def settings_named_in(text: str) -> frozenset[str]:
    """Every ``CLINIC_*`` name mentioned anywhere in ``text`` (values, keys, comments)."""
    return frozenset(_SETTING_NAME.findall(text))


def load_yaml_documents(text: str, source: str = "<text>") -> list[Document]:
    """The non-empty documents of a YAML stream; each must be a mapping."""
    documents: list[Document] = []
    for document in yaml.safe_load_all(text):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ValueError(f"{source}: a document is a {type(document).__name__}, not a mapping")
        documents.append(document)
    return documents


def read_yaml(path: Path) -> list[Document]:
    return load_yaml_documents(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))


def deploy_yaml_files() -> list[Path]:
    """Every YAML file under deploy/ (the compose file and all Kubernetes manifests)."""
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def k8s_manifest_files() -> list[Path]:
    """Kubernetes resources: every YAML file under deploy/k8s except the kustomization."""
    return [p for p in deploy_yaml_files() if K8S in p.parents and p.name != "kustomization.yaml"]


def k8s_resources(files: Iterable[Path] | None = None) -> list[Document]:
    return [doc for path in (files or k8s_manifest_files()) for doc in read_yaml(path)]


def of_kind(resources: Iterable[Document], kind: str) -> list[Document]:
    return [resource for resource in resources if resource.get("kind") == kind]


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines as compose's ``env_file`` reads them (comments and blanks skipped)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if match is None:
            raise ValueError(f"line {number} is not KEY=value: {raw!r}")
        key, value = match.groups()
        if key in values:
            raise ValueError(f"line {number}: {key} is set twice")
        values[key] = value
    return values


def pyproject_pin(package: str) -> str:
    """The exact ``==`` version pyproject.toml pins ``package`` to."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for requirement in project["dependencies"]:
        name, _, version = str(requirement).partition("==")
        if name.strip() == package and version:
            return version.strip()
    raise LookupError(f"{package} is not pinned with == in pyproject.toml")


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction; ``stage`` counts FROM lines (-1 before the first)."""

    keyword: str
    arguments: str
    stage: int

    def exec_form(self) -> list[str] | None:
        """The JSON-array form of CMD/ENTRYPOINT/RUN/HEALTHCHECK CMD, or None for shell form."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            _, _, text = text.partition(" CMD ")
        try:
            value = json.loads(text.strip())
        except json.JSONDecodeError:
            return None
        return [str(item) for item in value] if isinstance(value, list) else None


KEYWORDS = frozenset(
    [
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    ]
)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; an unknown keyword is an error."""
    instructions: list[Instruction] = []
    stage = -1
    for logical in _logical_lines(text):
        keyword, _, arguments = logical.partition(" ")
        keyword = keyword.upper()
        if keyword not in KEYWORDS:
            raise ValueError(f"not a Dockerfile instruction: {logical[:60]!r}")
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, arguments.strip(), stage))
    return instructions


def _logical_lines(text: str) -> Iterator[str]:
    """Join ``\\``-continued lines; comment lines (also inside a continuation) are dropped."""
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        yield " ".join(pending)
        pending = []
    if pending:
        raise ValueError("the last instruction ends with a line continuation")


def dockerfile_args(instructions: Iterable[Instruction]) -> dict[str, str]:
    """``ARG NAME=default`` values (the last one wins, as in a build without --build-arg)."""
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, _, default = instruction.arguments.partition("=")
            values[name.strip()] = default.strip()
    return values


def dockerignore_allows(patterns: list[str], path: str) -> bool:
    """Whether ``path`` (relative, ``/``-separated) stays in the build context.

    Docker's rule: the last pattern matching the path or one of its parent folders decides, and
    a ``!`` pattern re-includes. ``**/`` matches any depth, including none.
    """
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if any(_glob_matches(body, candidate) for candidate in candidates):
            included = negated
    return included


def _glob_matches(pattern: str, path: str) -> bool:
    pattern = pattern.strip("/")
    if pattern.startswith("**/"):
        rest = pattern[3:]
        tails = ["/".join(path.split("/")[i:]) for i in range(path.count("/") + 1)]
        return any(_glob_matches(rest, tail) for tail in tails)
    if pattern.count("/") != path.count("/"):
        return False
    return all(fnmatchcase(p, g) for p, g in zip(path.split("/"), pattern.split("/"), strict=True))


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
