"""Audit (admins): the chain's verification status and the searchable, paged event log.

Verifying walks the whole chain, so it runs once per visit (and on demand), not on every rerun;
reading the log and verifying it are themselves audit events (recorded by the services).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from clinic.review.admin import audit_log, chain_status
from clinic.ui import state

PAGE_SIZE = 100
STATUS_KEY, PAGE_KEY = "audit_status", "audit_page"
SEARCH_KEY, ACTION_KEY = "audit_search", "audit_action"


def render(ctx: state.PageContext) -> None:
    st.header("Audit")
    _status(ctx)
    _log(ctx)


def _status(ctx: state.PageContext) -> None:
    status = st.session_state.get(STATUS_KEY)
    if status is None:
        status = chain_status(ctx.store, ctx.principal)
        st.session_state[STATUS_KEY] = status
    columns = st.columns([4, 1])
    with columns[0]:
        show_status(status)
    columns[1].button(
        "Verify again", key="audit_verify", on_click=lambda: st.session_state.pop(STATUS_KEY, None)
    )


def show_status(status: Mapping[str, Any]) -> None:
    checkpoints = f", {status.get('checkpoints', 0)} checkpoint(s) matched"
    if status.get("ok"):
        st.success(f"Audit chain intact: {status['events']} events verified{checkpoints}.")
    else:
        st.error(
            f"Audit chain BROKEN at event {status.get('first_bad')}: "
            f"{status.get('problem')} ({status['events']} events verified before it)."
        )


def _reset_page() -> None:
    st.session_state[PAGE_KEY] = 0


def _log(ctx: state.PageContext) -> None:
    st.subheader("Events")
    filters = st.columns(2)
    search = filters[0].text_input(
        "Search (actor, action, resource, details)", key=SEARCH_KEY, on_change=_reset_page
    )
    action = filters[1].text_input(
        "Action (exact)", key=ACTION_KEY, on_change=_reset_page, placeholder="e.g. review.write"
    )
    page = int(st.session_state.get(PAGE_KEY, 0))
    rows, total = audit_log(
        ctx.store,
        ctx.principal,
        search=search,
        action=action.strip() or None,
        page=page,
        page_size=PAGE_SIZE,
    )
    if not rows:
        st.info("No event matches." if total == 0 else "No event on this page.")
    else:
        st.dataframe(events_frame(rows), hide_index=True)
    _pager(page, total)


def events_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "Id": r["id"],
                "Time": r["occurred_at"],
                "Actor": r["actor"],
                "Role": r["role"],
                "Action": r["action"],
                "Resource": f"{r['resource_type']} {r['resource_id'] or ''}",
                "Outcome": r["outcome"],
                "Details": json.dumps(r.get("details") or {}, sort_keys=True),
            }
            for r in rows
        ]
    )


def _pager(page: int, total: int) -> None:
    pages = max(1, -(-total // PAGE_SIZE))
    columns = st.columns([1, 3, 1])
    columns[0].button(
        "◀ Newer", key="audit_newer", disabled=page == 0, on_click=_move, args=(page - 1,)
    )
    columns[1].caption(f"{total} matching event(s) · page {page + 1} of {pages}")
    columns[2].button(
        "Older ▶", key="audit_older", disabled=page + 1 >= pages, on_click=_move, args=(page + 1,)
    )


def _move(page: int) -> None:
    st.session_state[PAGE_KEY] = max(0, page)
