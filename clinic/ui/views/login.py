"""Sign-in: accounts and roles come from the store (``clinic user add``), never from the UI.

The form clears itself on submit so the password does not stay in the session's widget state.
"""

from __future__ import annotations

import streamlit as st

from clinic.auth.users import AuthenticationError
from clinic.settings import RunMode
from clinic.store.store import Store
from clinic.ui import state

FORM_KEY = "login_form"
USERNAME_KEY, PASSWORD_KEY, SUBMIT_KEY = "login_username", "login_password", "login_submit"


def render(store: Store) -> None:
    st.title("clinic review")
    notice = st.session_state.pop(state.NOTICE_KEY, None)
    if notice:
        st.info(notice)
    with st.form(FORM_KEY, clear_on_submit=True):
        username = st.text_input("Username", key=USERNAME_KEY, autocomplete="username")
        password = st.text_input(
            "Password", key=PASSWORD_KEY, type="password", autocomplete="current-password"
        )
        submitted = st.form_submit_button("Sign in", key=SUBMIT_KEY, type="primary")
    if store.settings.mode is RunMode.DEMO:
        st.caption("Demo store: run `clinic ui --demo-login` to see the demo accounts.")
    if submitted:
        _attempt(store, username.strip(), password)


def _attempt(store: Store, username: str, password: str) -> None:
    if not username or not password:
        st.error("Enter a username and a password.")
        return
    try:
        state.sign_in(store, username, password)
    except AuthenticationError:
        st.error("Sign-in failed: unknown user or wrong password.")
        return
    st.rerun()
