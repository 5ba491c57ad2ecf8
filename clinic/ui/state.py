"""Process-wide store and per-browser-session sign-in for the review UI.

Streamlit reruns the whole script on every interaction. So the store (engine, connection pool,
schema check) is opened once per process with ``st.cache_resource``, keyed by the settings; and
who is signed in lives in ``st.session_state`` (server memory of one browser tab), never in the
URL or a cookie. A sign-in expires after ``CLINIC_UI_IDLE_MINUTES`` (default 30) without any
interaction: an unattended workstation must not keep showing clinical content. Signing in and
out are audited through :mod:`clinic.auth.users` and :mod:`clinic.audit.chain`, as on the CLI.

Navigation state is in the query string (``?page=case&case=E…``) so a case can be linked to;
the link still needs a sign-in in the browser session that opens it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from clinic.audit.chain import AuditKey, record
from clinic.auth.roles import Principal
from clinic.auth.users import AuthenticationError, authenticate
from clinic.inference.service import loaded_model
from clinic.review.worklist import model_names
from clinic.settings import Settings
from clinic.store.store import Store

IDLE_VARIABLE = "CLINIC_UI_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 30.0
LOGIN_KEY = "clinic_login"
NOTICE_KEY = "clinic_notice"
PAGE_PARAM, CASE_PARAM = "page", "case"
_KEPT_ON_SIGN_OUT = frozenset({NOTICE_KEY})
LOG = logging.getLogger(__name__)


@dataclass
class LoginSession:
    """One browser session's sign-in; ``last_seen`` moves on every script run (wall clock)."""

    principal: Principal
    signed_in_at: float
    last_seen: float

    def idle_for(self, now: float) -> float:
        return now - self.last_seen


@dataclass(frozen=True)
class PageContext:
    """What every page renders with: the shared store and who is signed in."""

    store: Store
    principal: Principal


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``CLINIC_*`` variables, checked (raises ``SettingsError`` when unsafe)."""
    settings = Settings.from_env(env)
    settings.check()
    return settings


@st.cache_resource(show_spinner=False)
def _open_store(settings: Settings) -> Store:
    """One store per settings per process (Streamlit hashes the frozen dataclass)."""
    return Store.open(settings)


def get_store() -> Store:
    """The store of the environment's settings, opened (and migrated) once per process."""
    return _open_store(load_settings())


def warm_up(store: Store) -> None:
    """Load the newest model in the background, once per process and store.

    The services cache loaded models per process, but the first similar-case search after a
    start would still pay for loading (about a second and a half on the demo model); started
    while the login page is shown, that is done before the first case is opened.
    """
    _warm_once(store.settings, store)


@st.cache_resource(show_spinner=False)
def _warm_once(settings: Settings, _store: Store) -> threading.Thread | None:
    names = model_names(_store)
    if not names:
        return None
    thread = threading.Thread(
        target=_warm, args=(settings.home, names[0]), name=f"warm-{names[0]}", daemon=True
    )
    thread.start()
    return thread


def _warm(home: Path, model: str) -> None:
    try:
        loaded_model(home, model, None, None)
    except Exception:  # a warm-up must never take the UI down; the real call reports it
        LOG.warning("could not preload model %r", model, exc_info=True)


def idle_timeout_s(env: Mapping[str, str] | None = None) -> float:
    """Seconds without interaction after which a sign-in expires."""
    env = os.environ if env is None else env
    minutes = float(env.get(IDLE_VARIABLE, DEFAULT_IDLE_MINUTES))
    if minutes <= 0:
        raise ValueError(f"{IDLE_VARIABLE} must be positive, got {minutes}")
    return minutes * 60.0


def sign_in(store: Store, username: str, password: str) -> Principal:
    """Authenticate and remember the principal in this browser session.

    The session is committed on failure too: ``authenticate`` adds the failed attempt's audit
    event before raising, and an unrecorded failure would hide password guessing.
    """
    key = AuditKey.from_settings(store.settings)
    with store.session() as session:
        try:
            principal = authenticate(session, key, username, password)
        except AuthenticationError:
            session.commit()
            raise
        session.commit()
    now = time.time()
    st.session_state[LOGIN_KEY] = LoginSession(principal, now, now)
    return principal


def sign_out(store: Store, reason: str) -> None:
    """Audit the sign-out and forget everything this session held (cached case content too)."""
    login = st.session_state.get(LOGIN_KEY)
    if isinstance(login, LoginSession):
        key = AuditKey.from_settings(store.settings)
        with store.session() as session:
            record(
                session,
                key,
                login.principal,
                "auth.logout",
                "user",
                login.principal.username,
                details={"reason": reason},
            )
            session.commit()
    for name in list(st.session_state.keys()):
        if name not in _KEPT_ON_SIGN_OUT:
            del st.session_state[name]


def current_login(store: Store, now: float | None = None) -> LoginSession | None:
    """This session's sign-in, or None; an idle one is signed out (audited) with a notice."""
    login = st.session_state.get(LOGIN_KEY)
    if not isinstance(login, LoginSession):
        return None
    now = time.time() if now is None else now
    timeout = idle_timeout_s()
    if login.idle_for(now) > timeout:
        sign_out(store, "idle timeout")
        minutes = round(timeout / 60.0)
        st.session_state[NOTICE_KEY] = (
            f"Your session expired after {minutes} minutes without activity. Please sign in again."
        )
        return None
    login.last_seen = now
    return login


def keep_alive(now: float | None = None) -> None:
    """For fragment reruns, which skip the app's sign-in check: an expired or missing sign-in
    reruns the whole app (which signs out); otherwise the interaction counts as activity."""
    login = st.session_state.get(LOGIN_KEY)
    now = time.time() if now is None else now
    if not isinstance(login, LoginSession) or login.idle_for(now) > idle_timeout_s():
        st.rerun()
    login.last_seen = now


def requested_page() -> str | None:
    """The page named in the query string, if any."""
    return st.query_params.get(PAGE_PARAM)


def requested_case() -> str | None:
    """The case id named in the query string, if any (stripped; empty means none)."""
    value = st.query_params.get(CASE_PARAM)
    return (value.strip() or None) if value else None


def go_to(page: str, case_id: str | None = None) -> None:
    """Navigate (from a widget callback): the query string is the single source of truth."""
    st.query_params[PAGE_PARAM] = page
    if case_id is not None:
        st.query_params[CASE_PARAM] = case_id


def open_case(case_id: str) -> None:
    """Callback of every "open case" button."""
    go_to("case", case_id)
