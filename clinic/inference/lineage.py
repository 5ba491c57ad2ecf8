"""Lineage: the content hashes that pin a prediction to exactly what produced it.

A prediction records the hashes of the base weights, the adapter, the preprocessing, the
calibration map, every input it read and the code version; ``lineage_hash`` is the sha256 of
their canonical encoding, so changing any one of them changes the lineage (and makes a new
prediction row instead of silently reusing an old one).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinic import __version__
from clinic.data.cases import Case

_REPOSITORY = Path(__file__).resolve().parents[2]


def canonical_json(value: object) -> str:
    """Sorted keys, no whitespace: the one encoding hashes are taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def code_version() -> str:
    """``clinic`` version plus the git commit when running from a checkout (``0.1.0+g1a2b3c4``)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(_REPOSITORY), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" if commit else __version__


def directory_hash(directory: Path) -> str:
    """sha256 over every file's relative path and bytes (an adapter folder's identity)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelLineage:
    """Hashes of everything on the model side of a prediction."""

    weights: str
    adapter: str | None
    preprocess: str
    calibration: str
    code_version: str = field(default_factory=code_version)

    @property
    def model_key(self) -> str:
        """Identity of the embedding space: weights, adapter and preprocessing (not calibration,
        which changes probabilities but never embeddings)."""
        return sha256_text(canonical_json([self.weights, self.adapter, self.preprocess]))

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "adapter": self.adapter,
            "preprocess": self.preprocess,
            "calibration": self.calibration,
            "code_version": self.code_version,
        }


def input_hashes(case: Case) -> dict[str, str]:
    """Content hash of every input the model reads for ``case``, by modality."""
    hashes: dict[str, str] = {}
    if case.xray_blob is not None:
        hashes["xray"] = case.xray_blob
    if case.ecg_blob is not None:
        hashes["ecg"] = case.ecg_blob
    if case.record is not None:
        values = {k: None if math.isnan(v) else v for k, v in sorted(case.record.items())}
        hashes["record"] = sha256_text(canonical_json(values))
    if case.report:
        hashes["report"] = sha256_text(case.report)
    return hashes


def prediction_lineage(model: ModelLineage, case: Case) -> dict[str, Any]:
    return {**model.to_json(), "inputs": input_hashes(case)}


def lineage_hash(lineage: Mapping[str, Any]) -> str:
    return sha256_text(canonical_json(dict(lineage)))
