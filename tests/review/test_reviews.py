"""Reviews: a clinician's accept / reject / correct becomes a review row, a clinician label and a
``review.write`` event, together or not at all; only clinicians may write one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from clinic.audit.chain import AuditKey
from clinic.audit.verify import verify_chain
from clinic.auth.roles import AccessDenied, Principal, Role
from clinic.data.cases import load_cases
from clinic.inference.cohort import CohortScoreRequest, score_cohort
from clinic.inference.service import CaseNotFoundError
from clinic.review import reviews as reviews_module
from clinic.review.case_view import case_view
from clinic.review.reviews import Decision, ReviewError, review_finding
from clinic.review.worklist import WorklistFilter, worklist
from clinic.settings import Settings
from clinic.store.models import AuditEvent, Encounter, Label, Prediction, Review
from clinic.store.store import Store
from tests.modelkit import TINY_COHORT, TINY_MODEL, copy_store

CLINICIAN = Principal("dr-review", Role.CLINICIAN)
SECOND = Principal("dr-second", Role.CLINICIAN)


@pytest.fixture(scope="module")
def scored(tiny_trained: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The tiny store with the tiny cohort scored; read-only (tests copy it)."""
    settings = copy_store(tiny_trained, tmp_path_factory.mktemp("reviews-scored"))
    store = Store.open(settings)
    request = CohortScoreRequest(TINY_COHORT, TINY_MODEL, batch_size=16, mc_samples=2)
    score_cohort(store, Principal("r", Role.RESEARCHER), request)
    store.close()
    return settings


@pytest.fixture
def store(scored: Settings, tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(copy_store(scored, tmp_path), migrate=False)
    yield opened
    opened.close()


def a_finding(store: Store, *, above: bool, index: int = 0) -> tuple[str, int, dict[str, Any]]:
    """(case id, prediction id, finding) of a non-abstained finding at / under 0.5."""
    with store.session() as session:
        rows = session.execute(
            select(Encounter.pseudonym, Prediction.id, Prediction.findings)
            .join(Encounter, Encounter.id == Prediction.encounter_id)
            .order_by(Prediction.id)
        ).all()
    found = [
        (case_id, prediction_id, finding)
        for case_id, prediction_id, findings in rows
        for finding in findings
        if not finding["abstained"] and (finding["probability"] >= 0.5) == above
    ]
    return found[index]


def count(store: Store, query: Any) -> int:
    with store.session() as session:
        return int(session.scalar(query) or 0)


def clinician_labels(store: Store, case_id: str, name: str) -> list[Label]:
    with store.session() as session:
        return list(
            session.scalars(
                select(Label)
                .join(Encounter, Encounter.id == Label.encounter_id)
                .where(Encounter.pseudonym == case_id, Label.name == name,
                       Label.source == "clinician")
                .order_by(Label.id)
            ).all()
        )  # fmt: skip


def review_events(store: Store) -> list[AuditEvent]:
    with store.session() as session:
        query = select(AuditEvent).where(
            AuditEvent.action == "review.write", AuditEvent.outcome == "success"
        )
        return list(session.scalars(query.order_by(AuditEvent.id)).all())


@pytest.mark.parametrize(
    ("decision", "above", "state"),
    [(Decision.ACCEPT, True, "positive"), (Decision.ACCEPT, False, "negative"),
     (Decision.REJECT, True, "negative"), (Decision.REJECT, False, "positive")],
)  # fmt: skip
def test_accept_and_reject_write_the_call_as_a_clinician_label(
    store: Store, decision: Decision, above: bool, state: str
) -> None:
    case_id, prediction_id, finding = a_finding(store, above=above)
    review_id = review_finding(store, CLINICIAN, case_id, prediction_id, finding["label"],
                               decision, comment="  looks right  ")  # fmt: skip
    with store.session() as session:
        review = session.get(Review, review_id)
        assert review is not None
        assert (review.decision, review.label, review.prediction_id) == (
            decision.value, finding["label"], prediction_id
        )  # fmt: skip
        assert (review.comment, review.created_by) == ("looks right", CLINICIAN.username)
        assert review.corrected_probability is None
    [label] = clinician_labels(store, case_id, finding["label"])
    assert (label.state, label.value) == (state, 1.0 if state == "positive" else 0.0)
    assert label.created_by == CLINICIAN.username
    [event] = review_events(store)
    assert (event.actor, event.resource_id, event.outcome) == (CLINICIAN.username, case_id,
                                                               "success")  # fmt: skip
    assert event.details["review_id"] == review_id and event.details["decision"] == decision
    assert "looks right" not in str(event.details)  # free text stays out of the audit trail


def test_a_correction_keeps_the_clinicians_probability(store: Store) -> None:
    case_id, prediction_id, finding = a_finding(store, above=False)
    review_finding(store, CLINICIAN, case_id, prediction_id, finding["label"], "correct",
                   corrected_probability=0.8)  # fmt: skip
    [label] = clinician_labels(store, case_id, finding["label"])
    assert label.state == "positive" and label.value == pytest.approx(0.8)
    with store.session() as session:
        ground = session.scalars(
            select(Label.vocabulary).where(Label.name == finding["label"],
                                           Label.source != "clinician")
        ).first()  # fmt: skip
    assert label.vocabulary == ground  # so vocabulary-restricted loads see it
    review_finding(store, CLINICIAN, case_id, prediction_id, finding["label"], Decision.CORRECT,
                   corrected_probability=0.5)  # fmt: skip
    assert clinician_labels(store, case_id, finding["label"])[-1].state == "positive"


def test_the_clinicians_label_wins_over_ground_truth_when_cases_load(store: Store) -> None:
    case_id, prediction_id, finding = a_finding(store, above=True)
    with store.session() as session:
        [before] = load_cases(session, case_ids=[case_id])
    truth = before.labels.get(finding["label"])
    decision = Decision.REJECT if truth == 1.0 else Decision.ACCEPT
    review_finding(store, CLINICIAN, case_id, prediction_id, finding["label"], decision)
    expected = 0.0 if truth == 1.0 else 1.0
    with store.session() as session:
        [after] = load_cases(session, case_ids=[case_id])
    assert after.labels[finding["label"]] == expected


def test_a_later_review_supersedes_and_both_are_kept(store: Store) -> None:
    case_id, prediction_id, finding = a_finding(store, above=True)
    label = finding["label"]
    first = review_finding(store, CLINICIAN, case_id, prediction_id, label, Decision.ACCEPT)
    second = review_finding(store, SECOND, case_id, prediction_id, label, Decision.REJECT)
    assert second > first
    states = [row.state for row in clinician_labels(store, case_id, label)]
    assert states == ["positive", "negative"]
    view = case_view(store, CLINICIAN, case_id)
    assert [r["review_id"] for r in view.reviews] == [second, first]  # newest first
    assert [r["created_by"] for r in view.reviews] == [SECOND.username, CLINICIAN.username]
    assert len(review_events(store)) == 2


def test_cases_load_the_newest_clinician_label(store: Store) -> None:
    case_id, prediction_id, finding = a_finding(store, above=True)
    label = finding["label"]
    review_finding(store, CLINICIAN, case_id, prediction_id, label, Decision.ACCEPT)
    review_finding(store, SECOND, case_id, prediction_id, label, Decision.REJECT)
    with store.session() as session:
        [case] = load_cases(session, case_ids=[case_id])
    assert case.labels[label] == 0.0


def test_the_worklist_shows_the_case_reviewed(store: Store) -> None:
    case_id, prediction_id, finding = a_finding(store, above=True, index=3)
    unreviewed = worklist(store, CLINICIAN, WorklistFilter(reviewed=False), page_size=100)
    assert case_id in [row.case_id for row in unreviewed.rows]
    review_finding(store, CLINICIAN, case_id, prediction_id, finding["label"], Decision.ACCEPT)
    after = worklist(store, CLINICIAN, WorklistFilter(reviewed=True), page_size=100)
    assert [row.case_id for row in after.rows] == [case_id]
    assert after.counts["reviewed"] == 1
    everyone = worklist(store, CLINICIAN, WorklistFilter()).counts
    assert everyone["unreviewed"] == unreviewed.counts["unreviewed"] - 1


def nothing_written(store: Store) -> bool:
    reviews = count(store, select(func.count(Review.id)))
    labels = count(store, select(func.count(Label.id)).where(Label.source == "clinician"))
    return reviews == labels == len(review_events(store)) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [({"prediction_id": 10**6}, "not a prediction of this case"),
     ({"label": "no_such_label"}, "has no finding"),
     ({"decision": "maybe"}, "unknown decision"),
     ({"decision": Decision.CORRECT}, "needs a probability"),
     ({"decision": Decision.CORRECT, "corrected_probability": 1.5}, "needs a probability"),
     ({"decision": Decision.CORRECT, "corrected_probability": float("nan")},
      "needs a probability"),
     ({"corrected_probability": 0.3}, "takes no corrected probability")],
)  # fmt: skip
def test_invalid_reviews_are_refused_and_write_nothing(
    store: Store, change: dict[str, Any], message: str
) -> None:
    case_id, prediction_id, finding = a_finding(store, above=True)
    arguments: dict[str, Any] = {"prediction_id": prediction_id, "label": finding["label"],
                                 "decision": Decision.ACCEPT, **change}  # fmt: skip
    probability = arguments.pop("corrected_probability", None)
    with pytest.raises(ReviewError, match=message):
        review_finding(store, CLINICIAN, case_id, corrected_probability=probability, **arguments)
    assert nothing_written(store)


def test_a_prediction_of_another_case_is_refused(store: Store) -> None:
    case_id, prediction_id, finding = a_finding(store, above=True)
    other_case = next(
        c for c, _, _ in (a_finding(store, above=True, index=i) for i in range(40)) if c != case_id
    )
    with pytest.raises(ReviewError, match="not a prediction of this case"):
        review_finding(store, CLINICIAN, other_case, prediction_id, finding["label"], "accept")
    with pytest.raises(CaseNotFoundError):
        review_finding(store, CLINICIAN, "E-missing", prediction_id, finding["label"], "accept")
    assert nothing_written(store)


@pytest.mark.parametrize("role", [Role.RESEARCHER, Role.ADMIN, Role.SYSTEM])
def test_only_clinicians_may_review(store: Store, role: Role) -> None:
    case_id, prediction_id, finding = a_finding(store, above=True)
    who = Principal(f"not-a-clinician-{role.value}", role)
    with pytest.raises(AccessDenied):
        review_finding(store, who, case_id, prediction_id, finding["label"], Decision.ACCEPT)
    assert nothing_written(store)
    denied = select(func.count(AuditEvent.id)).where(
        AuditEvent.action == "review.write", AuditEvent.outcome == "denied",
        AuditEvent.actor == who.username,
    )  # fmt: skip
    assert count(store, denied) == 1


def test_review_label_and_event_commit_together_or_not_at_all(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    case_id, prediction_id, finding = a_finding(store, above=True)

    def failing_record(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(reviews_module, "record", failing_record)
    with pytest.raises(RuntimeError):
        review_finding(store, CLINICIAN, case_id, prediction_id, finding["label"], "accept")
    assert nothing_written(store)
    monkeypatch.undo()
    review_finding(store, CLINICIAN, case_id, prediction_id, finding["label"], "accept")
    with store.session() as session:
        assert verify_chain(session, AuditKey.from_settings(store.settings)).ok
