"""The demo's analysis half on the tiny trained store: scored cohort, report, prediction,
similar cases, an intact audit trail, demo users; a second run reuses everything."""

from __future__ import annotations

from sqlalchemy import select

from clinic.demo import DEMO_USERS, run_demo_analysis
from clinic.store.models import User
from clinic.store.store import Store
from tests.modelkit import TINY_COHORT, TINY_MODEL


def test_the_demo_ends_with_a_scored_cohort_report_and_retrieval(trained_store: Store) -> None:
    result = run_demo_analysis(trained_store, model=TINY_MODEL, cohort=TINY_COHORT)
    assert result.scored > 0
    assert result.report.is_file() and "<html" in result.report.read_text()[:200].lower()
    assert result.prediction["case_id"] == result.top_case
    assert result.similar["query"] == result.top_case and result.similar["hits"]
    assert result.audit["ok"] and result.audit["events"] > result.scored
    with trained_store.session() as session:
        assert set(session.scalars(select(User.username))) == set(DEMO_USERS)

    again = run_demo_analysis(trained_store, model=TINY_MODEL, cohort=TINY_COHORT)
    assert again.scored == 0  # resumable: everything was scored already
    assert again.audit["ok"]
