"""Entry point of the clinician review UI: ``streamlit run clinic/ui/app.py`` (``clinic ui``).

Routing is by query string (``?page=worklist``, ``?page=case&case=E…``) rather than by
Streamlit's multipage URLs, so that a case link is one stable URL and the menu can be built per
role. The single hidden ``st.navigation`` page also switches off Streamlit's automatic
``pages/`` folder discovery, which would otherwise list ``clinic/ui/views/*.py`` as scripts.
"""

from __future__ import annotations

import streamlit as st

from clinic.auth.guard import guard
from clinic.auth.roles import AccessDenied
from clinic.settings import SettingsError
from clinic.ui import state
from clinic.ui.views import PageSpec, allowed_pages, find_page, login

NAV_KEY = "nav"


def main() -> None:
    """One script run: open the store, check the sign-in, draw the menu and the page."""
    st.set_page_config(
        page_title="clinic review", page_icon=":material/stethoscope:", layout="wide"
    )
    try:
        store = state.get_store()
    except (SettingsError, ValueError) as error:
        st.error(f"The store cannot be opened: {error}")
        return
    state.warm_up(store)
    signed_in = state.current_login(store)
    if signed_in is None:
        login.render(store)
        return
    ctx = state.PageContext(store, signed_in.principal)
    page = _navigation(ctx)
    if page is not None:
        page.render(ctx)


def _navigation(ctx: state.PageContext) -> PageSpec | None:
    """The sidebar menu (only the pages the role may open) and the page to render now."""
    offered = allowed_pages(ctx.principal)
    requested = state.requested_page()
    page = find_page(requested) if requested else (offered[0] if offered else None)
    refused = page is not None and page not in offered
    _sidebar(ctx, offered, None if refused or page is None else page.name)
    if page is None:
        st.warning("There is no page for your role, or the page in the address does not exist.")
        return None
    if refused:
        _refuse(ctx, page)
        return None
    return page


def _sidebar(ctx: state.PageContext, offered: list[PageSpec], current: str | None) -> None:
    titles = {page.name: f"{page.icon} {page.title}" for page in offered}
    if st.session_state.get(NAV_KEY) != current:
        st.session_state[NAV_KEY] = current  # follow the query string (links, buttons)
    with st.sidebar:
        st.markdown(f"**{ctx.principal.username}** · {ctx.principal.role.value}")
        st.radio(
            "Go to",
            list(titles),
            key=NAV_KEY,
            format_func=titles.__getitem__,
            on_change=_menu_changed,
        )
        st.button("Sign out", key="sign_out", on_click=_signed_out, args=(ctx,))


def _menu_changed() -> None:
    chosen = st.session_state.get(NAV_KEY)
    if chosen:
        state.go_to(chosen)


def _signed_out(ctx: state.PageContext) -> None:
    state.sign_out(ctx.store, "signed out")
    st.session_state[state.NOTICE_KEY] = "You are signed out."


def _refuse(ctx: state.PageContext, page: PageSpec) -> None:
    """A page the role may not open: say so, and leave the refusal in the audit trail."""
    try:
        guard(ctx.store, ctx.principal, page.permission, "ui.page", "page", page.name)
    except AccessDenied as error:
        st.error(f"Not permitted: {error}")


st.navigation([st.Page(main, title="clinic review", default=True)], position="hidden").run()
