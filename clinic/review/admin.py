"""Operator and researcher views: ingestion runs, quarantine, audit log, model cards, cohorts.

These are what the admin, models and cohorts pages show; like every service they check the
caller's role first (refusals are audited by the guard). Reading the audit trail, verifying it
and browsing quarantined inputs (whose source paths may name people) are themselves audited;
ingestion runs, model cards and cohort aggregates hold no patient data and are not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, String, cast, func, or_, select
from sqlalchemy.orm import Session

from clinic.audit.chain import AuditKey, canonical_time, record
from clinic.audit.verify import verify_chain
from clinic.auth.guard import guard
from clinic.auth.roles import Permission, Principal
from clinic.store.models import (
    AuditEvent,
    Cohort,
    CohortMember,
    CohortRun,
    IngestRun,
    Prediction,
    QuarantineItem,
)
from clinic.store.store import Store

MODELS_FOLDER = "models"  # CLINIC_HOME/models/<name>/card.json (clinic.train.artifacts layout)
CARD_FILE = "card.json"
REPORT_FILE = "report.html"  # what clinic.reports.cohort_report writes into its out_dir


def _time(value: Any) -> str | None:
    return canonical_time(value) if value is not None else None


def _guard_operator(store: Store, principal: Principal, action: str, resource: str) -> None:
    """Operators: whoever may ingest (admin, batch jobs) or manage users (admin)."""
    can_ingest = principal.can(Permission.INGEST)
    permission = Permission.INGEST if can_ingest else Permission.USER_MANAGE
    guard(store, principal, permission, action, resource)


def ingest_runs(store: Store, principal: Principal, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` ingestion runs with their counts and quarantined inputs."""
    _guard_operator(store, principal, "ingest.runs", "ingest_run")
    with store.session() as session:
        runs = session.scalars(select(IngestRun).order_by(IngestRun.id.desc()).limit(limit)).all()
        quarantined = dict(
            session.execute(
                select(QuarantineItem.ingest_run_id, func.count())
                .where(QuarantineItem.ingest_run_id.in_([run.id for run in runs]))
                .group_by(QuarantineItem.ingest_run_id)
            ).all()
        )
    return [
        {"id": run.id, "started_at": _time(run.started_at), "finished_at": _time(run.finished_at),
         "status": run.status, "command": run.command, "sources": run.sources,
         "counts": run.counts, "code_version": run.code_version,
         "quarantined": int(quarantined.get(run.id, 0))}
        for run in runs
    ]  # fmt: skip


def quarantine(
    store: Store, principal: Principal, reason: str | None = None
) -> list[dict[str, Any]]:
    """Refused inputs (optionally of one reason), oldest first; audited as ``quarantine.view``."""
    _guard_operator(store, principal, "quarantine.view", "quarantine")
    query = select(QuarantineItem).order_by(QuarantineItem.id)
    if reason:
        query = query.where(QuarantineItem.reason == reason)
    with store.session() as session:
        items = [
            {"id": q.id, "ingest_run_id": q.ingest_run_id, "path": q.path, "sha256": q.sha256,
             "kind": q.kind, "reason": q.reason, "message": q.message,
             "created_at": _time(q.created_at)}
            for q in session.scalars(query)
        ]  # fmt: skip
        record(session, AuditKey.from_settings(store.settings), principal, "quarantine.view",
               "quarantine", None, details={"reason": reason, "items": len(items)})  # fmt: skip
        session.commit()
    return items


def audit_log(
    store: Store,
    principal: Principal,
    *,
    search: str = "",
    action: str | None = None,
    page: int = 0,
    page_size: int = 100,
) -> tuple[list[dict[str, Any]], int]:
    """One page of audit events, newest first, and the number matching. ``search`` matches
    (case-insensitively) the actor, action, resource and details. Audited as ``audit.read``."""
    guard(store, principal, Permission.AUDIT_READ, "audit.read", "audit_chain")
    if page < 0 or page_size < 1:
        raise ValueError("page must be 0 or more and page_size at least 1")
    conditions = _audit_conditions(search, action)
    with store.session() as session:
        total = int(session.scalar(select(func.count(AuditEvent.id)).where(*conditions)) or 0)
        events = session.scalars(
            select(AuditEvent).where(*conditions).order_by(AuditEvent.id.desc())
            .offset(page * page_size).limit(page_size)
        ).all()  # fmt: skip
        rows = [_event_json(event) for event in events]
        record(session, AuditKey.from_settings(store.settings), principal, "audit.read",
               "audit_chain", None, details={"search": search, "action": action, "page": page,
                                             "matching": total})  # fmt: skip
        session.commit()
    return rows, total


def _audit_conditions(search: str, action: str | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if action:
        conditions.append(AuditEvent.action == action)
    needle = search.strip().lower()
    if needle:
        details = cast(AuditEvent.details, String)
        fields = (AuditEvent.actor, AuditEvent.action, AuditEvent.resource_type,
                  AuditEvent.resource_id, AuditEvent.outcome, details)  # fmt: skip
        conditions.append(or_(*(func.lower(f).contains(needle, autoescape=True) for f in fields)))
    return conditions


def _event_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "sequence": event.sequence,
        "occurred_at": _time(event.occurred_at),
        "actor": event.actor,
        "role": event.role,
        "action": event.action,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "outcome": event.outcome,
        "details": event.details,
    }


def chain_status(store: Store, principal: Principal) -> dict[str, Any]:
    """Verify the whole audit chain (:func:`clinic.audit.verify.verify_chain`); the check is
    itself recorded as ``audit.verify``, as ``clinic audit verify`` does."""
    guard(store, principal, Permission.AUDIT_READ, "audit.verify", "audit_chain")
    key = AuditKey.from_settings(store.settings)
    with store.session() as session:
        result = verify_chain(session, key).to_json()
        outcome = "success" if result["ok"] else "failure"
        record(session, key, principal, "audit.verify", "audit_chain", None, outcome=outcome,
               details=result)  # fmt: skip
        session.commit()
    return result


def model_cards(store: Store, principal: Principal) -> list[dict[str, Any]]:
    """Every model's card (``CLINIC_HOME/models/*/card.json``), by name; an unreadable card is
    listed with its ``error`` rather than hiding the model."""
    guard(store, principal, Permission.PREDICTION_READ, "model.cards", "model")
    root = store.settings.home / MODELS_FOLDER
    paths = sorted(root.glob(f"*/{CARD_FILE}")) if root.is_dir() else []
    return [_card(path) for path in paths]


def _card(path: Path) -> dict[str, Any]:
    name = path.parent.name
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return {"name": name, "error": f"unreadable card: {error}"}
    if not isinstance(card, dict):
        return {"name": name, "error": "the card is not a JSON object"}
    return {**card, "name": card.get("name", name)}


def cohorts_overview(store: Store, principal: Principal) -> list[dict[str, Any]]:
    """Each cohort: size, cases scored by its latest run's model, that run, and the HTML report
    of its latest ``clinic cohort report`` (None when there is none or it was removed)."""
    guard(store, principal, Permission.COHORT_REPORT, "cohort.list", "cohort")
    with store.session() as session:
        cohorts = session.scalars(select(Cohort).order_by(Cohort.name)).all()
        return [_cohort_json(session, cohort) for cohort in cohorts]


def _cohort_json(session: Session, cohort: Cohort) -> dict[str, Any]:
    members = select(CohortMember.encounter_id).where(CohortMember.cohort_id == cohort.id)
    size = session.scalar(select(func.count()).select_from(members.subquery()))
    run = session.scalars(
        select(CohortRun).where(CohortRun.cohort_id == cohort.id).order_by(CohortRun.id.desc())
    ).first()
    scored = 0
    if run is not None:
        scored_query = select(func.count(func.distinct(Prediction.encounter_id))).where(
            Prediction.model_name == run.model_name, Prediction.encounter_id.in_(members)
        )
        scored = int(session.scalar(scored_query) or 0)
    return {"name": cohort.name, "description": cohort.description, "cases": int(size or 0),
            "scored": scored, "last_run": _run_json(run) if run else None,
            "report": _report_path(session, cohort.name)}  # fmt: skip


def _run_json(run: CohortRun) -> dict[str, Any]:
    return {"id": run.id, "model": run.model_name, "adapter": run.adapter, "status": run.status,
            "started_at": _time(run.started_at), "finished_at": _time(run.finished_at),
            "counts": run.counts, "created_by": run.created_by}  # fmt: skip


def _report_path(session: Session, cohort: str) -> str | None:
    """``report.html`` of the cohort's latest successful report run, if it is still there."""
    details = session.scalar(
        select(AuditEvent.details)
        .where(AuditEvent.action == "cohort.report", AuditEvent.resource_id == cohort,
               AuditEvent.outcome == "success")
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )  # fmt: skip
    if not details or not details.get("out"):
        return None
    path = Path(str(details["out"])) / REPORT_FILE
    return str(path) if path.is_file() else None
