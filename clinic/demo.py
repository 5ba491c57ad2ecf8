"""The second half of ``clinic demo``: a trained model, scored cohort, report, retrieval, audit.

Each step is resumable: a calibrated demo model is reused, the cohort scoring skips scored cases,
demo users are created once. So running the demo twice costs seconds the second time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select

from clinic.audit.chain import AuditKey
from clinic.audit.verify import verify_chain
from clinic.auth.roles import Principal, Role
from clinic.auth.users import create_user
from clinic.inference.cohort import CohortScoreRequest, Progress, score_cohort
from clinic.inference.service import PredictRequest, predict
from clinic.reports.cohort import CohortReportRequest, cohort_report
from clinic.retrieval.search import SimilarRequest, similar
from clinic.store.models import User
from clinic.store.store import Store
from clinic.synth import LABELS
from clinic.train.runner import Reporter, TrainRequest, calibrate, finetune, pretrain

DEMO_MODEL = "demo"
DEMO_COHORT = "demo"
DEMO_USERS = {
    "demo-admin": (Role.ADMIN, "demo-admin-password"),
    "demo-clinician": (Role.CLINICIAN, "demo-clinician-password"),
    "demo-researcher": (Role.RESEARCHER, "demo-researcher-password"),
}


@dataclass(frozen=True)
class DemoResult:
    report: Path
    top_case: str
    prediction: dict[str, Any]
    similar: dict[str, Any]
    audit: dict[str, Any]
    scored: int


def train_demo_model(
    store: Store, reporter: Reporter, *, pretrain_epochs: int = 3, finetune_epochs: int = 6
) -> None:
    """Pretrain, finetune and calibrate ``demo`` on the demo cohort unless already calibrated."""
    home = store.settings.home
    if (home / "models" / DEMO_MODEL / "calibration.json").is_file():
        reporter.note(f"model {DEMO_MODEL!r} is trained and calibrated; reusing it")
        return
    request = TrainRequest(
        home=home, model_name=DEMO_MODEL, cohort=DEMO_COHORT, config_name="cpu-small",
        label_names=tuple(name for name in LABELS if name != "no_finding"),
    )  # fmt: skip
    pretrain(store, replace(request, epochs=pretrain_epochs), reporter)
    finetune(store, replace(request, epochs=finetune_epochs), reporter)
    calibrate(store, request, reporter)


def ensure_demo_users(store: Store) -> None:
    """The three demo logins (printed by the demo; demo mode only)."""
    key = AuditKey.from_settings(store.settings)
    with store.session() as session:
        existing = set(session.scalars(select(User.username)))
        admin = Principal("demo-admin", Role.ADMIN)
        for username, (role, password) in DEMO_USERS.items():
            if username in existing:
                continue
            by = None if not existing and role is Role.ADMIN else admin
            create_user(session, key, username, role, password, by=by)
            existing.add(username)
        session.commit()


def run_demo_analysis(
    store: Store,
    progress: Progress | None = None,
    *,
    model: str = DEMO_MODEL,
    cohort: str = DEMO_COHORT,
) -> DemoResult:
    """Score the demo cohort, write its report, predict and retrieve for the top-risk case."""
    ensure_demo_users(store)
    researcher = Principal("demo-researcher", Role.RESEARCHER)
    clinician = Principal("demo-clinician", Role.CLINICIAN)
    summary = score_cohort(store, researcher, CohortScoreRequest(cohort, model), progress)
    out = store.settings.home / "reports" / cohort
    files = cohort_report(store, researcher, CohortReportRequest(cohort, out, model))
    top = _top_case(files.csv)
    prediction = predict(store, clinician, PredictRequest(top, model))
    hits = similar(store, clinician, SimilarRequest(model=model, case_id=top, k=5))
    with store.session() as session:
        audit = verify_chain(session, AuditKey.from_settings(store.settings)).to_json()
    return DemoResult(files.html, top, prediction, hits, audit, summary.scored)


def _top_case(predictions_csv: Path) -> str:
    """The case with the highest calibrated probability of any finding."""
    import pandas as pd

    frame = pd.read_csv(predictions_csv)
    columns = [c for c in frame.columns if c.startswith("p:")]
    best = int(frame[columns].max(axis=1).to_numpy().argmax())
    return str(frame["case_id"].iloc[best])
