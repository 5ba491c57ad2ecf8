"""End to end in a real browser: sign in, open the top case, accept a finding, check the store.

``streamlit run`` on 127.0.0.1 (a free port) driven by Debian's headless Chromium through
Selenium; screenshots of the worklist and the case view are saved under ``test-artifacts/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from bench.browser import (
    CHROMEDRIVER,
    CHROMIUM,
    chromium,
    open_case,
    sign_in,
    streamlit_server,
    wait_clickable,
    wait_for,
    worklist_case_ids,
)
from clinic.audit.chain import AuditKey
from clinic.auth.roles import Principal, Role
from clinic.auth.users import create_user
from clinic.inference.cohort import CohortScoreRequest, score_cohort
from clinic.settings import Settings
from clinic.store.models import AuditEvent, Encounter, Label, Review
from clinic.store.store import Store
from tests.conftest import cli_env
from tests.modelkit import TINY_COHORT, TINY_MODEL, copy_store

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CLINICIAN, PASSWORD = "dr-browser", "browser-password-1"

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture
def review_store(tiny_trained: Settings, tmp_path: Path) -> Iterator[Settings]:
    """The tiny trained store with a scored cohort and a clinician account."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail(
            "Chromium / ChromeDriver missing: run scripts/browser.sh (scripts/test.sh does)"
        )
    settings = copy_store(tiny_trained, tmp_path)
    store = Store.open(settings)
    key = AuditKey.from_settings(settings)
    with store.session() as session:
        admin = create_user(session, key, "admin-browser", Role.ADMIN, "admin-password-1", by=None)
        by = Principal(admin.username, Role.ADMIN, admin.id)
        create_user(session, key, CLINICIAN, Role.CLINICIAN, PASSWORD, by=by)
        session.commit()
    request = CohortScoreRequest(TINY_COHORT, TINY_MODEL, batch_size=16, mc_samples=4)
    score_cohort(store, Principal("scorer", Role.RESEARCHER), request)
    store.close()
    yield settings


def test_a_clinician_reviews_the_top_case_in_the_browser(review_store: Settings) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with streamlit_server(cli_env(review_store)) as url, chromium() as driver:
        sign_in(driver, url, CLINICIAN, PASSWORD)
        cases = worklist_case_ids(driver)
        assert cases, "the worklist lists the scored cases"
        driver.save_screenshot(str(ARTIFACTS / "worklist.png"))
        top = cases[0]
        open_case(driver, top)
        driver.save_screenshot(str(ARTIFACTS / "case-view.png"))

        decision = wait_for(driver, "[class*='st-key-rv_'][class*='_decision']")
        label = _label_of(decision.get_attribute("class") or "", top)
        accept = [b for b in decision.find_elements(By.CSS_SELECTOR, "button")
                  if b.text.strip() == "Accept"]  # fmt: skip
        assert accept, "each finding offers Accept"
        accept[0].click()
        wait_clickable(driver, ".st-key-review_submit button").click()
        WebDriverWait(driver, 60).until(lambda d: f"by {CLINICIAN}" in d.page_source)
        driver.save_screenshot(str(ARTIFACTS / "case-reviewed.png"))

    store = Store.open(review_store)
    try:
        with store.session() as session:
            encounter_id = session.scalar(select(Encounter.id).where(Encounter.pseudonym == top))
            review = session.scalars(
                select(Review).where(Review.encounter_id == encounter_id)
            ).one()
            assert (review.label, review.decision, review.created_by) == (
                label,
                "accept",
                CLINICIAN,
            )
            clinician_label = session.scalars(
                select(Label).where(Label.encounter_id == encounter_id, Label.source == "clinician")
            ).one()
            assert clinician_label.name == label and clinician_label.created_by == CLINICIAN
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "review.write")
            ).all()
            assert [e.actor for e in events] == [CLINICIAN]
            viewed = session.scalars(
                select(AuditEvent).where(
                    AuditEvent.action == "case.view", AuditEvent.resource_id == top
                )
            ).all()
            assert viewed and all(e.actor == CLINICIAN for e in viewed)
    finally:
        store.close()
    assert (ARTIFACTS / "worklist.png").stat().st_size > 10_000
    assert (ARTIFACTS / "case-view.png").stat().st_size > 10_000


def _label_of(css_class: str, case_id: str) -> str:
    """``st-key-rv_<case>_<label>_decision`` → ``<label>``."""
    prefix = f"st-key-rv_{case_id}_"
    for name in css_class.split():
        if name.startswith(prefix) and name.endswith("_decision"):
            return name[len(prefix) : -len("_decision")]
    raise AssertionError(f"no review key in {css_class!r}")
