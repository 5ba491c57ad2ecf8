from __future__ import annotations

import html
import io
import re

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from clinic.ingest.types import STANDARD_LEADS
from clinic.ui.render import (
    WINDOW_PRESETS,
    align_tokens,
    ecg_layout,
    ecg_paper_png,
    ecg_paper_size_mm,
    ecg_snippet_png,
    report_html,
    resample_attribution,
    thumbnail_png,
    window_level,
    xray_png,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RATE = 500
SAMPLES = 10 * RATE

Pixels = npt.NDArray[np.uint8]


def decode(png: bytes) -> Pixels:
    assert png.startswith(PNG_SIGNATURE)
    pixels: Pixels = np.asarray(Image.open(io.BytesIO(png)))
    return pixels


def as_rgb(pixels: Pixels) -> Pixels:
    if pixels.ndim == 2:
        stacked: Pixels = np.repeat(pixels[..., None], 3, axis=2)
        return stacked
    return pixels[..., :3]


# --------------------------------------------------------------------------------------------
# X-ray


def gradient(height: int, width: int) -> npt.NDArray[np.float32]:
    """Left-to-right ramp 0 → 1 (every column a different grey)."""
    return np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))


def test_xray_png_is_a_png_fitted_to_max_side() -> None:
    pixels = decode(xray_png(gradient(1000, 800), center=0.5, width=1.0, max_side=500))
    assert pixels.shape == (500, 400)  # aspect kept, long side = max_side, grey (mode L)
    small = decode(xray_png(gradient(120, 90), center=0.5, width=1.0, max_side=768))
    assert small.shape == (120, 90)  # never enlarged


def test_window_level_maps_center_to_mid_grey_and_the_low_edge_to_black() -> None:
    center, width = 0.4, 0.2
    values = np.array([[0.25, 0.3, 0.4, 0.5, 0.9]], dtype=np.float32)
    assert window_level(values, center, width).tolist() == [[0, 0, 128, 255, 255]]
    image = np.full((64, 64), 0.1, dtype=np.float32)
    image[:, 32:] = center
    shown = decode(xray_png(image, center=center, width=width))
    assert set(np.unique(shown[:, :30])) == {0}  # below center - width / 2: black
    assert set(np.unique(shown[:, 34:])) == {128}  # the center: mid-grey
    with pytest.raises(ValueError, match="positive width"):
        window_level(values, 0.5, 0.0)


def test_presets_are_windows_inside_the_unit_scale() -> None:
    assert set(WINDOW_PRESETS) == {"Default", "Lung", "Mediastinum", "Bone"}
    assert WINDOW_PRESETS["Default"] == (0.5, 1.0)
    for center, width in WINDOW_PRESETS.values():
        assert 0.0 < center < 1.0 and 0.0 < width <= 1.0
    # lungs are dark on a display-ready film, bone is bright
    assert WINDOW_PRESETS["Lung"][0] < WINDOW_PRESETS["Mediastinum"][0] < WINDOW_PRESETS["Bone"][0]


def test_overlay_changes_pixels_only_where_the_saliency_is_not_zero() -> None:
    image = gradient(256, 256)
    saliency = np.zeros((64, 64), dtype=np.float32)  # a quarter of the resolution
    saliency[40:56, 40:56] = 1.0  # → image rows/cols 160..224
    plain = as_rgb(decode(xray_png(image, center=0.5, width=1.0)))
    blended = decode(xray_png(image, center=0.5, width=1.0, overlay=saliency, opacity=0.5))
    changed = np.any(blended != plain, axis=2)
    inside = changed[168:216, 168:216]
    assert inside.all()
    outside = np.ones_like(changed)
    outside[152:232, 152:232] = False  # a margin for the bilinear ramp at the block's edge
    assert not changed[outside].any()
    # heat colours: red pulled up, blue pulled down towards the colour map
    centre_pixel = blended[192, 192].astype(int)
    assert centre_pixel[0] > plain[192, 192, 0] and centre_pixel[2] < plain[192, 192, 2]


def test_zero_saliency_leaves_the_image_unchanged() -> None:
    image = gradient(100, 120)
    plain = as_rgb(decode(xray_png(image, center=0.5, width=1.0)))
    blended = decode(xray_png(image, center=0.5, width=1.0, overlay=np.zeros((7, 9)), opacity=1))
    assert np.array_equal(blended, plain)


def dark_square_side(pixels: Pixels) -> int:
    dark_columns = np.flatnonzero((pixels < 64).any(axis=0))
    return int(dark_columns.max() - dark_columns.min() + 1)


def test_zoom_enlarges_features_around_the_centre() -> None:
    image = np.ones((256, 256), dtype=np.float32)
    image[112:144, 112:144] = 0.0  # a 32 px dark square in the middle
    image[0:16, 0:16] = 0.0  # a corner mark that zooming crops away
    one = decode(xray_png(image, center=0.5, width=1.0, zoom=1.0))
    two = decode(xray_png(image, center=0.5, width=1.0, zoom=2.0))
    assert one.shape == two.shape == (256, 256)
    assert dark_square_side(one[32:224, 32:224]) == 32
    assert dark_square_side(two) == pytest.approx(64, abs=2)
    assert two[:20, :20].min() > 200  # the corner mark is outside the zoomed view
    with pytest.raises(ValueError, match="zoom"):
        xray_png(image, center=0.5, width=1.0, zoom=0.5)


def test_overlay_follows_the_zoom() -> None:
    image = np.full((200, 200), 0.5, dtype=np.float32)
    saliency = np.zeros((50, 50), dtype=np.float32)
    saliency[20:30, 20:30] = 1.0  # image 80..120: 40 px at zoom 1, 80 px at zoom 2
    plain = as_rgb(decode(xray_png(image, center=0.5, width=1.0, zoom=2.0)))
    blended = decode(xray_png(image, center=0.5, width=1.0, zoom=2.0, overlay=saliency))
    full = np.flatnonzero((blended != plain).any(axis=2)[100])  # heat at full strength only
    assert full.min() == pytest.approx(100 - 40, abs=4) and full.max() == pytest.approx(139, abs=4)


def test_thumbnail_fits_its_long_side() -> None:
    small = decode(thumbnail_png(np.zeros((64, 64), dtype=np.uint8)))
    assert small.shape == (96, 96)  # enlarged to the requested size
    wide = decode(thumbnail_png(gradient(100, 200), size=64))
    assert wide.shape == (32, 64)
    assert wide[:, 0].max() < 10 and wide[:, -1].min() > 245  # the [0, 1] scale, unwindowed


# --------------------------------------------------------------------------------------------
# ECG


def quiet_ecg() -> npt.NDArray[np.float32]:
    """12 leads of a small 10 Hz ripple (0.02 mV): alive, but nowhere near any probe height."""
    ripple = 0.02 * np.sin(2 * np.pi * 10 * np.arange(SAMPLES) / RATE)
    return np.tile(ripple, (12, 1)).astype(np.float32)


def add_spike(signal: npt.NDArray[np.float32], lead: str, at_s: float, mv: float = 1.5) -> None:
    centre = round(at_s * RATE)
    signal[STANDARD_LEADS.index(lead), centre - 4 : centre + 5] = mv * (
        1 - np.abs(np.arange(-4, 5)) / 5
    )


def mm_to_px(mm: float, dpi: int) -> float:
    return mm / 25.4 * dpi


def row_of(pixels: Pixels, y_mm: float, dpi: int) -> int:
    """Image row of a height on the paper (mm from the bottom): Agg draws upwards from the
    bottom row of the (whole-pixel) image."""
    return round(int(pixels.shape[0]) - mm_to_px(y_mm, dpi))


def dark(pixels: Pixels) -> npt.NDArray[np.bool_]:
    return np.asarray(pixels[..., :3].max(axis=-1) < 110)


def spike_columns(pixels: Pixels, baseline_mm: float, dpi: int) -> list[float]:
    """Centres of the runs of columns where the trace is 11-13.5 mm above ``baseline_mm``:
    above the 1 mV (10 mm) calibration pulse, below the lead label."""
    top, bottom = row_of(pixels, baseline_mm + 13.5, dpi), row_of(pixels, baseline_mm + 11, dpi)
    band = dark(pixels[top:bottom])
    columns = np.flatnonzero(band.any(axis=0))
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 3) + 1)
    return [float(run.mean()) for run in runs if run.size]


def test_layout_is_three_by_four_plus_a_lead_ii_rhythm_strip() -> None:
    layout = ecg_layout()
    assert len(layout) == 13
    grid = [[p.lead for p in layout if p.row == row] for row in range(3)]
    assert grid == [["I", "aVR", "V1", "V4"], ["II", "aVL", "V2", "V5"], ["III", "aVF", "V3", "V6"]]
    assert {p.duration_s for p in layout[:12]} == {2.5}
    assert [p.start_s for p in layout[:4]] == [0.0, 2.5, 5.0, 7.5]
    rhythm = layout[12]
    assert (rhythm.lead, rhythm.row, rhythm.start_s, rhythm.duration_s) == ("II", 3, 0.0, 10.0)
    assert rhythm.width_mm == 250.0  # 10 s at 25 mm/s
    assert set(STANDARD_LEADS) == {p.lead for p in layout}


@pytest.mark.parametrize("dpi", [100, 150])
def test_paper_is_25_mm_per_second_and_10_mm_per_mv_at_the_dpi(dpi: int) -> None:
    signal = quiet_ecg()
    add_spike(signal, "II", 1.0)
    add_spike(signal, "II", 9.0)
    signal[STANDARD_LEADS.index("II"), 4 * RATE : 5 * RATE] = 1.0  # a 1 mV step from 4 to 5 s
    pixels = decode(ecg_paper_png(signal, RATE, dpi=dpi))
    width_mm, height_mm = ecg_paper_size_mm()
    assert width_mm == 10.0 + 250.0  # calibration zone + 10 s at 25 mm/s
    assert pixels.shape[1] == pytest.approx(mm_to_px(width_mm, dpi), abs=1)
    assert pixels.shape[0] == pytest.approx(mm_to_px(height_mm, dpi), abs=1)
    rhythm = ecg_layout()[12]
    spikes = spike_columns(pixels, rhythm.baseline_mm, dpi)
    assert len(spikes) == 2
    assert spikes[1] - spikes[0] == pytest.approx(mm_to_px(8 * 25.0, dpi), abs=2)
    assert spikes[0] == pytest.approx(mm_to_px(10.0 + 25.0, dpi), abs=2)
    # the 1 mV step is drawn 10 mm above the baseline, level with the calibration pulse's top
    window = slice(
        row_of(pixels, rhythm.baseline_mm + 15, dpi), row_of(pixels, rhythm.baseline_mm + 5, dpi)
    )
    for x_mm in (10.0 + 4.5 * 25.0, 5.0):  # inside the step; the middle of the pulse
        column = pixels[window, round(mm_to_px(x_mm, dpi))]
        drawn_at = window.start + float(np.flatnonzero(dark(column)).mean())
        assert drawn_at == pytest.approx(row_of(pixels, rhythm.baseline_mm + 10, dpi), abs=1)


def test_the_rhythm_strip_shows_lead_ii_beyond_its_grid_column() -> None:
    signal = quiet_ecg()
    add_spike(signal, "II", 8.0)  # in the grid, 7.5-10 s of that row is V5, not II
    pixels = decode(ecg_paper_png(signal, RATE))
    layout = ecg_layout()
    second_row, rhythm = layout[4], layout[12]
    expected = mm_to_px(10.0 + 8.0 * 25.0, 100)
    assert spike_columns(pixels, rhythm.baseline_mm, 100) == [pytest.approx(expected, abs=2)]
    assert spike_columns(pixels, second_row.baseline_mm, 100) == []


def panel_box(pixels: Pixels, lead: str, dpi: int = 100) -> tuple[slice, slice]:
    """Pixel rows/columns of a lead's panel in the 3×4 grid (its row less 1 mm each side)."""
    panel = next(p for p in ecg_layout() if p.lead == lead)
    rows = slice(
        row_of(pixels, panel.baseline_mm + 19, dpi), row_of(pixels, panel.baseline_mm - 19, dpi)
    )
    columns = slice(
        round(mm_to_px(panel.x_mm, dpi)), round(mm_to_px(panel.x_mm + panel.width_mm, dpi))
    )
    return rows, columns


def test_large_attribution_is_overlaid_where_and_with_the_sign_it_has() -> None:
    signal = quiet_ecg()
    attribution = np.zeros((12, 1000), dtype=np.float32)  # a fifth of the signal's rate
    attribution[STANDARD_LEADS.index("V1"), 600:640] = 2.0  # 6.0-6.4 s, for
    attribution[STANDARD_LEADS.index("V4"), 800:820] = -1.5  # 8.0-8.2 s, against
    attribution[STANDARD_LEADS.index("I"), 50:70] = 0.1  # small: not drawn
    plain = decode(ecg_paper_png(signal, RATE))
    shown = decode(ecg_paper_png(signal, RATE, attribution=attribution))
    changed = (shown != plain).any(axis=2)
    v1_rows, _ = panel_box(shown, "V1")
    v1_columns = slice(round(mm_to_px(10 + 6.0 * 25, 100)), round(mm_to_px(10 + 6.4 * 25, 100)))
    v4_columns = slice(round(mm_to_px(10 + 8.0 * 25, 100)), round(mm_to_px(10 + 8.2 * 25, 100)))
    assert changed[v1_rows, v1_columns].mean() > 0.95
    assert changed[v1_rows, v4_columns].mean() > 0.95  # V4 shares V1's row, at 7.5-10 s
    expected = np.zeros_like(changed)
    expected[v1_rows, v1_columns.start - 1 : v1_columns.stop + 1] = True
    expected[v1_rows, v4_columns.start - 1 : v4_columns.stop + 1] = True
    assert not changed[~expected].any()  # nothing elsewhere, not lead I's small attribution
    red = shown[v1_rows, v1_columns].reshape(-1, 3).astype(int).mean(axis=0)
    blue = shown[v1_rows, v4_columns].reshape(-1, 3).astype(int).mean(axis=0)
    assert red[0] > red[2] + 40 and blue[2] > blue[0] + 40


def test_flagged_leads_are_greyed() -> None:
    signal = quiet_ecg()
    for at_s in (0.5, 1.5, 2.2):
        add_spike(signal, "III", at_s)
    plain = decode(ecg_paper_png(signal, RATE))
    rows, columns = panel_box(plain, "III")
    trace_rows = slice(rows.start + 40, rows.stop)  # below the label and the reason
    flagged = decode(ecg_paper_png(signal, RATE, lead_flags={"III": "flat", "bogus": "x"}))
    assert dark(plain[trace_rows, columns]).sum() > 200
    assert dark(flagged[trace_rows, columns]).sum() == 0  # grey, not black
    reason = flagged[rows.start : rows.start + 40, columns].reshape(-1, 3).astype(int)
    assert ((reason[:, 0] > 150) & (reason[:, 1] < 60)).sum() > 10  # the reason in red


def test_missing_leads_are_marked_and_never_crash() -> None:
    signal = quiet_ecg()
    signal[STANDARD_LEADS.index("V3")] = 0.0
    unflagged = ecg_paper_png(signal, RATE)
    assert unflagged == ecg_paper_png(signal, RATE, lead_flags={"V3": "missing"})
    assert unflagged != ecg_paper_png(quiet_ecg(), RATE)
    nothing = np.zeros((12, SAMPLES), dtype=np.float32)
    assert decode(ecg_paper_png(nothing, RATE, attribution=np.zeros((12, 10)))).ndim == 3
    short = decode(ecg_paper_png(quiet_ecg()[:, : 3 * RATE], RATE, attribution=np.ones((12, 7))))
    assert short.shape == decode(unflagged).shape
    with pytest.raises(ValueError, match="12, T"):
        ecg_paper_png(np.zeros((11, SAMPLES)), RATE)


def test_attribution_is_resampled_onto_the_signal() -> None:
    attribution = np.zeros((12, 4), dtype=np.float32)
    attribution[0] = [0.0, 1.0, 2.0, 3.0]
    resampled = resample_attribution(attribution, 8)
    assert resampled.shape == (12, 8)
    assert resampled[0].tolist() == pytest.approx([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])


def test_snippet_is_one_lead_on_the_same_paper() -> None:
    signal = quiet_ecg()
    add_spike(signal, "II", 1.0)
    from_twelve = ecg_snippet_png(signal, RATE)
    from_one = ecg_snippet_png(signal[STANDARD_LEADS.index("II")], RATE)
    assert from_twelve == from_one
    pixels = decode(from_twelve)
    assert pixels.shape[1] == pytest.approx(mm_to_px(10.0 + 2.5 * 25.0, 100), abs=1)
    assert ecg_snippet_png(signal, RATE, lead="V1") != from_twelve


# --------------------------------------------------------------------------------------------
# report


MARK = re.compile(r'<mark class="attribution-(for|against)"[^>]*>(.*?)</mark>')


def plain_text(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def test_report_is_escaped() -> None:
    text = 'Effusion <script>alert("x")</script> & "quotes"'
    markup = report_html(text, [("effusion", 1.0)])
    assert "<script>" not in markup and "&lt;script&gt;alert(&quot;x&quot;)" in markup
    assert "&amp; &quot;quotes&quot;" in markup
    assert plain_text(markup) == text
    assert report_html(text, None).count("<mark") == 0
    marked = report_html(text, [("script", 1.0), ('"', 1.0)])  # marks inside escaped text
    assert "<script" not in marked and MARK.findall(marked)[0] == ("for", "script")
    assert plain_text(marked) == text


def test_highlighting_marks_the_large_words_with_their_sign() -> None:
    text = "No pneumothorax. Small LEFT pleural effusion; no consolidation."
    tokens = [
        ("no", -0.1),
        ("pneumothorax", 0.05),
        (".", 0.0),
        ("[UNK]", 9.0),  # not in the text: skipped, and must not shift what follows
        ("small", 0.3),
        ("left", 0.6),
        ("pleural", 0.9),
        ("effusion", 1.0),
        (";", 0.0),
        ("no", -0.8),
        ("consolidation", -0.5),
        (".", 0.0),
    ]
    markup = report_html(text, tokens)
    assert MARK.findall(markup) == [
        ("for", "Small"),
        ("for", "LEFT"),
        ("for", "pleural"),
        ("for", "effusion"),
        ("against", "no"),
        ("against", "consolidation"),
    ]
    assert plain_text(markup) == text
    alphas = [float(a) for a in re.findall(r"rgba\(\d+, \d+, \d+, ([0-9.]+)\)", markup)]
    assert alphas[3] > alphas[1] > alphas[0]  # intensity follows the magnitude
    # the second "no" is the one marked, not the sentence's first word
    marked_no = next(m for m in MARK.finditer(markup) if m.group(2) == "no")
    assert plain_text(markup[: marked_no.start()]).endswith("effusion; ")


def test_alignment_prefers_whole_words_and_follows_text_order() -> None:
    text = "Heart and a lung; effusions."
    tokens = [("a", 2.0), ("lung", 1.0), ("heart", 3.0), ("effusion", 0.5), (".", 0.0)]
    words = align_tokens(text, tokens)
    assert [(text[w.start : w.end], w.attribution) for w in words] == [
        ("a", 2.0),  # the article, not the "a" inside "Heart" or "and"
        ("lung", 1.0),
        # "heart" lies before the cursor: skipped
        ("effusion", 0.5),  # no whole word: the substring is accepted
        (".", 0.0),
    ]
