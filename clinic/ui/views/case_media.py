"""The case page's viewers: X-ray, 12-lead ECG, clinical record and report.

Rendering is the slow part of a case page, so every picture is cached with ``st.cache_data``
under a digest of its input array and the display settings: moving a slider back, reopening a
case or another clinician opening it reuses the PNG. The arrays themselves are passed as
underscore arguments (not hashed on every call); the digest is computed once when the case is
loaded. The X-ray viewer is a fragment, so dragging window/level reruns only the viewer.
Every viewer says plainly when its modality or explanation is not available.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import streamlit as st

from clinic.inference.explain import Explanation
from clinic.ingest.types import STANDARD_LEADS
from clinic.review.case_view import CaseView, RecordValue
from clinic.ui import render, state

PRESET_KEY, CENTER_KEY, WIDTH_KEY = "xr_preset", "xr_center", "xr_width"
ZOOM_KEY, OVERLAY_KEY, OPACITY_KEY = "xr_zoom", "xr_overlay", "xr_opacity"
ECG_OVERLAY_KEY, REPORT_HIGHLIGHT_KEY = "ecg_overlay", "report_highlight"
CUSTOM = "Custom"
SAFE_XRAY_META = ("ViewPosition", "Rows", "Columns", "PixelSpacing", "Modality")
FLAG_MARKS = {"low": "▼ low", "high": "▲ high"}

Artifact = tuple[npt.NDArray[np.float32], str, str]
"""An explanation array to overlay, its digest and the finding it explains."""


def digest(array: npt.NDArray[Any] | None) -> str | None:
    """Content digest (shape, dtype and bytes) naming an array in the render caches."""
    if array is None:
        return None
    values = np.ascontiguousarray(array)
    header = f"{values.shape}|{values.dtype}|".encode()
    return hashlib.blake2b(header + values.tobytes(), digest_size=16).hexdigest()


# ---------------------------------------------------------------------------- X-ray


@st.cache_data(max_entries=256, show_spinner=False)
def _xray_png(
    image_digest: str,
    center: float,
    width: float,
    zoom: float,
    overlay_digest: str | None,
    opacity: float,
    _image: npt.NDArray[np.float32],
    _overlay: npt.NDArray[np.float32] | None,
) -> bytes:
    return render.xray_png(
        _image, center=center, width=width, zoom=zoom, overlay=_overlay, opacity=opacity
    )


def _init_xray_controls() -> None:
    """Defaults set through the session state (not ``value=``), so presets can move sliders."""
    center, width = render.WINDOW_PRESETS["Default"]
    for key, value in (
        (PRESET_KEY, "Default"),
        (CENTER_KEY, center),
        (WIDTH_KEY, width),
        (ZOOM_KEY, 1.0),
        (OVERLAY_KEY, False),
        (OPACITY_KEY, 0.4),
    ):
        st.session_state.setdefault(key, value)


def _apply_preset() -> None:
    preset = st.session_state.get(PRESET_KEY)
    if preset in render.WINDOW_PRESETS:
        center, width = render.WINDOW_PRESETS[preset]
        st.session_state[CENTER_KEY], st.session_state[WIDTH_KEY] = center, width


def _custom_window() -> None:
    st.session_state[PRESET_KEY] = CUSTOM


def xray_section(view: CaseView, image_digest: str | None, saliency: Artifact | None) -> None:
    if view.xray is None or image_digest is None:
        st.info("X-ray: not available for this case.")
        return
    _xray_viewer(view.xray, image_digest, saliency, _meta_caption(view.xray_meta))


@st.fragment
def _xray_viewer(
    image: npt.NDArray[np.float32], image_digest: str, saliency: Artifact | None, caption: str
) -> None:
    state.keep_alive()
    _init_xray_controls()
    left, right = st.columns([1, 3])
    with left:
        st.selectbox(
            "Window preset",
            [*render.WINDOW_PRESETS, CUSTOM],
            key=PRESET_KEY,
            on_change=_apply_preset,
        )
        st.slider("Level (centre)", 0.0, 1.0, step=0.01, key=CENTER_KEY, on_change=_custom_window)
        st.slider("Window (width)", 0.02, 1.0, step=0.01, key=WIDTH_KEY, on_change=_custom_window)
        st.slider("Zoom", 1.0, 4.0, step=0.25, key=ZOOM_KEY)
        overlay = _overlay_controls(saliency)
    values = st.session_state
    overlay_map, overlay_digest = (
        (saliency[0], saliency[1]) if overlay and saliency else (None, None)
    )
    png = _xray_png(
        image_digest,
        float(values[CENTER_KEY]),
        float(values[WIDTH_KEY]),
        float(values[ZOOM_KEY]),
        overlay_digest,
        float(values[OPACITY_KEY]),
        image,
        overlay_map,
    )
    right.image(png, caption=caption)


def _overlay_controls(saliency: Artifact | None) -> bool:
    if saliency is None:
        st.caption("Saliency overlay: not available (no X-ray explanation for this prediction).")
        return False
    on = st.toggle(f"Saliency overlay ({saliency[2]})", key=OVERLAY_KEY)
    st.slider("Overlay opacity", 0.0, 1.0, step=0.05, key=OPACITY_KEY, disabled=not on)
    return on


def _meta_caption(meta: Mapping[str, Any]) -> str:
    shown = [f"{key} {meta[key]}" for key in SAFE_XRAY_META if meta.get(key) not in (None, "")]
    return " · ".join(shown) or "Chest X-ray"


# ---------------------------------------------------------------------------- ECG


@st.cache_data(max_entries=64, show_spinner=False)
def _ecg_png(
    signal_digest: str,
    rate_hz: int,
    attribution_digest: str | None,
    flags: tuple[tuple[str, str], ...],
    _signal: npt.NDArray[np.float32],
    _attribution: npt.NDArray[np.float32] | None,
) -> bytes:
    return render.ecg_paper_png(_signal, rate_hz, attribution=_attribution, lead_flags=dict(flags))


def lead_flags(quality: Mapping[str, Any]) -> dict[str, str]:
    """Standard lead → its quality flags as one reason (``"record"``-wide flags excluded)."""
    out: dict[str, str] = {}
    for lead in STANDARD_LEADS:
        flags = quality.get(lead)
        if flags:
            out[lead] = ", ".join(flags) if isinstance(flags, list | tuple) else str(flags)
    return out


def ecg_section(view: CaseView, signal_digest: str | None, attribution: Artifact | None) -> None:
    if view.ecg is None or signal_digest is None:
        st.info("ECG: not available for this case.")
        return
    flags = lead_flags(view.ecg_quality)
    if attribution is None:
        st.caption("Attribution overlay: not available (no ECG explanation for this prediction).")
        shown = None
    else:
        on = st.toggle(f"Attribution overlay ({attribution[2]})", key=ECG_OVERLAY_KEY)
        shown = attribution if on else None
    png = _ecg_png(
        signal_digest,
        view.ecg_rate_hz,
        shown[1] if shown else None,
        tuple(sorted(flags.items())),
        view.ecg,
        shown[0] if shown else None,
    )
    st.image(png, caption=f"12-lead ECG · {view.ecg_rate_hz} Hz · 25 mm/s · 10 mm/mV")
    _quality_note(flags, view.ecg_quality.get("record"))


def _quality_note(flags: Mapping[str, str], record_flags: Sequence[str] | None) -> None:
    if flags:
        listed = "; ".join(f"{lead}: {reason}" for lead, reason in flags.items())
        st.warning(f"Lead quality: {listed}")
    else:
        st.caption("Lead quality: all 12 leads usable.")
    if record_flags:
        st.caption(f"Whole record: {', '.join(record_flags)}")


# ---------------------------------------------------------------------------- record, report


def record_frame(values: Sequence[RecordValue]) -> pd.DataFrame:
    """The record as a table: value, unit, adult reference range and the out-of-range flag."""
    return pd.DataFrame(
        [
            {
                "Field": v.name,
                "Value": _value_text(v.value),
                "Unit": v.unit or "",
                "Reference": _range_text(v.low, v.high),
                "Flag": FLAG_MARKS.get(v.flag or "", ""),
            }
            for v in values
        ]
    )


def _value_text(value: float | str | None) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"{low:g}–{high:g}"
    if low is not None:
        return f"≥ {low:g}"
    return f"≤ {high:g}" if high is not None else ""


def _flag_style(row: pd.Series) -> list[str]:
    colour = "background-color: rgba(214, 39, 40, 0.18)" if row["Flag"] else ""
    return [colour] * len(row)


def record_section(view: CaseView) -> None:
    if not view.record:
        st.info("Clinical record: not available for this case.")
        return
    frame = record_frame(view.record)
    flagged = int((frame["Flag"] != "").sum())
    st.dataframe(frame.style.apply(_flag_style, axis=1), hide_index=True)
    st.caption(
        f"{flagged} value(s) outside the adult reference range."
        if flagged
        else "All values within the adult reference ranges (where one exists)."
    )


def report_section(view: CaseView, explanation: Explanation | None) -> None:
    if not view.report:
        st.info("Report: not available for this case.")
        return
    tokens = explanation.report_tokens if explanation is not None else None
    if tokens:
        highlight = st.toggle(
            f"Highlight evidence ({explanation.label})" if explanation else "",
            value=True,
            key=REPORT_HIGHLIGHT_KEY,
        )
    else:
        st.caption("Evidence highlighting: not available (no report explanation).")
        highlight = False
    st.html(render.report_html(view.report, tokens if highlight else None))
