"""Case view: the case's media, the model's findings, the clinician's review, similar cases.

The case is read once per open (one ``case.view`` audit event, one decode of its blobs) and
kept in the session until another case or model is chosen, a review or prediction changes it,
or the clinician reloads: widget reruns (window/level, toggles) never re-read or re-audit it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from clinic.auth.roles import AccessDenied, Permission
from clinic.inference.explain import Explanation
from clinic.inference.scoring import NoUsableInputError
from clinic.inference.service import CaseNotFoundError, PredictRequest, predict
from clinic.review.case_view import CaseView, case_view, similar_cases
from clinic.review.reviews import Decision, ReviewError, review_finding
from clinic.review.worklist import model_names
from clinic.store.store import Store
from clinic.train.artifacts import ModelNotFoundError
from clinic.ui import state
from clinic.ui.render import ecg_snippet_png, thumbnail_png
from clinic.ui.views import case_media
from clinic.ui.views.models import calibrated_models
from schemas.modalities import MODALITIES

LOADED_KEY, NOTICE_KEY, SIMILAR_KEY = "case_loaded", "case_notice", "case_similar_on"
LOOKUP_KEY = "case_lookup"
DECISIONS = tuple(d.value for d in Decision)
SIMILAR_K = 5


@dataclass
class LoadedCase:
    """One opened case: the service's view, digests naming its arrays in the render caches,
    and its similar cases once fetched."""

    case_id: str
    model: str | None
    view: CaseView
    digests: dict[str, str | None]
    similar: list[dict[str, Any]] | None = field(default=None)


def render(ctx: state.PageContext) -> None:
    case_id = state.requested_case()
    if case_id is None:
        _ask_case_id()
        return
    model = _model_choice(ctx.store)
    loaded = _load(ctx, case_id, model)
    if loaded is None:
        return
    _heading(loaded)
    explanation = _explanation_choice(loaded)
    media, side = st.columns([3, 2], gap="large")
    with media:
        _media(loaded, explanation)
        _similar(ctx, loaded)
    with side:
        _findings(ctx, loaded)
        _review(ctx, loaded)


def _ask_case_id() -> None:
    st.header("Case")
    st.info("Open a case from the worklist, or enter its id.")
    st.text_input("Case id", key=LOOKUP_KEY, placeholder="E…")
    st.button("Open", key="case_lookup_open", on_click=_open_typed)


def _open_typed() -> None:
    """Reads the field when clicked (a callback's bound arguments would be the last run's)."""
    case_id = str(st.session_state.get(LOOKUP_KEY) or "").strip()
    if case_id:
        state.open_case(case_id)


def _model_choice(store: Store) -> str | None:
    names: list[str | None] = [None, *model_names(store)]
    return st.sidebar.selectbox(
        "Predictions of model",
        names,
        key="case_model",
        format_func=lambda v: v or "latest of any model",
    )


def invalidate() -> None:
    """Forget the opened case: the next run reads it again (after a review, a prediction)."""
    st.session_state.pop(LOADED_KEY, None)


def _load(ctx: state.PageContext, case_id: str, model: str | None) -> LoadedCase | None:
    cached = st.session_state.get(LOADED_KEY)
    if isinstance(cached, LoadedCase) and (cached.case_id, cached.model) == (case_id, model):
        return cached
    try:
        with st.spinner("Loading the case…"):
            view = case_view(ctx.store, ctx.principal, case_id, model=model)
    except AccessDenied as error:
        st.error(f"Not permitted: {error}")
        return None
    except CaseNotFoundError:
        st.warning(f"There is no case {case_id!r} in this store.")
        return None
    loaded = LoadedCase(case_id, model, view, _digests(view))
    st.session_state[LOADED_KEY] = loaded
    return loaded


def _digests(view: CaseView) -> dict[str, str | None]:
    digests = {"xray": case_media.digest(view.xray), "ecg": case_media.digest(view.ecg)}
    for label, explanation in view.explanations.items():
        digests[f"saliency:{label}"] = case_media.digest(explanation.xray_saliency)
        digests[f"attribution:{label}"] = case_media.digest(explanation.ecg_attribution)
    return digests


def _heading(loaded: LoadedCase) -> None:
    view = loaded.view
    title, actions = st.columns([4, 1])
    title.header(f"Case {view.case_id}")
    present = " · ".join(f"{m} {'✓' if m in view.modalities else '—'}" for m in MODALITIES)
    title.caption(f"Patient {view.patient_id} · {present}")
    actions.button("◀ Worklist", key="case_back", on_click=state.go_to, args=("worklist",))
    actions.button("Reload", key="case_reload", on_click=invalidate)
    notice = st.session_state.pop(NOTICE_KEY, None)
    if notice:
        st.success(notice)


def _explanation_choice(loaded: LoadedCase) -> Explanation | None:
    """The finding whose explanation the overlays show (most probable first)."""
    view = loaded.view
    if not view.explanations:
        return None
    order = _probabilities(view)
    labels = sorted(view.explanations, key=lambda name: (-order.get(name, 0.0), name))
    chosen = st.selectbox("Explain finding", labels, key=f"case_explain_{view.case_id}")
    return view.explanations.get(chosen) if chosen else None


def _probabilities(view: CaseView) -> dict[str, float]:
    findings = view.prediction["findings"] if view.prediction else []
    return {str(f["label"]): float(f["probability"]) for f in findings}


def _media(loaded: LoadedCase, explanation: Explanation | None) -> None:
    view, digests = loaded.view, loaded.digests
    xray, ecg, record, report = st.tabs(["X-ray", "ECG", "Record", "Report"])
    with xray:
        case_media.xray_section(view, digests["xray"], _artifact(loaded, explanation, "saliency"))
    with ecg:
        case_media.ecg_section(view, digests["ecg"], _artifact(loaded, explanation, "attribution"))
    with record:
        case_media.record_section(view)
    with report:
        case_media.report_section(view, explanation)


def _artifact(
    loaded: LoadedCase, explanation: Explanation | None, kind: str
) -> case_media.Artifact | None:
    """(array, digest, label) of the chosen explanation's X-ray saliency or ECG attribution;
    None where the explanation lacks it or it is all zeros (nothing to overlay)."""
    if explanation is None:
        return None
    array = explanation.xray_saliency if kind == "saliency" else explanation.ecg_attribution
    key = loaded.digests.get(f"{kind}:{explanation.label}")
    if array is None or key is None or not np.any(array):
        return None
    return array, key, explanation.label


# ---------------------------------------------------------------------------- findings


def findings_frame(prediction: dict[str, Any]) -> pd.DataFrame:
    """One row per finding: calibrated probability, interval, status and each modality's
    contribution (probability with all the case's modalities minus without that one)."""
    used = list(prediction.get("modalities_used") or [])
    rows = []
    for finding in sorted(prediction["findings"], key=_finding_order):
        low, high = finding.get("interval") or (None, None)
        contributions = finding.get("contributions") or {}
        rows.append(
            {
                "Finding": finding["label"],
                "Probability": finding["probability"],
                "Interval": _interval(low, high),
                "Status": _status(finding),
                **{f"Δ {m}": contributions.get(m) for m in used},
            }
        )
    return pd.DataFrame(rows)


def _finding_order(finding: dict[str, Any]) -> tuple[bool, float, str]:
    return bool(finding.get("abstained")), -float(finding["probability"]), str(finding["label"])


def _interval(low: float | None, high: float | None) -> str:
    return f"{low:.2f}–{high:.2f}" if low is not None and high is not None else "—"


def _status(finding: dict[str, Any]) -> str:
    if finding.get("abstained"):
        return f"abstained: {finding.get('abstain_reason') or 'no reason given'}"
    return "flagged" if float(finding["probability"]) >= 0.5 else "not flagged"


def _findings(ctx: state.PageContext, loaded: LoadedCase) -> None:
    st.subheader("Findings")
    prediction = loaded.view.prediction
    if prediction is None:
        _no_prediction(ctx, loaded)
        return
    st.dataframe(
        findings_frame(prediction),
        hide_index=True,
        column_config={
            "Probability": st.column_config.ProgressColumn(
                min_value=0.0, max_value=1.0, format="%.2f"
            )
        },
    )
    _model_line(prediction)
    _labels(loaded.view)


def _model_line(prediction: dict[str, Any]) -> None:
    model = prediction["model"]
    adapter = f" + adapter {model['adapter']}" if model.get("adapter") else ""
    st.caption(
        f"Model **{model['name']}**{adapter} · version `{str(model['version'])[:12]}` · "
        f"inputs used: {', '.join(prediction['modalities_used'])} · "
        f"scored {prediction['created_at']}"
    )
    with st.expander("Lineage"):
        st.dataframe(lineage_frame(prediction), hide_index=True)


def lineage_frame(prediction: dict[str, Any]) -> pd.DataFrame:
    """What the prediction was computed from: the lineage hash, then each artifact's hash and
    each input blob's (a table, not a JSON viewer, to keep the page light)."""
    rows = [("lineage hash", str(prediction["lineage_hash"]))]
    for name, value in (prediction.get("lineage") or {}).items():
        if isinstance(value, dict):
            rows.extend((f"{name} {part}", str(digest)) for part, digest in value.items())
        else:
            rows.append((name, "—" if value is None else str(value)))
    return pd.DataFrame(rows, columns=["Part", "Value"])


def _labels(view: CaseView) -> None:
    if not view.labels:
        st.caption("Known labels: none.")
        return
    with st.expander(f"Known labels ({len(view.labels)})"):
        frame = pd.DataFrame(view.labels)
        columns = [
            c
            for c in ("name", "state", "value", "source", "created_by", "created_at")
            if c in frame.columns
        ]
        st.dataframe(frame[columns], hide_index=True)


def _no_prediction(ctx: state.PageContext, loaded: LoadedCase) -> None:
    st.info("No prediction for this case yet.")
    if not ctx.principal.can(Permission.PREDICT):
        return
    models = calibrated_models(ctx.store)
    if not models:
        st.warning("Predict: not available (no calibrated model in this store).")
        return
    model = st.selectbox("Model", models, key="predict_model")
    if st.button("Predict", key="predict", type="primary") and model:
        _predict(ctx, loaded, model)


def _predict(ctx: state.PageContext, loaded: LoadedCase, model: str) -> None:
    try:
        with st.spinner(f"Scoring {loaded.case_id} with {model}…"):
            predict(ctx.store, ctx.principal, PredictRequest(loaded.case_id, model))
    except (NoUsableInputError, ModelNotFoundError, AccessDenied) as error:
        st.error(f"Prediction failed: {error}")
        return
    invalidate()
    st.session_state[NOTICE_KEY] = f"Predicted with model {model}."
    st.rerun()


# ---------------------------------------------------------------------------- review


@dataclass(frozen=True)
class _Choice:
    label: str
    decision: str | None  # None: no change
    probability: float | None
    comment: str


def _review(ctx: state.PageContext, loaded: LoadedCase) -> None:
    prediction = loaded.view.prediction
    if prediction is None:
        return
    if not ctx.principal.can(Permission.REVIEW_WRITE):
        st.caption("Reviews are written by clinicians.")
        return
    st.subheader("Review")
    latest = _latest_reviews(loaded.view.reviews)
    with st.form(f"review_{loaded.case_id}", clear_on_submit=True):
        choices = [
            _review_row(loaded.case_id, f, latest.get(f["label"]))
            for f in sorted(prediction["findings"], key=_finding_order)
        ]
        submitted = st.form_submit_button("Save reviews", key="review_submit", type="primary")
    if submitted:
        _save(ctx, loaded, int(prediction["prediction_id"]), choices)


def _latest_reviews(reviews: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Label → its newest review (the service lists reviews newest first)."""
    latest: dict[str, dict[str, Any]] = {}
    for review in reviews:
        latest.setdefault(str(review["label"]), review)
    return latest


def _review_row(case_id: str, finding: dict[str, Any], last: dict[str, Any] | None) -> _Choice:
    """One finding's decision (none chosen: no change), corrected probability and comment."""
    label = str(finding["label"])
    key = f"rv_{case_id}_{label}"
    seen = f" · last: **{last['decision']}** by {last['created_by']}" if last else ""
    st.markdown(f"**{label}** · p = {float(finding['probability']):.2f}{seen}")
    chosen = st.segmented_control(
        "Decision",
        DECISIONS,
        key=f"{key}_decision",
        format_func=str.capitalize,
        label_visibility="collapsed",
    )
    probability, comment = st.columns([2, 3])
    corrected = probability.number_input(
        "Corrected p",
        min_value=0.0,
        max_value=1.0,
        value=None,
        step=0.05,
        key=f"{key}_p",
        label_visibility="collapsed",
        placeholder="new p",
    )
    note = comment.text_input(
        "Comment", key=f"{key}_comment", label_visibility="collapsed", placeholder="comment"
    )
    return _Choice(label, chosen, corrected, note)


def _save(
    ctx: state.PageContext, loaded: LoadedCase, prediction_id: int, choices: list[_Choice]
) -> None:
    chosen = [c for c in choices if c.decision is not None]
    if not chosen:
        st.warning("Choose accept, reject or correct for at least one finding.")
        return
    errors, saved = [], 0
    for choice in chosen:
        try:
            _save_one(ctx, loaded.case_id, prediction_id, choice)
            saved += 1
        except (ReviewError, AccessDenied) as error:
            errors.append(f"{choice.label}: {error}")
    if saved:
        invalidate()
        st.session_state[NOTICE_KEY] = f"Saved {saved} review(s)."
    if errors:
        st.error("Not saved — " + "; ".join(errors))
        return
    st.rerun()


def _save_one(ctx: state.PageContext, case_id: str, prediction_id: int, choice: _Choice) -> None:
    decision = Decision(choice.decision or "")
    if decision is Decision.CORRECT and choice.probability is None:
        raise ReviewError("a correction needs the corrected probability")
    probability = choice.probability if decision is Decision.CORRECT else None
    review_finding(
        ctx.store,
        ctx.principal,
        case_id,
        prediction_id,
        choice.label,
        decision,
        corrected_probability=probability,
        comment=choice.comment,
    )


# ---------------------------------------------------------------------------- similar cases


def _similar(ctx: state.PageContext, loaded: LoadedCase) -> None:
    st.subheader("Similar cases")
    if not st.toggle("Show similar cases", value=True, key=SIMILAR_KEY):
        return
    if loaded.similar is None:
        with st.spinner("Searching similar cases…"):
            loaded.similar = similar_cases(
                ctx.store, ctx.principal, loaded.case_id, model=loaded.model, k=SIMILAR_K
            )
    if not loaded.similar:
        st.info("Similar cases: not available (no model has embedded this case).")
        return
    for hit in loaded.similar:
        _hit(hit)


def _hit(hit: dict[str, Any]) -> None:
    """One similar case as a row: X-ray thumbnail, lead II snippet, then what matched."""
    case_id = str(hit["case_id"])
    picture, strip, about = st.columns([1, 2, 2], vertical_alignment="center")
    thumbnail = hit.get("thumbnail")
    if thumbnail is not None:
        picture.image(_thumbnail_png(case_media.digest(thumbnail) or "", thumbnail))
    else:
        picture.caption("X-ray: not available")
    snippet = hit.get("ecg_snippet")
    rate = int(hit.get("ecg_rate_hz") or 0)
    if snippet is not None and rate > 0:
        strip.image(_snippet_png(case_media.digest(snippet) or "", rate, snippet))
    else:
        strip.caption("ECG: not available")
    about.button(
        case_id,
        key=f"similar_{case_id}",
        on_click=state.open_case,
        args=(case_id,),
        help="Open this case",
        type="tertiary",
    )
    labels = ", ".join(hit.get("labels") or []) or "no positive label"
    by_modality = " · ".join(f"{m} {v:.2f}" for m, v in (hit.get("by_modality") or {}).items())
    about.caption(f"similarity {float(hit['score']):.2f} ({by_modality or 'fused'})  \n{labels}")


@st.cache_data(max_entries=512, show_spinner=False)
def _thumbnail_png(key: str, _image: Any) -> bytes:
    return thumbnail_png(_image, size=96)


@st.cache_data(max_entries=512, show_spinner=False)
def _snippet_png(key: str, rate_hz: int, _samples: Any) -> bytes:
    return ecg_snippet_png(_samples, rate_hz)
