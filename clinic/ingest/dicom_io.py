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

import io
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_has_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue

from clinic.ingest.errors import IngestError, ReasonCode

__all__ = ["is_waveform", "load_dicom"]

_PREAMBLE_LENGTH = 128
_PREFIX = b"DICM"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ELEMENT_HEADER_LENGTH = 8  # the first read of every element: tag + VR + length (or tag + length)
# Groups a stored DICOM object may plausibly start with when it has no preamble.
_PLAUSIBLE_FIRST_GROUPS = frozenset({0x0002, 0x0008})
# String VRs whose value pydicom converts to numbers; a plain ``str`` left behind means the
# conversion failed (pydicom warns and keeps the text instead of raising).
_NUMERIC_STRING_VRS = frozenset({"IS", "DS"})


class _TrackingReader(io.BufferedReader):
    """A file reader that remembers the size asked for and the size got by the latest read.

    pydicom ends a data set without complaint when fewer than the 8 bytes of an element header
    remain; that last short read is the only trace a file cut inside a header leaves.
    """

    last_requested: int = 0
    last_got: int = 0

    @property
    def name(self) -> str:
        """Hide the path: pydicom quotes it in warnings and keeps it on the data set."""
        return "<dicom input>"

    def read(self, size: int | None = -1, /) -> bytes:
        """Read as usual and record the request and the result."""
        data = super().read(size)
        self.last_requested = -1 if size is None else size
        self.last_got = len(data)
        return data


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
        fp = _TrackingReader(io.FileIO(str(path), "rb"))
    except OSError as exc:
        raise IngestError(ReasonCode.FILE_UNREADABLE, f"cannot open file: {exc.strerror}") from exc
    with fp:
        has_prefix = _has_dicm_prefix(fp.read(_PREAMBLE_LENGTH + len(_PREFIX)))
        fp.seek(0)
        ds, consumed = _read(fp, has_prefix=has_prefix)
        last_requested, last_got = fp.last_requested, fp.last_got
    _check_complete(
        ds,
        consumed=consumed,
        size=size,
        has_prefix=has_prefix,
        last_requested=last_requested,
        last_got=last_got,
    )
    _parse_all(ds)
    return ds


def is_waveform(ds: Dataset) -> bool:
    """True when ``ds`` carries waveforms (ECG and the like): the engine routes those elsewhere."""
    return "WaveformSequence" in ds


def _has_dicm_prefix(head: bytes) -> bool:
    """True when the file has the PS3.10 preamble followed by ``DICM``."""
    return head[_PREAMBLE_LENGTH : _PREAMBLE_LENGTH + len(_PREFIX)] == _PREFIX


def _read(fp: _TrackingReader, *, has_prefix: bool) -> tuple[Dataset, int]:
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
    except zlib.error as exc:
        # Deflated transfer syntax: the compressed stream is cut short or corrupt.
        cut = "incomplete" in str(exc) or "truncated" in str(exc)
        reason = ReasonCode.DICOM_TRUNCATED if cut else ReasonCode.DICOM_INVALID
        raise IngestError(reason, "deflated data set cannot be inflated") from exc
    except (EOFError, struct.error, BytesLengthException) as exc:
        # Fewer bytes left than an element header or a file meta value needs.
        reason = ReasonCode.DICOM_TRUNCATED if has_prefix else ReasonCode.DICOM_NOT_DICOM
        raise IngestError(reason, "file ends inside an element") from exc
    except Exception as exc:  # any other parser failure on untrusted input is a refusal
        reason = ReasonCode.DICOM_INVALID if has_prefix else ReasonCode.DICOM_NOT_DICOM
        raise IngestError(reason, f"not parseable as DICOM ({type(exc).__name__})") from exc
    if not has_prefix and not _plausible_raw_dataset(ds):
        raise IngestError(
            ReasonCode.DICOM_NOT_DICOM, "no DICM prefix and the content is not a DICOM data set"
        )
    return ds, fp.tell()


def _plausible_raw_dataset(ds: Dataset) -> bool:
    """Judge a forced read: real data sets start with a known group-0002 or 0008 element.

    Group 0008 holds the SOP Common module (SOP Class/Instance UID) that every storage object
    carries, and elements are sorted, so nothing but file meta can come before it. A group length
    (gggg,0000) is not in the data dictionary but is a legitimate first element.
    """
    tags = sorted(ds.keys())
    if not tags:
        return False
    first = tags[0]
    return first.group in _PLAUSIBLE_FIRST_GROUPS and (
        first.element == 0 or dictionary_has_tag(first)
    )


def _check_complete(
    ds: Dataset,
    *,
    consumed: int,
    size: int,
    has_prefix: bool,
    last_requested: int,
    last_got: int,
) -> None:
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
    if 0 < last_got < _ELEMENT_HEADER_LENGTH == last_requested:
        raise IngestError(ReasonCode.DICOM_TRUNCATED, "file ends inside an element header")
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _check_lengths(meta)
    _check_lengths(ds)


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
        elem: DataElement = ds[tag]
    except (EOFError, struct.error) as exc:
        raise IngestError(ReasonCode.DICOM_TRUNCATED, f"element {tag} is cut short") from exc
    except OSError as exc:
        # pydicom raises OSError("No tag to read ...") for sequences whose items run out.
        raise IngestError(ReasonCode.DICOM_TRUNCATED, f"sequence {tag} is cut short") from exc
    except Exception as exc:  # any other conversion failure on untrusted input
        raise IngestError(
            ReasonCode.DICOM_INVALID, f"element {tag} cannot be parsed ({type(exc).__name__})"
        ) from exc
    return elem


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
