"""Cohorts: sizes and scoring status, the HTML cohort report, and batch scoring with progress.

Researchers use this page (it holds pseudonymous ids and aggregates only). Scoring runs in the
browser session's script run with a progress bar; it is resumable, so a closed tab loses at
most the batch in flight and pressing "Score" again finishes the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from clinic.auth.roles import AccessDenied, Permission
from clinic.inference.cohort import CohortScoreRequest, score_cohort
from clinic.reports.cohort import CohortReportRequest, NothingScoredError, cohort_report
from clinic.review.admin import cohorts_overview
from clinic.train.artifacts import ModelNotFoundError
from clinic.ui import state
from clinic.ui.views.models import calibrated_models

REPORTS_FOLDER = "reports"  # CLINIC_HOME/reports/<cohort>/, as ``clinic demo`` writes them
REPORT_HEIGHT = 900


def render(ctx: state.PageContext) -> None:
    st.header("Cohorts")
    cohorts = cohorts_overview(ctx.store, ctx.principal)
    if not cohorts:
        st.info("No cohort yet (ingest with `--cohort NAME`).")
        return
    st.dataframe(overview_frame(cohorts), hide_index=True)
    by_name = {str(c["name"]): c for c in cohorts}
    chosen = st.selectbox("Cohort", list(by_name), key="cohort_choice")
    if chosen is None:
        return
    cohort = by_name[chosen]
    _report(ctx, cohort)
    _scoring(ctx, cohort)


def overview_frame(cohorts: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    rows = []
    for cohort in cohorts:
        run = cohort.get("last_run") or {}
        rows.append(
            {
                "Cohort": cohort["name"],
                "Cases": cohort["cases"],
                "Scored": cohort["scored"],
                "Last run model": run.get("model"),
                "Last run status": run.get("status"),
                "Last run finished": run.get("finished_at"),
                "Report": "yes" if cohort.get("report") else "no",
            }
        )
    return pd.DataFrame(rows)


def _report(ctx: state.PageContext, cohort: Mapping[str, Any]) -> None:
    st.subheader("Report")
    name, path = str(cohort["name"]), cohort.get("report")
    last_model = (cohort.get("last_run") or {}).get("model")
    if st.button(
        "Write report",
        key="cohort_write_report",
        disabled=last_model is None,
        help="Statistics of the latest scoring run",
    ):
        _write_report(ctx, name, last_model)
    if not path:
        st.info("Report: not available yet (score the cohort, then write its report).")
        return
    report = Path(str(path))
    st.download_button(
        "Download report (HTML)",
        report.read_bytes(),
        file_name=f"cohort-{name}.html",
        mime="text/html",
        key="cohort_download",
    )
    if st.toggle("Show the report here", key="cohort_show_report"):
        st.iframe(report, height=REPORT_HEIGHT)


def _write_report(ctx: state.PageContext, cohort: str, model: str | None) -> None:
    out = ctx.store.settings.home / REPORTS_FOLDER / cohort
    try:
        with st.spinner("Writing the cohort report…"):
            cohort_report(ctx.store, ctx.principal, CohortReportRequest(cohort, out, model))
    except (NothingScoredError, AccessDenied) as error:
        st.error(f"No report: {error}")
        return
    st.rerun()


class _Bar:
    """The scoring progress protocol on a Streamlit progress bar."""

    def __init__(self) -> None:
        self.bar = st.progress(0.0, text="starting…")
        self.total, self.done = 0, 0

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self.bar.progress(0.0, text=f"0 of {total} cases")

    def advance(self, amount: int) -> None:
        self.done += amount
        fraction = self.done / self.total if self.total else 1.0
        self.bar.progress(min(fraction, 1.0), text=f"{self.done} of {self.total} cases")


def _scoring(ctx: state.PageContext, cohort: Mapping[str, Any]) -> None:
    if not ctx.principal.can(Permission.COHORT_SCORE):
        return
    st.subheader("Scoring")
    models = calibrated_models(ctx.store)
    if not models:
        st.info("Scoring: not available (no calibrated model in this store).")
        return
    model = st.selectbox("Model", models, key="cohort_model")
    if st.button("Score cohort", key="cohort_score", type="primary") and model:
        _score(ctx, str(cohort["name"]), model)


def _score(ctx: state.PageContext, cohort: str, model: str) -> None:
    bar = _Bar()
    try:
        summary = score_cohort(ctx.store, ctx.principal, CohortScoreRequest(cohort, model), bar)
    except (ModelNotFoundError, AccessDenied, LookupError) as error:
        st.error(f"Scoring failed: {error}")
        return
    st.success(
        f"Scored {summary.scored} case(s); {summary.already_scored} already scored; "
        f"{summary.no_usable_input} without usable input."
    )
