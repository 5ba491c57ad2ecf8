"""Pure renderers for the clinician review UI: X-ray viewing, ECG paper and report highlighting.

Every function takes arrays (or text) and returns PNG bytes or an HTML string, so the pages only
place results and the renderers are testable without a browser. Nothing here imports Streamlit
or pyplot: figures are ``matplotlib.figure.Figure`` objects on an explicit Agg canvas (as in
:mod:`clinic.evaluation.plots`), which keeps rendering free of global state and thread-safe.

Choices that shape what a clinician sees:

* **X-ray.** Stored images are display-ready in [0, 1] (the DICOM window and MONOCHROME1
  inversion were applied at ingestion), so window/level works on that scale: ``center`` and
  ``width`` in image units, the default window (0.5, 1.0) being the identity. The work is done
  on the zoom crop only and resized once by PIL, which keeps a 1024² image well under 100 ms.
* **ECG.** Drawn the way it is printed and read: 25 mm/s, 10 mm/mV on pink millimetre paper,
  the 3×4 lead layout (2.5 s per column, time continuing across columns) and a 10 s lead II
  rhythm strip, each row starting with a 1 mV calibration pulse. The figure size is derived from
  millimetres, so calipers held to the screen at the right zoom measure real intervals.
* **Attribution.** Only the large part of an explanation is drawn (a share of the largest
  magnitude), because a faint wash over every sample reads as "everything matters".
  Red supports the finding, blue argues against it, in the ECG and the report alike.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from clinic.ingest.types import STANDARD_LEADS

FloatArray: TypeAlias = npt.NDArray[np.float32]
ByteArray: TypeAlias = npt.NDArray[np.uint8]
Box: TypeAlias = tuple[int, int, int, int]  # left, top, right, bottom (PIL order)

# --------------------------------------------------------------------------------------------
# X-ray

WINDOW_PRESETS: Final[dict[str, tuple[float, float]]] = {
    "Default": (0.5, 1.0),  # the stored rendering, unchanged
    "Lung": (0.35, 0.6),  # lungs are the dark part of a display-ready film: spread them out
    "Mediastinum": (0.6, 0.5),  # heart, hila, retrocardiac soft tissue in the upper mid-range
    "Bone": (0.72, 0.45),  # ribs, clavicles and spine are the brightest structures
}
"""Window (center, width) on the [0, 1] display scale, chosen for chest radiographs."""

_PNG_COMPRESS_LEVEL = 1  # level 6 takes ~3x as long for <20% fewer bytes on radiographs


def window_level(image: npt.ArrayLike, center: float, width: float) -> ByteArray:
    """8-bit grey levels of a [0, 1] image through a linear window: ``center`` maps to mid-grey
    (128), ``center - width / 2`` and below to black, ``center + width / 2`` and above to white."""
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0.0:
        raise ValueError(f"window needs a finite center and a positive width, got {center}/{width}")
    values = np.asarray(image, dtype=np.float32)
    # relative to the center (not the low edge), so the center lands on exactly 127.5 → 128
    scaled = (values - np.float32(center)) * np.float32(255.0 / width) + np.float32(127.5)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    np.rint(scaled, out=scaled)
    grey: ByteArray = np.nan_to_num(scaled, nan=0.0).astype(np.uint8)
    return grey


def fitted_size(
    height: int, width: int, max_side: int, *, upscale: bool = False
) -> tuple[int, int]:
    """(height, width) scaled to at most ``max_side`` on the long side, keeping the aspect;
    never enlarged unless ``upscale``."""
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    scale = max_side / max(height, width)
    if not upscale:
        scale = min(scale, 1.0)
    return max(1, round(height * scale)), max(1, round(width * scale))


def zoom_box(height: int, width: int, zoom: float) -> Box:
    """The centred crop (left, top, right, bottom) showing 1/``zoom`` of each side."""
    if not math.isfinite(zoom) or zoom < 1.0:
        raise ValueError(f"zoom must be a finite value >= 1, got {zoom}")
    crop_h = max(1, round(height / zoom))
    crop_w = max(1, round(width / zoom))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return left, top, left + crop_w, top + crop_h


def xray_png(
    image: npt.ArrayLike,
    *,
    center: float,
    width: float,
    zoom: float = 1.0,
    overlay: npt.ArrayLike | None = None,
    opacity: float = 0.4,
    max_side: int = 768,
) -> bytes:
    """PNG of a [0, 1] radiograph (H, W) windowed, zoomed on its centre and fitted to
    ``max_side``; ``overlay`` (h, w) in [0, 1] (any resolution, e.g. the model's saliency) is
    resized bilinearly onto the same view and blended as a heat map, ``opacity`` at full
    saliency and nothing where the saliency is zero. Grey (mode L) without an overlay, RGB with."""
    pixels = _image_2d(image)
    height, width_px = pixels.shape
    box = zoom_box(height, width_px, zoom)
    out_h, out_w = fitted_size(height, width_px, max_side)
    left, top, right, bottom = box
    grey = window_level(pixels[top:bottom, left:right], center, width)
    view = Image.fromarray(grey, mode="L")
    if view.size != (out_w, out_h):
        view = view.resize((out_w, out_h), Image.Resampling.BILINEAR)
    if overlay is None:
        return _png(view)
    heat = _resized_overlay(overlay, (height, width_px), box, (out_h, out_w))
    return _png(blend_heat(view, heat, opacity))


def blend_heat(grey: Image.Image, saliency: FloatArray, opacity: float) -> Image.Image:
    """RGB of a grey (mode L) view with a red→yellow heat map alpha-blended on top; the alpha is
    ``opacity * saliency`` (saliency quantised to 1/255), so zero saliency leaves a pixel exactly
    as it was. Done by PIL's compositing, several times faster than float arrays at 768²."""
    level = np.rint(np.clip(saliency, 0.0, 1.0) * 255.0).astype(np.uint8)
    heat = Image.fromarray(level, mode="L")
    strength = min(max(opacity, 0.0), 1.0)
    alpha = heat.point([round(value * strength) for value in range(256)])
    red = Image.new("L", heat.size, 255)
    colour = Image.merge("RGB", (red, heat, Image.new("L", heat.size, 0)))  # red → yellow
    return Image.composite(colour, grey.convert("RGB"), alpha)


def thumbnail_png(image: npt.ArrayLike, size: int = 96) -> bytes:
    """A small grey PNG whose long side is ``size`` (enlarged if needed): uint8 images are taken
    as grey levels, anything else as the [0, 1] display scale."""
    array = np.asarray(image)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"a thumbnail needs a non-empty 2-D image, got shape {array.shape}")
    grey = array if array.dtype == np.uint8 else window_level(array, *WINDOW_PRESETS["Default"])
    height, width = grey.shape
    out_h, out_w = fitted_size(height, width, size, upscale=True)
    picture = Image.fromarray(grey, mode="L").resize((out_w, out_h), Image.Resampling.BILINEAR)
    return _png(picture)


def _image_2d(image: npt.ArrayLike) -> FloatArray:
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"an X-ray must be a non-empty (H, W) array, got shape {pixels.shape}")
    return pixels


def _resized_overlay(
    overlay: npt.ArrayLike, image_shape: tuple[int, int], box: Box, out_shape: tuple[int, int]
) -> FloatArray:
    """The part of ``overlay`` under the image crop ``box``, bilinearly resampled to the output
    view: the crop is mapped into overlay coordinates so saliency and anatomy stay aligned
    whatever the two resolutions are."""
    saliency = np.nan_to_num(np.asarray(overlay, dtype=np.float32), nan=0.0)
    if saliency.ndim != 2 or saliency.size == 0:
        raise ValueError(f"an overlay must be a non-empty (h, w) array, got {saliency.shape}")
    (sal_h, sal_w), (img_h, img_w) = saliency.shape, image_shape
    scale_x, scale_y = sal_w / img_w, sal_h / img_h
    left, top, right, bottom = box
    source_box = (left * scale_x, top * scale_y, right * scale_x, bottom * scale_y)
    out_h, out_w = out_shape
    resized = Image.fromarray(saliency, mode="F").resize(
        (out_w, out_h), Image.Resampling.BILINEAR, box=source_box
    )
    return np.asarray(resized, dtype=np.float32)


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# ECG paper

MM_PER_INCH: Final = 25.4
PAPER_SPEED_MM_S: Final = 25.0
GAIN_MM_PER_MV: Final = 10.0
MINOR_GRID_MM: Final = 1.0
MAJOR_GRID_MM: Final = 5.0
CALIBRATION_ZONE_MM: Final = 10.0
"""Left margin of every row, holding the 1 mV × 0.2 s calibration pulse."""
ROW_MM: Final = 40.0
"""Height of one row: ±2 mV around the baseline, enough for most QRS complexes."""
COLUMN_SECONDS: Final = 2.5
RHYTHM_SECONDS: Final = 10.0
RHYTHM_LEAD: Final = "II"
GRID_ROWS: Final[tuple[tuple[str, ...], ...]] = (
    ("I", "aVR", "V1", "V4"),
    ("II", "aVL", "V2", "V5"),
    ("III", "aVF", "V3", "V6"),
)
ATTRIBUTION_SHARE: Final = 0.3
"""Attribution is drawn where its magnitude is at least this share of the record's largest."""

_MINOR_COLOUR, _MAJOR_COLOUR = "#f6cccc", "#e58f8f"
_TRACE_COLOUR, _FLAGGED_COLOUR, _FLAG_TEXT_COLOUR = "#111111", "#a6a6a6", "#b00020"
_SUPPORT_RGB: Final = (220, 38, 38)  # red: evidence for the finding
_AGAINST_RGB: Final = (37, 99, 235)  # blue: evidence against it
_CLIP_SHARE = 1.2  # of the half-row: a wild sample may reach the next row, not cross the page
_PULSE_X_MM = (1.0, 2.5, 2.5, 2.5 + 0.2 * PAPER_SPEED_MM_S, 2.5 + 0.2 * PAPER_SPEED_MM_S, 9.0)
_PULSE_Y_MM = (0.0, 0.0, GAIN_MM_PER_MV, GAIN_MM_PER_MV, 0.0, 0.0)


@dataclass(frozen=True)
class EcgPanel:
    """One lead's stretch of the printout: ``duration_s`` seconds from ``start_s``, drawn from
    ``x_mm`` on the paper with 0 mV at height ``baseline_mm`` (millimetres from the bottom) in
    a row reaching ``half_height_mm`` above and below it."""

    lead: str
    row: int
    start_s: float
    duration_s: float
    x_mm: float
    baseline_mm: float
    half_height_mm: float = ROW_MM / 2.0

    @property
    def width_mm(self) -> float:
        return self.duration_s * PAPER_SPEED_MM_S

    @property
    def band_mm(self) -> tuple[float, float]:
        """(bottom, top) of the attribution bands and the flag wash: the row less 1 mm."""
        inner = self.half_height_mm - 1.0
        return self.baseline_mm - inner, self.baseline_mm + inner


def ecg_paper_size_mm() -> tuple[float, float]:
    """(width, height) of the 12-lead printout in mm: calibration zone + 10 s at 25 mm/s wide,
    three lead rows and the rhythm strip high."""
    return CALIBRATION_ZONE_MM + RHYTHM_SECONDS * PAPER_SPEED_MM_S, ROW_MM * (len(GRID_ROWS) + 1)


def ecg_layout() -> tuple[EcgPanel, ...]:
    """The 13 panels of the standard printout, top row first: the 3×4 grid (time runs on
    across the columns, so each column shows a different 2.5 s) and the lead II rhythm strip."""
    _, height = ecg_paper_size_mm()
    panels: list[EcgPanel] = []
    for row, leads in enumerate(GRID_ROWS):
        baseline = height - (row + 0.5) * ROW_MM
        for column, lead in enumerate(leads):
            start = column * COLUMN_SECONDS
            x_mm = CALIBRATION_ZONE_MM + start * PAPER_SPEED_MM_S
            panels.append(EcgPanel(lead, row, start, COLUMN_SECONDS, x_mm, baseline))
    rhythm_row = len(GRID_ROWS)
    rhythm_baseline = height - (rhythm_row + 0.5) * ROW_MM
    panels.append(
        EcgPanel(RHYTHM_LEAD, rhythm_row, 0.0, RHYTHM_SECONDS, CALIBRATION_ZONE_MM, rhythm_baseline)
    )
    return tuple(panels)


def ecg_paper_png(
    signal: npt.ArrayLike,
    rate_hz: int,
    *,
    attribution: npt.ArrayLike | None = None,
    lead_flags: Mapping[str, str] | None = None,
    dpi: int = 100,
) -> bytes:
    """PNG of a 12-lead ECG (12, T) in mV (STANDARD_LEADS order) on ECG paper; see
    :func:`ecg_figure`. The image is the paper's size in mm at ``dpi`` (pixels rounded down)."""
    return _figure_png(
        ecg_figure(signal, rate_hz, attribution=attribution, lead_flags=lead_flags), dpi
    )


def ecg_figure(
    signal: npt.ArrayLike,
    rate_hz: int,
    *,
    attribution: npt.ArrayLike | None = None,
    lead_flags: Mapping[str, str] | None = None,
) -> Figure:
    """The printout as a Figure sized in mm (:func:`ecg_paper_size_mm`). ``attribution``
    (12, T') is resampled to T and shown as red/blue bands where it is large; leads in
    ``lead_flags`` (lead → reason, e.g. "flat") and leads that are all zeros ("missing") are
    greyed out and labelled with the reason."""
    leads = _ecg_2d(signal)
    _check_rate(rate_hz)
    strength = _attribution_strength(attribution, leads.shape[1])
    flags = _effective_flags(leads, lead_flags or {})
    width, height = ecg_paper_size_mm()
    figure, axes = _paper(width, height)
    layout = ecg_layout()
    for panel in layout:
        index = STANDARD_LEADS.index(panel.lead)
        row_strength = None if strength is None else strength[index]
        _draw_panel(axes, panel, leads[index], rate_hz, row_strength, flags.get(panel.lead))
        if panel.start_s == 0.0:
            _draw_calibration(axes, panel.baseline_mm)
        else:
            _draw_lead_change(axes, panel)
    axes.text(width - 2.0, 1.0, "25 mm/s   10 mm/mV", ha="right", va="bottom", fontsize=7)
    return figure


def ecg_snippet_png(
    signal: npt.ArrayLike, rate_hz: int, *, lead: str = "II", seconds: float = 2.5
) -> bytes:
    """A one-lead strip on ECG paper (same scales as the printout) of the first ``seconds``:
    ``signal`` is either the 12-lead array (lead picked by name) or the lead's samples (T,)."""
    _check_rate(rate_hz)
    if not math.isfinite(seconds) or seconds <= 0.0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    samples = _snippet_samples(signal, lead)
    height = ROW_MM * 0.75
    panel = EcgPanel(lead, 0, 0.0, seconds, CALIBRATION_ZONE_MM, height / 2.0, height / 2.0)
    figure, axes = _paper(CALIBRATION_ZONE_MM + panel.width_mm, height)
    flag = None if np.any(np.nan_to_num(samples)) else "missing"
    _draw_panel(axes, panel, samples, rate_hz, None, flag)
    _draw_calibration(axes, panel.baseline_mm)
    return _figure_png(figure, 100)


def resample_attribution(attribution: npt.ArrayLike, length: int) -> FloatArray:
    """Attribution (12, T') linearly interpolated to (12, ``length``) on sample centres, so a
    model that saw a decimated signal still lines up with the full-rate trace."""
    values = np.nan_to_num(
        np.asarray(attribution, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0
    )
    if values.ndim != 2 or values.shape[0] != len(STANDARD_LEADS):
        raise ValueError(f"attribution must be (12, T'), got shape {values.shape}")
    source = values.shape[1]
    if source == 0:
        return np.zeros((values.shape[0], length), dtype=np.float32)
    if source == length:
        return values
    positions = (np.arange(length, dtype=np.float64) + 0.5) * (source / max(length, 1)) - 0.5
    grid = np.arange(source, dtype=np.float64)
    return np.stack([np.interp(positions, grid, row) for row in values]).astype(np.float32)


def _attribution_strength(attribution: npt.ArrayLike | None, length: int) -> FloatArray | None:
    """Signed attribution scaled to [-1, 1] by the record's largest magnitude; None when absent
    or all zero (nothing to show)."""
    if attribution is None:
        return None
    values = resample_attribution(attribution, length)
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    if not math.isfinite(largest) or largest <= 0.0:
        return None
    return values / np.float32(largest)


def _effective_flags(leads: FloatArray, given: Mapping[str, str]) -> dict[str, str]:
    """Given flags for standard leads, plus "missing" for any unflagged lead without signal."""
    flags = {lead: str(reason) for lead, reason in given.items() if lead in STANDARD_LEADS}
    for lead, row in zip(STANDARD_LEADS, leads, strict=True):
        if lead not in flags and not np.any(np.nan_to_num(row)):
            flags[lead] = "missing"
    return flags


def _ecg_2d(signal: npt.ArrayLike) -> FloatArray:
    leads = np.asarray(signal, dtype=np.float32)
    if leads.ndim != 2 or leads.shape[0] != len(STANDARD_LEADS):
        raise ValueError(f"an ECG must be (12, T) in STANDARD_LEADS order, got {leads.shape}")
    return leads


def _snippet_samples(signal: npt.ArrayLike, lead: str) -> FloatArray:
    values = np.asarray(signal, dtype=np.float32)
    if values.ndim == 1:
        return values
    if lead not in STANDARD_LEADS:
        raise ValueError(f"unknown lead {lead!r}")
    lead_samples: FloatArray = _ecg_2d(values)[STANDARD_LEADS.index(lead)]
    return lead_samples


def _check_rate(rate_hz: int) -> None:
    if rate_hz <= 0:
        raise ValueError(f"the sampling rate must be positive, got {rate_hz}")


def _paper(width_mm: float, height_mm: float) -> tuple[Figure, Axes]:
    """A figure exactly ``width_mm`` × ``height_mm`` whose one axes fills it in mm units, with
    the 1 mm / 5 mm grid drawn."""
    figure = Figure(figsize=(width_mm / MM_PER_INCH, height_mm / MM_PER_INCH), facecolor="white")
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_axis_off()
    axes.set_xlim(0.0, width_mm)
    axes.set_ylim(0.0, height_mm)
    for step, colour, linewidth in (
        (MINOR_GRID_MM, _MINOR_COLOUR, 0.3),
        (MAJOR_GRID_MM, _MAJOR_COLOUR, 0.7),
    ):
        axes.add_collection(
            LineCollection(
                list(_grid_segments(width_mm, height_mm, step)),
                colors=colour,
                linewidths=linewidth,
                zorder=0,
            ),
            autolim=False,
        )
    return figure, axes


def _grid_segments(width_mm: float, height_mm: float, step_mm: float) -> npt.NDArray[np.float64]:
    """(N, 2, 2) line segments: verticals every ``step_mm`` across the width, then horizontals."""
    xs = np.arange(0.0, width_mm + 1e-6, step_mm)
    ys = np.arange(0.0, height_mm + 1e-6, step_mm)
    vertical = np.stack(
        [np.stack([xs, np.zeros_like(xs)], 1), np.stack([xs, np.full_like(xs, height_mm)], 1)], 1
    )
    horizontal = np.stack(
        [np.stack([np.zeros_like(ys), ys], 1), np.stack([np.full_like(ys, width_mm), ys], 1)], 1
    )
    return np.concatenate([vertical, horizontal])


def _panel_slice(panel: EcgPanel, rate_hz: int, length: int) -> slice:
    first = round(panel.start_s * rate_hz)
    last = min(length, round((panel.start_s + panel.duration_s) * rate_hz))
    return slice(first, max(first, last))


def _draw_panel(
    axes: Axes,
    panel: EcgPanel,
    samples: FloatArray,
    rate_hz: int,
    strength: FloatArray | None,
    flag: str | None,
) -> None:
    """One lead's trace, its attribution bands behind it, its label and any flag."""
    span = _panel_slice(panel, rate_hz, samples.shape[0])
    count = span.stop - span.start
    if count > 0:
        seconds = np.arange(count, dtype=np.float32) / np.float32(rate_hz)
        xs = panel.x_mm + seconds * PAPER_SPEED_MM_S
        limit = _CLIP_SHARE * panel.half_height_mm
        ys = panel.baseline_mm + np.clip(samples[span] * GAIN_MM_PER_MV, -limit, limit)
        colour = _FLAGGED_COLOUR if flag else _TRACE_COLOUR
        axes.plot(xs, ys, color=colour, linewidth=0.8, zorder=3, solid_joinstyle="round")
        if strength is not None:
            _draw_attribution(axes, panel, strength[span], count / rate_hz)
    label_y = panel.baseline_mm + panel.half_height_mm - 2.0
    band_bottom, band_top = panel.band_mm
    axes.text(panel.x_mm + 1.5, label_y, panel.lead, ha="left", va="top", fontsize=9, zorder=4)
    if flag:
        axes.add_patch(
            Rectangle(
                (panel.x_mm, band_bottom),
                panel.width_mm,
                band_top - band_bottom,
                facecolor="#8c8c8c",
                alpha=0.15,
                edgecolor="none",
                zorder=2,
            )
        )
        axes.text(
            panel.x_mm + 1.5,
            label_y - 4.5,
            flag,
            ha="left",
            va="top",
            fontsize=8,
            color=_FLAG_TEXT_COLOUR,
            fontweight="bold",
            zorder=4,
        )


def _draw_attribution(axes: Axes, panel: EcgPanel, strength: FloatArray, seconds: float) -> None:
    """Translucent vertical bands (red for, blue against) over the samples whose attribution is
    large; alpha grows with the magnitude. One RGBA strip image per panel keeps it cheap."""
    magnitude = np.abs(strength)
    large = magnitude >= ATTRIBUTION_SHARE
    if not np.any(large):
        return
    strip = np.zeros((1, strength.shape[0], 4), dtype=np.float32)
    strip[0, :, :3] = np.where(
        (strength >= 0.0)[:, None], np.array(_SUPPORT_RGB) / 255.0, np.array(_AGAINST_RGB) / 255.0
    )
    strip[0, :, 3] = np.where(large, 0.15 + 0.4 * magnitude, 0.0)
    right = panel.x_mm + seconds * PAPER_SPEED_MM_S
    extent = (panel.x_mm, right, *panel.band_mm)
    axes.imshow(strip, extent=extent, aspect="auto", interpolation="nearest", zorder=1)


def _draw_calibration(axes: Axes, baseline_mm: float) -> None:
    """The 1 mV (10 mm) × 0.2 s (5 mm) pulse at the start of a row."""
    ys = [baseline_mm + y for y in _PULSE_Y_MM]
    axes.plot(_PULSE_X_MM, ys, color=_TRACE_COLOUR, linewidth=0.9, zorder=3)


def _draw_lead_change(axes: Axes, panel: EcgPanel) -> None:
    """A short bar where the printout switches to ``panel``'s lead, as on paper ECGs."""
    xs = (panel.x_mm, panel.x_mm)
    ys = (panel.baseline_mm - 3.0, panel.baseline_mm + 3.0)
    axes.plot(xs, ys, color=_TRACE_COLOUR, linewidth=0.9, zorder=3)


def _figure_png(figure: Figure, dpi: int) -> bytes:
    """Draw on the Agg canvas at ``dpi`` and encode as RGB (the paper is opaque: an alpha channel
    would only make the PNG larger and slower to write)."""
    if dpi <= 0:
        raise ValueError(f"dpi must be positive, got {dpi}")
    figure.set_dpi(dpi)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="raw", dpi=dpi)  # the Agg buffer as it is: RGBA rows
    size = figure.canvas.get_width_height(physical=True)
    rgba = Image.frombytes("RGBA", size, buffer.getvalue())
    return _png(rgba.convert("RGB"))


# --------------------------------------------------------------------------------------------
# report text

HIGHLIGHT_SHARE: Final = 0.2
"""A word is highlighted when its |attribution| is at least this share of the report's largest."""


@dataclass(frozen=True)
class AlignedWord:
    """A token found in the text: ``text[start:end]`` carries ``attribution``."""

    start: int
    end: int
    attribution: float


def align_tokens(text: str, tokens: Sequence[tuple[str, float]]) -> list[AlignedWord]:
    """Each token located in ``text`` by a case-insensitive search from the end of the previous
    match (tokens are in text order); a whole-word match is preferred, a bare substring accepted,
    and a token that cannot be found (e.g. "[UNK]", accents stripped by the tokenizer) skipped
    without moving on, so one miss does not shift the words after it."""
    aligned: list[AlignedWord] = []
    cursor = 0
    for word, attribution in tokens:
        if not word:
            continue
        found = _find_word(text, word, cursor)
        if found is None:
            continue
        aligned.append(AlignedWord(found[0], found[1], float(attribution)))
        cursor = found[1]
    return aligned


def _find_word(text: str, word: str, cursor: int) -> tuple[int, int] | None:
    escaped = re.escape(word)
    before = r"(?<!\w)" if word[0].isalnum() else ""
    after = r"(?!\w)" if word[-1].isalnum() else ""
    for pattern in (f"{before}{escaped}{after}", escaped):
        match = re.compile(pattern, re.IGNORECASE).search(text, cursor)
        if match is not None:
            return match.start(), match.end()
    return None


def report_html(text: str, tokens: Sequence[tuple[str, float]] | None) -> str:
    """The report as escaped HTML (line breaks kept) with the words whose attribution is large
    marked: red for evidence supporting the finding, blue against, stronger colour for larger
    magnitude; the value is in each mark's tooltip."""
    words = align_tokens(text, tokens or ())
    finite = [abs(w.attribution) for w in words if math.isfinite(w.attribution)]
    largest = max(finite, default=0.0)
    parts: list[str] = []
    cursor = 0
    for word in words:
        share = abs(word.attribution) / largest if largest > 0.0 else 0.0
        if not math.isfinite(share) or share < HIGHLIGHT_SHARE:
            continue
        parts.append(html.escape(text[cursor : word.start]))
        parts.append(_mark(text[word.start : word.end], word.attribution, share))
        cursor = word.end
    parts.append(html.escape(text[cursor:]))
    body = "".join(parts)
    return (
        f'<div class="clinic-report" style="white-space: pre-wrap; line-height: 1.7">{body}</div>'
    )


def _mark(word: str, attribution: float, share: float) -> str:
    red, green, blue = _SUPPORT_RGB if attribution > 0.0 else _AGAINST_RGB
    alpha = 0.15 + 0.65 * min(share, 1.0)
    side = "for" if attribution > 0.0 else "against"
    return (
        f'<mark class="attribution-{side}" title="{attribution:+.3f}" '
        f'style="background-color: rgba({red}, {green}, {blue}, {alpha:.2f}); '
        f'color: inherit; padding: 0 1px; border-radius: 2px">{html.escape(word)}</mark>'
    )
