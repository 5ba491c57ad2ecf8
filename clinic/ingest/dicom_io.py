"""Read one DICOM file and refuse it clearly when it is not a whole, parseable DICOM object.

pydicom is deliberately lenient: it reads files cut short without complaint (a value shorter than
its declared length is kept as is, an unterminated encapsulated element is dropped with a warning)
and keeps values it cannot convert as plain strings. Those files would otherwise fail much later,
in the decoder or the store, with an error that says nothing useful. :func:`load_dicom` therefore
checks what pydicom does not, converts every element once so that parse errors surface here, and
maps each failure to one specific :class:`~clinic.ingest.errors.ReasonCode`.

Messages never quote element values: they may hold patient data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.datadict import dictionary_has_tag
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

from clinic.ingest.errors import IngestError, ReasonCode

__all__ = ["is_waveform", "load_dicom"]

_PREAMBLE_LENGTH = 128
_PREFIX = b"DICM"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_MAX_HEADER_LENGTH = 12  # explicit VR with a 4-byte length: tag 4 + VR 2 + reserved 2 + length 4
# Groups a stored DICOM object may plausibly start with when it has no preamble.
_PLAUSIBLE_FIRST_GROUPS = frozenset({0x0002, 0x0008})
# String VRs whose value pydicom converts to numbers; a plain ``str`` left behind means the
# conversion failed (pydicom warns and keeps the text instead of raising).
_NUMERIC_STRING_VRS = frozenset({"IS", "DS"})


def load_dicom(path: Path) -> Dataset:
    """Read ``path`` as DICOM and fully parse it, or raise :class:`IngestError`.

    Refusals: FILE_UNREADABLE (cannot open), FILE_EMPTY (zero bytes), DICOM_NOT_DICOM (neither a
    ``DICM`` prefix nor a plausible raw data set), DICOM_TRUNCATED (the file ends before an element
    it declares), DICOM_INVALID (elements that cannot be parsed or converted).
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise IngestError(ReasonCode.FILE_UNREADABLE, f"cannot stat file: {exc.strerror}") from exc
    if size == 0:
        raise IngestError(ReasonCode.FILE_EMPTY, "file is empty")
    try:
        fp = path.open("rb")
    except OSError as exc:
        raise IngestError(ReasonCode.FILE_UNREADABLE, f"cannot open file: {exc.strerror}") from exc
    with fp:
        has_prefix = _has_dicm_prefix(fp.read(_PREAMBLE_LENGTH + len(_PREFIX)))
        fp.seek(0)
        ds, consumed = _read(fp, has_prefix=has_prefix)
    _check_complete(ds, consumed=consumed, size=size, has_prefix=has_prefix)
    _parse_all(ds)
    return ds


def is_waveform(ds: Dataset) -> bool:
    """True when ``ds`` carries waveforms (ECG and similar), so the engine can route it elsewhere."""
    return "WaveformSequence" in ds


def _has_dicm_prefix(head: bytes) -> bool:
    """True when the file has the PS3.10 preamble followed by ``DICM``."""
    return head[_PREAMBLE_LENGTH : _PREAMBLE_LENGTH + len(_PREFIX)] == _PREFIX


def _read(fp: Any, *, has_prefix: bool) -> tuple[Dataset, int]:
    """Parse the file, returning the data set and how many bytes the parser consumed.

    Without the ``DICM`` prefix the file may still be a raw (pre-PS3.10) data set, so it is read
    with ``force=True`` and then judged for plausibility; a forced read of a text or PNG file
    "succeeds" with a single nonsense element, hence the check.
    """
    try:
        ds = pydicom.dcmread(fp, force=not has_prefix)
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error, not a parse failure
            raise IngestError(
                ReasonCode.FILE_UNREADABLE, f"cannot read file: {exc.strerror}"
            ) from exc
        # pydicom raises a bare OSError ("No tag to read ...") when items run out.
        reason = ReasonCode.DICOM_TRUNCATED if has_prefix else ReasonCode.DICOM_NOT_DICOM
        raise IngestError(reason, "file ends inside a sequence") from exc
    except (EOFError, struct.error, BytesLengthException) as exc:
        # Fewer bytes left than an element header or a file meta value needs.
        reason = ReasonCode.DICOM_TRUNCATED if has_prefix else ReasonCode.DICOM_NOT_DICOM
        raise IngestError(reason, "file ends inside an element") from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted input is a refusal
        reason = ReasonCode.DICOM_INVALID if has_prefix else ReasonCode.DICOM_NOT_DICOM
        raise IngestError(reason, f"not parseable as DICOM ({type(exc).__name__})") from exc
    if not has_prefix and not _plausible_raw_dataset(ds):
        raise IngestError(
            ReasonCode.DICOM_NOT_DICOM, "no DICM prefix and the content is not a DICOM data set"
        )
    return ds, int(fp.tell())


def _plausible_raw_dataset(ds: Dataset) -> bool:
    """Judge a forced read: real data sets start with a known group-0000/0002/0008 element."""
    tags = sorted(ds.keys())
    if not tags:
        return False
    first = tags[0]
    return first.group in _PLAUSIBLE_FIRST_GROUPS and dictionary_has_tag(first)


def _check_complete(ds: Dataset, *, consumed: int, size: int, has_prefix: bool) -> None:
    """Refuse files that end before the elements they declare.

    pydicom stops quietly when an undefined-length element has no delimiter (the parser then
    leaves the rest of the file unread) and keeps short values of defined-length elements.
    """
    if consumed < size:
        raise IngestError(
            ReasonCode.DICOM_TRUNCATED,
            f"parser stopped at byte {consumed} of {size}: an element has no end delimiter",
        )
    if has_prefix and len(ds) == 0:
        raise IngestError(ReasonCode.DICOM_TRUNCATED, "file ends before the data set starts")
    if _ends_inside_header(ds, size):
        raise IngestError(ReasonCode.DICOM_TRUNCATED, "file ends inside an element header")
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _check_lengths(meta)
    _check_lengths(ds)


def _ends_inside_header(ds: Dataset, size: int) -> bool:
    """True when a few bytes follow the last element: a header the file cut off.

    pydicom silently stops when fewer than 8 bytes remain. Only checked when the last element
    was read straight from the file (not from a deflated buffer, whose offsets differ).
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax == DeflatedExplicitVRLittleEndian:
        return False
    tags = list(ds.keys())
    if not tags:
        return False
    last = ds.get_item(tags[-1])
    if not isinstance(last, RawDataElement) or last.length == _UNDEFINED_LENGTH:
        return False
    end = last.value_tell + last.length
    return 0 < size - end < _MAX_HEADER_LENGTH


def _check_lengths(ds: Dataset) -> None:
    """Compare each element's declared length with the bytes actually read, recursively."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement):
            value = raw.value
            if raw.length != _UNDEFINED_LENGTH and value is not None and len(value) < raw.length:
                raise IngestError(
                    ReasonCode.DICOM_TRUNCATED,
                    f"element {raw.tag} declares {raw.length} bytes, file holds {len(value)}",
                )
            if raw.VR != "SQ":
                continue
        elem = _convert(ds, tag)
        if elem.VR == "SQ" and elem.value is not None:
            for item in elem.value:
                _check_lengths(item)


def _convert(ds: Dataset, tag: Any) -> DataElement:
    """Convert one element, mapping parser failures to DICOM_INVALID (or TRUNCATED)."""
    try:
        return ds[tag]
    except (EOFError, struct.error) as exc:
        raise IngestError(ReasonCode.DICOM_TRUNCATED, f"element {tag} is cut short") from exc
    except OSError as exc:
        # pydicom raises OSError("No tag to read ...") for sequences whose items run out.
        raise IngestError(ReasonCode.DICOM_TRUNCATED, f"sequence {tag} is cut short") from exc
    except Exception as exc:  # noqa: BLE001 - any conversion failure on untrusted input
        raise IngestError(
            ReasonCode.DICOM_INVALID, f"element {tag} cannot be parsed ({type(exc).__name__})"
        ) from exc


def _parse_all(ds: Dataset) -> None:
    """Convert every element (recursively) and refuse numeric strings that are not numbers.

    pydicom converts lazily; doing it now means a malformed element is refused here with
    DICOM_INVALID rather than crashing the decoder or the de-identifier later. Over-long values
    (a common vendor quirk) are tolerated; values that cannot be numbers at all are not.
    """
    for tag in list(ds.keys()):
        elem = _convert(ds, tag)
        if elem.VR == "SQ":
            for item in elem.value or ():
                _parse_all(item)
        elif elem.VR in _NUMERIC_STRING_VRS and _has_unconverted_text(elem.value):
            raise IngestError(
                ReasonCode.DICOM_INVALID,
                f"element {elem.tag} ({elem.VR}) holds a value that is not a number",
            )


def _has_unconverted_text(value: Any) -> bool:
    """True when an IS/DS value (or one of its values) stayed a plain ``str``."""
    values: Iterable[Any] = value if isinstance(value, MultiValue | list) else (value,)
    return any(type(v) is str and v.strip() != "" for v in values)
