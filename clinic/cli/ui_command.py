"""``clinic ui``: start the clinician review UI (a Streamlit server) on this machine.

The server process is Streamlit's own (``python -m streamlit run clinic/ui/app.py``) and replaces
this one, so signals (Ctrl-C, a service manager's SIGTERM) reach it directly. The environment is
passed through unchanged: the UI reads the same ``CLINIC_*`` settings as every command. The
settings are checked and the schema migrated before the server starts, so a misconfiguration
fails here with a message instead of in the first browser request.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from clinic.settings import Settings
from clinic.store.store import Store

APP_PATH = Path(__file__).resolve().parents[1] / "ui" / "app.py"


def streamlit_command(host: str, port: int, app_path: Path = APP_PATH) -> list[str]:
    """The ``streamlit run`` command line for ``app_path`` on ``host:port``.

    Headless (no browser is opened on a server), no usage statistics sent anywhere, and the
    automatic ``pages/`` menu off: the app builds its own menu per role.
    """
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_path),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.showSidebarNavigation",
        "false",
    ]


def exec_command(argv: Sequence[str]) -> None:
    """Replace this process with ``argv`` (the environment is inherited); tests replace this."""
    os.execv(argv[0], list(argv))


def demo_logins() -> list[str]:
    """``username / password (role)`` of each account that ``clinic demo`` creates."""
    from clinic.demo import DEMO_USERS

    return [
        f"{username} / {password} ({role.value})"
        for username, (role, password) in DEMO_USERS.items()
    ]


def register(app: typer.Typer, load_settings: Callable[[], Settings]) -> None:
    """Attach ``clinic ui`` to the ``clinic`` app."""

    @app.command("ui")
    def ui_command(
        host: Annotated[
            str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8501,
        demo_login: Annotated[
            bool, typer.Option("--demo-login", help="Print the demo store's logins and exit.")
        ] = False,
    ) -> None:
        """Start the clinician review UI (worklist, case view, reviews, cohorts, audit)."""
        if demo_login:
            typer.echo("Demo logins (demo store only, after `clinic demo`):")
            for line in demo_logins():
                typer.echo(f"  {line}")
            return
        settings = load_settings()
        Store.open(settings).close()  # migrate now: the first page load should not wait
        argv = streamlit_command(host, port)
        typer.echo(f"clinic review UI on http://{host}:{port} (store {settings.home})", err=True)
        exec_command(argv)
