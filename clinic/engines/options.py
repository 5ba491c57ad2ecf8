"""The engine a batch pipeline runs on, and how to reach it (no Ray import here)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

ADDRESS_ENV = "CLINIC_RAY_ADDRESS"


class Engine(StrEnum):
    """``local``: this process and its own worker processes; ``ray``: Ray Data on a cluster."""

    LOCAL = "local"
    RAY = "ray"


@dataclass(frozen=True)
class EngineOptions:
    """``address`` names an existing Ray cluster (``ray://host:10001``, ``host:6379`` or
    ``auto``); ``None`` starts a private local Ray with ``workers`` CPUs. ``workers`` is also the
    parallelism of each Ray stage (decode tasks, model actors), so one and two workers compare
    like for like on the same cluster. ``gpu`` puts one GPU under each model actor: ``None``
    decides from the cluster's resources."""

    engine: Engine = Engine.LOCAL
    address: str | None = None
    workers: int = 1
    gpu: bool | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")

    @property
    def is_ray(self) -> bool:
        return self.engine is Engine.RAY


def engine_options(
    engine: Engine | str,
    address: str | None = None,
    workers: int = 1,
    *,
    gpu: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> EngineOptions:
    """Options from what a user typed: an unknown engine name is an error, never a fallback,
    and the address defaults to ``CLINIC_RAY_ADDRESS`` (only read when the engine is Ray)."""
    chosen = Engine(engine)
    if chosen is Engine.RAY and address is None:
        address = (os.environ if env is None else env).get(ADDRESS_ENV) or None
    return EngineOptions(chosen, address if chosen is Engine.RAY else None, workers, gpu)
