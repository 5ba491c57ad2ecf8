"""Zero-shot scoring and cross-modal retrieval in the shared space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional

from clinic.evaluation.metrics import auroc
from clinic.evaluation.retrieval import precision_at_k_shared_label, recall_at_k
from clinic.models.model import ClinicModel
from clinic.models.prompts import prompts_for
from clinic.train.embeddings import EmbeddingTable

FloatArray = npt.NDArray[np.float64]


@torch.no_grad()
def prompt_embeddings(
    model: ClinicModel, label_names: Sequence[str]
) -> tuple[FloatArray, FloatArray]:
    """(K, D) mean unit embeddings of each label's positive and of its negative prompts."""
    encoder = model.encoders["report"].cpu().eval()
    positives, negatives = [], []
    for name in label_names:
        pos, neg = prompts_for(name)
        positives.append(_mean_text(encoder, list(pos)))
        negatives.append(_mean_text(encoder, list(neg)))
    return np.stack(positives), np.stack(negatives)


def _mean_text(encoder: torch.nn.Module, texts: list[str]) -> FloatArray:
    tokens = encoder.tokenize(texts)  # type: ignore[operator]
    embedded = encoder(tokens["input_ids"], tokens["attention_mask"])
    vector: FloatArray = functional.normalize(embedded.mean(dim=0), dim=0).double().numpy()
    return vector


def zero_shot_scores(
    table: EmbeddingTable, positives: FloatArray, negatives: FloatArray, modalities: Sequence[str]
) -> FloatArray:
    """(N, K) score = cos(case, positive) − cos(case, negative); the case vector is the mean of
    its present non-report embeddings (rows with none: NaN). Reports are left out: scoring a
    report against prompts would read the answer."""
    used = [m for m in modalities if m != "report" and m in table.embeddings]
    total = np.zeros((len(table), positives.shape[1]))
    count = np.zeros((len(table), 1))
    for modality in used:
        mask = table.present[modality].numpy()[:, None]
        total += table.embeddings[modality].double().numpy() * mask
        count += mask
    case = total / np.maximum(count, 1.0)
    case /= np.maximum(np.linalg.norm(case, axis=1, keepdims=True), 1e-12)
    scores = case @ positives.T - case @ negatives.T
    scores[count[:, 0] == 0] = np.nan
    return np.asarray(scores, dtype=np.float64)


def zero_shot_report(
    model: ClinicModel, table: EmbeddingTable, label_names: Sequence[str]
) -> dict[str, object]:
    """Per-label and macro AUROC of prompt scoring on ``table`` (multi-label, NaN-aware)."""
    if "report" not in model.modalities:
        return {"available": False, "reason": "model has no report encoder"}
    positives, negatives = prompt_embeddings(model, label_names)
    scores = zero_shot_scores(table, positives, negatives, model.modalities)
    labels = table.labels.double().numpy()
    per_label: dict[str, float | None] = {}
    for k, name in enumerate(label_names):
        known = np.isfinite(scores[:, k])
        value = auroc(labels[known, k], scores[known, k])
        per_label[name] = None if np.isnan(value) else value
    defined = [v for v in per_label.values() if v is not None]
    return {
        "available": True,
        "per_label": per_label,
        "macro_auroc": float(np.mean(defined)) if defined else None,
    }


def retrieval_report(
    table: EmbeddingTable, fused: FloatArray, groups: npt.NDArray[np.str_]
) -> dict[str, object]:
    """X-ray→report and ECG→report Recall@1/5/10, and patient→patient precision@10 (fused)."""
    out: dict[str, object] = {}
    for source in ("xray", "ecg"):
        if source not in table.embeddings or "report" not in table.embeddings:
            continue
        rows = table.having((source, "report")).numpy()
        if rows.sum() < 10:
            continue
        queries = table.embeddings[source][rows].double().numpy()
        gallery = table.embeddings["report"][rows].double().numpy()
        recall = recall_at_k(queries, gallery, (1, 5, 10))
        out[f"{source}_to_report"] = {f"recall@{k}": v for k, v in recall.items()} | {
            "n": int(rows.sum()),
            "chance@10": min(1.0, 10 / int(rows.sum())),
        }
    unit = fused / np.maximum(np.linalg.norm(fused, axis=1, keepdims=True), 1e-12)
    labels = table.labels.double().numpy()
    out["patient_to_patient"] = {
        "precision@10": precision_at_k_shared_label(unit, labels, 10, exclude_groups=groups),
        "n": len(table),
    }
    return out
