"""``clinic audit …`` and ``clinic user …``: the audit trail and the accounts, themselves audited.

Every command signs in first (:func:`clinic.auth.session.resolve_principal`), checks its
permission, and records what it did in the audit chain before committing. Exit status: 0 done,
1 the audit chain does not verify, 2 a usage or configuration error, 3 refused (access denied or
sign-in failed; the refusal is audited).
"""

from __future__ import annotations

import datetime as dt
import getpass
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TextIO, cast

import typer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clinic.audit.chain import AuditKey, authorize, record
from clinic.audit.export import ExportFormat, export_events
from clinic.audit.verify import (
    CHECKPOINT_FILE,
    Checkpoint,
    VerifyResult,
    append_checkpoint,
    load_checkpoints,
    make_checkpoint,
    save_checkpoint,
    verify_chain,
)
from clinic.auth.roles import AccessDenied, Permission, Principal, Role
from clinic.auth.session import LoginRequiredError, resolve_principal
from clinic.auth.users import (
    AuthenticationError,
    create_user,
    list_users,
    set_active,
    set_password,
)
from clinic.cli.output import print_json
from clinic.settings import Settings
from clinic.store.models import User
from clinic.store.store import Store

EXIT_UNVERIFIED, EXIT_USAGE, EXIT_REFUSED = 1, 2, 3
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
PasswordStdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first stdin line.")
]


class AccountRole(StrEnum):
    """The roles a person can hold (``system`` is for batch jobs only)."""

    CLINICIAN = Role.CLINICIAN.value
    RESEARCHER = Role.RESEARCHER.value
    ADMIN = Role.ADMIN.value


RoleOption = Annotated[AccountRole, typer.Option("--role", help="The account's role.")]


@dataclass(frozen=True)
class Acting:
    """What every command works with: settings, an open session, the audit key and who acts."""

    settings: Settings
    session: Session
    key: AuditKey
    principal: Principal | None

    def allow(
        self,
        permission: Permission,
        action: str,
        resource_type: str,
        resource_id: str | None = None,
        *,
        details: dict[str, Any] | None = None,
    ) -> Principal:
        """The signed-in principal, once it is known to hold ``permission`` (else audited)."""
        principal = self.signed_in()
        authorize(
            self.session,
            self.key,
            principal,
            permission,
            action,
            resource_type,
            resource_id,
            details=details,
        )
        return principal

    def signed_in(self) -> Principal:
        assert self.principal is not None, "only `user add` may run without a sign-in"
        return self.principal

    def record(
        self,
        action: str,
        resource_type: str,
        resource_id: str | None = None,
        *,
        outcome: str = "success",
        details: dict[str, Any] | None = None,
    ) -> None:
        record(
            self.session,
            self.key,
            self.signed_in(),
            action,
            resource_type,
            resource_id,
            outcome=outcome,
            details=details,
        )


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def acting(load_settings: Callable[[], Settings], *, bootstrap: bool = False) -> Iterator[Acting]:
    """Open the store, sign in, yield; commit on success, and on a refusal too (it is audited).

    With ``bootstrap``, a store without users needs no sign-in (``principal`` is None): that is
    how the first admin is created.
    """
    settings = load_settings()
    key = AuditKey.from_settings(settings)
    store = Store.open(settings)
    try:
        with store.session() as session:
            try:
                yield Acting(settings, session, key, _sign_in(settings, session, key, bootstrap))
                session.commit()
            except LoginRequiredError as error:
                raise _fail(str(error), EXIT_USAGE) from error
            except (AccessDenied, AuthenticationError) as error:
                session.commit()  # only the refusal's audit event is pending
                raise _fail(str(error), EXIT_REFUSED) from error
            except ValueError as error:  # UserError, a bad checkpoint file, an unknown format
                raise _fail(str(error), EXIT_USAGE) from error
    finally:
        store.close()


def _sign_in(
    settings: Settings, session: Session, key: AuditKey, bootstrap: bool
) -> Principal | None:
    if bootstrap and not session.scalar(select(func.count()).select_from(User)):
        return None
    return resolve_principal(settings, session, key)


def _read_password(from_stdin: bool, *, confirm: bool) -> str:
    """A new password from stdin's first line, or typed twice on a terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise _fail("no password given: use --password-stdin, or run on a terminal", EXIT_USAGE)
    password = getpass.getpass("new password: ")
    if confirm and getpass.getpass("repeat it: ") != password:
        raise _fail("the two passwords differ", EXIT_USAGE)
    return password


def _parse_time(value: str | None, option: str) -> dt.datetime | None:
    """An ISO-8601 date or time; without an offset it is read as UTC."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as error:
        raise typer.BadParameter(f"not an ISO-8601 time: {value!r}", param_hint=option) from error
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def register(app: typer.Typer, load_settings: Callable[[], Settings]) -> None:
    """Attach ``clinic audit`` and ``clinic user`` to the ``clinic`` app."""
    audit_app = typer.Typer(help="The tamper-evident audit trail: verify, checkpoint, export.")
    user_app = typer.Typer(help="Accounts: clinicians, researchers and admins.")
    app.add_typer(audit_app, name="audit")
    app.add_typer(user_app, name="user")
    _register_audit(audit_app, load_settings)
    _register_users(user_app, load_settings)


def _register_audit(audit_app: typer.Typer, load_settings: Callable[[], Settings]) -> None:
    @audit_app.command("verify")
    def verify_command(
        checkpoint: Annotated[
            list[Path] | None,
            typer.Option("--checkpoint", help="Checkpoint file (or folder); repeatable."),
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Check every event's keyed hash and link, the head row and the checkpoints."""
        with acting(load_settings) as context:
            context.allow(Permission.AUDIT_READ, "audit.verify", "audit_chain")
            checkpoints = _checkpoints(context.settings, checkpoint or [])
            result = verify_chain(context.session, context.key, checkpoints)
            outcome = "success" if result.ok else "failure"
            context.record("audit.verify", "audit_chain", outcome=outcome, details=result.to_json())
        _print_verification(result, as_json)
        if not result.ok:
            raise typer.Exit(EXIT_UNVERIFIED)

    @audit_app.command("checkpoint")
    def checkpoint_command(
        out: Annotated[Path | None, typer.Option(help="Also append it to this file.")] = None,
    ) -> None:
        """Sign the chain's current head and keep it outside the database (CLINIC_HOME/audit)."""
        with acting(load_settings) as context:
            context.allow(Permission.AUDIT_READ, "audit.checkpoint", "audit_chain")
            made = make_checkpoint(context.session, context.key)
            context.record(
                "audit.checkpoint", "audit_chain", str(made.sequence), details=made.to_json()
            )
        # Written after the commit: a checkpoint never names a sequence that was rolled back.
        paths = [save_checkpoint(context.settings.audit_dir, made)]
        if out is not None:
            paths.append(
                save_checkpoint(out, made) if out.is_dir() else append_checkpoint(out, made)
            )
        print_json(made.to_json())
        typer.echo("written to " + ", ".join(str(p) for p in paths), err=True)

    @audit_app.command("export")
    def export_command(
        fmt: Annotated[str, typer.Option("--format", help="csv, json or fhir.")] = "json",
        out: Annotated[Path | None, typer.Option(help="File to write (default: stdout).")] = None,
        since: Annotated[
            str | None, typer.Option(help="From this ISO time (UTC if naive).")
        ] = None,
        until: Annotated[str | None, typer.Option(help="Before this ISO time.")] = None,
        action: Annotated[str | None, typer.Option(help="Only events of this action.")] = None,
    ) -> None:
        """Export events (CSV, JSON, or FHIR R4 AuditEvent resources in a Bundle)."""
        if fmt not in ("csv", "json", "fhir"):
            raise typer.BadParameter("must be csv, json or fhir", param_hint="--format")
        start, end = _parse_time(since, "--since"), _parse_time(until, "--until")
        with acting(load_settings) as context:
            filters: dict[str, Any] = {
                "format": fmt,
                "since": since,
                "until": until,
                "action": action,
                "out": str(out) if out else None,
            }
            context.allow(Permission.AUDIT_EXPORT, "audit.export", "audit_chain", details=filters)
            count = _export(context.session, out, cast(ExportFormat, fmt), start, end, action)
            context.record("audit.export", "audit_chain", details={**filters, "events": count})
        typer.echo(f"exported {count} events", err=True)


def _checkpoints(settings: Settings, given: list[Path]) -> list[Checkpoint]:
    """The checkpoints named on the command line plus those kept in CLINIC_HOME/audit."""
    for path in given:
        if not path.exists():
            raise ValueError(f"no checkpoint file {path}")
    paths = [*given, settings.audit_dir] if settings.audit_dir.is_dir() else given
    files = {_checkpoint_file(path): path for path in paths}  # each file read once
    return [checkpoint for path in files.values() for checkpoint in load_checkpoints(path)]


def _checkpoint_file(path: Path) -> Path:
    return (path / CHECKPOINT_FILE if path.is_dir() else path).resolve()


def _export(
    session: Session,
    out: Path | None,
    fmt: ExportFormat,
    since: dt.datetime | None,
    until: dt.datetime | None,
    action: str | None,
) -> int:
    with ExitStack() as stack:
        stream: TextIO = (
            stack.enter_context(out.open("w", encoding="utf-8", newline=""))
            if out is not None
            else sys.stdout
        )
        return export_events(session, stream, fmt, since=since, until=until, action=action)


def _print_verification(result: VerifyResult, as_json: bool) -> None:
    if as_json:
        print_json(result.to_json())
        return
    if result.ok:
        typer.echo(
            f"audit chain OK: {result.events} events verified, {result.legacy} legacy, "
            f"{result.checkpoints} checkpoints matched"
        )
    else:
        where = f"event {result.first_bad}" if result.first_bad is not None else "the chain"
        typer.echo(f"audit chain BROKEN at {where}: {result.problem}")


def _register_users(user_app: typer.Typer, load_settings: Callable[[], Settings]) -> None:
    @user_app.command("add")
    def add_command(
        name: Annotated[str, typer.Argument(help="Username (lower-case).")],
        role: RoleOption,
        password_stdin: PasswordStdinOption = False,
    ) -> None:
        """Create an account; the very first one (an admin) needs no sign-in."""
        with acting(load_settings, bootstrap=True) as context:
            if context.principal is not None:  # refuse before asking for a password
                context.allow(Permission.USER_MANAGE, "user.create", "user", name)
            password = _read_password(password_stdin, confirm=True)
            principal = context.principal
            create_user(context.session, context.key, name, Role(role), password, by=principal)
        typer.echo(f"user {name} created ({role.value})")

    @user_app.command("list")
    def list_command(as_json: JsonOption = False) -> None:
        """Accounts, their roles and whether they are active (no password hashes)."""
        with acting(load_settings) as context:
            principal = context.allow(Permission.USER_MANAGE, "user.list", "user")
            users = list_users(context.session, by=principal)
            context.record("user.list", "user", details={"count": len(users)})
        _print_users(users, as_json)

    def toggle(name: str, active: bool) -> None:
        with acting(load_settings) as context:
            set_active(context.session, context.key, name, active, by=context.signed_in())
        typer.echo(f"user {name} {'enabled' if active else 'disabled'}")

    @user_app.command("disable")
    def disable_command(name: Annotated[str, typer.Argument(help="Username.")]) -> None:
        """Refuse further sign-ins of this account (its audit history stays)."""
        toggle(name, False)

    @user_app.command("enable")
    def enable_command(name: Annotated[str, typer.Argument(help="Username.")]) -> None:
        """Allow a disabled account to sign in again."""
        toggle(name, True)

    @user_app.command("passwd")
    def passwd_command(
        name: Annotated[str, typer.Argument(help="Username.")],
        password_stdin: PasswordStdinOption = False,
    ) -> None:
        """Set a new password (an admin for anyone, a user for themself)."""
        with acting(load_settings) as context:
            principal = context.signed_in()
            if principal.username != name:  # refuse before asking for a password
                context.allow(Permission.USER_MANAGE, "user.passwd", "user", name)
            password = _read_password(password_stdin, confirm=True)
            set_password(context.session, context.key, name, password, by=principal)
        typer.echo(f"password of {name} changed")


def _print_users(users: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(users)
        return
    for user in users:
        state = "active" if user["active"] else "disabled"
        typer.echo(
            f"{user['username']:24} {user['role']:12} {state:9} "
            f"last login {user['last_login_at'] or 'never'}"
        )
