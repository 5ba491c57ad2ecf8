"""Similar-case retrieval: patient → patients, cross-modal (X-ray → reports, ECG → reports) and
free text → cases, all in the model's one shared embedding space.

- Case → cases ranks by the fused embedding: the fusion of whatever modalities the query has
  (or the ``modalities`` asked for), against every stored case's fused embedding. Each hit comes
  with the cosine similarity per modality the two cases share, so a clinician sees *why* they
  are similar.
- Cross-modal: the query case's embedding of one modality against another modality's space.
- Free text: the report encoder embeds the text, searched against report, X-ray and ECG spaces;
  a case's score is its best match.
Every search is an audit event; the caller needs ``similar.search``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sqlalchemy import select

from clinic.audit.chain import AuditKey, record
from clinic.auth.guard import guard
from clinic.auth.roles import Permission, Principal
from clinic.inference.loaded import LoadedModel
from clinic.inference.records import embedding_space, encounter_ids, upsert_embeddings
from clinic.inference.scoring import NoUsableInputError, ScoringOptions, score_cases
from clinic.inference.service import load_case, loaded_model
from clinic.retrieval.backends import Neighbour, search_space
from clinic.retrieval.filters import CaseFilter, allowed_encounters
from clinic.store.models import Embedding, Encounter, Label, Patient
from clinic.store.store import Store
from clinic.train.data import fixed_length_tokenizer
from schemas.modalities import MODALITIES

Vector = npt.NDArray[np.float32]
TARGETS = ("cases", *MODALITIES)
TEXT_TARGETS = ("report", "xray", "ecg")


class RetrievalError(ValueError):
    """A search that cannot be run as asked (the message says why)."""


@dataclass(frozen=True)
class SimilarRequest:
    model: str
    case_id: str | None = None
    text: str | None = None
    k: int = 10
    modalities: tuple[str, ...] = ()  # query modalities to use (default: all the case has)
    target: str = "cases"  # "cases" (fused) or a modality space (cross-modal)
    case_filter: CaseFilter = field(default_factory=CaseFilter)
    include_same_patient: bool = False
    adapter: str | None = None


def similar(store: Store, principal: Principal, request: SimilarRequest) -> dict[str, Any]:
    """Run one search; returns ``{"query", "target", "hits": [{"case_id", "score",
    "by_modality", "labels"}, …]}`` and records it in the audit trail."""
    guard(store, principal, Permission.SIMILAR_SEARCH, "similar.search", "case", request.case_id)
    _check(request)
    loaded = loaded_model(store.settings.home, request.model, request.adapter, None)
    if request.text is not None:
        result = _text_search(store, loaded, request)
    else:
        result = _case_search(store, loaded, request)
    with store.session() as session:
        record(session, AuditKey.from_settings(store.settings), principal, "similar.search",
               "case" if request.case_id else "text", request.case_id,
               details={"model": request.model, "target": request.target, "k": request.k,
                        "filter": request.case_filter.to_json(),
                        "hits": [hit["case_id"] for hit in result["hits"]]})  # fmt: skip
        session.commit()
    return result


def _check(request: SimilarRequest) -> None:
    if (request.case_id is None) == (request.text is None):
        raise RetrievalError("give either a case id or a text query, not both")
    if request.k < 1:
        raise RetrievalError("k must be at least 1")
    if request.target not in TARGETS:
        raise RetrievalError(f"unknown target {request.target!r}: use one of {TARGETS}")
    unknown = set(request.modalities) - set(MODALITIES)
    if unknown:
        raise RetrievalError(f"unknown modalities {sorted(unknown)}: use {MODALITIES}")


def _case_search(store: Store, loaded: LoadedModel, request: SimilarRequest) -> dict[str, Any]:
    case_id = request.case_id or ""
    own = query_embeddings(store, loaded, case_id)
    used = [
        m for m in MODALITIES if m in own and (not request.modalities or m in request.modalities)
    ]
    if not used:
        raise RetrievalError(
            f"case {case_id} has none of the requested modalities {list(request.modalities)}"
        )
    if request.target == "cases":
        vector = own["fused"] if len(used) == len(_unimodal(own)) else _fuse(loaded, own, used)
        space = "fused"
    else:
        sources = [m for m in used if m != request.target] or used
        vector, space = own[sources[0]], request.target
        used = sources[:1]
    key = loaded.lineage.model_key
    neighbours = _neighbours(store, embedding_space(key, space), vector, request, case_id)
    hits = _describe(store, key, neighbours, {m: own[m] for m in used})
    return {"query": case_id, "target": request.target, "modalities": used, "hits": hits}


def _unimodal(embeddings: Mapping[str, Vector]) -> list[str]:
    return [m for m in embeddings if m in MODALITIES]


def query_embeddings(store: Store, loaded: LoadedModel, case_id: str) -> dict[str, Vector]:
    """The case's stored embeddings for this model; computed and stored when missing."""
    key = loaded.lineage.model_key
    with store.session() as session:
        found = encounter_ids(session, [case_id])
        if case_id not in found:
            raise RetrievalError(f"no case with id {case_id!r} in the store")
        encounter_id = found[case_id][0]
        rows = session.execute(
            select(Embedding.modality, Embedding.vector).where(
                Embedding.encounter_id == encounter_id, Embedding.model_key == key
            )
        ).all()
    stored = {str(modality): np.asarray(vector, dtype=np.float32) for modality, vector in rows}
    if "fused" in stored:
        return stored
    case = load_case(store, case_id)
    result = next(iter(score_cases(loaded, [case], store, ScoringOptions(batch_size=1))))
    if isinstance(result, NoUsableInputError):
        raise RetrievalError(str(result))
    with store.session() as session:
        upsert_embeddings(session, encounter_id, key, result.embeddings)
        session.commit()
    return dict(result.embeddings)


def _fuse(loaded: LoadedModel, own: Mapping[str, Vector], used: Sequence[str]) -> Vector:
    """The fused embedding from ``used`` modalities only (the rest hidden)."""
    model = loaded.model
    device = loaded.device
    dim = model.config.embed_dim
    embeddings = {
        m: torch.as_tensor(own.get(m, np.zeros(dim, np.float32)), device=device)[None]
        for m in model.modalities
    }
    present = {m: torch.tensor([m in used], device=device) for m in model.modalities}
    with torch.no_grad():
        fused = model.fusion(embeddings, present).fused.float()
    return np.asarray(torch.nn.functional.normalize(fused, dim=-1)[0].cpu().numpy())


def _neighbours(
    store: Store, space: str, vector: Vector, request: SimilarRequest, exclude_case: str | None
) -> list[Neighbour]:
    """Top k in ``space``, minus the query case (and its patient's other cases by default)."""
    allowed = None if request.case_filter.empty else allowed_encounters(request.case_filter)
    excluded = _excluded(store, exclude_case, request.include_same_patient)
    if excluded:
        base = allowed if allowed is not None else select(Encounter.id)
        allowed = base.where(Encounter.id.not_in(excluded))
    return search_space(store, space, vector, request.k, allowed)


def _excluded(store: Store, case_id: str | None, include_same_patient: bool) -> list[int]:
    if case_id is None:
        return []
    with store.session() as session:
        encounter = session.scalar(select(Encounter).where(Encounter.pseudonym == case_id))
        if encounter is None:
            return []
        if include_same_patient:
            return [encounter.id]
        same = select(Encounter.id).where(Encounter.patient_id == encounter.patient_id)
        return [int(i) for i in session.scalars(same).all()]


def _describe(
    store: Store,
    model_key: str,
    neighbours: Sequence[Neighbour],
    query: Mapping[str, Vector],
    breakdown: Mapping[int, dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Hits with pseudonymous ids, per-modality similarity (computed against ``query``, or
    given as ``breakdown``) and known positive labels."""
    ids = [n.encounter_id for n in neighbours]
    with store.session() as session:
        names = dict(
            session.execute(
                select(Encounter.id, Encounter.pseudonym).where(Encounter.id.in_(ids))
            ).all()
        )
        vectors = session.execute(
            select(Embedding.encounter_id, Embedding.modality, Embedding.vector).where(
                Embedding.encounter_id.in_(ids), Embedding.model_key == model_key
            )
        ).all()
        labels = session.execute(
            select(Label.encounter_id, Label.name).where(
                Label.encounter_id.in_(ids), Label.state == "positive"
            )
        ).all()
        patients = dict(
            session.execute(
                select(Encounter.id, Patient.pseudonym)
                .join(Patient, Patient.id == Encounter.patient_id)
                .where(Encounter.id.in_(ids))
            ).all()
        )
    theirs: dict[int, dict[str, Vector]] = {}
    for encounter_id, modality, vector in vectors:
        theirs.setdefault(int(encounter_id), {})[str(modality)] = np.asarray(vector, np.float32)
    positives: dict[int, set[str]] = {}
    for encounter_id, name in labels:
        positives.setdefault(int(encounter_id), set()).add(str(name))
    return [
        {
            "case_id": names[n.encounter_id],
            "patient_id": patients[n.encounter_id],
            "score": round(n.score, 6),
            "by_modality": breakdown[n.encounter_id]
            if breakdown is not None
            else _by_modality(query, theirs.get(n.encounter_id, {})),
            "labels": sorted(positives.get(n.encounter_id, set())),
        }
        for n in neighbours
        if n.encounter_id in names  # an index may still hold a deleted case
    ]


def _by_modality(query: Mapping[str, Vector], hit: Mapping[str, Vector]) -> dict[str, float]:
    return {
        m: round(float(np.dot(query[m], hit[m])), 6) for m in MODALITIES if m in query and m in hit
    }


def _text_search(store: Store, loaded: LoadedModel, request: SimilarRequest) -> dict[str, Any]:
    if "report" not in loaded.model.modalities:
        raise RetrievalError(f"model {loaded.name!r} has no report encoder for text queries")
    vector = embed_text(loaded, request.text or "")
    key = loaded.lineage.model_key
    targets = (
        [request.target] if request.target != "cases" else [t for t in TEXT_TARGETS
                                                             if t in loaded.model.modalities]
    )  # fmt: skip
    best: dict[int, float] = {}
    by_case: dict[int, dict[str, float]] = {}
    for target in targets:
        for n in _neighbours(store, embedding_space(key, target), vector, request, None):
            by_case.setdefault(n.encounter_id, {})[target] = round(n.score, 6)
            best[n.encounter_id] = max(best.get(n.encounter_id, -1.0), n.score)
    ranked = sorted(best, key=lambda i: -best[i])[: request.k]
    hits = _describe(store, key, [Neighbour(i, best[i]) for i in ranked], {}, by_case)
    return {"query": request.text, "target": request.target, "modalities": targets, "hits": hits}


def embed_text(loaded: LoadedModel, text: str) -> Vector:
    """A free-text query in the shared space (through the report encoder)."""
    model = loaded.model
    tokens = fixed_length_tokenizer(model)([text])
    batch = {f"present_{m}": torch.tensor([m == "report"]) for m in MODALITIES}
    batch["report_input_ids"] = tokens["input_ids"]
    batch["report_attention_mask"] = tokens["attention_mask"]
    moved = {k: v.to(loaded.device) for k, v in batch.items()}
    with torch.no_grad():
        vector = model.embed(moved)["report"].float()[0]
    return np.asarray(vector.cpu().numpy(), dtype=np.float32)
