"""Models: each model's card — data split, calibration per modality subset, lineage hashes.

What a reviewer needs to judge whether a model's probabilities can be trusted for a case that
has only some modalities: the calibration error (ECE) and its sample size per subset, and the
content hashes that a prediction's lineage refers to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from clinic.review.admin import model_cards
from clinic.review.worklist import model_names
from clinic.store.store import Store
from clinic.train.artifacts import CALIBRATION_FILE, models_root
from clinic.ui import state


def calibrated_models(store: Store) -> list[str]:
    """Models that can predict: those with predictions first, then any calibrated one on disk."""
    names = model_names(store)
    root = models_root(store.settings.home)
    on_disk = (
        sorted(p.name for p in root.iterdir() if (p / CALIBRATION_FILE).is_file())
        if root.is_dir()
        else []
    )
    return [*names, *(name for name in on_disk if name not in names)]


def render(ctx: state.PageContext) -> None:
    st.header("Models")
    cards = model_cards(ctx.store, ctx.principal)
    if not cards:
        st.info("No model in this store yet (train one with `clinic train`).")
        return
    for index, card in enumerate(cards):
        with st.expander(f"Model {card['name']}", expanded=index == 0):
            _card(card)


def _card(card: Mapping[str, Any]) -> None:
    if "error" in card:
        st.error(str(card["error"]))
        return
    st.caption(" · ".join(_summary(card)))
    split = split_frame(card.get("data") or {})
    if not split.empty:
        st.markdown("**Data split** (patients never cross splits)")
        st.dataframe(split, hide_index=True)
    _calibration(card)
    if card.get("evaluation"):
        st.markdown("**Evaluation**")
        st.json(card["evaluation"], expanded=False)
    st.markdown("**Lineage hashes**")
    st.dataframe(hashes_frame(card), hide_index=True)


def _summary(card: Mapping[str, Any]) -> list[str]:
    parameters = card.get("parameters") or {}
    parts = [
        f"cohort {card.get('cohort', '?')}",
        f"config {card.get('config_name', '?')}",
        f"modalities {', '.join(card.get('modalities') or [])}",
        f"{len(card.get('label_names') or [])} labels",
        f"created {card.get('created_at', '?')}",
    ]
    if parameters:
        parts.append(
            f"{parameters.get('trainable', '?')} of {parameters.get('total', '?')} "
            "parameters trained"
        )
    return parts


def split_frame(data: Mapping[str, Any]) -> pd.DataFrame:
    rows = [
        {"Split": name, "Cases": part.get("cases"), "Patients": part.get("patients")}
        for name, part in data.items()
        if isinstance(part, Mapping) and "cases" in part
    ]
    return pd.DataFrame(rows)


def calibration_frame(card: Mapping[str, Any]) -> pd.DataFrame:
    """Per modality subset: validation cases, mean ECE and AUROC over labels, and each label's
    ECE (the abstention rule uses these per subset)."""
    subsets = (card.get("calibration") or {}).get("subsets") or {}
    labels: Sequence[str] = card.get("label_names") or []
    rows = []
    for subset, values in sorted(subsets.items(), key=lambda item: (-_n(item[1]), item[0])):
        ece, auroc = _floats(values.get("ece")), _floats(values.get("auroc"))
        row: dict[str, Any] = {
            "Subset": subset,
            "n": _n(values),
            "Mean ECE": _mean(ece),
            "Mean AUROC": _mean(auroc),
        }
        row.update({f"ECE {label}": value for label, value in zip(labels, ece, strict=False)})
        rows.append(row)
    return pd.DataFrame(rows)


def _n(values: Mapping[str, Any]) -> int:
    return int(values.get("n") or 0)


def _floats(values: Any) -> list[float]:
    if isinstance(values, int | float):
        return [float(values)]
    return [float(v) if v is not None else float("nan") for v in values or []]


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _calibration(card: Mapping[str, Any]) -> None:
    frame = calibration_frame(card)
    if frame.empty:
        st.info("Calibration: not available (the model is not calibrated yet).")
        return
    minimum = (card.get("calibration") or {}).get("min_auroc")
    st.markdown(
        f"**Calibration per modality subset** (validation split; findings abstain "
        f"where AUROC < {minimum})"
    )
    st.dataframe(frame, hide_index=True)


def hashes_frame(card: Mapping[str, Any]) -> pd.DataFrame:
    """Every content hash the card names: weights, preprocessing, calibration, adapters."""
    rows = [
        {"Artifact": name, "sha256": value} for name, value in (card.get("hashes") or {}).items()
    ]
    calibration = (card.get("calibration") or {}).get("sha256")
    if calibration:
        rows.append({"Artifact": "calibration", "sha256": calibration})
    for adapter, manifest in (card.get("adapters") or {}).items():
        for key, value in manifest.items() if isinstance(manifest, Mapping) else ():
            if key.endswith("sha256") and isinstance(value, str):
                rows.append({"Artifact": f"adapter {adapter} {key}", "sha256": value})
    return pd.DataFrame(rows, columns=["Artifact", "sha256"])
