"""Read 12-lead ECGs (WFDB records, DICOM waveform objects) into one standard form.

Both readers end in :func:`standardise_ecg`, so an ECG looks the same downstream whatever file it
came from. The decisions that shape every :class:`~clinic.ingest.types.DecodedEcg`:

* **Leads.** Source names are matched case-insensitively and tolerant of common spellings
  ("Lead I (Einthoven)", "DI", "AVR", "C1", MDC/SCP-ECG codes); "-aVR" (Cabrera) is inverted back
  to aVR. Non-standard leads (X/Y/Z, V4R, MLII, ...) are dropped and listed in ``dropped_leads``.
  A record without all 12 standard leads is refused (ECG_MISSING_LEADS): limb leads are *not*
  derived, because a silently synthesised lead would look measured to every later stage.
* **Units.** Physical units are converted to mV (µV, V accepted); anything else is refused
  (ECG_UNSUPPORTED_UNITS) rather than guessed, since a 1000x amplitude error is silent.
* **Rate.** Polyphase resampling (``scipy.signal.resample_poly``, Kaiser-windowed FIR low-pass)
  by a rational approximation of ``target_rate / fs``, so energy above the new Nyquist frequency
  is removed instead of aliasing into the diagnostic band.
* **Window.** The *first* ``duration_s`` seconds are kept. A fixed, documented window keeps the
  output deterministic and reproducible; long recordings (e.g. 30 min Holter) are only read as
  far as needed. Callers wanting another window slice the source before calling.
* **Padding.** A record shorter than ``duration_s`` but at least ``min_duration_s`` long is
  zero-padded at the end and flagged record-wide: ``quality_flags["record"] == ["padded"]``
  (``source_duration_s`` keeps the true length). Shorter records are refused (ECG_TOO_SHORT).
* **Quality** (per lead, judged on the source samples of the window, before resampling):
  ``"nan"`` when samples are missing — up to :data:`NAN_MASK_FRACTION` of the window with no gap
  longer than :data:`NAN_MAX_GAP_S` is linearly interpolated and kept, more is masked;
  ``"flat"`` when the 0.5-99.5 percentile range is below :data:`FLAT_RANGE_MV` (masked);
  ``"clipped"`` when at least :data:`CLIP_SHARE` of the samples sit exactly at the lead's own
  minimum or maximum, or :data:`CLIP_ADC_SHARE` at the converter's full-scale limits; a clipped
  lead is kept (flagged) unless :data:`CLIP_MASK_SHARE` of it is clipped. Masked leads are
  zeros with ``lead_mask`` False; the output never holds NaN. All leads masked is refused
  (ECG_NO_USABLE_SIGNAL).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.waveforms.numpy_handler import multiplex_array
from scipy.signal import resample_poly

from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.types import STANDARD_LEADS, DecodedEcg, SourceIdentity

__all__ = [
    "CLIP_ADC_SHARE",
    "CLIP_MASK_SHARE",
    "CLIP_SHARE",
    "FLAT_RANGE_MV",
    "MIN_DURATION_S",
    "NAN_MASK_FRACTION",
    "NAN_MAX_GAP_S",
    "PADDED_FLAG",
    "RECORD_FLAGS_KEY",
    "LeadMatch",
    "canonical_lead",
    "read_dicom_ecg",
    "read_wfdb_ecg",
    "standardise_ecg",
]

FloatArray = npt.NDArray[np.float64]

MIN_DURATION_S = 5.0
"""Shortest record accepted; below this too little rhythm remains to be worth padding."""
NAN_MASK_FRACTION = 0.2
"""A lead with more missing samples than this share of the window is masked, not interpolated."""
NAN_MAX_GAP_S = 0.5
"""A missing stretch longer than this (about half a beat) cannot be honestly interpolated."""
FLAT_RANGE_MV = 0.01
"""10 µV: below ECG amplitudes and typical noise; a lead this still is disconnected."""
CLIP_SHARE = 0.05
"""Share of samples at the lead's exact min/max that means saturation (real PTB-XL leads < 1.5%)."""
CLIP_ADC_SHARE = 0.02
"""Share at the ADC full-scale limits; lower since real signals rarely reach full scale, but
above the few samples that files rescaled with ``wfdb.wrsamp`` put exactly at full scale."""
CLIP_MASK_SHARE = 0.5
"""A lead clipped for at least half of the window carries no usable morphology and is masked."""
RECORD_FLAGS_KEY = "record"
"""``quality_flags`` key for record-wide flags (currently only ``"padded"``)."""
PADDED_FLAG = "padded"

_RESAMPLE_MARGIN_S = 0.5  # source read beyond the window so the filter has no edge at the cut
_MAX_RATIO_DENOMINATOR = 1000  # bounds the polyphase filter length for odd sampling rates
_MAX_NAME_CHARS = 24
_MAX_NAMES_LISTED = 20

# --------------------------------------------------------------------------------------------
# lead names


class LeadMatch(NamedTuple):
    """A source lead recognised as one of the standard leads; ``inverted`` for "-aVR"."""

    lead: str
    inverted: bool


_LEAD_ALIASES: dict[str, str] = {
    "i": "I", "di": "I", "d1": "I",
    "ii": "II", "dii": "II", "d2": "II",
    "iii": "III", "diii": "III", "d3": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF",
    **{f"v{k}": f"V{k}" for k in range(1, 7)},
    **{f"c{k}": f"V{k}" for k in range(1, 7)},  # IEC chest-lead naming
}  # fmt: skip
_MINUS_SIGNS = ("-", "\u2212", "\u2013", "\u2014")
_NAME_PREFIX = re.compile(r"^(?:mdc_ecg_lead_|ecg[\s_:]*)?(?:lead[\s_:]*)?")
# MDC (ISO/IEEE 11073-10101) / SCP-ECG lead numbers, as used in DICOM CID 3001 code values.
_CODED_LEADS: dict[int, LeadMatch] = {
    1: LeadMatch("I", False), 2: LeadMatch("II", False),
    **{k + 2: LeadMatch(f"V{k}", False) for k in range(1, 7)},
    61: LeadMatch("III", False), 62: LeadMatch("aVR", False),
    63: LeadMatch("aVL", False), 64: LeadMatch("aVF", False), 65: LeadMatch("aVR", True),
}  # fmt: skip
_CODE_FORM = re.compile(r"(?:5\.6\.3-9-|2:)(\d+)")
_MDC_ECG_LEAD_BASE = 131072  # context-free MDC code of MDC_ECG_LEAD (partition 2 << 16)


def canonical_lead(name: str) -> LeadMatch | None:
    """Recognise a source lead name as a standard lead, or None.

    Matching is exact after normalisation (case, "lead"/"ECG" prefixes, parenthesised notes such
    as "(Einthoven)", spaces) so near-misses like "MLII" or "V4R" are *not* taken for II or V4:
    a modified or right-sided lead has a different morphology from the standard one.
    """
    text = unicodedata.normalize("NFKC", name).strip().lower()
    text = re.sub(r"\(.*?\)", " ", text).strip()
    text = _NAME_PREFIX.sub("", text)
    text = re.sub(r"[\s_.]+", "", text)
    inverted = False
    if text.startswith(_MINUS_SIGNS):
        text = text[1:]
        inverted = True
    elif text.endswith("neg"):
        text = text[:-3]
        inverted = True
    lead = _LEAD_ALIASES.get(text)
    if lead is None:
        return None
    # Only -aVR is an established inverted lead (Cabrera display); elsewhere a leading hyphen
    # is a separator ("Lead-I"), not a sign.
    return LeadMatch(lead, inverted and lead == "aVR")


def _lead_from_code(code_value: str) -> LeadMatch | None:
    """Recognise an SCP-ECG ("5.6.3-9-N") or MDC ("2:N" / 131072+N) lead code, or None."""
    value = code_value.strip()
    match = _CODE_FORM.fullmatch(value)
    if match is not None:
        return _CODED_LEADS.get(int(match.group(1)))
    if value.isdigit() and int(value) > _MDC_ECG_LEAD_BASE:
        return _CODED_LEADS.get(int(value) - _MDC_ECG_LEAD_BASE)
    return None


def _display_lead(match: LeadMatch) -> str:
    """The conventional label for a matched lead ("-aVR" when inverted)."""
    return f"-{match.lead}" if match.inverted else match.lead


def _safe_name(name: str) -> str:
    """A lead name fit for an error message: printable and short (labels are free text)."""
    printable = "".join(ch if ch.isprintable() else "?" for ch in name.strip())
    if len(printable) > _MAX_NAME_CHARS:
        return printable[: _MAX_NAME_CHARS - 1] + "\u2026"
    return printable or "?"


@dataclass(frozen=True)
class _LeadSelection:
    """Which source column feeds each standard lead, and which source leads are left over."""

    columns: tuple[int, ...]  # one source column per STANDARD_LEADS entry
    inverted: tuple[bool, ...]
    dropped: tuple[str, ...]


def _select_leads(lead_names: Sequence[str]) -> _LeadSelection:
    """Map source leads to the 12 standard leads, or refuse naming what the record has.

    When a lead appears twice the first plain occurrence wins over any inverted one ("aVR"
    before "-aVR"), so an inversion is only ever applied when it is the sole source.
    """
    plain: dict[str, int] = {}
    negated: dict[str, int] = {}
    for column, name in enumerate(lead_names):
        match = canonical_lead(name)
        if match is not None:
            target = negated if match.inverted else plain
            target.setdefault(match.lead, column)
    missing = [lead for lead in STANDARD_LEADS if lead not in plain and lead not in negated]
    if missing:
        raise _missing_leads_error(lead_names, missing)
    columns = tuple(plain.get(lead, negated.get(lead, -1)) for lead in STANDARD_LEADS)
    inverted = tuple(lead not in plain for lead in STANDARD_LEADS)
    used = set(columns)
    dropped = tuple(name for column, name in enumerate(lead_names) if column not in used)
    return _LeadSelection(columns, inverted, dropped)


def _missing_leads_error(lead_names: Sequence[str], missing: Sequence[str]) -> IngestError:
    """ECG_MISSING_LEADS naming the leads present, so a quarantine row explains itself."""
    shown = [_safe_name(name) for name in lead_names[:_MAX_NAMES_LISTED]]
    if len(lead_names) > _MAX_NAMES_LISTED:
        shown.append("\u2026")
    have = f" ({', '.join(shown)})" if shown else ""
    noun = "lead" if len(lead_names) == 1 else "leads"
    return IngestError(
        ReasonCode.ECG_MISSING_LEADS,
        f"record has {len(lead_names)} {noun}{have}; the 12 standard leads are required, "
        f"missing: {', '.join(missing)}",
    )


# --------------------------------------------------------------------------------------------
# units

_MV_PER_UNIT: dict[str, float] = {
    "mv": 1.0, "millivolt": 1.0, "millivolts": 1.0,
    "uv": 1e-3, "\u00b5v": 1e-3, "\u03bcv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3,
    "nv": 1e-6, "nanovolt": 1e-6, "nanovolts": 1e-6,
    "v": 1e3, "volt": 1e3, "volts": 1e3,
}  # fmt: skip


def _mv_per_unit(unit: str) -> float | None:
    """Factor from a voltage unit to mV, or None when the unit is not a voltage we know."""
    return _MV_PER_UNIT.get(unicodedata.normalize("NFC", unit).strip().lower())


def _unit_scales(units: Sequence[str], selection: _LeadSelection) -> FloatArray:
    """mV factors for the selected columns; refuses a kept lead in an unknown unit."""
    scales = np.empty(len(STANDARD_LEADS), dtype=np.float64)
    for position, column in enumerate(selection.columns):
        scale = _mv_per_unit(units[column])
        if scale is None:
            raise IngestError(
                ReasonCode.ECG_UNSUPPORTED_UNITS,
                f"lead {STANDARD_LEADS[position]} is in unsupported units "
                f"{_safe_name(units[column])!r}; mV, uV or V are required",
            )
        scales[position] = -scale if selection.inverted[position] else scale
    return scales


# --------------------------------------------------------------------------------------------
# quality


def _longest_run(mask: npt.NDArray[np.bool_]) -> int:
    """Length of the longest stretch of True values."""
    if not mask.any():
        return 0
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def _repair_missing(lead: FloatArray, window: int, fs: float) -> tuple[FloatArray, bool]:
    """Interpolate a few missing samples; return (lead, usable).

    Linear interpolation across a short gap keeps the rest of the lead; beyond
    :data:`NAN_MASK_FRACTION` or :data:`NAN_MAX_GAP_S` it would invent morphology.
    """
    missing = np.isnan(lead)
    in_window = missing[:window]
    too_many = float(in_window.mean()) > NAN_MASK_FRACTION
    if missing.all() or too_many or _longest_run(in_window) > NAN_MAX_GAP_S * fs:
        return np.zeros_like(lead), False
    present = np.flatnonzero(~missing)
    repaired = lead.copy()
    repaired[missing] = np.interp(np.flatnonzero(missing), present, lead[present])
    return repaired, True


def _share_at(values: FloatArray, low: float, high: float) -> float:
    """Share of samples at or beyond ``low``/``high`` (float-exact, no amplitude tolerance)."""
    tolerance = 1e-9 * max(1.0, abs(low), abs(high))
    at_limit = (values >= high - tolerance) | (values <= low + tolerance)
    return float(at_limit.mean())


def _is_flat(values: FloatArray) -> bool:
    """Robust peak-to-peak below :data:`FLAT_RANGE_MV`; percentiles ignore isolated spikes."""
    low, high = np.percentile(values, [0.5, 99.5])
    return float(high - low) < FLAT_RANGE_MV


def _clipping(values: FloatArray, adc_limits: tuple[float, float] | None) -> tuple[bool, bool]:
    """Whether a lead looks saturated, and whether so much of it is that it must be masked.

    Saturation shows as many samples at exactly the same extreme value: the lead's own
    min/max (any recorder) or the converter's full scale (when the format states it).
    """
    at_extremes = _share_at(values, float(values.min()), float(values.max()))
    at_full_scale = _share_at(values, *adc_limits) if adc_limits is not None else 0.0
    clipped = at_extremes >= CLIP_SHARE or at_full_scale >= CLIP_ADC_SHARE
    return clipped, max(at_extremes, at_full_scale) >= CLIP_MASK_SHARE


def _assess_lead(
    lead: FloatArray, window: int, fs: float, adc_limits: tuple[float, float] | None
) -> tuple[FloatArray, list[str], bool]:
    """Repair and judge one lead (mV, source rate); return (lead, flags, usable)."""
    flags: list[str] = []
    if np.isnan(lead).any():
        if np.isnan(lead[:window]).any():  # gaps only in the resampling margin go unflagged
            flags.append("nan")
        lead, usable = _repair_missing(lead, window, fs)
        if not usable:
            return lead, flags, False
    observed = lead[:window]
    if _is_flat(observed):
        flags.append("flat")
        return np.zeros_like(lead), flags, False
    clipped, unusable = _clipping(observed, adc_limits)
    if clipped:
        flags.append("clipped")
        if unusable:
            return np.zeros_like(lead), flags, False
    return lead, flags, True


# --------------------------------------------------------------------------------------------
# the shared core


def _resample(signal: FloatArray, fs: float, target_rate: int) -> FloatArray:
    """Resample along axis 0 with an anti-aliasing polyphase filter.

    ``padtype="line"`` extends the signal linearly past its ends, so a DC offset or baseline
    wander does not ring at the edges as it would against implicit zeros.
    """
    ratio = (Fraction(target_rate) / Fraction(fs)).limit_denominator(_MAX_RATIO_DENOMINATOR)
    if ratio == 1:
        return signal
    resampled = resample_poly(signal, ratio.numerator, ratio.denominator, axis=0, padtype="line")
    return np.asarray(resampled, dtype=np.float64)


def _too_short_error(seconds: float, minimum: float) -> IngestError:
    """ECG_TOO_SHORT with both lengths, so the threshold in force is visible in quarantine."""
    return IngestError(
        ReasonCode.ECG_TOO_SHORT,
        f"record lasts {seconds:.2f} s; at least {minimum:g} s is required",
    )


def _validate_shapes(signal: FloatArray, lead_names: Sequence[str], units: Sequence[str]) -> None:
    """Guard against caller bugs (not data problems): names and units must match columns."""
    if signal.ndim != 2:
        raise ValueError("signals must be a 2-D (n_samples, n_leads) array")
    if signal.shape[1] != len(lead_names) or len(lead_names) != len(units):
        raise ValueError("signals, lead_names and units must describe the same leads")


def _adc_limits_mv(
    adc_limits: Sequence[tuple[float, float]] | None,
    selection: _LeadSelection,
    scales: FloatArray,
) -> list[tuple[float, float] | None]:
    """Per standard lead, the converter's full-scale range in mV (sign-corrected), if known."""
    if adc_limits is None:
        return [None] * len(STANDARD_LEADS)
    limits: list[tuple[float, float] | None] = []
    for column, scale in zip(selection.columns, scales, strict=True):
        a, b = (float(v) * float(scale) for v in adc_limits[column])
        limits.append((min(a, b), max(a, b)))
    return limits


def standardise_ecg(
    signals: npt.ArrayLike,
    lead_names: Sequence[str],
    units: Sequence[str],
    fs: float,
    *,
    target_rate: int = 500,
    duration_s: float = 10.0,
    source_format: str,
    identity: SourceIdentity | None = None,
    min_duration_s: float = MIN_DURATION_S,
    adc_limits: Sequence[tuple[float, float]] | None = None,
    source_duration_s: float | None = None,
) -> DecodedEcg:
    """Turn a decoded multi-lead signal into the standard 12-lead form (see module docstring).

    ``signals`` is (n_samples, n_leads) in the physical ``units`` of each lead, NaN where a
    sample is missing. ``adc_limits`` gives each lead's converter full-scale (low, high) in
    those units, when the format knows it. ``source_duration_s`` is the whole recording's
    length when ``signals`` is only its beginning (readers stop reading after the window).
    """
    signal = np.array(signals, dtype=np.float64)
    _validate_shapes(signal, lead_names, units)
    if not (math.isfinite(fs) and fs > 0):
        raise IngestError(ReasonCode.ECG_HEADER_INVALID, "sampling rate is not a positive number")
    selection = _select_leads(lead_names)
    scales = _unit_scales(units, selection)
    available_s = signal.shape[0] / fs
    if available_s < min_duration_s:
        raise _too_short_error(available_s, min_duration_s)
    window = min(signal.shape[0], math.ceil(duration_s * fs - 1e-9))
    excerpt_len = min(signal.shape[0], math.ceil((duration_s + _RESAMPLE_MARGIN_S) * fs))
    excerpt = signal[:excerpt_len, list(selection.columns)] * scales
    excerpt[~np.isfinite(excerpt)] = np.nan
    limits = _adc_limits_mv(adc_limits, selection, scales)

    mask = np.zeros(len(STANDARD_LEADS), dtype=np.bool_)
    flags: dict[str, list[str]] = {}
    for position, lead_name in enumerate(STANDARD_LEADS):
        lead, lead_flags, usable = _assess_lead(excerpt[:, position], window, fs, limits[position])
        excerpt[:, position] = lead
        mask[position] = usable
        flags[lead_name] = lead_flags
    if not mask.any():
        raise IngestError(ReasonCode.ECG_NO_USABLE_SIGNAL, "no lead carries a usable signal")

    n_out = round(target_rate * duration_s)
    resampled = _resample(excerpt, fs, target_rate)[:n_out]
    out = np.zeros((len(STANDARD_LEADS), n_out), dtype=np.float32)
    out[:, : resampled.shape[0]] = resampled.T
    out[~mask] = 0.0
    if available_s < duration_s - 0.5 / fs:
        flags[RECORD_FLAGS_KEY] = [PADDED_FLAG]
    return DecodedEcg(
        signal=out,
        sampling_rate=target_rate,
        lead_mask=mask,
        quality_flags=flags,
        source_sampling_rate=float(fs),
        source_duration_s=float(
            source_duration_s if source_duration_s is not None else available_s
        ),
        source_format=source_format,
        source_leads=list(lead_names),
        dropped_leads=list(selection.dropped),
        identity=identity if identity is not None else SourceIdentity(),
    )


# --------------------------------------------------------------------------------------------
# WFDB

# Digital range of each storage format; the lowest value of each is WFDB's "invalid sample".
_FORMAT_RANGE: dict[str, tuple[int, int]] = {
    "8": (-128, 127), "80": (-128, 127),
    "16": (-32768, 32767), "61": (-32768, 32767), "160": (-32768, 32767),
    "212": (-2048, 2047), "310": (-512, 511), "311": (-512, 511),
    "24": (-(2**23), 2**23 - 1), "32": (-(2**31), 2**31 - 1),
    "508": (-128, 127), "516": (-32768, 32767), "524": (-(2**23), 2**23 - 1),
}  # fmt: skip
_BYTES_PER_SAMPLE: dict[str, Fraction] = {
    "8": Fraction(1), "80": Fraction(1), "16": Fraction(2), "61": Fraction(2),
    "160": Fraction(2), "24": Fraction(3), "32": Fraction(4),
    "212": Fraction(3, 2), "310": Fraction(4, 3), "311": Fraction(4, 3),
}  # fmt: skip
_WORD_PADDED_FORMATS = frozenset({"310", "311"})  # written in whole 32-bit words


def _wfdb_record_name(record_path: Path) -> Path:
    """The WFDB record name (path without extension) for a ``.hea`` path or a record path."""
    path = Path(record_path)
    return path.with_suffix("") if path.suffix.lower() == ".hea" else path


# wfdb is imported inside the WFDB functions: it loads pandas (slow, and noisy with
# deprecation warnings), which DICOM-only callers of this module should not pay for.


def _read_wfdb_header(record_name: Path) -> Any:
    """Parse the header with wfdb, turning its many failure types into one refusal.

    wfdb's parser raises a variety of exceptions (HeaderSyntaxError, IndexError, ValueError,
    UnicodeDecodeError, ...) on malformed text, so everything but a missing file is caught here.
    """
    import wfdb

    header_path = record_name.with_name(record_name.name + ".hea")
    if not header_path.is_file():
        raise IngestError(ReasonCode.FILE_UNREADABLE, "WFDB header file not found")
    try:
        return parse_simple_header(header_path.read_text()) or wfdb.rdheader(str(record_name))
    except OSError as exc:
        raise IngestError(ReasonCode.FILE_UNREADABLE, "WFDB header could not be read") from exc
    except Exception as exc:
        raise IngestError(
            ReasonCode.ECG_HEADER_INVALID, f"WFDB header could not be parsed ({type(exc).__name__})"
        ) from exc


_RECORD_LINE = re.compile(
    r"^(?P<name>[-\w]+)\s+(?P<n_sig>\d+)\s+(?P<fs>\d+(?:\.\d+)?)\s+(?P<len>\d+)\b"
)
_SIGNAL_LINE = re.compile(
    r"^(?P<file>[-\w.]+)\s+(?P<fmt>\d+)\s+(?P<gain>\d+(?:\.\d+)?)\((?P<baseline>-?\d+)\)"
    r"/(?P<units>\S+)\s+(?P<res>\d+)\s+(?P<zero>-?\d+)\s+(?P<init>-?\d+)\s+(?P<checksum>-?\d+)"
    r"\s+(?P<block>\d+)\s+(?P<name>\S.*?)\s*$"
)


def parse_simple_header(text: str) -> SimpleNamespace | None:
    """The fully spelled-out single-segment header that PTB-XL and ``wrsamp`` write, or None.

    wfdb's own parser costs about as much as reading a 10 s record (it builds pandas frames),
    so the common, explicit form is parsed here; anything else (segments, skew, byte offsets,
    samples per frame, omitted fields whose defaults depend on the format) returns None and is
    left to wfdb. Tested equal to ``wfdb.rdheader`` on every PTB-XL header.
    """
    lines = [line.strip() for line in text.splitlines()]
    comments = [line[1:].strip() for line in lines if line.startswith("#")]
    body = [line for line in lines if line and not line.startswith("#")]
    record = _RECORD_LINE.match(body[0]) if body else None
    if record is None or len(body) != int(record["n_sig"]) + 1:
        return None
    signals = [_SIGNAL_LINE.match(line) for line in body[1:]]
    if not all(signals):
        return None
    matched = [m for m in signals if m is not None]
    return SimpleNamespace(
        record_name=record["name"],
        n_sig=int(record["n_sig"]),
        fs=float(record["fs"]),
        sig_len=int(record["len"]),
        file_name=[m["file"] for m in matched],
        fmt=[m["fmt"] for m in matched],
        adc_gain=[float(m["gain"]) for m in matched],
        baseline=[int(m["baseline"]) for m in matched],
        units=[m["units"] for m in matched],
        adc_res=[int(m["res"]) for m in matched],
        adc_zero=[int(m["zero"]) for m in matched],
        init_value=[int(m["init"]) for m in matched],
        checksum=[int(m["checksum"]) for m in matched],
        block_size=[int(m["block"]) for m in matched],
        sig_name=[m["name"] for m in matched],
        samps_per_frame=[1] * len(matched),
        skew=[None] * len(matched),
        byte_offset=[None] * len(matched),
        comments=comments,
    )


def _check_wfdb_header(header: Any) -> None:
    """Refuse headers wfdb accepted but that cannot describe a readable single-segment record."""
    import wfdb

    if isinstance(header, wfdb.MultiRecord):
        raise IngestError(
            ReasonCode.ECG_UNSUPPORTED_STORAGE, "multi-segment WFDB records are not supported"
        )
    n_sig = header.n_sig
    if not isinstance(n_sig, int) or n_sig < 0:
        raise IngestError(ReasonCode.ECG_HEADER_INVALID, "header has no valid signal count")
    if n_sig == 0:
        raise _missing_leads_error([], list(STANDARD_LEADS))
    fields = ("file_name", "fmt", "sig_name", "units", "adc_gain", "baseline", "samps_per_frame")
    for field in fields:
        values = getattr(header, field, None)
        if not isinstance(values, list) or len(values) != n_sig:
            raise IngestError(
                ReasonCode.ECG_HEADER_INVALID,
                f"header declares {n_sig} signals but its signal lines do not match",
            )
    fs = header.fs
    if not _is_number(fs) or fs <= 0:
        raise IngestError(ReasonCode.ECG_HEADER_INVALID, "header sampling rate is invalid")
    for file_name in header.file_name:
        if not file_name or "/" in file_name or "\\" in file_name or file_name == "~":
            raise IngestError(
                ReasonCode.ECG_HEADER_INVALID, "header names a data file outside the record folder"
            )
    for fmt in header.fmt:
        if str(fmt) not in _FORMAT_RANGE:
            raise IngestError(
                ReasonCode.ECG_UNSUPPORTED_STORAGE, f"WFDB storage format {_safe_name(str(fmt))!r}"
            )
    for gain, baseline in zip(header.adc_gain, header.baseline, strict=True):
        if not _is_number(gain) or float(gain) == 0 or not _is_number(baseline or 0):
            raise IngestError(ReasonCode.ECG_HEADER_INVALID, "header has an invalid ADC gain")


def _is_number(value: object) -> bool:
    """True for a finite int/float (wfdb leaves unparsed fields as None or strings)."""
    return isinstance(value, int | float) and math.isfinite(value)


@dataclass(frozen=True)
class _DatFile:
    """One data file of a record: its storage format and how its frames are laid out."""

    name: str
    fmt: str
    samples_per_frame: int
    byte_offset: int


def _wfdb_dat_files(header: Any) -> list[_DatFile]:
    """Group the header's signals by data file (signals in one file share format and offset)."""
    files: dict[str, _DatFile] = {}
    for index, name in enumerate(header.file_name):
        spf = int(header.samps_per_frame[index] or 1)
        offset = int((header.byte_offset[index] if header.byte_offset else 0) or 0)
        known = files.get(name)
        if known is None:
            files[name] = _DatFile(name, str(header.fmt[index]), spf, offset)
        elif known.fmt != str(header.fmt[index]):
            raise IngestError(
                ReasonCode.ECG_HEADER_INVALID, "signals of one data file declare different formats"
            )
        else:
            files[name] = _DatFile(name, known.fmt, known.samples_per_frame + spf, offset)
    return list(files.values())


def _check_wfdb_data(header: Any, directory: Path) -> int | None:
    """Refuse missing data files and files whose size disagrees with the declared length.

    Checked explicitly because wfdb itself would zero-pad a short file or ignore surplus data
    without complaint. The file must hold every declared frame and less than one extra frame
    (allowing the half-byte of format 212 and the 32-bit word padding of 310/311). Returns the
    length in frames (declared, or inferred from the file size when the header omits it).
    """
    declared = header.sig_len
    lengths: list[int] = []
    for dat in _wfdb_dat_files(header):
        path = directory / dat.name
        if not path.is_file():
            raise IngestError(ReasonCode.ECG_DATA_MISSING, "WFDB data file not found")
        bytes_per_sample = _BYTES_PER_SAMPLE.get(dat.fmt)
        if bytes_per_sample is None:  # compressed (FLAC) formats: size says nothing about length
            continue
        frame_bytes = bytes_per_sample * dat.samples_per_frame
        data_bytes = path.stat().st_size - dat.byte_offset
        lengths.append(math.floor(Fraction(max(data_bytes, 0)) / frame_bytes))
        if declared is None:
            continue
        needed = math.ceil(declared * frame_bytes)
        slack = max(math.ceil(frame_bytes) - 1, 3 if dat.fmt in _WORD_PADDED_FORMATS else 0)
        if not needed <= data_bytes <= needed + slack:
            raise IngestError(
                ReasonCode.ECG_LENGTH_MISMATCH,
                f"header declares {declared} samples per signal but the data file holds "
                f"{lengths[-1]}",
            )
    if declared is not None:
        return int(declared)
    return min(lengths) if lengths else None


def _wfdb_adc_limits(header: Any) -> list[tuple[float, float]]:
    """Each signal's converter full-scale range in physical units.

    From the header's ADC resolution and zero where given, else the storage format's range;
    the format's lowest code is excluded because WFDB reserves it for missing samples.
    """
    limits: list[tuple[float, float]] = []
    for index, fmt in enumerate(header.fmt):
        fmt_low, fmt_high = _FORMAT_RANGE[str(fmt)]
        low, high = fmt_low + 1, fmt_high
        resolution = int((header.adc_res[index] if header.adc_res else 0) or 0)
        if 0 < resolution < 64:
            zero = int((header.adc_zero[index] if header.adc_zero else 0) or 0)
            low = max(low, zero - 2 ** (resolution - 1))
            high = min(high, zero + 2 ** (resolution - 1) - 1)
        gain = float(header.adc_gain[index])
        baseline = float(header.baseline[index] or 0)
        ends = ((low - baseline) / gain, (high - baseline) / gain)
        limits.append((min(ends), max(ends)))
    return limits


_AGE_COMMENT = re.compile(r"\bage\s*>?\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_SEX_COMMENT = re.compile(r"\bsex\s*>?\s*[:=]\s*(male|female|m|f)\b", re.IGNORECASE)
_MITDB_COMMENT = re.compile(r"^\s*(\d{1,3})\s+([MF])\b")


def _wfdb_identity(comments: Sequence[str] | None) -> SourceIdentity:
    """Age and sex from header comments ("age: 62" / "sex: male", or MIT-BIH "69 M ...").

    WFDB has no patient-id field; linking ids come from the importer, not from here.
    """
    age: float | None = None
    sex: str | None = None
    for comment in comments or ():
        if (match := _AGE_COMMENT.search(comment)) and age is None:
            age = float(match.group(1))
        if (match := _SEX_COMMENT.search(comment)) and sex is None:
            sex = match.group(1)[0].upper()
        if (match := _MITDB_COMMENT.match(comment)) and age is None and sex is None:
            age, sex = float(match.group(1)), match.group(2)
    return SourceIdentity(patient_age_years=age, patient_sex=sex)


_FORMAT16_INVALID = -32768  # WFDB's "no sample" value in format 16


def _format16_layout(header: Any) -> str | None:
    """The single data file of a plain format-16 record, or None when the general path is needed.

    PTB-XL and most 12-lead exports are exactly this layout; reading it with numpy avoids
    wfdb parsing the header a second time (about as costly as reading the samples).
    """
    files = {str(name) for name in header.file_name}
    simple = (
        len(files) == 1
        and all(str(fmt) == "16" for fmt in header.fmt)
        and not any(header.skew or [])
        and not any(header.byte_offset or [])
        and all(int(n or 1) == 1 for n in (header.samps_per_frame or [1]))
        and header.sig_len is not None
    )
    return files.pop() if simple else None


def _read_format16_signals(header: Any, folder: Path, data_file: str, n_frames: int) -> FloatArray:
    """Physical samples of a format-16 record: (digital - baseline) / gain, NaN where invalid."""
    n_signals = int(header.n_sig)
    digital = np.fromfile(folder / data_file, dtype="<i2", count=n_frames * n_signals)
    digital = digital.reshape(-1, n_signals)
    physical = (digital.astype(np.float64) - np.asarray(header.baseline, dtype=np.float64)) / (
        np.asarray(header.adc_gain, dtype=np.float64)
    )
    physical[digital == _FORMAT16_INVALID] = np.nan
    return physical


def _read_wfdb_signals(record_name: Path, n_frames: int | None) -> FloatArray:
    """Physical samples of the first ``n_frames`` frames (NaN where WFDB marks them invalid)."""
    import wfdb

    try:
        record = wfdb.rdrecord(str(record_name), sampto=n_frames, physical=True, return_res=64)
    except Exception as exc:  # wfdb decode errors are untyped; the header was already vetted
        raise IngestError(
            ReasonCode.ECG_DECODE_FAILED,
            f"WFDB samples could not be decoded ({type(exc).__name__})",
        ) from exc
    if record.p_signal is None:
        raise IngestError(ReasonCode.ECG_DECODE_FAILED, "WFDB record returned no samples")
    return np.asarray(record.p_signal, dtype=np.float64)


def read_wfdb_ecg(
    record_path: Path,
    *,
    target_rate: int = 500,
    duration_s: float = 10.0,
    min_duration_s: float = MIN_DURATION_S,
) -> DecodedEcg:
    """Read a WFDB record (``.hea`` path or record path) as a standard 12-lead ECG.

    Structure is checked before samples are read (header, data files and their sizes, the
    12 leads), so a 30-minute non-12-lead recording is refused without decoding it, and only
    the first window (plus a resampling margin) of a long one is read.
    """
    record_name = _wfdb_record_name(record_path)
    header = _read_wfdb_header(record_name)
    _check_wfdb_header(header)
    n_frames = _check_wfdb_data(header, record_name.parent)
    lead_names = [str(name) for name in header.sig_name]
    _select_leads(lead_names)
    fs = float(header.fs)
    if n_frames is not None and n_frames / fs < min_duration_s:
        raise _too_short_error(n_frames / fs, min_duration_s)
    wanted = math.ceil((duration_s + _RESAMPLE_MARGIN_S) * fs)
    # wfdb cannot stop early when the header omits the length (rdrecord fails on sampto), so
    # such records are read whole; standardise_ecg still keeps only the window.
    to_read = None if header.sig_len is None or n_frames is None else min(wanted, n_frames)
    data_file = _format16_layout(header)
    if data_file is not None and to_read is not None:
        signals = _read_format16_signals(header, record_name.parent, data_file, to_read)
    else:
        signals = _read_wfdb_signals(record_name, to_read)
    return standardise_ecg(
        signals,
        lead_names,
        [str(unit) for unit in header.units],
        fs,
        target_rate=target_rate,
        duration_s=duration_s,
        source_format="wfdb",
        identity=_wfdb_identity(header.comments),
        min_duration_s=min_duration_s,
        adc_limits=_wfdb_adc_limits(header),
        source_duration_s=(n_frames if n_frames is not None else signals.shape[0]) / fs,
    )


# --------------------------------------------------------------------------------------------
# DICOM

_GROUP_ELEMENTS = (
    "NumberOfWaveformChannels",
    "NumberOfWaveformSamples",
    "SamplingFrequency",
    "WaveformBitsAllocated",
    "WaveformSampleInterpretation",
    "ChannelDefinitionSequence",
)
_DECODABLE_INTERPRETATIONS = {
    (8, "SB"),
    (8, "UB"),
    (16, "SS"),
    (16, "US"),
    (32, "SL"),
    (32, "UL"),
    (64, "SV"),
    (64, "UV"),
}  # fmt: skip  (MB / AB are mu-law / A-law audio encodings, which pydicom returns undecoded)


@dataclass(frozen=True)
class _Group:
    """A multiplex group worth decoding: where it is and what its channels are."""

    index: int
    labels: list[str]
    units: list[str]
    fs: float
    n_samples: int
    coverage: int  # how many of the 12 standard leads it carries

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


def _channel_label(channel: pydicom.Dataset, number: int) -> str:
    """A lead label for one channel, preferring its coded lead over free text.

    The code value (SCP-ECG / MDC) is unambiguous; the Code Meaning ("Lead I (Einthoven)") is
    kept as the label when it agrees, so ``source_leads`` reads as the file does.
    """
    source = channel.get("ChannelSourceSequence")
    item = source[0] if source else None
    meaning = str(item.get("CodeMeaning", "")) if item is not None else ""
    text = meaning or str(channel.get("ChannelLabel", "")) or f"channel {number}"
    coded = _lead_from_code(str(item.get("CodeValue", ""))) if item is not None else None
    if coded is not None and canonical_lead(text) != coded:
        return _display_lead(coded)
    return text


def _channel_unit(channel: pydicom.Dataset) -> str:
    """The unit the sensitivity-scaled samples are in ("" when the channel is uncalibrated)."""
    if channel.get("ChannelSensitivity") is None:
        return ""
    units = channel.get("ChannelSensitivityUnitsSequence")
    if not units:
        return ""
    return str(units[0].get("CodeValue", "") or units[0].get("CodeMeaning", ""))


def _describe_group(index: int, item: pydicom.Dataset) -> _Group | None:
    """Summarise a multiplex group, or None when it lacks what decoding needs."""
    if any(item.get(keyword) is None for keyword in _GROUP_ELEMENTS):
        return None
    channels = list(item.ChannelDefinitionSequence)
    n_channels, n_samples = int(item.NumberOfWaveformChannels), int(item.NumberOfWaveformSamples)
    fs = float(item.SamplingFrequency)
    if len(channels) != n_channels or n_samples <= 0 or not (math.isfinite(fs) and fs > 0):
        return None
    labels = [_channel_label(channel, k + 1) for k, channel in enumerate(channels)]
    leads = {match.lead for match in map(canonical_lead, labels) if match is not None}
    units = [_channel_unit(channel) for channel in channels]
    return _Group(index, labels, units, fs, n_samples, len(leads))


def _choose_group(ds: pydicom.Dataset) -> _Group:
    """The multiplex group holding the 12-lead recording.

    Most standard leads first, then the longest: this passes over rhythm strips (few leads)
    and median/representative beats (about one second) that 12-lead objects also carry.
    """
    items = ds.get("WaveformSequence")
    if not items or not any(item.get("WaveformData") for item in items):
        raise IngestError(ReasonCode.ECG_WAVEFORM_MISSING, "dataset carries no waveform data")
    groups = [
        group
        for index, item in enumerate(items)
        if item.get("WaveformData") and (group := _describe_group(index, item)) is not None
    ]
    if not groups:
        raise IngestError(ReasonCode.DICOM_INVALID, "no waveform group is completely described")
    return max(groups, key=lambda group: (group.coverage, group.duration_s))


def _padding_value(item: pydicom.Dataset, dtype: np.dtype[Any]) -> int | None:
    """WaveformPaddingValue as an integer of the sample type (it is stored as raw bytes)."""
    value = item.get("WaveformPaddingValue")
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        if len(value) < dtype.itemsize:
            return None
        return int(np.frombuffer(bytes(value[: dtype.itemsize]), dtype=dtype)[0])
    return int(value)


def _group_samples(
    ds: pydicom.Dataset, group: _Group
) -> tuple[FloatArray, list[tuple[float, float]]]:
    """Samples of a group in sensitivity units (NaN at padding) and each channel's ADC range.

    ``Dataset.waveform_array`` applies sensitivity x correction factor + baseline per channel;
    the raw codes are read as well to spot padding samples and the integer type's full scale.
    """
    item = ds.WaveformSequence[group.index]
    key = (int(item.WaveformBitsAllocated), str(item.WaveformSampleInterpretation))
    if key not in _DECODABLE_INTERPRETATIONS:
        raise IngestError(
            ReasonCode.ECG_UNSUPPORTED_STORAGE,
            f"waveform sample encoding {key[1]} with {key[0]} bits is not supported",
        )
    expected_bytes = group.n_samples * len(group.labels) * key[0] // 8
    if len(item.WaveformData) < expected_bytes:
        raise IngestError(ReasonCode.DICOM_TRUNCATED, "waveform data is shorter than declared")
    try:
        values = np.asarray(ds.waveform_array(group.index), dtype=np.float64)
        raw = np.asarray(multiplex_array(ds, group.index, as_raw=True))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise IngestError(
            ReasonCode.DICOM_DECODE_FAILED, f"waveform could not be decoded ({type(exc).__name__})"
        ) from exc
    padding = _padding_value(item, raw.dtype)
    if padding is not None:
        values[raw == padding] = np.nan
    info = np.iinfo(raw.dtype)
    limits: list[tuple[float, float]] = []
    for channel in item.ChannelDefinitionSequence:
        gain = float(channel.get("ChannelSensitivity", 1.0) or 1.0)
        gain *= float(channel.get("ChannelSensitivityCorrectionFactor", 1.0) or 1.0)
        offset = float(channel.get("ChannelBaseline", 0.0) or 0.0)
        ends = (info.min * gain + offset, info.max * gain + offset)
        limits.append((min(ends), max(ends)))
    return values, limits


def _dicom_age_years(value: str) -> float | None:
    """PatientAge ("042Y", "006M", "010W", "003D") in years."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD])\s*", value.upper())
    if match is None:
        return None
    per_year = {"Y": 1.0, "M": 12.0, "W": 365.25 / 7.0, "D": 365.25}[match.group(2)]
    return round(int(match.group(1)) / per_year, 3)


def _dicom_identity(ds: pydicom.Dataset) -> SourceIdentity:
    """Linking identifiers from the header (PHI: used for pseudonymisation, never stored)."""

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return (str(value).strip() or None) if value is not None else None

    sex = text("PatientSex")
    age = text("PatientAge")
    return SourceIdentity(
        patient_id=text("PatientID"),
        study_uid=text("StudyInstanceUID"),
        study_date=text("StudyDate"),
        patient_sex=sex.upper() if sex and sex.upper() in {"M", "F", "O"} else None,
        patient_age_years=_dicom_age_years(age) if age else None,
    )


def read_dicom_ecg(
    ds: pydicom.Dataset,
    *,
    target_rate: int = 500,
    duration_s: float = 10.0,
    min_duration_s: float = MIN_DURATION_S,
) -> DecodedEcg:
    """Read a DICOM waveform object (12-lead ECG IOD and similar) as a standard 12-lead ECG."""
    group = _choose_group(ds)
    _select_leads(group.labels)
    values, limits = _group_samples(ds, group)
    return standardise_ecg(
        values,
        group.labels,
        group.units,
        group.fs,
        target_rate=target_rate,
        duration_s=duration_s,
        source_format="dicom",
        identity=_dicom_identity(ds),
        min_duration_s=min_duration_s,
        adc_limits=limits,
        source_duration_s=group.duration_s,
    )
