"""The review UI end to end, in-process with Streamlit's AppTest, on a scored tiny store.

The store (the tiny trained store, three users, the tiny cohort scored, one case explained) is
built once per module and copied per test; the app finds it through ``CLINIC_*`` variables like
``clinic ui`` does. Assertions read the rendered elements and the database the services wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from sqlalchemy import delete, func, select
from streamlit.testing.v1 import AppTest

import clinic.ui
from clinic.audit.chain import AuditKey
from clinic.auth import users
from clinic.auth.roles import Principal, Role
from clinic.auth.users import create_user
from clinic.inference.cohort import CohortScoreRequest, score_cohort
from clinic.inference.service import PredictRequest, predict
from clinic.review.worklist import WorklistFilter, WorklistRow, worklist
from clinic.settings import Settings
from clinic.store.models import (
    AuditEvent,
    EcgRecord,
    Encounter,
    IngestRun,
    Label,
    Prediction,
    Report,
    Review,
    XrayImage,
)
from clinic.store.store import Store
from clinic.ui.state import LOGIN_KEY
from tests.audit.helpers import cheap_hasher
from tests.conftest import cli_env
from tests.modelkit import TINY_COHORT, TINY_MODEL, copy_store

APP = Path(clinic.ui.__file__).parent / "app.py"
PASSWORDS = {"clin": "clinician-password", "res": "researcher-password", "adm": "admin-password"}
ROLES = {"clin": Role.CLINICIAN, "res": Role.RESEARCHER, "adm": Role.ADMIN}
CLINICIAN = Principal("clin", Role.CLINICIAN)


@pytest.fixture(scope="module")
def scored(tiny_trained: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Tiny store + users + the tiny cohort scored + the top case explained (read-only)."""
    settings = copy_store(tiny_trained, tmp_path_factory.mktemp("ui-scored"))
    store = Store.open(settings)
    key = AuditKey.from_settings(settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(users, "HASHER", cheap_hasher())
        with store.session() as session:
            admin = create_user(session, key, "adm", Role.ADMIN, PASSWORDS["adm"], by=None)
            by = Principal(admin.username, Role.ADMIN, admin.id)
            for name in ("clin", "res"):
                create_user(session, key, name, ROLES[name], PASSWORDS[name], by=by)
            session.commit()
    request = CohortScoreRequest(TINY_COHORT, TINY_MODEL, batch_size=16, mc_samples=2)
    score_cohort(store, Principal("res", Role.RESEARCHER), request)
    predict(store, CLINICIAN, PredictRequest(_complete_case(store), TINY_MODEL, mc_samples=2))
    store.close()
    return settings


@pytest.fixture
def ui_store(scored: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A private copy of the scored store, named in the environment the app reads."""
    settings = copy_store(scored, tmp_path)
    for name, value in cli_env(settings).items():
        if name.startswith("CLINIC_"):
            monkeypatch.setenv(name, value)
    for name in ("CLINIC_UI_IDLE_MINUTES", "CLINIC_USER", "CLINIC_PASSWORD", "CLINIC_AUDIT_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(users, "HASHER", cheap_hasher())
    st.cache_resource.clear()
    st.cache_data.clear()
    store = Store.open(settings)
    yield store
    store.close()
    st.cache_resource.clear()


def _rows(store: Store, filters: WorklistFilter | None = None) -> list[WorklistRow]:
    page = worklist(store, CLINICIAN, filters or WorklistFilter(), page_size=50)
    return page.rows


def _complete_case(store: Store) -> str:
    """The highest-risk case with both an X-ray and an ECG (the one the fixture explains)."""
    return str(_rows(store, WorklistFilter(modalities=("xray", "ecg")))[0].case_id)


def frame(at: AppTest, column: str) -> Any:
    """The first table on the page with ``column``."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _app(**query: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    for name, value in query.items():
        at.query_params[name] = value
    return at


def sign_in(user: str, password: str | None = None, **query: str) -> AppTest:
    at = _app(**query).run()
    at.text_input(key="login_username").input(user)
    at.text_input(key="login_password").input(password or PASSWORDS[user])
    at.button(key="login_submit").click().run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    """Every piece of text on the page (markdown, captions, alerts, headers), one per line."""
    parts: list[Any] = [
        *at.markdown,
        *at.caption,
        *at.info,
        *at.warning,
        *at.error,
        *at.success,
        *at.header,
        *at.subheader,
        *at.title,
    ]
    return "\n".join(str(part.value) for part in parts)


def events(store: Store, action: str) -> list[AuditEvent]:
    with store.session() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        return list(session.scalars(query))


def menu(at: AppTest) -> list[str]:
    """The titles the sidebar menu offers (options read ":material/icon: Title")."""
    return [option.split(" ", 1)[1] for option in at.sidebar.radio(key="nav").options]


def open_buttons(at: AppTest) -> list[str]:
    return [str(b.key)[len("open_") :] for b in at.button if str(b.key).startswith("open_")]


# ---------------------------------------------------------------------------- layering


def test_the_ui_reaches_data_only_through_services() -> None:
    """No page touches the ORM, the database engine or a model class directly."""
    import ast

    forbidden = ("sqlalchemy", "clinic.store.models", "clinic.store.db", "clinic.models")
    offenders = []
    for path in APP.parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(forbidden)]
    assert offenders == []


# ---------------------------------------------------------------------------- login, session


def test_sign_in_offers_the_pages_of_the_role(ui_store: Store) -> None:
    at = sign_in("clin")
    assert menu(at) == ["Worklist", "Case", "Cohorts", "Models"]
    assert [h.value for h in at.header] == ["Worklist"]
    logins = events(ui_store, "auth.login")
    assert [(e.actor, e.outcome) for e in logins] == [("clin", "success")]


def test_failed_sign_in_is_refused_and_audited(ui_store: Store) -> None:
    at = sign_in("clin", "not-the-password")
    assert "Sign-in failed" in texts(at)
    assert at.text_input(key="login_username") is not None  # still on the login form
    assert not at.sidebar.radio
    failures = [(e.actor, e.outcome) for e in events(ui_store, "auth.login")]
    assert failures == [("clin", "failure")]


def test_idle_session_expires_and_signs_out(ui_store: Store) -> None:
    at = sign_in("clin")
    at.session_state[LOGIN_KEY].last_seen -= 31 * 60  # 31 minutes without interaction
    at.run()
    assert "session expired" in texts(at)
    assert not at.sidebar.radio and not at.header
    logout = events(ui_store, "auth.logout")
    assert [(e.actor, (e.details or {}).get("reason")) for e in logout] == [
        ("clin", "idle timeout")
    ]


def test_an_expired_session_ends_on_a_viewer_interaction(ui_store: Store) -> None:
    at = sign_in("clin", page="case", case=_complete_case(ui_store))
    at.session_state[LOGIN_KEY].last_seen -= 31 * 60
    at.selectbox(key="xr_preset").set_value("Bone").run()
    assert "session expired" in texts(at)
    assert not at.image


def test_an_active_session_stays_signed_in(ui_store: Store) -> None:
    at = sign_in("clin")
    at.session_state[LOGIN_KEY].last_seen -= 29 * 60
    at.run()
    assert [h.value for h in at.header] == ["Worklist"]
    assert not events(ui_store, "auth.logout")


def test_sign_out_button(ui_store: Store) -> None:
    at = sign_in("clin")
    at.sidebar.button(key="sign_out").click().run()
    assert "signed out" in texts(at)
    assert LOGIN_KEY not in at.session_state


# ---------------------------------------------------------------------------- worklist


def test_worklist_lists_cases_by_risk_with_counts(ui_store: Store) -> None:
    at = sign_in("clin")
    expected = worklist(ui_store, CLINICIAN, WorklistFilter(), page_size=50)
    assert open_buttons(at) == [row.case_id for row in expected.rows]
    risks = [row.max_risk for row in expected.rows if row.max_risk is not None]
    assert risks == sorted(risks, reverse=True) and len(risks) > 1
    metrics = {m.label: int(m.value) for m in at.metric}
    assert metrics == {
        "Cases": expected.counts["cases"],
        "Flagged": expected.counts["flagged"],
        "Reviewed": 0,
        "Not reviewed": expected.counts["cases"],
    }


def test_worklist_filters(ui_store: Store) -> None:
    at = sign_in("clin")
    everything = open_buttons(at)
    at.multiselect(key="wl_modalities").set_value(["xray", "ecg"]).run()
    with_both = open_buttons(at)
    expected = _rows(ui_store, WorklistFilter(modalities=("xray", "ecg")))
    assert with_both == [row.case_id for row in expected]
    assert 0 < len(with_both) < len(everything)
    assert all({"xray", "ecg"} <= set(row.modalities) for row in expected)
    at.multiselect(key="wl_modalities").set_value([]).run()
    at.selectbox(key="wl_flagged").set_value("any").run()
    flagged = _rows(ui_store, WorklistFilter(flagged="any"))
    assert open_buttons(at) == [row.case_id for row in flagged]
    assert all(row.flagged for row in flagged)
    at.selectbox(key="wl_flagged").set_value(None).run()
    label = at.selectbox(key="wl_label").options[1]  # the first known label
    at.selectbox(key="wl_label").set_value(label).run()
    labelled = _rows(ui_store, WorklistFilter(label=label))
    assert open_buttons(at) == [row.case_id for row in labelled]
    assert 0 < len(labelled) < len(everything)
    at.selectbox(key="wl_label").set_value(None).run()
    at.selectbox(key="wl_cohort").set_value(TINY_COHORT).run()
    assert open_buttons(at) == everything  # every case is in the tiny cohort
    at.selectbox(key="wl_reviewed").set_value(True).run()
    assert open_buttons(at) == [] and "No cases match" in texts(at)


def test_worklist_opens_a_case(ui_store: Store) -> None:
    at = sign_in("clin")
    first = open_buttons(at)[0]
    at.button(key=f"open_{first}").click().run()
    assert at.query_params["page"] == "case" and at.query_params["case"] == first
    assert f"Case {first}" in [h.value for h in at.header]
    assert [e.resource_id for e in events(ui_store, "case.view")] == [first]


# ---------------------------------------------------------------------------- case view


def test_case_page_without_a_case_asks_for_its_id(ui_store: Store) -> None:
    case_id = _rows(ui_store)[-1].case_id
    at = sign_in("clin", page="case")
    assert "Open a case from the worklist" in texts(at)
    at.text_input(key="case_lookup").input(case_id)
    at.button(key="case_lookup_open").click().run()
    assert f"Case {case_id}" in [h.value for h in at.header]
    at.query_params["case"] = "E-no-such-case"
    at.run()
    assert "There is no case 'E-no-such-case'" in texts(at)


def test_case_link_opens_after_sign_in(ui_store: Store) -> None:
    case_id = _complete_case(ui_store)
    at = sign_in("clin", page="case", case=case_id)
    assert f"Case {case_id}" in [h.value for h in at.header]
    findings = frame(at, "Finding")
    assert list(findings["Finding"])  # one row per finding
    assert set(findings.columns) >= {"Finding", "Probability", "Interval", "Status"}
    with ui_store.session() as session:
        stored = session.scalars(
            select(Prediction.lineage_hash)
            .join(Encounter, Encounter.id == Prediction.encounter_id)
            .where(Encounter.pseudonym == case_id)
        ).all()
    lineage = frame(at, "Part")
    assert lineage.loc[lineage["Part"] == "lineage hash", "Value"].tolist() == list(stored)
    assert at.toggle(key="xr_overlay") is not None  # this case was explained
    assert len(at.image) >= 2  # X-ray and ECG (tabs render their content)
    similar = [b for b in at.button if str(b.key).startswith("similar_")]
    assert similar and case_id not in {b.label for b in similar}
    similar[0].click().run()
    assert at.query_params["case"] == similar[0].label
    assert f"Case {similar[0].label}" in [h.value for h in at.header]


def test_case_view_does_not_reload_on_widget_reruns(ui_store: Store) -> None:
    case_id = _complete_case(ui_store)
    at = sign_in("clin", page="case", case=case_id)
    at.selectbox(key="xr_preset").set_value("Lung").run()
    assert at.slider(key="xr_center").value == pytest.approx(0.35)
    at.toggle(key="xr_overlay").set_value(True).run()
    assert not at.exception
    assert len(events(ui_store, "case.view")) == 1


def _review_target(store: Store) -> tuple[str, dict[str, Any]]:
    case_id = _rows(store)[0].case_id
    with store.session() as session:
        prediction = session.scalars(
            select(Prediction)
            .join(Encounter, Encounter.id == Prediction.encounter_id)
            .where(Encounter.pseudonym == case_id)
            .order_by(Prediction.id.desc())
        ).first()
        assert prediction is not None
        finding = max(prediction.findings, key=lambda f: f["probability"])
    return case_id, finding


def _clinician_labels(store: Store, case_id: str, name: str) -> list[tuple[str, float | None]]:
    with store.session() as session:
        rows = session.execute(
            select(Label.state, Label.value)
            .join(Encounter, Encounter.id == Label.encounter_id)
            .where(Encounter.pseudonym == case_id, Label.name == name, Label.source == "clinician")
        ).all()
    return [(str(state), value) for state, value in rows]


def test_accepting_a_finding_is_recorded_and_shown_in_the_worklist(ui_store: Store) -> None:
    case_id, finding = _review_target(ui_store)
    label = finding["label"]
    at = sign_in("clin", page="case", case=case_id)
    at.segmented_control(key=f"rv_{case_id}_{label}_decision").set_value("accept")
    at.button(key="review_submit").click().run()
    assert "Saved 1 review(s)." in texts(at)
    with ui_store.session() as session:
        reviews = session.scalars(select(Review)).all()
        assert [(r.label, r.decision, r.created_by) for r in reviews] == [(label, "accept", "clin")]
    model_says = "positive" if finding["probability"] >= 0.5 else "negative"
    assert [state for state, _ in _clinician_labels(ui_store, case_id, label)] == [model_says]
    assert [e.resource_id for e in events(ui_store, "review.write")] == [case_id]
    at.sidebar.radio(key="nav").set_value("worklist").run()
    assert {m.label: m.value for m in at.metric}["Reviewed"] == "1"
    at.selectbox(key="wl_reviewed").set_value(True).run()
    assert open_buttons(at) == [case_id]


def test_correcting_a_finding_keeps_probability_and_comment(ui_store: Store) -> None:
    case_id, finding = _review_target(ui_store)
    key = f"rv_{case_id}_{finding['label']}"
    at = sign_in("clin", page="case", case=case_id)
    at.segmented_control(key=f"{key}_decision").set_value("correct")
    at.button(key="review_submit").click().run()
    assert "needs the corrected probability" in texts(at)
    at.segmented_control(key=f"{key}_decision").set_value("correct")
    at.number_input(key=f"{key}_p").set_value(0.85)
    at.text_input(key=f"{key}_comment").input("consolidation right lower lobe")
    at.button(key="review_submit").click().run()
    assert "Saved 1 review(s)." in texts(at)
    with ui_store.session() as session:
        review = session.scalars(select(Review)).one()
        assert (review.decision, review.corrected_probability, review.comment) == (
            "correct",
            0.85,
            "consolidation right lower lobe",
        )
    assert _clinician_labels(ui_store, case_id, finding["label"]) == [("positive", 0.85)]


def _strip_to_record_only(store: Store) -> str:
    """Remove every modality but the record from one case that has a record."""
    case_id = _rows(store, WorklistFilter(modalities=("record",)))[-1].case_id
    with store.session() as session:
        encounter = session.scalar(select(Encounter.id).where(Encounter.pseudonym == case_id))
        for table in (XrayImage, EcgRecord, Report):
            session.execute(delete(table).where(table.encounter_id == encounter))
        session.execute(delete(Prediction).where(Prediction.encounter_id == encounter))
        session.commit()
    [row] = [row for row in _rows(store) if row.case_id == case_id]
    assert row.modalities == ("record",)
    return case_id


def test_single_modality_case_says_what_is_not_available(ui_store: Store) -> None:
    case_id = _strip_to_record_only(ui_store)
    at = sign_in("clin", page="case", case=case_id)
    shown = texts(at)
    for missing in ("X-ray: not available", "ECG: not available", "Report: not available"):
        assert missing in shown
    assert "No prediction for this case yet." in shown
    assert frame(at, "Field")["Field"].size > 0  # the record table


def test_predict_button_scores_a_case_without_prediction(ui_store: Store) -> None:
    case_id = _strip_to_record_only(ui_store)
    at = sign_in("clin", page="case", case=case_id)
    at.button(key="predict").click().run()
    assert "Predicted with model tiny." in texts(at)
    assert frame(at, "Finding")["Finding"].size > 0
    assert [e.outcome for e in events(ui_store, "prediction.create")][-1] == "success"


# ---------------------------------------------------------------------------- roles


def test_researcher_cannot_open_audit_or_case(ui_store: Store) -> None:
    at = sign_in("res")
    assert menu(at) == ["Cohorts", "Models"]
    case_id = _rows(ui_store)[0].case_id
    for query in ({"page": "audit"}, {"page": "case", "case": case_id}):
        at = sign_in("res", **query)
        assert "Not permitted" in texts(at)
        assert not at.dataframe and not at.image
    denied = [(e.resource_id, e.outcome) for e in events(ui_store, "ui.page")]
    assert denied == [("audit", "denied"), ("case", "denied")]
    assert not events(ui_store, "case.view") and not events(ui_store, "audit.read")


def test_admin_sees_the_audit_log_and_chain_status(ui_store: Store) -> None:
    at = sign_in("adm", page="audit")
    assert any("Audit chain intact" in s.value for s in at.success)
    log = at.dataframe[0].value
    assert "auth.login" in set(log["Action"])
    at.text_input(key="audit_search").input("review.write").run()
    assert "No event matches." in texts(at)
    at.text_input(key="audit_search").input("").run()
    at.text_input(key="audit_action").input("auth.login").run()
    assert set(at.dataframe[0].value["Action"]) == {"auth.login"}


# ---------------------------------------------------------------------------- other pages


def test_cohorts_page_lists_the_tiny_cohort(ui_store: Store) -> None:
    at = sign_in("res", page="cohorts")
    overview = at.dataframe[0].value
    row = overview[overview["Cohort"] == TINY_COHORT].iloc[0]
    with ui_store.session() as session:
        cases = session.scalar(select(func.count()).select_from(Encounter))
    assert int(row["Cases"]) == cases and int(row["Scored"]) == cases
    assert row["Last run model"] == TINY_MODEL


def test_cohorts_page_scores_and_writes_the_report(ui_store: Store) -> None:
    at = sign_in("res", page="cohorts")
    assert not at.get("download_button")  # no report yet
    at.button(key="cohort_score").click().run()
    with ui_store.session() as session:
        cases = session.scalar(select(func.count()).select_from(Encounter))
    assert f"Scored 0 case(s); {cases} already scored" in texts(at)
    at.button(key="cohort_write_report").click().run()
    assert not at.exception
    report = ui_store.settings.home / "reports" / TINY_COHORT / "report.html"
    assert report.is_file()
    assert at.get("download_button")
    assert [e.resource_id for e in events(ui_store, "cohort.report")] == [TINY_COHORT]


def test_models_page_shows_the_tiny_card(ui_store: Store) -> None:
    import json

    at = sign_in("res", page="models")
    card = json.loads((ui_store.settings.home / "models" / TINY_MODEL / "card.json").read_text())
    assert f"Model {TINY_MODEL}" in [e.label for e in at.expander]
    frames = [d.value for d in at.dataframe]
    calibration = next(f for f in frames if "Mean ECE" in f.columns)
    assert set(calibration["Subset"]) == set(card["calibration"]["subsets"])
    hashes = next(f for f in frames if "sha256" in f.columns)
    assert card["hashes"]["weights"] in set(hashes["sha256"])


def test_ingestion_page_shows_the_runs(ui_store: Store) -> None:
    at = sign_in("adm", page="ingestion")
    with ui_store.session() as session:
        runs = list(session.scalars(select(IngestRun.id).order_by(IngestRun.id.desc())))
    assert list(at.dataframe[0].value["Run"]) == runs
