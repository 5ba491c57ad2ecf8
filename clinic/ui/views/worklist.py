"""Worklist: the cases to review, highest calibrated risk first, filtered and paged.

Only one page (50 rows) is fetched per run; filtering, counting and sorting happen in SQL in
:func:`clinic.review.worklist.worklist`. Changing a filter goes back to the first page.
"""

from __future__ import annotations

import streamlit as st

from clinic.review.worklist import (
    WorklistFilter,
    WorklistPage,
    WorklistRow,
    cohort_names,
    label_names,
    model_names,
    worklist,
)
from clinic.store.store import Store
from clinic.ui import state

PAGE_SIZE = 50
MODALITIES = ("xray", "ecg", "record", "report")
PAGE_KEY = "wl_page"
REVIEWED_CHOICES: dict[bool | None, str] = {None: "All", False: "Not reviewed", True: "Reviewed"}
ROW_WIDTHS = (3.0, 2.6, 2.0, 0.9, 1.9, 2.4, 1.0, 1.0)
HEADERS = ("Case", "Patient", "Modalities", "Risk", "Top finding", "Flagged", "Reviewed", "Cohorts")


def render(ctx: state.PageContext) -> None:
    st.header("Worklist")
    filters = _filters(ctx.store)
    result = _fetch(ctx, filters)
    _counts(result)
    _table(result)
    _pager(result)


@st.cache_data(ttl=60, show_spinner=False)
def _choices(database_url: str, _store: Store) -> dict[str, list[str]]:
    """Filter options: store-wide names, cached for a minute (keyed by the store's URL)."""
    return {
        "models": model_names(_store),
        "cohorts": cohort_names(_store),
        "labels": label_names(_store),
    }


def _reset_page() -> None:
    st.session_state[PAGE_KEY] = 0


def _filters(store: Store) -> WorklistFilter:
    choices = _choices(store.settings.database_url, store)
    labels: list[str | None] = [None, *choices["labels"]]
    top = st.columns(3)
    model = top[0].selectbox(
        "Model",
        [None, *choices["models"]],
        key="wl_model",
        format_func=lambda v: v or "newest with predictions",
        on_change=_reset_page,
    )
    cohort = top[1].selectbox(
        "Cohort",
        [None, *choices["cohorts"]],
        key="wl_cohort",
        format_func=lambda v: v or "all cohorts",
        on_change=_reset_page,
    )
    modalities = top[2].multiselect(
        "Modalities present", MODALITIES, key="wl_modalities", on_change=_reset_page
    )
    bottom = st.columns(3)
    flagged = bottom[0].selectbox(
        "Flagged finding",
        [None, "any", *choices["labels"]],
        key="wl_flagged",
        format_func=lambda v: v or "no filter",
        on_change=_reset_page,
    )
    reviewed = bottom[1].selectbox(
        "Review status",
        list(REVIEWED_CHOICES),
        key="wl_reviewed",
        format_func=REVIEWED_CHOICES.__getitem__,
        on_change=_reset_page,
    )
    label = bottom[2].selectbox(
        "Known positive label",
        labels,
        key="wl_label",
        format_func=lambda v: v or "no filter",
        on_change=_reset_page,
    )
    return WorklistFilter(
        cohort=cohort,
        modalities=tuple(modalities),
        flagged=flagged,
        reviewed=reviewed,
        label=label,
        model=model,
    )


def _fetch(ctx: state.PageContext, filters: WorklistFilter) -> WorklistPage:
    """The current page; past the end (the list shrank since) falls back to the last page."""
    number = int(st.session_state.get(PAGE_KEY, 0))
    result = worklist(ctx.store, ctx.principal, filters, page=number, page_size=PAGE_SIZE)
    last = max(0, (result.total - 1) // PAGE_SIZE)
    if number > last:
        st.session_state[PAGE_KEY] = last
        result = worklist(ctx.store, ctx.principal, filters, page=last, page_size=PAGE_SIZE)
    return result


def _counts(result: WorklistPage) -> None:
    columns = st.columns(4)
    for column, (name, title) in zip(
        columns,
        (
            ("cases", "Cases"),
            ("flagged", "Flagged"),
            ("reviewed", "Reviewed"),
            ("unreviewed", "Not reviewed"),
        ),
        strict=True,
    ):
        column.metric(title, result.counts.get(name, 0))


def _table(result: WorklistPage) -> None:
    if not result.rows:
        st.info("No cases match these filters.")
        return
    header = st.columns(ROW_WIDTHS)
    for column, title in zip(header, HEADERS, strict=True):
        column.markdown(f"**{title}**")
    for row in result.rows:
        _row(row)


def _row(row: WorklistRow) -> None:
    cells = st.columns(ROW_WIDTHS, vertical_alignment="center")
    cells[0].button(
        row.case_id,
        key=f"open_{row.case_id}",
        on_click=state.open_case,
        args=(row.case_id,),
        help="Open this case",
        type="tertiary",
    )
    cells[1].write(row.patient_id)
    cells[2].write(", ".join(row.modalities) or "—")
    cells[3].markdown(_risk(row))
    cells[4].write(row.top_finding or "—")
    cells[5].write(", ".join(row.flagged) or "—")
    cells[6].write("✅ yes" if row.reviewed else "no")
    cells[7].write(", ".join(row.cohorts) or "—")


def _risk(row: WorklistRow) -> str:
    if row.max_risk is None:
        return "no prediction"
    text = f"{row.max_risk:.2f}"
    return f":red[**{text}**]" if row.flagged else text


def _pager(result: WorklistPage) -> None:
    pages = max(1, -(-result.total // result.page_size))
    first = result.page * result.page_size + 1 if result.total else 0
    last = min(result.total, (result.page + 1) * result.page_size)
    columns = st.columns([1, 3, 1])
    columns[0].button(
        "◀ Previous",
        key="wl_previous",
        disabled=result.page == 0,
        on_click=_move,
        args=(result.page - 1,),
    )
    columns[1].caption(
        f"Cases {first}–{last} of {result.total} · page {result.page + 1} of {pages}"
    )
    columns[2].button(
        "Next ▶",
        key="wl_next",
        disabled=result.page + 1 >= pages,
        on_click=_move,
        args=(result.page + 1,),
    )


def _move(page: int) -> None:
    st.session_state[PAGE_KEY] = max(0, page)
