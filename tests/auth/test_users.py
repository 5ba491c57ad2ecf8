"""Accounts: bootstrap, creation by admins only, sign-in, administration, all audited."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import select

from clinic.audit.chain import AuditKey
from clinic.audit.verify import verify_chain
from clinic.auth import users
from clinic.auth.roles import AccessDenied, Principal, Role
from clinic.auth.session import LoginRequiredError, resolve_principal
from clinic.auth.users import (
    AuthenticationError,
    UserError,
    authenticate,
    create_user,
    hash_password,
    list_users,
    set_active,
    set_password,
    verify_password,
)
from clinic.settings import RunMode, Settings
from clinic.store.models import AuditEvent, User
from clinic.store.store import Store
from tests.audit.helpers import cheap_hasher

KEY = AuditKey(b"test-audit-key-0123456789")
ADMIN_PASSWORD = "correct horse battery"
CLINICIAN_PASSWORD = "stethoscope-42"


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users, "HASHER", cheap_hasher())


@pytest.fixture
def admin(store: Store) -> Principal:
    """A store bootstrapped with admin ``ada`` and clinician ``cleo``."""
    with store.session() as session, session.begin():
        user = create_user(session, KEY, "ada", Role.ADMIN, ADMIN_PASSWORD, by=None)
        principal = Principal("ada", Role.ADMIN, user.id)
        create_user(session, KEY, "cleo", Role.CLINICIAN, CLINICIAN_PASSWORD, by=principal)
    return principal


def audit(store: Store, action: str | None = None) -> list[AuditEvent]:
    with store.session() as session:
        statement = select(AuditEvent).order_by(AuditEvent.id)
        if action:
            statement = statement.where(AuditEvent.action == action)
        return list(session.scalars(statement))


def test_the_first_user_is_a_bootstrapped_admin(store: Store, admin: Principal) -> None:
    created = audit(store, "user.create")
    assert [(e.actor, e.resource_id, e.details["bootstrap"]) for e in created] == [
        ("bootstrap", "ada", True),
        ("ada", "cleo", False),
    ]
    with store.session() as session:
        assert verify_chain(session, KEY).ok


def test_the_first_user_must_be_an_admin(store: Store) -> None:
    with store.session() as session, pytest.raises(UserError, match="must be an admin"):
        create_user(session, KEY, "cleo", Role.CLINICIAN, CLINICIAN_PASSWORD, by=None)


def test_without_a_principal_only_an_empty_store_gets_a_user(
    store: Store, admin: Principal
) -> None:
    with store.session() as session:
        with pytest.raises(AccessDenied, match="anonymous"):
            create_user(session, KEY, "eve", Role.ADMIN, "password-123", by=None)
        session.commit()
    (denied,) = audit(store, "user.create")[2:]
    assert (denied.actor, denied.outcome, denied.resource_id) == ("anonymous", "denied", "eve")


def test_a_non_admin_cannot_create_users_and_the_denial_is_audited(
    store: Store, admin: Principal
) -> None:
    cleo = Principal("cleo", Role.CLINICIAN)
    with store.session() as session:
        with pytest.raises(AccessDenied, match=r"cleo.*clinician.*user\.manage"):
            create_user(session, KEY, "mal", Role.ADMIN, "password-123", by=cleo)
        session.commit()
    denied = audit(store, "user.create")[-1]
    assert (denied.actor, denied.role, denied.outcome) == ("cleo", "clinician", "denied")
    with store.session() as session:
        assert session.scalar(select(User).where(User.username == "mal")) is None


@pytest.mark.parametrize(
    ("username", "role", "password", "message"),
    [
        ("Bob", Role.CLINICIAN, "long-enough-1", "invalid username"),
        ("bob@local", Role.CLINICIAN, "long-enough-1", "invalid username"),
        ("bob", Role.CLINICIAN, "short", "at least 10"),
        ("bob", Role.SYSTEM, "long-enough-1", "batch jobs"),
        ("bob", "nurse", "long-enough-1", "unknown role"),
        ("cleo", Role.CLINICIAN, "long-enough-1", "already exists"),
    ],
)
def test_bad_requests_are_clear_user_errors(
    store: Store, admin: Principal, username: str, role: Role, password: str, message: str
) -> None:
    with store.session() as session, pytest.raises(UserError, match=message):
        create_user(session, KEY, username, role, password, by=admin)


def test_sign_in_succeeds_with_the_right_password(store: Store, admin: Principal) -> None:
    with store.session() as session, session.begin():
        principal = authenticate(session, KEY, "cleo", CLINICIAN_PASSWORD)
    assert (principal.username, principal.role) == ("cleo", Role.CLINICIAN)
    assert principal.user_id is not None
    (login,) = audit(store, "auth.login")
    assert (login.actor, login.outcome) == ("cleo", "success")
    with store.session() as session:
        user = session.scalars(select(User).where(User.username == "cleo")).one()
        assert user.last_login_at is not None


def test_unknown_users_and_wrong_passwords_fail_alike(store: Store, admin: Principal) -> None:
    messages = []
    for username, password in (("cleo", "wrong password"), ("nobody", "wrong password")):
        with store.session() as session:
            with pytest.raises(AuthenticationError) as failed:
                authenticate(session, KEY, username, password)
            session.commit()
        messages.append(str(failed.value).replace(username, "<user>"))
    assert messages[0] == messages[1]
    failures = audit(store, "auth.login")
    assert [(e.actor, e.outcome, e.details["reason"]) for e in failures] == [
        ("cleo", "failure", "wrong password"),
        ("nobody", "failure", "unknown user"),
    ]


def test_disabled_accounts_cannot_sign_in(store: Store, admin: Principal) -> None:
    with store.session() as session, session.begin():
        set_active(session, KEY, "cleo", False, by=admin)
    with store.session() as session, pytest.raises(AuthenticationError, match="disabled"):
        authenticate(session, KEY, "cleo", CLINICIAN_PASSWORD)
    with store.session() as session, session.begin():
        set_active(session, KEY, "cleo", True, by=admin)
        assert authenticate(session, KEY, "cleo", CLINICIAN_PASSWORD).username == "cleo"
    assert [e.action for e in audit(store)][-3:] == ["user.disable", "user.enable", "auth.login"]


def test_the_last_active_admin_cannot_be_disabled(store: Store, admin: Principal) -> None:
    with store.session() as session, pytest.raises(UserError, match="last active admin"):
        set_active(session, KEY, "ada", False, by=admin)


def test_passwords_are_stored_and_audited_only_as_hashes(store: Store, admin: Principal) -> None:
    with store.session() as session, session.begin():
        set_password(session, KEY, "cleo", "a-new-secret-99", by=Principal("cleo", Role.CLINICIAN))
        authenticate(session, KEY, "cleo", "a-new-secret-99")
    with store.session() as session:
        hashes = list(session.scalars(select(User.password_hash)))
        trail = json.dumps([e.details for e in audit(store)])
    for secret in (ADMIN_PASSWORD, CLINICIAN_PASSWORD, "a-new-secret-99"):
        assert all(secret not in stored for stored in hashes) and secret not in trail
    assert all(stored.startswith("$argon2id$") for stored in hashes)


def test_only_admins_or_the_user_themself_change_a_password(store: Store, admin: Principal) -> None:
    rita = Principal("rita", Role.RESEARCHER)
    with store.session() as session:
        with pytest.raises(AccessDenied):
            set_password(session, KEY, "cleo", "hijacked-password", by=rita)
        session.commit()
    assert audit(store, "user.passwd")[-1].outcome == "denied"
    with store.session() as session, session.begin():
        set_password(session, KEY, "cleo", "reset-by-admin-1", by=admin)
    with store.session() as session:
        assert authenticate(session, KEY, "cleo", "reset-by-admin-1").username == "cleo"


def test_listing_users_is_for_admins_and_shows_no_hashes(store: Store, admin: Principal) -> None:
    with store.session() as session:
        listed = list_users(session, by=admin)
        with pytest.raises(AccessDenied):
            list_users(session, by=Principal("cleo", Role.CLINICIAN))
    assert [(u["username"], u["role"], u["active"]) for u in listed] == [
        ("ada", "admin", True),
        ("cleo", "clinician", True),
    ]
    assert "hash" not in json.dumps(listed)


def test_password_hashes_verify_only_the_right_password() -> None:
    stored = hash_password("right password")
    assert verify_password(stored, "right password")
    assert not verify_password(stored, "wrong password")
    assert not verify_password("not a hash", "right password")


def test_the_cli_principal_comes_from_a_sign_in_or_the_local_operator(
    store: Store, admin: Principal, settings: Settings
) -> None:
    production = Settings(
        settings.home, settings.database_url, "k" * 20, RunMode.PRODUCTION, raw_audit_key="a" * 20
    )
    with store.session() as session:
        local = resolve_principal(settings, session, KEY, env={})
        assert local.username.endswith("@local") and local.role is Role.ADMIN
        with pytest.raises(LoginRequiredError, match="CLINIC_USER"):
            resolve_principal(production, session, KEY, env={})
        env = {"CLINIC_USER": "cleo", "CLINIC_PASSWORD": CLINICIAN_PASSWORD}
        assert resolve_principal(production, session, KEY, env=env).role is Role.CLINICIAN
        with pytest.raises(AuthenticationError):
            resolve_principal(settings, session, KEY, env={**env, "CLINIC_PASSWORD": "nope"})
        with pytest.raises(LoginRequiredError, match="no terminal"):
            resolve_principal(settings, session, KEY, env={"CLINIC_USER": "cleo"})


def test_two_racing_bootstraps_make_exactly_one_admin(store: Store) -> None:
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def bootstrap(name: str) -> None:
        with store.session() as session:
            start.wait()
            try:
                create_user(session, KEY, name, Role.ADMIN, ADMIN_PASSWORD, by=None)
                outcomes.append("created")
            except AccessDenied:
                outcomes.append("denied")
            session.commit()

    threads = [threading.Thread(target=bootstrap, args=(name,)) for name in ("ada", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["created", "denied"]
    with store.session() as session:
        assert len(list(session.scalars(select(User)))) == 1
        assert verify_chain(session, KEY).ok
