"""Settings read from the environment, validated once at start-up.

Why a frozen dataclass rather than globals: every entry point builds one ``Settings`` and passes it
down, so tests can run several stores side by side and nothing is configured at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

DEMO_PSEUDONYM_KEY = "clinic-demo-key-not-for-patient-data"
MIN_KEY_LENGTH = 16


class RunMode(StrEnum):
    """``production`` refuses the demo key; ``demo`` and ``test`` may use it."""

    PRODUCTION = "production"
    DEMO = "demo"
    TEST = "test"


class SettingsError(ValueError):
    """The environment does not describe a safe configuration."""


@dataclass(frozen=True)
class Settings:
    """Where clinic keeps its data and the secrets it needs.

    ``pseudonym_key`` keys the HMAC that turns patient identifiers into pseudonyms; it lives only
    here (environment / secret store), never in the database, so the store alone cannot be
    re-identified.
    """

    home: Path
    database_url: str
    raw_pseudonym_key: str | None
    mode: RunMode
    ecg_sampling_rate: int = 500
    ecg_duration_s: float = 10.0

    @property
    def blob_root(self) -> Path:
        return self.home / "blobs"

    @property
    def pseudonym_key(self) -> bytes:
        """The validated key; raises :class:`SettingsError` when unsafe for this mode."""
        return _pseudonym_key(self.raw_pseudonym_key, self.mode)

    def check(self) -> None:
        """Fail fast (at start-up of commands that pseudonymise) on an unsafe configuration."""
        _pseudonym_key(self.raw_pseudonym_key, self.mode)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, mode: RunMode | None = None
    ) -> Settings:
        """Build settings from ``CLINIC_*`` variables (the key is checked by :meth:`check`)."""
        env = os.environ if env is None else env
        run_mode = mode or RunMode(env.get("CLINIC_MODE", RunMode.PRODUCTION.value))
        home = Path(env.get("CLINIC_HOME", "./.clinic")).expanduser().resolve()
        url = env.get("CLINIC_DATABASE_URL") or f"sqlite:///{home / 'clinic.db'}"
        rate = int(env.get("CLINIC_ECG_SAMPLING_RATE", "500"))
        return cls(
            home=home,
            database_url=normalise_database_url(url),
            raw_pseudonym_key=env.get("CLINIC_PSEUDONYM_KEY"),
            mode=run_mode,
            ecg_sampling_rate=rate,
        )


def _pseudonym_key(raw: str | None, mode: RunMode) -> bytes:
    if mode is RunMode.PRODUCTION:
        if not raw:
            raise SettingsError(
                "CLINIC_PSEUDONYM_KEY is not set. Set a secret of at least "
                f"{MIN_KEY_LENGTH} characters, or CLINIC_MODE=demo for the demo cohort."
            )
        if raw == DEMO_PSEUDONYM_KEY:
            raise SettingsError(
                "CLINIC_PSEUDONYM_KEY is the published demo key; refusing to pseudonymise real "
                "data with it. Set a secret key, or CLINIC_MODE=demo."
            )
        if len(raw) < MIN_KEY_LENGTH:
            raise SettingsError(
                f"CLINIC_PSEUDONYM_KEY is shorter than {MIN_KEY_LENGTH} characters."
            )
    return (raw or DEMO_PSEUDONYM_KEY).encode()


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (the driver clinic installs)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
