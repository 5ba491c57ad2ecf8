"""Worklist latency at 1k and 10k cases: does one page stay fast as the store grows?

The worklist is asked for one page on every UI rerun, so its cost must not grow with the number
of cases faster than the SQL it runs (a count and a page query over indexed joins). For each size
this builds a synthetic store straight through the ORM (no images, no model: rows only, shaped as
ingestion and cohort scoring write them), then times ``worklist()`` for page 0 under a few
filters: median and p95 over ``--repeats`` calls, and the 10k / 1k ratio of the medians. The
same builder gives the worklist tests their oracle (:class:`SyntheticCase`).

    .venv/bin/python -m bench.worklist [--sizes 1000,10000] [--repeats 20] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from clinic.auth.roles import Principal, Role
from clinic.inference.records import risk_summary
from clinic.inference.scoring import Finding
from clinic.review.worklist import WorklistFilter, worklist
from clinic.settings import RunMode, Settings
from clinic.store.models import (
    ClinicalRecord,
    Cohort,
    CohortMember,
    EcgRecord,
    Encounter,
    Label,
    Patient,
    Prediction,
    Report,
    Review,
    XrayImage,
)
from clinic.store.store import Store

LABELS = ("Atelectasis", "Edema", "Pneumonia")
MODEL = "bench-model"
OLD_MODEL = "bench-old"
DEFAULT_SIZES = (1_000, 10_000)
FILTERS = {
    "all": WorklistFilter(),
    "flagged": WorklistFilter(flagged="any", reviewed=False),
    "label": WorklistFilter(flagged="Edema", modalities=("xray",)),
    "cohort": WorklistFilter(cohort="even", label="Edema"),
}


@dataclass(frozen=True)
class SyntheticCase:
    """What :func:`populate` wrote for one case (the oracle of the worklist tests)."""

    case_id: str
    patient_id: str
    modalities: tuple[str, ...]
    prediction_id: int | None  # the newest prediction of MODEL
    findings: tuple[dict[str, Any], ...]  # of that prediction
    old_prediction_id: int | None  # the only prediction of OLD_MODEL
    reviewed: bool
    cohorts: tuple[str, ...]
    positive_labels: tuple[str, ...]


@dataclass
class _Plan:
    """One case before it is written: its index decides what it has."""

    index: int
    case_id: str
    findings: list[Finding]

    def has(self, modality: str) -> bool:
        every = {"xray": 2, "ecg": 3, "record": 5, "report": 4}[modality]
        return self.index % every == 0

    @property
    def scored(self) -> bool:
        return self.index % 10 != 9

    @property
    def superseded(self) -> bool:
        return self.scored and self.index % 7 == 0

    @property
    def old_model(self) -> bool:
        return self.index % 11 == 0

    @property
    def reviewed(self) -> bool:
        return self.index % 6 == 0

    @property
    def cohorts(self) -> tuple[str, ...]:
        return ("all", "even") if self.index % 2 == 0 else ("all",)

    @property
    def edema(self) -> str | None:
        return {0: "positive", 1: "negative", 2: "uncertain"}.get(self.index % 9)


def _findings(rng: random.Random, index: int) -> list[Finding]:
    """Random calibrated findings; some abstained, every one abstained for every 37th case."""
    findings = []
    for label in LABELS:
        probability = rng.random()
        abstained = index % 37 == 0 or rng.random() < 0.15
        reason = "bench" if abstained else None
        findings.append(Finding(label, probability, (0.0, 1.0), 0.1, abstained, reason, {}))
    return findings


def populate(session: Session, n: int, *, seed: int = 0, prefix: str = "W") -> list[SyntheticCase]:
    """Write ``n`` synthetic cases (committed) and return what each one got."""
    rng = random.Random(seed)
    plans = [_Plan(i, f"{prefix}{i:06d}", _findings(rng, i)) for i in range(n)]
    patients = _ids(session, Patient, [{"pseudonym": f"{prefix}P{i // 2:06d}"} for i in range(n)
                                       if i % 2 == 0])  # fmt: skip
    encounters = _ids(session, Encounter, [
        {"pseudonym": p.case_id, "patient_id": patients[p.index // 2]} for p in plans
    ])  # fmt: skip
    _modalities(session, plans, encounters)
    old = _predictions(session, [p for p in plans if p.old_model], encounters, OLD_MODEL, 0.2)
    _predictions(session, [p for p in plans if p.superseded], encounters, MODEL, 0.999)
    latest = _predictions(session, [p for p in plans if p.scored], encounters, MODEL, None)
    _reviews(session, plans, encounters, latest)
    _labels(session, plans, encounters)
    _cohorts(session, plans, encounters)
    session.commit()
    return [_case(p, encounters, latest, old, prefix) for p in plans]


def _ids(session: Session, table: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` and return their ids in the order given (both backends)."""
    statement = insert(table).returning(table.id, sort_by_parameter_order=True)
    return [int(i) for i in session.scalars(statement, rows).all()]


def _sha(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def _modalities(session: Session, plans: Sequence[_Plan], encounters: Sequence[int]) -> None:
    def rows(modality: str) -> list[dict[str, Any]]:
        return [{"encounter_id": encounters[p.index], "source_sha256": _sha(modality, p.case_id)}
                for p in plans if p.has(modality)]  # fmt: skip

    blob = _sha("blob")
    session.execute(insert(XrayImage), [{**r, "file_blob": blob, "pixels_blob": blob,
        "raw_pixel_sha256": blob, "source_format": "png", "Rows": 8, "Columns": 8,
        "attributes": {}} for r in rows("xray")])  # fmt: skip
    session.execute(insert(EcgRecord), [{**r, "signal_blob": blob, "source_blobs": [],
        "source_format": "wfdb", "sampling_rate": 500, "source_sampling_rate": 500.0,
        "duration_s": 10.0, "source_duration_s": 10.0, "leads_present": ["I"],
        "dropped_leads": [], "quality_flags": {}} for r in rows("ecg")])  # fmt: skip
    session.execute(insert(ClinicalRecord), [{**r, "schema_name": "clinical_record_v1",
        "heart_rate_bpm": 80.0, "extras": {}, "warnings": []} for r in rows("record")])  # fmt: skip
    blank = [{"encounter_id": encounters[p.index], "source_sha256": _sha("blank", p.case_id),
              "text": "  "} for p in plans if p.index % 4 == 1]  # fmt: skip
    reports = [{**r, "text": "No acute findings."} for r in rows("report")] + blank
    session.execute(insert(Report), [{**r, "kind": "radiology", "sections": {},
        "encoding": "utf-8"} for r in reports])  # fmt: skip


def _predictions(
    session: Session,
    plans: Sequence[_Plan],
    encounters: Sequence[int],
    model: str,
    constant: float | None,
) -> dict[int, int]:
    """One prediction per plan (case index → prediction id); ``constant`` replaces every
    probability (a superseded or other-model prediction the worklist must not show)."""
    rows = []
    for plan in plans:
        findings = [_with(f, constant) for f in plan.findings]
        max_risk, flagged = risk_summary(findings)
        rows.append({"encounter_id": encounters[plan.index], "model_name": model,
                     "model_key": _sha(model), "lineage_hash": _sha(model, constant, plan.case_id),
                     "lineage": {}, "subset": "xray", "findings": [f.to_json() for f in findings],
                     "explanations": {}, "created_by": "bench", "max_risk": max_risk,
                     "flagged": flagged})  # fmt: skip
    return dict(zip([p.index for p in plans], _ids(session, Prediction, rows), strict=True))


def _with(finding: Finding, probability: float | None) -> Finding:
    if probability is None:
        return finding
    return Finding(finding.label, probability, (0.0, 1.0), 0.0, False, None, {})


def _reviews(
    session: Session, plans: Sequence[_Plan], encounters: Sequence[int], latest: dict[int, int]
) -> None:
    session.execute(insert(Review), [{"encounter_id": encounters[p.index],
        "prediction_id": latest.get(p.index), "label": LABELS[0], "decision": "accept",
        "comment": "", "created_by": "bench"} for p in plans if p.reviewed])  # fmt: skip


def _labels(session: Session, plans: Sequence[_Plan], encounters: Sequence[int]) -> None:
    session.execute(insert(Label), [{"encounter_id": encounters[p.index], "name": "Edema",
        "state": p.edema, "source": "ground_truth", "vocabulary": "clinic",
        "value": 1.0 if p.edema == "positive" else 0.0} for p in plans if p.edema])  # fmt: skip


def _cohorts(session: Session, plans: Sequence[_Plan], encounters: Sequence[int]) -> None:
    names = ("all", "even")
    ids = dict(zip(names, _ids(session, Cohort, [{"name": n} for n in names]), strict=True))
    session.execute(insert(CohortMember), [{"cohort_id": ids[name],
        "encounter_id": encounters[p.index]} for p in plans for name in p.cohorts])  # fmt: skip


def _case(
    plan: _Plan, encounters: Sequence[int], latest: dict[int, int], old: dict[int, int], prefix: str
) -> SyntheticCase:
    modalities = tuple(m for m in ("xray", "ecg", "record", "report") if plan.has(m))
    return SyntheticCase(
        case_id=plan.case_id,
        patient_id=f"{prefix}P{plan.index // 2:06d}",
        modalities=modalities,
        prediction_id=latest.get(plan.index),
        findings=tuple(f.to_json() for f in plan.findings) if plan.scored else (),
        old_prediction_id=old.get(plan.index),
        reviewed=plan.reviewed,
        cohorts=plan.cohorts,
        positive_labels=("Edema",) if plan.edema == "positive" else (),
    )


# --------------------------------------------------------------------------- timing


def time_pages(store: Store, repeats: int) -> dict[str, dict[str, float]]:
    """Median and p95 milliseconds of ``worklist()`` page 0 for each of :data:`FILTERS`."""
    principal = Principal("bench", Role.CLINICIAN)
    out = {}
    for name, filters in FILTERS.items():
        worklist(store, principal, filters)  # warm the connection and the statement cache
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            worklist(store, principal, filters)
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        out[name] = {"median_ms": round(statistics.median(times), 2), "p95_ms": round(p95, 2)}
    return out


def run_size(n: int, repeats: int, folder: Path) -> dict[str, Any]:
    home = folder / f"n{n}"
    settings = Settings(home, f"sqlite:///{home / 'clinic.db'}", None, RunMode.TEST)
    store = Store.open(settings)
    try:
        start = time.perf_counter()
        with store.session() as session:
            populate(session, n)
        build_s = time.perf_counter() - start
        return {"n": n, "build_s": round(build_s, 2), "pages": time_pages(store, repeats)}
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="clinic-worklist-bench-") as folder:
        results = [run_size(n, args.repeats, Path(folder)) for n in sizes]
    summary: dict[str, Any] = {"backend": "sqlite", "sizes": results}
    if len(results) >= 2:
        first, last = results[0]["pages"], results[-1]["pages"]
        summary["ratio"] = {
            name: round(last[name]["median_ms"] / first[name]["median_ms"], 2) for name in FILTERS
        }
    _print(summary, args.json)
    return summary


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"worklist page 0 latency ({summary['backend']}), median / p95 ms")
    for result in summary["sizes"]:
        cells = "  ".join(
            f"{name}: {t['median_ms']:.1f} / {t['p95_ms']:.1f}"
            for name, t in result["pages"].items()
        )
        print(f"n={result['n']:>6}  build {result['build_s']:.1f}s  {cells}")
    if "ratio" in summary:
        print("ratio of medians (largest / smallest): " + json.dumps(summary["ratio"]))


if __name__ == "__main__":
    main()
