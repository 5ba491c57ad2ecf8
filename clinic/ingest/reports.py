"""Free-text reports (radiology, ECG, clinical notes): decode, scrub identifiers, split sections.

Reports arrive as bytes from many systems: UTF-8 from modern exports, UTF-16 from Windows tools,
cp1252 / Latin-1 from older German hospital systems. :func:`decode_text` turns them into text or
refuses them (:attr:`ReasonCode.REPORT_UNDECODABLE`) — it never guesses its way into mojibake for
binary input. :func:`scrub_identifiers` removes identifiers before anything is stored;
:func:`split_sections` finds the conventional sections so that models can use e.g. only the
impression.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from charset_normalizer import from_bytes

from clinic.ingest.errors import IngestError, ReasonCode

__all__ = [
    "BODY_SECTION",
    "SECTION_NAMES",
    "DecodedReport",
    "decode_text",
    "read_report",
    "scrub_identifiers",
    "split_sections",
]

#: Canonical section names, in the order they conventionally appear.
SECTION_NAMES: tuple[str, ...] = ("indication", "comparison", "technique", "findings", "impression")
#: Key for text under no recognised header (all of a headerless report, or a preamble).
BODY_SECTION = "body"

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
#: Share of characters that may be controls / unassigned before text is judged binary.
_MAX_BAD_CHAR_RATIO = 0.01
#: Share of NUL bytes in one byte lane that marks UTF-16 text written without a BOM.
_UTF16_NUL_LANE_RATIO = 0.3
_ASCII_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # all but \t \n \v \f \r
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_WESTERN_DEFAULT = "cp1252"
#: Legacy code pages charset detection may choose from (European Windows code pages).
_LEGACY_CODEPAGES: tuple[str, ...] = (
    "cp1252",
    "iso8859_15",
    "cp1250",
    "cp1251",
    "cp1253",
    "cp1257",
)
#: Share of ASCII bytes above which undetected 8-bit text is still read as cp1252.
_MIN_ASCII_SHARE = 0.8


@dataclass(frozen=True)
class DecodedReport:
    """A report ready for the store: scrubbed text, its sections, and how it was decoded."""

    text: str
    sections: dict[str, str] = field(default_factory=dict)
    encoding: str = "utf-8"
    scrubbed_count: int = 0


# --------------------------------------------------------------------------------------------
# decoding


def _undecodable(why: str) -> IngestError:
    """The refusal for bytes that are not text in any encoding we accept."""
    return IngestError(ReasonCode.REPORT_UNDECODABLE, why)


def _codec_name(name: str) -> str:
    """Python's canonical spelling of a codec name (``latin_1`` → ``iso8859-1``)."""
    return codecs.lookup(name).name


def _looks_like_text(text: str) -> bool:
    """Whether decoded text is plausible prose rather than binary that happened to decode.

    Control characters (other than whitespace), unassigned / private-use code points and the
    replacement character do not occur in real reports; more than a trace of them means binary.
    Only non-ASCII characters need a Unicode category lookup, which keeps this cheap.
    """
    if not text:
        return True
    bad = len(_ASCII_CONTROLS.findall(text))
    bad += sum(
        1
        for ch in _NON_ASCII.findall(text)
        if ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Cn", "Co", "Cs")
    )
    return bad <= _MAX_BAD_CHAR_RATIO * len(text)


def _strict(data: bytes, encoding: str) -> str | None:
    """Decode strictly; None instead of an exception so callers can try the next candidate."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


def _decode_bom(data: bytes) -> tuple[str, str] | None:
    """Decode text that starts with a byte-order mark (the BOM is the strongest evidence)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = _strict(data[len(bom) :], encoding)
            if text is None:
                raise _undecodable(f"invalid {encoding} after byte-order mark")
            return text, encoding
    return None


def _decode_utf16_without_bom(data: bytes) -> tuple[str, str] | None:
    """Recognise BOM-less UTF-16 by its NUL bytes sitting in one byte lane (mostly ASCII text)."""
    if len(data) % 2:
        return None
    half = len(data) // 2
    even_nuls = data[0::2].count(0) / half
    odd_nuls = data[1::2].count(0) / half
    if odd_nuls >= _UTF16_NUL_LANE_RATIO and even_nuls < odd_nuls / 10:
        encoding = "utf-16-le"
    elif even_nuls >= _UTF16_NUL_LANE_RATIO and odd_nuls < even_nuls / 10:
        encoding = "utf-16-be"
    else:
        return None
    text = _strict(data, encoding)
    return None if text is None else (text, encoding)


def _mostly_ascii(data: bytes) -> bool:
    """Whether at least :data:`_MIN_ASCII_SHARE` of the bytes are ASCII (Western prose is)."""
    return sum(byte < 0x80 for byte in data) >= _MIN_ASCII_SHARE * len(data)


def _detect_legacy(data: bytes) -> tuple[str, str]:
    """Pick a legacy 8-bit code page with charset-normalizer, preferring cp1252.

    Detection is restricted to the European Windows code pages: left free, charset-normalizer
    reads short German reports as hp_roman8, mac_roman or even big5 (PTB-XL's "verlÄngerung"
    looks like odd casing in cp1252). Our sources are German / English, so the cp1252 reading
    wins whenever it passes the mess detector; another code page wins only when the cp1252
    reading fails it (Cyrillic or Greek text). When the detector accepts nothing, mostly-ASCII
    text that decodes under cp1252 is still taken as cp1252; anything else is refused. Latin-1
    text decodes identically under cp1252 (they differ only in 0x80-0x9F, control characters in
    Latin-1).
    """
    matches = from_bytes(data, cp_isolation=list(_LEGACY_CODEPAGES))
    western = _strict(data, _WESTERN_DEFAULT)
    if western is not None and any(str(match) == western for match in matches):
        return western, _WESTERN_DEFAULT
    best = matches.best()
    if best is not None:
        return str(best), _codec_name(str(best.encoding))
    if western is not None and _mostly_ascii(data):
        return western, _WESTERN_DEFAULT
    raise _undecodable("no text encoding fits (binary content?)")


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode report bytes to ``(text, encoding)``; the encoding is Python's codec name.

    Order, strongest evidence first: byte-order mark; BOM-less UTF-16 (NUL bytes in one lane);
    strict UTF-8 (which almost never accepts legacy 8-bit text by accident); then charset
    detection for legacy code pages. NUL bytes anywhere else, or a result full of control
    characters, mean binary content: :attr:`ReasonCode.REPORT_UNDECODABLE`. Empty input decodes
    to ``("", "utf-8")``; refusing it is :func:`read_report`'s job.
    """
    if not data:
        return "", "utf-8"
    decoded = _decode_bom(data)
    if decoded is None and 0 in data:
        decoded = _decode_utf16_without_bom(data)
        if decoded is None:
            data = data.rstrip(b"\x00")  # NUL padding from fixed-size C buffers is harmless
            if not data or 0 in data:
                raise _undecodable("binary content (NUL bytes)")
    if decoded is None:
        utf8 = _strict(data, "utf-8")
        decoded = (utf8, "utf-8") if utf8 is not None else _detect_legacy(data)
    text, encoding = decoded
    if not _looks_like_text(text):
        raise _undecodable("binary content (control characters after decoding)")
    return text, _codec_name(encoding)


# --------------------------------------------------------------------------------------------
# sections

_SECTION_HEADERS: dict[str, tuple[str, ...]] = {
    "indication": (
        "indication",
        "indications",
        "clinical indication",
        "clinical history",
        "history",
        "clinical information",
        "clinical data",
        "reason for exam",
        "reason for examination",
        "reason for study",
        "indikation",
        "fragestellung",
        "klinische angaben",
        "anamnese",
    ),
    "comparison": (
        "comparison",
        "comparisons",
        "prior studies",
        "prior study",
        "vergleich",
        "voraufnahme",
        "voraufnahmen",
    ),
    "technique": (
        "technique",
        "examination",
        "exam",
        "procedure",
        "views",
        "technik",
        "untersuchungstechnik",
    ),
    "findings": ("findings", "finding", "befund", "befunde"),
    "impression": (
        "impression",
        "impressions",
        "conclusion",
        "conclusions",
        "summary",
        "assessment",
        "opinion",
        "interpretation",
        "beurteilung",
        "zusammenfassung",
        "schlussfolgerung",
        "fazit",
    ),
}
_HEADER_TO_SECTION: dict[str, str] = {
    " ".join(header.split()): section
    for section, headers in _SECTION_HEADERS.items()
    for header in headers
}
_HEADER_ALTERNATION = "|".join(
    r"\s+".join(map(re.escape, header.split()))
    for header in sorted(_HEADER_TO_SECTION, key=len, reverse=True)
)
# "FINDINGS: ..." / "Clinical history - ..." at the start of a line (any case).
_LINE_HEADER = re.compile(
    rf"^[ \t]*(?P<h>{_HEADER_ALTERNATION})[ \t]*(?::|-(?=\s))[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
# A header alone on its line, without a colon ("Befund" then the text on the next lines).
_BARE_HEADER = re.compile(
    rf"^[ \t]*(?P<h>{_HEADER_ALTERNATION})[ \t]*$\n?", re.IGNORECASE | re.MULTILINE
)
# Flattened reports: "... cough. FINDINGS: ..." - only capitals mid-line, so that ordinary
# prose ("... smoker. History: ...") is never cut.
_INLINE_HEADER = re.compile(
    rf"(?<=[.;!?])[ \t]+(?P<h>{_HEADER_ALTERNATION})[ \t]*:[ \t]*", re.IGNORECASE
)


def _header_section(header: str) -> str:
    """Canonical section for a matched header spelling (any case, any inner whitespace)."""
    return _HEADER_TO_SECTION[" ".join(header.casefold().split())]


def _find_headers(text: str) -> list[tuple[int, int, str]]:
    """All header occurrences as (start, end, section), sorted and free of overlaps."""
    found: list[tuple[int, int, str]] = []
    for pattern in (_LINE_HEADER, _BARE_HEADER):
        found.extend((m.start(), m.end(), _header_section(m["h"])) for m in pattern.finditer(text))
    found.extend(
        (m.start(), m.end(), _header_section(m["h"]))
        for m in _INLINE_HEADER.finditer(text)
        if m["h"].isupper()
    )
    found.sort()
    kept: list[tuple[int, int, str]] = []
    for start, end, section in found:
        if not kept or start >= kept[-1][1]:
            kept.append((start, end, section))
    return kept


def split_sections(text: str) -> dict[str, str]:
    """Split a report into its conventional sections.

    Keys are among :data:`SECTION_NAMES` plus :data:`BODY_SECTION`. Headers are recognised
    case-insensitively at the start of a line followed by a colon ("INDICATION:", "Clinical
    history:", "Beurteilung:"), alone on a line ("FINDINGS"), or - in capitals only - after a
    sentence end in flattened one-line reports. Text before the first header, and all of a report
    without headers (such as PTB-XL's ECG statements), goes to ``"body"``: calling it findings
    would put words in the author's mouth. A section that occurs twice is joined with a newline;
    empty sections are left out. Values are stripped; nothing else is changed.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    parts: dict[str, list[str]] = {}

    def add(section: str, content: str) -> None:
        content = content.strip()
        if content:
            parts.setdefault(section, []).append(content)

    headers = _find_headers(text)
    add(BODY_SECTION, text[: headers[0][0]] if headers else text)
    for index, (_start, end, section) in enumerate(headers):
        stop = headers[index + 1][0] if index + 1 < len(headers) else len(text)
        add(section, text[end:stop])
    return {section: "\n".join(chunks) for section, chunks in parts.items()}


# --------------------------------------------------------------------------------------------
# identifier scrubbing

_MONTHS = (
    "jan(?:uary|uar)?|feb(?:ruary|ruar)?|m(?:ar(?:ch)?|ärz|aerz)|apr(?:il)?|ma[iy]|"
    "jun(?:e|i)?|jul(?:y|i)?|aug(?:ust)?|sep(?:t(?:ember)?)?|o[ck]t(?:ober)?|nov(?:ember)?|"
    "de[cz](?:ember)?"
)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+(?!\w)")
_LABELLED_ID = re.compile(
    r"(?P<label>\b(?:MRN|MR\s*#|MR\s+no\.?|medical\s+record\s+(?:number|no\.?)|patient\s+id|"
    r"pat(?:ient)?\.?\s*(?:nr|no)\.?|accession(?:\s+(?:number|no\.?))?|acc\.?\s*#|"
    r"case\s+(?:number|no\.?)|fallnummer|fall-nr\.?|patientennummer|pat-nr\.?|ID)"
    r"\s*[:#.]?\s*)(?P<value>(?=[\w-]*\d)[A-Za-z0-9][\w-]*)",
    re.IGNORECASE,
)
# ISO dates; day/month with "/" or "." and a 2- or 4-digit year; "-" only with a 4-digit year
# ("3-4-10 cm" is a size). The same separator must be used twice.
_NUMERIC_DATE = re.compile(
    r"(?<![\w/.-])(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}([/.])\d{1,2}\1(?:\d{4}|\d{2})|\d{1,2}-\d{1,2}-\d{4})"
    r"(?![\w/-]|\.\d)"
)
_NAMED_DATE = re.compile(
    rf"\b(?:\d{{1,2}}\.?\s+(?:{_MONTHS})\.?,?\s+\d{{4}}|(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})\b",
    re.IGNORECASE,
)
_PHONE = re.compile(
    r"(?<![\w.])(?:\+\d{1,3}[\s./-]?)?(?:\(\d{1,5}\)[\s./-]?)?\d{2,5}(?:[\s./-]\d{1,8}){1,4}(?!\w)"
)
_TITLED_NAME = re.compile(
    r"\b(?P<title>(?:Dr|Prof|Mr|Mrs|Ms|Herr|Frau)\.?(?:\s+(?:med|rer\.\s*nat|phil)\.)?\s+)"
    r"(?P<name>[^\W\d_][\w'-]*(?:\s+[^\W\d_][\w'-]*)?)"
)
# "Patient: Jane Doe", "Name: DOE^JANE", "Patientin: Müller, Anna" — a labelled name field; the
# name is up to four capitalised words (DICOM-style "^" and "Surname, Given" included).
_LABELLED_NAME = re.compile(
    r"(?P<label>\b(?i:patient(?:in)?(?:\s+name)?|pat(?:ient)?\.?\s*name|name|pt\.?)\s*:[ \t]*)"
    r"(?P<name>[^\W\d_a-z][\w'-]*"
    r"(?:(?:[ \t]+|,[ \t]*|\^)(?!(?:MRN|ID|DOB|Acc|Accession|Geb)\b)[^\W\d_a-z][\w'-]*){0,3})"
)
_ISO_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}")
_PRESERVED_MARKER = re.compile(r"X{2,}[\W_]*")


def _digits(text: str) -> int:
    """Number of decimal digits in ``text``."""
    return sum(ch.isdigit() for ch in text)


def _valid_numeric_date(text: str) -> bool:
    """Whether a numeric date-shaped token has a plausible day and month (not "3-4-10 cm")."""
    parts = [int(part) for part in re.split(r"[/.-]", text)]
    if _ISO_DATE.fullmatch(text):
        _year, month, day = parts
        return 1 <= month <= 12 and 1 <= day <= 31
    first, second, _year = parts
    day_month = 1 <= first <= 31 and 1 <= second <= 12
    month_day = 1 <= first <= 12 and 1 <= second <= 31
    return day_month or month_day


def _phone_like(text: str) -> bool:
    """Whether a digit group sequence is a phone number rather than a list of measurements.

    Needs 7-15 digits. A single "." separator is a decimal number. Space-only separators are
    accepted only with a trunk or country prefix ("0511 532 0", "+49 ...", "(0511) ...") or
    in the North-American 3-3-4 grouping, so "120 130 140 mmHg" is left alone.
    """
    if not 7 <= _digits(text) <= 15:
        return False
    separators = re.findall(r"[\s./-]+", text)
    if len(separators) == 1 and separators[0] == ".":
        return False
    if all(sep.isspace() for sep in separators):
        groups = [len(group) for group in re.findall(r"\d+", text)]
        prefixed = text[0] in "+(0"
        return prefixed or groups == [3, 3, 4]
    return True


def _titled_name(match: re.Match[str]) -> str | None:
    """``Dr. [NAME]`` for a title followed by a capitalised name; None to keep the text."""
    name = match["name"]
    words = name.split()
    if not name[0].isupper() or _PRESERVED_MARKER.fullmatch(words[0]):
        return None
    # Keep a second word only when it is capitalised too ("Dr. Smith reviewed" -> one word).
    kept = words[0] if len(words) == 1 or not words[1][0].isupper() else name
    return match["title"] + "[NAME]" + name[len(kept) :]


def _labelled_name(match: re.Match[str]) -> str | None:
    """``Patient: [NAME]`` for a capitalised name after a name label; placeholders are kept."""
    name = match["name"]
    if not name[0].isupper() or _PRESERVED_MARKER.fullmatch(name.split()[0]):
        return None
    return match["label"] + "[NAME]"


def _substitute(
    pattern: re.Pattern[str], text: str, replace: Callable[[re.Match[str]], str | None]
) -> tuple[str, int]:
    """``pattern.sub`` that lets ``replace`` veto a match (return None) and counts the rest."""
    count = 0

    def apply(match: re.Match[str]) -> str:
        nonlocal count
        replacement = replace(match)
        if replacement is None:
            return match[0]
        count += 1
        return replacement

    return pattern.sub(apply, text), count


def _known_pattern(identifiers: Iterable[str]) -> re.Pattern[str] | None:
    """One word-bounded, case-insensitive pattern for caller-given identifiers, longest first.

    Identifiers shorter than two characters are ignored: a one-letter "identifier" would erase
    every "A" or "1" in a medical text while identifying nobody. Whitespace inside an identifier
    matches any whitespace, so "John  Smith" across a line break is still found.
    """
    cleaned = {" ".join(item.split()) for item in identifiers}
    usable = sorted((item for item in cleaned if len(item) >= 2), key=len, reverse=True)
    if not usable:
        return None
    alternation = "|".join(r"\s+".join(map(re.escape, item.split())) for item in usable)
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


#: (pattern, cheap guard that must match first, replacement). Guards skip the expensive
#: patterns for the many reports that have no "@", no digits or no date-like digit groups.
_SCRUB_STEPS: tuple[
    tuple[re.Pattern[str], re.Pattern[str] | None, Callable[[re.Match[str]], str | None]], ...
] = (
    (_EMAIL, re.compile("@"), lambda m: "[EMAIL]"),
    (_LABELLED_ID, re.compile(r"\d"), lambda m: m["label"] + "[ID]"),
    (
        _NUMERIC_DATE,
        re.compile(r"\d[/.-]\d"),
        lambda m: "[DATE]" if _valid_numeric_date(m[0]) else None,
    ),
    (_NAMED_DATE, re.compile(r"\d{4}"), lambda m: "[DATE]"),
    (_PHONE, re.compile(r"\d{2}"), lambda m: "[PHONE]" if _phone_like(m[0]) else None),
    (_TITLED_NAME, None, _titled_name),
    (_LABELLED_NAME, re.compile(r"(?i)\b(?:name|patient(?:in)?|pt\.?)\s*:"), _labelled_name),
)


def scrub_identifiers(text: str, known: Iterable[str] = ()) -> tuple[str, int]:
    """Replace identifiers with placeholders; return the scrubbed text and how many were replaced.

    First the identifiers the caller knows (patient names, ids, accession numbers): ``[ID]`` when
    the identifier contains a digit, else ``[NAME]``. Then common patterns: e-mail addresses
    (``[EMAIL]``), labelled ids such as "MRN: 123456" (the label is kept: "MRN: [ID]"), dates
    such as 12/03/2021, 2021-03-12 or "12 March 2021" (``[DATE]``), phone numbers
    (``[PHONE]``), and titled names such as "Dr. Smith" (``Dr. [NAME]``). Patterns are tuned not
    to touch ordinary medical text (measurements, lead names, "120/80", "V1-V3"), and existing
    de-identification markers ("XXXX") are left alone.
    """
    total = 0
    known_pattern = _known_pattern(known)
    if known_pattern is not None:
        text, count = _substitute(
            known_pattern, text, lambda m: "[ID]" if _digits(m[0]) else "[NAME]"
        )
        total += count
    for pattern, guard, replace in _SCRUB_STEPS:
        if guard is None or guard.search(text):
            text, count = _substitute(pattern, text, replace)
            total += count
    return text, total


# --------------------------------------------------------------------------------------------
# the reader


def read_report(data: bytes, *, known_identifiers: Iterable[str] = ()) -> DecodedReport:
    """Decode, normalise, scrub and split one report.

    Line endings become ``\\n`` and text is NFC-normalised (so "ä" typed as a + combining
    diaeresis equals "ä"). Scrubbing runs on the whole text *before* splitting, so no section
    can carry an identifier. Raises IngestError: REPORT_UNDECODABLE for binary content,
    REPORT_EMPTY when nothing but whitespace remains.
    """
    text, encoding = decode_text(data)
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text:
        raise IngestError(ReasonCode.REPORT_EMPTY, "report has no text")
    scrubbed, count = scrub_identifiers(text, known_identifiers)
    return DecodedReport(
        text=scrubbed,
        sections=split_sections(scrubbed),
        encoding=encoding,
        scrubbed_count=count,
    )
