"""The prediction service: ``clinic predict`` and the UI call this, never the model directly.

Every call checks the caller's permission, and every prediction is written together with its
audit event in one transaction, so one never exists without the other. Models are loaded once per
process and reused (keyed by their files' modification times, so a retrained model is picked up).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clinic.audit.chain import AuditKey, record
from clinic.auth.guard import guard
from clinic.auth.roles import Permission, Principal
from clinic.data.cases import Case, load_cases
from clinic.data.dataset import make_collate
from clinic.inference.explain import encode_artifact, explain_case
from clinic.inference.loaded import LoadedModel, load_for_inference
from clinic.inference.records import (
    add_prediction,
    encounter_ids,
    find_prediction,
    prediction_json,
    upsert_embeddings,
)
from clinic.inference.scoring import CaseScore, NoUsableInputError, ScoringOptions, score_cases
from clinic.store.models import Prediction
from clinic.store.store import Store
from clinic.train.artifacts import model_dir
from clinic.train.data import make_dataset
from clinic.train.device import to_device

MAX_EXPLAINED_LABELS = 3


class CaseNotFoundError(LookupError):
    """No case (encounter) with this pseudonymous id in the store."""


@dataclass(frozen=True)
class PredictRequest:
    case_id: str
    model: str
    adapter: str | None = None
    explain: bool = True
    mc_samples: int = 30


def loaded_model(home: Path, name: str, adapter: str | None, device: str | None) -> LoadedModel:
    """A process-wide cache of loaded models; a changed weights/calibration file reloads."""
    directory = model_dir(home, name)
    stamps = tuple(
        (path.stat().st_mtime_ns if path.is_file() else 0)
        for path in (directory / "weights.safetensors", directory / "calibration.json")
    )
    return _cached_model(home, name, adapter, device, stamps)


@functools.lru_cache(maxsize=4)
def _cached_model(
    home: Path, name: str, adapter: str | None, device: str | None, _stamps: tuple[int, ...]
) -> LoadedModel:
    return load_for_inference(home, name, adapter, device)


def load_case(store: Store, case_id: str) -> Case:
    with store.session() as session:
        cases = load_cases(session, case_ids=[case_id])
    if not cases:
        raise CaseNotFoundError(f"no case with id {case_id!r} in the store")
    return cases[0]


def predict(
    store: Store,
    principal: Principal,
    request: PredictRequest,
    *,
    device: str | None = None,
) -> dict[str, Any]:
    """Score one case (any subset of modalities) and store the prediction with its audit event.

    The same case with the same lineage returns the stored prediction (and is audited as a
    read); explanations are computed for the most probable findings when the caller may view
    case content.
    """
    guard(store, principal, Permission.PREDICT, "prediction.create", "case", request.case_id)
    key = AuditKey.from_settings(store.settings)
    loaded = loaded_model(store.settings.home, request.model, request.adapter, device)
    case = load_case(store, request.case_id)
    options = ScoringOptions(batch_size=1, mc_samples=request.mc_samples)
    result = next(iter(score_cases(loaded, [case], store, options)))
    if isinstance(result, NoUsableInputError):
        raise result
    explain = request.explain and principal.can(Permission.CASE_VIEW)
    with store.session() as session:
        encounter_id, patient_id = encounter_ids(session, [case.case_id])[case.case_id]
        row = find_prediction(session, encounter_id, result.lineage_hash)
        action = "prediction.read" if row is not None else "prediction.create"
        if row is None:
            artifacts = _explanations(loaded, case, store, result) if explain else {}
            row = _store_new(session, loaded, principal, encounter_id, result, artifacts)
        elif explain and not row.explanations:
            row.explanations = _explanations(loaded, case, store, result)
            action = "prediction.explain"
        record(session, key, principal, action, "prediction", str(row.id),
               details={"case_id": case.case_id, "model": loaded.name,
                        "adapter": loaded.adapter, "lineage_hash": row.lineage_hash,
                        "subset": row.subset})  # fmt: skip
        session.commit()
        return prediction_json(row, case.case_id, patient_id)


def _store_new(
    session: Any,
    loaded: LoadedModel,
    principal: Principal,
    encounter_id: int,
    score: CaseScore,
    artifacts: Mapping[str, Any],
) -> Prediction:
    upsert_embeddings(session, encounter_id, loaded.lineage.model_key, score.embeddings)
    return add_prediction(
        session, encounter_id, score, model_name=loaded.name, adapter=loaded.adapter,
        model_key=loaded.lineage.model_key, created_by=principal.username,
        explanations=artifacts,
    )  # fmt: skip


def _explanations(
    loaded: LoadedModel, case: Case, store: Store, score: CaseScore
) -> dict[str, dict[str, str]]:
    """Label → artifact name → blob hash, for the most probable findings (non-abstained first:
    an abstained finding is still worth a look at its evidence when nothing else is there)."""
    ranked = sorted(score.findings, key=lambda f: (f.abstained, -f.probability))
    ranked = ranked[:MAX_EXPLAINED_LABELS]
    dataset = make_dataset([case], store, loaded.model, train=False)
    batch = to_device(make_collate(dataset.preprocess)([dataset[0]]), loaded.device)
    out: dict[str, dict[str, str]] = {}
    for finding in ranked:
        index = loaded.label_names.index(finding.label)
        with torch.enable_grad():
            explanation = explain_case(loaded.model, batch, index)
        encoded = encode_artifact(explanation)
        out[finding.label] = {name: store.blobs.put(data) for name, data in encoded.items()}
    return out


def case_predictions(store: Store, principal: Principal, case_id: str) -> list[dict[str, Any]]:
    """Every stored prediction of a case, newest first (audited as a read)."""
    from sqlalchemy import select

    guard(store, principal, Permission.PREDICTION_READ, "prediction.read", "case", case_id)
    key = AuditKey.from_settings(store.settings)
    with store.session() as session:
        found = encounter_ids(session, [case_id])
        if case_id not in found:
            raise CaseNotFoundError(f"no case with id {case_id!r} in the store")
        encounter_id, patient_id = found[case_id]
        rows = session.scalars(
            select(Prediction)
            .where(Prediction.encounter_id == encounter_id)
            .order_by(Prediction.id.desc())
        ).all()
        record(session, key, principal, "prediction.read", "case", case_id,
               details={"predictions": len(rows)})  # fmt: skip
        session.commit()
        return [prediction_json(row, case_id, patient_id) for row in rows]
