"""Ingestion (admins): recent runs with their counts, and the quarantine with each reason.

Quarantined inputs are the ones refused (unreadable, identifiable, duplicate…); their paths may
name people, so browsing them is audited by the service.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from clinic.review.admin import ingest_runs, quarantine
from clinic.ui import state

REASON_KEY = "quarantine_reason"


def render(ctx: state.PageContext) -> None:
    st.header("Ingestion")
    runs = ingest_runs(ctx.store, ctx.principal)
    st.subheader(f"Runs ({len(runs)} most recent)")
    if runs:
        st.dataframe(runs_frame(runs), hide_index=True)
    else:
        st.info("No ingestion run yet.")
    _quarantine(ctx)


def runs_frame(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "Run": r["id"],
                "Started": r["started_at"],
                "Finished": r["finished_at"],
                "Status": r["status"],
                "Command": r["command"],
                "Sources": _joined(r.get("sources")),
                "Counts": _counts(r.get("counts")),
                "Quarantined": r["quarantined"],
            }
            for r in runs
        ]
    )


def _joined(values: Any) -> str:
    return ", ".join(str(v) for v in values) if isinstance(values, list | tuple) else str(values)


def _counts(counts: Any) -> str:
    if not isinstance(counts, Mapping):
        return ""
    return ", ".join(f"{k}: {v}" for k, v in counts.items() if not isinstance(v, Mapping))


def _quarantine(ctx: state.PageContext) -> None:
    """All quarantined inputs in one (audited) call; the reason filter works on that list."""
    st.subheader("Quarantine")
    items = quarantine(ctx.store, ctx.principal)
    if not items:
        st.info("Nothing quarantined.")
        return
    counts = Counter(str(item["reason"]) for item in items)
    reason = st.selectbox(
        "Reason",
        [None, *sorted(counts)],
        key=REASON_KEY,
        format_func=lambda v: f"{v} ({counts[v]})" if v else f"all reasons ({len(items)})",
    )
    shown = [item for item in items if reason is None or item["reason"] == reason]
    frame = pd.DataFrame(shown)
    columns = [
        c
        for c in ("id", "reason", "message", "kind", "path", "ingest_run_id", "created_at")
        if c in frame.columns
    ]
    st.dataframe(frame[columns], hide_index=True)
