"""Who is acting in a command-line invocation: a signed-in user, or the local demo operator.

Production stores require a sign-in for every command (``CLINIC_USER`` and ``CLINIC_PASSWORD``,
or a password prompt on a terminal), so every audit event names a person. In demo and test mode,
without ``CLINIC_USER``, the operator at the keyboard acts as ``<os user>@local`` with the admin
role: the demo needs no accounts, and the ``@`` keeps that name apart from real usernames.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Mapping

from sqlalchemy.orm import Session

from clinic.audit.chain import AuditKey
from clinic.auth.roles import Principal, Role
from clinic.auth.users import AuthenticationError, authenticate
from clinic.settings import RunMode, Settings

USER_VARIABLE = "CLINIC_USER"
PASSWORD_VARIABLE = "CLINIC_PASSWORD"


class LoginRequiredError(AuthenticationError):
    """No credentials were given where they are needed (not a failed attempt: nothing audited)."""


def local_operator() -> Principal:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return Principal(f"{name}@local", Role.ADMIN)


def resolve_principal(
    settings: Settings, session: Session, key: AuditKey, env: Mapping[str, str] | None = None
) -> Principal:
    """Sign in as ``CLINIC_USER``, or fall back to the local operator outside production."""
    env = os.environ if env is None else env
    username = env.get(USER_VARIABLE)
    if not username:
        if settings.mode is RunMode.PRODUCTION:
            raise LoginRequiredError(
                f"sign-in required: set {USER_VARIABLE} (and {PASSWORD_VARIABLE}, or run on a "
                "terminal to be asked for the password)"
            )
        return local_operator()
    return authenticate(session, key, username, _password(username, env))


def _password(username: str, env: Mapping[str, str]) -> str:
    password = env.get(PASSWORD_VARIABLE)
    if password is not None:
        return password
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"password for {username}: ")
    raise LoginRequiredError(
        f"{USER_VARIABLE} is set but {PASSWORD_VARIABLE} is not, and there is no terminal to "
        "ask for the password on"
    )
