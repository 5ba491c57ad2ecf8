"""Decode radiographs (DICOM, PNG, JPEG) into display-ready float images with their provenance.

Two readers, one result type (:class:`~clinic.ingest.types.DecodedXray`):

* :func:`decode_dicom_xray` takes a data set from :func:`clinic.ingest.dicom_io.load_dicom`,
  refuses everything that is not a single-frame grayscale projection radiograph *before* spending
  time on decoding, decodes with whichever pydicom plugin handles the transfer syntax, and renders
  it the way a viewer would: Modality LUT (rescale), then VOI LUT or the first window, then
  MONOCHROME1 inversion.
* :func:`read_raster_xray` reads PNG/JPEG exports (MIMIC-CXR-JPG, Hannover), which are already
  windowed by whoever exported them, so they are only scaled by their bit depth.

Refusal messages never quote header values that could identify a patient.
"""

from __future__ import annotations

import hashlib
import math
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_modality_lut, apply_voi
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from clinic.ingest.errors import IngestError, ReasonCode
from clinic.ingest.types import DecodedXray, SourceIdentity

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "RADIOGRAPH_MODALITIES",
    "decode_dicom_xray",
    "parse_age_years",
    "read_raster_xray",
]

DEFAULT_MAX_PIXELS: Final = 100_000_000
# Projection radiography: computed radiography, digital radiography, radiographic imaging.
RADIOGRAPH_MODALITIES: Final = frozenset({"CR", "DX", "RG"})
# Computed Radiography Image Storage, Digital X-Ray Image Storage (for presentation/processing).
_RADIOGRAPH_SOP_CLASSES: Final = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.1.1",
    }
)
_SECONDARY_CAPTURE: Final = "1.2.840.10008.5.1.4.1.1.7"
_DIGITIZED_FILM: Final = "DF"  # (0008,0064) Conversion Type
_CHEST_BODY_PARTS: Final = frozenset({"CHEST", "THORAX"})
# Modalities of objects that carry no image to decode at all.
_NON_IMAGE_MODALITIES: Final = frozenset(
    {
        "SR", "PR", "KO", "ECG", "HD", "EPS", "AU", "DOC", "REG", "SEG", "FID", "RWV", "PLAN",
        "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTTREAT", "RTRAD", "RTSEGANN", "ASMT",
        "RESP", "HC", "BDUS", "M3D", "OSS", "POS",
    }
)  # fmt: skip
_MONOCHROME: Final = frozenset({"MONOCHROME1", "MONOCHROME2"})
_SUPPORTED_BITS_ALLOCATED: Final = frozenset({8, 16, 32})
_WINDOW_FUNCTIONS: Final = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})
# Plugin order per compressed transfer syntax (pydicom's default tries GDCM first everywhere).
# GDCM is left out for JPEG 2000: on a corrupt codestream it throws a C++ exception that nothing
# catches and the whole process aborts (seen with python-gdcm 3.2.6). Pillow's libjpeg-turbo and
# CharLS come before GDCM because they are widely fuzzed; GDCM is the only JPEG Lossless decoder
# here (pylibjpeg-libjpeg is GPL-3.0 and deliberately not installed).
_PLUGIN_PREFERENCE: Final[dict[str, tuple[str, ...]]] = {
    JPEGBaseline8Bit: ("pillow", "gdcm"),
    JPEGExtended12Bit: ("pillow", "gdcm"),
    JPEGLossless: ("gdcm",),
    JPEGLosslessSV1: ("gdcm",),
    JPEGLSLossless: ("pyjpegls", "gdcm"),
    JPEGLSNearLossless: ("pyjpegls", "gdcm"),
    JPEG2000Lossless: ("pylibjpeg", "pillow"),
    JPEG2000: ("pylibjpeg", "pillow"),
    HTJ2KLossless: ("pylibjpeg",),
    HTJ2KLosslessRPCL: ("pylibjpeg",),
    HTJ2K: ("pylibjpeg",),
    RLELossless: ("pylibjpeg", "pydicom"),
}
# GDCM decodes these faster but aborts the process on a corrupt stream (see docs/decoders.md).
_FAST_BUT_ABORTING: Final = frozenset({JPEG2000Lossless, JPEG2000})
_NATIVE_SYNTAXES: Final = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
)
# Header attributes copied to DecodedXray.attributes (DICOM keywords, values made JSON-safe).
_KEPT_ATTRIBUTES: Final = (
    "Modality", "SOPClassUID", "ImageType", "ViewPosition", "PatientOrientation",
    "ImageLaterality", "Laterality", "BodyPartExamined", "PatientPosition",
    "PhotometricInterpretation", "SamplesPerPixel", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PixelSpacing", "ImagerPixelSpacing",
    "PixelSpacingCalibrationType", "EstimatedRadiographicMagnificationFactor", "WindowCenter",
    "WindowWidth", "VOILUTFunction", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "PresentationLUTShape", "PresentationIntentType", "LossyImageCompression",
    "LossyImageCompressionRatio", "LossyImageCompressionMethod", "BurnedInAnnotation",
    "ConversionType", "Manufacturer", "ManufacturerModelName", "DetectorType", "KVP",
    "ExposureTime", "XRayTubeCurrent", "Exposure", "DistanceSourceToDetector",
    "DistanceSourceToPatient",
)  # fmt: skip
_LIST_ATTRIBUTES: Final = frozenset({"PixelSpacing", "ImagerPixelSpacing", "ImageType"})
_AGE_PATTERN: Final = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$")
_AGE_UNIT_YEARS: Final = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_LUMA: Final = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights Pillow's "L" conversion uses
_RASTER_FORMATS: Final = {"PNG": "png", "JPEG": "jpeg"}


class _PluginsFailedError(Exception):
    """Every plugin tried for a transfer syntax raised; ``failures`` maps plugin to exception."""

    def __init__(self, failures: dict[str, Exception]) -> None:
        names = ", ".join(name or "pydicom default" for name in failures)
        super().__init__(f"every decoding plugin failed ({names})")
        self.failures = failures


class _DecodeTimeoutError(BaseException):
    """Raised from SIGALRM inside a decode.

    A BaseException on purpose: pydicom tries each decoding plugin under ``except Exception`` and
    would otherwise swallow the timeout and carry on with the next plugin.
    """


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def decode_dicom_xray(
    ds: Dataset,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout_s: float = 60.0,
    crash_contained: bool = False,
) -> DecodedXray:
    """Decode a single-frame grayscale radiograph into display-ready pixels in [0, 1].

    Header checks come first so that a refused object costs no decoding time. Modality policy:
    CR, DX and RG are accepted. An empty or "OT" Modality is accepted only when the SOP class
    itself is CR/DX (the SOP class is authoritative) or for a Secondary Capture of digitised film
    (ConversionType DF) of the chest: OT objects are otherwise anything from a screenshot to a CT
    reformat. Every other modality (MR, CT, US, NM, PT, MG, XA, RTIMAGE...) is refused.

    ``timeout_s`` bounds the decode with SIGALRM when called from the main thread (worker
    processes); elsewhere the decode runs unbounded. A native decoder stuck inside C code is only
    interrupted when it returns to Python, so the engine's per-task timeout stays the backstop.

    ``crash_contained=True`` (the engine's supervised workers) lets GDCM decode JPEG 2000 first:
    about 25 % faster than OpenJPEG, but it aborts the process on a corrupt stream, which only a
    supervisor that replaces the worker and quarantines the item can afford.
    """
    _refuse_non_images(ds)
    _refuse_multiframe(ds)
    _refuse_non_radiographs(ds)
    rows, columns, bits_allocated = _checked_geometry(ds, max_pixels=max_pixels)
    _refuse_non_grayscale(ds)
    syntax = _transfer_syntax(ds)
    if syntax in _NATIVE_SYNTAXES:
        _check_native_length(ds, rows * columns * (bits_allocated // 8))
    raw = _decode_with_limit(ds, syntax, timeout_s=timeout_s, crash_contained=crash_contained)
    if raw.shape != (rows, columns):
        raise IngestError(
            ReasonCode.DICOM_DECODE_FAILED,
            f"decoded shape {raw.shape} differs from the declared {rows}x{columns}",
        )
    raw = np.ascontiguousarray(raw)
    if raw.size and raw.min() == raw.max():
        raise IngestError(ReasonCode.IMAGE_BLANK, "every pixel has the same stored value")
    pixels, window = _render(raw, ds)
    attributes = _attributes(ds)
    attributes["TransferSyntaxUID"] = str(syntax)
    return DecodedXray(
        pixels=pixels,
        raw_sha256=hashlib.sha256(raw.data).hexdigest(),
        source_format="dicom",
        attributes=attributes,
        window=window,
        identity=_identity(ds),
    )


def _text(ds: Dataset, keyword: str) -> str:
    """A header string, stripped and upper-cased; empty when absent."""
    value = ds.get(keyword)
    return "" if value is None else str(value).strip().upper()


def _refuse_non_images(ds: Dataset) -> None:
    """DICOM_NOT_IMAGE for waveforms, reports, presentation states, RT objects, documents...

    A registered SOP class whose name lacks "Image Storage" is not an image (Segmentation, RT
    Dose, Encapsulated PDF, SR, Presentation State...). Then: no PixelData at all.
    """
    if "WaveformSequence" in ds:
        raise IngestError(ReasonCode.DICOM_NOT_IMAGE, "object holds waveforms, not an image")
    modality = _text(ds, "Modality")
    if modality in _NON_IMAGE_MODALITIES:
        raise IngestError(ReasonCode.DICOM_NOT_IMAGE, f"modality {modality} is not an image")
    sop_class = ds.get("SOPClassUID")
    if sop_class is not None:
        uid = UID(str(sop_class).strip())
        if uid.name != str(uid) and "Image Storage" not in uid.name:
            raise IngestError(ReasonCode.DICOM_NOT_IMAGE, f"SOP class is {uid.name}")
    if "PixelData" not in ds or ds.PixelData is None or len(ds.PixelData) == 0:
        raise IngestError(ReasonCode.DICOM_NO_PIXEL_DATA, "object has no Pixel Data")


def _refuse_multiframe(ds: Dataset) -> None:
    """DICOM_MULTIFRAME: a radiograph is one frame; cines and tomosynthesis are not handled."""
    frames = ds.get("NumberOfFrames")
    try:
        count = 1 if frames in (None, "") else int(frames)
    except (TypeError, ValueError) as exc:
        raise IngestError(ReasonCode.DICOM_INVALID, "NumberOfFrames is not a number") from exc
    if count > 1:
        raise IngestError(ReasonCode.DICOM_MULTIFRAME, f"object has {count} frames")


def _refuse_non_radiographs(ds: Dataset) -> None:
    """DICOM_UNSUPPORTED_MODALITY unless the object is a projection radiograph (see policy)."""
    modality = _text(ds, "Modality")
    if modality in RADIOGRAPH_MODALITIES:
        return
    if modality in ("", "OT"):
        sop_class = str(ds.get("SOPClassUID", "")).strip()
        if sop_class in _RADIOGRAPH_SOP_CLASSES:
            return
        if (
            sop_class == _SECONDARY_CAPTURE
            and _text(ds, "ConversionType") == _DIGITIZED_FILM
            and _text(ds, "BodyPartExamined") in _CHEST_BODY_PARTS
        ):
            return
    shown = modality or "(none)"
    raise IngestError(
        ReasonCode.DICOM_UNSUPPORTED_MODALITY, f"modality {shown} is not a projection radiograph"
    )


def _required_int(ds: Dataset, keyword: str) -> int:
    """An integer Image Pixel attribute, or DICOM_INVALID when missing or not a number."""
    value = ds.get(keyword)
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise IngestError(ReasonCode.DICOM_INVALID, f"{keyword} is missing or invalid") from exc


def _checked_geometry(ds: Dataset, *, max_pixels: int) -> tuple[int, int, int]:
    """Rows, Columns and BitsAllocated, refusing absurd sizes before anything is allocated."""
    rows = _required_int(ds, "Rows")
    columns = _required_int(ds, "Columns")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    total = rows * columns * samples
    if rows <= 0 or columns <= 0 or total > max_pixels:
        raise IngestError(
            ReasonCode.DICOM_DIMENSIONS_ABSURD,
            f"declared {rows}x{columns}x{samples} values (limit {max_pixels})",
        )
    bits_allocated = _required_int(ds, "BitsAllocated")
    bits_stored = _required_int(ds, "BitsStored")
    if bits_allocated not in _SUPPORTED_BITS_ALLOCATED:
        raise IngestError(
            ReasonCode.DICOM_UNSUPPORTED_PHOTOMETRIC,
            f"BitsAllocated {bits_allocated} is not 8, 16 or 32",
        )
    if not 1 <= bits_stored <= bits_allocated:
        raise IngestError(
            ReasonCode.DICOM_INVALID,
            f"BitsStored {bits_stored} does not fit BitsAllocated {bits_allocated}",
        )
    return rows, columns, bits_allocated


def _refuse_non_grayscale(ds: Dataset) -> None:
    """DICOM_UNSUPPORTED_PHOTOMETRIC for colour and palette images (not radiographs)."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = _text(ds, "PhotometricInterpretation")
    if samples != 1 or photometric not in _MONOCHROME:
        raise IngestError(
            ReasonCode.DICOM_UNSUPPORTED_PHOTOMETRIC,
            f"{photometric or 'no photometric interpretation'} with {samples} samples per pixel",
        )


def _transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax from the file meta, or from how a meta-less data set was read."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        return UID(str(syntax).strip())
    implicit, little = ds.original_encoding
    if implicit is None:
        raise IngestError(
            ReasonCode.DICOM_UNSUPPORTED_TRANSFER_SYNTAX, "no transfer syntax and no encoding"
        )
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _check_native_length(ds: Dataset, expected: int) -> None:
    """DICOM_PIXEL_SIZE_MISMATCH when uncompressed Pixel Data is not Rows*Columns*bytes long.

    One extra byte is the even-length padding the standard requires; anything else means the
    header and the data disagree and the image would be misread.
    """
    actual = len(ds.PixelData)
    if actual not in (expected, expected + 1):
        raise IngestError(
            ReasonCode.DICOM_PIXEL_SIZE_MISMATCH,
            f"Pixel Data holds {actual} bytes, the header declares {expected}",
        )


def _decode_with_limit(
    ds: Dataset, syntax: UID, *, timeout_s: float, crash_contained: bool = False
) -> npt.NDArray[Any]:
    """Pick the decoder for ``syntax`` and decode under the time limit, mapping failures."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise IngestError(
            ReasonCode.DICOM_UNSUPPORTED_TRANSFER_SYNTAX, f"no decoder for {syntax.name}"
        ) from exc
    if not decoder.is_available:
        raise IngestError(
            ReasonCode.DICOM_UNSUPPORTED_TRANSFER_SYNTAX,
            f"no decoding plugin installed for {syntax.name}",
        )
    try:
        with _time_limit(timeout_s):
            return _decode_pixels(ds, syntax, crash_contained=crash_contained)
    except IngestError:
        raise
    except _DecodeTimeoutError as exc:
        raise IngestError(
            ReasonCode.DICOM_DECODE_TIMEOUT, f"decoding took longer than {timeout_s:g} s"
        ) from exc
    except Exception as exc:  # a decoder failing on untrusted data is a refusal, whatever it is
        if _all_plugins_unsupported(exc):
            raise IngestError(
                ReasonCode.DICOM_UNSUPPORTED_TRANSFER_SYNTAX,
                f"no installed plugin supports this {syntax.name} variant",
            ) from exc
        detail = str(exc) if isinstance(exc, _PluginsFailedError) else type(exc).__name__
        raise IngestError(
            ReasonCode.DICOM_DECODE_FAILED, f"{syntax.name} decoding failed: {detail}"
        ) from exc


def _decode_pixels(ds: Dataset, syntax: UID, *, crash_contained: bool = False) -> npt.NDArray[Any]:
    """Decode the stored values (no LUTs), trying the preferred plugins for ``syntax`` in order.

    Same as ``pydicom.pixels.pixel_array(ds)`` but with this module's plugin order, and it also
    works for data sets read without file meta (transfer syntax taken from their encoding).
    """
    decoder = get_decoder(syntax)
    options = as_pixel_options(ds)
    failures: dict[str, Exception] = {}
    for plugin in _plugins_for(syntax, decoder.available_plugins, crash_contained=crash_contained):
        try:
            arr, _ = decoder.as_array(ds, validate=True, decoding_plugin=plugin, **options)
        except Exception as exc:  # try the next plugin, as pydicom itself would
            failures[plugin] = exc
            continue
        return np.asarray(arr)
    raise _PluginsFailedError(failures)


def _plugins_for(
    syntax: UID, available: Iterable[str], *, crash_contained: bool = False
) -> list[str]:
    """The plugins to try for ``syntax``: ours in preference order, or pydicom's choice ("")."""
    preferred = _PLUGIN_PREFERENCE.get(syntax)
    if preferred is None:
        return [""]
    if crash_contained and syntax in _FAST_BUT_ABORTING:
        preferred = ("gdcm", *preferred)
    installed = set(available)
    plugins = [name for name in preferred if name in installed]
    if not plugins:
        raise IngestError(
            ReasonCode.DICOM_UNSUPPORTED_TRANSFER_SYNTAX,
            f"no safe decoding plugin installed for {syntax.name}",
        )
    return plugins


def _all_plugins_unsupported(exc: Exception) -> bool:
    """True when every plugin declined the variant (e.g. 12-bit JPEG without libjpeg).

    pydicom reports this only in its RuntimeError text, one "name: reason" line per plugin.
    """
    if not isinstance(exc, _PluginsFailedError) or not exc.failures:
        return False
    reasons = [
        line
        for failure in exc.failures.values()
        for line in str(failure).splitlines()[1:]
        if line.strip()
    ]
    return bool(reasons) and all("does not support" in line for line in reasons)


def _can_use_alarm() -> bool:
    """SIGALRM handlers can only be installed from the main thread of the main interpreter."""
    return (
        hasattr(signal, "SIGALRM")
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_DecodeTimeoutError` in the block after ``seconds`` (main thread only).

    Restores the previous handler. When an outer timer is already armed and would fire first,
    it is left alone (the tighter limit wins); otherwise it is re-armed with its remaining time.
    """
    if seconds <= 0 or not _can_use_alarm():
        yield
        return
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if 0 < outer_delay <= seconds:
        yield
        return

    active = [True]  # cleared on the way out, so a late alarm cannot raise outside the block

    def _on_alarm(signum: int, frame: FrameType | None) -> None:
        if active[0]:
            raise _DecodeTimeoutError

    previous = signal.signal(signal.SIGALRM, _on_alarm)
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        try:
            active[0] = False
        finally:  # runs even when the alarm fires just before the line above
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer_delay > 0:
                remaining = max(outer_delay - (time.monotonic() - started), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, remaining, outer_interval)


def _render(
    raw: npt.NDArray[Any], ds: Dataset
) -> tuple[npt.NDArray[np.float32], tuple[float, float] | None]:
    """Modality LUT, then VOI (LUT, first window, or full range), then MONOCHROME1 inversion.

    The common cases (linear rescale, a window) are computed in place in float32: a 2 k x 2.5 k
    radiograph then costs a few passes over 20 MB instead of pydicom's float64 temporaries.
    """
    values = _modality_values(raw, ds)
    if _has_voi_lut(ds):
        shown, window = _apply_voi_lut_sequence(values, ds).astype(np.float32), None
    elif (window := _first_window(ds)) is not None:
        shown = _apply_window(values, ds, window)
    else:
        shown = _full_range(values)
    if _text(ds, "PhotometricInterpretation") == "MONOCHROME1":
        np.subtract(np.float32(1.0), shown, out=shown)
    np.clip(shown, 0.0, 1.0, out=shown)
    return shown, window


def _modality_values(raw: npt.NDArray[Any], ds: Dataset) -> npt.NDArray[Any]:
    """Stored values through the modality transform (pydicom for a Modality LUT Sequence)."""
    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(raw, ds))
    slope, intercept = (
        _float_or(ds.get("RescaleSlope"), 1.0),
        _float_or(ds.get("RescaleIntercept"), 0.0),
    )
    if slope == 1.0 and intercept == 0.0:
        return raw
    values = raw.astype(np.float32)
    values *= np.float32(slope)
    values += np.float32(intercept)
    return values


def _float_or(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _has_voi_lut(ds: Dataset) -> bool:
    """True when a usable VOI LUT Sequence item is present (it takes precedence over windows)."""
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return False
    item = sequence[0]
    return item.get("LUTDescriptor") is not None and item.get("LUTData") is not None


def _apply_voi_lut_sequence(values: npt.NDArray[Any], ds: Dataset) -> npt.NDArray[np.float64]:
    """Apply the first VOI LUT and scale by the LUT's own output range.

    The range is taken from the LUT entries rather than from the declared entry depth, because
    many LUTs declare 16 bits but only use 12.
    """
    if not np.issubdtype(values.dtype, np.integer):
        values = np.rint(values).astype(np.int64)
    out = np.asarray(apply_voi(values, ds, 0), dtype=np.float64)
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries = int(descriptor[0]) or 2**16
    domain = np.arange(int(descriptor[1]), int(descriptor[1]) + entries, dtype=np.int64)
    lut = np.asarray(apply_voi(domain, ds, 0), dtype=np.float64)
    low, high = float(lut.min()), float(lut.max())
    if high <= low:
        return np.zeros_like(out)
    return (out - low) / (high - low)


def _first_window(ds: Dataset) -> tuple[float, float] | None:
    """The first (center, width) pair when it can be applied; None means "use full range"."""
    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centers is None or widths is None or centers == "" or widths == "":
        return None
    center = centers[0] if isinstance(centers, MultiValue | list) else centers
    width = widths[0] if isinstance(widths, MultiValue | list) else widths
    try:
        center_f, width_f = float(center), float(width)
    except (TypeError, ValueError):
        return None
    function = _text(ds, "VOILUTFunction") or "LINEAR"
    finite = math.isfinite(center_f) and math.isfinite(width_f)
    # PS3.3 C.11.2.1.2: LINEAR needs a width of at least 1, the other functions a positive one.
    wide_enough = width_f >= 1.0 if function == "LINEAR" else width_f > 0.0
    if function not in _WINDOW_FUNCTIONS or not finite or not wide_enough:
        return None
    return center_f, width_f


def _apply_window(
    values: npt.NDArray[Any], ds: Dataset, window: tuple[float, float]
) -> npt.NDArray[np.float32]:
    """The first window (PS3.3 C.11.2.1.2), scaled to [0, 1], computed in float32 in place.

    LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5), LINEAR_EXACT: ((x - c) / w + 0.5), SIGMOID:
    1 / (1 + exp(-4 (x - c) / w)); the caller clips to [0, 1]. These are pydicom's
    ``apply_windowing`` outputs divided by their range, without float64 temporaries.
    """
    center, width = window
    function = _text(ds, "VOILUTFunction") or "LINEAR"
    out = values.astype(np.float32)  # always a copy: the raw array stays untouched
    if function == "LINEAR" and width == 1.0:
        return (out > np.float32(center - 0.5)).astype(np.float32)
    if function == "LINEAR":
        out -= np.float32(center - 0.5)
        out /= np.float32(width - 1.0)
        out += np.float32(0.5)
    elif function == "LINEAR_EXACT":
        out -= np.float32(center)
        out /= np.float32(width)
        out += np.float32(0.5)
    else:  # SIGMOID
        out -= np.float32(center)
        out *= np.float32(-4.0 / width)
        np.exp(out, out=out)
        out += np.float32(1.0)
        np.reciprocal(out, out=out)
    return out


def _full_range(values: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Min-max scaling when the header gives no VOI (the raw image is known not to be blank)."""
    low, high = float(values.min()), float(values.max())
    out = values.astype(np.float32)
    if high <= low:
        return np.zeros_like(out)
    out -= np.float32(low)
    out /= np.float32(high - low)
    return out


def _json_scalar(value: Any) -> Any:
    """One header value as str/int/float (None for non-finite numbers and binary values)."""
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray):
        return None
    try:
        number = float(value)  # DSdecimal and similar
    except (TypeError, ValueError):
        return str(value).strip()
    if not isinstance(value, str):
        return number if math.isfinite(number) else None
    return str(value).strip()


def _attributes(ds: Dataset) -> dict[str, Any]:
    """The kept header attributes as JSON-serialisable values (lists for multi-valued ones)."""
    out: dict[str, Any] = {}
    for keyword in _KEPT_ATTRIBUTES:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if isinstance(value, MultiValue | list | tuple):
            items = [_json_scalar(v) for v in value]
            converted: Any = [v for v in items if v is not None]
        else:
            converted = _json_scalar(value)
            if converted is not None and keyword in _LIST_ATTRIBUTES:
                converted = [converted]
        if converted is not None and converted != []:
            out[keyword] = converted
    return out


def parse_age_years(value: str | None) -> float | None:
    """Years from a DICOM Age String ("065Y", "006M", "010W", "030D"); None when malformed."""
    if not value:
        return None
    match = _AGE_PATTERN.match(str(value))
    if match is None:
        return None
    return int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)]


def _identity(ds: Dataset) -> SourceIdentity:
    """Linking identifiers from the header (PHI: used for pseudonymisation, never logged)."""

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        stripped = "" if value is None else str(value).strip()
        return stripped or None

    study_date = text("StudyDate")
    if study_date is not None and not re.fullmatch(r"\d{8}", study_date):
        study_date = None
    sex = text("PatientSex")
    return SourceIdentity(
        patient_id=text("PatientID"),
        study_uid=text("StudyInstanceUID"),
        study_date=study_date,
        patient_sex=sex.upper() if sex else None,
        patient_age_years=parse_age_years(text("PatientAge")),
    )


# --------------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------------


def read_raster_xray(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedXray:
    """Read a PNG/JPEG radiograph export as grayscale pixels in [0, 1].

    The declared size is checked before the pixels are decoded (Pillow opens lazily). 8- and
    16-bit grayscale are scaled by their bit depth (the export is already windowed, so no min-max
    stretch); colour images are reduced to BT.601 luminance. Refusals: FILE_EMPTY,
    FILE_UNREADABLE, UNKNOWN_FORMAT (an image, but not PNG/JPEG), IMAGE_DIMENSIONS_ABSURD,
    IMAGE_DECODE_FAILED, IMAGE_BLANK.
    """
    try:
        if path.stat().st_size == 0:
            raise IngestError(ReasonCode.FILE_EMPTY, "file is empty")
        image = Image.open(path)
    except IngestError:
        raise
    except (UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise IngestError(ReasonCode.IMAGE_DECODE_FAILED, "not a decodable image") from exc
    except Image.DecompressionBombError as exc:
        raise IngestError(ReasonCode.IMAGE_DIMENSIONS_ABSURD, "image is absurdly large") from exc
    except OSError as exc:
        raise IngestError(ReasonCode.FILE_UNREADABLE, f"cannot read file: {exc.strerror}") from exc
    with image:
        source_format = _raster_format(image)
        _check_raster_size(image, max_pixels=max_pixels)
        try:
            image.load()
        except Exception as exc:  # truncated or corrupt streams raise assorted errors
            raise IngestError(
                ReasonCode.IMAGE_DECODE_FAILED,
                f"image data cannot be decoded ({type(exc).__name__})",
            ) from exc
        raw, gray, bits = _raster_arrays(image)
    if gray.size == 0 or float(gray.min()) == float(gray.max()):
        raise IngestError(ReasonCode.IMAGE_BLANK, "every pixel has the same value")
    pixels = np.clip(gray / float(2**bits - 1), 0.0, 1.0).astype(np.float32)
    rows, columns = pixels.shape
    attributes: dict[str, Any] = {
        "Rows": rows,
        "Columns": columns,
        "BitsAllocated": bits,
        "BitsStored": bits,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
    }
    if source_format == "jpeg":
        attributes["LossyImageCompression"] = "01"
        attributes["LossyImageCompressionMethod"] = "ISO_10918_1"
    return DecodedXray(
        pixels=pixels,
        raw_sha256=hashlib.sha256(raw.data).hexdigest(),
        source_format=source_format,
        attributes=attributes,
        window=None,
    )


def _raster_format(image: Image.Image) -> str:
    """Return "png" or "jpeg"; UNKNOWN_FORMAT for other images Pillow knows (GIF, TIFF...)."""
    fmt = _RASTER_FORMATS.get(image.format or "")
    if fmt is None:
        raise IngestError(ReasonCode.UNKNOWN_FORMAT, f"{image.format} is not PNG or JPEG")
    return fmt


def _check_raster_size(image: Image.Image, *, max_pixels: int) -> None:
    """IMAGE_DIMENSIONS_ABSURD from the declared size, before any pixel is decoded."""
    width, height = image.size
    bands = len(image.getbands())
    if width <= 0 or height <= 0 or width * height * bands > max_pixels:
        raise IngestError(
            ReasonCode.IMAGE_DIMENSIONS_ABSURD,
            f"declared {width}x{height}x{bands} values (limit {max_pixels})",
        )


def _raster_arrays(
    image: Image.Image,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64], int]:
    """(stored array for hashing, grayscale values, bit depth) for the loaded image."""
    mode = image.mode
    if mode == "L":
        raw = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
        return raw, raw.astype(np.float64), 8
    if mode.startswith("I;16") or mode == "I":
        stored = np.asarray(image)
        if stored.min() < 0 or stored.max() > np.iinfo(np.uint16).max:
            raise IngestError(ReasonCode.IMAGE_DECODE_FAILED, f"{mode} values exceed 16 bits")
        raw = np.ascontiguousarray(stored.astype(np.uint16))
        return raw, raw.astype(np.float64), 16
    if mode == "LA":
        raw = np.ascontiguousarray(np.asarray(image.getchannel("L"), dtype=np.uint8))
        return raw, raw.astype(np.float64), 8
    if mode == "1":
        raw = np.ascontiguousarray(np.asarray(image.convert("L"), dtype=np.uint8))
        return raw, raw.astype(np.float64), 8
    rgb = image.convert("RGB")
    raw = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    gray = raw.astype(np.float64) @ np.asarray(_LUMA, dtype=np.float64)
    return raw, gray, 8
