"""``clinic user …`` and ``clinic audit …`` through the command line, on both backends."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner, Result

from clinic.audit.chain import AuditKey
from clinic.auth import users
from clinic.auth.roles import Principal, Role
from clinic.auth.users import create_user
from clinic.cli.admin_commands import register
from clinic.settings import Settings
from clinic.store.models import AuditEvent
from clinic.store.store import Store
from tests.audit.helpers import append_events, cheap_hasher, content, delete_events, edit, set_head
from tests.conftest import cli_env

ADMIN_PASSWORD = "correct horse battery"
RESEARCHER_PASSWORD = "statistics-rule"


def load_settings() -> Settings:
    settings = Settings.from_env()
    settings.check()
    return settings


APP = typer.Typer()
register(APP, load_settings)


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users, "HASHER", cheap_hasher())


def invoke(settings: Settings, *args: str, input: str | None = None, **env: str | None) -> Result:
    environment: dict[str, str | None] = {
        **cli_env(settings),
        "CLINIC_USER": None,
        "CLINIC_PASSWORD": None,
        **env,
    }
    return CliRunner().invoke(APP, list(args), env=environment, input=input)


def as_user(name: str, password: str) -> dict[str, str]:
    return {"CLINIC_USER": name, "CLINIC_PASSWORD": password}


def actions(store: Store) -> list[tuple[str, str, str]]:
    with store.session() as session:
        rows = session.execute(
            select(AuditEvent.action, AuditEvent.actor, AuditEvent.outcome).order_by(AuditEvent.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


@pytest.fixture
def key(settings: Settings) -> AuditKey:
    return AuditKey.from_settings(settings)


@pytest.fixture
def staffed(store: Store, key: AuditKey) -> Store:
    """Admin ``ada`` and researcher ``rita``."""
    with store.session() as session, session.begin():
        create_user(session, key, "ada", Role.ADMIN, ADMIN_PASSWORD, by=None)
        rita = Principal("ada", Role.ADMIN)
        create_user(session, key, "rita", Role.RESEARCHER, RESEARCHER_PASSWORD, by=rita)
    return store


def test_a_production_store_is_bootstrapped_then_requires_a_sign_in(
    settings: Settings, store: Store
) -> None:
    production = {"CLINIC_MODE": "production", "CLINIC_AUDIT_KEY": "production-audit-key-123"}
    first = invoke(
        settings,
        "user",
        "add",
        "ada",
        "--role",
        "admin",
        "--password-stdin",
        input=ADMIN_PASSWORD + "\n",
        **production,
    )
    assert first.exit_code == 0, first.output
    anonymous = invoke(
        settings,
        "user",
        "add",
        "rita",
        "--role",
        "researcher",
        "--password-stdin",
        input=RESEARCHER_PASSWORD + "\n",
        **production,
    )
    assert anonymous.exit_code == 2 and "CLINIC_USER" in anonymous.stderr
    added = invoke(
        settings,
        "user",
        "add",
        "rita",
        "--role",
        "researcher",
        "--password-stdin",
        input=RESEARCHER_PASSWORD + "\n",
        **production,
        **as_user("ada", ADMIN_PASSWORD),
    )
    assert added.exit_code == 0, added.output
    denied = invoke(settings, "user", "list", **production, **as_user("rita", RESEARCHER_PASSWORD))
    assert denied.exit_code == 3 and "user.manage" in denied.stderr
    listed = invoke(
        settings, "user", "list", "--json", **production, **as_user("ada", ADMIN_PASSWORD)
    )
    assert listed.exit_code == 0, listed.output
    assert [u["username"] for u in json.loads(listed.stdout)] == ["ada", "rita"]
    assert "argon2" not in listed.stdout
    assert actions(store) == [
        ("user.create", "bootstrap", "success"),
        ("auth.login", "ada", "success"),
        ("user.create", "ada", "success"),
        ("auth.login", "rita", "success"),
        ("user.list", "rita", "denied"),
        ("auth.login", "ada", "success"),
        ("user.list", "ada", "success"),
    ]


def test_the_first_user_must_be_an_admin(settings: Settings) -> None:
    result = invoke(
        settings,
        "user",
        "add",
        "cleo",
        "--role",
        "clinician",
        "--password-stdin",
        input="long enough password\n",
    )
    assert result.exit_code == 2 and "must be an admin" in result.stderr


def test_disabled_users_are_refused_and_enabled_again(settings: Settings, staffed: Store) -> None:
    assert invoke(settings, "user", "disable", "rita").exit_code == 0
    refused = invoke(settings, "audit", "verify", **as_user("rita", RESEARCHER_PASSWORD))
    assert refused.exit_code == 3 and "disabled" in refused.stderr
    assert invoke(settings, "user", "enable", "rita").exit_code == 0
    changed = invoke(
        settings,
        "user",
        "passwd",
        "rita",
        "--password-stdin",
        input="another-password-7\n",
        **as_user("rita", RESEARCHER_PASSWORD),
    )
    assert changed.exit_code == 0, changed.output
    assert ("auth.login", "rita", "failure") in actions(staffed)
    assert ("user.passwd", "rita", "success") in actions(staffed)


def test_denied_audit_commands_exit_3_and_are_audited(settings: Settings, staffed: Store) -> None:
    for command in (
        ["audit", "verify"],
        ["audit", "export", "--format", "csv"],
        ["audit", "checkpoint"],
    ):
        result = invoke(settings, *command, **as_user("rita", RESEARCHER_PASSWORD))
        assert result.exit_code == 3, result.output
        assert "researcher" in result.stderr
    denied = [a for a in actions(staffed) if a[2] == "denied"]
    assert denied == [
        ("audit.verify", "rita", "denied"),
        ("audit.export", "rita", "denied"),
        ("audit.checkpoint", "rita", "denied"),
    ]


def test_verify_prints_the_json_shape_and_fails_after_tampering(
    settings: Settings, store: Store, key: AuditKey
) -> None:
    ids = append_events(store, key, 4)
    result = invoke(settings, "audit", "verify", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "ok": True,
        "events": 4,
        "first_bad": None,
        "problem": None,
        "legacy": 0,
        "checkpoints": 0,
    }
    assert "OK" in invoke(settings, "audit", "verify").stdout
    edit(store, ids[1], details={"n": 99})
    broken = invoke(settings, "audit", "verify", "--json")
    assert broken.exit_code == 1
    report = json.loads(broken.stdout)
    assert (report["ok"], report["first_bad"]) == (False, ids[1]) and "edited" in report["problem"]
    human = invoke(settings, "audit", "verify")
    assert human.exit_code == 1 and f"BROKEN at event {ids[1]}" in human.stdout
    action, actor, outcome = actions(store)[-1]
    assert (action, outcome) == ("audit.verify", "failure") and actor.endswith("@local")


def test_a_checkpoint_catches_a_truncated_tail(
    settings: Settings, store: Store, key: AuditKey, tmp_path: Path
) -> None:
    ids = append_events(store, key, 5)
    made = invoke(settings, "audit", "checkpoint", "--out", str(tmp_path / "offsite.jsonl"))
    assert made.exit_code == 0, made.output
    printed = json.loads(made.stdout)
    assert printed["sequence"] == 5 and set(printed) == {"sequence", "chain_hash", "made_at", "mac"}
    kept = settings.audit_dir / "checkpoints.jsonl"
    assert [json.loads(line) for line in kept.read_text().splitlines()] == [printed]
    again = invoke(settings, "audit", "verify", "--json", "--checkpoint", str(kept))
    assert json.loads(again.stdout)["checkpoints"] == 1  # the kept file is read once
    with store.session() as session:
        cut_after = session.scalars(select(AuditEvent.id).order_by(AuditEvent.id)).all()
    delete_events(store, *cut_after[3:])  # events 4, 5 and the checkpoint's own audit event
    set_head(store, 3, content(store, ids[2])["chain_hash"])
    kept.unlink()
    assert invoke(settings, "audit", "verify").exit_code == 0  # the attacker's view
    offsite = invoke(
        settings, "audit", "verify", "--json", "--checkpoint", str(tmp_path / "offsite.jsonl")
    )
    assert offsite.exit_code == 1, offsite.output
    report = json.loads(offsite.stdout)
    assert "tail" in report["problem"] and "checkpoint" in report["problem"]


def test_export_writes_csv_and_json_and_is_audited(
    settings: Settings, store: Store, key: AuditKey, tmp_path: Path
) -> None:
    append_events(store, key, 3)
    out = tmp_path / "audit.csv"
    written = invoke(settings, "audit", "export", "--format", "csv", "--out", str(out))
    assert written.exit_code == 0, written.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [row["action"] for row in rows] == ["case.view"] * 3
    streamed = invoke(
        settings,
        "audit",
        "export",
        "--format",
        "json",
        "--action",
        "audit.export",
        "--since",
        "2000-01-01",
    )
    assert streamed.exit_code == 0, streamed.output
    (previous,) = json.loads(streamed.stdout)
    assert previous["details"]["events"] == 3 and previous["details"]["format"] == "csv"
    bad = invoke(settings, "audit", "export", "--since", "yesterday")
    assert bad.exit_code == 2 and "ISO-8601" in bad.output
