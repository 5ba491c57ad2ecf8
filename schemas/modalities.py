"""The four modalities of a case, in the one canonical order every model and report uses.

Subsets of modalities are named by joining the present ones in this order with ``+``
(``"xray+ecg"``), so a name means the same subset wherever it appears.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import combinations
from typing import Final, Literal

Modality = Literal["xray", "ecg", "record", "report"]
MODALITIES: Final[tuple[Modality, ...]] = ("xray", "ecg", "record", "report")


def subset_name(present: Iterable[str]) -> str:
    """Canonical name of a modality subset; an unknown modality name is an error."""
    chosen = set(present)
    unknown = chosen - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; known: {list(MODALITIES)}")
    if not chosen:
        raise ValueError("a modality subset needs at least one modality")
    return "+".join(m for m in MODALITIES if m in chosen)


def parse_subset(name: str) -> tuple[Modality, ...]:
    """Inverse of :func:`subset_name`: ``"ecg+xray"`` → ``("xray", "ecg")`` (canonical order)."""
    return tuple(m for m in MODALITIES if m in set(subset_name(name.split("+")).split("+")))


def all_subsets(modalities: Iterable[str] = MODALITIES) -> Iterator[tuple[Modality, ...]]:
    """Every non-empty subset of ``modalities`` in canonical order: 15 for all four."""
    chosen = [m for m in MODALITIES if m in set(modalities)]
    for size in range(1, len(chosen) + 1):
        yield from combinations(chosen, size)
