from __future__ import annotations

from pathlib import Path

import pytest

from clinic.settings import (
    DEMO_AUDIT_KEY,
    DEMO_PSEUDONYM_KEY,
    RunMode,
    Settings,
    SettingsError,
)


def test_defaults_to_a_sqlite_file_under_clinic_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"CLINIC_HOME": str(tmp_path), "CLINIC_MODE": "demo"})
    assert settings.home == tmp_path.resolve()
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'clinic.db'}"
    assert settings.blob_root == tmp_path.resolve() / "blobs"


def test_database_url_overrides_and_uses_psycopg() -> None:
    env = {"CLINIC_DATABASE_URL": "postgresql://u:p@db:5432/clinic", "CLINIC_MODE": "demo"}
    assert Settings.from_env(env).database_url == "postgresql+psycopg://u:p@db:5432/clinic"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "is not set"),
        ("", "is not set"),
        (DEMO_PSEUDONYM_KEY, "published demo key"),
        ("short", "shorter than"),
    ],
)
def test_production_refuses_missing_default_or_weak_keys(key: str | None, message: str) -> None:
    env = {} if key is None else {"CLINIC_PSEUDONYM_KEY": key}
    settings = Settings.from_env(env)
    assert settings.mode is RunMode.PRODUCTION
    with pytest.raises(SettingsError, match=message):
        settings.check()


def test_demo_and_test_modes_may_use_the_demo_key() -> None:
    for mode in ("demo", "test"):
        settings = Settings.from_env({"CLINIC_MODE": mode})
        assert settings.pseudonym_key == DEMO_PSEUDONYM_KEY.encode()


def test_real_keys_are_accepted_in_production() -> None:
    env = {
        "CLINIC_PSEUDONYM_KEY": "a-long-enough-secret-key",
        "CLINIC_AUDIT_KEY": "another-secret-key",
    }
    settings = Settings.from_env(env)
    settings.check()
    assert settings.pseudonym_key == b"a-long-enough-secret-key"
    assert settings.audit_key == b"another-secret-key"


@pytest.mark.parametrize(
    ("key", "message"),
    [(None, "CLINIC_AUDIT_KEY is not set"), (DEMO_AUDIT_KEY, "published demo key"),
     ("short", "shorter than")],
)  # fmt: skip
def test_production_refuses_a_missing_or_weak_audit_key(key: str | None, message: str) -> None:
    env = {"CLINIC_PSEUDONYM_KEY": "a-long-enough-secret-key"}
    if key is not None:
        env["CLINIC_AUDIT_KEY"] = key
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env).check()
