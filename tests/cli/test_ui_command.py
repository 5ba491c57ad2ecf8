"""``clinic ui``: the Streamlit command line it execs, ``--demo-login``, and a real server start."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from clinic.cli import ui_command
from clinic.cli.main import load_settings
from clinic.demo import DEMO_USERS
from clinic.settings import Settings
from tests.conftest import cli_env, make_settings

APP = typer.Typer()


@APP.callback()
def _group() -> None:
    """A group, as in ``clinic``: ``ui`` is a subcommand."""


ui_command.register(APP, load_settings)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'clinic.db'}")


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Command lines the command would exec (nothing is started)."""
    calls: list[list[str]] = []
    monkeypatch.setattr(ui_command, "exec_command", lambda argv: calls.append(list(argv)))
    return calls


def invoke(settings: Settings, *args: str, **env: str | None) -> Result:
    environment: dict[str, str | None] = {**cli_env(settings), **env}
    return CliRunner().invoke(APP, ["ui", *args], env=environment)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_ui_execs_streamlit_on_the_given_address(
    settings: Settings, launched: list[list[str]]
) -> None:
    result = invoke(settings, "--host", "0.0.0.0", "--port", "8642")
    assert result.exit_code == 0, result.output
    [argv] = launched
    assert argv[1:4] == ["-m", "streamlit", "run"]
    assert Path(argv[4]) == ui_command.APP_PATH and ui_command.APP_PATH.is_file()
    assert option(argv, "--server.address") == "0.0.0.0"
    assert option(argv, "--server.port") == "8642"
    assert option(argv, "--server.headless") == "true"
    assert option(argv, "--browser.gatherUsageStats") == "false"
    assert (settings.home / "clinic.db").is_file()  # migrated before the server starts


def test_ui_defaults_to_this_machine_only(settings: Settings, launched: list[list[str]]) -> None:
    assert invoke(settings).exit_code == 0
    [argv] = launched
    assert (option(argv, "--server.address"), option(argv, "--server.port")) == (
        "127.0.0.1",
        "8501",
    )


def test_demo_login_prints_the_demo_accounts_and_starts_nothing(
    settings: Settings, launched: list[list[str]]
) -> None:
    result = invoke(settings, "--demo-login")
    assert result.exit_code == 0
    for username, (role, password) in DEMO_USERS.items():
        assert f"{username} / {password} ({role.value})" in result.output
    assert launched == []


def test_unsafe_settings_stop_before_the_server_starts(
    settings: Settings, launched: list[list[str]]
) -> None:
    result = invoke(settings, CLINIC_MODE="production", CLINIC_PSEUDONYM_KEY=None)
    assert result.exit_code == 2
    assert "CLINIC_PSEUDONYM_KEY" in result.output
    assert launched == []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_the_streamlit_server_starts_and_answers(settings: Settings) -> None:
    """The exact command line ``clinic ui`` execs serves the app (health endpoint)."""
    port = _free_port()
    argv = ui_command.streamlit_command("127.0.0.1", port)
    server = subprocess.Popen(
        argv, env=cli_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline, answer = time.monotonic() + 120, ""
        while time.monotonic() < deadline and answer != "ok":
            try:
                url = f"http://127.0.0.1:{port}/_stcore/health"
                with urllib.request.urlopen(url, timeout=2) as response:
                    answer = response.read().decode()
            except OSError:
                time.sleep(0.5)
        assert answer == "ok"
    finally:
        server.terminate()
        server.wait(timeout=30)
