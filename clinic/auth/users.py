"""Users who sign in: creation (with a bootstrap admin), authentication and administration.

Passwords are stored only as argon2id hashes and never reach the audit trail. Every change, every
sign-in (successful or not) and every refused attempt is an audit event. Functions that refuse
raise *after* adding the refusal's audit event to the session, and write nothing else: the caller
commits the session on :class:`AccessDenied` / :class:`AuthenticationError` too, so the refusal
is kept.
"""

from __future__ import annotations

import datetime as dt
import getpass
import re
from functools import cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clinic.audit.chain import AuditKey, append_event, authorize, lock_head, record
from clinic.auth.roles import AccessDenied, Permission, Principal, Role
from clinic.store.models import User

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024  # argon2 hashes anything; this only bounds the work per attempt
USERNAME_PATTERN = re.compile(r"[a-z][a-z0-9._-]{1,63}")
BOOTSTRAP = Principal("bootstrap", Role.SYSTEM)
ANONYMOUS, NO_ROLE = "anonymous", "none"  # who asks without signing in or as an unknown user
# Replaced by tests with cheaper parameters; argon2-cffi's defaults are RFC 9106's low-memory
# profile (argon2id, t=3, m=64 MiB, p=4).
HASHER = PasswordHasher()


class UserError(ValueError):
    """A request about users that cannot be carried out as given (bad name, short password…)."""


class AuthenticationError(PermissionError):
    """Sign-in refused. The same message for an unknown user and a wrong password."""


def hash_password(password: str) -> str:
    """An argon2id hash (with its own salt and parameters) of ``password``."""
    return HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored``; a malformed hash simply does not match."""
    try:
        return HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


@cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash to verify against for unknown users, so they take as long as known ones."""
    return hasher.hash("not a password of anyone")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _find(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).one_or_none()


def _existing(session: Session, username: str) -> User:
    user = _find(session, username)
    if user is None:
        raise UserError(f"no user named {username!r}")
    return user


def _count(session: Session, *conditions: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(User).where(*conditions)) or 0)


def _role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        names = ", ".join(r.value for r in Role if r is not Role.SYSTEM)
        raise UserError(f"unknown role {value!r}: one of {names}") from None


def _validate(username: str, role: Role, password: str) -> None:
    if not USERNAME_PATTERN.fullmatch(username):
        raise UserError(
            f"invalid username {username!r}: 2-64 characters, lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter"
        )
    if role is Role.SYSTEM:
        raise UserError("the system role is for batch jobs, not for people who sign in")
    _validate_password(password)


def _validate_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password is too short: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"the password is too long: at most {MAX_PASSWORD_LENGTH} characters")


def create_user(
    session: Session,
    key: AuditKey,
    username: str,
    role: Role,
    password: str,
    *,
    by: Principal | None,
) -> User:
    """Create a user. ``by=None`` only bootstraps an empty store, with an admin.

    The password is hashed (slow on purpose) before the chain lock is taken; emptiness is checked
    again under the lock so that two bootstraps racing on an empty store cannot both succeed.
    """
    role = _role(role)
    if by is None:
        _require_empty(session, key, username)
    else:
        authorize(session, key, by, Permission.USER_MANAGE, "user.create", "user", username)
    _validate(username, role, password)
    password_hash = hash_password(password)
    lock_head(session)
    if by is None:
        _require_empty(session, key, username)
    if role is not Role.ADMIN and _count(session) == 0:
        raise UserError("the first user of a store must be an admin (--role admin)")
    if _find(session, username) is not None:
        raise UserError(f"user {username!r} already exists")
    actor = by or BOOTSTRAP
    user = User(
        username=username,
        role=role.value,
        password_hash=password_hash,
        active=True,
        created_by=actor.username,
    )
    session.add(user)
    session.flush()
    details = {
        "username": username,
        "role": role.value,
        "bootstrap": by is None,
        "os_user": _os_user(),
    }
    record(session, key, actor, "user.create", "user", username, details=details)
    return user


def _require_empty(session: Session, key: AuditKey, username: str) -> None:
    """Creating a user without a principal is allowed only while the store has no user."""
    if _count(session) == 0:
        return
    append_event(
        session,
        key,
        actor=ANONYMOUS,
        role=NO_ROLE,
        action="user.create",
        resource_type="user",
        resource_id=username,
        outcome="denied",
        details={"permission": Permission.USER_MANAGE.value},
    )
    raise AccessDenied(ANONYMOUS, NO_ROLE, Permission.USER_MANAGE)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def authenticate(session: Session, key: AuditKey, username: str, password: str) -> Principal:
    """The principal of ``username`` when ``password`` is right and the account is active.

    Unknown users are verified against a dummy hash so that timing does not tell them apart.
    """
    user = _find(session, username)
    stored = user.password_hash if user is not None else _dummy_hash(HASHER)
    matches = verify_password(stored, password)
    if user is None or not matches:
        reason = "unknown user" if user is None else "wrong password"
        role = user.role if user is not None else NO_ROLE
        _login_failed(session, key, username[:128], role, reason)
        raise AuthenticationError(
            f"sign-in failed for {username!r}: unknown user or wrong password"
        )
    if not user.active:
        _login_failed(session, key, username, user.role, "account disabled")
        raise AuthenticationError(f"sign-in refused: the account {username!r} is disabled")
    if HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = _now()
    principal = Principal(user.username, Role(user.role), user.id)
    record(session, key, principal, "auth.login", "user", username)
    return principal


def _login_failed(session: Session, key: AuditKey, username: str, role: str, reason: str) -> None:
    append_event(
        session,
        key,
        actor=username,
        role=role,
        action="auth.login",
        resource_type="user",
        resource_id=username,
        outcome="failure",
        details={"reason": reason},
    )


def set_active(
    session: Session, key: AuditKey, username: str, active: bool, *, by: Principal
) -> None:
    """Enable or disable an account (admin only); the last active admin cannot be disabled."""
    action = "user.enable" if active else "user.disable"
    authorize(session, key, by, Permission.USER_MANAGE, action, "user", username)
    user = _existing(session, username)
    if not active and user.role == Role.ADMIN.value and user.active:
        admins = _count(session, User.role == Role.ADMIN.value, User.active.is_(True))
        if admins <= 1:
            raise UserError(f"refusing to disable {username!r}: it is the last active admin")
    was_active, user.active = user.active, active
    record(session, key, by, action, "user", username, details={"was_active": was_active})


def set_password(
    session: Session, key: AuditKey, username: str, password: str, *, by: Principal
) -> None:
    """Set a new password: an admin for anyone, or a user for themself."""
    if by.username != username:
        authorize(session, key, by, Permission.USER_MANAGE, "user.passwd", "user", username)
    user = _existing(session, username)
    _validate_password(password)
    user.password_hash = hash_password(password)  # before the chain lock that record() takes
    record(
        session, key, by, "user.passwd", "user", username, details={"self": by.username == username}
    )


def list_users(session: Session, *, by: Principal) -> list[dict[str, Any]]:
    """Every user without password hashes (admin only; the caller audits the listing)."""
    if not by.can(Permission.USER_MANAGE):
        raise AccessDenied(by.username, by.role.value, Permission.USER_MANAGE)
    users = session.scalars(select(User).order_by(User.username))
    return [_public(user) for user in users]


def _public(user: User) -> dict[str, Any]:
    def when(value: dt.datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "username": user.username,
        "role": user.role,
        "active": user.active,
        "created_by": user.created_by,
        "created_at": when(user.created_at),
        "last_login_at": when(user.last_login_at),
    }
