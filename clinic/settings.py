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
DEMO_AUDIT_KEY = "clinic-demo-audit-key-not-for-patient-data"
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
    re-identified. ``audit_key`` keys the audit hash chain for the same reason: someone who can
    write to the database cannot recompute the chain without it.
    """

    home: Path
    database_url: str
    raw_pseudonym_key: str | None
    mode: RunMode
    ecg_sampling_rate: int = 500
    ecg_duration_s: float = 10.0
    raw_audit_key: str | None = None
    hnsw_ef_search: int = 100  # pgvector's candidate list per query (recall vs latency, README)

    @property
    def blob_root(self) -> Path:
        return self.home / "blobs"

    @property
    def pseudonym_key(self) -> bytes:
        """The validated key; raises :class:`SettingsError` when unsafe for this mode."""
        return _secret(
            self.raw_pseudonym_key, self.mode, "CLINIC_PSEUDONYM_KEY", DEMO_PSEUDONYM_KEY
        )

    @property
    def audit_key(self) -> bytes:
        """The key of the audit chain's HMAC; raises :class:`SettingsError` when unsafe."""
        return _secret(self.raw_audit_key, self.mode, "CLINIC_AUDIT_KEY", DEMO_AUDIT_KEY)

    @property
    def audit_dir(self) -> Path:
        """Where audit checkpoints are kept: outside the database, like the key."""
        return self.home / "audit"

    def check(self) -> None:
        """Fail fast (at start-up of every command that opens the store) on unsafe secrets."""
        _ = self.pseudonym_key, self.audit_key

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
        ef_search = int(env.get("CLINIC_HNSW_EF_SEARCH", "100"))
        if not 1 <= ef_search <= 1000:
            raise SettingsError("CLINIC_HNSW_EF_SEARCH must lie in 1..1000 (pgvector's range)")
        return cls(
            home=home,
            database_url=normalise_database_url(url),
            raw_pseudonym_key=env.get("CLINIC_PSEUDONYM_KEY"),
            mode=run_mode,
            ecg_sampling_rate=rate,
            raw_audit_key=env.get("CLINIC_AUDIT_KEY"),
            hnsw_ef_search=ef_search,
        )


def _secret(raw: str | None, mode: RunMode, variable: str, demo_value: str) -> bytes:
    """A secret from ``variable``; in production it must be set, long and not the demo value."""
    if mode is RunMode.PRODUCTION:
        if not raw:
            raise SettingsError(
                f"{variable} is not set. Set a secret of at least "
                f"{MIN_KEY_LENGTH} characters, or CLINIC_MODE=demo for the demo cohort."
            )
        if raw == demo_value:
            raise SettingsError(
                f"{variable} is the published demo key; refusing to use it on real "
                "data. Set a secret key, or CLINIC_MODE=demo."
            )
        if len(raw) < MIN_KEY_LENGTH:
            raise SettingsError(f"{variable} is shorter than {MIN_KEY_LENGTH} characters.")
    return (raw or demo_value).encode()


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (the driver clinic installs)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
